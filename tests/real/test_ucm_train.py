"""Real images end to end: the CPU profiles (configs/cpu/ucm_<method>.yaml) trained through train.py on a
subsample of the real UCM-Captions images (../shared/data/ucm) at 32 px, tested through test.py; each method's test
mR must be at least 3x the mR of a random ranking of that same test set.

The subsample keeps every 3rd training image and every 2nd test image of the official split, so all 21 scene
classes appear on both sides (the filename lists are sorted by class). It is written as a precomp folder under
tmp_path whose image folder is the shared one, read in place. Skipped when ../shared/data/ucm is absent.
"""
import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
import torch

import test as test_entry
import train
from engine.metrics import retrieval_metrics

UCM = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ucm" / "ucm_precomp"
PER_IMAGE = 5
TRAIN_EVERY, TEST_EVERY = 3, 2


def chance_mr(n_images: int, n_captions: int) -> float:
    """Expected mR (percent) of a uniformly random ranking, for n_captions / n_images captions per image.

    Image->text R@K: 1 - C(n_cap - m, K) / C(n_cap, K) (one of the image's m captions in the top K);
    text->image R@K: K / n_img (its one image in the top K).
    """
    m = n_captions // n_images
    i2t = [1 - comb(n_captions - m, k) / comb(n_captions, k) for k in (1, 5, 10)]
    t2i = [k / n_images for k in (1, 5, 10)]
    return 100 * (sum(i2t) + sum(t2i)) / 6


def subsample(dst: Path) -> tuple[int, int]:
    """Write dst/ucm_precomp/ (every TRAIN_EVERY-th train image, every TEST_EVERY-th test image, their 5 captions
    each, the official layouts); returns the test set's (images, captions)."""
    out = dst / "ucm_precomp"
    out.mkdir(parents=True)
    train_names = (UCM / "train_filename.txt").read_text().split()
    train_caps = (UCM / "train_caps.txt").read_text().splitlines()
    keep = range(0, len(train_names), TRAIN_EVERY)
    (out / "train_filename.txt").write_text("".join(f"{train_names[i]}\n" for i in keep))
    (out / "train_caps.txt").write_text("".join(f"{train_caps[PER_IMAGE * i + j]}\n"
                                                for i in keep for j in range(PER_IMAGE)))
    test_names = (UCM / "test_filename.txt").read_text().split()  # one line per caption
    test_caps = (UCM / "test_caps.txt").read_text().splitlines()
    images = range(0, len(test_names) // PER_IMAGE, TEST_EVERY)
    lines = [PER_IMAGE * i + j for i in images for j in range(PER_IMAGE)]
    (out / "test_filename.txt").write_text("".join(f"{test_names[c]}\n" for c in lines))
    (out / "test_caps.txt").write_text("".join(f"{test_caps[c]}\n" for c in lines))
    return len(images), len(lines)


@pytest.fixture(scope="module")
def ucm_subset(tmp_path_factory) -> tuple[Path, int, int]:
    if not (UCM / "images").is_dir():
        pytest.skip("../shared/data/ucm (real UCM-Captions images) is not available")
    root = tmp_path_factory.mktemp("ucm_sub")
    n_img, n_cap = subsample(root)
    return root, n_img, n_cap


def test_chance_level_matches_random_rankings():
    """The formula against the project's metrics on random scores (210 x 1050, the full UCM test set's sizes)."""
    n_img, n_cap = 210, 1050
    txt2img = torch.arange(n_img).repeat_interleave(PER_IMAGE)
    rng = np.random.default_rng(0)
    draws = [retrieval_metrics(torch.from_numpy(rng.random((n_img, n_cap))), txt2img)["mR"] for _ in range(300)]
    assert np.mean(draws) == pytest.approx(chance_mr(n_img, n_cap), abs=3 * np.std(draws) / np.sqrt(len(draws)))


# (method, extra --set overrides): one method per family: VSE baseline, GaLR (MVSA family), SWAN, PIR (Swin/BERT).
METHODS = [
    ("vse", ["data.image_size=32", "train.epochs=3"]),
    ("galr", ["data.image_size=32", "model.params.image_size=32", "train.epochs=4"]),
    ("swan", ["train.epochs=5"]),  # the profile is 32 px already
    ("pir", ["train.epochs=8"]),  # 32 px already; the Swin/BERT towers from scratch need more epochs
]


def train_test_beats_chance(config: str, root: Path, sets: list[str], tmp_path: Path, label: str) -> None:
    """Train ``configs/<config>.yaml`` (one fold) on the UCM subsample at ``root`` through train.py, test its best
    epoch through test.py, and require 3x the mR of a random ranking of that test set."""
    args = ["--config", f"{config}.yaml", "--output-dir", str(tmp_path)]
    for s in (f"data.root={root}", f"data.image_dir={UCM / 'images'}", "data.n_folds=1", *sets):
        args += ["--set", s]
    assert train.main(args) == 0
    best = tmp_path / Path(config).name / "fold0" / "best.pth"
    out = tmp_path / "test.json"
    assert test_entry.main(["--resume", str(best), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["n_images"], res["n_captions"]) == (105, 525)  # the real subsample was tested
    chance = chance_mr(res["n_images"], res["n_captions"])
    print(f"{label}: test mR {res['mR']:.2f}, chance {chance:.2f}")
    assert res["mR"] >= 3 * chance, f"{label}: test mR {res['mR']:.2f} < 3 x chance {chance:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", METHODS, ids=[m for m, _ in METHODS])
def test_cpu_profile_learns_on_real_ucm_images(ucm_subset, method, extra, tmp_path):
    root, n_img, n_cap = ucm_subset
    assert (n_img, n_cap) == (105, 525)
    train_test_beats_chance(f"cpu/ucm_{method}", root, list(extra), tmp_path, method)
