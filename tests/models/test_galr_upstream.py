"""GaLR and AMFMN: a random state dict with exactly the upstream keys/shapes (upstream_keys/{galr,amfmn}.txt) loads
through ``model.init_from``; every key is used and every tensor lands where an independently written name map says."""
from __future__ import annotations

import pytest
import torch

from core.config import load_config
from models.base import ModelContext
from models.registry import build_model, init_from
from tests.upstream_keys import assert_placed, read_upstream_keys

RSITMD_WORDS = [f"word{i}" for i in range(1348)] + ["<unk>"]  # 1349 words incl. <unk>: embedding has 1350 rows
PREFIXES = (
    ("extract_feature.resnet.", "image.backbone."), ("extract_feature.linear.", "image.mvsa.solo_proj."),
    ("mvsa.LF_conv.", "image.mvsa.low_conv."), ("mvsa.HF_conv.", "image.mvsa.high_conv."),
    ("mvsa.conv1x1_1.", "image.mvsa.main_conv."), ("mvsa.conv1x1_2.", "image.mvsa.att_conv."),
    ("mvsa.solo_attention.", "image.mvsa.solo_gate."), ("local_feature.", "gcn."),
    ("text_feature.seq2vec.rnn.gru_cell.", "text.encoder.cell."),
    ("text_feature.seq2vec.embedding.", "text.encoder.embedding."), ("text_feature.to_out.", "text.proj."),
    ("cross_attention_s.cross_attention.0.", "gate."), ("fusion.l2l_SA.", "fusion.sa_local."),
    ("fusion.g2g_SA.", "fusion.sa_global."), ("fusion.g2l_SGA.", "fusion.correct_local."),
    ("fusion.l2g_SGA.", "fusion.supplement_global."), ("fusion.dynamic_weight.", "fusion.weight_mlp."),
)
INNER = (("mhatt1.", "self_attn."), ("mhatt2.", "cross_attn."), ("mhatt.", "attn."), ("ffn.mlp.fc.linear.", "ffn.fc1."),
         ("ffn.mlp.linear.", "ffn.fc2."), (".a_2", ".weight"), (".b_2", ".bias"))  # linear_{v,k,q,merge} as upstream


def _own_name(key: str) -> str | None:
    if key.startswith("vgmf_gate."):  # AMFMN's VGMF_Fusion is never called upstream: dropped on purpose
        return None
    for a, b in PREFIXES:
        if key.startswith(a):
            name = b + key[len(a):]
            if name.startswith("fusion."):
                for x, y in INNER:
                    name = name.replace(x, y)
            return name
    raise AssertionError(f"no expected place for {key}")


def _random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = torch.rand(s, generator=g) + 0.5
        else:
            state[k] = torch.randn(s, generator=g) * 0.05
    return state


@pytest.mark.parametrize("method", ["galr", "amfmn"])
def test_upstream_checkpoint_loads_every_key(method, upstream_keys, tmp_path):
    shapes = {k: tuple(v) for k, v in read_upstream_keys(method).items()}
    state = _random_state(shapes)
    path = tmp_path / f"{method}_best.pth.tar"
    torch.save({"epoch": 3, "model": {f"module.{k}" if method == "amfmn" else k: v for k, v in state.items()}}, path)
    over = ["model.pretrained=false"] + (["model.params.local_source=zeros"] if method == "galr" else [])
    cfg = load_config(f"configs/rsitmd_{method}.yaml", over)
    model = build_model(cfg.model, ModelContext(vocab_words=RSITMD_WORDS, vocab_size=len(RSITMD_WORDS) + 1))
    report = init_from(model, f"upstream:{path}")
    assert report["unplaced"] == [] and report["shape_mismatch"] == []
    assert report["missing"] == []  # every rsitr tensor came from the checkpoint
    own = model.state_dict()
    assert assert_placed(state, own, _own_name) == len(own)
