"""engine/metrics_np.py (the numpy path of engine.metrics) against the torch path and the brute-force reference of
test_metrics.py, on tie-heavy matrices; and the modules eval_sims uses import without torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import metrics_np
from engine.metrics import ranks_by_sort, ranks_from_matrix, retrieval_metrics, txt2img_from_counts
from engine.rerank import galr_rerank

from tests.engine.test_metrics import brute_metrics, brute_ranks

ROOT = Path(__file__).resolve().parents[2]


def tied_case(seed: int, n_img: int, levels: int, dtype=np.float64, empty_images: bool = False):
    """Scores from ``levels`` distinct values (ties everywhere, with the ground truth too); captions shuffled on odd
    seeds; with ``empty_images`` some images own no caption."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0 if empty_images else 1, 7, n_img)
    t2i = metrics_np.txt2img_from_counts(counts)
    if seed % 2:
        t2i = t2i[rng.permutation(len(t2i))]
    sim = rng.integers(0, levels, (n_img, len(t2i))).astype(dtype)
    return sim, t2i


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_ranks_equal_torch_and_brute_force_on_ties(seed, dtype):
    sim, t2i = tied_case(seed, n_img=7 + seed, levels=2 + seed % 3, dtype=dtype, empty_images=seed > 3)
    bi, bt = brute_ranks(sim.astype(np.float64), t2i.tolist())
    ti, tt = ranks_from_matrix(torch.from_numpy(sim).float(), torch.from_numpy(t2i), block=(3, 5))
    for block in [(1, 1), (2, 3), (4, 7), None]:  # tiny tiles: many hold a target, many straddle one
        ni, nt = ranks_from_matrix(sim, t2i, block=block)
        assert isinstance(ni, np.ndarray) and ni.dtype == np.int64
        assert ni.tolist() == bi == ti.tolist() and nt.tolist() == bt == tt.tolist()
    si, st = ranks_by_sort(sim, t2i)
    assert si.tolist() == bi and st.tolist() == bt


@pytest.mark.parametrize("seed", range(4))
def test_numpy_metrics_equal_torch_metrics(seed):
    sim, t2i = tied_case(seed, n_img=12, levels=3)
    got = retrieval_metrics(sim, t2i)
    assert got == retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(t2i))
    assert got == brute_metrics(sim, t2i.tolist())
    rng = np.random.default_rng(seed)
    real = rng.standard_normal(sim.shape).astype(np.float32)  # float32 scores with a few exact ties planted
    real[:, ::7] = real[:, :1]
    assert retrieval_metrics(real, t2i) == retrieval_metrics(torch.from_numpy(real), torch.from_numpy(t2i))


def test_reranked_matrices_count_the_same_both_ways():
    # A GaLR matrix is 0 outside each query's K candidates: the ground truth is often tied with most of its line.
    rng = np.random.default_rng(5)
    img = rng.standard_normal((30, 8))
    t2i = metrics_np.txt2img_from_counts([5] * 30)
    sim = img @ (img[t2i] + 1.5 * rng.standard_normal((150, 8))).T
    i2t, t2i_m = galr_rerank(sim, k=10)
    assert (i2t == 0).mean() > 0.8
    got = retrieval_metrics(i2t, t2i, sim_t2i=t2i_m)
    ref = retrieval_metrics(torch.from_numpy(i2t), torch.from_numpy(t2i), sim_t2i=torch.from_numpy(t2i_m))
    assert got == ref
    assert got["i2t_meanR"] == brute_metrics(i2t, t2i.tolist())["i2t_meanR"]
    assert got["t2i_meanR"] == brute_metrics(t2i_m, t2i.tolist())["t2i_meanR"]


def test_hand_case_and_tie_rule():
    sim = np.array([[0.1, 0.5, 0.9], [0.7, 0.7, 0.2]])
    ri, rt = ranks_from_matrix(sim, [0, 0, 1])
    assert ri.tolist() == [1, 2] and rt.tolist() == [1, 1, 1]  # the hand-computed case of test_metrics.py
    ri, rt = ranks_from_matrix(np.ones((3, 3), np.float32), np.array([0, 1, 2]))
    assert ri.tolist() == [2, 1, 0] and rt.tolist() == [2, 1, 0]  # equal scores: higher index first


def test_bad_input_same_errors_as_torch():
    sim, t2i = tied_case(1, n_img=6, levels=3)
    for a, b in ((sim, t2i), (torch.from_numpy(sim), torch.from_numpy(t2i))):
        with pytest.raises(ValueError, match="txt2img has shape"):
            retrieval_metrics(a[:, :-1], b)
        with pytest.raises(ValueError, match="outside 0"):
            retrieval_metrics(a, b * 0 + 99)
    bad = sim.copy()
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_metrics(bad, t2i)
    with pytest.raises(ValueError, match="2-D"):
        ranks_from_matrix(sim[0], t2i)


def test_maps_are_the_torch_maps_as_arrays():
    assert np.array_equal(metrics_np.txt2img_from_counts([2, 0, 3]), txt2img_from_counts([2, 0, 3]).numpy())
    assert metrics_np.txt2img_from_img2txt([[1], [0, 2]]).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="listed for image"):
        metrics_np.txt2img_from_img2txt([[0, 1], [1]])
    with pytest.raises(ValueError, match=">= 0"):
        metrics_np.txt2img_from_counts([1, -1])


def test_like_gives_back_the_input_kind():
    arr = np.arange(6.0).reshape(2, 3)
    assert metrics_np.like(arr, arr) is arr
    t = metrics_np.like(arr.T, torch.zeros(1))  # a transposed (strided) array becomes a tensor with its values
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(arr).t())
    assert metrics_np.to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32


def test_map_row_blocks_covers_every_row_once_in_order():
    for n in (0, 1, 255, 256 * 7 + 3):
        blocks = metrics_np.map_row_blocks(lambda a, b: (a, b), n, min_rows=256)
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(x[1] == y[0] for x, y in zip(blocks, blocks[1:]))


def test_metric_and_rerank_modules_import_without_torch():
    code = ("import sys; sys.path.insert(0, '.'); import engine.metrics, engine.rerank, engine.metrics_np; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
