"""KAMCL loss terms (METHODS.md C4; https://github.com/mcx-mcx/KAMCL ``utils.calcul_loss``).

The full KAMCL objective is configured as four terms (see ``configs/_base_/kamcl.yaml``)::

    triplet (mode: hardest)                      weight 1
    moco_ce   (logits_img + logits_txt)          weight 10
    concept_bce (concept_img + concept_txt)      weight 10, start_epoch 11  (the "two-step" strategy)

* ``moco_ce``: cross-entropy of MoCo logits [B, 1 + K] whose positive is column 0 (the model computes the logits,
  already divided by the temperature, in ``forward``). The listed keys are summed: CE_img + CE_txt.
* ``concept_bce``: binary cross-entropy (mean over batch and tags) between sigmoid concept scores [B, T] and the
  image's tag target [B, T] (``outputs["tag_target"]``, normalised tag counts of the caption's image); the listed
  keys are summed: BCE(c_v, y) + BCE(c_t, y).

Upstream adds the BCE terms while ``epoch > 10`` with 0-based epochs, i.e. from epoch 11 on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from losses import LOSSES
from core.errors import ConfigError, ConfigKeyError


@dataclass(frozen=True)
class MocoCEParams:
    keys: tuple[str, ...] = ("logits_img", "logits_txt")  # outputs holding [B, 1 + K] logits, positive at column 0


@LOSSES.register("moco_ce")
class MocoCE(nn.Module):
    """Sum over ``keys`` of CE(logits, 0) (mean over the batch)."""

    Params = MocoCEParams

    def __init__(self, params: MocoCEParams) -> None:
        super().__init__()
        if not params.keys:
            raise ConfigError("loss moco_ce: params.keys is empty")
        self.p = params

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> torch.Tensor:
        total = None
        for key in self.p.keys:
            if key not in outputs:
                raise ConfigKeyError(f"loss moco_ce: model output '{key}' missing (the model computes it in training mode)")
            logits = outputs[key].float()
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            value = F.cross_entropy(logits, target)
            total = value if total is None else total + value
        return total


@dataclass(frozen=True)
class ConceptBCEParams:
    keys: tuple[str, ...] = ("concept_img", "concept_txt")  # outputs holding sigmoid scores [B, T]
    target_key: str = "tag_target"  # outputs entry with the targets [B, T] in [0, 1]


@LOSSES.register("concept_bce")
class ConceptBCE(nn.Module):
    """Sum over ``keys`` of BCE(scores, target) (mean over all entries, as ``nn.BCELoss``)."""

    Params = ConceptBCEParams

    def __init__(self, params: ConceptBCEParams) -> None:
        super().__init__()
        if not params.keys:
            raise ConfigError("loss concept_bce: params.keys is empty")
        self.p = params

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> torch.Tensor:
        target = outputs[self.p.target_key].float()
        total = None
        for key in self.p.keys:
            # BCE on probabilities is unsafe under autocast; compute it in fp32 outside any autocast region
            with torch.autocast(device_type=target.device.type, enabled=False):
                value = F.binary_cross_entropy(outputs[key].float(), target)
            total = value if total is None else total + value
        return total
