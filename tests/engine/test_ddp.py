"""torchrun with 2 CPU processes (gloo) gives the metrics of 1 process with the same global batch: the baseline,
KAMCL (momentum queues filled with all-gathered keys) and PIR (InfoNCE over the all-gathered batch)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train

KEYS = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR")
WORKER = str(Path(__file__).with_name("ddp_train.py"))
# BatchNorm statistics are per process under DDP; a frozen (eval-mode) backbone keeps the comparison exact.
SETS = ["--set", "data.max_images=100", "--set", "data.batch_size=20", "--set", "train.epochs=2",
        "--set", "model.params.finetune_backbone=false", "--set", "optim.lr=0.003"]


def _torchrun() -> str:
    path = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if path is None:
        pytest.skip("torchrun not found")
    return path


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _test_json(root: Path, name: str) -> dict:
    return json.loads((root / name / "fold0" / "test.json").read_text())


def _initial(name: str, tmp_path: Path, sets: list[str]) -> None:
    """The untrained model (train.epochs=0, same seed) under tmp_path/init: training must have moved away from it."""
    _run([sys.executable, WORKER, "--float64", "--config", f"configs/tests/{name}.yaml", "--output-dir",
          str(tmp_path / "init")] + sets + ["--set", "train.epochs=0"])


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    torchrun = _torchrun()
    assert train.main(["--config", "configs/tests/tiny_vse.yaml", "--output-dir", str(tmp_path / "one")] + SETS) == 0
    _run([torchrun, "--standalone", "--nproc_per_node", "2", "train.py", "--config", "configs/tests/tiny_vse.yaml",
          "--output-dir", str(tmp_path / "two")] + SETS)
    one, two = _test_json(tmp_path / "one", "tiny_vse"), _test_json(tmp_path / "two", "tiny_vse")
    for k in KEYS:
        assert two[k] == pytest.approx(one[k], abs=1e-4), k
    # and training moved the weights: the same run for 0 epochs scores differently
    assert train.main(["--config", "configs/tests/tiny_vse.yaml", "--output-dir", str(tmp_path / "zero"), *SETS,
                       "--set", "train.epochs=0"]) == 0
    zero = _test_json(tmp_path / "zero", "tiny_vse")
    assert any(abs(one[k] - zero[k]) > 1.0 for k in KEYS)


# Plain SGD: Adam divides each gradient by its own running scale, so float-rounding differences of the summed
# gradients (1 process) and the all-reduced ones (2 processes) on near-zero gradients become full-size steps.
SGD = ["--set", "optim.name=sgd", "--set", "optim.lr=0.05", "--set", "optim.scheduler=constant"]


@pytest.mark.slow
@pytest.mark.parametrize("name, sets", [
    ("tiny_dual_encoder", ["--set", "data.max_images=40", "--set", "data.batch_size=16", "--set", "train.epochs=2",
                           "--set", "train.feature_cache=disk"]),
    ("tiny_kamcl", ["--set", "data.max_images=40", "--set", "data.batch_size=16", "--set", "train.epochs=2",
                    "--set", "model.params.queue_size=48", "--set", "model.params.text_dropout=0"]),
    ("tiny_pir", ["--set", "data.max_images=40", "--set", "data.batch_size=16", "--set", "train.epochs=1"]),
])
def test_gathering_methods_two_processes_match_one(tmp_path, name, sets):
    """KAMCL: 2 epochs of 10 steps fill a 48-key queue several times over, so a queue holding only one rank's keys
    (or rank 0's copied over) would change the logits, the loss and the metrics. PIR: the loss scores the global batch.
    The queues in the 2-process last.pth (rank 0's) equal the 1-process queues. Both run in float64 (see
    ddp_train.py), so the tolerances are 1e-4 on every metric."""
    torchrun = _torchrun()
    cfg = ["--float64", "--config", f"configs/tests/{name}.yaml"]
    sets = sets + SGD
    _run([sys.executable, WORKER, *cfg, "--output-dir", str(tmp_path / "one")] + sets)
    _run([torchrun, "--standalone", "--nproc_per_node", "2", WORKER, *cfg, "--output-dir", str(tmp_path / "two")]
         + sets)
    one, two = _test_json(tmp_path / "one", name), _test_json(tmp_path / "two", name)
    # every epoch: the rank-averaged training loss and the validation metrics agree
    rows = [[json.loads(x) for x in (p / name / "fold0" / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
            for p in (tmp_path / "one", tmp_path / "two")]
    assert len(rows[0]) == len(rows[1]) >= 1
    for r1, r2 in zip(*rows):
        assert r2["train/loss"] == pytest.approx(r1["train/loss"], rel=1e-6)
        for k in KEYS:
            assert r2[f"val/{k}"] == pytest.approx(r1[f"val/{k}"], abs=1e-4), k
    # final test metrics (float64 runs: the two differ by rounding of 1e-16, no near-tie can swap)
    for k in KEYS:
        assert two[k] == pytest.approx(one[k], abs=1e-4), k
    _initial(name, tmp_path, sets)
    init = torch.load(tmp_path / "init" / name / "fold0" / "best.pth", weights_only=True)["model"]
    last = torch.load(tmp_path / "one" / name / "fold0" / "last.pth", weights_only=True)["model"]
    assert max((last[k].float() - v.float()).abs().max().item() for k, v in init.items()
               if v.is_floating_point() and not k.startswith("queue")) > 1e-3, "training did not move the weights"
    if name == "tiny_kamcl":
        a, b = (torch.load(p / name / "fold0" / "last.pth", weights_only=True)["model"]
                for p in (tmp_path / "one", tmp_path / "two"))
        for key in ("queue_im", "queue_tx", "queue_ptr_im", "queue_ptr_tx"):
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-10, msg=key)
        assert int(a["queue_ptr_im"]) == (2 * 10 * 16) % 48  # 2 epochs x 10 steps x 16 keys, wrapped


@pytest.mark.slow
def test_two_process_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    """tiny_pir with its dropout (p 0.1, BERT's too) and BatchNorm as the method has them, 2 gloo processes, 2 epochs:
    once uninterrupted, once killed right after epoch 0's last.pth and resumed. Each process draws its own dropout
    masks and only rank 0 validates (which advances its CPU generator), so the resume equals the uninterrupted run
    only when every rank gets its own generators back: weights, epoch-1 losses and metrics, test metrics, all exact."""
    torchrun = _torchrun()
    name = "tiny_pir"
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", WORKER, "--keep-randomness"]
    args = ["--config", f"configs/tests/{name}.yaml", "--set", "data.max_images=40", "--set", "data.batch_size=16",
            "--set", "train.epochs=2"]
    _run(launch + args + ["--output-dir", str(tmp_path / "whole")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(launch + ["--kill-after-epoch", "0"] + args + ["--output-dir", str(tmp_path / "cut")],
                            capture_output=True, text=True, env=env, timeout=600)
    run = tmp_path / "cut" / name / "fold0"
    assert killed.returncode != 0 and not (run / "test.json").exists(), killed.stderr[-2000:]
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # the ranks' generators differ
    _run(launch + ["--resume", str(run / "last.pth")])
    whole = tmp_path / "whole" / name / "fold0"
    a, b = (torch.load(r / "last.pth", weights_only=True) for r in (whole, run))
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k

    def row(r: Path, epoch: int) -> dict:
        rows = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
        return {k: v for k, v in next(x for x in rows if x.get("epoch") == epoch).items()
                if "time" not in k and not k.endswith("data_s")}

    assert row(whole, 1) == row(run, 1) and "val/mR" in row(whole, 1)
    ta, tb = (json.loads((r / "test.json").read_text()) for r in (whole, run))
    assert {k: ta[k] for k in KEYS} == {k: tb[k] for k in KEYS}
