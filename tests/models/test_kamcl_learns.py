"""KAMCL learning test: the tiny config through the CLI (tags built from the fold's training captions) beats twice
chance; then a resumed run with a tag file reproduces the uninterrupted one (queues and key encoders included)."""
from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest
import torch

import test as test_entry
import train
from scripts.build_tags import build_tags

CFG = "configs/tests/tiny_kamcl.yaml"


def chance_mr(n_images: int = 100, per_image: int = 5) -> float:
    """Expected mR of a random ranking (i2t: any of the image's captions in the top K; t2i: the image in the top K)."""
    n_caps = n_images * per_image
    i2t = [100 * (1 - comb(n_caps - per_image, k) / comb(n_caps, k)) for k in (1, 5, 10)]
    return sum(i2t + [100 * k / n_images for k in (1, 5, 10)]) / 6


@pytest.fixture(scope="module")
def tag_args(tmp_path_factory) -> list[str]:
    from data.demo import ensure_demo

    out = tmp_path_factory.mktemp("demo_tags")
    tag_file, vocab = build_tags(Path(ensure_demo(Path("data"))), out, None)
    return ["--set", f"model.params.tags_path={tag_file}", "--set", f"model.params.tag_vocab_path={vocab}"]


@pytest.mark.slow
def test_tiny_kamcl_learns(tmp_path: Path) -> None:
    """The shipped config as the CLI runs it (no tag file: the tags come from the fold's training captions) reaches a
    test mR above twice chance; with all-zero tags (a missing file used to be only a warning) it reached 1.7x."""
    assert train.main(["--config", CFG, "--output-dir", str(tmp_path)]) == 0
    run = tmp_path / "tiny_kamcl" / "fold0"
    assert int((torch.load(run / "best.pth", weights_only=True)["model"]["token_to_tag"] >= 0).sum()) > 0
    out = tmp_path / "test.json"
    assert test_entry.main(["--resume", str(run / "best.pth"), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n_captions"] == 5 * metrics["n_images"]
    chance = chance_mr(metrics["n_images"], 5)
    assert metrics["mR"] > 2 * chance and metrics["mR"] > chance + 10, (metrics["mR"], chance)
    assert metrics["mR"] == pytest.approx(json.loads((run / "test.json").read_text())["mR"], abs=1e-9)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in r]
    assert not any("concept_bce" in k for k in rows[0]) and any("concept_bce" in k for k in rows[1])


@pytest.mark.slow
def test_kamcl_resume_is_exact(tmp_path: Path, tag_args: list[str]) -> None:
    common = ["--config", CFG, "--set", "data.max_images=60", "--set", "data.batch_size=16"] + tag_args
    assert train.main(common + ["--set", "train.epochs=2", "--output-dir", str(tmp_path / "a")]) == 0
    assert train.main(common + ["--set", "train.epochs=1", "--output-dir", str(tmp_path / "b")]) == 0
    last_b = tmp_path / "b" / "tiny_kamcl" / "fold0" / "last.pth"
    assert train.main(["--resume", str(last_b), "--set", "train.epochs=2"]) == 0
    a = torch.load(tmp_path / "a" / "tiny_kamcl" / "fold0" / "last.pth", weights_only=True)["model"]
    b = torch.load(last_b, weights_only=True)["model"]
    for k in ("queue_im", "queue_tx", "queue_ptr_im", "queue_ptr_tx"):
        assert torch.equal(a[k], b[k]), k
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
