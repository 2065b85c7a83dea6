"""The numpy twin of the matrix path of ``engine.metrics`` (read engine/metrics.py first for the definitions).

Same functions, same ranks, tie rule included, on numpy arrays and without importing torch, so that
``scripts/eval_sims.py`` (metrics of a saved matrix, GaLR rerank) starts in the time numpy takes to import. The
torch path (engine/metrics_stream.py) stays what the engine uses on tensors and on the GPU; the tests check the two
against each other and against a python-loop reference on tie-heavy matrices.

How the count works (the matrix is in memory here, so no streaming is needed, only bounded masks): the rank of a
target (value ``v``, index ``x``) in a line is ``#{y: s_y > v} + #{y: s_y == v, y > x}``. The line is walked in
tiles of items; a tile lying entirely after ``x`` counts ``s >= v`` (written ``s > nextafter(v, -inf)``), one entirely
before ``x`` counts ``s > v``: one comparison per element. Only the tile holding ``x`` itself is counted exactly.
i2t lines are the rows of S (target: the image's best-placed ground-truth caption), t2i lines its columns (target:
the caption's image).

Also here: :func:`to_numpy` and :func:`like`, which let the torch-tensor entry points of engine.metrics and
engine.rerank take tensors without this module importing torch.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

__all__ = ["BLOCK", "txt2img_from_counts", "txt2img_from_img2txt", "check_txt2img", "ranks_by_sort",
           "ranks_from_matrix", "to_numpy", "like", "is_tensor", "map_row_blocks"]

BLOCK = (4096, 256)  # (lines, items) per tile: a 1 MB mask; few items per tile keep the exact part small
T = TypeVar("T")


def map_row_blocks(fn: Callable[[int, int], T], n: int, min_rows: int = 256) -> list[T]:
    """``[fn(a, b) for each block a:b of range(n)]`` in order, the blocks run on threads, one per CPU core.

    For numpy work that releases the GIL (sorting, partitioning); a single block runs in the calling thread.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    k = max(1, min(cores, n // min_rows))
    bounds = [n * i // k for i in range(k + 1)]
    if k == 1:
        return [fn(0, n)]
    with ThreadPoolExecutor(k) as pool:
        return list(pool.map(fn, bounds[:-1], bounds[1:]))


# ------------------------------------------------------------------------------------------- arrays in and out
def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch: no tensor exists before torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array: a tensor is detached and copied to the CPU (bfloat16 becomes float32)."""
    if is_tensor(x):
        t = x.detach().cpu()
        return (t.float() if t.dtype == sys.modules["torch"].bfloat16 else t).numpy()
    return np.asarray(x)


def like(arr: np.ndarray, ref: Any) -> Any:
    """``arr`` as the kind of array ``ref`` is: a tensor on ``ref``'s device when ``ref`` is a tensor."""
    if is_tensor(ref):
        return sys.modules["torch"].from_numpy(np.ascontiguousarray(arr)).to(ref.device)
    return arr


# ----------------------------------------------------------------------------------------------- ground-truth maps
def txt2img_from_counts(counts: Sequence[int]) -> np.ndarray:
    """Captions in image order: image i owns the next ``counts[i]`` captions; int64 array [sum(counts)]."""
    c = np.asarray(list(counts), dtype=np.int64).reshape(-1)
    if (c < 0).any():
        raise ValueError("caption counts must be >= 0")
    return np.repeat(np.arange(len(c), dtype=np.int64), c)


def txt2img_from_img2txt(img2txt: Sequence[Sequence[int]], n_captions: int | None = None) -> np.ndarray:
    """Invert an image -> caption-index list; every caption must appear exactly once (int64 array [n_captions]).

    Raises:
        ValueError: on a caption listed twice, an out-of-range index, or a caption that no image lists.
    """
    flat = [(int(c), i) for i, caps in enumerate(img2txt) for c in caps]
    n = len(flat) if n_captions is None else int(n_captions)
    out = np.full(n, -1, dtype=np.int64)
    for c, i in flat:
        if not 0 <= c < n:
            raise ValueError(f"caption index {c} of image {i} is outside 0..{n - 1}")
        if out[c] >= 0:
            raise ValueError(f"caption {c} is listed for image {int(out[c])} and image {i}")
        out[c] = i
    missing = np.flatnonzero(out < 0)
    if len(missing):
        raise ValueError(f"{len(missing)} caption(s) belong to no image (first: {missing[:5].tolist()})")
    return out


def check_txt2img(txt2img: Any, n_img: int, n_cap: int) -> np.ndarray:
    """``txt2img`` as an int64 array, checked against the matrix shape (the messages of the torch twin).

    Raises:
        ValueError: wrong length, or an image index outside 0..n_img-1.
    """
    t = to_numpy(txt2img)
    if t.ndim != 1 or len(t) != n_cap:
        raise ValueError(f"txt2img has shape {tuple(t.shape)}, expected ({n_cap},) (one entry per caption)")
    if t.dtype.kind not in "iub" and len(t) and not np.array_equal(t, np.round(t)):
        raise ValueError("txt2img must hold integer image indices")
    t = t.astype(np.int64, copy=False)
    if n_cap and (int(t.min()) < 0 or int(t.max()) >= n_img):
        raise ValueError(f"txt2img holds image indices outside 0..{n_img - 1}")
    return t


def _check_sim(sim: np.ndarray) -> None:
    if sim.ndim != 2:
        raise ValueError(f"sim must be 2-D [N_img, N_cap], got shape {tuple(sim.shape)}")
    if sim.dtype.kind != "f":
        raise ValueError(f"sim must hold floating-point scores, got dtype {sim.dtype}")
    # A sum is finite when every entry is; only an overflowing or non-finite sum needs the element-wise test.
    with np.errstate(over="ignore", invalid="ignore"):
        total = sim.sum(dtype=np.float64)
    if not np.isfinite(total) and not np.isfinite(sim).all():
        raise ValueError("sim contains NaN or inf")


# ------------------------------------------------------------------------------------------ the definition, in code
def _positions(m: np.ndarray) -> np.ndarray:
    """positions[q, x] = best-first position of item x in line q (stable sort of the reversed line)."""
    n = m.shape[1]
    best_first = n - 1 - np.argsort(-m[:, ::-1], axis=1, kind="stable")
    pos = np.empty_like(best_first)
    np.put_along_axis(pos, best_first, np.broadcast_to(np.arange(n), best_first.shape), axis=1)
    return pos


def ranks_by_sort(sim: np.ndarray, txt2img: Any) -> tuple[np.ndarray, np.ndarray]:
    """0-based i2t and t2i ranks by sorting every line (the plain definition, as engine.metrics.ranks_by_sort)."""
    sim = np.asarray(sim)
    n_img, n_cap = sim.shape
    t = check_txt2img(txt2img, n_img, n_cap)
    cap = np.arange(n_cap)
    t2i = _positions(sim.T)[cap, t]
    gt_pos = _positions(sim)[t, cap]
    best = np.full(n_img, n_cap, dtype=np.int64)
    np.minimum.at(best, t, gt_pos)
    return best[np.bincount(t, minlength=n_img) > 0], t2i.astype(np.int64)


# ----------------------------------------------------------------------------------------------- the tiled count
def _line_ranks(x: np.ndarray, v: np.ndarray, idx: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Per line l of x [n_lines, n_items]: ``#{y: x[l,y] > v[l]} + #{y: x[l,y] == v[l], y > idx[l]}``.

    x may be a transposed view (t2i lines are the columns of S): the mask is then laid out like the tile in memory,
    so that the comparison and the count both walk memory in order. A line whose ``v`` is +inf and whose ``idx`` is
    outside 0..n_items-1 counts 0 (images without captions). Blocks of lines run on all CPU cores.
    """
    blocks = map_row_blocks(lambda a, b: _line_ranks_serial(x[a:b], v[a:b], idx[a:b], block), x.shape[0])
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)


def _line_ranks_serial(x: np.ndarray, v: np.ndarray, idx: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """:func:`_line_ranks` in the calling thread."""
    n_lines, n_items = x.shape
    R, C = block
    v = v.astype(x.dtype, copy=False)
    v_down = np.nextafter(v, np.array(-np.inf, dtype=x.dtype))  # s > v_down  <=>  s >= v
    out = np.zeros(n_lines, dtype=np.int64)
    transposed = x.strides[0] < x.strides[1]
    buf = np.empty(R * C, dtype=np.uint8)
    for l0 in range(0, n_lines, R):
        ls = slice(l0, min(l0 + R, n_lines))
        vl, vd, il = v[ls], v_down[ls], idx[ls]
        for c0 in range(0, n_items, C):
            c1 = min(c0 + C, n_items)
            tile = x[ls, c0:c1]
            h, w = tile.shape
            m = buf[: h * w].reshape(w, h).T if transposed else buf[: h * w].reshape(h, w)
            # Tile after the target: equal scores have a higher index and come first (">="); else ">".
            thr = np.where(il < c0, vd, vl)
            np.greater(tile, thr[:, None], out=m.view(bool))
            out[ls] += m.sum(1, dtype=np.int64 if w > 65535 else np.uint16)
            # Lines whose target lies in this tile: ">" was right up to the target; add the equal scores after it.
            inside = np.flatnonzero((il >= c0) & (il < c1))
            if len(inside):
                contiguous = inside[-1] - inside[0] + 1 == len(inside)  # captions in image order: a slice
                sub = tile[inside[0]:inside[-1] + 1] if contiguous else tile[inside]
                eq = sub == vl[inside, None]
                tied = np.flatnonzero(np.count_nonzero(eq, axis=1) > 1)  # more equal scores than the target
                if len(tied):
                    after = np.arange(c0, c1)[None, :] > il[inside[tied], None]
                    out[l0 + inside[tied]] += np.count_nonzero(eq[tied] & after, axis=1)
    return out


def _best_gt(pair: np.ndarray, t: np.ndarray, n_img: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image: score and index of the best-placed GT caption (max score, ties -> higher index); -inf / -1 if none."""
    g = np.full(n_img, -np.inf, dtype=pair.dtype)
    np.maximum.at(g, t, pair)
    cand = np.where(pair == g[t], np.arange(len(pair)), -1)
    b = np.full(n_img, -1, dtype=np.int64)
    np.maximum.at(b, t, cand)
    return g, b


def ranks_from_matrix(sim: np.ndarray, txt2img: Any, *, block: int | tuple[int, int] | None = None,
                      i2t: bool = True, t2i: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """0-based i2t and t2i ranks of a similarity matrix (engine.metrics' tie rule), as int64 arrays.

    Args:
        sim: [N_img, N_cap] float scores (float16/32/64), free of NaN/inf.
        txt2img: [N_cap] image index of each caption.
        block: tile size (lines, items), or an int r meaning (r, 2r); default :data:`BLOCK`.
        i2t, t2i: which directions to count (the other comes back empty).
    Returns:
        (i2t ranks [N_img with >= 1 caption], t2i ranks [N_cap]).
    """
    sim = np.asarray(sim)
    _check_sim(sim)
    n_img, n_cap = sim.shape
    t = check_txt2img(txt2img, n_img, n_cap)
    r, c = BLOCK if block is None else (block, 2 * block) if isinstance(block, int) else block
    if r < 1 or c < 1:
        raise ValueError(f"block sizes must be >= 1, got {block}")
    pair = sim[t, np.arange(n_cap)]
    empty = np.empty(0, dtype=np.int64)
    rt = _line_ranks(sim.T, pair, t, (int(r), int(c))) if t2i else empty
    ri = empty
    if i2t:
        g, b = _best_gt(pair, t, n_img)
        has_cap = b >= 0
        g = np.where(has_cap, g, np.inf).astype(sim.dtype)
        ri = _line_ranks(sim, g, np.where(has_cap, b, n_cap), (int(r), int(c)))[has_cap]
    return ri, rt
