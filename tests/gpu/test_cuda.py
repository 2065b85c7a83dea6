"""The CUDA paths that CPU CI never runs: bf16/fp16 autocast with the GradScaler, test.py on CUDA against CPU, and an
exact resume on CUDA in deterministic mode.

Marked ``gpu`` and skipped without CUDA. ``bench/gpu_check.py`` runs them first on a GPU machine; its ``--dry-run``
runs the same tests on the CPU (``RSITR_GPU_TEST_DEVICE=cpu``, fewer steps, a subset of methods) so that the test
code itself is exercised in CI. Environment:

* ``RSITR_GPU_TEST_DEVICE``: ``cpu`` forces the CPU (dry run); default: CUDA, else skip.
* ``RSITR_GPU_TEST_METHODS``: comma-separated methods (default: every ``configs/tests/tiny_<method>.yaml``).
* ``RSITR_GPU_TEST_STEPS``: optimizer steps on the fixed batch (default 20).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

# cuBLAS reads this when its first handle is created: set it before any test of this process touches CUDA, so the
# deterministic resume test below does not depend on which test ran first.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402

import test as test_entry  # noqa: E402
import train  # noqa: E402
from core.config import load_config  # noqa: E402
from engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from engine.runner import build_parts, setup_determinism  # noqa: E402
from engine.train_loop import autocast, to_device, train_one_epoch  # noqa: E402
from models.registry import MODELS, list_models  # noqa: E402

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
ALL_METHODS = sorted(p.stem[len("tiny_"):] for p in (ROOT / "configs" / "tests").glob("tiny_*.yaml"))
METHODS = [m.strip() for m in os.environ.get("RSITR_GPU_TEST_METHODS", "").split(",") if m.strip()] or ALL_METHODS
STEPS = int(os.environ.get("RSITR_GPU_TEST_STEPS", "20"))
# The loss term that must fall on a repeated batch. KAMCL's MoCo queue fills with the keys of that same batch, so
# its contrastive term rises by design there; its triplet term is the one to watch.
WATCH = {"kamcl": "loss_triplet"}
METRIC_KEYS = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR", "rsum")


@pytest.fixture(scope="module")
def device() -> torch.device:
    forced = os.environ.get("RSITR_GPU_TEST_DEVICE", "")
    if forced:
        return torch.device(forced)
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


def fixed_batch_losses(method: str, amp: str, device: torch.device, steps: int) -> list[dict[str, float]]:
    """Every loss term of each of ``steps`` optimizer steps on one fixed training batch of the method's tiny config."""
    cfg = load_config(ROOT / "configs" / "tests" / f"tiny_{method}.yaml",
                      [f"train.amp={amp}", f"train.device={device.type}"])
    setup_determinism(cfg)
    parts = build_parts(cfg, 0, None, device)
    parts.loader.sampler.set_epoch(0)
    batch = to_device(next(iter(parts.loader)), device)
    # constant lr: the tiny configs' warm-up schedules are sized for whole epochs, not for this short run
    constant = torch.optim.lr_scheduler.LambdaLR(parts.optimizer, lambda _: 1.0)
    losses: list[dict[str, float]] = []
    train_one_epoch(parts.model, parts.criterion, [batch] * steps, parts.optimizer, constant, parts.scaler, 0,
                    device, amp=amp, progress=False,
                    on_step=lambda i, out: losses.append({k: v.item() for k, v in out.items()}))
    return losses


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_amp_training_steps_are_finite_and_learn(method, amp, device):
    list_models()
    if getattr(MODELS.get(method), "zero_shot", False):
        cfg = load_config(ROOT / "configs" / "tests" / f"tiny_{method}.yaml", [f"train.device={device.type}"])
        parts = build_parts(replace(cfg, train=replace(cfg.train, epochs=0)), 0, None, device)
        parts.loader.sampler.set_epoch(0)
        batch = to_device(next(iter(parts.loader)), device)
        with torch.no_grad(), autocast(device, amp):
            img, txt = parts.model.encode_image(batch), parts.model.encode_text(batch)
        assert torch.isfinite(img.float()).all() and torch.isfinite(txt.float()).all()
        return
    rows = fixed_batch_losses(method, amp, device, STEPS)
    assert len(rows) == STEPS and all(math.isfinite(v) for r in rows for v in r.values()), rows
    watched = [r[WATCH.get(method, "loss")] for r in rows]
    # fp16 may skip its first steps while the GradScaler finds its scale: compare the last steps with the first
    tail = watched[-min(3, STEPS - 1):]
    assert sum(tail) / len(tail) < watched[0], f"{method} {amp}: {WATCH.get(method, 'loss')} did not decrease " \
                                               f"on a fixed batch: {watched}"


def _metrics(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    return {k: float(data[k]) for k in METRIC_KEYS}


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_test_py_on_cuda_matches_cpu(tiny_vse_run, device, amp, tmp_path):
    """Same checkpoint, test.py on the device and on the CPU: every recall within 1e-3 (percent points).

    ``eval.amp`` of the stored config decides whether evaluation encodes under autocast (``train.amp`` never does):
    both settings are checked.
    """
    ckpt = load_checkpoint(tiny_vse_run / "best.pth")
    ckpt["config"]["eval"]["amp"] = amp
    path = tmp_path / f"best_{amp}.pth"
    save_checkpoint(path, ckpt)
    for dev in ("cpu", device.type):
        assert test_entry.main(["--resume", str(path), "--device", dev, "--json", str(tmp_path / f"{dev}.json")]) == 0
    cpu, dev = _metrics(tmp_path / "cpu.json"), _metrics(tmp_path / f"{device.type}.json")
    worst = max(abs(cpu[k] - dev[k]) for k in METRIC_KEYS)
    assert worst <= 1e-3, f"amp={amp}: largest difference {worst:.4g}; cpu {cpu}; {device.type} {dev}"


def test_resume_on_device_is_exact_in_deterministic_mode(device, tmp_path):
    """3 epochs in one go == 2 epochs + resume for the third: same weights, same epoch row (tiny VSE, deterministic)."""
    common = ["--config", "configs/tests/tiny_vse.yaml", "--set", "data.max_images=120", "--set", "data.batch_size=20",
              "--set", "train.deterministic=true", "--device", device.type]
    assert train.main(common + ["--set", "train.epochs=3", "--output-dir", str(tmp_path / "a")]) == 0
    assert train.main(common + ["--set", "train.epochs=2", "--output-dir", str(tmp_path / "b")]) == 0
    last_b = tmp_path / "b" / "tiny_vse" / "fold0" / "last.pth"
    assert train.main(["--resume", str(last_b), "--set", "train.epochs=3", "--device", device.type]) == 0
    a = torch.load(tmp_path / "a" / "tiny_vse" / "fold0" / "last.pth", weights_only=True)
    b = torch.load(last_b, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    different = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    assert not different, f"weights differ after resume on {device.type}: {different[:5]}"

    def epoch_row(run: str) -> dict:
        lines = (tmp_path / run / "tiny_vse" / "fold0" / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines]
        row = next(r for r in rows if r.get("epoch") == 2)
        return {k: v for k, v in row.items() if "time" not in k and not k.endswith("data_s")}

    ra, rb = epoch_row("a"), epoch_row("b")
    assert "val/mR" in ra and ra == rb
