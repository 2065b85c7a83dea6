"""Resume across train.amp settings: the GradScaler state of a checkpoint trained without fp16 is empty ({}), which
an enabled scaler refuses to load; the resume starts it fresh instead (tests/gpu/test_cuda.py runs it on CUDA)."""
import pytest
import torch

import train
from core.config import load_config
from engine.runner import build_parts, checkpoint_state, restore

CFG = "configs/tests/tiny_vse.yaml"


def test_enabled_scaler_over_a_checkpoint_without_one_starts_fresh():
    cfg = load_config(CFG, ["data.max_images=40", "data.batch_size=20", "train.epochs=1"])
    parts = build_parts(cfg, 0, None, torch.device("cpu"))
    ckpt = checkpoint_state(cfg, parts, parts.model, 0, 2, 50.0, 0, 0)
    assert ckpt["scaler"] == {}  # a bf16 / off / CPU run keeps a disabled scaler
    parts.scaler = torch.amp.GradScaler("cpu", enabled=True)  # what train.amp=fp16 builds (on CUDA)
    assert restore(parts, ckpt) == (1, 2, 50.0, 0)
    assert parts.scaler.is_enabled() and parts.scaler.state_dict() == torch.amp.GradScaler("cpu").state_dict()
    # a stored fp16 state: an enabled scaler takes it, a disabled one (resumed with bf16 / off) ignores it
    stored = dict(torch.amp.GradScaler("cpu", init_scale=1024.0).state_dict(), _growth_tracker=7)
    parts.scaler = torch.amp.GradScaler("cpu", enabled=True)
    restore(parts, dict(ckpt, scaler=stored))
    assert parts.scaler.get_scale() == 1024.0 and parts.scaler.state_dict()["_growth_tracker"] == 7
    parts.scaler = torch.amp.GradScaler("cuda", enabled=False)
    restore(parts, dict(ckpt, scaler=stored))
    assert not parts.scaler.is_enabled()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GradScaler is enabled on CUDA only")
@pytest.mark.parametrize("first, then", [("bf16", "fp16"), ("fp16", "bf16")])
def test_resume_across_amp_settings_on_cuda(tmp_path, first, then):
    """A run resumed under another train.amp continues: bf16 -> fp16 starts a fresh GradScaler (the checkpoint holds
    a disabled scaler's empty state), fp16 -> bf16 ignores the stored scale. (Not in tests/gpu: the CPU dry run of
    bench/gpu_check.py would list it as skipped.)"""
    device = torch.device("cuda")
    common = ["--config", "configs/tests/tiny_vse.yaml", "--set", "data.max_images=60", "--set", "data.batch_size=20",
              "--device", device.type]
    assert train.main(common + ["--set", "train.epochs=1", "--set", f"train.amp={first}", "--output-dir",
                                str(tmp_path)]) == 0
    last = tmp_path / "tiny_vse" / "fold0" / "last.pth"
    assert bool(torch.load(last, weights_only=True)["scaler"]) == (first == "fp16")
    assert train.main(["--resume", str(last), "--set", "train.epochs=2", "--set", f"train.amp={then}",
                       "--device", device.type]) == 0
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["epoch"] == 1 and bool(ckpt["scaler"]) == (then == "fp16")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
