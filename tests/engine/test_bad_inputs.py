"""Every bad input of the entry points: a one-line error naming the problem, a non-zero exit, nothing overwritten."""
import logging

import pytest

import test as test_entry
import train

CFG = "configs/tests/tiny_vse.yaml"


def error_text(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_missing_config(caplog, tmp_path):
    assert train.main(["--config", "no_such.yaml", "--output-dir", str(tmp_path)]) == 2
    assert "config file not found: no_such.yaml" in error_text(caplog)
    assert list(tmp_path.iterdir()) == []


def test_unknown_key_names_key(caplog, tmp_path):
    assert train.main(["--config", CFG, "--set", "train.epoch=3", "--output-dir", str(tmp_path)]) == 2
    assert "'train.epoch'" in error_text(caplog) and list(tmp_path.iterdir()) == []


def test_unknown_method_param(caplog, tmp_path):
    assert train.main(["--config", CFG, "--set", "model.params.depth=3", "--output-dir", str(tmp_path)]) == 2
    assert "model.params.depth" in error_text(caplog) and "tiny_vse.yaml" in error_text(caplog)


def test_unwritable_output_dir(caplog, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert train.main(["--config", CFG, "--output-dir", str(blocker)]) == 2
    assert "file" in error_text(caplog) and blocker.read_text() == "keep me"


def test_truncated_and_foreign_checkpoints(caplog, tiny_vse_run, tmp_path):
    data = (tiny_vse_run / "best.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    assert test_entry.main(["--resume", str(tmp_path / "cut.pth")]) == 2
    assert "truncated" in error_text(caplog)
    caplog.clear()
    before = (tiny_vse_run / "last.pth").read_bytes()
    assert train.main(["--resume", str(tiny_vse_run / "last.pth"), "--set", "model.name=galr"]) == 2
    assert "'vse' checkpoint" in error_text(caplog)
    assert (tiny_vse_run / "last.pth").read_bytes() == before


def test_existing_run_is_not_overwritten(caplog, tiny_vse_run):
    before = (tiny_vse_run / "best.pth").read_bytes()
    out = tiny_vse_run.parent.parent
    assert train.main(["--config", CFG, "--output-dir", str(out)]) == 2
    assert "--resume" in error_text(caplog) and (tiny_vse_run / "best.pth").read_bytes() == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(caplog, tmp_path):
    args = ["--config", CFG, "--set", "data.max_images=60", "--set", "data.batch_size=20", "--output-dir", str(tmp_path)]
    assert train.main(args + ["--set", "train.epochs=1"]) == 0
    last = tmp_path / "tiny_vse" / "fold0" / "last.pth"
    good = last.read_bytes()
    assert train.main(["--resume", str(last), "--set", "train.epochs=2", "--set", "loss.terms.0.weight=.nan"]) == 1
    assert "loss is nan" in error_text(caplog) and last.read_bytes() == good
