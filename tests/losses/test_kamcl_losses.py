"""KAMCL loss terms against hand computation, and the two-step schedule of the configs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from core.config import LossCfg, LossTermCfg, load_config
from losses import build_criterion

ROOT = Path(__file__).resolve().parents[2]


def test_moco_ce_hand_case() -> None:
    crit = build_criterion(LossCfg(terms=(LossTermCfg(name="moco_ce", weight=10.0),)))
    a = torch.tensor([[2.0, 0.0, 1.0]])  # positive in column 0
    b = torch.tensor([[0.0, 0.0, math.log(2.0)]])
    out = crit({"logits_img": a, "logits_txt": b}, {}, epoch=0)
    ce_a = -2.0 + math.log(math.exp(2) + 1 + math.e)
    ce_b = math.log(4.0)  # -0 + log(1 + 1 + 2)
    assert out["loss_moco_ce"].item() == pytest.approx(ce_a + ce_b, rel=1e-6)
    assert out["loss"].item() == pytest.approx(10 * (ce_a + ce_b), rel=1e-6)


def test_concept_bce_hand_case() -> None:
    crit = build_criterion(LossCfg(terms=(LossTermCfg(name="concept_bce"),)))
    y = torch.tensor([[1.0, 0.5]])
    cv, ct = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.8, 0.25]])
    out = crit({"concept_img": cv, "concept_txt": ct, "tag_target": y}, {}, epoch=0)
    bce_v = (-math.log(0.5) + -(0.5 * math.log(0.5) + 0.5 * math.log(0.5))) / 2
    bce_t = (-math.log(0.8) + -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))) / 2
    assert out["loss"].item() == pytest.approx(bce_v + bce_t, rel=1e-6)


@pytest.mark.parametrize("name", ["rsitmd_kamcl", "rsicd_kamcl", "nwpu_kamcl"])
def test_two_step_schedule_switches_after_epoch_10(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    crit = build_criterion(cfg.loss)
    assert crit.active(10) == ["triplet", "moco_ce"]  # upstream: BCE only while epoch > 10 (0-based)
    assert crit.active(11) == ["triplet", "moco_ce", "concept_bce"]
    assert [c.weight for c in crit.cfgs] == [1.0, 10.0, 10.0] and crit.cfgs[0].params["mode"] == "hardest"
    y = torch.zeros(2, 3)
    outputs = {"img_emb": torch.randn(2, 4), "txt_emb": torch.randn(2, 4), "logits_img": torch.randn(2, 5),
               "logits_txt": torch.randn(2, 5), "concept_img": torch.full((2, 3), 0.5),
               "concept_txt": torch.full((2, 3), 0.5), "tag_target": y}
    batch = {"img_ids": torch.arange(2)}
    early, late = crit(outputs, batch, 10), crit(outputs, batch, 11)
    assert "loss_concept_bce" not in early
    assert (late["loss"] - early["loss"]).item() == pytest.approx(10 * 2 * math.log(2.0), rel=1e-5)
