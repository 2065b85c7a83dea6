"""Triplet loss (METHODS.md C0) against hand-computed cases, both modes, the image-id mask and the cosine path."""
from __future__ import annotations

import math

import pytest
import torch

from core.config import LossCfg, LossTermCfg
from losses import build_criterion

# Positives on the diagonal. By hand with margin 0.2:
#   cost_c (caption negatives, row-wise vs s[i,i]): only (1,2): 0.2 + 0.85 - 0.8 = 0.25 ((2,1) is exactly 0)
#   cost_i (image negatives, column-wise vs s[j,j]): (0,2): 0.2 + 0.5 - 0.6 = 0.1 and (1,2): 0.2 + 0.85 - 0.6 = 0.45
S = torch.tensor([[0.9, 0.3, 0.5], [0.2, 0.8, 0.85], [0.1, 0.4, 0.6]])


def _loss(mode: str, mask: bool = False, reduction: str = "sum", img_ids=(0, 1, 2), outputs=None) -> float:
    crit = build_criterion(LossCfg(terms=(LossTermCfg(name="triplet", params={
        "margin": 0.2, "mode": mode, "mask_same_image": mask, "reduction": reduction}),)))
    batch = {"img_ids": torch.tensor(img_ids)}
    return float(crit(outputs if outputs is not None else {"sims": S}, batch, 0)["loss"])


def test_sum_mode_hand_case():
    assert _loss("sum") == pytest.approx(0.25 + 0.1 + 0.45, abs=1e-6)


def test_hardest_mode_hand_case():
    # row maxima of cost_c: 0, 0.25, 0; column maxima of cost_i: 0, 0, 0.45
    assert _loss("hardest") == pytest.approx(0.25 + 0.45, abs=1e-6)


def test_mean_reduction_divides_by_batch():
    assert _loss("sum", reduction="mean") == pytest.approx(0.8 / 3, abs=1e-6)


def test_same_image_mask_removes_pairs_of_one_image():
    # captions 1 and 2 belong to the same image: (1,2) and (2,1) are no negatives; only cost_i(0,2) = 0.1 is left
    assert _loss("sum", mask=True, img_ids=(0, 1, 1)) == pytest.approx(0.1, abs=1e-6)
    assert _loss("hardest", mask=True, img_ids=(0, 1, 1)) == pytest.approx(0.1, abs=1e-6)
    # upstream behaviour (only the diagonal masked) ignores the ids
    assert _loss("sum", mask=False, img_ids=(0, 1, 1)) == pytest.approx(0.8, abs=1e-6)


def test_cosine_path_without_sims():
    # the loss normalises the embeddings itself: the cosine matrix is s = [[1, 0.5], [0, sqrt(3)/2]]
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[3.0, 0.0], [math.cos(math.pi / 3), math.sin(math.pi / 3)]])
    # cost_c: (0,1) 0.2+0.5-1 < 0, (1,0) 0.2+0-0.866 < 0
    # cost_i: (0,1) 0.2+0.5-0.866 < 0, (1,0) 0.2+0-1 < 0  -> 0 with margin 0.2
    assert _loss("sum", outputs={"img_emb": a, "txt_emb": t}, img_ids=(0, 1)) == pytest.approx(0.0, abs=1e-6)
    # with margin 0.5 instead: cost_c(0,1) = 0.0 (clamped), cost_i(0,1) = 0.5 + 0.5 - 0.866 = 0.134
    crit = build_criterion(LossCfg(terms=(LossTermCfg(name="triplet", params={"margin": 0.5}),)))
    out = crit({"img_emb": a, "txt_emb": t}, {"img_ids": torch.tensor([0, 1])}, 0)["loss"]
    assert float(out) == pytest.approx(1.0 - math.sqrt(3) / 2, abs=1e-5)
