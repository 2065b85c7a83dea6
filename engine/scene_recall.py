"""SWAN's scene recall SRR@r (METHODS.md A5): the share of a query's top-r results that show the query's scene."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from engine.metrics import check_txt2img


def _topr_mask(x: Tensor, r: int) -> Tensor:
    """Bool [n, m]: the r best items of each row under the tie rule (equal scores: higher index first)."""
    kth = torch.topk(x, r, dim=1).values[:, -1:]  # the values of topk are exact even when its tie order is not
    above = x > kth
    eq = x == kth
    need = r - above.sum(1, keepdim=True)
    from_right = eq.flip(1).cumsum(1).flip(1)  # 1 for the highest-index tied item, 2 for the next, ...
    return above | (eq & (from_right <= need))


def scene_recall(sim: Tensor, img_scenes: Tensor, txt2img: Tensor, rs: Sequence[int] = (1, 5, 10), *,
                 block: int = 1024) -> dict[str, float]:
    """SWAN's scene recall SRR@r (METHODS.md A5), in percent.

    For each query, the fraction of its top-r results whose scene equals the query's scene, averaged over queries.
    Captions inherit their image's scene; scene id -1 ("noneclass") is a scene like any other. The top-r set
    follows the tie rule of this module (among equal scores the higher index is taken first).

    Args:
        sim: [N_img, N_cap] similarity matrix.
        img_scenes: LongTensor [N_img], scene id of each image (-1 = no scene).
        txt2img: LongTensor [N_cap].
        rs: cut-offs r (clamped to the number of candidates).
        block: queries per block (memory: block x N bool masks).
    Returns:
        ``i2t_SRR@r`` and ``t2i_SRR@r`` for each r.
    """
    n_img, n_cap = sim.shape
    t = check_txt2img(txt2img, n_img, n_cap, sim.device)
    scn_i = torch.as_tensor(img_scenes).to(device=sim.device, dtype=torch.long)
    if scn_i.shape != (n_img,):
        raise ValueError(f"img_scenes has shape {tuple(scn_i.shape)}, expected ({n_img},)")
    scn_t = scn_i[t]
    out: dict[str, float] = {}
    for name, mat, q_scn, c_scn in (("i2t", sim, scn_i, scn_t), ("t2i", sim.t(), scn_t, scn_i)):
        for r in rs:
            rr = min(int(r), mat.shape[1])
            hits = 0.0
            for q0 in range(0, mat.shape[0], block):
                sel = _topr_mask(mat[q0:q0 + block], rr)
                same = c_scn[None, :] == q_scn[q0:q0 + block, None]
                hits += float((sel & same).sum()) / rr
            out[f"{name}_SRR@{r}"] = 100.0 * hits / mat.shape[0] if mat.shape[0] else 0.0
    return out
