"""Attention and graph blocks: the one multi-head attention of rsitr (:class:`MHAtt`, used by PIR, FISVL, SWAN's
SFGS and GaLR's MIDF), PIR's VIR / LCA blocks (METHODS.md C5) and FISVL's graph reasoning (C6).

Parameter names follow the upstream modules so that published checkpoints map one-to-one: every upstream code base
(GaLR, SWAN, PIR, FISVL) names the projections ``linear_{v,k,q,merge}``; PIR's blocks hold ``mhatt`` (:class:`SABlock`)
or ``mhatt_cross`` (:class:`CrossBlock`), ``ffn.{0,1,3}`` (Linear, LayerNorm, GELU, Linear) and ``norm1``/``norm2``;
``graph_query_w``, ``graph_key_w``, ``sim_graph_w`` in :class:`GraphReasoning`. Only GaLR renames its block names
(``models/encoders/midf.py::upstream_to_own``).

:class:`MHAtt` takes its inputs in the order (q, k, v) (upstream's MCAN-style modules take (v, k, q)). SWAN's
argument mix-up is a flag of the same class (``upstream_order``); PIR's blocks do not have it.

PIR's cross block (published architecture, followed without a flag): the residual goes to the key/value input,
``y = norm1(y + drop(attn(q=x, k=y, v=y)))``, ``y = norm2(y + drop(ffn(y)))``. It is called as
``img_ca[i](mapping_img(conv), X)`` and ``txt_ca[i](mapping_txt(prev), X)``: the prior (or the previous round)
only steers attention, and the stream keeps the self-attended tokens. Queries and keys have the same length there
(the image prior is copied once per kept token).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from core.errors import ConfigError


class MHAtt(nn.Module):
    """Multi-head attention with separate q/k/v/merge projections and an optional key padding mask.

    Args:
        dim: width (split over ``heads``).
        heads: number of heads.
        dropout: dropout on the attention map.
        upstream_order: compute ``softmax(K Vᵀ/√d)·Q`` (the MCAN-style argument mix-up of SWAN's code, see
            models/encoders/sfgs.py); only defined when queries and keys have the same length.
    """

    def __init__(self, dim: int = 512, heads: int = 8, dropout: float = 0.2, upstream_order: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"MHAtt: dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.upstream_order = dim, heads, upstream_order
        self.linear_v = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_q = nn.Linear(dim, dim)
        self.linear_merge = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 (torch's signature)
        # rsitr checkpoints written before the two attention classes became one named GaLR's projections
        # v/k/q/merge; they load unchanged (old checkpoints keep working).
        for name in ("v", "k", "q", "merge"):
            for kind in ("weight", "bias"):
                old = f"{prefix}{name}.{kind}"
                if old in state_dict and f"{prefix}linear_{name}.{kind}" not in state_dict:
                    state_dict[f"{prefix}linear_{name}.{kind}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.heads, self.dim // self.heads).transpose(1, 2)  # [B, h, N, d]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``q`` to ``k``/``v``.

        Args:
            q: [B, Nq, dim]; k, v: [B, Nk, dim].
            key_mask: [B, Nk] bool, True on keys that may be attended (None: all).

        Returns:
            [B, Nq, dim].
        """
        pq, pk, pv = self._split(self.linear_q(q)), self._split(self.linear_k(k)), self._split(self.linear_v(v))
        if self.upstream_order:
            pq, pk, pv = pk, pv, pq
        scores = pq @ pk.transpose(-2, -1) / math.sqrt(pq.shape[-1])
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :].bool(), -1e9)
        out = self.dropout(scores.softmax(dim=-1)) @ pv
        return self.linear_merge(out.transpose(1, 2).reshape(q.shape[0], -1, self.dim))


def ffn(dim: int) -> nn.Sequential:
    """Upstream ``build_mlp(dim, dim)``: Linear(dim, 2 dim), LayerNorm, GELU, Linear(2 dim, dim)."""
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


class SABlock(nn.Module):
    """Post-LN self-attention block: ``x = LN(x + drop(MHSA(x)))``, ``x = LN(x + drop(FFN(x)))``."""

    def __init__(self, dim: int = 512, heads: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        self.mhatt = MHAtt(dim, heads, dropout)
        self.ffn = ffn(dim)
        self.dropout1, self.norm1 = nn.Dropout(dropout), nn.LayerNorm(dim)
        self.dropout2, self.norm2 = nn.Dropout(dropout), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x [B, N, dim], mask [B, N] (True = real token) or None. Returns: [B, N, dim]."""
        x = self.norm1(x + self.dropout1(self.mhatt(x, x, x, mask)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class CrossBlock(nn.Module):
    """Post-LN cross-attention block: ``q`` attends to ``kv``; the residual stream is ``kv`` (module docstring)."""

    def __init__(self, dim: int = 512, heads: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        self.mhatt_cross = MHAtt(dim, heads, dropout)
        self.ffn = ffn(dim)
        self.dropout1, self.norm1 = nn.Dropout(dropout), nn.LayerNorm(dim)
        self.dropout2, self.norm2 = nn.Dropout(dropout), nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: q [B, N, dim] queries, kv [B, N, dim] keys/values and residual, mask [B, N] or None.

        Returns:
            [B, N, dim].
        """
        y = self.norm1(kv + self.dropout1(self.mhatt_cross(q, kv, kv, mask)))
        return self.norm2(y + self.dropout2(self.ffn(y)))


class GraphReasoning(nn.Module):
    """One step of similarity-graph reasoning over a fully connected node set (FISVL ``img_gcn``).

    ``E = softmax(Wq X (Wk X)ᵀ)``; ``X' = ReLU(Wg (E X))``. Linears are Xavier-uniform with zero bias, as upstream.
    """

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.graph_query_w = nn.Linear(dim, dim)
        self.graph_key_w = nn.Linear(dim, dim)
        self.sim_graph_w = nn.Linear(dim, dim)
        for m in (self.graph_query_w, self.graph_key_w, self.sim_graph_w):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, N, dim] nodes. Returns: [B, N, dim]."""
        edges = torch.softmax(self.graph_query_w(x) @ self.graph_key_w(x).transpose(1, 2), dim=-1)
        return torch.relu(self.sim_graph_w(edges @ x))
