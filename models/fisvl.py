"""``fisvl``: Fine-grained Information Supplementation and Value-guided Learning (FISVL), METHODS.md C6.

Paper: Z. Zhou, Y. Feng, A. Qiu, G. Duan, M. Zhou, "Fine-Grained Information Supplementation and Value-Guided
Learning for Remote Sensing Image-Text Retrieval", IEEE JSTARS 2024. Upstream: https://github.com/zhouzihui2001/FISVL
(built from the PIR code base).

Towers as PIR (models/pir.py): Swin-T 22k (``pretrained/swin_tiny_patch4_window7_224_22k.pth``), BERT-base
(``pretrained/bert-base-uncased/``), AID ResNet-50 (``pretrained/aid_28-rsp-resnet-50-ckpt.pth``), all user-provided.

FGIS image path: nodes ``[conv, loc, Swin CLS, Swin tokens]`` (1 + 1 + 1 + N, each ``embed_dim``) where
``conv = drop(conv_proj(GAP ResNet))`` and ``loc = SFGS(ResNet stem)`` (models/encoders/sfgs.py, the SWAN branch on
56x56 maps at 224 px); ``gcn_steps`` graph-reasoning steps; ``img = norm(CLS + drop(head_img(X[2])))``.
Text: ``norm(text_proj(BERT [CLS]))`` (no LCA). Temperatures ``temp`` / ``temp2`` as PIR. Losses (value-guided
schedule in config, losses/fisvl.py): epochs 0-9 multi-positive InfoNCE (eps 6e-5) + affiliation + scene-adaptive
fine-grained loss; epochs >= 10 weighted InfoNCE + affiliation.

Where rsitr differs from upstream (``model.upstream_compat: true`` restores upstream numerics):

* ``finetune_resnet: false`` freezes only the ResNet trunk. Upstream's ``finetune_conv: False`` froze every child
  of its ResNet module, which also held the randomly initialised SFGS branch, so SFGS never trained (D9).
  ``freeze_sfgs: true`` restores that (on under upstream_compat).
* BERT sees the attention mask (upstream attends to padding, E); the SFGS attention uses textbook q/k/v order
  (upstream mixes them, see sfgs.py); both follow ``upstream_compat``. Without the mask a caption's embedding
  depends on its batch's padding: upstream evaluates text in batches of 128 padded to the longest caption, as
  ``data.eval_batch_size: 128`` in the configs does.
* Frozen ResNet BatchNorm kept in eval mode (``resnet_bn: train`` = upstream: batch statistics in training, drift,
  D10).
* BERT's [PAD] row keeps transformers' ``padding_idx`` and never trains; upstream's embedding has none
  (``bert_pad_grad: true``, on under upstream_compat; see models/pir.py).
* Loss quirks of upstream (scene loss: int-truncated weights, a positive mask that never matches; transposed
  affiliation text term) are loss flags (losses/fisvl.py, losses/affiliation.py). tests/models/test_parity_train.py
  checks one training step per schedule phase (loss terms, total, every gradient norm) against the upstream code.
* Best epoch on validation, not test (D2); the upstream fixed JSON split is SWAN's stratified split
  (``data.protocol: fixed`` + ``data.split_dir`` for the exact files).
* Per-caption weights of the weighted contrastive loss were never published; rsitr defines them in
  losses/fisvl.py (a function of caption length) or reads them from a weight file through ``batch["cap_weight"]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelCfg
from models.base import ModelContext
from models.encoders.blocks import GraphReasoning
from models.encoders.sfgs import SFGS, convert_sfgs_upstream
from models.encoders.multiscale import stage_widths
from models.pir import DualTowers, TowerParams
from models.registry import MODELS


@dataclass(frozen=True)
class FISVLParams(TowerParams):
    gcn_steps: int = 2  # graph-reasoning steps (upstream img_gcn_step)
    sfgs_mid: int = 32  # SFGS filter width
    sfgs_grid: int = 16  # SFGS pooled map side
    sfgs_heads: int = 8  # SFGS attention heads
    freeze_sfgs: bool = False  # upstream bug: frozen with the ResNet (on under upstream_compat)
    text_mask: bool = True  # BERT attention mask (upstream_compat: false)


@MODELS.register("fisvl")
class FISVL(DualTowers):
    """FISVL: Swin + ResNet GAP + SFGS nodes with graph reasoning for images, BERT [CLS] for text."""

    Params = FISVLParams

    def __init__(self, cfg: ModelCfg, params: FISVLParams, ctx: ModelContext) -> None:
        super().__init__()
        self._build_towers(cfg, params, ctx)
        d = cfg.embed_dim
        self.sfgs = SFGS(in_channels=stage_widths(self.conv_encoder)["stem"], dim=d, mid=params.sfgs_mid,
                         grid=params.sfgs_grid, dropout=params.dropout, heads=params.sfgs_heads,
                         upstream_attn_order=cfg.upstream_compat)
        if params.freeze_sfgs or cfg.upstream_compat:
            self.sfgs.requires_grad_(False)
        self.img_gcn = nn.ModuleList([GraphReasoning(d) for _ in range(params.gcn_steps)])
        self.head_img = nn.Linear(d, d)
        self.dropout_head_img = nn.Dropout(params.dropout)

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """FGIS. Args: batch with ``images`` [B, 3, H, W]. Returns: [B, D] unit norm."""
        vis, res = self._image_inputs(batch)
        tokens = self.vision_proj(vis)  # [B, 1+N, D]
        conv = self.dropout_conv_proj(self.conv_proj(res["gap"]))  # [B, D]
        loc = self.sfgs(res["stem"])  # [B, D]
        x = torch.cat([conv.unsqueeze(1), loc.unsqueeze(1), tokens], dim=1)  # [B, 3+N, D]
        for step in self.img_gcn:
            x = step(x)
        return F.normalize(tokens[:, 0] + self.dropout_head_img(self.head_img(x[:, 2])), dim=-1)

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Args: batch with ``tokens`` [B, L] (``attention_mask``). Returns: norm(text_proj(CLS)) [B, D]."""
        x, _ = self._text_tokens(batch, self.p.text_mask and not self.compat)
        return F.normalize(x[:, 0], dim=-1)

    def convert_upstream(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Map a FISVL checkpoint (upstream_keys/fisvl.txt layout) to this model."""
        out, used = convert_sfgs_upstream(state, "conv_encoder.loc_fea1.conv_filter.", "conv_encoder.loc_fea1.sfgs.",
                                          "sfgs.")
        rest, used_rest = self._convert_common({k: v for k, v in state.items() if k not in used})
        out.update(rest)
        return out, used | used_rest
