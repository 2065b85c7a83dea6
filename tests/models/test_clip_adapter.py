"""clip_adapter: ViT-B-32 parameter counts, no-op at zero up-projections, adapter placement and sharing,
gradients only in the adapter, augmented views, architecture-following sizes, upstream (PE-RSITR) key loading."""
import re

import pytest
import torch
import torch.nn.functional as F

from core.config import ConfigError, LossCfg, LossTermCfg, ModelCfg
from losses import build_criterion
from models.base import ModelContext
from models.clip_adapter import AdaptedBlock, MRSAdapter
from models.encoders import clip as clip_enc
from models.encoders.clip import build_clip
from models.registry import build_model, init_from

TINY = {"arch": "rsitr-tiny", "bottleneck": 32, "shared_dim": 16}


def _tiny(**params) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelCfg(name="clip_adapter", embed_dim=32, pretrained=False, params={**TINY, **params}),
                       ModelContext())


def _batch(n: int = 4, size: int = 64) -> dict:
    g = torch.Generator().manual_seed(1)
    tokens = torch.zeros(n, 77, dtype=torch.long)
    for i in range(n):  # <start> words <end> then zero padding, as the CLIP tokenizer gives
        k = 3 + i
        tokens[i, 0], tokens[i, 1:k] = 49406, torch.randint(300, 40000, (k - 1,), generator=g)
        tokens[i, k] = 49407
    return {"images": torch.randn(n, 3, size, size, generator=g), "tokens": tokens, "img_ids": torch.arange(n)}


def _randomise_adapter(model) -> None:
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.normal_(0, 0.05)


# ----------------------------------------------------------------------------------------- full ViT-B-32
@pytest.fixture(scope="module")
def vitb32():
    torch.manual_seed(0)
    return build_model(ModelCfg(name="clip_adapter", pretrained=False), ModelContext())


def test_vitb32_trainable_count_is_161088(vitb32):
    params = list(vitb32.parameters())
    assert len(params) == len({id(p) for p in params})  # the shared adapter is registered once
    trainable = {n: p.numel() for n, p in vitb32.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == 161_088
    assert all(n.startswith("adapter.") for n in trainable) and len(trainable) == 10
    assert sum(p.numel() for p in params) == 151_277_313 + 161_088  # CLIP ViT-B/32 + adapter (METHODS.md E: 151.4M)
    a = vitb32.adapter
    assert a.text_down.weight.shape == (64, 512) and a.visual_down.weight.shape == (64, 768)
    assert a.text_up.weight.shape == (448, 64) and a.visual_up.weight.shape == (704, 64)
    assert a.shared_up.weight.shape == (64, 64)
    blocks = list(vitb32.clip.transformer.resblocks) + list(vitb32.clip.visual.transformer.resblocks)
    assert len(blocks) == 24 and all(type(b) is AdaptedBlock and b._rsitr_adapter is a for b in blocks)
    assert {b._rsitr_mode for b in blocks[:12]} == {"text"} and {b._rsitr_mode for b in blocks[12:]} == {"visual"}


def test_upstream_checkpoint_loads_every_key(vitb32, upstream_keys, tmp_path):
    lines = (upstream_keys / "pe_rsitr.txt").read_text().splitlines()
    shapes = {}
    for line in lines:
        m = re.match(r"(\S+) \[(.*)\]$", line.strip())
        if m:
            shapes[m.group(1)] = [int(x) for x in m.group(2).split(",") if x.strip()]
    assert len(shapes) == 312
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    path = tmp_path / "pe_rsitr.pth"
    torch.save({"model": state}, path)
    report = init_from(vitb32, f"upstream:{path}")
    assert report["unplaced"] == [] and report["shape_mismatch"] == [] and report["missing"] == []
    own = vitb32.state_dict()
    names = {"down_proj": "text_down", "visual_down_proj": "visual_down", "up_proj": "text_up",
             "visual_up_proj": "visual_up", "share_up_proj": "shared_up"}
    for key, value in state.items():
        if key.startswith("PE_RSITR.model."):
            mine = "clip." + key.removeprefix("PE_RSITR.model.")
        else:
            mod, leaf = key.removeprefix("PE_RSITR.Uniadapt.").split(".")
            mine = f"adapter.{names[mod]}.{leaf}"
        assert torch.equal(own[mine], value), key


# ------------------------------------------------------------------------------------------ tiny models
def test_zero_up_projection_gives_the_frozen_clip_exactly():
    model = _tiny(trim_text=False)  # bit-exact claim: the same text kernel shapes as open_clip's encode_text
    plain = build_clip("rsitr-tiny", pretrained=False)
    plain.load_state_dict(model.clip.state_dict())
    plain.requires_grad_(False)
    b = _batch()
    # evaluation runs without autograd, training with it (then torch's attention takes the same kernel in both
    # models); train mode: the adapter's dropout is on, but its up-projections are zero
    for mode, grad in (("eval", False), ("train", True)):
        getattr(model, mode)()
        getattr(plain, mode)()
        with torch.set_grad_enabled(grad):
            out = model(b)
            assert torch.equal(out["img_emb"], plain.encode_image(b["images"]))
            assert torch.equal(out["txt_emb"], plain.encode_text(b["tokens"]))
    _randomise_adapter(model)
    model.eval()
    plain.eval()
    trimmed = _tiny()  # trim_text (default): the same result up to float rounding
    trimmed.load_state_dict(model.state_dict())
    trimmed.eval()
    with torch.no_grad():
        torch.testing.assert_close(trimmed.encode_text(b), model.encode_text(b), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model.encode_image(b), plain.encode_image(b["images"]), atol=1e-4)
    assert not torch.allclose(model.encode_text(b), plain.encode_text(b["tokens"]), atol=1e-4)


def test_adapter_runs_parallel_to_the_mlp_on_the_post_attention_stream():
    model = _tiny()
    _randomise_adapter(model)
    model.eval()
    a = model.adapter
    for blk, mode, width in ((model.clip.transformer.resblocks[0], "text", 64),
                             (model.clip.visual.transformer.resblocks[1], "visual", 64)):
        x = torch.randn(2, 5, width)
        x1 = x + blk.attn(blk.ln_1(x), blk.ln_1(x), blk.ln_1(x), need_weights=False)[0]
        down, up = (a.text_down, a.text_up) if mode == "text" else (a.visual_down, a.visual_up)
        h = F.relu(down(x1))
        expected = x1 + blk.mlp(blk.ln_2(x1)) + torch.cat([up(h), a.shared_up(h)], dim=-1)
        torch.testing.assert_close(blk(x), expected, rtol=1e-5, atol=1e-5)
        assert a(x1, mode).shape == (2, 5, width)


def test_adapter_computes_in_float32_and_casts_back():
    a = MRSAdapter(64, 96, bottleneck=8, shared_dim=4)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    a.eval()
    x = torch.randn(3, 96).half()
    y = a(x, "visual")
    assert y.dtype == torch.float16 and y.shape == (3, 96)
    torch.testing.assert_close(y, a(x.float(), "visual").half())
    # init: Kaiming-uniform down weights, zero up weights and biases
    a.reset_parameters()
    assert a.text_down.weight.abs().sum() > 0 and all(
        float(t.detach().abs().sum()) == 0 for t in (a.text_up.weight, a.visual_up.weight, a.shared_up.weight,
                                            a.text_down.bias, a.shared_up.bias))
    bound = 1.0 / 64 ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 64: U(-1/sqrt(64), 1/sqrt(64))
    assert a.text_down.weight.abs().max() <= bound


def test_only_adapter_parameters_receive_gradients():
    model = _tiny()
    _randomise_adapter(model)
    model.train()
    b = _batch()
    crit = build_criterion(LossCfg(terms=(LossTermCfg(name="hmmc"),)))
    crit(model(b), b, 0)["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith("adapter."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_train_modules_unfreezes_named_clip_parameters():
    model = _tiny(train_modules=["logit_scale", "visual.ln_post"])
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names - {n for n in names if n.startswith("adapter.")} == {
        "clip.logit_scale", "clip.visual.ln_post.weight", "clip.visual.ln_post.bias"}
    with pytest.raises(ConfigError, match="no CLIP parameter starts with 'nope'"):
        _tiny(train_modules=["nope"])


def test_augmented_views_drop_token_and_positional_embeddings():
    model = _tiny(aug_dropout=0.5)
    _randomise_adapter(model)
    b = _batch()
    model.train()
    torch.manual_seed(3)
    out = model(b)
    assert set(out) == {"img_emb", "txt_emb", "img_aug", "txt_aug", "logit_scale"}
    assert all(out[k].dtype == torch.float32 for k in ("img_emb", "txt_emb", "img_aug", "txt_aug"))
    assert not torch.allclose(out["img_aug"], out["img_emb"]) and not torch.allclose(out["txt_aug"], out["txt_emb"])
    # reproduce the text view by hand: dropout on token + positional embeddings, then the (adapted) transformer.
    # The same RNG sequence: clean image (adapter dropout), clean text, aug image, then the text view's draws.
    model.adapter.dropout.p = 0.0  # keep the adapter deterministic so only the embedding dropout draws
    torch.manual_seed(5)
    _ = model.encode_image(b), model.encode_text(b)
    model._augmenting = True
    img_aug = model.encode_image(b)
    model._augmenting = False
    state = torch.get_rng_state()
    clip, n = model.clip, int(b["tokens"].argmax(-1).max()) + 1  # trim_text: positions up to the last end-of-text
    x = clip.token_embedding(b["tokens"][:, :n]) + clip.positional_embedding[:n]
    x = F.dropout(x, 0.5, training=True)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:n, :n]))
    manual = x[torch.arange(4), b["tokens"].argmax(-1)] @ clip.text_projection
    torch.set_rng_state(state)
    model._augmenting = True
    txt_aug = model.encode_text(b)
    model._augmenting = False
    torch.testing.assert_close(txt_aug, manual)
    # the image view applies dropout after ln_pre: same tokens through the transformer give img_aug
    model.eval()
    assert not torch.allclose(img_aug, model.encode_image(b))
    # evaluation mode: the views equal the clean embeddings
    out = model(b)
    assert torch.equal(out["img_aug"], out["img_emb"]) and torch.equal(out["txt_aug"], out["txt_emb"])


def test_adapter_sizes_follow_the_tower_widths(monkeypatch):
    arch = {"base": "ViT-B-32", "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 96, "head_width": 32, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 1}}
    monkeypatch.setitem(clip_enc.EXTRA_ARCHS, "asym", arch)
    model = build_model(ModelCfg(name="clip_adapter", embed_dim=16, pretrained=False,
                                 params={"arch": "asym", "bottleneck": 8, "shared_dim": 4}), ModelContext())
    a = model.adapter
    assert a.text_down.weight.shape == (8, 48) and a.visual_down.weight.shape == (8, 96)
    assert a.text_up.weight.shape == (44, 8) and a.visual_up.weight.shape == (92, 8) and a.shared_up.weight.shape == (4, 8)
    out = model(_batch(2, 32))
    assert out["img_emb"].shape == (2, 16) and out["txt_emb"].shape == (2, 16)
    # ViT-L-14 (text 768, visual 1024 wide; upstream cannot build it): the same formula gives 227,136 parameters
    import open_clip

    cfg = open_clip.get_model_config("ViT-L-14")
    big = MRSAdapter(cfg["text_cfg"]["width"], cfg["vision_cfg"]["width"])
    assert sum(p.numel() for p in big.parameters()) == 227_136
    with pytest.raises(ConfigError, match="embed_dim: 16"):
        build_model(ModelCfg(name="clip_adapter", embed_dim=512, pretrained=False, params={"arch": "asym"}),
                    ModelContext())


def _upstream_forward(model, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """PE-RSITR's forward_image / forward_text (upstream's loop over the blocks, LND layout), written out with this
    model's modules: x += attn(ln_1 x); adapt = adapter(x); x = x + (mlp(ln_2 x) + adapt)."""
    clip, a = model.clip, model.adapter

    def blocks(x, resblocks, mode, mask):
        for blk in resblocks:
            h = blk.ln_1(x)
            x = x + blk.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            adapt = a(x, mode)
            x = x + (blk.mlp(blk.ln_2(x)) + adapt)
        return x

    v = clip.visual
    x = v.conv1(b["images"]).flatten(2).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = blocks(v.ln_pre(x), v.transformer.resblocks, "visual", None)
    img = v.ln_post(x[:, 0, :]) @ v.proj
    tok = b["tokens"]
    x = blocks(clip.token_embedding(tok) + clip.positional_embedding, clip.transformer.resblocks, "text", clip.attn_mask)
    txt = clip.ln_final(x)[torch.arange(tok.shape[0]), tok.argmax(dim=-1)] @ clip.text_projection
    return img, txt


def test_embeddings_match_the_upstream_forward():
    model = _tiny()
    _randomise_adapter(model)
    model.eval()
    b = _batch()
    with torch.no_grad():
        img, txt = _upstream_forward(model, b)
        torch.testing.assert_close(model.encode_image(b), img, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(b), txt, rtol=1e-5, atol=1e-5)
        sims = model.similarity(model.encode_image(b), model.encode_text(b))
        ref = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
        torch.testing.assert_close(sims, ref, rtol=1e-5, atol=1e-5)
