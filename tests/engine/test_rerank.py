"""engine/rerank.py against a straightforward loop implementation written from METHODS.md B."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import engine.rerank as rr
from engine.metrics import retrieval_metrics, txt2img_from_counts
from engine.rerank import RERANKERS, apply_rerank, galr_rerank, galr_rerank_unweighted, tune_rerank


def best_first(line: list[float]) -> list[int]:
    """Indices of a line, best first; equal scores: higher index first (the metrics' tie rule)."""
    return sorted(range(len(line)), key=lambda t: (-line[t], -t))


def loop_i2t(X: np.ndarray, K: int, wp1: float, wp2: float, weighted: bool) -> np.ndarray:
    """The i2t procedure of METHODS.md B, one query and one candidate at a time."""
    n_q, n_c = X.shape
    out = np.zeros((n_q, n_c)) if weighted else X.astype(np.float64).copy()
    for i in range(n_q):
        fwd = best_first(X[i].tolist())[:K]
        a = [best_first(X[:, t].tolist()).index(i) for t in fwd]  # reverse search: where i lands for text t
        new = sorted(range(len(fwd)), key=lambda j: (a[j], j))  # stable: equal a keep forward order
        r = {fwd[j]: pos for pos, j in enumerate(new)}
        for j, t in enumerate(fwd):
            if weighted:
                p1 = X[i, t] / np.sum(X[:, t].astype(np.float64))
                p2 = math.exp(-0.05 * (j + 1))
                p3 = math.exp(-0.05 * (r[t] + 1))
                out[i, t] = wp1 * p1 + p2 + wp2 * p3
            else:
                top = float(X[i].max())
                out[i, t] = top + max(1.0, abs(top)) * (len(fwd) - r[t])
    return out


def loop_both(S: np.ndarray, K: int, wp1: float = 0.3, wp2: float = 1.1, weighted: bool = True):
    Kw = max(10, K) if weighted else K
    return loop_i2t(S, Kw, wp1, wp2, weighted), loop_i2t(S.T, Kw, wp1, wp2, weighted).T


@pytest.mark.parametrize("shape,k", [((9, 45), 12), ((14, 30), 5), ((6, 40), 30)])
@pytest.mark.parametrize("weighted", [True, False])
def test_matches_loop_on_tie_free_input(shape, k, weighted, monkeypatch):
    monkeypatch.setattr(rr, "POOL", 4)  # tiny top lists: most reverse ranks take the exact fallback path too
    S = torch.rand(*shape, generator=torch.Generator().manual_seed(shape[0]), dtype=torch.float64) + 0.1
    ref_i2t, ref_t2i = loop_both(S.numpy(), k, weighted=weighted)
    i2t, t2i = galr_rerank(S, k=k) if weighted else galr_rerank_unweighted(S, k=k)
    np.testing.assert_allclose(i2t.numpy(), ref_i2t, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t2i.numpy(), ref_t2i, rtol=1e-12, atol=1e-14)
    assert not torch.equal(i2t, t2i)  # two different matrices
    t2i_map = txt2img_from_counts([shape[1] // shape[0]] * shape[0])
    if len(t2i_map) == shape[1]:
        got = retrieval_metrics(i2t, t2i_map, sim_t2i=t2i)
        ref = retrieval_metrics(torch.from_numpy(ref_i2t), t2i_map, sim_t2i=torch.from_numpy(ref_t2i))
        assert got == ref


def test_pool_size_does_not_change_result(monkeypatch):
    S = torch.randn(20, 100, generator=torch.Generator().manual_seed(1))
    ref = galr_rerank(S, k=15)
    monkeypatch.setattr(rr, "POOL", 3)
    got = galr_rerank(S, k=15)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_ties_follow_documented_rule():
    # Integer scores: ties everywhere. The vectorised result must equal the loop (same tie rule) exactly in order.
    S = torch.randint(1, 5, (8, 24), generator=torch.Generator().manual_seed(3)).double()
    ref_i2t, ref_t2i = loop_both(S.numpy(), 10)
    i2t, t2i = galr_rerank(S, k=10)
    np.testing.assert_allclose(i2t.numpy(), ref_i2t, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t2i.numpy(), ref_t2i, rtol=1e-12, atol=1e-14)


def test_k_raised_to_10_and_zero_outside():
    S = torch.rand(5, 25, generator=torch.Generator().manual_seed(0))
    i2t, t2i = galr_rerank(S, k=3)
    assert ((i2t != 0).sum(1) == 10).all()  # K <- max(10, K)
    assert ((t2i != 0).sum(0) == 5).all()  # only 5 images per caption exist
    u_i2t, _ = galr_rerank_unweighted(S, k=3)
    top = torch.topk(u_i2t, 3, dim=1).indices
    assert torch.equal(torch.sort(top, 1).values, torch.sort(torch.topk(S, 3, dim=1).indices, 1).values)


def test_guard_bounds_p1_and_matches_when_nonnegative():
    S = torch.rand(6, 18, generator=torch.Generator().manual_seed(2))
    a, b = galr_rerank(S, guard=False), galr_rerank(S, guard=True)
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])  # no negative score: guard changes nothing
    S2 = S - S.mean(0, keepdim=True)  # columns summing to ~0: unguarded p1 can explode
    i2t, _ = galr_rerank(S2, wp1=1.0, wp2=0.0, guard=True)
    # with wp2 = 0 the score is p1 + p2, p2 in (0, 1), |p1| <= 1 under the guard
    assert (i2t.abs() <= 2.0).all()


def test_apply_rerank_and_registry():
    S = torch.rand(4, 12)
    assert set(RERANKERS) == {"none", "galr", "galr_unweighted"}
    a, b = apply_rerank("none", S)
    assert a is S and b is S
    with pytest.raises(KeyError, match="galr"):
        apply_rerank("nope", S)


def test_tune_rerank_finds_grid_best():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1)
    t2i = txt2img_from_counts([5] * 20)
    txt = torch.nn.functional.normalize(img[t2i] + 1.0 * torch.randn(100, 8, generator=g), dim=1)
    S = img @ txt.T
    best, best_mr, table = tune_rerank(S, t2i, ks=(10, 20), wp1s=(0.0, 0.3), wp2s=(0.5, 1.1))
    assert len(table) == 8 and best_mr == max(row["mR"] for row in table)
    i2t, t2i_m = galr_rerank(S, **best)
    assert retrieval_metrics(i2t, t2i, sim_t2i=t2i_m)["mR"] == best_mr


def test_rerank_settings_from_config_params():
    from core.errors import ConfigError
    from engine.rerank import rerank_settings

    assert rerank_settings("galr", {}) == {"k": 30, "wp1": 0.3, "wp2": 1.1}  # upstream's defaults
    assert rerank_settings("galr", {"k": 7, "wp2": 2}) == {"k": 7, "wp1": 0.3, "wp2": 2.0}
    assert rerank_settings("galr_unweighted", {"k": 7, "wp1": 0.5}) == {"k": 7}  # galr's weights do not apply
    assert rerank_settings("none", {"k": 7}) == {}
    with pytest.raises(ConfigError, match=r"f\.yaml: unknown key 'eval\.rerank_params\.kk'"):
        rerank_settings("galr", {"kk": 7}, source="f.yaml")
    with pytest.raises(ConfigError, match=r"'eval\.rerank_params\.k' must be int"):
        rerank_settings("galr", {"k": "many"})
    with pytest.raises(ConfigError, match="unknown rerank 'nope'"):
        rerank_settings("nope", {})


def test_rerank_settings_tuned_on_validation_equal_the_grid_best():
    from engine.rerank import rerank_settings

    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1)
    t2i = txt2img_from_counts([5] * 20)
    S = img @ torch.nn.functional.normalize(img[t2i] + torch.randn(100, 8, generator=g), dim=1).T
    best, _, _ = tune_rerank(S, t2i)
    assert rerank_settings("galr", {"k": 99}, val=(S, t2i.tolist())) == best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pool", [2, 5, 256])
def test_numpy_and_tensor_inputs_give_the_same_matrices_on_ties(seed, pool, monkeypatch):
    # Few distinct values: ties in every line, in the top lists, at the list ends and among reverse ranks.
    monkeypatch.setattr(rr, "POOL", pool)
    rng = np.random.default_rng(seed)
    S = rng.integers(1, 4, (7 + seed, 20 + 3 * seed)).astype(np.float32)
    ref_i2t, ref_t2i = loop_both(S, 10)
    for fn, kw, ref in ((galr_rerank, {"k": 10}, (ref_i2t, ref_t2i)),
                        (galr_rerank_unweighted, {"k": 4}, loop_both(S, 4, weighted=False))):
        a, b = fn(S, **kw)
        ta, tb = fn(torch.from_numpy(S), **kw)
        assert isinstance(a, np.ndarray) and isinstance(ta, torch.Tensor) and ta.dtype == torch.float64
        np.testing.assert_array_equal(ta.numpy(), a)
        np.testing.assert_array_equal(tb.numpy(), b)
        np.testing.assert_allclose(a, ref[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b, ref[1], rtol=1e-12, atol=1e-14)


def test_tune_rerank_same_for_arrays_and_tensors():
    rng = np.random.default_rng(2)
    img = rng.standard_normal((15, 6))
    t2i = np.repeat(np.arange(15), 5)
    S = (img @ (img[t2i] + rng.standard_normal((75, 6))).T).astype(np.float32)
    grid = dict(ks=(10, 20), wp1s=(0.0, 0.5), wp2s=(0.5, 1.1))
    assert tune_rerank(S, t2i, **grid) == tune_rerank(torch.from_numpy(S), torch.from_numpy(t2i), **grid)
