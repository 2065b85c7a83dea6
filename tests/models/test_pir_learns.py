"""PIR learns: the tiny config trained briefly on the demo data through train.main reaches a test mR far above
chance (random ranking of 100 test images x 5 captions)."""
import json
from math import comb

import pytest

import train


def chance_mr(n_images: int, per_image: int = 5) -> float:
    """Expected mR (percent) of a random ranking: i2t hits if any of the image's captions is in the top K."""
    n_caps = n_images * per_image
    i2t = [1 - comb(n_caps - per_image, k) / comb(n_caps, k) for k in (1, 5, 10)]
    t2i = [k / n_images for k in (1, 5, 10)]
    return 100 * (sum(i2t) + sum(t2i)) / 6


def train_and_test(config: str, name: str, tmp_path) -> dict:
    assert train.main(["--config", config, "--output-dir", str(tmp_path)]) == 0
    return json.loads((tmp_path / name / "fold0" / "test.json").read_text())


def test_chance_level():
    assert chance_mr(100) == pytest.approx(5.25, abs=0.05)


@pytest.mark.slow
def test_tiny_pir_learns(tmp_path):
    res = train_and_test("configs/tests/tiny_pir.yaml", "tiny_pir", tmp_path)
    assert res["n_images"] == 100 and res["method"] == "pir"
    assert res["mR"] > 3 * chance_mr(res["n_images"])
