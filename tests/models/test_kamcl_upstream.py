"""KAMCL: a random state dict with exactly the upstream keys/shapes (upstream_keys/kamcl.txt) loads through
``model.init_from``; every tensor lands where the mapping says."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import load_config
from models.base import ModelContext
from models.registry import build_model, init_from
from tests.upstream_keys import assert_placed, read_upstream_keys

ROOT = Path(__file__).resolve().parents[2]
RSITMD_WORDS = 1349  # incl. <unk>; the upstream word table has 1350 rows
DROPPED = ("extract_feature.resnet.fc.", "extract_feature.linear.", "high_module.gpo.")


def _own_name(key: str) -> str | None:
    """Where an upstream key must land (written out independently of convert_upstream); None = dropped."""
    if key.startswith(("mlp.", "im.", "tx.")):
        return None
    if key.startswith("queue"):
        return key
    side, _, rest = key.partition(".")
    own = {"visualmodelQ": "visual_q.", "visualmodelK": "visual_k.", "textmodelQ": "text_q.",
           "textmodelK": "text_k."}[side]
    if rest.startswith(DROPPED):
        return None
    table = [("extract_feature.resnet.", "backbone."), ("extract_feature.gpo.", "gpo_global."),
             ("low_module.gpo.", "low_gpo."), ("low_module.fc.", "low_fc."), ("high_module.fc.", "high_fc."),
             ("im.0.", "concept."), ("tx.0.", "concept."), ("linear.", "tag_linear."),
             ("text_feature.to_out.", "to_out."), ("text_feature.mlp.", "mlp."), ("text_feature.gpo.", "gpo_seq."),
             ("text_feature.seq2vec.embedding.", "uniskip.embedding."),
             ("text_feature.seq2vec.rnn.gru_cell.", "uniskip.cell."), ("mlp.", "mlp."), ("gpo.", "gpo.")]
    for a, b in table:
        if rest.startswith(a):
            return own + b + rest[len(a):]
    raise AssertionError(key)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    keys = read_upstream_keys("kamcl")
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=g) if s else torch.tensor(7)) for k, s in keys.items()}
    state["queue_ptr_im"] = torch.tensor([1200])
    state["queue_ptr_tx"] = torch.tensor([400])
    path = tmp_path_factory.mktemp("kamcl") / "KAMCL_best.pth.tar"
    torch.save({"model": state, "epoch": 3}, path)
    cfg = load_config(ROOT / "configs/rsitmd_kamcl.yaml", ["model.pretrained=false"])
    words = [f"w{i}" for i in range(RSITMD_WORDS - 1)] + ["<unk>"]
    model = build_model(cfg.model, ModelContext(vocab_words=words, vocab_size=RSITMD_WORDS + 1))
    return state, model, init_from(model, f"upstream:{path}")


def test_every_upstream_key_is_used_without_mismatch(loaded) -> None:
    _, _, report = loaded
    assert report["unplaced"] == [] and report["shape_mismatch"] == []
    assert report["missing"] == ["token_to_tag"]  # rsitr's own buffer, built from the tag vocabulary


def test_loaded_tensors_equal_the_source(loaded) -> None:
    state, model, _ = loaded
    own = model.state_dict()
    assert assert_placed(state, own, _own_name) == len(own) - 1
    assert int(model.queue_ptr_im) == 1200 and int(model.queue_ptr_tx) == 400
