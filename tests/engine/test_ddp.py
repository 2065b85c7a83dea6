"""torchrun with 2 CPU processes (gloo) gives the metrics of 1 process with the same global batch."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import train

KEYS = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR")
# BatchNorm statistics are per process under DDP; a frozen (eval-mode) backbone keeps the comparison exact.
SETS = ["--set", "data.max_images=100", "--set", "data.batch_size=20", "--set", "train.epochs=2",
        "--set", "model.params.finetune_backbone=false", "--set", "optim.lr=0.003"]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    assert train.main(["--config", "configs/tests/tiny_vse.yaml", "--output-dir", str(tmp_path / "one")] + SETS) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "train.py", "--config", "configs/tests/tiny_vse.yaml",
           "--output-dir", str(tmp_path / "two")] + SETS
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "tiny_vse" / "fold0" / "test.json").read_text())
    two = json.loads((tmp_path / "two" / "tiny_vse" / "fold0" / "test.json").read_text())
    for k in KEYS:
        assert two[k] == pytest.approx(one[k], abs=1e-4), k
    # and training actually moved the weights away from chance in both
    assert one["mR"] > 0
