"""Attention and graph blocks of PIR (VIR / LCA, METHODS.md C5) and FISVL (graph reasoning, C6).

Parameter names follow the upstream modules so that published checkpoints map one-to-one:
``mhatt.linear_{v,k,q,merge}``, ``ffn.{0,1,3}`` (Linear, LayerNorm, GELU, Linear), ``norm1``/``norm2`` in
:class:`SABlock` (``mhatt``) and :class:`CrossBlock` (``mhatt_cross``); ``graph_query_w``, ``graph_key_w``,
``sim_graph_w`` in :class:`GraphReasoning`.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class MHAtt(nn.Module):
    """Multi-head attention with separate v/k/q/merge projections and an optional key padding mask.

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
            raise ValueError(f"MHAtt: dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.upstream_order = dim, heads, upstream_order
        self.linear_v = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_q = nn.Linear(dim, dim)
        self.linear_merge = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.heads, self.dim // self.heads).transpose(1, 2)  # [B, h, N, d]

    def forward(self, v: torch.Tensor, k: torch.Tensor, q: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``q`` to ``k``/``v``.

        Args:
            v, k: [B, Nk, dim]; q: [B, Nq, dim].
            key_mask: [B, Nk] bool, True on keys that may be attended (None: all).

        Returns:
            [B, Nq, dim].
        """
        pv, pk, pq = self._split(self.linear_v(v)), self._split(self.linear_k(k)), self._split(self.linear_q(q))
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

    def __init__(self, dim: int = 512, heads: int = 8, dropout: float = 0.2, upstream_order: bool = False) -> None:
        super().__init__()
        self.mhatt = MHAtt(dim, heads, dropout, upstream_order)
        self.ffn = ffn(dim)
        self.dropout1, self.norm1 = nn.Dropout(dropout), nn.LayerNorm(dim)
        self.dropout2, self.norm2 = nn.Dropout(dropout), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x [B, N, dim], mask [B, N] (True = real token) or None. Returns: [B, N, dim]."""
        x = self.norm1(x + self.dropout1(self.mhatt(x, x, x, mask)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class CrossBlock(nn.Module):
    """Post-LN cross-attention block: queries ``q`` attend to ``kv``, residual on the queries, then the FFN."""

    def __init__(self, dim: int = 512, heads: int = 8, dropout: float = 0.2, upstream_order: bool = False) -> None:
        super().__init__()
        self.mhatt_cross = MHAtt(dim, heads, dropout, upstream_order)
        self.ffn = ffn(dim)
        self.dropout1, self.norm1 = nn.Dropout(dropout), nn.LayerNorm(dim)
        self.dropout2, self.norm2 = nn.Dropout(dropout), nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: q [B, Nq, dim], kv [B, Nk, dim], mask [B, Nk] or None. Returns: [B, Nq, dim]."""
        x = self.norm1(q + self.dropout1(self.mhatt_cross(kv, kv, q, mask)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


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
