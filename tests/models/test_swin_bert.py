"""Local-path loading of the PIR/FISVL towers round-trips: a tiny timm Swin (timm and Microsoft layouts), a tiny
BERT saved with ``save_pretrained`` and a ResNet-18 state dict load through the config path with equal outputs."""
import pytest
import torch

from core.config import load_config
from models.base import ModelContext
from models.encoders.bert import bert_tokens, build_bert
from models.encoders.cnn import build_resnet, resnet_features
from models.encoders.swin import build_swin, convert_swin_upstream, swin_state_to_upstream, swin_tokens
from models.registry import build_model

CTX = ModelContext(vocab_words=[f"w{i}" for i in range(1, 49)] + ["<unk>"], vocab_size=50, scene_names=["a", "b"])
SWIN = dict(img_size=32, embed_dim=16, depths=(1, 1), heads=(1, 2), window=4, drop_path=0.0)
BERT = dict(vocab_size=50, hidden=32, layers=1, heads=2, intermediate=64, max_positions=64)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Random tiny Swin / BERT / ResNet-18 saved as local pretrained files."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("assets")
    swin = build_swin(False, **SWIN).eval()
    torch.save(swin.state_dict(), d / "swin_timm.pth")
    ms = swin_state_to_upstream(swin.state_dict())
    ms["head.weight"], ms["head.bias"] = torch.randn(5, 32), torch.randn(5)  # a classifier as in the 22k file
    torch.save({"model": ms}, d / "swin_ms.pth")
    bert = build_bert(False, **BERT).eval()
    bert.save_pretrained(d / "bert")
    (d / "bert" / "vocab.txt").write_text("\n".join(["[PAD]"] + CTX.vocab_words) + "\n")
    resnet = build_resnet("resnet18", False).eval()
    torch.save({"model": resnet.state_dict()}, d / "resnet18.pth")
    return d, swin, bert, resnet


def _pretrained_model(name, d, swin_file):
    sets = ["model.pretrained=true", f"model.params.swin_weights={d / swin_file}",
            f"model.params.bert_path={d / 'bert'}", f"model.params.resnet_weights={d / 'resnet18.pth'}"]
    cfg = load_config(f"configs/tests/tiny_{name}.yaml", sets)
    return build_model(cfg.model, CTX).eval()


@pytest.mark.parametrize("name,swin_file", [("pir", "swin_timm.pth"), ("fisvl", "swin_ms.pth")])
def test_local_assets_round_trip(assets, name, swin_file):
    d, swin, bert, resnet = assets
    model = _pretrained_model(name, d, swin_file)
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.randint(1, 50, (2, 6))
    with torch.no_grad():
        assert torch.allclose(swin_tokens(model.vision_encoder, images), swin_tokens(swin, images), atol=1e-6)
        assert torch.allclose(bert_tokens(model.text_encoder, tokens, None), bert_tokens(bert, tokens, None),
                              atol=1e-6)
        ref = resnet_features(resnet, images)["f4"]
        assert torch.allclose(resnet_features(model.conv_encoder, images)["f4"], ref, atol=1e-6)


def test_microsoft_layout_mapping_inverts():
    swin = build_swin(False, **SWIN)
    state = {f"vision_encoder.{k}": v for k, v in swin_state_to_upstream(swin.state_dict()).items()}
    state["vision_encoder.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out, used = convert_swin_upstream(state)
    assert used == set(state)
    assert set(out) == {f"vision_encoder.{k}" for k in swin.state_dict()}
    # Microsoft's stage-0 patch merging is timm's stage-1 downsample
    assert "vision_encoder.layers.1.downsample.reduction.weight" in out
    assert "vision_encoder.layers.0.downsample.reduction.weight" in state


def test_missing_files_give_one_clear_error(tmp_path):
    base = ["model.pretrained=true", f"model.params.swin_weights={tmp_path / 'nope.pth'}"]
    with pytest.raises(FileNotFoundError, match="nope.pth.*Swin"):
        build_model(load_config("configs/tests/tiny_pir.yaml", base).model, CTX)
    with pytest.raises(FileNotFoundError) as err:
        build_bert(True, str(tmp_path / "no_bert"))
    for what in ("config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt", "no_bert"):
        assert what in str(err.value)


def test_tokenizer_larger_than_bert_vocab_is_rejected():
    cfg = load_config("configs/tests/tiny_pir.yaml", ["model.params.bert_vocab_size=10"])
    with pytest.raises(ValueError, match="50 ids"):
        build_model(cfg.model, CTX)
