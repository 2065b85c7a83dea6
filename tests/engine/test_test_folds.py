"""test.py evaluates a checkpoint on its own run's fold: ``--set data.max_images`` never re-draws the train/val
split (so --split val and --rerank galr's tuning see validation images only), and ``--split val`` of a run without
validation images is a one-line error."""
import json
from pathlib import Path

import pytest

import engine.runner as runner
import test as test_entry
import train
from data.build import build_data
from data.demo import ensure_demo
from core.config import DataCfg

CFG = "configs/tests/tiny_vse.yaml"
SMALL = ["--set", "data.batch_size=20", "--set", "train.epochs=1"]


def _names(path: Path) -> set[str]:
    return {n for n in path.read_text().splitlines() if n}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """tiny_vse trained for one epoch on the first 100 images (80 train / 20 val)."""
    out = tmp_path_factory.mktemp("folds")
    assert train.main(["--config", CFG, "--output-dir", str(out), "--set", "data.max_images=100"] + SMALL) == 0
    return out / "tiny_vse" / "fold0"


@pytest.fixture()
def seen(monkeypatch) -> list[tuple[str, list[str]]]:
    """(split, image names) of every split test.py evaluates (validation for rerank tuning included)."""
    calls: list[tuple[str, list[str]]] = []
    real = runner.evaluate_split

    def spy(cfg, model, bundle, split, *args, **kwargs):
        calls.append((split, list(getattr(bundle, split).filenames)))
        return real(cfg, model, bundle, split, *args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_split", spy)
    return calls


def test_split_val_with_smaller_max_images_stays_on_the_runs_validation_images(run, seen, tmp_path):
    train_names, val_names = (_names(run / "splits" / f"{k}_filename_verify.txt") for k in ("train", "val"))
    assert len(train_names) == 80 and len(val_names) == 20
    out = tmp_path / "val.json"
    assert test_entry.main(["--resume", str(run / "best.pth"), "--split", "val", "--set", "data.max_images=50",
                            "--json", str(out)]) == 0
    (split, names), = seen
    assert split == "val" and names and not set(names) & train_names  # re-drawn folds put training images here
    assert set(names) <= val_names
    assert json.loads(out.read_text())["n_images"] == len(names)


def test_rerank_tunes_on_the_runs_validation_images(run, seen, tmp_path):
    train_names, val_names = (_names(run / "splits" / f"{k}_filename_verify.txt") for k in ("train", "val"))
    out = tmp_path / "test.json"
    assert test_entry.main(["--resume", str(run / "best.pth"), "--rerank", "galr", "--set", "data.max_images=50",
                            "--json", str(out)]) == 0
    tuned = [names for split, names in seen if split == "val"]
    assert tuned and all(set(n) <= val_names and not set(n) & train_names for n in tuned)
    assert [len(n) for s, n in seen if s == "test"] == [50]  # the test split keeps its first 50 images
    assert json.loads(out.read_text())["rerank"]["name"] == "galr"


def test_unchanged_max_images_evaluates_the_same_validation_split(run, seen):
    assert test_entry.main(["--resume", str(run / "best.pth"), "--split", "val"]) == 0
    assert set(seen[0][1]) == _names(run / "splits" / "val_filename_verify.txt")


def test_fold_max_images_keeps_the_draw(tmp_path):
    """build_data: the fold drawn over 100 images, then the first 30 of each split, is a prefix of that fold."""
    root = tmp_path / "data"
    ensure_demo(root)
    cfg = DataCfg(dataset="demo", root=str(root), transform="plain", image_size=32, num_workers=0, max_images=100)
    full = build_data(cfg, splits=("train", "val", "test"))
    small = build_data(DataCfg(**{**cfg.__dict__, "max_images": 30}), splits=("train", "val", "test"),
                       fold_max_images=100)
    assert small.val.filenames == full.val.filenames[:30] and small.train.filenames == full.train.filenames[:30]
    assert small.test.filenames == full.test.filenames[:30]


def test_split_val_without_validation_images_is_one_line(tmp_path, caplog):
    out = tmp_path / "runs"
    assert train.main(["--config", CFG, "--output-dir", str(out), "--set", "data.max_images=60",
                       "--set", "data.val_ratio=0"] + SMALL) == 0
    best = out / "tiny_vse" / "fold0" / "best.pth"
    caplog.clear()
    assert test_entry.main(["--resume", str(best), "--split", "val"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "--split val" in errors[0] and "data.val_ratio=0.0" in errors[0] and str(best) in errors[0]
