"""losses/example_am_softmax.py against a per-row python reference, InfoNCE at margin 0, and its config checks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.config import LossCfg, LossTermCfg
from core.errors import ConfigError
from losses import build_criterion
from losses.example_am_softmax import am_softmax
from losses.infonce import info_nce


def reference(v: torch.Tensor, t: torch.Tensor, ids: list[int], margin: float, scale: float) -> float:
    """Row by row: -log softmax of the positive among the positive and the pairs of other images."""
    c = (v @ t.t()).tolist()
    n = len(ids)

    def direction(score) -> float:
        total = 0.0
        for i in range(n):
            pos = scale * (score(i, i) - margin)
            negs = [scale * score(i, j) for j in range(n) if ids[j] != ids[i]]
            total += -pos + math.log(math.exp(pos) + sum(math.exp(x) for x in negs))
        return total / n

    return 0.5 * (direction(lambda i, j: c[i][j]) + direction(lambda i, j: c[j][i]))


def feats(seed: int, n: int = 6, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1),
            F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1))


@pytest.mark.parametrize("ids", [[0, 1, 2, 3, 4, 5], [0, 1, 0, 2, 1, 3], [4, 4, 4, 4, 4, 5]])
@pytest.mark.parametrize("margin,scale", [(0.2, 20.0), (0.0, 1.0), (0.5, 5.0)])
def test_matches_reference(ids, margin, scale):
    v, t = feats(len(set(ids)))
    got = am_softmax(v, t, torch.tensor(ids), margin, scale)
    assert got.item() == pytest.approx(reference(v, t, ids, margin, scale), rel=1e-12)


def test_margin_zero_is_infonce_at_temperature_one_over_scale():
    v, t = feats(3)
    got = am_softmax(v, t, torch.arange(6), 0.0, 10.0)
    torch.testing.assert_close(got, info_nce(v, t, 0.1))


def test_margin_raises_the_loss_and_gradients_flow():
    v, t = feats(4)
    v.requires_grad_(True)
    low, high = am_softmax(v, t, torch.arange(6), 0.0, 10.0), am_softmax(v, t, torch.arange(6), 0.3, 10.0)
    assert high > low
    high.backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_through_the_criterion_and_bad_scale():
    crit = build_criterion(LossCfg(terms=[LossTermCfg(name="example_am_softmax", params={"margin": 0.1})]))
    v, t = feats(5)
    out = crit({"img_emb": 3 * v, "txt_emb": t}, {"img_ids": torch.tensor([0, 1, 0, 2, 1, 3])}, epoch=0)
    assert out["loss"].item() == pytest.approx(reference(v, t, [0, 1, 0, 2, 1, 3], 0.1, 20.0), rel=1e-6)
    with pytest.raises(ConfigError, match="scale must be > 0"):
        build_criterion(LossCfg(terms=[LossTermCfg(name="example_am_softmax", params={"scale": 0.0})]))
    with pytest.raises(ConfigError, match=r"loss\.terms\.0\.params\.temperature"):
        build_criterion(LossCfg(terms=[LossTermCfg(name="example_am_softmax", params={"temperature": 0.1})]))
