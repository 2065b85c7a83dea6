"""Evaluation: encode every image and caption once, score in blocks, compute metrics (optionally reranked)."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from engine.checkpoint import unwrap
from engine.metrics import retrieval_metrics
from engine.scene_recall import scene_recall
from engine.train_loop import autocast, to_device

RECALLS = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10")


@torch.no_grad()
def encode_split(model: nn.Module, image_loader: Iterable, text_loader: Iterable, device: torch.device,
                 amp: str = "off") -> tuple[torch.Tensor, torch.Tensor]:
    """Embed each image and each caption of a split once.

    Returns:
        (img_emb [N_img, D], txt_emb [N_cap, D]) in file order, float32 on ``device``.
    """
    bare = unwrap(model)
    bare.eval()
    with autocast(device, amp):
        img = [bare.encode_image(to_device(b, device)).float() for b in image_loader]
        txt = [bare.encode_text(to_device(b, device)).float() for b in text_loader]
    return torch.cat(img), torch.cat(txt)


@torch.no_grad()
def compute_similarity(model: nn.Module, img_emb: torch.Tensor, txt_emb: torch.Tensor, shard: int = 1024) -> torch.Tensor:
    """The [N_img, N_cap] score matrix through ``model.similarity``.

    The default cosine is one matmul; a method that declares ``pairwise_similarity`` (its own ``similarity``, e.g.
    AMFMN's gated text with a [rows, cols, D] intermediate) is called on blocks of at most 128 x ``shard``.
    """
    bare = unwrap(model)
    if not bare.pairwise_similarity:  # plain cosine: one matmul
        return bare.similarity(img_emb, txt_emb).float()
    rows = max(1, min(128, shard))
    out = torch.empty(img_emb.shape[0], txt_emb.shape[0], dtype=torch.float32, device=img_emb.device)
    for i in range(0, img_emb.shape[0], rows):
        for j in range(0, txt_emb.shape[0], shard):
            out[i:i + rows, j:j + shard] = bare.similarity(img_emb[i:i + rows], txt_emb[j:j + shard]).float()
    return out


def metrics_with_rerank(sim: torch.Tensor, txt2img: torch.Tensor, rerank: str = "none", **kw: Any) -> dict[str, float]:
    """R@K/mR/medR of ``sim``; with a rerank, i2t keys come from the i2t matrix and t2i keys from the t2i one."""
    if rerank == "none":
        return retrieval_metrics(sim, txt2img)
    from engine.rerank import apply_rerank

    i2t_sim, t2i_sim = apply_rerank(rerank, sim, **kw)
    a, b = retrieval_metrics(i2t_sim, txt2img), retrieval_metrics(t2i_sim, txt2img)
    out = {k: v for k, v in a.items() if k.startswith("i2t")}
    out.update({k: v for k, v in b.items() if k.startswith("t2i")})
    out["rsum"] = sum(out[k] for k in RECALLS)
    out["mR"] = out["rsum"] / 6
    return out


def evaluate(model: nn.Module, image_loader: Iterable, text_loader: Iterable, txt2img: torch.Tensor,
             device: torch.device, *, amp: str = "off", shard: int = 1024, rerank: str = "none",
             rerank_kw: dict | None = None, img_scenes: torch.Tensor | None = None,
             scene_rs: tuple[int, ...] = ()) -> tuple[dict[str, float], torch.Tensor]:
    """Evaluate one split.

    Args:
        txt2img: [N_cap] image index of each caption.
        amp: autocast while encoding (``eval.amp``; ``off`` = fp32, the default; a no-op on CPU).
        rerank: ``none`` | ``galr`` | ``galr_unweighted`` with ``rerank_kw`` (k, wp1, wp2).
        img_scenes: [N_img] scene ids, needed for scene recall ``scene_rs`` (SRR@r).

    Returns:
        (metrics, sim): the metric dict and the raw [N_img, N_cap] similarity matrix on CPU.
    """
    img_emb, txt_emb = encode_split(model, image_loader, text_loader, device, amp)
    sim = compute_similarity(model, img_emb, txt_emb, shard).cpu()
    txt2img = torch.as_tensor(txt2img, dtype=torch.long)
    metrics = metrics_with_rerank(sim, txt2img, rerank, **(rerank_kw or {}))
    if scene_rs and img_scenes is not None:
        metrics.update(scene_recall(sim, torch.as_tensor(img_scenes), txt2img, tuple(scene_rs)))
    metrics.update(n_images=int(sim.shape[0]), n_captions=int(sim.shape[1]))
    return metrics, sim
