"""Hand-computed cases for the affiliation (scene-centre) loss, losses/affiliation.py."""
import math

import pytest
import torch

from losses.affiliation import AffiliationLoss, AffiliationParams, affiliation_loss, scene_centres

E1, E2 = [1.0, 0.0], [0.0, 1.0]
V = torch.tensor([E1, E2, E1])
T = torch.tensor([E1, E1, E2])
SCENES = torch.tensor([0, 0, 1])
e = math.e


def test_scene_centres_plain_and_eps():
    c = scene_centres(V, SCENES, 0.0)
    assert torch.allclose(c, torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]]))
    # upstream weights: 1 + eps within the scene, eps elsewhere: row 0 = ((1+eps)(v0 + v1) + eps v2) / (2 + 3 eps)
    eps = 0.1
    c = scene_centres(V, SCENES, eps)
    assert torch.allclose(c[0], torch.tensor([(1 + 2 * eps) / (2 + 3 * eps), (1 + eps) / (2 + 3 * eps)]))
    assert torch.allclose(c[2], torch.tensor([(1 + 2 * eps) / (1 + 3 * eps), eps / (1 + 3 * eps)]))


def test_affiliation_hand_computed():
    # image -> text centres: c_txt = [e1, e1, e2]; logits rows [1,1,0], [0,0,1], [1,1,0], targets 0, 1, 2
    i2c = [-math.log(e / (2 * e + 1)), -math.log(1 / (2 + e)), -math.log(1 / (2 * e + 1))]
    # text -> image centres: c_img = [(.5,.5), (.5,.5), e1]; rows [.5,.5,1], [.5,.5,1], [.5,.5,0]
    s = math.exp(0.5)
    t2c = [-math.log(s / (2 * s + e)), -math.log(s / (2 * s + e)), -math.log(1 / (2 * s + 1))]
    expected = 0.5 * (sum(i2c) / 3 + sum(t2c) / 3)
    assert affiliation_loss(V, T, SCENES, 1.0, eps=0.0).item() == pytest.approx(expected, abs=1e-6)
    # upstream's transposed text term: rows [.5,.5,.5], [.5,.5,.5], [1,1,0] -> log 3, log 3, -log(1/(2e+1))
    t2c_up = [math.log(3), math.log(3), -math.log(1 / (2 * e + 1))]
    expected_up = 0.5 * (sum(i2c) / 3 + sum(t2c_up) / 3)
    assert affiliation_loss(V, T, SCENES, 1.0, eps=0.0, upstream_compat=True).item() == pytest.approx(expected_up,
                                                                                                     abs=1e-6)


def test_registered_loss_uses_temp2_and_scene_ids():
    loss = AffiliationLoss(AffiliationParams(eps=0.0))
    batch = {"scene_ids": SCENES}
    out = {"img_emb": 3 * V, "txt_emb": T, "temp": torch.tensor(9.0), "temp2": torch.tensor(0.5)}
    ref = affiliation_loss(V, T, SCENES, 0.5, eps=0.0)
    assert loss(out, batch, 0).item() == pytest.approx(ref.item(), abs=1e-6)
    # without temp2 the configured temperature is used
    del out["temp2"]
    loss1 = AffiliationLoss(AffiliationParams(eps=0.0, temperature=1.0))
    assert loss1(out, batch, 0).item() == pytest.approx(affiliation_loss(V, T, SCENES, 1.0, 0.0).item(), abs=1e-6)
