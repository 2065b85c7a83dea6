"""Evaluation precision: ``eval.amp`` (default off = fp32) decides, never ``train.amp``.

The engine's autocast is a no-op on CPU, so these tests replace it (in ``engine.evaluate`` only) by CPU bf16
autocast: what CUDA would do with ``amp: bf16``, observable on a CPU-only machine.
"""
import contextlib

import pytest
import torch

import engine.evaluate as ev
from core.config import ConfigError, load_config
from data.build import build_data, eval_loaders, model_context
from engine.runner import evaluate_split
from models.registry import build_model

CPU = torch.device("cpu")


def _cpu_autocast(device: torch.device, amp: str):
    """CPU stand-in for the CUDA autocast: real bf16 / fp16 autocast whenever ``amp`` is not ``off``."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised tiny VSE and its demo data (60 images)."""
    torch.manual_seed(0)
    cfg = load_config("configs/tests/tiny_vse.yaml", ["data.max_images=60"])
    bundle = build_data(cfg.data)
    model = build_model(cfg.model, model_context(bundle)).eval()
    return bundle, model


ENGINE_AUTOCAST = ev.autocast  # the real one: a no-op on CPU


def _fp32_reference(model, bundle, cfg) -> torch.Tensor:
    """Cosine similarity of the val split, encoded with no autocast at all, scored in float64."""
    img_loader, txt_loader = eval_loaders(bundle.val, bundle, cfg.data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "autocast", ENGINE_AUTOCAST)
        img, txt = (e.double() for e in ev.encode_split(model, img_loader, txt_loader, CPU, "bf16"))
    img, txt = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
    return (img @ txt.t()).float()


def test_train_bf16_evaluates_in_fp32_by_default(tiny, monkeypatch):
    bundle, model = tiny
    monkeypatch.setattr(ev, "autocast", _cpu_autocast)
    cfg_bf16 = load_config("configs/tests/tiny_vse.yaml", ["data.max_images=60", "train.amp=bf16"])
    cfg_off = load_config("configs/tests/tiny_vse.yaml", ["data.max_images=60", "train.amp=off"])
    assert cfg_bf16.eval.amp == "off"
    ref = _fp32_reference(model, bundle, cfg_off)
    m_bf16, sim_bf16 = evaluate_split(cfg_bf16, model, bundle, "val", CPU)
    m_off, sim_off = evaluate_split(cfg_off, model, bundle, "val", CPU)
    assert torch.allclose(sim_bf16, ref, atol=1e-5, rtol=0), (sim_bf16 - ref).abs().max()
    assert torch.equal(sim_bf16, sim_off)
    assert m_bf16 == m_off


def test_eval_amp_bf16_is_applied(tiny, monkeypatch):
    """The opt-in path really encodes under autocast: bf16 scores move away from the fp32 reference (so the test
    above would notice train.amp leaking into evaluation)."""
    bundle, model = tiny
    monkeypatch.setattr(ev, "autocast", _cpu_autocast)
    cfg = load_config("configs/tests/tiny_vse.yaml", ["data.max_images=60", "train.amp=off", "eval.amp=bf16"])
    ref = _fp32_reference(model, bundle, cfg)
    _, sim = evaluate_split(cfg, model, bundle, "val", CPU)
    assert (sim - ref).abs().max() > 1e-4  # bf16 keeps 8 mantissa bits: errors of ~1e-3 on cosines


def test_eval_amp_choices():
    with pytest.raises(ConfigError, match="eval.amp"):
        load_config("configs/tests/tiny_vse.yaml", ["eval.amp=fp32"])


def test_bare_off_in_yaml_means_off(tmp_path):
    """``amp: off`` unquoted is a YAML boolean; it still selects the choice "off" (file and --set)."""
    path = tmp_path / "c.yaml"
    path.write_text("_base_: %s\ntrain: {amp: off}\neval: {amp: off}\n"
                    % (tmp_path.cwd() / "configs" / "tests" / "tiny_vse.yaml"))
    cfg = load_config(path)
    assert (cfg.train.amp, cfg.eval.amp) == ("off", "off")
    cfg = load_config("configs/tests/tiny_vse.yaml", ["eval.amp=off", "train.amp=bf16"])
    assert (cfg.train.amp, cfg.eval.amp) == ("bf16", "off")
