"""Hinge triplet ranking loss (VSE / VSE++), as used by AMFMN, GaLR, SWAN and KAMCL (METHODS.md C0).

s is the batch score matrix [B, B] (row i = image of pair i, column j = caption of pair j; the diagonal holds the
positives). cost_c[i, j] = [m + s[i, j] - s[i, i]]+ (caption negatives for image i) and
cost_i[i, j] = [m + s[i, j] - s[j, j]]+ (image negatives for caption j). ``mode: sum`` sums every entry of both
(GaLR/AMFMN/SWAN, ``max_violation: 0``); ``mode: hardest`` sums the row max of cost_c and the column max of cost_i
(VSE++, KAMCL). The batch is summed, not averaged, as upstream.

Difference from upstream (flag ``mask_same_image``, default true): pairs whose caption belongs to the same image
(``batch["img_ids"]``) are never negatives; upstream masks only the diagonal (``mask_same_image: false``).
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
class TripletParams:
    margin: float = 0.2
    mode: str = "sum"  # sum | hardest
    mask_same_image: bool = True  # false = upstream (only the diagonal is masked)
    reduction: str = "sum"  # sum (upstream) | mean (divide by the batch size)
    gather: bool = True  # DDP: score the global batch (all-gathered embeddings), as one process would


def batch_scores(outputs: Mapping[str, Any], gather: bool = False) -> torch.Tensor:
    """The [B, B] score matrix: ``outputs["sims"]`` when the model gives one (pairwise methods score the local
    batch), else the cosine of the embeddings, all-gathered across ranks when ``gather``."""
    if "sims" in outputs:
        return outputs["sims"]
    v, t = F.normalize(outputs["img_emb"], dim=-1), F.normalize(outputs["txt_emb"], dim=-1)
    if gather:
        v, t = all_gather_with_grad(v), all_gather_with_grad(t)
    return v @ t.t()


def triplet_loss(s: torch.Tensor, margin: float, mode: str, neg_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Triplet loss on a square score matrix.

    Args:
        s: [B, B] scores, positives on the diagonal.
        margin: hinge margin.
        mode: ``sum`` or ``hardest``.
        neg_mask: [B, B] bool, True where (i, j) must not count as a negative (the diagonal is always excluded).

    Returns:
        scalar loss (summed over the batch).
    """
    diag = s.diag()
    cost_c = (margin + s - diag.view(-1, 1)).clamp(min=0)
    cost_i = (margin + s - diag.view(1, -1)).clamp(min=0)
    mask = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    if neg_mask is not None:
        mask = mask | neg_mask
    cost_c = cost_c.masked_fill(mask, 0)
    cost_i = cost_i.masked_fill(mask, 0)
    if mode == "hardest":
        return cost_c.max(dim=1).values.sum() + cost_i.max(dim=0).values.sum()
    if mode == "sum":
        return cost_c.sum() + cost_i.sum()
    raise ConfigError(f"loss triplet: mode must be 'sum' or 'hardest', got '{mode}'")


@LOSSES.register("triplet")
class TripletLoss(nn.Module):
    """Registered ``triplet``: reads ``outputs["sims"]`` or ``img_emb``/``txt_emb``, and ``batch["img_ids"]``."""

    Params = TripletParams

    def __init__(self, params: TripletParams) -> None:
        super().__init__()
        if params.mode not in ("sum", "hardest") or params.reduction not in ("sum", "mean"):
            raise ConfigError(f"loss triplet: bad mode/reduction {params.mode}/{params.reduction}")
        self.p = params

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> torch.Tensor:
        s = batch_scores(outputs, self.p.gather).float()
        neg_mask = None
        if self.p.mask_same_image and "img_ids" in batch:
            ids = batch["img_ids"].to(s.device)
            if s.shape[0] != ids.shape[0]:
                ids = all_gather_with_grad(ids)
            neg_mask = ids.view(-1, 1) == ids.view(1, -1)
        loss = triplet_loss(s, self.p.margin, self.p.mode, neg_mask)
        return loss / s.shape[0] if self.p.reduction == "mean" else loss
