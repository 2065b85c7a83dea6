"""Declared model contracts (zero_shot, pairwise_similarity) and eval.rerank in train.py's final test."""
import json

import numpy as np
import pytest
import torch

import test as test_entry
import train
from engine.evaluate import compute_similarity, metrics_with_rerank
from models.base import RetrievalModel
from models.registry import MODELS, list_models


def test_every_method_declares_what_the_engine_reads():
    list_models()
    for name in MODELS.names():
        cls = MODELS.get(name)
        # a method with its own similarity must say so; one without must not claim it
        assert cls.pairwise_similarity == (cls.similarity is not RetrievalModel.similarity), name
        assert isinstance(cls.zero_shot, bool), name
    assert [n for n in MODELS.names() if MODELS.get(n).zero_shot] == ["clip_zeroshot"]
    assert [n for n in MODELS.names() if MODELS.get(n).pairwise_similarity] == ["amfmn"]


class _Pairwise(RetrievalModel):
    """Score = minus the L1 distance; records every block it is called on."""

    pairwise_similarity = True

    def __init__(self):
        super().__init__()
        self.blocks = []

    def similarity(self, img, txt):
        self.blocks.append((img.shape[0], txt.shape[0]))
        return -(img[:, None, :] - txt[None, :, :]).abs().sum(-1)


class _Undeclared(_Pairwise):
    pairwise_similarity = False  # same score, but the evaluator is told it is a plain one: one call


def test_compute_similarity_blocks_only_declared_pairwise_methods():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(300, 4, generator=g), torch.randn(20, 4, generator=g)
    brute = torch.tensor([[-sum(abs(a - b) for a, b in zip(i.tolist(), t.tolist())) for t in txt] for i in img])
    m = _Pairwise()
    out = compute_similarity(m, img, txt, shard=7)
    assert torch.allclose(out, brute, atol=1e-5)
    assert len(m.blocks) == 43 * 3 and set(m.blocks) == {(7, 7), (7, 6), (6, 7), (6, 6)}  # rows: min(128, shard)
    wide = _Pairwise()
    assert torch.allclose(compute_similarity(wide, img, txt, shard=200), brute, atol=1e-5)
    assert wide.blocks == [(128, 20), (128, 20), (44, 20)]
    one = _Undeclared()
    assert torch.allclose(compute_similarity(one, img, txt, shard=7), brute, atol=1e-5)
    assert one.blocks == [(300, 20)]


@pytest.mark.parametrize("tune", [False, True])
def test_train_final_test_honours_eval_rerank(tmp_path, tune):
    out = tmp_path / "runs"
    sets = ["--set", "data.max_images=100", "--set", "data.batch_size=20", "--set", "train.epochs=1",
            "--set", "eval.rerank=galr", "--set", f"eval.tune_rerank={str(tune).lower()}",
            "--set", "eval.rerank_k=7", "--set", "eval.rerank_wp1=0.5", "--set", "eval.rerank_wp2=2.0"]
    assert train.main(["--config", "configs/tests/tiny_vse.yaml", "--output-dir", str(out)] + sets) == 0
    fold = out / "tiny_vse" / "fold0"
    got = json.loads((fold / "test.json").read_text())
    assert got["rerank"]["name"] == "galr"
    if not tune:
        assert got["rerank"] == {"name": "galr", "k": 7, "wp1": 0.5, "wp2": 2.0}
    # independent: the raw test matrix of the same checkpoint, reranked with the recorded settings
    sims = tmp_path / "s.npy"
    assert test_entry.main(["--resume", str(fold / "best.pth"), "--rerank", "none", "--save-sims", str(sims),
                            "--json", str(tmp_path / "plain.json")]) == 0
    sim = torch.from_numpy(np.load(sims))
    txt2img = torch.arange(sim.shape[1]) // 5  # demo set: 5 captions per image, in file order
    settings = {k: v for k, v in got["rerank"].items() if k != "name"}
    want = metrics_with_rerank(sim, txt2img, "galr", **settings)
    plain = json.loads((tmp_path / "plain.json").read_text())
    for k in ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR"):
        assert got[k] == pytest.approx(want[k], abs=1e-9), k
        assert got["no_rerank"][k] == pytest.approx(plain[k], abs=1e-9), k
    # test.py with the checkpoint's own eval.rerank gives the same reranked numbers
    assert test_entry.main(["--resume", str(fold / "best.pth"), "--json", str(tmp_path / "t.json")]) == 0
    again = json.loads((tmp_path / "t.json").read_text())
    assert again["rerank"] == got["rerank"] and again["mR"] == pytest.approx(got["mR"], abs=1e-9)
