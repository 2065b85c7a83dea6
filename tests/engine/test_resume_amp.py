"""Resume across train.amp settings: the GradScaler state of a checkpoint trained without fp16 is empty ({}), which
an enabled scaler refuses to load; the resume starts it fresh instead (tests/gpu/test_cuda.py runs it on CUDA)."""
import torch

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
