"""GaLR's MIDF fusion of the global (MVSA) and local (GCN) image features (METHODS.md C2, D5, E).

MCAN-style blocks (Yu et al., CVPR 2019) on length-1 sequences: with one token the attention softmax is
identically 1, so each attention reduces to its value and merge projections, but the blocks are written in
general form (rsitr keeps the attention-map dropout of training, as upstream). The attention is the shared
:class:`models.encoders.blocks.MHAtt`, called as (q, k, v).

Steps: g = SA(g); l = SA(l); l = SGA(l, g) ("local correction"); g = SGA(g, l) ("global supplement");
g' = sigmoid(l) * g; l' = g + l; w = softmax(Linear(Dropout(sigmoid(Linear(g' + l'))))) over 2 weights;
v = w0 * g' + w1 * l'.

``upstream_compat`` restores three upstream details:

* weight bug (D5): upstream uses w0 for both terms (v = w0 * (g' + l')); rsitr uses w1 for the local term.
* LayerNorm: upstream divides by (unbiased std + eps) with eps 1e-6; rsitr uses the standard
  (x - mean) / sqrt(biased var + eps). The parameters are the same (upstream ``a_2`` / ``b_2``).
* ``nn.Softmax()`` without ``dim``: for the 2-D weight logits PyTorch picks dim 1, the same as rsitr's
  explicit ``dim=-1`` — numerically identical, so nothing changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.encoders.blocks import MHAtt


class Norm(nn.Module):
    """LayerNorm with the upstream (std + eps) variant. Args: dim; upstream: use (x - mean) / (std + eps)."""

    def __init__(self, dim: int, upstream: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.upstream, self.eps = upstream, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [..., dim]. Returns: same shape."""
        if self.upstream:
            mean = x.mean(-1, keepdim=True)
            return self.weight * (x - mean) / (x.std(-1, keepdim=True) + self.eps) + self.bias
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class FFN(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class SA(nn.Module):
    """Self-attention block: x = norm1(x + att(x)); x = norm2(x + ffn(x))."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, upstream_norm: bool) -> None:
        super().__init__()
        self.attn = MHAtt(dim, heads, dropout)
        self.ffn = FFN(dim, ffn, dropout)
        self.norm1, self.norm2 = Norm(dim, upstream_norm), Norm(dim, upstream_norm)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, L, dim]. Returns: [B, L, dim]."""
        x = self.norm1(x + self.drop1(self.attn(x, x, x)))
        return self.norm2(x + self.drop2(self.ffn(x)))


class SGA(nn.Module):
    """Self-guided attention: self-attention on x, then x attends to y, then FFN (each with residual + norm)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, upstream_norm: bool) -> None:
        super().__init__()
        self.self_attn = MHAtt(dim, heads, dropout)
        self.cross_attn = MHAtt(dim, heads, dropout)
        self.ffn = FFN(dim, ffn, dropout)
        self.norm1, self.norm2, self.norm3 = (Norm(dim, upstream_norm) for _ in range(3))
        self.drop1, self.drop2, self.drop3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Args: x [B, Lx, dim] (queries), y [B, Ly, dim] (keys/values). Returns: [B, Lx, dim]."""
        x = self.norm1(x + self.drop1(self.self_attn(x, x, x)))
        x = self.norm2(x + self.drop2(self.cross_attn(x, y, y)))
        return self.norm3(x + self.drop3(self.ffn(x)))


class MIDF(nn.Module):
    """Multi-level information dynamic fusion.

    Args:
        dim: feature size (= embed_dim; 512 upstream).
        heads: attention heads (8 upstream, 64 each).
        ffn: FFN hidden size (1024).
        dropout: block dropout (0.1).
        dynamic_dim: hidden size of the weight MLP (512).
        dynamic_dropout: dropout inside the weight MLP (0.2).
        upstream_compat: w0 for both terms and the (std + eps) LayerNorm (module docstring).
    """

    def __init__(self, dim: int, heads: int = 8, ffn: int = 1024, dropout: float = 0.1, dynamic_dim: int = 512,
                 dynamic_dropout: float = 0.2, upstream_compat: bool = False) -> None:
        super().__init__()
        self.upstream_compat = upstream_compat
        args = (dim, heads, ffn, dropout, upstream_compat)
        self.sa_local, self.sa_global = SA(*args), SA(*args)
        self.correct_local, self.supplement_global = SGA(*args), SGA(*args)
        # indices 0 and 3 hold the Linears, as in the upstream nn.Sequential (so checkpoints map by index)
        self.weight_mlp = nn.Sequential(nn.Linear(dim, dynamic_dim), nn.Sigmoid(), nn.Dropout(dynamic_dropout),
                                        nn.Linear(dynamic_dim, 2))

    def forward(self, g: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
        """Args: g global [B, D], l local [B, D]. Returns: fused image feature [B, D]."""
        g, l = self.sa_global(g.unsqueeze(1)), self.sa_local(l.unsqueeze(1))  # noqa: E741
        l = self.correct_local(l, g)  # noqa: E741
        g = self.supplement_global(g, l).squeeze(1)
        l = l.squeeze(1)  # noqa: E741
        g2 = torch.sigmoid(l) * g
        l2 = g + l
        w = torch.softmax(self.weight_mlp(g2 + l2), dim=-1)  # [B, 2]
        w_local = w[:, :1] if self.upstream_compat else w[:, 1:]  # upstream bug D5: weight 0 used twice
        return w[:, :1] * g2 + w_local * l2


# upstream -> rsitr names; the attention projections (linear_{v,k,q,merge}) keep their upstream names
_BLOCK = {"mhatt": "attn", "mhatt1": "self_attn", "mhatt2": "cross_attn", "a_2": "weight", "b_2": "bias"}
_NAMES = {"l2l_SA": "sa_local", "g2g_SA": "sa_global", "g2l_SGA": "correct_local", "l2g_SGA": "supplement_global",
          "dynamic_weight": "weight_mlp"}


def upstream_to_own(key: str) -> str:
    """Translate an upstream ``fusion.*`` sub-key (without the prefix) to the MIDF key, e.g.
    ``l2l_SA.ffn.mlp.fc.linear.weight`` -> ``sa_local.ffn.fc1.weight``,
    ``g2l_SGA.mhatt2.linear_q.bias`` -> ``correct_local.cross_attn.linear_q.bias``."""
    key = key.replace("ffn.mlp.fc.linear.", "ffn.fc1.").replace("ffn.mlp.linear.", "ffn.fc2.")
    parts = key.split(".")
    parts[0] = _NAMES.get(parts[0], parts[0])
    return ".".join(_BLOCK.get(p, p) for p in parts)
