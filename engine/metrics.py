"""Retrieval metrics: R@K, medR, meanR, mR, rsum (METHODS.md A5). SWAN's scene recall is in engine/scene_recall.py.

Pure tensor functions (no I/O). Every function takes an explicit ``txt2img`` map (caption j belongs to image
``txt2img[j]``), so any number of captions per image works; there is no ``5 * i`` arithmetic.

Definitions (A5). ``sim`` is ``[N_img, N_cap]``.

- i2t: rank of image i = 0-based position, in row i sorted best-first, of its best-placed ground-truth caption.
  Images with no caption have no rank and are left out of the i2t numbers (they stay candidates for t2i).
- t2i: rank of caption j = 0-based position of image ``txt2img[j]`` in column j sorted best-first.
- ``R@K = 100 * count(rank < K) / n_queries``; ``medR = floor(median(rank)) + 1`` (numpy median, so the mean of
  the two middle ranks for an even count); ``meanR = mean(rank) + 1``; ``rsum`` = sum of the six recalls;
  ``mR = rsum / 6`` (summed in the upstream order: t2i R1, R5, R10 then i2t R1, R5, R10).

Tie rule (deterministic, the upstream one): the upstream code sorts with ``np.argsort(row)[::-1]``, i.e. an
ascending sort reversed, so among equal scores the item with the HIGHER index comes first. Hence the rank of an
item x in a line is ``#{y: s_y > s_x} + #{y: s_y == s_x and index(y) > index(x)}``. (Upstream's default numpy sort is
not stable, so on ties upstream itself can differ by platform; this rule is what a stable sort gives.)

Reading order: :func:`ranks_by_sort` is the definition above in code (a sort, for small matrices);
:func:`metrics_from_ranks` turns ranks into the metric dict; :func:`retrieval_metrics` and
:func:`retrieval_metrics_from_embeddings` are what the engine calls. They count the same ranks without sorting
and without holding more than a few tiles (engine/metrics_stream.py explains how), so they scale to 50k x 250k.

Two kinds of input, one result: numpy arrays are counted by engine/metrics_np.py, which needs numpy alone (so
scripts/eval_sims.py never imports torch); torch tensors (CPU or CUDA) by engine/metrics_stream.py, imported when a
tensor arrives. This module imports torch only inside the functions that build tensors; ``check_txt2img``,
``ranks_from_embeddings``, ``DEFAULT_BLOCK`` and ``EMB_BLOCK`` are the torch module's and are loaded on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from engine import metrics_np
from engine.metrics_np import is_tensor, to_numpy

if TYPE_CHECKING:  # annotations only: importing this module does not import torch
    import torch
    from torch import Tensor

__all__ = ["retrieval_metrics", "retrieval_metrics_from_embeddings", "metrics_from_ranks", "ranks_by_sort",
           "ranks_from_matrix", "check_txt2img", "txt2img_from_counts", "txt2img_from_img2txt",
           "img2txt_from_txt2img", "DEFAULT_BLOCK", "EMB_BLOCK"]
_FROM_STREAM = ("check_txt2img", "ranks_from_embeddings", "DEFAULT_BLOCK", "EMB_BLOCK")  # torch names, loaded lazily


def __getattr__(name: str) -> Any:
    """The torch path's names (``from engine.metrics import check_txt2img``) load engine.metrics_stream on use."""
    if name in _FROM_STREAM:
        from engine import metrics_stream

        return getattr(metrics_stream, name)
    raise AttributeError(f"module 'engine.metrics' has no attribute '{name}'")


# ----------------------------------------------------------------------------------------------- ground-truth maps
def txt2img_from_counts(counts: Sequence[int]) -> Tensor:
    """Captions in image order: image i owns the next ``counts[i]`` captions.

    Args:
        counts: captions per image, length N_img (0 allowed).
    Returns:
        LongTensor [sum(counts)] with the image index of each caption (engine.metrics_np has the numpy twin).
    """
    import torch

    return torch.from_numpy(metrics_np.txt2img_from_counts(counts))


def txt2img_from_img2txt(img2txt: Sequence[Sequence[int]], n_captions: int | None = None) -> Tensor:
    """Invert an image -> caption-index list (e.g. a JSON list of lists); every caption must appear exactly once.

    Args:
        img2txt: entry i lists the caption indices of image i.
        n_captions: expected number of captions (default: the number of listed indices).
    Returns:
        LongTensor [n_captions] (engine.metrics_np has the numpy twin).
    Raises:
        ValueError: on a caption listed twice, an out-of-range index, or a caption that no image lists.
    """
    import torch

    return torch.from_numpy(metrics_np.txt2img_from_img2txt(img2txt, n_captions))


def img2txt_from_txt2img(txt2img: Any, n_images: int | None = None) -> list[list[int]]:
    """The image -> captions lists of a caption -> image map (captions in increasing index order)."""
    t = to_numpy(txt2img).astype(np.int64).reshape(-1)
    n = int(t.max()) + 1 if n_images is None and len(t) else int(n_images or 0)
    out: list[list[int]] = [[] for _ in range(n)]
    for j, i in enumerate(t.tolist()):
        out[i].append(j)
    return out


# ------------------------------------------------------------------------------------------ the definition, in code
def ranks_by_sort(sim: Any, txt2img: Any) -> tuple[Any, Any]:
    """0-based i2t and t2i ranks by sorting every line (the plain definition; O(N_img x N_cap) memory).

    A stable descending sort of each line read back to front places equal scores higher-index first (the tie rule).

    Args:
        sim: [N_img, N_cap] scores (numpy array: engine.metrics_np.ranks_by_sort; tensor: torch, on its device).
        txt2img: [N_cap], image index of each caption.
    Returns:
        (i2t ranks [N_img with >= 1 caption], t2i ranks [N_cap]), int64, of sim's kind, as :func:`ranks_from_matrix`.
    """
    if not is_tensor(sim):
        return metrics_np.ranks_by_sort(sim, txt2img)
    import torch

    from engine.metrics_stream import check_txt2img

    n_img, n_cap = sim.shape
    t = check_txt2img(txt2img, n_img, n_cap, sim.device)
    cap = torch.arange(n_cap, device=sim.device)

    def positions(m: Tensor) -> Tensor:  # positions[q, x] = best-first position of item x in line q
        n = m.shape[1]
        best_first = n - 1 - torch.sort(m.flip(1), dim=1, descending=True, stable=True).indices
        pos = torch.empty_like(best_first)
        return pos.scatter_(1, best_first, torch.arange(n, device=m.device).expand_as(best_first))

    t2i = positions(sim.t())[cap, t]
    gt_pos = positions(sim)[t, cap]  # position of every ground-truth caption in its image's row
    best = torch.full((n_img,), n_cap, dtype=torch.long, device=sim.device).scatter_reduce(0, t, gt_pos, "amin")
    has_cap = torch.zeros(n_img, dtype=torch.bool, device=sim.device).index_fill_(0, t, True)
    return best[has_cap], t2i


def ranks_from_matrix(sim: Any, txt2img: Any, *, block: int | tuple[int, int] | None = None,
                      i2t: bool = True, t2i: bool = True) -> tuple[Any, Any]:
    """0-based i2t and t2i ranks of a similarity matrix (tie rule in the module docstring).

    Args:
        sim: [N_img, N_cap] scores, free of NaN/inf: a numpy array (engine.metrics_np, int64 arrays back) or a
            float tensor on any device (engine.metrics_stream, LongTensors on sim's device back).
        txt2img: [N_cap] image index of each caption.
        block: tile size (rows, cols), or an int r meaning (r, 2r); default: each path's own.
        i2t, t2i: which directions to count (the other comes back empty).
    Returns:
        (i2t ranks [N_img with >= 1 caption], t2i ranks [N_cap]).
    """
    if not is_tensor(sim):
        return metrics_np.ranks_from_matrix(sim, txt2img, block=block, i2t=i2t, t2i=t2i)
    from engine import metrics_stream

    block = metrics_stream.DEFAULT_BLOCK if block is None else block
    return metrics_stream.ranks_from_matrix(sim, txt2img, block=block, i2t=i2t, t2i=t2i)


# ------------------------------------------------------------------------------------------------- ranks -> metrics
def _direction(name: str, ranks: np.ndarray, ks: Iterable[int]) -> dict[str, float]:
    out = {f"{name}_R{k}": 100.0 * int((ranks < k).sum()) / len(ranks) if len(ranks) else 0.0 for k in ks}
    out[f"{name}_medR"] = float(np.floor(np.median(ranks)) + 1) if len(ranks) else float("nan")
    out[f"{name}_meanR"] = float(ranks.mean() + 1) if len(ranks) else float("nan")
    return out


def metrics_from_ranks(i2t_ranks: Any, t2i_ranks: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The metric dict from 0-based ranks (arrays, tensors or lists): ``{i2t,t2i}_R{k}``, ``mR``, ``rsum``,
    ``{i2t,t2i}_{medR,meanR}``."""
    ri = to_numpy(i2t_ranks).astype(np.float64)
    rt = to_numpy(t2i_ranks).astype(np.float64)
    di, dt = _direction("i2t", ri, ks), _direction("t2i", rt, ks)
    out = {f"{d}_R{k}": src[f"{d}_R{k}"] for d, src in (("i2t", di), ("t2i", dt)) for k in ks}
    rsum = 0.0
    for d in ("t2i", "i2t"):  # upstream order of the sum (matters in the last bit only)
        for k in ks:
            rsum += out[f"{d}_R{k}"]
    out["mR"] = rsum / (2 * len(ks))
    out["rsum"] = rsum
    for key in ("i2t_medR", "t2i_medR", "i2t_meanR", "t2i_meanR"):
        out[key] = (di if key.startswith("i2t") else dt)[key]
    return out


def retrieval_metrics(sim: Any, txt2img: Any, *, ks: Sequence[int] = (1, 5, 10),
                      block: int | tuple[int, int] | None = None, sim_t2i: Any = None) -> dict[str, float]:
    """R@K / medR / meanR in both directions, plus mR and rsum (METHODS.md A5).

    Args:
        sim: [N_img, N_cap] similarity matrix, finite: a numpy array (counted with numpy alone) or a float32/float64
            tensor, CPU or CUDA; the same matrix gives the same numbers either way.
        txt2img: [N_cap] image index of each caption (any number of captions per image).
        ks: recall cut-offs.
        block: tile size of the count (default: each path's own; memory: one mask of that size).
        sim_t2i: optional second [N_img, N_cap] matrix for the t2i direction (a rerank gives two matrices).
    Returns:
        Python floats: ``i2t_R{k}``, ``t2i_R{k}`` (percent), ``mR``, ``rsum``, ``i2t_medR``, ``t2i_medR``,
        ``i2t_meanR``, ``t2i_meanR``.
    """
    if sim_t2i is None:
        ri, rt = ranks_from_matrix(sim, txt2img, block=block)
    else:
        if sim_t2i.shape != sim.shape:
            raise ValueError(f"sim_t2i has shape {tuple(sim_t2i.shape)}, sim {tuple(sim.shape)}")
        ri, _ = ranks_from_matrix(sim, txt2img, block=block, t2i=False)
        _, rt = ranks_from_matrix(sim_t2i, txt2img, block=block, i2t=False)
    return metrics_from_ranks(ri, rt, ks)


def retrieval_metrics_from_embeddings(img_emb: Tensor, txt_emb: Tensor, txt2img: Tensor, *,
                                      score_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                                      ks: Sequence[int] = (1, 5, 10), block: int | tuple[int, int] | None = None,
                                      device: str | torch.device | None = None) -> dict[str, float]:
    """Metrics of ``S = score_fn(img_emb, txt_emb)`` without holding S (large-scale evaluation).

    Args:
        img_emb: [N_img, D] image embeddings, used as given (normalise first for cosine).
        txt_emb: [N_cap, D] caption embeddings.
        txt2img: LongTensor [N_cap].
        score_fn: ``(img_block [r, D], txt_block [c, D]) -> [r, c]``; default ``img_block @ txt_block.T``.
        ks: recall cut-offs.
        block: tile size (rows, cols); default ``EMB_BLOCK``.
        device: where to compute (default: img_emb's device).
    Returns:
        The dict of :func:`retrieval_metrics` (ranks from :func:`engine.metrics_stream.ranks_from_embeddings`,
        whose docstring gives the one last-bit caveat).
    """
    from engine import metrics_stream

    ri, rt = metrics_stream.ranks_from_embeddings(img_emb, txt_emb, txt2img, score_fn=score_fn,
                                                  block=metrics_stream.EMB_BLOCK if block is None else block,
                                                  device=device)
    return metrics_from_ranks(ri, rt, ks)
