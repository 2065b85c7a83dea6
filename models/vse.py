"""``vse``: a VSE++-style baseline (timm CNN image tower + GRU text tower over the word vocabulary).

Reference: F. Faghri, D. J. Fleet, J. R. Kiros, S. Fidler, "VSE++: Improving Visual-Semantic Embeddings with Hard
Negatives", BMVC 2018 (github.com/fartashf/vsepp). rsitr uses it as the framework's baseline, for the demo and
the engine tests; it is not one of the remote-sensing papers.

Differences from the VSE++ code: any timm backbone (tiny ``test_resnet`` for tests) instead of a fixed ResNet-152,
pooled features instead of precomputed ones, GRU over packed sequences (no sorting of the batch), and the loss
(``triplet`` with ``mode: hardest``) lives in losses/.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from core.config import ModelCfg
from core.errors import ConfigError
from core.files import RequiredFile
from models.base import FrozenPrefix, ModelContext, RetrievalModel
from models.encoders.pretrained import load_timm_weights
from models.registry import MODELS

log = logging.getLogger(__name__)

WEIGHTS_KEY = "model.params.backbone_weights"


@dataclass(frozen=True)
class VSEParams:
    backbone: str = "resnet18"  # any timm model name
    backbone_weights: str = ""  # local timm/torchvision weights file (used when model.pretrained)
    finetune_backbone: bool = True  # false: freeze the CNN (kept in eval mode)
    word_dim: int = 300  # word embedding size
    hidden: int = 1024  # GRU hidden size
    layers: int = 1  # GRU layers
    bidirectional: bool = False  # average the two directions when true


def _build_backbone(p: VSEParams, pretrained: bool) -> nn.Module:
    """The timm trunk (no classifier); with ``pretrained``, its weights from ``backbone_weights``.

    timm's own file loading (``pretrained_cfg_overlay``) drops the classifier and loads with ``strict=False``, so an
    empty or unrelated file passed silently; here the file must fill 90 % of the trunk
    (:func:`models.encoders.pretrained.load_matching`), else a DataError names the file and the config key. The
    presence of the file is checked before the build (``required_files``).
    """
    net = timm.create_model(p.backbone, pretrained=False, num_classes=0)
    if pretrained:
        load_timm_weights(net, p.backbone_weights, WEIGHTS_KEY, f"the image backbone (timm '{p.backbone}')")
    return net


class GRUText(nn.Module):
    """Word embedding + GRU; the caption feature is the output at the last real token.

    Args:
        vocab_size: embedding rows (including padding id 0).
        word_dim, hidden, layers, bidirectional: GRU sizes.
    """

    def __init__(self, vocab_size: int, word_dim: int, hidden: int, layers: int, bidirectional: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.bidirectional = bidirectional
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, L], lengths [B] -> [B, hidden]."""
        packed = pack_padded_sequence(self.embed(tokens), lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        if self.bidirectional:
            out = out.view(out.shape[0], out.shape[1], 2, -1).mean(dim=2)
        idx = (lengths.clamp(min=1) - 1).to(out.device).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
        return out.gather(1, idx).squeeze(1)


@MODELS.register("vse")
class VSE(RetrievalModel):
    """CNN + GRU dual encoder; cosine similarity."""

    Params = VSEParams

    @classmethod
    def required_files(cls, cfg: ModelCfg, params: VSEParams) -> list[RequiredFile]:
        """The timm backbone weights (pretrained only)."""
        return [RequiredFile(WEIGHTS_KEY, params.backbone_weights,
                             f"ImageNet weights of timm model '{params.backbone}'")] if cfg.pretrained else []

    def __init__(self, cfg: ModelCfg, params: VSEParams, ctx: ModelContext) -> None:
        super().__init__()
        if ctx.vocab_size <= 1:
            raise ConfigError("vse needs a word vocabulary (data.tokenizer: vocab)")
        self.p = params
        self.backbone = _build_backbone(params, cfg.pretrained)
        self.img_proj = nn.Linear(self.backbone.num_features, cfg.embed_dim)
        self.text = GRUText(ctx.vocab_size, params.word_dim, params.hidden, params.layers, params.bidirectional)
        self.txt_proj = nn.Linear(params.hidden, cfg.embed_dim)
        if not params.finetune_backbone:
            self.backbone.requires_grad_(False)
        self._prefixes = {} if params.finetune_backbone else {
            "image": FrozenPrefix([self.backbone], self._pooled, f"timm:{params.backbone}:pooled")}

    def frozen_prefixes(self) -> dict[str, FrozenPrefix]:
        """A frozen backbone (``finetune_backbone: false``): its pooled feature per image."""
        return self._prefixes

    def _pooled(self, batch: Mapping[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(batch["images"])

    def train(self, mode: bool = True) -> "VSE":
        super().train(mode)
        if not self.p.finetune_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics must not drift
        return self

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        store = self._prefixes["image"].store if self._prefixes else None
        x = store.get_alias(batch["filenames"]) if store is not None and "filenames" in batch else None
        x = self.backbone(batch["images"]) if x is None else x.to(self.img_proj.weight.device)
        return F.normalize(self.img_proj(x), dim=-1)

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.normalize(self.txt_proj(self.text(batch["tokens"], batch["lengths"])), dim=-1)
