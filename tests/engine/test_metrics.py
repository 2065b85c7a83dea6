"""engine/metrics.py (and the streamed count of engine/metrics_stream.py behind it) against brute-force references
written from METHODS.md A5 (python loops, explicit sorts)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.metrics import (img2txt_from_txt2img, ranks_by_sort, ranks_from_matrix, retrieval_metrics,
                            retrieval_metrics_from_embeddings, txt2img_from_counts,
                            txt2img_from_img2txt)
from engine.scene_recall import scene_recall


def order(scores: list[float]) -> list[int]:
    """Best-first order under the tie rule: higher score first, equal scores -> higher index first."""
    return sorted(range(len(scores)), key=lambda x: (-scores[x], -x))


def brute_ranks(sim: np.ndarray, txt2img: list[int]) -> tuple[list[int], list[int]]:
    n_img, n_cap = sim.shape
    i2t = []
    for i in range(n_img):
        gts = [j for j in range(n_cap) if txt2img[j] == i]
        if gts:
            o = order(sim[i].tolist())
            i2t.append(min(o.index(j) for j in gts))
    t2i = [order(sim[:, j].tolist()).index(txt2img[j]) for j in range(n_cap)]
    return i2t, t2i


def brute_metrics(sim: np.ndarray, txt2img: list[int]) -> dict[str, float]:
    i2t, t2i = brute_ranks(sim, txt2img)
    out = {}
    for name, r in (("i2t", np.array(i2t, float)), ("t2i", np.array(t2i, float))):
        for k in (1, 5, 10):
            out[f"{name}_R{k}"] = 100.0 * len(np.where(r < k)[0]) / len(r)
        out[f"{name}_medR"] = np.floor(np.median(r)) + 1
        out[f"{name}_meanR"] = r.mean() + 1
    rec = [out[f"{d}_R{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]
    out["rsum"] = sum(rec)
    out["mR"] = sum(rec) / 6
    return out


def random_case(seed: int, n_img: int, tied: bool, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 8, (n_img,), generator=g)  # 1..7 captions per image
    t2i = txt2img_from_counts(counts.tolist())
    if seed % 2:  # captions need not be grouped by image
        t2i = t2i[torch.randperm(len(t2i), generator=g)]
    n_cap = len(t2i)
    if tied:  # few distinct values -> many ties, including ties with the ground truth
        sim = torch.randint(0, 4, (n_img, n_cap), generator=g).to(dtype)
    else:
        sim = torch.randn(n_img, n_cap, generator=g, dtype=dtype)
    return sim, t2i


def test_hand_computed_tiny_case():
    # 2 images, captions 0,1 -> image 0, caption 2 -> image 1.
    sim = torch.tensor([[0.1, 0.5, 0.9],
                        [0.7, 0.7, 0.2]])
    t2i = torch.tensor([0, 0, 1])
    ri, rt = ranks_from_matrix(sim, t2i)
    # image 0: order 2,1,0 -> best GT caption 1 at position 1.  image 1: 0.7 (idx1) first by tie rule, 0.7 (idx0),
    # then caption 2 -> rank 2.
    assert ri.tolist() == [1, 2]
    # caption 0: column [0.1, 0.7] -> image 0 at 1; caption 1: [0.5, 0.7] -> 1; caption 2: [0.9, 0.2] -> image 1 at 1.
    assert rt.tolist() == [1, 1, 1]
    m = retrieval_metrics(sim, t2i)
    assert m["i2t_R1"] == 0.0 and m["i2t_R5"] == 100.0
    assert m["i2t_medR"] == 2.0 and m["i2t_meanR"] == 2.5
    assert m["t2i_R1"] == 0.0 and m["t2i_meanR"] == 2.0
    assert m["rsum"] == 400.0 and m["mR"] == pytest.approx(400 / 6)


def test_tie_rule_higher_index_first():
    sim = torch.ones(3, 3)
    ri, rt = ranks_from_matrix(sim, torch.tensor([0, 1, 2]))
    assert ri.tolist() == [2, 1, 0]  # caption i is preceded by every caption with a higher index
    assert rt.tolist() == [2, 1, 0]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [True, False])
def test_matches_brute_force(seed, tied):
    sim, t2i = random_case(seed, n_img=9 + seed, tied=tied)
    ref = brute_metrics(sim.numpy(), t2i.tolist())
    got = retrieval_metrics(sim, t2i, block=(4, 7))  # small tiles: many tiles straddle ground-truth pairs
    assert got.keys() == ref.keys() | set()
    for k, v in ref.items():
        assert got[k] == v, k
    ri, rt = ranks_from_matrix(sim, t2i, block=(3, 5))
    bi, bt = brute_ranks(sim.numpy(), t2i.tolist())
    assert ri.tolist() == bi and rt.tolist() == bt


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [True, False])
def test_plain_definition_matches_brute_force_and_streamed_count(seed, tied):
    sim, t2i = random_case(seed, n_img=9 + seed, tied=tied)
    ri, rt = ranks_by_sort(sim, t2i)
    bi, bt = brute_ranks(sim.numpy(), t2i.tolist())
    assert ri.tolist() == bi and rt.tolist() == bt
    si, st = ranks_from_matrix(sim, t2i, block=(4, 7))
    assert torch.equal(ri, si) and torch.equal(rt, st)


def test_plain_definition_hand_case_and_image_without_captions():
    sim = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    ri, rt = ranks_by_sort(sim, torch.tensor([0, 2]))  # image 1 has no caption: no i2t rank
    assert ri.tolist() == [0, 0] and rt.tolist() == [0, 0]
    ri, rt = ranks_by_sort(torch.ones(3, 3), torch.tensor([0, 1, 2]))  # ties: higher index first
    assert ri.tolist() == [2, 1, 0] and rt.tolist() == [2, 1, 0]


@pytest.mark.parametrize("block", [(1, 1), (2, 3), (5, 64), (1000, 1000)])
def test_block_size_does_not_change_ranks(block):
    sim, t2i = random_case(3, n_img=13, tied=True, dtype=torch.float32)
    ref = ranks_from_matrix(sim, t2i, block=(1000, 1000))
    got = ranks_from_matrix(sim, t2i, block=block)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_image_without_captions_is_excluded_from_i2t():
    sim = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    t2i = torch.tensor([0, 2])  # image 1 has no caption
    ri, rt = ranks_from_matrix(sim, t2i)
    assert ri.tolist() == [0, 0]
    assert rt.tolist() == [0, 0]
    assert retrieval_metrics(sim, t2i)["i2t_R1"] == 100.0


def test_float32_float64_and_non_finite():
    sim, t2i = random_case(1, n_img=8, tied=True)
    assert retrieval_metrics(sim, t2i) == retrieval_metrics(sim.float(), t2i)
    with pytest.raises(ValueError, match="txt2img"):
        retrieval_metrics(sim[:, :-1], t2i)
    sim[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(sim, t2i)


@pytest.mark.parametrize("seed", range(3))
def test_embeddings_path_equals_matrix_path(seed):
    g = torch.Generator().manual_seed(seed)
    n_img = 17
    t2i = txt2img_from_counts(torch.randint(1, 8, (n_img,), generator=g).tolist())
    # Small integers: every dot product is exact, so the two paths see identical values (and many ties).
    img = torch.randint(-2, 3, (n_img, 6), generator=g).float()
    txt = torch.randint(-2, 3, (len(t2i), 6), generator=g).float()
    ref = retrieval_metrics(img @ txt.T, t2i)
    assert retrieval_metrics_from_embeddings(img, txt, t2i, block=(4, 9)) == ref
    custom = retrieval_metrics_from_embeddings(img, txt, t2i, block=(5, 8), score_fn=lambda a, b: a @ b.T)
    assert custom == ref


def test_embeddings_path_random_float():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1)
    t2i = txt2img_from_counts([5] * 40)
    txt = torch.nn.functional.normalize(img[t2i] + 0.8 * torch.randn(200, 16, generator=g), dim=1)
    ref = retrieval_metrics((img @ txt.T).double(), t2i)
    got = retrieval_metrics_from_embeddings(img.double(), txt.double(), t2i, block=(16, 64))
    assert got == ref


def test_maps_roundtrip_and_errors():
    t2i = txt2img_from_counts([2, 0, 3])
    assert t2i.tolist() == [0, 0, 2, 2, 2]
    i2t = img2txt_from_txt2img(t2i, 3)
    assert i2t == [[0, 1], [], [2, 3, 4]]
    assert txt2img_from_img2txt(i2t).tolist() == t2i.tolist()
    with pytest.raises(ValueError, match="belong to no image"):
        txt2img_from_img2txt([[0], [2]], n_captions=3)
    with pytest.raises(ValueError, match="listed for image"):
        txt2img_from_img2txt([[0, 1], [1]])


def brute_scene_recall(sim: np.ndarray, scenes: list[int], txt2img: list[int], r: int) -> tuple[float, float]:
    cap_scn = [scenes[i] for i in txt2img]
    i2t = [sum(cap_scn[j] == scenes[i] for j in order(sim[i].tolist())[:r]) / r for i in range(sim.shape[0])]
    t2i = [sum(scenes[i] == cap_scn[j] for i in order(sim[:, j].tolist())[:r]) / r for j in range(sim.shape[1])]
    return 100 * float(np.mean(i2t)), 100 * float(np.mean(t2i))


@pytest.mark.parametrize("tied", [True, False])
def test_scene_recall_matches_brute_force(tied):
    sim, t2i = random_case(4, n_img=12, tied=tied)
    scenes = torch.tensor([0, 1, 2, -1, 0, 1, -1, 2, 0, 0, 1, 2])
    got = scene_recall(sim, scenes, t2i, rs=(1, 3, 5), block=5)
    for r in (1, 3, 5):
        bi, bt = brute_scene_recall(sim.numpy(), scenes.tolist(), t2i.tolist(), r)
        assert got[f"i2t_SRR@{r}"] == pytest.approx(bi, abs=1e-9)
        assert got[f"t2i_SRR@{r}"] == pytest.approx(bt, abs=1e-9)


def test_scene_recall_hand_case():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.8]])
    t2i = torch.tensor([0, 1, 1])
    # scenes: image 0 -> 3, image 1 -> -1 (noneclass, equal to itself)
    m = scene_recall(sim, torch.tensor([3, -1]), t2i, rs=(1, 2))
    # i2t@1: image 0 top = caption 0 (scene 3) hit; image 1 top = caption 2 (tie, higher index) hit -> 100
    assert m["i2t_SRR@1"] == 100.0
    # i2t@2: image 0 top2 = {0, 2}: 1 of 2; image 1: {2, 1}: 2 of 2 -> 75
    assert m["i2t_SRR@2"] == 75.0
    # t2i@1: caption 0 -> image 0 hit; caption 1 -> image 1 hit; caption 2 -> image 1 hit
    assert m["t2i_SRR@1"] == 100.0
