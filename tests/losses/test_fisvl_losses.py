"""FISVL losses against hand-computed cases: scene-adaptive fine-grained loss (fixed and upstream-bug modes),
weighted InfoNCE, rsitr's caption weights, and the value-guided schedule of the configs."""
import json
import math

import pytest
import torch

from data.caption_weights import load_caption_weights
from core.config import load_config
from losses import build_criterion
from losses.fisvl import (SceneAdaptiveLoss, SceneLossParams, WeightedInfoNCELoss, WeightedInfoNCEParams,
                          caption_weights, hardest_negatives, scene_adaptive_loss)
from losses.infonce import info_nce

R = 1 / math.sqrt(2)
V = torch.tensor([[1.0, 0.0], [0.0, 1.0], [R, -R]])
T = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]])
IDS = torch.tensor([0, 1, 2])
SCENES = torch.tensor([0, 0, 1])
A1, A2 = 1.5, 2.5  # exp(beta * 10) with the betas below
PARAMS = dict(beta1=math.log(A1) / 10, beta2=math.log(A2) / 10, alpha_m=0.5, eps=6e-5)


def _side(a: list, h: list, eps: float = 6e-5) -> float:
    """mean_i Σ_j softmax_thr(a)_ij h_ij with the threshold already applied by hand to ``a``."""
    total = 0.0
    for row_a, row_h in zip(a, h):
        z = sum(math.exp(x) for x in row_a) + eps
        total += sum(math.exp(x) / z * w for x, w in zip(row_a, row_h))
    return total / len(a)


def test_hard_negative_mining():
    s = V @ T.t()  # rows: [1, 0, -.6], [0, 1, .8], [.707, -.707, -.990]
    assert hardest_negatives(s, IDS, True).tolist() == [1, 2, 0]
    assert hardest_negatives(s.t(), IDS, True).tolist() == [2, 0, 1]
    assert hardest_negatives(s, IDS, False).tolist() == [0, 1, 0]  # upstream: the positive itself
    assert hardest_negatives(s.t(), IDS, False).tolist() == [0, 1, 1]


def test_scene_loss_fixed_mode_hand_computed():
    # text side: hn_t = [1, 2, 0]; A_t[i, j] = t_i . t_hn(j) = rows [0, -.6, 1], [1, .8, 0], [.8, 1, -.6];
    # entries < alpha_m 0.5 become 0; scene(hn_t) = [0, 1, 0] -> h rows (scene 0) [A2, A1, A2], (scene 1) [A1, A2, A1]
    a_t = [[0, 0, 1], [1, 0.8, 0], [0.8, 1, 0]]
    h_t = [[A2, A1, A2], [A2, A1, A2], [A1, A2, A1]]
    # image side: hn_v = [2, 0, 1]; A_v rows [.707, 1, 0], [-.707, 0, 1], [1, .707, -.707]; scene(hn_v) = [1, 0, 0]
    a_v = [[R, 1, 0], [0, 0, 1], [1, R, 0]]
    h_v = [[A1, A2, A2], [A1, A2, A2], [A2, A1, A1]]
    expected = 0.5 * (_side(a_t, h_t) + _side(a_v, h_v))
    got = scene_adaptive_loss(V, T, IDS, SCENES, 1.0, 10, SceneLossParams(**PARAMS))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_scene_loss_upstream_bugs_hand_computed():
    # no positive mask: hn_t = [0, 1, 0], hn_v = [0, 1, 1]; all picked negatives are scene 0; weights int(1.5) = 1,
    # int(2.5) = 2
    a_t = [[1, 0, 1], [0, 1, 0], [0, 0.8, 0]]  # raw rows [1,0,1], [0,1,0], [-.6,.8,-.6]
    a_v = [[1, 0, 0], [0, 1, 1], [R, 0, 0]]  # raw rows [1,0,0], [0,1,1], [.707,-.707,-.707]
    h = [[2, 2, 2], [2, 2, 2], [1, 1, 1]]
    expected = 0.5 * (_side(a_t, h) + _side(a_v, h))
    got = scene_adaptive_loss(V, T, IDS, SCENES, 1.0, 10, SceneLossParams(**PARAMS, upstream_compat=True))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # the same through the two individual flags
    flags = SceneLossParams(**PARAMS, mask_positives=False, int_weights=True)
    assert scene_adaptive_loss(V, T, IDS, SCENES, 1.0, 10, flags).item() == pytest.approx(expected, abs=1e-6)


def test_int_weights_vanish_on_rsicd_betas():
    # RSICD betas are both negative: upstream's int truncation zeroes every weight after epoch 0
    p = SceneLossParams(beta1=-0.002, beta2=-0.001, alpha_m=0.95, int_weights=True)
    assert scene_adaptive_loss(V, T, IDS, SCENES, 0.07, 1, p).item() == 0.0
    assert scene_adaptive_loss(V, T, IDS, SCENES, 0.07, 0, p).item() > 0.9  # exp(0) = 1 survives at epoch 0


def test_registered_scene_loss_uses_model_temp():
    loss = SceneAdaptiveLoss(SceneLossParams(**PARAMS))
    out = {"img_emb": V * 2, "txt_emb": T, "temp": torch.tensor(0.5)}
    batch = {"img_ids": IDS, "scene_ids": SCENES}
    ref = scene_adaptive_loss(V, T, IDS, SCENES, 0.5, 10, SceneLossParams(**PARAMS))
    assert loss(out, batch, 10).item() == pytest.approx(ref.item(), abs=1e-6)


def test_caption_weights_definition():
    lengths = torch.tensor([10, 6, 7, 2])
    # batch mean 6.25 -> threshold 0.7 * 6.25 = 4.375: only length 2 is short
    assert caption_weights(lengths).tolist() == pytest.approx([1.0, 1.0, 1.0, 0.95])
    # dataset mean 10 -> threshold 7: lengths 6 and 2 are short
    assert caption_weights(lengths, mean_length=10).tolist() == pytest.approx([1.0, 0.95, 1.0, 0.95])


def test_weighted_infonce_hand_computed():
    v = t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    batch = {"img_ids": torch.tensor([0, 1]), "cap_weight": torch.tensor([1.0, 0.5]), "lengths": torch.tensor([9, 1])}
    # logits v_i . t_j . w_j: [[1, 0], [0, 0.5]] (symmetric): rows -log(e/(e+1)) and -log(e^.5/(1+e^.5))
    expected = 0.5 * (-math.log(math.e / (math.e + 1)) - math.log(math.exp(0.5) / (1 + math.exp(0.5))))
    loss = WeightedInfoNCELoss(WeightedInfoNCEParams(weight_source="batch", eps=0.0, temperature=1.0))
    assert loss({"img_emb": v, "txt_emb": t}, batch, 10).item() == pytest.approx(expected, abs=1e-6)
    # weight_source length: mean 5 -> threshold 3.5 -> w = [1, 0.95]
    loss = WeightedInfoNCELoss(WeightedInfoNCEParams(eps=0.0, temperature=1.0))
    expected = 0.5 * (-math.log(math.e / (math.e + 1)) - math.log(math.exp(0.95) / (1 + math.exp(0.95))))
    assert loss({"img_emb": v, "txt_emb": t}, batch, 10).item() == pytest.approx(expected, abs=1e-6)
    # all weights 1 -> the plain multi-positive InfoNCE
    batch["cap_weight"] = torch.ones(2)
    loss = WeightedInfoNCELoss(WeightedInfoNCEParams(weight_source="batch", eps=6e-5))
    ref = info_nce(v, t, 0.07, batch["img_ids"], 6e-5)
    assert loss({"img_emb": v, "txt_emb": t}, batch, 10).item() == pytest.approx(ref.item(), abs=1e-6)


def test_load_caption_weights(tmp_path):
    caps = ["a b", "c d e"]
    (tmp_path / "l.json").write_text(json.dumps([0.9, 1.1]))
    (tmp_path / "m.json").write_text(json.dumps({"c d e": 0.8}))
    (tmp_path / "r.json").write_text(json.dumps([{"caption": "a b", "length": 0.95}]))
    assert load_caption_weights(tmp_path / "l.json", caps) == [0.9, 1.1]
    assert load_caption_weights(tmp_path / "m.json", caps) == [1.0, 0.8]
    assert load_caption_weights(tmp_path / "r.json", caps) == [0.95, 1.0]
    with pytest.raises(ValueError, match="2 weights for 3 captions"):
        load_caption_weights(tmp_path / "l.json", caps + ["x"])


@pytest.mark.parametrize("config,switch", [("configs/rsitmd_fisvl.yaml", 10), ("configs/rsicd_fisvl.yaml", 10),
                                           ("configs/tests/tiny_fisvl.yaml", 3)])
def test_value_guided_schedule_switches(config, switch):
    crit = build_criterion(load_config(config).loss)
    assert crit.active(switch - 1) == ["infonce", "affiliation", "fisvl_scene"]
    assert crit.active(switch) == ["affiliation", "weighted_infonce"]
    out = {"img_emb": V, "txt_emb": T, "temp": torch.tensor(0.07), "temp2": torch.tensor(0.07)}
    batch = {"img_ids": IDS, "scene_ids": SCENES, "lengths": torch.tensor([5, 6, 7]), "cap_weight": torch.ones(3)}
    assert set(crit(out, batch, switch - 1)) == {"loss", "loss_infonce", "loss_affiliation", "loss_fisvl_scene"}
    res = crit(out, batch, switch)
    assert set(res) == {"loss", "loss_affiliation", "loss_weighted_infonce"}
    assert res["loss"].item() == pytest.approx(res["loss_affiliation"].item() + res["loss_weighted_infonce"].item())


def test_pir_schedule_is_constant():
    crit = build_criterion(load_config("configs/rsitmd_pir.yaml").loss)
    assert crit.active(0) == crit.active(49) == ["infonce", "affiliation"]
