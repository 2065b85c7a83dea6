"""scripts/run_<dataset>.sh: folds for every method of a dataset prefix, then one results table."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_run_dataset_trains_all_folds_and_prints_the_table(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    # "tests/tiny" as the dataset prefix selects configs/tests/tiny_<method>.yaml; one method keeps it short
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "NGPU": "0"}
    cmd = ["bash", "scripts/run_dataset.sh", "tests/tiny", "vse", "--set", "train.epochs=1", "--set", "data.n_folds=2",
           "--set", "data.max_images=60", "--set", "data.batch_size=20"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "tiny_vse" / "summary.json").is_file()
    rows = [line for line in r.stdout.splitlines() if line.startswith("| vse ")]
    assert len(rows) == 1 and "| 2 |" in rows[0]  # one table row, averaged over the 2 folds


def test_each_dataset_script_delegates(tmp_path):
    for d in ("rsicd", "rsitmd", "ucm", "sydney"):
        text = (ROOT / "scripts" / f"run_{d}.sh").read_text()
        assert f"run_dataset.sh\" {d} " in text
    r = subprocess.run(["bash", "scripts/run_dataset.sh", "rsitmd", "no_such_method"], cwd=ROOT,
                       env={**os.environ, "NGPU": "0", "OUT": str(tmp_path)}, capture_output=True, text=True)
    assert r.returncode == 2 and "no config configs/rsitmd_no_such_method.yaml" in r.stderr
