"""The streamed, tiled rank count behind ``engine.metrics`` (read engine/metrics.py first for the definitions).

Why no sort: a rank only needs a count, so the matrix is walked tile by tile and each tile costs two comparisons
(one against a per-row threshold, one against a per-column threshold) and two matrix-vector sums. Ties with a
higher index are folded into the threshold: ``s >= t`` equals ``s > nextafter(t, -inf)``, so a tile lying
entirely on one side of the ground-truth index needs one comparison, and only the few tiles that hold a
ground-truth pair get an exact, index-aware correction. Memory stays at a few tiles plus O(N_img + N_cap), which
is what lets :func:`ranks_from_embeddings` evaluate 50k x 250k without ever holding the matrix.

The ranks are those of ``engine.metrics.ranks_by_sort`` (the plain definition), tie rule included; the tests check
both against a python-loop reference.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["DEFAULT_BLOCK", "EMB_BLOCK", "check_txt2img", "ranks_from_matrix", "ranks_from_embeddings"]

DEFAULT_BLOCK = (256, 2048)  # matrix path: a mask of this size stays in L2/L3 cache; few tiles
EMB_BLOCK = (1024, 2048)  # embeddings path: large enough for an efficient GEMM
TileFn = Callable[[int, int, int, int], Tensor]


def check_txt2img(txt2img: Tensor, n_img: int, n_cap: int, device: torch.device | str = "cpu") -> Tensor:
    """``txt2img`` as a LongTensor on ``device``, checked against the matrix shape.

    Args:
        txt2img: [N_cap] image index of each caption (any int sequence or tensor).
        n_img, n_cap: the matrix shape it must fit.
        device: where the returned tensor lives.
    Raises:
        ValueError: wrong length, or an image index outside 0..n_img-1.
    """
    t = torch.as_tensor(txt2img).to(device=device, dtype=torch.long)
    if t.ndim != 1 or len(t) != n_cap:
        raise ValueError(f"txt2img has shape {tuple(t.shape)}, expected ({n_cap},) (one entry per caption)")
    if n_cap and (int(t.min()) < 0 or int(t.max()) >= n_img):
        raise ValueError(f"txt2img holds image indices outside 0..{n_img - 1}")
    return t


def _best_gt(pair: Tensor, t2i: Tensor, n_img: int) -> tuple[Tensor, Tensor]:
    """Per image: score and index of the best-placed GT caption (max score, ties -> higher index); -inf / -1 if none."""
    g = torch.full((n_img,), float("-inf"), dtype=pair.dtype, device=pair.device)
    g = g.scatter_reduce(0, t2i, pair, "amax", include_self=True)
    cap = torch.arange(len(pair), device=pair.device)
    cand = torch.where(pair == g[t2i], cap, torch.full_like(cap, -1))
    b = torch.full((n_img,), -1, dtype=torch.long, device=pair.device).scatter_reduce(0, t2i, cand, "amax")
    return g, b


def _tile_bounds(keys: Tensor, n_tiles: int) -> tuple[Tensor, list[int]]:
    """Sort items by tile key; return the order and the start offset of each tile (python list, length n+1)."""
    order = torch.argsort(keys, stable=True)
    bounds = torch.searchsorted(keys[order], torch.arange(n_tiles + 1, device=keys.device))
    return order, bounds.tolist()


class _RankCounter:
    """Accumulates i2t / t2i rank counts over the tiles of an implicit [N_img, N_cap] score matrix."""

    def __init__(self, t2i: Tensor, pair: Tensor, n_img: int, block: tuple[int, int], i2t: bool, t2i_dir: bool):
        dev, n_cap = pair.device, len(pair)
        self.R, self.C = block
        self.n_cb = -(-n_cap // self.C)
        n_tiles = -(-n_img // self.R) * self.n_cb
        self.do_i2t, self.do_t2i = i2t, t2i_dir
        self.t2i, self.gt = t2i, pair
        self.gt_down = torch.nextafter(pair, torch.full_like(pair, float("-inf")))
        g, b = _best_gt(pair, t2i, n_img)
        self.has_cap = b >= 0
        # Images without captions: threshold +inf, so they count nothing (their rank is dropped anyway).
        self.g = torch.where(self.has_cap, g, torch.full_like(g, float("inf")))
        self.b = torch.where(self.has_cap, b, torch.full_like(b, n_cap))
        self.g_down = torch.nextafter(self.g, torch.full_like(self.g, float("-inf")))
        cap = torch.arange(n_cap, device=dev)
        self.pair_order, self.pair_bounds = _tile_bounds((t2i // self.R) * self.n_cb + cap // self.C, n_tiles)
        img = torch.arange(n_img, device=dev)
        self.row_order, self.row_bounds = _tile_bounds((img // self.R) * self.n_cb + self.b // self.C, n_tiles)
        self.cnt_i = torch.zeros(n_img, dtype=torch.float64, device=dev)
        self.cnt_t = torch.zeros(n_cap, dtype=torch.float64, device=dev)
        # 0/1 masks in the tile's own dtype: a comparison that also converts dtype runs far slower on CPU.
        self.mask = torch.empty(0, dtype=pair.dtype, device=dev)
        self.ones = self.mask
        # Per-block thresholds, shaped for broadcasting, and the python-side range of the index that decides
        # between ">" and ">=": most tiles lie entirely on one side and then need no per-tile tensor work.
        self.rblk = [self._block(self.g, self.g_down, self.b, self.has_cap, r0, self.R, n_cap, True)
                     for r0 in range(0, n_img, self.R)]
        self.cblk = [self._block(pair, self.gt_down, t2i, None, c0, self.C, n_img, False)
                     for c0 in range(0, n_cap, self.C)]

    @staticmethod
    def _block(v: Tensor, v_down: Tensor, idx: Tensor, valid: Tensor | None, s: int, n: int, big: int,
               column: bool) -> tuple:
        sl = slice(s, s + n)
        ok = idx[sl] if valid is None else idx[sl][valid[sl]]
        lo, hi = (int(ok.min()), int(ok.max())) if len(ok) else (big, -1)
        shape = (-1, 1) if column else (1, -1)
        return v[sl].view(shape), v_down[sl].view(shape), idx[sl].view(shape), lo, hi

    def _thr(self, blk: tuple, start: int, dtype: torch.dtype) -> Tensor:
        """Threshold per line: ">=" (v_down) where the GT index is below ``start`` (ties placed first), else ">"."""
        v, v_down, idx, lo, hi = blk
        thr = v_down if hi < start else v if lo >= start else torch.where(idx < start, v_down, v)
        return thr if thr.dtype == dtype else thr.to(dtype)

    def add(self, tile: Tensor, r0: int, c0: int) -> None:
        """Count, for one tile ``S[r0:r0+h, c0:c0+w]``, the items placed before each ground truth."""
        h, w = tile.shape
        m = self._mask(h, w, tile.dtype)
        rb, cb = r0 // self.R, c0 // self.C
        if self.do_i2t:
            # Tile right of the best GT index: ties are placed first (higher index) -> ">=" via nextafter.
            torch.gt(tile, self._thr(self.rblk[rb], c0, tile.dtype), out=m)
            self.cnt_i[r0:r0 + h] += m.sum(1)  # row sums: a plain reduction beats gemv here
        if self.do_t2i:
            torch.gt(tile, self._thr(self.cblk[cb], r0, tile.dtype), out=m)
            self.cnt_t[c0:c0 + w] += torch.mv(m.t(), self.ones[:h])
        k = rb * self.n_cb + cb
        p0, p1 = self.pair_bounds[k], self.pair_bounds[k + 1]
        q0, q1 = self.row_bounds[k], self.row_bounds[k + 1]
        if p0 == p1 and q0 == q1:
            return
        cols = self.pair_order[p0:p1]
        rows = self.t2i[cols]
        vals = tile[rows - r0, cols - c0]
        if self.do_t2i and p0 < p1:
            self._fix_t2i(tile, r0, c0, cols, rows, vals, m)
        if self.do_i2t:
            if p0 < p1:
                # A GT caption is never "before" the best GT of its image: undo what the fast pass counted.
                thr = torch.where(self.b[rows] < c0, self.g_down[rows], self.g[rows]).to(tile.dtype)
                self.cnt_i.index_add_(0, rows, -(vals > thr).double())
            if q0 < q1:
                self._fix_i2t(tile, r0, c0, self.row_order[q0:q1], cols, rows, vals, m)

    def _mask(self, h: int, w: int, dtype: torch.dtype) -> Tensor:
        # Counts summed in half precision would not be exact: those tiles get a float32 mask.
        dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        if self.mask.dtype != dtype or self.mask.numel() < self.R * self.C:
            self.mask = torch.empty(self.R * self.C, dtype=dtype, device=self.mask.device)
            self.ones = torch.ones(max(self.R, self.C), dtype=dtype, device=self.mask.device)
        return self.mask[: h * w].view(h, w)

    def _fix_t2i(self, tile: Tensor, r0: int, c0: int, cols: Tensor, rows: Tensor, vals: Tensor, m: Tensor) -> None:
        """Columns whose GT row lies in this tile: the fast pass used a strict ">", so add the ties placed first
        (equal score, higher row index) and remove the GT pair itself."""
        h = tile.shape[0]
        gt = self.gt[cols].to(tile.dtype)
        self.cnt_t[cols] -= (vals > gt).double()
        # Ties are rare: count equal items per column over the only region where they matter (rows below the
        # highest GT row, the span of GT columns) in one pass, and go exact only where more than the GT is equal.
        lo_r, lo_c, hi_c = int(rows.min()) - r0, int(cols.min()) - c0, int(cols.max()) - c0 + 1
        sub = tile[lo_r:, lo_c:hi_c]
        eq = self.mask[: sub.numel()].view(sub.shape)
        torch.eq(sub, self.gt[None, c0 + lo_c:c0 + hi_c].to(tile.dtype), out=eq)
        n_eq = torch.mv(eq.t(), self.ones[: sub.shape[0]])[cols - c0 - lo_c]
        sus = n_eq > (vals == gt).to(n_eq.dtype)
        if sus.any():
            sc, sr = cols[sus], rows[sus]
            below = torch.arange(r0, r0 + h, device=tile.device)[:, None] > sr[None, :]
            ties = ((tile[:, sc - c0] == gt[sus][None, :]) & below).sum(0)
            self.cnt_t[sc] += ties.double()

    def _fix_i2t(self, tile: Tensor, r0: int, c0: int, best_rows: Tensor, cols: Tensor, rows: Tensor,
                 vals: Tensor, m: Tensor) -> None:
        """Rows whose best GT caption lies in this tile: the fast pass used a strict ">", so add the non-GT ties
        with a higher caption index."""
        w = tile.shape[1]
        best_rows = best_rows[self.has_cap[best_rows]]
        if len(best_rows) == 0:
            return
        g = self.g.to(tile.dtype)
        # Detection pass over the rows of interest and the columns right of their leftmost best GT only.
        lo_r, hi_r = int(best_rows.min()) - r0, int(best_rows.max()) - r0 + 1
        lo_c = int(self.b[best_rows].min()) - c0
        sub = tile[lo_r:hi_r, lo_c:]
        eq = self.mask[: sub.numel()].view(sub.shape)
        torch.eq(sub, g[r0 + lo_r:r0 + hi_r, None], out=eq)
        n_eq = eq.sum(1)
        inside = (rows - r0 >= lo_r) & (rows - r0 < hi_r) & (cols - c0 >= lo_c)
        gt_eq = torch.zeros(hi_r - lo_r, dtype=n_eq.dtype, device=tile.device)
        gt_eq.index_add_(0, (rows - r0 - lo_r)[inside], (vals == g[rows])[inside].to(n_eq.dtype))
        sus = best_rows[n_eq[best_rows - r0 - lo_r] > gt_eq[best_rows - r0 - lo_r]]
        if len(sus) == 0:
            return
        pos = torch.full((tile.shape[0],), -1, dtype=torch.long, device=tile.device)
        pos[sus - r0] = torch.arange(len(sus), device=tile.device)
        is_gt = torch.zeros(len(sus), w, dtype=torch.bool, device=tile.device)
        keep = pos[rows - r0] >= 0
        is_gt[pos[rows - r0][keep], (cols - c0)[keep]] = True
        capi = torch.arange(c0, c0 + w, device=tile.device)
        ties = (tile[sus - r0] == g[sus][:, None]) & (capi[None, :] > self.b[sus, None]) & ~is_gt
        self.cnt_i[sus] += ties.sum(1).double()

    def ranks(self) -> tuple[Tensor, Tensor]:
        """(i2t ranks of the images that have captions, t2i ranks of all captions), 0-based LongTensors."""
        return self.cnt_i[self.has_cap].round().long(), self.cnt_t.round().long()


def _walk(tile_fn: TileFn, counter: _RankCounter, n_img: int, n_cap: int) -> None:
    R, C = counter.R, counter.C
    for r0 in range(0, n_img, R):
        for c0 in range(0, n_cap, C):
            counter.add(tile_fn(r0, min(r0 + R, n_img), c0, min(c0 + C, n_cap)), r0, c0)


def _as_block(block: int | tuple[int, int]) -> tuple[int, int]:
    r, c = (block, 2 * block) if isinstance(block, int) else block
    if r < 1 or c < 1:
        raise ValueError(f"block sizes must be >= 1, got {block}")
    return int(r), int(c)


def ranks_from_matrix(sim: Tensor, txt2img: Tensor, *, block: int | tuple[int, int] = DEFAULT_BLOCK,
                      i2t: bool = True, t2i: bool = True) -> tuple[Tensor, Tensor]:
    """0-based i2t and t2i ranks of a similarity matrix (tie rule in the module docstring).

    Args:
        sim: [N_img, N_cap] scores, float32/float64, CPU or CUDA; must be free of NaN/inf.
        txt2img: LongTensor [N_cap], image index of each caption.
        block: tile size (rows, cols), or an int r meaning (r, 2r).
        i2t, t2i: which directions to count (the other comes back empty).
    Returns:
        (i2t ranks [N_img with >= 1 caption], t2i ranks [N_cap]), LongTensors on sim's device.
    """
    if sim.ndim != 2:
        raise ValueError(f"sim must be 2-D [N_img, N_cap], got shape {tuple(sim.shape)}")
    # Fast check first: a sum is finite when every entry is; only an overflowing or non-finite sum needs the
    # exact (slower) element-wise test.
    if not torch.isfinite(sim.sum()) and not torch.isfinite(sim).all():
        raise ValueError("sim contains NaN or inf")
    n_img, n_cap = sim.shape
    t = check_txt2img(txt2img, n_img, n_cap, sim.device)
    pair = sim[t, torch.arange(n_cap, device=sim.device)]
    counter = _RankCounter(t, pair, n_img, _as_block(block), i2t, t2i)
    _walk(lambda r0, r1, c0, c1: sim[r0:r1, c0:c1], counter, n_img, n_cap)
    ri, rt = counter.ranks()
    empty = torch.empty(0, dtype=torch.long, device=sim.device)
    return (ri if i2t else empty), (rt if t2i else empty)


# ------------------------------------------------------------------------------------------------ embeddings path
def _pair_scores(img: Tensor, txt: Tensor, t2i: Tensor, score_fn: Callable[[Tensor, Tensor], Tensor] | None,
                 chunk: int = 8192) -> Tensor:
    """Score of every ground-truth pair (txt2img[j], j), without forming the matrix."""
    out = []
    for c0 in range(0, len(txt), chunk):
        a, b = img[t2i[c0:c0 + chunk]], txt[c0:c0 + chunk]
        if score_fn is None:
            out.append((a * b).sum(1))
        else:  # a generic scorer only gives blocks: take the diagonals of small blocks
            out.extend(torch.diagonal(score_fn(a[s:s + 256], b[s:s + 256])) for s in range(0, len(b), 256))
    return torch.cat(out) if out else img.new_zeros(0)


def ranks_from_embeddings(img_emb: Tensor, txt_emb: Tensor, txt2img: Tensor, *,
                          score_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                          block: int | tuple[int, int] = EMB_BLOCK,
                          device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
    """0-based i2t / t2i ranks of ``S = score_fn(img_emb, txt_emb)``, computed tile by tile; S is never held.

    Each tile is scored once (one matmul) and feeds both directions. Ground-truth pair scores are computed
    separately (a row-wise dot product, or diagonals of small blocks for a custom ``score_fn``); a ground-truth
    pair is always excluded from its own count, so a last-bit difference between that value and the tile's value
    cannot shift a rank. Only other items within that last bit of a ground-truth score could be ordered
    differently than in the materialised matrix (exact for integer-valued or otherwise exactly representable
    inputs).

    Args:
        img_emb: [N_img, D] image embeddings, used as given (normalise first for cosine).
        txt_emb: [N_cap, D] caption embeddings.
        txt2img: LongTensor [N_cap].
        score_fn: ``(img_block [r, D], txt_block [c, D]) -> [r, c]``; default ``img_block @ txt_block.T``.
        block: tile size (rows, cols).
        device: where to compute (default: img_emb's device); embeddings are moved there once.
    Returns:
        (i2t ranks [N_img with >= 1 caption], t2i ranks [N_cap]), as :func:`ranks_from_matrix`.
    """
    dev = torch.device(device) if device is not None else img_emb.device
    img, txt = img_emb.to(dev), txt_emb.to(dev)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"embeddings must be [N, D] and [M, D], got {tuple(img.shape)} and {tuple(txt.shape)}")
    if not (torch.isfinite(img).all() and torch.isfinite(txt).all()):
        raise ValueError("embeddings contain NaN or inf")
    n_img, n_cap = len(img), len(txt)
    t = check_txt2img(txt2img, n_img, n_cap, dev)
    R, C = _as_block(block)
    pair = _pair_scores(img, txt, t, score_fn)
    counter = _RankCounter(t, pair, n_img, (R, C), True, True)
    buf = torch.empty(R * C, dtype=img.dtype, device=dev)

    def tile(r0: int, r1: int, c0: int, c1: int) -> Tensor:
        if score_fn is not None:
            return score_fn(img[r0:r1], txt[c0:c1])
        # A reused output buffer: a fresh large tensor per tile would page-fault on every allocation.
        return torch.mm(img[r0:r1], txt[c0:c1].t(), out=buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0))

    _walk(tile, counter, n_img, n_cap)
    return counter.ranks()
