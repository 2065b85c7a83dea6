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

import numpy as np
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


def descending_order(x: torch.Tensor) -> torch.Tensor:
    """Indices that sort ``x`` [..., K] in descending order along the last dimension (ties in any order).

    On CPU, float32/float64 sets of more than 8 elements go through NumPy's vectorised argsort, 1.5-2x faster than
    ``torch.sort`` with 2 threads at KAMCL's GPO shapes ([B, 512, 2L] words, [B, 64, 192] channels;
    ``bench/bench_kamcl.py``); the caller gathers the values with autograd, so the gradient is exactly that of
    ``torch.sort``. Elsewhere ``torch.argsort``.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.shape[-1] > 8:
        order = np.argsort(x.detach().clone(memory_format=torch.contiguous_format).neg_().numpy(), axis=-1)
        return torch.from_numpy(order)
    return torch.argsort(x, dim=-1, descending=True)


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
        if dev.type == "cpu":
            fwd, bwd = self.bidirectional_gru(pes, lengths.to(dev))
        else:
            packed = pack_padded_sequence(pes, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=max_len)
            fwd, bwd = out.chunk(2, dim=-1)
        scores = self.linear((fwd + bwd) / 2)  # [B, K, 1]
        scores = scores.masked_fill(~mask.unsqueeze(-1), -10000.0)  # as upstream: a large negative, not -inf
        return torch.softmax(scores / self.temperature, dim=1)

    def bidirectional_gru(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``self.gru`` over packed sequences, both directions in one loop (the CPU path of :meth:`pool_weights`).

        PyTorch's GRU steps the two directions one after the other, a handful of tiny ops per step each; KAMCL's
        channel GPO runs 192 steps per image batch, in training with autograd, so on CPU this loop (the directions
        stacked into one batched matmul per step, input projections hoisted out of the loop) takes about half the
        time. Same parameters, same equations (gate order r, z, n):

            r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
            n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h

        The backward direction of set b starts at its last real element ``lengths[b] - 1``, as with a packed
        sequence.

        Args:
            x: [B, K, d_pe] inputs; lengths: long [B] (1 <= n <= K).

        Returns:
            (forward, backward) hidden states [B, K, d_hidden] each; positions past ``lengths`` hold garbage.
        """
        g, (b, k, d) = self.gru, x.shape
        rev = (lengths[:, None] - 1 - torch.arange(k, device=x.device)[None, :]).clamp(min=0)  # [B, K]
        rev_x = rev.unsqueeze(-1).expand(-1, -1, d)
        xs = torch.stack([x, x.gather(1, rev_x)])  # [2, B, K, d]: forward and reversed-within-length inputs
        w_ih = torch.stack([g.weight_ih_l0, g.weight_ih_l0_reverse])  # [2, 3H, d]
        b_ih = torch.stack([g.bias_ih_l0, g.bias_ih_l0_reverse])  # [2, 3H]
        w_hh = torch.stack([g.weight_hh_l0, g.weight_hh_l0_reverse]).transpose(1, 2)  # [2, H, 3H]
        b_hh = torch.stack([g.bias_hh_l0, g.bias_hh_l0_reverse]).unsqueeze(1)  # [2, 1, 3H]
        gx = (xs.flatten(1, 2) @ w_ih.transpose(1, 2) + b_ih.unsqueeze(1)).view(2, b, k, -1)
        hid = g.hidden_size
        gx_rz, gx_n = (part.unbind(2) for part in gx.split([2 * hid, hid], dim=-1))  # per step [2, B, 2H], [2, B, H]
        h = x.new_zeros(2, b, hid)
        steps = []
        for t in range(k):
            gh_rz, gh_n = torch.baddbmm(b_hh, h, w_hh).split([2 * hid, hid], dim=-1)
            r, z = torch.sigmoid(gx_rz[t] + gh_rz).chunk(2, dim=-1)
            n = torch.tanh(gx_n[t] + r * gh_n)
            h = n + z * (h - n)  # = (1 - z) * n + z * h
            steps.append(h)
        out = torch.stack(steps, dim=2)  # [2, B, K, H]
        return out[0], out[1].gather(1, rev.unsqueeze(-1).expand(-1, -1, hid))

    @staticmethod
    def pool(features: torch.Tensor, weights: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the per-dimension sorted features.

        Args:
            features: [B, K, D]; weights: [B, K, 1]; lengths: [B] real elements (the first ones of each set).

        Returns:
            [B, D].
        """
        k = features.shape[1]
        x = features.transpose(1, 2)  # [B, D, K]: each dimension's set along the last axis, where the sort runs
        mask = None
        if bool((lengths < k).any()):  # sets of full length (every image set) need no masking
            mask = (torch.arange(k, device=features.device)[None, :] < lengths.to(features.device)[:, None])[:, None]
            x = x.masked_fill(~mask, -10000.0)
        ranked = x.gather(-1, descending_order(x))
        if mask is not None:
            ranked = ranked.masked_fill(~mask, 0.0)
        return (ranked * weights.transpose(1, 2)).sum(dim=-1)

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
