"""GaLR: global and local information for remote-sensing image-text retrieval (METHODS.md C2).

Paper: Z. Yuan et al., "Remote Sensing Cross-Modal Text-Image Retrieval Based on Global and Local Information",
IEEE TGRS 2022. Upstream: https://github.com/xiaoyuan1996/GaLR (read at 60d6576029; written here from the spec).

* Global branch: ResNet-18 + MVSA (:mod:`models.encoders.mvsa`), L2-normalised.
* Local branch: a 3-layer GCN over per-image region graphs (``local_rep`` [20, 20], ``local_adj`` [20, 20]), then
  Linear(400 -> 512) and L2 norm (:mod:`models.encoders.galr_local`).
* MIDF fusion of both (:mod:`models.encoders.midf`); the image embedding is its output.
* Text: uni-skip GRU -> Linear(2400 -> 512) -> ReLU. Score: cosine. Loss (config): C0 triplet, sum, margin 0.2.
* Schedule (configs): Adam 2e-4, x0.7 every 20 epochs, batch 100, 256 px, 3 random 80/20 folds; 20 epochs on
  RSITMD, 70 on RSICD (and UCM / Sydney). Optional GaLR rerank at test time: ``eval.rerank: galr``.

Local-feature source (``model.params.local_source``):

* ``npy`` (RSITMD / RSICD configs): the upstream DREA file at ``model.params.local_path``, looked up through
  ``batch["filenames"]`` (key ``<image stem>.txt``; a missing image is a clear KeyError). With
  ``model.pretrained: false`` and no file at that path the local inputs are zeros (smoke runs, model_info; a
  warning says so); with ``model.pretrained: true`` a missing file is an error. The upstream repository
  ships them as ``detection/representation/RSITMD/rsitmd_local.npy`` and ``.../RSICD/rsicd_local.npy``.
* ``backbone`` (UCM / Sydney configs, or any dataset without DREA files): an rsitr variant that pools the ResNet
  f4 map into 20 region nodes with a cosine-similarity adjacency (a 1x1 conv of 512 x 20 extra weights).
* ``zeros``: the ablation without local information.

Running ``bash scripts/run_rsitmd.sh galr`` (train 3 folds with ``configs/rsitmd_galr.yaml``, then test) needs:

* ``data/rsitmd_precomp/`` (``train_caps.txt``, ``train_filename.txt``, ``test_caps.txt``, ``test_filename.txt``)
  and the RSITMD images (``data/rsitmd_precomp/images/`` or ``data.image_dir``);
* ``data/vocab/rsitmd_splits_vocab.json`` (upstream vocab, ``data.vocab``);
* ``pretrained/resnet18-f37072fd.pth`` (torchvision ImageNet ResNet-18, ``model.params.resnet_weights``);
* ``pretrained/skipthoughts/{dictionary.txt, utable.npy, uni_skip.npz}`` (Kiros skip-thoughts release,
  ``model.params.skipthought_dir``);
* ``data/galr_local/rsitmd_local.npy`` (upstream DREA local features, ``model.params.local_path``), or
  ``--set model.params.local_source=backbone`` to run without it.

Deliberate differences from upstream (each restorable):

* MIDF uses weight 1 for the local term; upstream uses weight 0 twice (D5) -> ``upstream_compat: true``.
* MIDF LayerNorm is the standard one; upstream divides by (unbiased std + eps) -> ``upstream_compat: true``.
* Empty captions read the first GRU step; upstream reads the last -> ``upstream_compat: true``.
* The unused ResNet ``fc`` is kept for checkpoint loading but frozen (no gradient either way upstream).
* ``local_source: backbone`` / ``zeros`` do not exist upstream (DREA is unreleased, D6).
* The triplet loss (config) skips other captions of the same image as negatives (``mask_same_image: true``, the
  rsitr default); ``mask_same_image: false`` is the upstream loss.
* ``backbone`` may name any timm model instead of the ResNet (as AMFMN, :mod:`models.encoders.multiscale`), with
  ``backbone_weights`` (local file or ``pkg:``) and ``finetune_backbone``; not in the paper.
* Published checkpoints load with ``model.init_from: upstream:PATH`` (every key of upstream_keys/galr.txt).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from core.config import ConfigError, ModelCfg
from core.files import RequiredFile
from models.amfmn import AMFMNParams, amfmn_required_files, image_tower, stage_prefix, text_tower, tower_stages
from models.base import FrozenPrefix, ModelContext, RetrievalModel
from models.encoders.galr_local import GCN, BackboneRegions, LocalFeatureBank
from models.encoders.midf import MIDF, upstream_to_own
from models.encoders.mvsa import upstream_tower_keys
from models.registry import MODELS

LOCAL_SOURCES = ("npy", "zeros", "backbone")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GaLRParams(AMFMNParams):
    """AMFMN's tower settings plus the local branch and MIDF fusion."""

    local_source: str = "npy"  # npy (upstream DREA file) | backbone (rsitr variant) | zeros (ablation)
    local_path: str = ""  # local_source=npy: the upstream .npy dict (adj_matrix / local_rep by "<stem>.txt")
    local_nodes: int = 20  # region graph size
    local_dim: int = 20  # node feature size
    fusion_heads: int = 8  # MIDF attention heads (embed_dim / heads per head)
    fusion_ffn: int = 1024  # MIDF feed-forward size
    fusion_dropout: float = 0.1  # MIDF block dropout
    dynamic_dim: int = 512  # hidden size of the MIDF dynamic-weight MLP
    dynamic_dropout: float = 0.2  # dropout inside the dynamic-weight MLP


@MODELS.register("galr")
class GaLR(RetrievalModel):
    """GaLR (module docstring). ``encode_image`` needs ``images`` and, for ``local_source: npy``, ``filenames``."""

    Params = GaLRParams

    @classmethod
    def required_files(cls, cfg: ModelCfg, params: GaLRParams) -> list[RequiredFile]:
        """AMFMN's files and, for ``local_source: npy``, the DREA local features (pretrained only)."""
        needs = amfmn_required_files(cfg, params)
        if cfg.pretrained and params.local_source == "npy" and params.local_path:
            needs.append(RequiredFile("model.params.local_path", params.local_path,
                                      "GaLR DREA local features .npy; or set model.params.local_source=backbone"))
        return needs

    def __init__(self, cfg: ModelCfg, params: GaLRParams, ctx: ModelContext) -> None:
        super().__init__()
        if params.local_source not in LOCAL_SOURCES:
            raise ConfigError(f"model.params.local_source must be one of {', '.join(LOCAL_SOURCES)}, "
                              f"got '{params.local_source}'")
        if params.local_source == "npy" and not params.local_path:
            raise ConfigError("model.params.local_source=npy needs model.params.local_path (the upstream GaLR DREA "
                              ".npy); without it set local_source to 'backbone' or 'zeros'")
        self.p = params
        self.image = image_tower(cfg, params, normalize=True)
        self._prefixes = stage_prefix(self.image, params.backbone)
        self.gcn = GCN(params.local_nodes, params.local_dim, cfg.embed_dim)
        self.bank = None
        if params.local_source == "npy":
            if cfg.pretrained or os.path.isfile(params.local_path):
                self.bank = LocalFeatureBank(params.local_path, params.local_nodes, params.local_dim)
            else:  # random-init smoke runs (model_info, tests) without the data file: zero local inputs (C8)
                log.warning("GaLR: %s not found and model.pretrained=false: the local inputs are zeros",
                            params.local_path)
        if params.local_source == "backbone":
            self.regions = BackboneRegions(self.image.mvsa.solo_proj.in_features, params.local_nodes, params.local_dim)
        self.fusion = MIDF(cfg.embed_dim, params.fusion_heads, params.fusion_ffn, params.fusion_dropout,
                           params.dynamic_dim, params.dynamic_dropout, cfg.upstream_compat)
        self.text = text_tower(cfg, params, ctx)

    def frozen_prefixes(self) -> dict[str, FrozenPrefix]:
        """With ``finetune_backbone: false``: the backbone's f1..f4 maps per image."""
        return self._prefixes

    def local_inputs(self, batch: Mapping[str, Any], feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(rep [B, N, dim], adj [B, N, N]) from the configured source."""
        f4 = feats["f4"]
        if self.bank is not None:
            if "filenames" not in batch:
                raise KeyError("GaLR with local_source=npy needs batch['filenames'] to look up local features")
            rep, adj = self.bank.lookup(list(batch["filenames"]), f4.device)
            return rep.to(f4.dtype), adj.to(f4.dtype)
        if self.p.local_source == "backbone":
            return self.regions(f4)
        n, d = self.p.local_nodes, self.p.local_dim
        return f4.new_zeros(f4.shape[0], n, d), f4.new_zeros(f4.shape[0], n, n)

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch with images [N, 3, S, S] (+ filenames). Returns: fused image embedding [N, D]."""
        g, feats = self.image(None, tower_stages(self.image, self._prefixes, batch))
        rep, adj = self.local_inputs(batch, feats)
        return self.fusion(g, self.gcn(adj, rep))

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch with tokens [M, L], lengths [M]. Returns: [M, D]."""
        return self.text(batch["tokens"], batch["lengths"])

    def convert_upstream(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Map an upstream GaLR state dict (keys as in upstream_keys/galr.txt) to this model."""
        own = self.state_dict()
        mapping = upstream_tower_keys("image.", own)
        mapping.update(self.text.upstream_keys("text."))
        for k in own:
            if k.startswith("gcn."):
                mapping[k] = "local_feature." + k[len("gcn."):]
        for u in state:
            if u.startswith("fusion."):
                mapping["fusion." + upstream_to_own(u[len("fusion."):])] = u
        converted = {k: state[u] for k, u in mapping.items() if u in state}
        return converted, {mapping[k] for k in converted}
