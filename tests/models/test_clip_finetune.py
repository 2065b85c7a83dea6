"""clip_finetune / clip_zeroshot and the CLIP builder: local weight files in every supported layout round-trip
through the config path, missing files fail clearly, trainable sets, logit-scale clamp, fp16 precision."""
import math
from pathlib import Path

import pytest
import torch

from core.config import ModelCfg, load_config
from models.base import ModelContext
from models.clip_finetune import ClipFinetune, ClipZeroShot
from models.encoders.clip import arch_embed_dim, build_clip, read_clip_state
from models.registry import build_model

TINY_ZS = "configs/tests/tiny_clip_zeroshot.yaml"


@pytest.fixture(scope="module")
def source():
    """A random tiny open_clip model (the 'published' weights) and a batch."""
    torch.manual_seed(0)
    model = build_clip("rsitr-tiny", pretrained=False).eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.zeros(3, 77, dtype=torch.long)
    tokens[:, 0], tokens[:, 1:6], tokens[:, 6] = 49406, torch.randint(300, 40000, (3, 5), generator=g), 49407
    return model, {"images": torch.randn(3, 3, 64, 64, generator=g), "tokens": tokens}


def _from_config(path, *sets):
    # trim_text off: bit-exact comparison with open_clip's encode_text (test_trim_text covers the trimmed path)
    cfg = load_config(TINY_ZS, ["model.pretrained=true", f"model.params.weights={path}", "model.params.trim_text=false",
                                *sets])
    return build_model(cfg.model, ModelContext(), cfg.source).eval()


def _same_outputs(model, source_model, batch, tol=0.0):
    # torch's attention picks its kernel by whether parameters require grad: match the two models for bit equality
    source_model.requires_grad_(any(p.requires_grad for p in model.parameters()))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(batch), source_model.encode_image(batch["images"]),
                                   rtol=tol, atol=tol)
        torch.testing.assert_close(model.encode_text(batch), source_model.encode_text(batch["tokens"]),
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("layout", ["state_dict", "training_checkpoint", "safetensors"])
def test_open_clip_state_dict_round_trips_through_the_config(source, tmp_path, layout):
    model, batch = source
    state = model.state_dict()
    if layout == "state_dict":  # RemoteCLIP's files
        path = tmp_path / "w.pt"
        torch.save(state, path)
    elif layout == "training_checkpoint":  # open_clip training checkpoints (GeoRSCLIP): DDP prefix under state_dict
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "name": "x", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = _from_config(path)
    assert isinstance(loaded, ClipZeroShot) and loaded.zero_shot
    _same_outputs(loaded, model, batch)


def test_openai_torchscript_file_loads(source, tmp_path):
    model, batch = source
    traced = torch.jit.trace(model, (batch["images"], batch["tokens"]), check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    state = read_clip_state(path)
    assert set(state) - {"attn_mask"} == set(model.state_dict())
    _same_outputs(_from_config(path), model, batch)


def test_missing_or_wrong_weights_fail_clearly(source, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing pretrained file: .*nope\.pt.*OpenAI.*RemoteCLIP"):
        _from_config(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"model.params.weights not set"):
        build_model(ModelCfg(name="clip_zeroshot", embed_dim=32, pretrained=True, params={"arch": "rsitr-tiny"}),
                    ModelContext())
    bad = dict(source[0].state_dict())
    bad.pop("ln_final.weight")
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="1 missing"):
        _from_config(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown CLIP architecture 'ViT-X'"):
        build_model(ModelCfg(name="clip_finetune", pretrained=False, params={"arch": "ViT-X"}), ModelContext())


def test_trainable_sets_and_logit_scale_clamp():
    cfg = ModelCfg(name="clip_finetune", embed_dim=32, pretrained=False, params={"arch": "rsitr-tiny"})
    ft = build_model(cfg, ModelContext())
    assert isinstance(ft, ClipFinetune) and not ft.zero_shot
    assert all(p.requires_grad for p in ft.parameters())
    assert ft.clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07))  # CLIP's initial temperature
    with torch.no_grad():
        ft.clip.logit_scale.fill_(10.0)
    ft.on_train_step_start()
    assert ft.clip.logit_scale.item() == pytest.approx(math.log(100.0))
    zs = build_model(ModelCfg(name="clip_zeroshot", embed_dim=32, pretrained=False, params={"arch": "rsitr-tiny"}),
                     ModelContext())
    assert not any(p.requires_grad for p in zs.parameters())
    out = ft({"images": torch.randn(2, 3, 64, 64), "tokens": torch.randint(1, 49407, (2, 77))})
    assert set(out) == {"img_emb", "txt_emb", "logit_scale"} and out["img_emb"].shape == (2, 32)


def test_fp16_precision_casts_like_openai(source, tmp_path):
    model, batch = source
    torch.save(model.state_dict(), tmp_path / "w.pt")
    half = _from_config(tmp_path / "w.pt", "model.params.precision=fp16")
    blk = half.clip.visual.transformer.resblocks[0]
    assert blk.mlp.c_fc.weight.dtype == torch.float16 and blk.ln_1.weight.dtype == torch.float32
    with torch.no_grad():
        img = half.encode_image(batch)
        txt = half.encode_text(batch)
        assert img.dtype == txt.dtype == torch.float32
        torch.testing.assert_close(img, model.encode_image(batch["images"]), rtol=0.02, atol=0.02)
        torch.testing.assert_close(txt, model.encode_text(batch["tokens"]), rtol=0.02, atol=0.02)


def test_upstream_layout_into_clip_finetune(source, tmp_path):
    model, batch = source
    state = {f"PE_RSITR.model.{k}": v for k, v in model.state_dict().items()}
    state["PE_RSITR.Uniadapt.share_up_proj.weight"] = torch.zeros(64, 64)
    torch.save({"model": state}, tmp_path / "up.pth")
    cfg = ModelCfg(name="clip_finetune", embed_dim=32, pretrained=False, init_from=f"upstream:{tmp_path / 'up.pth'}",
                   params={"arch": "rsitr-tiny", "trim_text": False})
    ft = build_model(cfg, ModelContext()).eval()
    _same_outputs(ft, model, batch)
    from models.registry import load_upstream

    report = load_upstream(ft, state)
    assert report["unplaced"] == ["PE_RSITR.Uniadapt.share_up_proj.weight"] and report["missing"] == []


def test_trim_text_matches_the_full_context(source, tmp_path):
    model, _ = source
    torch.save(model.state_dict(), tmp_path / "w.pt")
    trimmed = _from_config(tmp_path / "w.pt", "model.params.trim_text=true")
    g = torch.Generator().manual_seed(2)
    tokens = torch.zeros(4, 77, dtype=torch.long)
    for i, n in enumerate((2, 9, 30, 75)):  # ragged captions, one using almost the whole context
        tokens[i, 0], tokens[i, 1:n], tokens[i, n] = 49406, torch.randint(300, 40000, (n - 1,), generator=g), 49407
    model.requires_grad_(False)
    with torch.no_grad():
        torch.testing.assert_close(trimmed.encode_text({"tokens": tokens}), model.encode_text(tokens),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(trimmed.encode_text({"tokens": tokens[:2]}), model.encode_text(tokens[:2]),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("configs").glob("*_clip_*.yaml"))
                         + sorted(str(p) for p in Path("configs/tests").glob("tiny_clip_*.yaml")))
def test_configs_validate(path):
    from core.config import parse_params
    from losses import build_criterion
    from models.registry import MODELS, list_models

    cfg = load_config(path)
    list_models()
    params = parse_params(MODELS.get(cfg.model.name).Params, cfg.model.params, "model.params", path)
    build_criterion(cfg.loss, path)
    assert cfg.data.tokenizer == "clip" and cfg.model.embed_dim == arch_embed_dim(params.arch)
    if "tiny" not in path:
        assert (cfg.data.dataset, cfg.data.transform, cfg.data.image_size) == (Path(path).stem.split("_")[0], "clip", 224)
        assert cfg.model.pretrained and params.weights == "pretrained/ViT-B-32.pt" and params.arch == "ViT-B-32"
        assert params.quick_gelu  # OpenAI weights
