"""``example_am_softmax``: the loss of docs/ADDING_A_METHOD.md's worked example (models/example_meanpool.py).

Additive-margin softmax over the in-batch similarities, both directions (the AM-Softmax of Wang et al., IEEE SPL
2018, as used for dual encoders by Yang et al., IJCAI 2019): with cosines ``c = v tᵀ`` of the L2-normalised
features, the positive pair's cosine is lowered by ``margin`` and everything is scaled by ``scale``,

    logits = scale * (c - margin * I),   L = ½ [CE(logits, diag) + CE(logitsᵀ, diag)].

A training batch holds one item per caption, so two items can show the same image (equal ``img_ids``): such a pair
is neither the positive nor a negative, and its logit is removed (set to -inf) in both directions. With
``margin = 0`` and distinct images this is InfoNCE at temperature ``1 / scale`` (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.dist import all_gather_with_grad
from core.errors import ConfigError
from losses import LOSSES


@dataclass(frozen=True)
class AMSoftmaxParams:
    """``loss.terms[i].params`` of example_am_softmax."""

    margin: float = 0.2  # subtracted from the cosine of each positive pair
    scale: float = 20.0  # multiplies every cosine (an inverse temperature), > 0
    gather: bool = True  # all-gather features and ids across ranks (no-op on one process)


def am_softmax(v: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """The symmetric additive-margin softmax loss.

    Args:
        v: [B, D] image features, t: [B, D] caption features (L2-normalised); row i of each is a positive pair.
        ids: [B] image id of each pair; other pairs with the same id are left out of the negatives.
        margin, scale: see the module docstring.
    Returns:
        Scalar loss.
    """
    eye = torch.eye(len(v), dtype=torch.bool, device=v.device)
    same_image = (ids.view(-1, 1) == ids.view(1, -1)) & ~eye
    logits = (scale * (v @ t.t() - margin * eye.to(v.dtype))).masked_fill(same_image, float("-inf"))
    target = torch.arange(len(v), device=v.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@LOSSES.register("example_am_softmax")
class ExampleAMSoftmax(nn.Module):
    """Registered ``example_am_softmax``; reads ``img_emb`` and ``txt_emb`` of the model outputs, ``img_ids`` of the
    batch."""

    Params = AMSoftmaxParams

    def __init__(self, params: AMSoftmaxParams) -> None:
        super().__init__()
        if not params.scale > 0:
            raise ConfigError(f"loss example_am_softmax: params.scale must be > 0, got {params.scale}")
        self.p = params

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> torch.Tensor:
        v = F.normalize(outputs["img_emb"].float(), dim=-1)
        t = F.normalize(outputs["txt_emb"].float(), dim=-1)
        ids = batch["img_ids"].to(v.device)
        if self.p.gather:
            v, t, ids = all_gather_with_grad(v), all_gather_with_grad(t), all_gather_with_grad(ids)
        return am_softmax(v, t, ids, self.p.margin, self.p.scale)
