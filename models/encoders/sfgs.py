"""SFGS: the scene fine-grained sensing branch of SWAN, with its weighted self-attention (WSA).

Paper: J. Pan, Q. Ma, C. Bai, "Reducing Semantic Confusion: Scene-aware Aggregation Network for Remote Sensing
Cross-modal Retrieval" (SWAN, ICMR 2023), upstream https://github.com/kinshingpoon/SWAN-pytorch. FISVL (JSTARS 2024,
https://github.com/zhouzihui2001/FISVL, ``models/resnet.py::LocalFeature``) reuses the same branch on 224 px inputs.

Computation (METHODS.md C3), for the 64-channel ResNet stem output ``x`` [B, C, H, W]:

1. ``conv_filter``: 1x1 conv C -> mid (no bias), BN, ReLU.
2. Three parallel blocks, each conv (no bias), BN, ReLU, adaptive average pool to ``grid x grid``:
   1x1/s1 mid -> mid, 3x3/s3 mid -> mid, 5x5/s5 mid -> 2 mid. With 64x64 input (SWAN, 256 px) the maps are 64, 21
   and 12 wide; with 56x56 (FISVL, 224 px) 56, 18 and 11 — the 11x11 map is *up*-sampled to 16x16 by the adaptive
   pool (each output cell averages the one or two input cells it covers), exactly as upstream.
3. The maps are read as 4 mid tokens of ``grid**2`` values each and projected by ``fc`` (Linear, ReLU, dropout).
4. WSA: post-LN multi-head self-attention and a GELU feed-forward (dim -> 2 dim -> dim), then a learnable map weight
   ``fmp_weight`` [1, tokens, dim] fuses the tokens: ``Wᵀ X`` [B, dim, dim]; the branch output is its mean over the
   first axis [B, dim].

Parameter names follow the upstream modules so checkpoints map one-to-one: SWAN's ``image_encoder.conv_filter.*``
and ``sfgs.*``, FISVL's ``conv_encoder.loc_fea1.conv_filter.*`` and ``conv_encoder.loc_fea1.sfgs.*`` all land in
one :class:`SFGS` (see :func:`convert_sfgs_upstream`).

Where rsitr differs: the upstream multi-head attention is called with its arguments in a different order than its
signature, so it computes ``softmax(K Vᵀ / sqrt(d)) Q`` (METHODS.md E). ``upstream_attn_order=True`` reproduces that
(use it with ``model.upstream_compat`` when loading published weights); the default is the textbook
``softmax(Q Kᵀ / sqrt(d)) V``. For self-attention both are the same function class (the three projections swap
roles), so training from scratch is unaffected.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from models.encoders.blocks import MHAtt


def _conv_bn_relu(cin: int, cout: int, k: int, pool: int | None) -> nn.Sequential:
    """Conv (k x k, stride k, no bias), BN, ReLU and, when ``pool`` is given, adaptive average pooling."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=k, stride=k, bias=False), nn.BatchNorm2d(cout),
                               nn.ReLU(inplace=True)]
    if pool is not None:
        layers.append(nn.AdaptiveAvgPool2d((pool, pool)))
    return nn.Sequential(*layers)


class FC(nn.Module):
    """Linear, ReLU, dropout (the upstream ``FC`` block; the submodule is named ``linear`` for key compatibility)."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, cout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [..., cin]. Returns: [..., cout]."""
        return self.dropout(torch.relu(self.linear(x)))


class WSA(nn.Module):
    """Weighted self-attention: post-LN MHSA + GELU FFN, then token fusion with a learnable map weight.

    Args:
        dim: token width.
        tokens: number of tokens (rows of ``fmp_weight``).
        heads: attention heads.
        dropout: dropout after attention / FFN (and on the attention map).
        upstream_order: see :class:`MHAtt`.
    """

    def __init__(self, dim: int = 512, tokens: int = 128, heads: int = 8, dropout: float = 0.1,
                 upstream_order: bool = False) -> None:
        super().__init__()
        self.mhatt = MHAtt(dim, heads, dropout, upstream_order)
        # indices 0 and 3 hold the linears (upstream key layout ffn.net.0 / ffn.net.3); the FFN itself has no dropout
        self.ffn = nn.Module()
        self.ffn.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(2 * dim, dim),
                                     nn.Dropout(0.0))
        self.dropout1, self.norm1 = nn.Dropout(dropout), nn.LayerNorm(dim)
        self.dropout2, self.norm2 = nn.Dropout(dropout), nn.LayerNorm(dim)
        self.fmp_weight = nn.Parameter(torch.randn(1, tokens, dim))  # N(0, 1) as upstream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, tokens, dim]. Returns: fused maps [B, dim, dim] (``fmp_weightᵀ · X``)."""
        x = self.norm1(x + self.dropout1(self.mhatt(x, x, x)))
        x = self.norm2(x + self.dropout2(self.ffn.net(x)))
        return self.fmp_weight.expand(x.shape[0], -1, -1).transpose(1, 2) @ x


class SFGS(nn.Module):
    """Scene fine-grained sensing branch (conv filter, three conv scales, FC, WSA, mean).

    Args:
        in_channels: channels of the input map (64 for the ResNet stem).
        dim: output / token width (the paper's 512).
        mid: width after ``conv_filter`` (32); the scales give mid, mid and 2 mid maps, i.e. 4 mid tokens.
        grid: side of the pooled maps (16); each token has ``grid**2`` values.
        dropout: dropout in FC and WSA (SWAN 0.1, FISVL 0.2).
        heads: attention heads (8 x 64 at dim 512).
        upstream_attn_order: reproduce the upstream attention argument order (see the module docstring).
    """

    def __init__(self, in_channels: int = 64, dim: int = 512, mid: int = 32, grid: int = 16, dropout: float = 0.1,
                 heads: int = 8, upstream_attn_order: bool = False) -> None:
        super().__init__()
        self.mid, self.grid = mid, grid
        self.conv_filter = _conv_bn_relu(in_channels, mid, 1, None)
        self.conv2d_block_11 = _conv_bn_relu(mid, mid, 1, grid)
        self.conv2d_block_33 = _conv_bn_relu(mid, mid, 3, grid)
        self.conv2d_block_55 = _conv_bn_relu(mid, 2 * mid, 5, grid)
        self.fc = FC(grid * grid, dim, dropout)
        self.wsa = WSA(dim, tokens=4 * mid, heads=heads, dropout=dropout, upstream_order=upstream_attn_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, in_channels, H, W] (H, W >= 5). Returns: the local scene feature [B, dim]."""
        x = self.conv_filter(x)
        b = x.shape[0]
        maps = [blk(x).reshape(b, -1, self.grid * self.grid)
                for blk in (self.conv2d_block_11, self.conv2d_block_33, self.conv2d_block_55)]
        tokens = self.fc(torch.cat(maps, dim=1))  # [B, 4 mid, dim]
        return self.wsa(tokens).mean(dim=1)


def convert_sfgs_upstream(state: Mapping[str, torch.Tensor], conv_filter_prefix: str, sfgs_prefix: str,
                          target_prefix: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map upstream SFGS keys to an rsitr :class:`SFGS` sitting at ``target_prefix``.

    Args:
        state: upstream state dict.
        conv_filter_prefix: where upstream keeps the 1x1 filter, e.g. ``"image_encoder.conv_filter."`` (SWAN) or
            ``"conv_encoder.loc_fea1.conv_filter."`` (FISVL).
        sfgs_prefix: where upstream keeps the rest, e.g. ``"sfgs."`` (SWAN) or ``"conv_encoder.loc_fea1.sfgs."``.
        target_prefix: this module's prefix in the rsitr model, e.g. ``"sfgs."``.

    Returns:
        (converted rsitr keys -> tensors, upstream keys used).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, value in state.items():
        if key.startswith(conv_filter_prefix):
            out[f"{target_prefix}conv_filter.{key[len(conv_filter_prefix):]}"] = value
        elif key.startswith(sfgs_prefix):
            out[f"{target_prefix}{key[len(sfgs_prefix):]}"] = value
        else:
            continue
        used.add(key)
    return out, used
