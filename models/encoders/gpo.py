"""GPO, generalised pooling (Chen et al., "Learning the Best Pooling Strategy for Visual Semantic Embedding",
CVPR 2021, VSE∞), in the form KAMCL uses it (METHODS.md C0; https://github.com/mcx-mcx/KAMCL ``layers/gpo.py``).

For a set of K vectors of which the first ``n`` are real:

1. sinusoidal positional codes pe[0..n-1] (size ``d_pe``; padding positions zero) run through a bidirectional GRU
   (``d_hidden``); the two directions are averaged and ``linear`` (d_hidden -> 1, no bias) scores each position;
2. weights = softmax(score / 0.1) over the real positions;
3. every feature dimension is sorted in descending order over the real elements, and the output is the weighted sum
   of the sorted values: ``out[d] = sum_k w_k * sort_desc(x[:, d])[k]``.

The weights depend only on ``n``, and sorting makes the result independent of the order of the elements, so a set
may be presented in any order as long as its real elements come first.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def positional_encoding_1d(d_model: int, length: int) -> torch.Tensor:
    """Sinusoidal codes: pe[p, 2i] = sin(p / 10000^(2i/d)), pe[p, 2i+1] = cos(p / 10000^(2i/d)). Returns [length, d]."""
    if d_model % 2:
        raise ValueError(f"positional encoding needs an even size, got {d_model}")
    pos = torch.arange(length, dtype=torch.float).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * -(math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class GPO(nn.Module):
    """Generalised pooling operator.

    Args:
        d_pe: positional code size (32 in KAMCL).
        d_hidden: GRU hidden size (32 in KAMCL).
        temperature: softmax temperature of the scores (0.1).
    """

    def __init__(self, d_pe: int = 32, d_hidden: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        self.d_pe, self.temperature = d_pe, temperature
        self.gru = nn.GRU(d_pe, d_hidden, 1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)

    def pool_weights(self, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
        """Per-position weights.

        Args:
            lengths: long [B], real elements per set (1 <= n <= max_len).
            max_len: padded set size K.

        Returns:
            weights [B, K, 1], zero past ``lengths``, each row summing to 1.
        """
        dev = self.linear.weight.device
        mask = torch.arange(max_len, device=dev)[None, :] < lengths.to(dev)[:, None]  # [B, K]
        pes = positional_encoding_1d(self.d_pe, max_len).to(dev, self.linear.weight.dtype)
        pes = pes.unsqueeze(0).expand(lengths.shape[0], -1, -1) * mask.unsqueeze(-1)
        packed = pack_padded_sequence(pes, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=max_len)
        half = out.shape[-1] // 2
        scores = self.linear((out[..., :half] + out[..., half:]) / 2)  # [B, K, 1]
        scores = scores.masked_fill(~mask.unsqueeze(-1), -10000.0)  # as upstream: a large negative, not -inf
        return torch.softmax(scores / self.temperature, dim=1)

    @staticmethod
    def pool(features: torch.Tensor, weights: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the per-dimension sorted features.

        Args:
            features: [B, K, D]; weights: [B, K, 1]; lengths: [B] real elements (the first ones of each set).

        Returns:
            [B, D].
        """
        mask = (torch.arange(features.shape[1], device=features.device)[None, :]
                < lengths.to(features.device)[:, None]).unsqueeze(-1)
        ranked = features.masked_fill(~mask, -10000.0).sort(dim=1, descending=True).values
        return (ranked.masked_fill(~mask, 0.0) * weights).sum(dim=1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Pool a padded batch of sets.

        Args:
            features: [B, K, D], the real elements of set b first.
            lengths: long [B] real elements per set; None = all K.

        Returns:
            pooled [B, D].
        """
        b, k, _ = features.shape
        if lengths is None:
            lengths = torch.full((b,), k, dtype=torch.long)
        lengths = lengths.long().clamp(1, k)
        # the weights depend only on the length: run the GRU once per distinct length
        uniq, inverse = torch.unique(lengths.cpu(), return_inverse=True)
        weights = self.pool_weights(uniq, k)[inverse.to(self.linear.weight.device)]
        return self.pool(features, weights.to(features.dtype), lengths)
