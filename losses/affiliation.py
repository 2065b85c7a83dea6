"""Affiliation (scene-centre) loss of PIR and FISVL, METHODS.md C5.

For every sample i the scene centres are weighted means over the batch,

    c^img_i = Σ_k W_ik v_k / Σ_k W_ik,   c^txt_i likewise with t_k,   W_ik = 1[scene_i = scene_k] + eps,

(upstream adds eps = 6e-5 to the whole same-scene mask, so other scenes leak in with a tiny weight), and

    L = ½ [ CE_j(v_i · c^txt_j / τ₂; target i) + CE_j(t_i · c^img_j / τ₂; target i) ],

with τ₂ = ``outputs["temp2"]`` (PIR/FISVL's learnable ``temp2``) or ``params.temperature``. Scenes come from
``batch["scene_ids"]``. Samples of one scene share a centre, so their logits tie, as upstream.

Differences from upstream: centres are computed over the all-gathered global batch (upstream: per rank, then
gathered; identical on one process). Upstream's text term is transposed (``CE`` over the rows of
``(T · C_imgᵀ)ᵀ``: for image centre i, classify which text is caption i); ``upstream_compat: true`` restores it,
the default is the symmetric text -> image-centre term written above.
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
class AffiliationParams:
    temperature: float = 0.07  # used when the model gives no learnable temp2
    temp_key: str = "temp2"  # outputs entry holding τ₂
    eps: float = 6e-5  # weight of other-scene samples in a centre (upstream 6e-5)
    gather: bool = True  # all-gather features across ranks (no-op on one process)
    normalize: bool = True  # L2-normalise features first (PIR/FISVL features are already unit norm)
    upstream_compat: bool = False  # transposed text term as upstream


def scene_centres(feat: torch.Tensor, scenes: torch.Tensor, eps: float) -> torch.Tensor:
    """Eps-weighted per-sample scene means.

    Args:
        feat: [B, D] features; scenes: [B] scene ids; eps: weight of other-scene samples.

    Returns:
        [B, D]: row i is the weighted mean of the rows of ``feat`` in the scene of sample i.
    """
    w = (scenes.view(-1, 1) == scenes.view(1, -1)).to(feat.dtype) + eps
    return (w @ feat) / w.sum(dim=1, keepdim=True)


def affiliation_loss(v: torch.Tensor, t: torch.Tensor, scenes: torch.Tensor, tau: torch.Tensor | float,
                     eps: float = 6e-5, upstream_compat: bool = False) -> torch.Tensor:
    """Affiliation loss (see the module docstring).

    Args:
        v, t: [B, D] image / text features (paired row by row); scenes: [B] scene ids; tau: τ₂.
        eps: centre weight of other scenes; upstream_compat: transposed text term.

    Returns:
        scalar.
    """
    c_img, c_txt = scene_centres(v, scenes, eps), scene_centres(t, scenes, eps)
    target = torch.arange(v.shape[0], device=v.device)
    loss_i = F.cross_entropy(v @ c_txt.t() / tau, target)
    t2c = t @ c_img.t() / tau
    loss_t = F.cross_entropy(t2c.t() if upstream_compat else t2c, target)
    return 0.5 * (loss_i + loss_t)


@LOSSES.register("affiliation")
class AffiliationLoss(nn.Module):
    """Registered ``affiliation``: reads ``img_emb``, ``txt_emb``, ``temp2`` and ``batch["scene_ids"]``."""

    Params = AffiliationParams

    def __init__(self, params: AffiliationParams) -> None:
        super().__init__()
        self.p = params

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> torch.Tensor:
        v, t = outputs["img_emb"].float(), outputs["txt_emb"].float()
        if self.p.normalize:
            v, t = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
        scenes = batch["scene_ids"].to(v.device)
        if self.p.gather:
            v, t, scenes = all_gather_with_grad(v), all_gather_with_grad(t), all_gather_with_grad(scenes)
        tau = outputs.get(self.p.temp_key, self.p.temperature)
        return affiliation_loss(v, t, scenes, tau, self.p.eps, self.p.upstream_compat)
