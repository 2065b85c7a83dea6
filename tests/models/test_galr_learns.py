"""The tiny GaLR config trains on the demo set through train.py and test.py reaches mR well above chance."""
from __future__ import annotations

import json
from math import comb

import pytest

CFG = "configs/tests/tiny_galr.yaml"


def chance_mr(n_images: int = 100, per_image: int = 5) -> float:
    """Expected mR of a random ranking: i2t R@K = P(one of the 5 captions in the top K), t2i R@K = K / N."""
    n_caps = n_images * per_image
    i2t = [1 - comb(n_caps - per_image, k) / comb(n_caps, k) for k in (1, 5, 10)]
    t2i = [k / n_images for k in (1, 5, 10)]
    return 100 * sum(i2t + t2i) / 6


@pytest.mark.slow
def test_tiny_galr_learns_on_demo(tmp_path):
    import test as test_entry
    import train

    assert train.main(["--config", CFG, "--output-dir", str(tmp_path)]) == 0
    run = tmp_path / "tiny_galr" / "fold0"
    assert test_entry.main(["--resume", str(run / "best.pth"), "--json", str(tmp_path / "t.json")]) == 0
    got = json.loads((tmp_path / "t.json").read_text())
    assert got["n_images"] == 100 and got["method"] == "galr"
    chance = chance_mr()  # about 5.2
    assert got["mR"] > chance + 15, f"mR {got['mR']:.2f} vs chance {chance:.2f}"
