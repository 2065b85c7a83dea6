"""GaLR's multivariate rerank (METHODS.md B), vectorised, and a small grid search for its weights.

Paper: Yuan et al., "Remote Sensing Cross-Modal Text-Image Retrieval Based on Global and Local Information",
IEEE TGRS 2022. Upstream: github.com/xiaoyuan1996/GaLR, ``postprocessing/rerank.py`` (``i2t_rerank_optim``,
``t2i_rerank_optim``, ``i2t_rerank``, ``t2i_rerank``), which loops over queries in python.

A rerank takes the similarity matrix S [N_img, N_cap] and returns TWO matrices of the same shape: ``i2t`` (S', read
row-wise for image -> text) and ``t2i`` (S'', read column-wise for text -> image); t2i is the i2t procedure applied to
Sᵀ and transposed back. Evaluate i2t on the first and t2i on the second
(``retrieval_metrics(i2t, txt2img, sim_t2i=t2i)``).

i2t procedure for a query row i of a matrix X [n_q, n_c] (K <- max(10, K) for the weighted version):
  Fwd: the K best candidates t of row i, position j = 0..K-1; p1 = X[i,t] / sum_i' X[i',t];
  p2 = exp(-0.05 (j+1)); a = position of i in column t sorted best-first (reverse search); the candidates are
  re-ordered by ascending a, r = new position, p3 = exp(-0.05 (r+1)); S'[i,t] = wp1 p1 + p2 + wp2 p3 on the K
  candidates and 0 elsewhere.

Deliberate differences from upstream:
- Tie rule. Every "sorted best-first" uses the rule of engine/metrics.py (equal scores: higher index first), and the
  re-order by a is STABLE (equal a keep their forward order j). Upstream uses numpy's unstable default argsort for
  both (``np.argsort(-sim)``, ``np.argsort(address)``), so on ties its result depends on the platform. Equal a values
  are common even for tie-free scores (image i can be first in two columns), so this is fixed here.
- Precision: p1 and the scores are float64 (upstream stores the new scores in float32).
- ``guard=True`` (off by default = upstream): p1's denominator becomes sum_i' |X[i',t]| instead of sum_i' X[i',t].
  It equals upstream's whenever a column has no negative score, but cannot come close to 0 when cosine scores of
  both signs cancel (upstream can produce p1 = 139 from a column sum of 4e-4); an all-zero column gives p1 = 0.
- Unweighted variant ("rerank without weights", ``i2t_rerank``): upstream returns index lists whose first K entries
  are permuted by ascending a. Here the same order is returned as scores: the K candidates get
  ``rowmax + (K - r) * max(1, |rowmax|)`` (above every other score, best first), every other item keeps its original
  score, so it keeps its original place and tie order. As upstream, this variant does not raise K to 10.

Exact reverse ranks without sorting the whole matrix: each line's top-``pool`` list (numpy argpartition), put in
tie-rule order, gives the reverse rank of a pair as its position in the column's list, found by a binary search on
(column, row) keys; the rare remaining pairs (a score below the list's last entry, or tied with it) are counted
exactly against their full column.

numpy only: the rerankers take and return numpy arrays or torch tensors (a tensor is worked on as a numpy array on
the CPU and given back as a float64 tensor on its own device), and this module never imports torch, so
scripts/eval_sims.py runs without it. Results are the same for both kinds of input (tested).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from core.config import parse_params
from core.errors import ConfigError, ConfigKeyError
from engine.metrics import retrieval_metrics
from engine.metrics_np import like, map_row_blocks, to_numpy

__all__ = ["galr_rerank", "galr_rerank_unweighted", "no_rerank", "RERANKERS", "apply_rerank", "tune_rerank",
           "RERANK_PARAMS", "rerank_settings"]
log = logging.getLogger(__name__)
DECAY = 0.05  # hard-coded rate of the position priors p2, p3 (upstream)
POOL = 256  # length of the per-line top lists used for exact reverse ranks (covers typical ranks; rest are exact)
Array = Any  # a numpy array or a torch tensor (this module does not import torch)


# ------------------------------------------------------------------------------------------------------- ranks
class _Top(NamedTuple):
    """The ``p`` best items of every line of a matrix [n, m]."""

    vals: np.ndarray  # [n, p] scores, best first (tie rule: equal scores, higher index first)
    idx: np.ndarray  # [n, p] their item indices, same order
    keys: np.ndarray  # [n * p] line * m + item index, ascending (binary search of a (line, item) pair)
    pos: np.ndarray  # [n * p] best-first position of the item of each key
    full: bool  # p == m: the list is the whole line


def _top_block(x: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vals, idx, by_idx, pos) of :class:`_Top` for the rows of x: by_idx lists the top items by index."""
    n, m = x.shape
    part = np.argpartition(x, m - p, axis=1)[:, m - p:] if p < m else np.broadcast_to(np.arange(m), (n, m))
    by_idx = np.sort(part, axis=1)
    v = np.take_along_axis(x, by_idx, 1)
    # A stable descending sort of the index-ascending list read back to front: equal scores, higher index first.
    best = p - 1 - np.argsort(-v[:, ::-1], axis=1, kind="stable")
    pos = np.empty_like(best)
    np.put_along_axis(pos, best, np.broadcast_to(np.arange(p), best.shape), axis=1)
    return np.take_along_axis(v, best, 1), np.take_along_axis(by_idx, best, 1), by_idx, pos


def _top(x: np.ndarray, p: int) -> _Top:
    """Top-``p`` list of each row of x in tie-rule order (exact within the list; see _best_first for its edge).

    Row blocks run on all CPU cores (numpy's partition and sort release the GIL).
    """
    n, m = x.shape
    vals, idx, by_idx, pos = (np.concatenate(a) for a in zip(*map_row_blocks(lambda a, b: _top_block(x[a:b], p), n)))
    keys = (np.arange(n, dtype=np.int64)[:, None] * m + by_idx).ravel()
    return _Top(vals, idx, keys, pos.ravel(), p == m)


def _best_first(x: np.ndarray, top: _Top, k: int) -> np.ndarray:
    """First k indices of each row of x best-first (tie rule), from its top list (whose length is > k)."""
    out = top.idx[:, :k].copy()
    if not top.full:
        # A tie group reaching the list's end may continue outside it: those rows are sorted whole.
        bad = np.flatnonzero(top.vals[:, k - 1] == top.vals[:, -1])
        if len(bad):
            rows = x[bad, ::-1]
            out[bad] = x.shape[1] - 1 - np.argsort(-rows, axis=1, kind="stable")[:, :k]
    return out


def _rev_ranks(x: np.ndarray, xt: np.ndarray, q: np.ndarray, c: np.ndarray, top: _Top) -> np.ndarray:
    """0-based position of x[q_p, c_p] in column c_p of x sorted best-first (tie rule), for every pair p.

    Args:
        x: [n_q, n_c]; xt: x transposed, contiguous; q, c: int arrays [P]; top: the top list of xt's rows.
    """
    n_q = x.shape[0]
    key = c * n_q + q
    j = np.minimum(np.searchsorted(top.keys, key), len(top.keys) - 1)
    v = x[q, c]
    # In the column's list and strictly above its last entry (or the list is the whole column): its position.
    exact = (top.keys[j] == key) & ((v > top.vals[c, -1]) | top.full)
    rank = np.where(exact, top.pos[j], 0)
    slow = np.flatnonzero(~exact)
    rowid = np.arange(n_q)[None, :]
    for s in range(0, len(slow), 4096):  # exact count against the full column, a few thousand pairs at a time
        p = slow[s:s + 4096]
        col, vp = xt[c[p]], v[p][:, None]
        rank[p] = np.count_nonzero((col > vp) | ((col == vp) & (rowid > q[p][:, None])), axis=1)
    return rank


def _components(x: np.ndarray, xt: np.ndarray, fwd_top: _Top, rev_top: _Top, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Forward candidates [n_q, k] (best first) and their new positions r [n_q, k] after the reverse re-order."""
    n_q = x.shape[0]
    fwd = _best_first(x, fwd_top, k)
    q = np.repeat(np.arange(n_q), fwd.shape[1])
    a = _rev_ranks(x, xt, q, fwd.ravel(), rev_top).reshape(n_q, -1)
    order = np.argsort(a, axis=1, kind="stable")  # stable: equal a keep their forward order j
    r = np.empty_like(order)
    np.put_along_axis(r, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    return fwd, r


def _p1(x: np.ndarray, fwd: np.ndarray, guard: bool) -> np.ndarray:
    den = np.abs(x).sum(0, dtype=np.float64) if guard else x.sum(0, dtype=np.float64)
    num = np.take_along_axis(x, fwd, 1).astype(np.float64)
    d = den[fwd]
    if guard:
        return np.where(d > 0, num / np.where(d > 0, d, 1.0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero column sum gives inf/nan, as upstream
        return num / d


def _weighted(x: np.ndarray, fwd: np.ndarray, r: np.ndarray, p1: np.ndarray, wp1: float, wp2: float) -> np.ndarray:
    k = fwd.shape[1]
    p2 = np.exp(-DECAY * np.arange(1, k + 1, dtype=np.float64))
    p3 = np.exp(-DECAY * (r + 1).astype(np.float64))
    out = np.zeros(x.shape, dtype=np.float64)
    np.put_along_axis(out, fwd, wp1 * p1 + p2[None, :] + wp2 * p3, axis=1)
    return out


class _Both(NamedTuple):
    """The i2t procedure's (fwd, r) on S and on Sᵀ, with S and a contiguous Sᵀ."""

    s: np.ndarray
    st: np.ndarray
    i2t: tuple[np.ndarray, np.ndarray]
    t2i: tuple[np.ndarray, np.ndarray]


def _both(sim: Array, k: int) -> _Both:
    """(fwd, r) for both directions; the two top lists (rows and columns of S) serve both."""
    s = to_numpy(sim)
    if s.ndim != 2:
        raise ValueError(f"sim must be 2-D, got shape {tuple(s.shape)}")
    st = np.ascontiguousarray(s.T)
    n_img, n_cap = s.shape
    k_i2t, k_t2i = min(k, n_cap), min(k, n_img)
    rows = _top(s, min(n_cap, max(POOL, k_i2t + 1)))
    cols = _top(st, min(n_img, max(POOL, k_t2i + 1)))
    return _Both(s, st, _components(s, st, rows, cols, k_i2t), _components(st, s, cols, rows, k_t2i))


# ---------------------------------------------------------------------------------------------------- rerankers
def _weighted_pair(b: _Both, p1s: tuple[np.ndarray, np.ndarray], wp1: float, wp2: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    (f1, r1), (f2, r2) = b.i2t, b.t2i
    return _weighted(b.s, f1, r1, p1s[0], wp1, wp2), _weighted(b.st, f2, r2, p1s[1], wp1, wp2).T


def _p1_pair(b: _Both, guard: bool) -> tuple[np.ndarray, np.ndarray]:
    return _p1(b.s, b.i2t[0], guard), _p1(b.st, b.t2i[0], guard)


def galr_rerank(sim: Array, k: int = 30, wp1: float = 0.3, wp2: float = 1.1, guard: bool = False
                ) -> tuple[Array, Array]:
    """GaLR weighted multivariate rerank (METHODS.md B), both directions.

    Args:
        sim: [N_img, N_cap] similarity matrix: numpy array, or torch tensor (CPU or CUDA).
        k: candidates per query (raised to 10 as upstream, capped at the number of candidates).
        wp1, wp2: weights of the saliency term p1 and the reverse-rank term p3.
        guard: use sum |S| as p1's denominator (see the module docstring).
    Returns:
        (i2t [N_img, N_cap], t2i [N_img, N_cap]) float64 score matrices, of sim's kind (and device);
        0 outside each query's K candidates.
    """
    b = _both(sim, max(10, int(k)))
    i2t, t2i = _weighted_pair(b, _p1_pair(b, guard), wp1, wp2)
    return like(i2t, sim), like(t2i, sim)


def _permuted(x: np.ndarray, fwd: np.ndarray, r: np.ndarray) -> np.ndarray:
    out = x.astype(np.float64)  # a copy
    top = out.max(1, keepdims=True)
    step = np.maximum(np.abs(top), 1.0)  # keeps (K - r) * step representable next to rowmax
    np.put_along_axis(out, fwd, top + step * (fwd.shape[1] - r).astype(np.float64), axis=1)
    return out


def galr_rerank_unweighted(sim: Array, k: int = 30) -> tuple[Array, Array]:
    """GaLR "rerank without weights": each query's top-K re-ordered by ascending reverse rank, as scores.

    Args:
        sim: [N_img, N_cap] similarity matrix (numpy array or torch tensor).
        k: candidates per query (not raised to 10, as upstream; capped at the number of candidates).
    Returns:
        (i2t, t2i) float64 [N_img, N_cap] matrices (of sim's kind) whose best-first orders are the permuted lists.
    """
    b = _both(sim, max(1, int(k)))
    i2t, t2i = _permuted(b.s, *b.i2t), _permuted(b.st, *b.t2i).T
    return like(i2t, sim), like(t2i, sim)


def no_rerank(sim: Array, **_: object) -> tuple[Array, Array]:
    """Identity: the same matrix for both directions."""
    return sim, sim


RERANKERS: dict[str, Callable[..., tuple[Array, Array]]] = {
    "none": no_rerank, "galr": galr_rerank, "galr_unweighted": galr_rerank_unweighted}


def apply_rerank(name: str, sim: Array, **kw: object) -> tuple[Array, Array]:
    """Run the reranker ``name`` (a key of RERANKERS) on sim; returns (i2t, t2i) matrices."""
    if name not in RERANKERS:
        raise ConfigKeyError(f"unknown rerank '{name}' (eval.rerank); known: {', '.join(sorted(RERANKERS))}")
    return RERANKERS[name](sim, **kw)


def tune_rerank(sim: Array, txt2img: Array, ks: Sequence[int] = (10, 20, 30, 40),
                wp1s: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 1.0),
                wp2s: Sequence[float] = (0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5), guard: bool = False
                ) -> tuple[dict[str, float], float, list[dict[str, float]]]:
    """Grid search of (k, wp1, wp2) for :func:`galr_rerank` by mR, meant for a validation matrix.

    Args:
        sim: [N_img, N_cap] similarity matrix; txt2img: [N_cap] image index of each caption (arrays or tensors).
        ks, wp1s, wp2s: the grid. guard: passed to p1.
    Returns:
        (best ``{"k", "wp1", "wp2"}``, its mR, table of ``{"k", "wp1", "wp2", "mR"}`` rows in grid order).
        Equal mR: the first in grid order wins.
    """
    t = to_numpy(txt2img)
    table: list[dict[str, float]] = []
    best: tuple[dict[str, float], float] = ({}, float("-inf"))
    for k in ks:
        b = _both(sim, max(10, int(k)))  # ranks depend on k only: computed once per k
        p1s = _p1_pair(b, guard)
        for wp1, wp2 in itertools.product(wp1s, wp2s):
            i2t, t2i = _weighted_pair(b, p1s, wp1, wp2)
            mr = retrieval_metrics(i2t, t, sim_t2i=t2i)["mR"]
            table.append({"k": int(k), "wp1": float(wp1), "wp2": float(wp2), "mR": mr})
            if mr > best[1]:
                best = ({"k": int(k), "wp1": float(wp1), "wp2": float(wp2)}, mr)
    log.info("rerank grid: best %s mR %.3f over %d settings", best[0], best[1], len(table))
    return best[0], best[1], table


# ------------------------------------------------------------------------------------------- settings per reranker
@dataclass(frozen=True)
class NoParams:
    """``none`` takes no setting."""


@dataclass(frozen=True)
class GalrParams:
    """Settings of :func:`galr_rerank` (upstream's defaults)."""

    k: int = 30  # candidates per query (raised to 10)
    wp1: float = 0.3  # weight of the saliency term p1
    wp2: float = 1.1  # weight of the reverse-rank term p3


@dataclass(frozen=True)
class GalrUnweightedParams:
    """Settings of :func:`galr_rerank_unweighted`."""

    k: int = 30  # candidates per query


RERANK_PARAMS: dict[str, type] = {"none": NoParams, "galr": GalrParams, "galr_unweighted": GalrUnweightedParams}
# rerankers whose settings are tuned on a validation matrix: name -> grid search returning (best settings, mR, table)
TUNERS: dict[str, Callable[..., tuple[dict, float, list]]] = {"galr": tune_rerank}


def rerank_settings(name: str, params: dict, val: tuple[Array, Sequence[int]] | None = None,
                    source: str = "config") -> dict:
    """Keyword arguments for reranker ``name``: ``params`` checked by its settings class, or tuned on validation.

    Args:
        name: a key of RERANKERS.
        params: the config's rerank settings (``eval.rerank_params``); keys of another reranker are ignored,
            keys no reranker knows are a ConfigError; missing keys take the defaults.
        val: (validation similarity matrix, its txt2img) to tune on, for rerankers listed in TUNERS.
        source: the config file, for errors.
    """
    if name not in RERANK_PARAMS:
        raise ConfigError(f"{source}: unknown rerank '{name}'; known: {', '.join(sorted(RERANK_PARAMS))}")
    known = {f.name for cls in RERANK_PARAMS.values() for f in dataclasses.fields(cls)}
    mine = {f.name for f in dataclasses.fields(RERANK_PARAMS[name])}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key 'eval.rerank_params.{unknown[0]}' (rerank settings: "
                          f"{', '.join(sorted(known))})")
    kw = dataclasses.asdict(parse_params(RERANK_PARAMS[name], {k: v for k, v in params.items() if k in mine},
                                         "eval.rerank_params", source))
    if val is not None and name in TUNERS:
        best, best_mr, _ = TUNERS[name](val[0], np.asarray(val[1]))
        log.info("rerank tuned on validation: %s (val mR %.2f)", best, best_mr)
        kw = dict(best)
    return kw
