"""SWAN: tiny forward/backward, the GA floor-division quirk, pad masking, frozen-backbone BN mode, GloVe loading and
the missing-file error."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from core.config import load_config
from losses import build_criterion
from models.base import ModelContext
from models.encoders.glove import init_embedding_from_glove, read_glove
from models.registry import build_model
from models.swan import GatedAttention

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["airport", "plane", "green", "trees", "river", "road", "many", "buildings", "e-mail", "<unk>"]


def _ctx() -> ModelContext:
    return ModelContext(vocab_words=WORDS, vocab_size=len(WORDS) + 1, scene_names=["a", "b"])


def _batch(b: int = 4, side: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 3, 1, 4][:b])
    tokens = torch.zeros(b, 6, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, :n] = torch.randint(1, len(WORDS) + 1, (n,), generator=g)
    return {"images": torch.randn(b, 3, side, side, generator=g), "tokens": tokens, "lengths": lengths,
            "img_ids": torch.arange(b), "filenames": [f"a_{i}.png" for i in range(b)]}


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(ROOT / "configs/tests/tiny_swan.yaml")
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, _ctx())


def test_tiny_forward_backward(tiny) -> None:
    cfg, model = tiny
    model.train()
    batch = _batch()
    out = model(batch)
    assert out["img_emb"].shape == (4, 64) and out["txt_emb"].shape == (4, 64)
    torch.testing.assert_close(out["txt_emb"].norm(dim=-1), torch.ones(4))
    loss = build_criterion(cfg.loss)(out, batch, epoch=0)["loss"]
    loss.backward()
    named = dict(model.named_parameters())
    for name in ("backbone.conv1.weight", "sfgs.wsa.fmp_weight", "vmsf.conv_d1.weight", "tcge.ga.fc_g.weight",
                 "text.embed.weight", "agg.fc_1.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name


def test_text_embedding_ignores_padding_and_batch_mates(tiny) -> None:
    _, model = tiny
    model.eval()
    b = _batch()
    with torch.no_grad():
        full = model.encode_text(b)
        wide = {"tokens": torch.cat([b["tokens"], torch.zeros(4, 7, dtype=torch.long)], 1), "lengths": b["lengths"]}
        alone = model.encode_text({"tokens": b["tokens"][2:3], "lengths": b["lengths"][2:3]})
    torch.testing.assert_close(model.encode_text(wide), full)
    torch.testing.assert_close(alone, full[2:3], rtol=1e-5, atol=1e-5)  # GA masks the other captions' padding


def test_ga_floor_division_quirk_hand_case() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4)
    ga = GatedAttention(4, heads=1, floor_div=True)
    plain = GatedAttention(4, heads=1, floor_div=False)
    plain.load_state_dict(ga.state_dict())
    q, k, v = (lin(x) for lin in ga.linears)
    gate = torch.sigmoid(ga.fc_g(ga.fc_q(q) * ga.fc_k(k)))
    s = (q * gate[..., :4]) @ (k * gate[..., 4:]).transpose(1, 2)
    torch.testing.assert_close(ga(x, None), torch.softmax(torch.floor(s / 2.0), -1) @ v)  # sqrt(d_k) = 2
    torch.testing.assert_close(plain(x, None), torch.softmax(s / 2.0, -1) @ v)


def test_compat_switches_the_quirks_on() -> None:
    cfg = load_config(ROOT / "configs/tests/tiny_swan.yaml", ["model.upstream_compat=true"])
    m = build_model(cfg.model, _ctx())
    assert m.tcge.ga.floor_div and not m.tcge.mask_pad and m.sfgs.wsa.mhatt.upstream_order
    m2 = build_model(load_config(ROOT / "configs/tests/tiny_swan.yaml").model, _ctx())
    assert not m2.tcge.ga.floor_div and m2.tcge.mask_pad and not m2.sfgs.wsa.mhatt.upstream_order


def test_frozen_backbone_bn_modes() -> None:
    base = load_config(ROOT / "configs/tests/tiny_swan.yaml",
                       ["model.params.finetune_backbone=false", "model.params.backbone_bn=eval"])
    m = build_model(base.model, _ctx()).train()
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert not m.backbone.bn1.training and m.sfgs.conv_filter[1].training
    before = m.backbone.bn1.running_mean.clone()
    m(_batch())
    assert torch.equal(m.backbone.bn1.running_mean, before)  # statistics do not drift
    drift = build_model(dataclasses.replace(base.model, params={**base.model.params, "backbone_bn": "train"}), _ctx())
    drift.train()(_batch())
    assert drift.backbone.bn1.training and not torch.equal(drift.backbone.bn1.running_mean, before)


def test_glove_reader_and_fallback(tmp_path: Path) -> None:
    lines = ["plane 1 2 3", "airport 0.5 0.25 -1", ". . . 9 9 9", "email 7 8 9", "trees 4 5"]  # last: wrong dim
    path = tmp_path / "glove.txt"
    path.write_text("\n".join(lines) + "\n")
    assert set(read_glove(path, {"plane", "airport", ".", "trees"}, dim=3)) == {"plane", "airport"}
    weight = torch.zeros(len(WORDS) + 1, 3)
    hits, total = init_embedding_from_glove(weight, WORDS, path)
    assert (hits, total) == (3, len(WORDS))
    torch.testing.assert_close(weight[1], torch.tensor([0.5, 0.25, -1.0]))  # id 1 = airport
    torch.testing.assert_close(weight[2], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(weight[9], torch.tensor([7.0, 8.0, 9.0]))  # "e-mail" found as "email"
    assert weight[4].abs().sum() == 0  # trees: wrong dimension, left alone


def test_missing_pretrained_files_named_in_one_error(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs/tests/tiny_swan.yaml",
                      ["model.pretrained=true", f"model.params.backbone_weights={tmp_path}/r.pth",
                       f"model.params.glove_path={tmp_path}/g.txt"])
    with pytest.raises(FileNotFoundError) as e:
        build_model(cfg.model, _ctx())
    assert "r.pth" in str(e.value) and "g.txt" in str(e.value)


def test_pretrained_glove_init_through_the_model(tmp_path: Path) -> None:
    glove = tmp_path / "g.txt"
    glove.write_text("river " + " ".join(["0.5"] * 32) + "\n")
    weights = tmp_path / "r18.pth"
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    cfg = load_config(ROOT / "configs/tests/tiny_swan.yaml",
                      ["model.pretrained=true", f"model.params.backbone_weights={weights}",
                       f"model.params.glove_path={glove}"])
    m = build_model(cfg.model, _ctx())
    torch.testing.assert_close(m.text.embed.weight[5], torch.full((32,), 0.5))  # id 5 = river
    assert not math.isclose(float(m.text.embed.weight[4].detach().abs().sum()), 0.0)
