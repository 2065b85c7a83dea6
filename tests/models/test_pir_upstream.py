"""PIR: a random state dict with exactly the upstream keys/shapes (upstream_keys/pir.txt) loads through
``model.init_from``; every key is used and every tensor lands where the (independently written) mapping says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from core.config import load_config
from models.base import ModelContext
from models.registry import build_model, init_from
from tests.upstream_keys import assert_placed, read_upstream_keys

ROOT = Path(__file__).resolve().parents[2]
BERT_VOCAB = 30522
DERIVED = ("relative_position_index", "attn_mask")  # Swin buffers timm recomputes from the architecture
PIR_CONV = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def random_state(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, s in keys.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("relative_position_index"):
            state[k] = torch.randint(0, 10, s, generator=g)
        else:
            state[k] = torch.randn(s, generator=g) if s else torch.rand((), generator=g)
    return state


def own_name(key: str) -> str | None:
    """The rsitr tensor an upstream PIR/FISVL key must land in (None: a derived buffer, consumed not copied)."""
    if key.endswith(DERIVED):
        return None
    m = re.match(r"vision_encoder\.layers\.(\d+)\.downsample\.(.*)", key)
    if m:
        return f"vision_encoder.layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
    m = re.match(r"conv_encoder\.(\d)\.(.*)", key)
    if m:
        return f"conv_encoder.{PIR_CONV[m.group(1)]}.{m.group(2)}"
    for a, b in (("conv_encoder.loc_fea1.conv_filter.", "sfgs.conv_filter."), ("conv_encoder.loc_fea1.sfgs.", "sfgs.")):
        if key.startswith(a):
            return b + key[len(a):]
    return key


def load_full_size(method: str, config: str, tmp_path_factory):
    state = random_state(read_upstream_keys(method))
    path = tmp_path_factory.mktemp(method) / "checkpoint_best.pth"
    torch.save({"model": state, "config": {}}, path)
    cfg = load_config(ROOT / config, ["model.pretrained=false"])
    model = build_model(cfg.model, ModelContext(vocab_size=BERT_VOCAB, scene_names=["a", "b"]))
    report = init_from(model, f"upstream:{path}")
    return state, model, report


def check_parameter_count(model, state) -> None:
    """rsitr's parameter count equals the upstream one (key-file tensors minus BatchNorm / Swin buffers)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked") + DERIVED
    expected = sum(v.numel() for k, v in state.items() if not k.endswith(buffers))
    assert sum(p.numel() for p in model.parameters()) == expected


def check_all_placed(state, model, report) -> None:
    assert report["unplaced"] == [] and report["shape_mismatch"] == []
    assert report["missing"] == []  # every rsitr tensor received a value
    own = model.state_dict()
    assert assert_placed(state, own, own_name) == len(own)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_full_size("pir", "configs/rsitmd_pir.yaml", tmp_path_factory)


def test_every_upstream_key_is_used_and_lands_in_place(loaded) -> None:
    check_all_placed(*loaded)


def test_spot_checks_and_size(loaded) -> None:
    state, model, _ = loaded
    assert torch.equal(model.conv_encoder.layer4[2].bn3.running_var, state["conv_encoder.7.2.bn3.running_var"])
    assert torch.equal(model.vision_encoder.layers[1].downsample.reduction.weight,
                       state["vision_encoder.layers.0.downsample.reduction.weight"])
    assert model.temp.item() == state["temp"].item() and model.temp2.item() == state["temp2"].item()
    check_parameter_count(model, state)  # 184.6M parameters (+0.3M buffers: METHODS.md E's 184.9M)
