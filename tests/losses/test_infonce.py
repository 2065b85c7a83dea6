"""Hand-computed cases for losses/infonce.py (single- and multi-positive, eps smoothing, temperature sources)."""
import math

import pytest
import torch

from losses import build_criterion
from core.config import LossCfg, LossTermCfg
from losses.infonce import InfoNCELoss, InfoNCEParams, info_nce

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def test_single_positive_identity_features():
    v = t = torch.tensor([E1, E2])
    # logits = I / tau; each row: -log(e^{1/tau} / (e^{1/tau} + 1)) = log(1 + e^{-1/tau}), both directions alike
    assert info_nce(v, t, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert info_nce(v, t, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_single_positive_asymmetric_logits():
    v = torch.tensor([E1, E2])
    t = torch.tensor([E1, E1])  # logits rows: [1, 1], [0, 0]; columns: [1, 0], [1, 0]
    i2t = (math.log(2) + math.log(2)) / 2  # row 0: e/(2e); row 1: 1/2
    t2i = (-math.log(math.e / (math.e + 1)) - math.log(1 / (math.e + 1))) / 2  # col 0 target 0, col 1 target 1
    assert info_nce(v, t, 1.0).item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)


def test_multi_positive_targets_and_eps():
    v = torch.tensor([E1, E1, E2])
    t = torch.tensor([E1, E2, E2])
    ids = torch.tensor([0, 0, 1])
    # logits (tau 1): rows [1,0,0], [1,0,0], [0,1,1]; columns (t2i rows): [1,1,0], [0,0,1], [0,0,1]
    z1 = math.e + 2  # row [1, 0, 0]
    i2t = [-(0.5 * (1 - math.log(z1)) + 0.5 * (0 - math.log(z1)))] * 2 + [-(1 - math.log(2 * math.e + 1))]
    z2 = 2 * math.e + 1  # t2i row [1, 1, 0] for text 0 (positives: texts of image 0 -> images 0 and 1)
    t2i = [-(0.5 * (1 - math.log(z2)) + 0.5 * (1 - math.log(z2))),
           -(0.5 * (0 - math.log(math.e + 2)) + 0.5 * (0 - math.log(math.e + 2))),
           -(1 - math.log(math.e + 2))]
    expected = 0.5 * (sum(i2t) / 3 + sum(t2i) / 3)
    assert info_nce(v, t, 1.0, ids).item() == pytest.approx(expected, abs=1e-6)
    # eps 0.1 (module docstring: y = (1[same image] + eps) normalised per row; t2i reads the columns of y).
    # Row sums of 1[same] + 0.1: images 0, 1: 2.3; image 2: 1.3. From the logit rows and columns above:
    eps = 0.1

    def ce(logit_row, y):  # cross-entropy with soft target y, written out
        z = math.log(sum(math.exp(x) for x in logit_row))
        return -sum(yi * (x - z) for yi, x in zip(y, logit_row))

    i2t = [ce([1, 0, 0], [1.1 / 2.3, 1.1 / 2.3, 0.1 / 2.3])] * 2 + [ce([0, 1, 1], [0.1 / 1.3, 0.1 / 1.3, 1.1 / 1.3])]
    t2i = [ce([1, 1, 0], [1.1 / 2.3, 1.1 / 2.3, 0.1 / 1.3]), ce([0, 0, 1], [1.1 / 2.3, 1.1 / 2.3, 0.1 / 1.3]),
           ce([0, 0, 1], [0.1 / 2.3, 0.1 / 2.3, 1.1 / 1.3])]
    expected = 0.5 * (sum(i2t) / 3 + sum(t2i) / 3)
    assert info_nce(v, t, 1.0, ids, eps=eps).item() == pytest.approx(expected, abs=1e-6)
    # eps moves the loss (a loss that ignored it would still pass the eps=0 case above)
    assert info_nce(v, t, 1.0, ids, eps=eps).item() != pytest.approx(info_nce(v, t, 1.0, ids).item(), abs=1e-3)


def test_registered_loss_reads_model_temperature_and_normalises():
    v = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised to e1, e2
    batch = {"img_ids": torch.tensor([0, 1])}
    loss = InfoNCELoss(InfoNCEParams(temperature=1.0))
    assert loss({"img_emb": v, "txt_emb": v}, batch, 0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    temp = torch.tensor(0.5, requires_grad=True)
    out = loss({"img_emb": v, "txt_emb": v, "temp": temp}, batch, 0)
    assert out.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    out.backward()
    # d/dτ log(1 + e^{-1/τ}) = e^{-1/τ} / (1 + e^{-1/τ}) / τ²
    assert temp.grad.item() == pytest.approx(math.exp(-2) / (1 + math.exp(-2)) / 0.25, abs=1e-5)
    scale = {"img_emb": v, "txt_emb": v, "logit_scale": torch.tensor(math.log(2.0))}  # τ = 1/2
    assert loss(scale, batch, 0).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_multi_positive_through_criterion():
    crit = build_criterion(LossCfg(terms=(LossTermCfg(name="infonce", params={"multi_positive": True,
                                                                             "temperature": 1.0}),)))
    v = torch.tensor([E1, E1, E2])
    t = torch.tensor([E1, E2, E2])
    out = crit({"img_emb": v, "txt_emb": t}, {"img_ids": torch.tensor([0, 0, 1])}, 0)
    assert out["loss"].item() == pytest.approx(info_nce(v, t, 1.0, torch.tensor([0, 0, 1])).item(), abs=1e-7)
