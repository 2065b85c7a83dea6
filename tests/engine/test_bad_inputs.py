"""Every bad input of the entry points: a one-line error naming the problem, a non-zero exit, nothing overwritten."""
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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
    args = ["--config", CFG, "--set", "data.max_images=60", "--set", "data.batch_size=20",
            "--output-dir", str(tmp_path)]
    assert train.main(args + ["--set", "train.epochs=1"]) == 0
    last = tmp_path / "tiny_vse" / "fold0" / "last.pth"
    good = last.read_bytes()
    assert train.main(["--resume", str(last), "--set", "train.epochs=2", "--set", "loss.terms.0.weight=.nan"]) == 1
    assert "loss is nan" in error_text(caplog) and last.read_bytes() == good


# ----------------------------------------------------------------------------- issue 13.4: only our errors exit 2
ROOT = Path(__file__).resolve().parents[2]


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_internal_bug_keeps_traceback_and_exits_1():
    """A KeyError raised by a bug (not bad input) is not turned into a one-line exit 2."""
    r = run_py("import sys, engine.cli as c\n"
               "def bug(args):\n    return {}['no_such_key']\n"
               "c.load_train_config = bug\n"
               "import train\nsys.exit(train.main(['--config', 'configs/tests/tiny_vse.yaml']))\n")
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "KeyError: 'no_such_key'" in r.stderr


def test_internal_value_error_propagates_in_process(monkeypatch, tmp_path):
    import engine.cli

    def bug(*a, **k):
        raise ValueError("internal: shapes disagree")

    monkeypatch.setattr(engine.cli, "load_train_config", bug)
    with pytest.raises(ValueError, match="internal"):
        train.main(["--config", CFG, "--output-dir", str(tmp_path)])


def test_project_errors_are_builtin_subclasses():
    from core.errors import (CheckpointError, ConfigError, ConfigKeyError, DataError, MissingEntryError,
                             MissingFileError, RsitrError, RunError)

    for cls, builtin in ((ConfigError, ValueError), (DataError, ValueError), (MissingFileError, FileNotFoundError),
                         (CheckpointError, ValueError), (RunError, RuntimeError), (ConfigKeyError, KeyError),
                         (MissingEntryError, KeyError)):
        assert issubclass(cls, RsitrError) and issubclass(cls, builtin)
    assert str(ConfigKeyError("unknown rerank 'x'")) == "unknown rerank 'x'"  # not quoted like a KeyError
    from core.config import ConfigError as old_config_error
    from engine.checkpoint import CheckpointError as old_checkpoint_error
    from engine.runner import RunError as old_run_error

    assert (old_config_error, old_checkpoint_error, old_run_error) == (ConfigError, CheckpointError, RunError)


# ----------------------------------------------------------------------------- 14.4: test.py --set on a checkpoint
def test_test_py_refuses_model_keys_on_a_checkpoint(caplog, tiny_vse_run, tmp_path):
    out = tmp_path / "t.json"
    assert test_entry.main(["--resume", str(tiny_vse_run / "best.pth"), "--set", "model.embed_dim=32",
                            "--json", str(out)]) == 2
    msg = error_text(caplog)
    assert "--set model.embed_dim: cannot change at test time" in msg and "data.root" in msg and not out.exists()


def test_test_py_applies_test_time_keys_and_says_so(caplog, tiny_vse_run, tmp_path):
    out = tmp_path / "t.json"
    caplog.set_level(logging.INFO)
    assert test_entry.main(["--resume", str(tiny_vse_run / "best.pth"), "--set", "eval.rerank=galr_unweighted",
                            "--set", "eval.tune_rerank=false", "--set", "data.eval_batch_size=33",
                            "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rerank"] == {"name": "galr_unweighted", "k": 30}  # eval.rerank was applied
    lines = [r.getMessage() for r in caplog.records if "with the checkpoint's config" in r.getMessage()]
    assert lines == [f"evaluating {tiny_vse_run / 'best.pth'} with the checkpoint's config; from --set: "
                     "eval.rerank, eval.tune_rerank, data.eval_batch_size"]


def test_resume_logs_config_source_and_set_keys(caplog, tmp_path):
    args = ["--config", CFG, "--set", "data.max_images=60", "--set", "data.batch_size=20",
            "--output-dir", str(tmp_path)]
    assert train.main(args + ["--set", "train.epochs=1"]) == 0
    last = tmp_path / "tiny_vse" / "fold0" / "last.pth"
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert train.main(["--resume", str(last), "--set", "train.epochs=2"]) == 0
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming")]
    assert len(line) == 1 and "the checkpoint's config is used" in line[0]
    assert line[0].endswith("from --set: train.epochs")
    assert "epochs: 2" in (last.parent / "config.yaml").read_text()  # the run's config.yaml follows the resume


# ----------------------------------------------------------------------------- 14.6: output paths checked first
def test_json_path_folders_are_created(tiny_vse_run, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "x.json"
    sims = tmp_path / "other" / "s.npy"
    assert test_entry.main(["--resume", str(tiny_vse_run / "best.pth"), "--json", str(out),
                            "--save-sims", str(sims)]) == 0
    assert json.loads(out.read_text())["n_images"] == 100 and np.load(sims).shape == (100, 500)


@pytest.mark.parametrize("flag", ["--json", "--save-sims"])
def test_unwritable_output_fails_before_evaluating(caplog, capsys, tiny_vse_run, tmp_path, flag):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert test_entry.main(["--resume", str(tiny_vse_run / "best.pth"), flag, str(blocker / "x.out")]) == 2
    msg = error_text(caplog)
    assert msg.startswith(f"{flag} {blocker / 'x.out'}: cannot create the folder") and "Errno" not in msg
    assert capsys.readouterr().out == "" and blocker.read_text() == "keep me"  # nothing was evaluated


# ----------------------------------------------------------------------------- 14.9-14.11: config messages
def test_copied_config_names_base_key_and_file(caplog, tmp_path):
    copy = tmp_path / "my_galr.yaml"
    copy.write_text((ROOT / "configs" / "rsitmd_galr.yaml").read_text())
    assert train.main(["--config", str(copy), "--output-dir", str(tmp_path / "out")]) == 2
    msg = error_text(caplog)
    assert msg.startswith(f"{copy}: '_base_: ") and str(ROOT / "configs" / "_base_") in msg
    assert not (tmp_path / "out").exists()


def test_unknown_config_name_lists_closest(caplog, tmp_path):
    assert train.main(["--config", "rsitmd_glar", "--output-dir", str(tmp_path)]) == 2
    assert "closest in configs/: rsitmd_galr.yaml" in error_text(caplog)


def test_negative_batch_size_names_key(caplog, tmp_path):
    assert train.main(["--config", CFG, "--set", "data.batch_size=-4", "--output-dir", str(tmp_path)]) == 2
    assert error_text(caplog) == "configs/tests/tiny_vse.yaml: 'data.batch_size' must be >= 1, got -4"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 14.13 / 14.14: progress and Ctrl-C
def test_step_lines_in_log_without_terminal(tmp_path):
    """pytest's stderr is not a terminal: every step (train.log_every=1) gets a line in log.txt."""
    args = ["--config", CFG, "--set", "data.max_images=60", "--set", "data.batch_size=20", "--set", "train.epochs=1",
            "--set", "train.log_every=1", "--set", "eval.every=5", "--output-dir", str(tmp_path)]
    assert train.main(args) == 0
    text = (tmp_path / "tiny_vse" / "fold0" / "log.txt").read_text()
    steps = int(re.search(r"train images / (\d+) captions", text).group(1)) // 20  # full batches of 20
    found = re.findall(r"epoch 0 step (\d+)/(\d+): loss [\d.]+, lr [\d.e+-]+, [\d.]+ samples/s, ETA \d+:\d\d:\d\d",
                       text)
    assert steps > 1
    assert [int(a) for a, _ in found] == list(range(1, steps + 1)) and {int(b) for _, b in found} == {steps}


def test_ctrl_c_prints_resume_command_and_exits_130(caplog, monkeypatch, tmp_path):
    import engine.runner

    real = engine.runner.train_one_epoch

    def interrupted_in_epoch_1(*args, **kw):
        if args[6] == 1:  # the epoch argument
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(engine.runner, "train_one_epoch", interrupted_in_epoch_1)
    args = ["--config", CFG, "--set", "data.max_images=60", "--set", "data.batch_size=20",
            "--output-dir", str(tmp_path)]
    assert train.main(args) == 130
    last = tmp_path / "tiny_vse" / "fold0" / "last.pth"
    assert error_text(caplog) == f"interrupted; resume with: python train.py --resume {last}"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # epoch 0 was kept


def test_ctrl_c_before_first_checkpoint(caplog, monkeypatch, tmp_path):
    import engine.runner

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.runner, "train_one_epoch", interrupted)
    assert train.main(["--config", CFG, "--set", "data.max_images=60", "--output-dir", str(tmp_path)]) == 130
    assert "nothing to resume, run the same command again" in error_text(caplog)


# ----------------------------------------------------------------------------- 14.15: --help without torch
@pytest.mark.parametrize("argv", [
    "import train; train.main(['--help'])",
    "import test; test.main(['--help'])",
    "import train; sys.exit(train.main(['--config', 'no_such_config']))",
    "import train; sys.exit(train.main(['--config', 'configs/tests/tiny_vse.yaml', '--set', 'train.epoch=1']))",
    "import test; sys.exit(test.main(['--config', 'configs/tests/tiny_vse.yaml', '--set', 'data.batch_size=0']))",
    "sys.argv = ['eval_sims.py', '--help']; import runpy; runpy.run_path('scripts/eval_sims.py', run_name='__main__')",
])
def test_help_and_config_errors_import_no_torch(argv):
    code = (f"import sys\ntry:\n    {argv}\nexcept SystemExit as e:\n    code = e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert not any(m.startswith(('models', 'losses', 'data.')) for m in sys.modules)\n"
            "print('exit', code)\n")
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] in ("exit 0", "exit 2")


def test_unknown_rerank_name_is_bad_input(caplog, tiny_vse_run):
    assert test_entry.main(["--resume", str(tiny_vse_run / "best.pth"), "--rerank", "galrr"]) == 2
    assert "unknown rerank 'galrr'; known: galr, galr_unweighted, none" in error_text(caplog)
