"""``clip_finetune`` (every CLIP weight trains) and ``clip_zeroshot`` (evaluation only) on open_clip.

The two CLIP baselines of PE-RSITR's comparison: Y. Yuan, Y. Zhan, Z. Xiong, "Parameter-Efficient Transfer Learning
for Remote Sensing Image-Text Retrieval", IEEE TGRS 2023 (github.com/ZhanYang-nwpu/PE-RSITR); CLIP: A. Radford et
al., ICML 2021; open_clip: github.com/mlfoundations/open_clip. The adapter method itself is models/clip_adapter.py.

* ``encode_image`` / ``encode_text`` are open_clip's ``CLIP.encode_image`` / ``encode_text`` (class token after
  ``ln_post`` and ``proj``; text feature at the end-of-text token, the argmax of the BPE ids, after ``ln_final`` and
  ``text_projection``). Similarity: cosine. Embeddings are returned as float32 whatever the weight precision.
  ``trim_text`` (default on) runs the text tower only up to the batch's last end-of-text token: with causal
  attention and end-of-text pooling the later (padding) positions cannot change the feature, so this is the same
  computation on ~20 instead of 77 positions (tested against open_clip's ``encode_text``).
* ``clip_finetune``: all weights train with symmetric InfoNCE at CLIP's own learnable logit scale (loss
  ``infonce``, which reads ``outputs["logit_scale"]``); exp(logit_scale) is clamped at ``max_logit_scale`` (100) at
  every step, as in CLIP/open_clip training. Use a small lr (configs: 1e-6..5e-6, AdamW).
* ``clip_zeroshot``: ``zero_shot = True``, nothing trains; ``python test.py --config configs/rsitmd_clip_zeroshot.yaml``
  evaluates the weights named in ``model.params.weights`` without a training checkpoint.

Pretrained assets (user-provided, ``model.params.weights``; nothing is downloaded): ``pretrained/ViT-B-32.pt``
(OpenAI's release, TorchScript), or an open_clip state dict such as ``pretrained/RemoteCLIP-ViT-B-32.pt`` or
``pretrained/RS5M_ViT-B-32.pt`` (GeoRSCLIP), evaluated with QuickGELU as their code does. See
models/encoders/clip.py; ``eval.recipe: remoteclip | georsclip`` evaluates with their image and caption rules
(data/recipes.py).

Published checkpoints (``model.init_from: upstream:PATH``): keys in OpenAI/open_clip layout (``visual.conv1.weight``)
or PE-RSITR's (``PE_RSITR.model.visual.conv1.weight``) map to ``clip.<key>``; anything else is reported unplaced.
Upstream differences: the upstream code is OpenAI's ``clip`` package, ViT-B only; rsitr takes any open_clip
architecture. Upstream runs CLIP in fp16 on GPU (``clip.load``) and fp32 on CPU; ``precision: fp16`` reproduces the
GPU numbers (then use ``train.amp: off``), the default fp32 the CPU ones.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from open_clip.model import CLIP

from core.config import ConfigError, ModelCfg
from models.base import ModelContext, RetrievalModel
from core.files import RequiredFile
from models.encoders.clip import arch_embed_dim, build_clip, clip_required_files
from models.registry import MODELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipParams:
    arch: str = "ViT-B-32"  # open_clip architecture (ViT-B-16, ViT-L-14, ...), or rsitr-tiny for tests
    weights: str = ""  # local CLIP weights: OpenAI .pt (TorchScript) or an open_clip state dict (RemoteCLIP, GeoRSCLIP)
    quick_gelu: bool = True  # QuickGELU as OpenAI CLIP, PE-RSITR and the RemoteCLIP/GeoRSCLIP evaluation code;
    # false = open_clip's plain GELU architecture
    precision: str = "fp32"  # fp32 | fp16 (OpenAI-style fp16 weights, as upstream runs on GPU)
    max_logit_scale: float = 100.0  # clamp exp(logit_scale) to this while it trains (CLIP / open_clip)
    trim_text: bool = True  # run the text tower only up to the batch's last end-of-text token (same result: causal)


def _causal_argmax_text(clip: torch.nn.Module) -> bool:
    """open_clip's own text tower with a causal mask and end-of-text (argmax) pooling."""
    return (isinstance(clip, CLIP) and getattr(clip, "text_pool_type", "") == "argmax"
            and getattr(clip, "attn_mask", None) is not None)


def _clip_dtype(clip: torch.nn.Module) -> torch.dtype:
    return clip.visual.conv1.weight.dtype if hasattr(clip.visual, "conv1") else next(clip.parameters()).dtype


@MODELS.register("clip_finetune")
class ClipFinetune(RetrievalModel):
    """CLIP dual encoder with every weight trainable (also the base class of the other CLIP methods).

    Args:
        cfg: ``model`` section; ``cfg.embed_dim`` must equal the architecture's embedding size.
        params: :class:`ClipParams`.
        ctx: unused (the CLIP tokenizer's vocabulary is fixed).
    """

    Params: ClassVar[type] = ClipParams
    zero_shot: ClassVar[bool] = False

    @classmethod
    def required_files(cls, cfg: ModelCfg, params: ClipParams) -> list[RequiredFile]:
        """The CLIP weights file (pretrained only)."""
        return clip_required_files(params.weights, params.arch, f"CLIP {params.arch} weights") if cfg.pretrained else []

    def __init__(self, cfg: ModelCfg, params: ClipParams, ctx: ModelContext) -> None:
        super().__init__()
        dim = arch_embed_dim(params.arch)
        if cfg.embed_dim != dim:
            raise ConfigError(f"model.embed_dim is {cfg.embed_dim} but CLIP '{params.arch}' embeds into {dim}; "
                              f"set model.embed_dim: {dim}")
        self.p = params
        self.upstream_compat = cfg.upstream_compat
        self.clip = build_clip(params.arch, cfg.pretrained, params.weights, params.quick_gelu, params.precision,
                               what=f"CLIP {params.arch} weights (model.params.weights)")

    # ------------------------------------------------------------------------------------------- encoders
    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch with ``images`` [N, 3, H, W] (CLIP-normalised). Returns: [N, D] float32, not normalised."""
        return self.clip.encode_image(batch["images"].to(_clip_dtype(self.clip))).float()

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch with ``tokens`` [M, 77] BPE ids (0-padded after end-of-text). Returns: [M, D] float32."""
        tokens, clip = batch["tokens"], self.clip
        if not (self.p.trim_text and _causal_argmax_text(clip)):
            return clip.encode_text(tokens).float()
        # The feature is read at the end-of-text token (the largest id) and attention is causal, so positions after
        # the batch's last end-of-text token cannot change it: drop them (captions are ~20 of 77 tokens).
        n = int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :n]
        x = clip.token_embedding(tokens).to(clip.transformer.get_cast_dtype())
        x = x + clip.positional_embedding[:n].to(x.dtype)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:n, :n]))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        proj = clip.text_projection
        return (proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj).float()

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Returns ``img_emb`` [B, D], ``txt_emb`` [B, D] and CLIP's ``logit_scale`` (scalar, log of 1/τ)."""
        return {"img_emb": self.encode_image(batch), "txt_emb": self.encode_text(batch),
                "logit_scale": self.clip.logit_scale.float()}

    def on_train_step_start(self) -> None:
        """Clamp a trainable logit scale at ln(max_logit_scale), as CLIP training does after each step."""
        ls = self.clip.logit_scale
        if ls.requires_grad:
            with torch.no_grad():
                ls.clamp_(0.0, math.log(self.p.max_logit_scale))

    # ------------------------------------------------------------------------------------------ checkpoints
    def _upstream_name(self, key: str) -> str | None:
        """rsitr name for one upstream key (None: not a CLIP weight)."""
        key = key.removeprefix("module.").removeprefix("PE_RSITR.")
        return "clip." + key.removeprefix("model.")

    def convert_upstream(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Map OpenAI/open_clip (``visual.conv1.weight``) or PE-RSITR (``PE_RSITR.model.*``) keys to ``clip.*``.

        Returns:
            (converted, used): rsitr keys -> tensors, and the upstream keys that were placed.
        """
        own = self.state_dict()
        converted: dict[str, torch.Tensor] = {}
        used: set[str] = set()
        for key, value in state.items():
            name = self._upstream_name(key)
            if name is not None and name in own:
                converted[name] = value.reshape(own[name].shape) if name.endswith("logit_scale") else value
                used.add(key)
        if not self.p.quick_gelu and any(k.startswith("clip.") for k in converted):
            log.warning("loading OpenAI-layout CLIP weights with quick_gelu=false: OpenAI CLIP and PE-RSITR use "
                        "QuickGELU, so the embeddings will differ from upstream")
        return converted, used


@MODELS.register("clip_zeroshot")
class ClipZeroShot(ClipFinetune):
    """Pretrained CLIP evaluated as it is (no parameter trains; test.py needs no training checkpoint)."""

    zero_shot: ClassVar[bool] = True

    def __init__(self, cfg: ModelCfg, params: ClipParams, ctx: ModelContext) -> None:
        super().__init__(cfg, params, ctx)
        self.clip.requires_grad_(False)
