"""HMMC: hybrid multi-modal contrastive loss of PE-RSITR (Yuan et al., IEEE TGRS 2023), a re-implementation.

The paper describes HMMC as InfoNCE terms that align the two modalities (clean and augmented views) plus
intra-modal terms that push different remote-sensing images (and captions), which are very alike within a
modality, apart. Its training code and weights are unpublished (METHODS.md C7, D15), so rsitr implements

    L = L_nce(v, t) + λ_aug · L_nce(ṽ, t̃) + λ_intra · [L_nce(v, ṽ) + L_nce(t, t̃)]

with ``info_nce`` from losses/infonce.py (symmetric, diagonal targets), where v, t are the clean embeddings and
ṽ, t̃ the augmented views the ``clip_adapter`` model returns (``img_aug`` / ``txt_aug``). The defaults
λ_aug = λ_intra = 1 (the terms summed unweighted, the plainest reading of the paper) and τ = CLIP's own logit
scale are choices of this re-implementation; results with them are "re-implementation" numbers.
With ``multi_positive`` the captions of one image in a batch are all positives of it in the cross-modal terms and
repeated images are positives of each other in the image term; the text term keeps diagonal targets (a
caption's positive is its own augmented view, other captions of the image are different sentences).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.dist import all_gather_with_grad
from core.errors import ConfigKeyError
from losses import LOSSES
from losses.infonce import info_nce, temperature_from


@dataclass(frozen=True)
class HMMCParams:
    lambda_aug: float = 1.0  # weight of the augmented cross-modal term L_nce(ṽ, t̃)
    lambda_intra: float = 1.0  # weight of the intra-modal terms L_nce(v, ṽ) + L_nce(t, t̃)
    temperature: float = 0.07  # τ when use_logit_scale is false or the model gives no logit_scale
    use_logit_scale: bool = True  # τ = 1 / exp(outputs["logit_scale"]) (CLIP's own; frozen in clip_adapter)
    multi_positive: bool = False  # same-image items are positives (cross-modal and image-image terms)
    gather: bool = True  # all-gather features across ranks (no-op on one process)
    normalize: bool = True  # L2-normalise the four embeddings first


@LOSSES.register("hmmc")
class HMMCLoss(nn.Module):
    """Registered ``hmmc``; reads ``img_emb``, ``txt_emb``, ``img_aug``, ``txt_aug`` [B, D] and ``logit_scale``."""

    Params = HMMCParams

    def __init__(self, params: HMMCParams) -> None:
        super().__init__()
        self.p = params

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> torch.Tensor:
        """Args: outputs as above, batch with ``img_ids`` [B] (multi_positive only). Returns: scalar loss."""
        missing = [k for k in ("img_emb", "txt_emb", "img_aug", "txt_aug") if k not in outputs]
        if missing:
            raise ConfigKeyError(f"hmmc needs the augmented views; model outputs lack {missing} (clip_adapter with "
                           f"model.params.augment: true gives them)")
        feats = [outputs[k].float() for k in ("img_emb", "txt_emb", "img_aug", "txt_aug")]
        if self.p.normalize:
            feats = [F.normalize(f, dim=-1) for f in feats]
        ids = batch["img_ids"].to(feats[0].device) if self.p.multi_positive else None
        if self.p.gather:
            feats = [all_gather_with_grad(f) for f in feats]
            ids = all_gather_with_grad(ids) if ids is not None else None
        v, t, v_aug, t_aug = feats
        tau = temperature_from(outputs, self.p.temperature) if self.p.use_logit_scale else self.p.temperature
        loss = info_nce(v, t, tau, ids) + self.p.lambda_aug * info_nce(v_aug, t_aug, tau, ids)
        if self.p.lambda_intra:
            loss = loss + self.p.lambda_intra * (info_nce(v, v_aug, tau, ids) + info_nce(t, t_aug, tau))
        return loss
