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

Exact reverse ranks without sorting the whole matrix: each line's top-``pool`` list (torch.topk) answers the rank of
any score above its last entry by a binary search; the rare remaining pairs (a score below the list or a tie) are
counted exactly against their full line.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from core.config import parse_params
from core.errors import ConfigError, ConfigKeyError
from engine.metrics import retrieval_metrics

__all__ = ["galr_rerank", "galr_rerank_unweighted", "no_rerank", "RERANKERS", "apply_rerank", "tune_rerank",
           "RERANK_PARAMS", "rerank_settings"]
log = logging.getLogger(__name__)
DECAY = 0.05  # hard-coded rate of the position priors p2, p3 (upstream)
POOL = 256  # length of the per-line top lists used for exact reverse ranks (covers typical ranks; rest are exact)


# ------------------------------------------------------------------------------------------------------- ranks
def _best_first(x: Tensor, vals: Tensor, idx: Tensor, k: int) -> Tensor:
    """First k indices of each row of x best-first (tie rule), from its sorted top list (vals, idx) [n, >= k]."""
    kk = min(k + 1, vals.shape[1])
    # Any equal neighbour among the first k+1 values means topk's order (or set) may break the tie rule there.
    bad = (vals[:, 1:kk] == vals[:, : kk - 1]).any(1)
    out = idx[:, :k].clone()
    if bad.any():
        rows = x[bad].flip(1)  # stable descending sort of the reversed row = equal scores, higher index first
        out[bad] = x.shape[1] - 1 - torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :k]
    return out


def _col_ranks(x: Tensor, q: Tensor, c: Tensor, top: tuple[Tensor, Tensor]) -> Tensor:
    """0-based position of x[q_p, c_p] in column c_p of x sorted best-first (tie rule), for every pair p.

    Args:
        x: [n_q, n_c]; q, c: LongTensors [P]; top: (vals, idx) [pool, n_c], x's column-wise top list, best first.
    """
    vals, _ = top
    pool, n_q = vals.shape[0], x.shape[0]
    v = x[q, c]
    # Group the pairs by column so that one batched binary search serves all of them.
    cnt = torch.bincount(c, minlength=x.shape[1])
    order = torch.argsort(c, stable=True)
    cs = c[order]
    slot = torch.arange(len(c), device=x.device) - (torch.cumsum(cnt, 0) - cnt)[cs]
    grid = torch.full((x.shape[1], int(cnt.max()) if len(c) else 0), float("inf"), dtype=x.dtype, device=x.device)
    grid[cs, slot] = v[order]
    asc = vals.t().flip(1).contiguous()
    right = torch.searchsorted(asc, grid, right=True)[cs, slot]
    left = torch.searchsorted(asc, grid, right=False)[cs, slot]
    rank = torch.empty_like(c)
    rank[order] = pool - right
    n_eq = torch.empty_like(c)
    n_eq[order] = right - left
    exact = (n_eq == 1) & ((v > vals[-1, c]) | (pool == n_q))
    slow = (~exact).nonzero().flatten()
    rowid = torch.arange(n_q, device=x.device)[:, None]
    for s in range(0, len(slow), 4096):  # exact count against the full column, a few thousand pairs at a time
        p = slow[s:s + 4096]
        col, vp = x[:, c[p]], v[p][None, :]
        rank[p] = ((col > vp) | ((col == vp) & (rowid > q[p][None, :]))).sum(0)
    return rank


def _components(x: Tensor, fwd_top: tuple[Tensor, Tensor], rev_top: tuple[Tensor, Tensor], k: int
                ) -> tuple[Tensor, Tensor]:
    """Forward candidates [n_q, k] (best first) and their new positions r [n_q, k] after the reverse re-order."""
    n_q = x.shape[0]
    fwd = _best_first(x, *fwd_top, k)
    q = torch.arange(n_q, device=x.device).repeat_interleave(fwd.shape[1])
    a = _col_ranks(x, q, fwd.flatten(), rev_top).view(n_q, -1)
    order = torch.sort(a, dim=1, stable=True).indices  # stable: equal a keep their forward order j
    r = torch.empty_like(order)
    r.scatter_(1, order, torch.arange(order.shape[1], device=x.device).expand_as(order).contiguous())
    return fwd, r


def _tops(sim: Tensor, k: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Row-wise top list [N_img, pool] and column-wise top list [pool, N_cap] of sim (each best first)."""
    n_img, n_cap = sim.shape
    rows = torch.topk(sim, min(n_cap, max(POOL, k + 1)), dim=1)
    cols = torch.topk(sim.t().contiguous(), min(n_img, max(POOL, k + 1)), dim=1)
    return (rows.values, rows.indices), (cols.values.t(), cols.indices.t())


def _p1(x: Tensor, fwd: Tensor, guard: bool) -> Tensor:
    x64 = x.double()
    den = x64.abs().sum(0) if guard else x64.sum(0)
    num = torch.gather(x64, 1, fwd)
    if guard:
        d = den[fwd]
        return torch.where(d > 0, num / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(num))
    return num / den[fwd]


def _weighted(x: Tensor, fwd: Tensor, r: Tensor, p1: Tensor, wp1: float, wp2: float) -> Tensor:
    k = fwd.shape[1]
    p2 = torch.exp(-DECAY * torch.arange(1, k + 1, dtype=torch.float64, device=x.device))
    p3 = torch.exp(-DECAY * (r + 1).double())
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    return out.scatter_(1, fwd, wp1 * p1 + p2[None, :] + wp2 * p3)


def _both(sim: Tensor, k: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(fwd, r) for the i2t procedure on S and on Sᵀ; the two top lists are shared by both directions."""
    if sim.ndim != 2:
        raise ValueError(f"sim must be 2-D, got shape {tuple(sim.shape)}")
    row_top, col_top = _tops(sim, k)
    flip = lambda t: (t[0].t(), t[1].t())  # noqa: E731  (a top list of S along one axis is one of Sᵀ along the other)
    return _components(sim, row_top, col_top, k), _components(sim.t(), flip(col_top), flip(row_top), k)


# ---------------------------------------------------------------------------------------------------- rerankers
def galr_rerank(sim: Tensor, k: int = 30, wp1: float = 0.3, wp2: float = 1.1, guard: bool = False
                ) -> tuple[Tensor, Tensor]:
    """GaLR weighted multivariate rerank (METHODS.md B), both directions.

    Args:
        sim: [N_img, N_cap] similarity matrix (float32/float64, CPU or CUDA).
        k: candidates per query (raised to 10 as upstream, capped at the number of candidates).
        wp1, wp2: weights of the saliency term p1 and the reverse-rank term p3.
        guard: use sum |S| as p1's denominator (see the module docstring).
    Returns:
        (i2t [N_img, N_cap], t2i [N_img, N_cap]) float64 score matrices; 0 outside each query's K candidates.
    """
    k = max(10, int(k))
    (f1, r1), (f2, r2) = _both(sim, k)
    i2t = _weighted(sim, f1, r1, _p1(sim, f1, guard), wp1, wp2)
    t2i = _weighted(sim.t(), f2, r2, _p1(sim.t(), f2, guard), wp1, wp2).t()
    return i2t, t2i


def _permuted(x: Tensor, fwd: Tensor, r: Tensor) -> Tensor:
    top = x.double().max(1, keepdim=True).values
    step = top.abs().clamp_min(1.0)  # keeps (K - r) * step representable next to rowmax
    return x.double().clone().scatter_(1, fwd, top + step * (fwd.shape[1] - r).double())


def galr_rerank_unweighted(sim: Tensor, k: int = 30) -> tuple[Tensor, Tensor]:
    """GaLR "rerank without weights": each query's top-K re-ordered by ascending reverse rank, as scores.

    Args:
        sim: [N_img, N_cap] similarity matrix.
        k: candidates per query (not raised to 10, as upstream; capped at the number of candidates).
    Returns:
        (i2t, t2i) float64 [N_img, N_cap] matrices whose best-first orders are the permuted lists.
    """
    (f1, r1), (f2, r2) = _both(sim, max(1, int(k)))
    return _permuted(sim, f1, r1), _permuted(sim.t(), f2, r2).t()


def no_rerank(sim: Tensor, **_: object) -> tuple[Tensor, Tensor]:
    """Identity: the same matrix for both directions."""
    return sim, sim


RERANKERS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "none": no_rerank, "galr": galr_rerank, "galr_unweighted": galr_rerank_unweighted}


def apply_rerank(name: str, sim: Tensor, **kw: object) -> tuple[Tensor, Tensor]:
    """Run the reranker ``name`` (a key of RERANKERS) on sim; returns (i2t, t2i) matrices."""
    if name not in RERANKERS:
        raise ConfigKeyError(f"unknown rerank '{name}' (eval.rerank); known: {', '.join(sorted(RERANKERS))}")
    return RERANKERS[name](sim, **kw)


def tune_rerank(sim: Tensor, txt2img: Tensor, ks: Sequence[int] = (10, 20, 30, 40),
                wp1s: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 1.0),
                wp2s: Sequence[float] = (0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5), guard: bool = False
                ) -> tuple[dict[str, float], float, list[dict[str, float]]]:
    """Grid search of (k, wp1, wp2) for :func:`galr_rerank` by mR, meant for a validation matrix.

    Args:
        sim: [N_img, N_cap] similarity matrix; txt2img: LongTensor [N_cap].
        ks, wp1s, wp2s: the grid. guard: passed to p1.
    Returns:
        (best ``{"k", "wp1", "wp2"}``, its mR, table of ``{"k", "wp1", "wp2", "mR"}`` rows in grid order).
        Equal mR: the first in grid order wins.
    """
    table: list[dict[str, float]] = []
    best: tuple[dict[str, float], float] = ({}, float("-inf"))
    for k in ks:
        kk = max(10, int(k))
        (f1, r1), (f2, r2) = _both(sim, kk)  # ranks depend on k only: computed once per k
        p1a, p1b = _p1(sim, f1, guard), _p1(sim.t(), f2, guard)
        for wp1, wp2 in itertools.product(wp1s, wp2s):
            i2t = _weighted(sim, f1, r1, p1a, wp1, wp2)
            t2i = _weighted(sim.t(), f2, r2, p1b, wp1, wp2).t()
            mr = retrieval_metrics(i2t, txt2img, sim_t2i=t2i)["mR"]
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


def rerank_settings(name: str, params: dict, val: tuple[Tensor, Sequence[int]] | None = None,
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
        best, best_mr, _ = TUNERS[name](val[0], torch.as_tensor(val[1]))
        log.info("rerank tuned on validation: %s (val mR %.2f)", best, best_mr)
        kw = dict(best)
    return kw
