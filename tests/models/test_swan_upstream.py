"""SWAN: a random state dict with exactly the upstream keys/shapes (upstream_keys/swan.txt) loads through
``model.init_from`` and every tensor lands where the mapping says."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import load_config
from models.base import ModelContext
from models.registry import build_model, init_from
from tests.upstream_keys import read_upstream_keys

ROOT = Path(__file__).resolve().parents[2]
RSITMD_WORDS = 1349  # RSITMD vocabulary incl. <unk> (METHODS.md A2); upstream pads the table to 8590 rows


def _own_name(key: str) -> str:
    """The rsitr parameter each upstream key must land in (written out independently of convert_upstream)."""
    for a, b in (("image_encoder.resnet.", "backbone."), ("image_encoder.conv_filter.", "sfgs.conv_filter."),
                 ("image_encoder.vmsf.conv_512.", "vmsf.conv_d1."), ("image_encoder.vmsf.conv_1024.", "vmsf.conv_d2."),
                 ("image_encoder.vmsf.conv_2048.", "vmsf.conv_d3."), ("image_encoder.vmsf.", "vmsf."),
                 ("text_encoder.", "text."), ("sfgs.", "sfgs."), ("agg.", "agg."), ("tcge.", "tcge.")):
        if key.startswith(a):
            return b + key[len(a):]
    raise AssertionError(key)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    keys = read_upstream_keys("swan")
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=g) if s else torch.tensor(7)) for k, s in keys.items()}
    path = tmp_path_factory.mktemp("swan") / "SWAN_best.pth.tar"
    torch.save({"model": state, "epoch": 3}, path)
    cfg = load_config(ROOT / "configs/rsitmd_swan.yaml", ["model.pretrained=false"])
    words = [f"w{i}" for i in range(RSITMD_WORDS - 1)] + ["<unk>"]
    model = build_model(cfg.model, ModelContext(vocab_words=words, vocab_size=RSITMD_WORDS + 1))
    report = init_from(model, f"upstream:{path}")
    return state, model, report


def test_every_upstream_key_is_used_without_mismatch(loaded) -> None:
    state, _, report = loaded
    assert report["unplaced"] == [] and report["shape_mismatch"] == []
    assert report["missing"] == []  # every rsitr tensor received a value


def test_loaded_tensors_equal_the_source(loaded) -> None:
    state, model, _ = loaded
    own = model.state_dict()
    dropped = ("image_encoder.resnet.fc.", "text_encoder.projection.")
    checked = 0
    for key, value in state.items():
        if key.startswith(dropped):
            continue
        name = _own_name(key)
        if name == "text.embed.weight":
            value = value[:RSITMD_WORDS + 1]
        assert torch.equal(own[name], value), key
        checked += 1
    assert checked == len(own)
