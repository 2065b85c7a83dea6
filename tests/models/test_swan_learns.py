"""SWAN learning test: the tiny config trained briefly on the demo data beats chance clearly (train.py + test.py),
and the run reports scene recall."""
from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest

import test as test_entry
import train

CFG = "configs/tests/tiny_swan.yaml"


def chance_mr(n_images: int = 100, per_image: int = 5) -> float:
    """Expected mR of a random ranking (i2t: any of the image's captions in the top K; t2i: the image in the top K)."""
    n_caps = n_images * per_image
    i2t = [100 * (1 - comb(n_caps - per_image, k) / comb(n_caps, k)) for k in (1, 5, 10)]
    t2i = [100 * k / n_images for k in (1, 5, 10)]
    return sum(i2t + t2i) / 6


@pytest.mark.slow
def test_tiny_swan_learns(tmp_path: Path) -> None:
    assert train.main(["--config", CFG, "--output-dir", str(tmp_path)]) == 0
    run = tmp_path / "tiny_swan" / "fold0"
    out = tmp_path / "test.json"
    assert test_entry.main(["--resume", str(run / "best.pth"), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    chance = chance_mr(metrics["n_images"], metrics["n_captions"] // metrics["n_images"])
    assert 5 < chance < 6  # 100 images x 5 captions: about 5.3
    assert metrics["mR"] > chance + 10, (metrics["mR"], chance)
    assert any(k.startswith("i2t_SRR") or "SRR" in k for k in metrics), sorted(metrics)
