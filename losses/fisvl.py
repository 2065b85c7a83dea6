"""FISVL's value-guided losses, METHODS.md C6: scene-adaptive fine-grained loss and weighted contrastive loss.

Upstream: https://github.com/zhouzihui2001/FISVL (``models/fisvl.py``: ``get_scene_loss``, ``get_contr_loss``).

**Scene-adaptive fine-grained loss** (``fisvl_scene``), on the global batch with logits S = V Tᵀ / τ:

1. For every image row of S the hardest negative text hn_t(i) = argmax_j S[i, j] over j with img_j ≠ img_i, and
   for every text column the hardest negative image hn_v(j).
2. A_t = T T_hnᵀ / τ and A_v = V V_hnᵀ / τ (row i: sample i; column j: the hard negative picked for sample j).
3. h[i, j] = α₂ = exp(β₂·epoch) if scene_i = scene(hard negative j), else α₁ = exp(β₁·epoch).
4. Entries of A below α_m are set to 0 (they still count e⁰ = 1 in the denominator), then
   P = exp(A) / (Σ_j exp(A) + eps) per row.
5. L = ½ [mean_i Σ_j P_t[i, j] h_t[i, j] + mean_i Σ_j P_v[i, j] h_v[i, j]].

Upstream bugs, fixed by default (each a flag; ``upstream_compat: true`` sets both): the positive mask compares a
float (1 + eps) with True and never matches, so the "hard negative" is usually the positive itself
(``mask_positives``); α₁/α₂ are written into an int tensor and truncated (``int_weights``; on RSICD with β < 0 all
weights become 0 after epoch 0). α_m is applied to logits already divided by τ, as upstream.

**Weighted contrastive loss** (``weighted_infonce``): multi-positive InfoNCE with logits v_i · t_j · w_j / τ.
Upstream's per-caption weights w (the ``length`` field of an unpublished ``*_length_avg_0_7_low_0_95.json``) were
never released. rsitr's definition (a re-implementation, read from that file name): with n_j the caption's token
count (``batch["lengths"]``) and n̄ the mean count (``mean_length``, or the batch mean when 0),

    w_j = ``low`` (0.95) if n_j < ``avg_ratio`` (0.7) · n̄, else ``high`` (1.0),

i.e. captions much shorter than average get slightly softer logits. ``weight_source: batch`` uses
``batch["cap_weight"]`` instead (per-caption weights from a file, see :func:`data.caption_weights.load_caption_weights`, config key ``data.cap_weight_file``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.dist import all_gather_with_grad
from core.errors import ConfigError
from losses import LOSSES
from losses.infonce import info_nce, temperature_from


@dataclass(frozen=True)
class SceneLossParams:
    beta1: float = -0.0015  # inter-scene weight α₁ = exp(β₁·epoch) (RSITMD; RSICD -0.002)
    beta2: float = 0.02  # intra-scene weight α₂ = exp(β₂·epoch) (RSITMD; RSICD -0.001)
    alpha_m: float = 1.15  # logits (already / τ) below this are zeroed (RSITMD; RSICD 0.95)
    eps: float = 6e-5  # softmax denominator guard
    mask_positives: bool = True  # exclude same-image pairs when mining (upstream: false, bug)
    int_weights: bool = False  # truncate α₁/α₂ to int (upstream: true, bug)
    upstream_compat: bool = False  # both upstream bugs
    temperature: float = 0.07  # used when the model gives no learnable temp
    gather: bool = True


def hardest_negatives(logits: torch.Tensor, ids: torch.Tensor, mask_positives: bool) -> torch.Tensor:
    """Column index of the largest entry of every row, skipping same-id columns when ``mask_positives``.

    Args:
        logits: [N, M]; ids: [N] row ids and [M] column ids given as one tensor when N == M.

    Returns:
        long [N]. A row whose columns are all positives falls back to its unmasked argmax.
    """
    scores = logits.detach()
    if mask_positives:
        pos = ids.view(-1, 1) == ids.view(1, -1)
        masked = scores.masked_fill(pos, float("-inf"))
        all_pos = pos.all(dim=1)
        return torch.where(all_pos, scores.argmax(dim=1), masked.argmax(dim=1))
    return scores.argmax(dim=1)


def thresholded_softmax(a: torch.Tensor, alpha_m: float, eps: float) -> torch.Tensor:
    """Upstream's softmax: entries below ``alpha_m`` become 0 (not removed), then exp / (row sum + eps). [N, M]."""
    a = torch.where(a < alpha_m, torch.zeros_like(a), a)
    e = a.exp()
    return e / (e.sum(dim=1, keepdim=True) + eps)


def scene_weights(scenes: torch.Tensor, hn: torch.Tensor, epoch: int, beta1: float, beta2: float,
                  int_weights: bool) -> torch.Tensor:
    """h[i, j] = α₂ if scenes[i] == scenes[hn[j]] else α₁ (α = exp(β·epoch), truncated when ``int_weights``). [B, B]."""
    a1, a2 = math.exp(beta1 * epoch), math.exp(beta2 * epoch)
    if int_weights:
        a1, a2 = float(int(a1)), float(int(a2))
    same = scenes.view(-1, 1) == scenes[hn].view(1, -1)
    return torch.where(same, torch.tensor(a2, device=scenes.device), torch.tensor(a1, device=scenes.device))


def scene_adaptive_loss(v: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, scenes: torch.Tensor,
                        tau: torch.Tensor | float, epoch: int, p: SceneLossParams) -> torch.Tensor:
    """FISVL scene-adaptive fine-grained loss (module docstring).

    Args:
        v, t: [B, D] unit-norm image / text features; ids: [B] image ids; scenes: [B] scene ids; tau: τ;
        epoch: 0-based epoch; p: loss settings.

    Returns:
        scalar.
    """
    mask_pos = p.mask_positives and not p.upstream_compat
    int_w = p.int_weights or p.upstream_compat
    logits = v @ t.t() / tau
    hn_t = hardest_negatives(logits, ids, mask_pos)  # per image row: a text
    hn_v = hardest_negatives(logits.t(), ids, mask_pos)  # per text row: an image
    a_t = t @ t[hn_t].t() / tau
    a_v = v @ v[hn_v].t() / tau
    h_t = scene_weights(scenes, hn_t, epoch, p.beta1, p.beta2, int_w)
    h_v = scene_weights(scenes, hn_v, epoch, p.beta1, p.beta2, int_w)
    loss_t = (thresholded_softmax(a_t, p.alpha_m, p.eps) * h_t).sum(dim=1).mean()
    loss_v = (thresholded_softmax(a_v, p.alpha_m, p.eps) * h_v).sum(dim=1).mean()
    return 0.5 * (loss_t + loss_v)


@LOSSES.register("fisvl_scene")
class SceneAdaptiveLoss(nn.Module):
    """Registered ``fisvl_scene``: reads ``img_emb``, ``txt_emb``, ``temp``, ``img_ids`` and ``scene_ids``."""

    Params = SceneLossParams

    def __init__(self, params: SceneLossParams) -> None:
        super().__init__()
        self.p = params

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> torch.Tensor:
        v = F.normalize(outputs["img_emb"].float(), dim=-1)
        t = F.normalize(outputs["txt_emb"].float(), dim=-1)
        ids, scenes = batch["img_ids"].to(v.device), batch["scene_ids"].to(v.device)
        if self.p.gather:
            v, t = all_gather_with_grad(v), all_gather_with_grad(t)
            ids, scenes = all_gather_with_grad(ids), all_gather_with_grad(scenes)
        return scene_adaptive_loss(v, t, ids, scenes, temperature_from(outputs, self.p.temperature), epoch, self.p)


# ----------------------------------------------------------------------------------------- weighted contrastive
@dataclass(frozen=True)
class WeightedInfoNCEParams:
    weight_source: str = "length"  # length: rsitr's definition from batch["lengths"] | batch: batch["cap_weight"]
    avg_ratio: float = 0.7  # captions shorter than avg_ratio x mean length get weight `low`
    low: float = 0.95
    high: float = 1.0
    mean_length: float = 0.0  # dataset mean token count; 0 = mean over the (global) batch
    multi_positive: bool = True
    eps: float = 6e-5  # target smoothing (FISVL)
    temperature: float = 0.07  # used when the model gives no learnable temp
    gather: bool = True


def caption_weights(lengths: torch.Tensor, mean_length: float = 0.0, avg_ratio: float = 0.7, low: float = 0.95,
                    high: float = 1.0) -> torch.Tensor:
    """rsitr's FISVL caption weight: ``low`` if length < avg_ratio x mean length, else ``high``.

    Args:
        lengths: [B] token counts; mean_length: the dataset mean (0: mean of ``lengths``).

    Returns:
        float [B].
    """
    lengths = lengths.float()
    mean = mean_length if mean_length > 0 else float(lengths.mean())
    return torch.where(lengths < avg_ratio * mean, torch.full_like(lengths, low), torch.full_like(lengths, high))


@LOSSES.register("weighted_infonce")
class WeightedInfoNCELoss(nn.Module):
    """Registered ``weighted_infonce``: InfoNCE with logits v_i · t_j · w_j / τ."""

    Params = WeightedInfoNCEParams

    def __init__(self, params: WeightedInfoNCEParams) -> None:
        super().__init__()
        if params.weight_source not in ("length", "batch"):
            raise ConfigError(f"weighted_infonce: weight_source must be length or batch, got '{params.weight_source}'")
        self.p = params

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> torch.Tensor:
        v = F.normalize(outputs["img_emb"].float(), dim=-1)
        t = F.normalize(outputs["txt_emb"].float(), dim=-1)
        key = "lengths" if self.p.weight_source == "length" else "cap_weight"
        raw = batch[key].to(v.device).float()
        ids = batch["img_ids"].to(v.device) if self.p.multi_positive else None
        if self.p.gather:
            v, t, raw = all_gather_with_grad(v), all_gather_with_grad(t), all_gather_with_grad(raw)
            ids = all_gather_with_grad(ids) if ids is not None else None
        w = raw if self.p.weight_source == "batch" else caption_weights(raw, self.p.mean_length, self.p.avg_ratio,
                                                                          self.p.low, self.p.high)
        return info_nce(v, t * w.unsqueeze(1), temperature_from(outputs, self.p.temperature), ids, self.p.eps)
