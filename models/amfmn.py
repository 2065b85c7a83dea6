"""AMFMN: asymmetric multimodal feature matching network (METHODS.md C1), the base of GaLR.

Paper: Z. Yuan et al., "Exploring a Fine-Grained Multiscale Method for Cross-Modal Remote Sensing Image Retrieval",
IEEE TGRS 2021. Upstream: https://github.com/xiaoyuan1996/AMFMN (read at c09bcfba90; written here from the spec).

* Image: ResNet-18 (ImageNet weights from a local file) + the MVSA branch (:mod:`models.encoders.mvsa`),
  not normalised.
* Text: uni-skip GRU (620 -> 2400, :mod:`models.encoders.skipthoughts`) -> Linear(2400 -> 512) -> ReLU.
* Score: for every (image v, caption t) pair the caption is gated by the image, t' = sigmoid(W v + b) * t, and
  the score is cos(v, t'). The score is pairwise, so :meth:`AMFMN.similarity` overrides the cosine. It is computed
  in closed form without the [N, M, D] tensor upstream builds (exact, not an approximation):
  v . t' = ((v * g) @ tᵀ) and ||t'||² = (g²) @ (t²)ᵀ with g = sigmoid(W v + b).
* Loss (config): the C0 triplet, sum over negatives, margin 0.2. Adam 2e-4, x0.7 every 20 epochs, 70 epochs,
  batch 100, 5 random 80/20 folds, 256 px.

Files a user provides (paths in ``model.params``; ``model.pretrained: false`` reads none of them):

* ``resnet_weights``: torchvision ImageNet ResNet-18, ``pretrained/resnet18-f37072fd.pth``.
* ``skipthought_dir``: ``pretrained/skipthoughts/`` with ``dictionary.txt``, ``utable.npy``, ``uni_skip.npz``
  (http://www.cs.toronto.edu/~rkiros/models/). Empty string = random text init even when pretrained.
* ``data.vocab``: the upstream ``data/vocab/rsitmd_splits_vocab.json`` (word ids as upstream).

Deliberate differences from upstream:

* Published checkpoints: ``model.init_from: upstream:PATH``. ``vgmf_gate.*`` (``VGMF_Fusion``, defined but never
  called upstream) is read and dropped — it cannot change any output.
* The unused ResNet classifier ``fc`` is kept (checkpoints hold it) but frozen.
* ``upstream_compat`` (default off) reads the sentence vector where upstream does for empty captions (L minus
  #pad, i.e. the last step), instead of at the first token.
* The triplet loss (config) skips other captions of the same image as negatives (``mask_same_image: true``);
  ``mask_same_image: false`` is the upstream loss.
* ``backbone`` may name any timm model instead of the ResNet (:mod:`models.encoders.multiscale`: its stride-4..32
  stages feed MVSA, built for their widths; weights from ``backbone_weights``, a local file or a ``pkg:``
  reference); ``finetune_backbone: false`` freezes it (then a feature-cache prefix). Not in the paper.
* AMFMN's train transform never rotated (``RandomRotation(0, 90)`` means degrees=0); configs use ``transform: amfmn``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from core.config import ConfigError, ModelCfg
from models.base import FrozenPrefix, ModelContext, RetrievalModel
from core.files import RequiredFile
from models.encoders.cnn import resnet_required_files
from models.encoders.multiscale import STAGES, is_resnet_name, pack_maps, timm_name, unpack_maps
from models.encoders.mvsa import MVSAImageTower, upstream_tower_keys
from models.encoders.skipthoughts import SkipThoughtText, skipthought_required_files
from models.registry import MODELS


@dataclass(frozen=True)
class AMFMNParams:
    backbone: str = "resnet18"  # torchvision ResNet (upstream: resnet18) or any timm name (multi-scale stages)
    resnet_weights: str = "pretrained/resnet18-f37072fd.pth"  # ImageNet weights, torchvision layout
    backbone_weights: str = ""  # weights of a timm backbone (local file or pkg: reference)
    finetune_backbone: bool = True  # paper: the ResNet trains; false freezes it (a feature-cache prefix)
    skipthought_dir: str = "pretrained/skipthoughts"  # dictionary.txt, utable.npy, uni_skip.npz ("" = random)
    image_size: int = 256  # must equal data.image_size (MVSA attention map is (image_size/16)^2)
    dim_word: int = 620  # uni-skip word embedding size
    dim_hidden: int = 2400  # uni-skip GRU hidden size
    text_dropout: float = 0.25  # variational dropout inside the GRU (training)


def amfmn_required_files(cfg: ModelCfg, p: Any) -> list[RequiredFile]:
    """ResNet weights + skip-thought files of the AMFMN towers (none without ``cfg.pretrained``)."""
    if not cfg.pretrained:
        return []
    if is_resnet_name(p.backbone):
        needs = resnet_required_files(p.resnet_weights, f"ImageNet {p.backbone} weights, torchvision layout",
                                      "model.params.resnet_weights")
    else:
        needs = [RequiredFile("model.params.backbone_weights", p.backbone_weights,
                              f"weights of timm backbone '{timm_name(p.backbone)}'")]
    return needs + (skipthought_required_files(p.skipthought_dir) if p.skipthought_dir else [])


def text_tower(cfg: ModelCfg, p: Any, ctx: ModelContext) -> SkipThoughtText:
    """The uni-skip text tower for a word vocabulary (error for sub-word tokenizers)."""
    if not ctx.vocab_words:
        raise ConfigError(f"model '{cfg.name}' needs a word vocabulary (data.tokenizer: vocab)")
    return SkipThoughtText(list(ctx.vocab_words), cfg.embed_dim, p.dim_word, p.dim_hidden, p.text_dropout,
                           p.skipthought_dir, cfg.pretrained and bool(p.skipthought_dir),
                           upstream_lengths=cfg.upstream_compat)


def image_tower(cfg: ModelCfg, p: Any, normalize: bool) -> MVSAImageTower:
    """The MVSA image tower of AMFMN / GaLR from their params."""
    return MVSAImageTower(cfg.embed_dim, p.image_size, p.backbone, cfg.pretrained, p.resnet_weights, normalize,
                          p.backbone_weights, p.finetune_backbone)


def stage_prefix(tower: MVSAImageTower, backbone_name: str) -> dict[str, FrozenPrefix]:
    """The frozen backbone of ``tower`` as the image prefix of the feature cache (none when it trains)."""
    if tower.finetune:
        return {}

    def encode(batch: Mapping[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return pack_maps(tower.stages(batch["images"]), STAGES)

    return {"image": FrozenPrefix([tower.backbone], encode, f"stages:{backbone_name}:f1-f4")}


def tower_stages(tower: MVSAImageTower, prefixes: dict[str, FrozenPrefix], batch: Mapping[str, Any]
                 ) -> dict[str, torch.Tensor]:
    """f1..f4 from the feature cache when it holds every image of the batch, else from the backbone."""
    prefix = prefixes.get("image")
    store = prefix.store if prefix is not None else None
    rows = store.get_alias(batch["filenames"]) if store is not None and "filenames" in batch else None
    if rows is not None:
        return unpack_maps(rows.to(tower.mvsa.solo_proj.weight.device), STAGES)
    if "images" not in batch:
        raise RuntimeError("an image batch without pixels whose stage maps are not all in the feature cache")
    return tower.stages(batch["images"])


def gated_cosine(v: torch.Tensor, g: torch.Tensor, t: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """cos(v_i, g_i * t_j) for every pair without building [N, M, D].

    Args:
        v: images [N, D]; g: their gates [N, D]; t: captions [M, D].

    Returns:
        [N, M]; the denominator is clamped at ``eps`` as upstream's ``cosine_similarity``.
    """
    num = (v * g) @ t.t()
    den = v.norm(dim=-1, keepdim=True) * ((g * g) @ (t * t).t()).clamp(min=0).sqrt()
    return num / den.clamp(min=eps)


@MODELS.register("amfmn")
class AMFMN(RetrievalModel):
    """AMFMN (module docstring). ``encode_image`` -> MVSA feature [N, D]; ``encode_text`` -> [M, D]."""

    Params = AMFMNParams

    @classmethod
    def required_files(cls, cfg: ModelCfg, params: AMFMNParams) -> list[RequiredFile]:
        """ResNet weights and the skip-thought release (pretrained only)."""
        return amfmn_required_files(cfg, params)
    pairwise_similarity = True  # similarity() is the gated-text cosine, not a plain matmul

    def __init__(self, cfg: ModelCfg, params: AMFMNParams, ctx: ModelContext) -> None:
        super().__init__()
        self.p = params
        self.image = image_tower(cfg, params, normalize=False)
        self._prefixes = stage_prefix(self.image, params.backbone)
        self.text = text_tower(cfg, params, ctx)
        self.gate = nn.Linear(cfg.embed_dim, cfg.embed_dim)  # upstream cross_attention_s (soft_att)

    def frozen_prefixes(self) -> dict[str, FrozenPrefix]:
        """With ``finetune_backbone: false``: the backbone's f1..f4 maps per image."""
        return self._prefixes

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch with images [N, 3, S, S]. Returns: [N, D] (not normalised: the gate reads its scale)."""
        return self.image(None, tower_stages(self.image, self._prefixes, batch))[0]

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch with tokens [M, L], lengths [M]. Returns: [M, D]."""
        return self.text(batch["tokens"], batch["lengths"])

    def similarity(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Gated-text cosine. Args: [N, D], [M, D]. Returns: [N, M]."""
        v, t = img_emb.float(), txt_emb.float()
        return gated_cosine(v, torch.sigmoid(self.gate(v)), t)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Returns: img_emb [B, D], txt_emb [B, D], sims [B, B] (the pairwise scores the triplet loss reads)."""
        img, txt = self.encode_image(batch), self.encode_text(batch)
        return {"img_emb": img, "txt_emb": txt, "sims": self.similarity(img, txt)}

    def convert_upstream(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Map an upstream AMFMN state dict (keys as in upstream_keys/amfmn.txt) to this model."""
        own = self.state_dict()
        mapping = upstream_tower_keys("image.", own)
        mapping.update(self.text.upstream_keys("text."))
        mapping["gate.weight"] = "cross_attention_s.cross_attention.0.weight"
        mapping["gate.bias"] = "cross_attention_s.cross_attention.0.bias"
        converted = {k: state[u] for k, u in mapping.items() if u in state}
        used = {mapping[k] for k in converted}
        used |= {k for k in state if k.startswith("vgmf_gate.")}  # unused upstream module: read and dropped
        return converted, used
