"""``clip_adapter``: frozen CLIP with the MRS-Adapter, trained with the HMMC loss (PE-RSITR).

Paper: Y. Yuan, Y. Zhan, Z. Xiong, "Parameter-Efficient Transfer Learning for Remote Sensing Image-Text
Retrieval", IEEE TGRS 2023. Upstream: github.com/ZhanYang-nwpu/PE-RSITR (model code only; no training code).

Method (METHODS.md C7):

* **One** :class:`MRSAdapter` is shared by every transformer block of both towers. In each block it runs parallel
  to the MLP and reads the post-attention residual stream: ``x = x + attn(ln_1(x)); x = x + (mlp(ln_2(x)) +
  adapter(x))``. The adapter: modality-specific down-projection (text width → 64, visual width → 64), ReLU,
  dropout 0.5, then ``cat([modality-specific up (64 → width - 64), shared up (64 → 64)])``; down weights
  Kaiming-uniform (a=√5), every up weight and every bias zero, so a fresh adapter is a no-op. It is computed in
  float32 and cast back to the stream's dtype (as upstream). For ViT-B-32: 161,088 parameters (paper: 0.16 M).
* CLIP is frozen; only the adapter trains (``train_modules`` lists CLIP parameter-name prefixes to train too).
* Augmented views: ``forward`` also encodes both inputs with Dropout(0.2) on the token + positional embeddings
  (for images after ``ln_pre``) and returns ``img_emb, txt_emb, img_aug, txt_aug`` (float32) and ``logit_scale``
  for the ``hmmc`` loss (losses/hmmc.py).

Implementation: open_clip's ``ResidualAttentionBlock`` objects are switched in place to :class:`AdaptedBlock` (a
subclass whose ``forward`` adds the adapter) holding a plain, unregistered reference to the shared adapter, so
parameter names stay open_clip's and the adapter's parameters are registered exactly once (as ``adapter.*``). The
augmentation dropout is a forward pre-hook on each tower's transformer, active only while ``forward`` encodes the
augmented views, so the clean path is exactly open_clip's ``encode_image`` / ``encode_text``.

Differences from upstream: any open_clip ViT architecture (ViT-B-16, ViT-L-14, ...; the adapter sizes follow the
tower widths, where upstream hard-codes 512/768 and so cannot run ViT-L-14); CLIP weights from any local OpenAI or
open_clip file (see models/encoders/clip.py); fp16 only with ``precision: fp16`` (upstream: fp16 on GPU, fp32 on
CPU). Upstream checkpoints (``PE_RSITR.model.*`` = OpenAI CLIP layout, ``PE_RSITR.Uniadapt.*`` = the adapter) load
with ``model.init_from: upstream:PATH``; the adapter's upstream names are mapped in :data:`UPSTREAM_ADAPTER_NAMES`.
The training recipe (optimiser, lr, epochs, HMMC weights) is unpublished: the configs are a re-implementation.
``upstream_compat`` changes nothing here: rsitr's fp32 computation (adapter in float32, ``mlp + adapter`` added to the
residual in upstream's order, end-of-text pooling, QuickGELU with ``quick_gelu: true``) already is upstream's CPU
path; upstream's GPU numbers (fp16 CLIP) need ``precision: fp16``.
Other architectures: ``--set model.params.arch=ViT-L-14 --set model.embed_dim=768`` with matching weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from core.config import ConfigError, ModelCfg
from models.base import ModelContext
from models.clip_finetune import ClipFinetune, ClipParams
from models.encoders.clip import is_vit_clip, tower_widths
from models.registry import MODELS

# upstream MRS_Adapter attribute -> rsitr MRSAdapter attribute
UPSTREAM_ADAPTER_NAMES = {"down_proj": "text_down", "visual_down_proj": "visual_down", "up_proj": "text_up",
                          "visual_up_proj": "visual_up", "share_up_proj": "shared_up"}


class MRSAdapter(nn.Module):
    """The multi-modal shared adapter: modality-specific down/up projections plus a shared up-projection part.

    Args:
        text_width, visual_width: residual-stream widths of the two towers (512 / 768 for ViT-B-32).
        bottleneck: down-projection size (64).
        shared_dim: output channels produced by the shared up-projection (64); must be < both widths.
        dropout: dropout after the ReLU (0.5).
    """

    def __init__(self, text_width: int, visual_width: int, bottleneck: int = 64, shared_dim: int = 64,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if shared_dim >= min(text_width, visual_width):
            raise ConfigError(f"adapter shared_dim {shared_dim} must be smaller than the tower widths "
                             f"({text_width}, {visual_width})")
        self.text_down = nn.Linear(text_width, bottleneck)
        self.visual_down = nn.Linear(visual_width, bottleneck)
        self.text_up = nn.Linear(bottleneck, text_width - shared_dim)
        self.visual_up = nn.Linear(bottleneck, visual_width - shared_dim)
        self.shared_up = nn.Linear(bottleneck, shared_dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform (a=√5) down weights; zero up weights and zero biases (the adapter starts as a no-op)."""
        with torch.no_grad():
            for lin in (self.text_down, self.visual_down):
                nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
            for lin in (self.text_up, self.visual_up, self.shared_up):
                nn.init.zeros_(lin.weight)
            for lin in (self.text_down, self.visual_down, self.text_up, self.visual_up, self.shared_up):
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """Args: x [..., width] residual stream; mode ``text`` or ``visual``. Returns: [..., width] in x's dtype."""
        down, up = (self.text_down, self.text_up) if mode == "text" else (self.visual_down, self.visual_up)
        h = self.dropout(F.relu(down(x.float())))  # float32 like upstream, whatever the CLIP precision
        return torch.cat([up(h), self.shared_up(h)], dim=-1).to(x.dtype)


class AdaptedBlock(ResidualAttentionBlock):
    """open_clip's block with the shared adapter parallel to the MLP (installed by :func:`install_adapter`)."""

    _rsitr_adapter: MRSAdapter
    _rsitr_mode: str

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: q_x [B, L, width] (self-attention only). Returns: [B, L, width]."""
        x = q_x + self.ls_1(self.attention(q_x=self.ln_1(q_x), attn_mask=attn_mask))
        # upstream adds (mlp + adapter) to the residual in this order; keep it for bit-level parity
        return x + (self.ls_2(self.mlp(self.ln_2(x))) + self._rsitr_adapter(x, self._rsitr_mode))


def install_adapter(blocks: nn.ModuleList, adapter: MRSAdapter, mode: str) -> None:
    """Turn every open_clip ``ResidualAttentionBlock`` of ``blocks`` into an :class:`AdaptedBlock` in place.

    The adapter is attached with ``object.__setattr__`` so it is not registered as a sub-module of each block
    (its parameters stay registered once, where the caller holds it) and state-dict names do not change.
    """
    for i, blk in enumerate(blocks):
        if type(blk) is not ResidualAttentionBlock:
            raise ConfigError(f"the MRS-Adapter needs open_clip's plain ResidualAttentionBlock; block {i} of the "
                              f"{mode} tower is {type(blk).__name__} (choose a standard ViT CLIP architecture)")
        blk.__class__ = AdaptedBlock
        object.__setattr__(blk, "_rsitr_adapter", adapter)
        object.__setattr__(blk, "_rsitr_mode", mode)


@dataclass(frozen=True)
class ClipAdapterParams(ClipParams):
    bottleneck: int = 64  # adapter down-projection size
    shared_dim: int = 64  # adapter outputs produced by the shared up-projection (the rest is modality-specific)
    adapter_dropout: float = 0.5  # dropout after the adapter's ReLU
    augment: bool = True  # forward also returns the augmented views img_aug / txt_aug (hmmc needs them)
    aug_dropout: float = 0.2  # dropout on token + positional embeddings (images: after ln_pre) for the views
    train_modules: tuple[str, ...] = ()  # CLIP parameter-name prefixes that train too, e.g. [logit_scale]


@MODELS.register("clip_adapter")
class ClipAdapter(ClipFinetune):
    """Frozen CLIP + one shared MRS-Adapter in every block of both towers.

    Args:
        cfg: ``model`` section.
        params: :class:`ClipAdapterParams`.
        ctx: unused.
    """

    Params: ClassVar[type] = ClipAdapterParams

    def __init__(self, cfg: ModelCfg, params: ClipAdapterParams, ctx: ModelContext) -> None:
        super().__init__(cfg, params, ctx)
        if not is_vit_clip(self.clip):
            raise ConfigError(f"clip_adapter needs a ViT CLIP with open_clip's text transformer; '{params.arch}' "
                              f"builds {type(self.clip).__name__}")
        text_width, visual_width = tower_widths(self.clip)
        self.adapter = MRSAdapter(text_width, visual_width, params.bottleneck, params.shared_dim,
                                  params.adapter_dropout)
        install_adapter(self.clip.transformer.resblocks, self.adapter, "text")
        install_adapter(self.clip.visual.transformer.resblocks, self.adapter, "visual")
        self._freeze_clip(params.train_modules)
        self.aug_dropout = nn.Dropout(params.aug_dropout)
        self._augmenting = False
        # the text transformer's input is token + positional embedding; the visual one's is ln_pre's output
        self.clip.transformer.register_forward_pre_hook(self._augment_hook)
        self.clip.visual.transformer.register_forward_pre_hook(self._augment_hook)

    def _freeze_clip(self, train_modules: tuple[str, ...]) -> None:
        self.clip.requires_grad_(False)
        names = [n for n, _ in self.clip.named_parameters()]
        for prefix in train_modules:
            hits = [n for n in names if n.startswith(prefix)]
            if not hits:
                raise ConfigError(f"model.params.train_modules: no CLIP parameter starts with '{prefix}' "
                                  f"(e.g. logit_scale, visual.ln_post, ln_final)")
            for n in hits:
                self.clip.get_parameter(n).requires_grad_(True)

    def _augment_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if not self._augmenting:
            return None
        return (self.aug_dropout(args[0]),) + tuple(args[1:])

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Returns ``img_emb``, ``txt_emb`` [B, D], with ``augment`` also ``img_aug``, ``txt_aug`` [B, D] (float32),
        and ``logit_scale`` (CLIP's, frozen unless listed in train_modules)."""
        out = super().forward(batch)
        if self.p.augment:
            self._augmenting = True
            try:
                out["img_aug"] = self.encode_image(batch)
                out["txt_aug"] = self.encode_text(batch)
            finally:
                self._augmenting = False
        return out

    def _upstream_name(self, key: str) -> str | None:
        """``PE_RSITR.Uniadapt.<name>.<leaf>`` -> ``adapter.<rsitr name>.<leaf>``; CLIP keys as the base class."""
        short = key.removeprefix("module.").removeprefix("PE_RSITR.")
        if short.startswith("Uniadapt."):
            mod, _, leaf = short.removeprefix("Uniadapt.").partition(".")
            return f"adapter.{UPSTREAM_ADAPTER_NAMES[mod]}.{leaf}" if mod in UPSTREAM_ADAPTER_NAMES else None
        return super()._upstream_name(key)
