"""HMMC loss: hand-computed small cases, weights, temperature source, multi-positive targets."""
import math

import pytest
import torch

from core.config import LossCfg, LossTermCfg
from losses import build_criterion
from losses.hmmc import HMMCLoss, HMMCParams

S = 0.6, 0.8  # a unit vector


def _nce(a: list, b: list, tau: float) -> float:
    """Symmetric InfoNCE with diagonal targets, in plain Python (rows are unit vectors already)."""
    n = len(a)
    logits = [[sum(x * y for x, y in zip(a[i], b[j])) / tau for j in range(n)] for i in range(n)]
    row = sum(-logits[i][i] + math.log(sum(math.exp(v) for v in logits[i])) for i in range(n)) / n
    col = sum(-logits[j][j] + math.log(sum(math.exp(logits[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (row + col)


def _outputs(**extra) -> dict:
    v = [[1.0, 0.0], [0.0, 1.0]]
    t = [[1.0, 0.0], list(S)]
    va = [list(S), [0.0, 1.0]]
    ta = [[0.0, 1.0], [1.0, 0.0]]
    out = {k: torch.tensor(x) for k, x in zip(("img_emb", "txt_emb", "img_aug", "txt_aug"), (v, t, va, ta))}
    out.update(extra)
    return out


def _loss(outputs: dict, batch: dict | None = None, **params) -> float:
    return HMMCLoss(HMMCParams(**params))(outputs, batch or {"img_ids": torch.tensor([0, 1])}, 0).item()


def test_identity_term_matches_closed_form():
    # v = t = I, tau = 1: every row/column is CE([1, 0], 0) = log(1 + e^-1); the other terms switched off
    out = _outputs(txt_emb=torch.eye(2))
    got = _loss(out, lambda_aug=0.0, lambda_intra=0.0, use_logit_scale=False, temperature=1.0)
    assert got == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_full_loss_matches_hand_computation():
    o = _outputs()
    v, t, va, ta = ([r.tolist() for r in o[k]] for k in ("img_emb", "txt_emb", "img_aug", "txt_aug"))
    tau, la, li = 0.5, 0.7, 0.3
    ref = _nce(v, t, tau) + la * _nce(va, ta, tau) + li * (_nce(v, va, tau) + _nce(t, ta, tau))
    got = _loss(o, lambda_aug=la, lambda_intra=li, use_logit_scale=False, temperature=tau)
    assert got == pytest.approx(ref, abs=1e-6)
    # every term matters: this is not the plain cross-modal InfoNCE
    assert abs(got - _nce(v, t, tau)) > 0.1


def test_temperature_from_logit_scale_and_normalisation():
    tau = 0.5
    ref = _loss(_outputs(), use_logit_scale=False, temperature=tau)
    # logit_scale = ln(1/tau) gives the same loss; unnormalised inputs are normalised first
    scaled = {k: 3.0 * v for k, v in _outputs().items()}
    got = _loss({**scaled, "logit_scale": torch.tensor(math.log(1 / tau))}, use_logit_scale=True, temperature=9.0)
    assert got == pytest.approx(ref, abs=1e-6)


def test_multi_positive_targets():
    # both rows belong to image 0: cross-modal and image-image targets become uniform over the batch; text stays diagonal
    o = _outputs()
    v, t, va, ta = ([r.tolist() for r in o[k]] for k in ("img_emb", "txt_emb", "img_aug", "txt_aug"))
    tau = 1.0

    def soft(a: list, b: list) -> float:
        lg = [[sum(x * y for x, y in zip(a[i], b[j])) / tau for j in range(2)] for i in range(2)]
        lse_r = [math.log(sum(math.exp(x) for x in lg[i])) for i in range(2)]
        lse_c = [math.log(sum(math.exp(lg[i][j]) for i in range(2))) for j in range(2)]
        row = sum(-0.5 * (lg[i][0] + lg[i][1]) + lse_r[i] for i in range(2)) / 2
        col = sum(-0.5 * (lg[0][j] + lg[1][j]) + lse_c[j] for j in range(2)) / 2
        return 0.5 * (row + col)

    ref = soft(v, t) + soft(va, ta) + soft(v, va) + _nce(t, ta, tau)
    got = _loss(o, {"img_ids": torch.tensor([0, 0])}, multi_positive=True, use_logit_scale=False, temperature=tau)
    assert got == pytest.approx(ref, abs=1e-6)


def test_missing_views_is_a_clear_error_and_registered():
    crit = build_criterion(LossCfg(terms=(LossTermCfg(name="hmmc"),)))
    out = _outputs()
    del out["img_aug"]
    with pytest.raises(KeyError, match="img_aug"):
        crit(out, {"img_ids": torch.tensor([0, 1])}, 0)
