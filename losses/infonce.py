"""Symmetric and multi-positive InfoNCE (CLIP / PIR / FISVL style, METHODS.md C0), with cross-rank gathering.

logits = v · tᵀ / τ over the (optionally all-gathered) global batch. Single-positive: targets are the diagonal.
Multi-positive (PIR/FISVL): y[i, j] = 1[img_i = img_j], plus ``eps`` (FISVL's 6e-5 smoothing), normalised per row;
L = ½[CE(logits, y) + CE(logitsᵀ, yᵀ)] with soft targets. τ is ``outputs["temp"]`` when the model has a learnable
temperature (PIR's ``temp``), else ``1 / outputs["logit_scale"].exp()`` for CLIP-style models, else ``params.temperature``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.dist import all_gather_with_grad
from losses import LOSSES


@dataclass(frozen=True)
class InfoNCEParams:
    temperature: float = 0.07  # used when the model gives no learnable temperature
    multi_positive: bool = False  # captions of the same image are all positives
    eps: float = 0.0  # target smoothing before row normalisation (FISVL: 6e-5)
    gather: bool = True  # all-gather features across ranks (no-op on one process)
    img_key: str = "img_emb"
    txt_key: str = "txt_emb"
    normalize: bool = True  # L2-normalise features first


def temperature_from(outputs: Mapping[str, Any], default: float) -> torch.Tensor | float:
    """τ from the model outputs (``temp`` or ``logit_scale``) or the default."""
    if "temp" in outputs:
        return outputs["temp"]
    if "logit_scale" in outputs:
        return 1.0 / outputs["logit_scale"].exp()
    return default


def info_nce(v: torch.Tensor, t: torch.Tensor, tau: torch.Tensor | float, ids: torch.Tensor | None = None,
             eps: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE.

    Args:
        v: [B, D] image features, t: [B, D] text features (already normalised if wanted).
        tau: temperature (scalar tensor or float).
        ids: [B] image ids for multi-positive targets; None = diagonal targets.
        eps: target smoothing (multi-positive only).
    """
    logits = v @ t.t() / tau
    if ids is None:
        target = torch.arange(v.shape[0], device=v.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    pos = (ids.view(-1, 1) == ids.view(1, -1)).float() + eps
    y = pos / pos.sum(dim=1, keepdim=True)
    loss_i2t = -(F.log_softmax(logits, dim=1) * y).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(logits.t(), dim=1) * y.t()).sum(dim=1).mean()
    return 0.5 * (loss_i2t + loss_t2i)


@LOSSES.register("infonce")
class InfoNCELoss(nn.Module):
    """Registered ``infonce``."""

    Params = InfoNCEParams

    def __init__(self, params: InfoNCEParams) -> None:
        super().__init__()
        self.p = params

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> torch.Tensor:
        v, t = outputs[self.p.img_key].float(), outputs[self.p.txt_key].float()
        if self.p.normalize:
            v, t = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
        ids = batch["img_ids"].to(v.device) if self.p.multi_positive else None
        if self.p.gather:
            v, t = all_gather_with_grad(v), all_gather_with_grad(t)
            ids = all_gather_with_grad(ids) if ids is not None else None
        return info_nce(v, t, temperature_from(outputs, self.p.temperature), ids, self.p.eps)
