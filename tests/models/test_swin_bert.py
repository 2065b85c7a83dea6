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


# ------------------------------------------------------------------------------------- coverage of pretrained files
def test_coverage_threshold_is_ninety_percent(caplog):
    from core.errors import DataError
    from models.encoders.pretrained import MIN_SHARE, check_coverage

    assert MIN_SHARE == 0.9
    with pytest.raises(DataError, match=r"w.pth \(model.params.x\) fills only 89 of 100 weight tensors of T"):
        check_coverage("w.pth", 89, 100, "T", "model.params.x")
    with pytest.raises(DataError, match="fills only 0 of 3"):
        check_coverage("w.pth", 0, 3, "T", min_share=0.0)  # "at least one"
    check_coverage("w.pth", 1, 3, "T", min_share=0.0)
    check_coverage("w.pth", 90, 100, "T", missing=["a.weight"])
    assert "10 of 100 weight tensors of T stay at init (a.weight, ...)" in caplog.text


def test_load_matching_counts_float_tensors_by_name_and_shape():
    from core.errors import DataError
    from models.encoders.pretrained import load_matching, weight_keys

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    own = net.state_dict()
    assert "1.num_batches_tracked" in own and "1.num_batches_tracked" not in weight_keys(own)  # 6 weight tensors
    good = {k: torch.ones_like(v) for k, v in own.items() if k != "1.num_batches_tracked"}
    assert load_matching(net, {**good, "extra": torch.zeros(1)}, "f.pth", "net") == ["extra"]
    assert torch.equal(net[0].weight, torch.ones(4, 4))
    wrong_shape = dict(good, **{"0.weight": torch.zeros(3, 4)})  # 5 of 6 = 83% < 90%
    with pytest.raises(DataError, match="fills only 5 of 6"):
        load_matching(net, wrong_shape, "f.pth", "net")


def test_empty_or_foreign_swin_file_is_an_error(assets, tmp_path):
    from core.errors import DataError

    d, swin, _, _ = assets
    n = len([k for k, v in swin.state_dict().items() if v.is_floating_point()])
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(DataError, match=rf"empty.pth \(model.params.swin_weights\) fills only 0 of {n} weight tensors"):
        build_swin(True, str(tmp_path / "empty.pth"), **SWIN)
    other = build_swin(False, **dict(SWIN, embed_dim=24, heads=(2, 4)))  # same names, other shapes
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(DataError, match="fills only"):
        build_swin(True, str(tmp_path / "other.pth"), **SWIN)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=r"cannot read .*junk.pth \(model.params.swin_weights\)"):
        build_swin(True, str(tmp_path / "junk.pth"), **SWIN)
    loaded = build_swin(True, str(d / "swin_ms.pth"), **SWIN)  # the Microsoft layout with its head still loads
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in swin.state_dict().items())


def test_empty_bert_weights_are_an_error(assets, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from core.errors import DataError

    d = tmp_path / "bert"
    shutil.copytree(assets[0] / "bert", d)
    save_file({}, str(d / "model.safetensors"))
    with pytest.raises(DataError, match=r"bert \(model.params.bert_path\) fills only 0 of \d+ weight tensors"):
        build_bert(True, str(d))


def test_empty_resnet_clip_skipthought_glove_files_are_errors(tmp_path):
    import numpy as np

    from core.errors import DataError
    from models.encoders.clip import build_clip
    from models.encoders.glove import init_embedding_from_glove
    from models.encoders.skipthoughts import UniSkip

    torch.save({}, tmp_path / "empty.pth")
    # ResNet-18 trunk: 20 convolutions + 20 BatchNorms x (weight, bias, running mean, running var); fc not required
    with pytest.raises(DataError, match=r"empty.pth \(model.params.resnet_weights\) fills only 0 of 100 "):
        build_resnet("resnet18", True, str(tmp_path / "empty.pth"), "ResNet-18 (model.params.resnet_weights)")
    resnet = build_resnet("resnet18", False)
    torch.save({k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}, tmp_path / "nofc.pth")
    build_resnet("resnet18", True, str(tmp_path / "nofc.pth"))  # no classifier in the file: fine
    with pytest.raises(DataError, match=r"empty.pth \(model.params.weights\) fills only 0 of \d+ weight tensors of "
                                        "the CLIP model"):
        build_clip("rsitr-tiny", True, str(tmp_path / "empty.pth"))
    st = tmp_path / "st"
    st.mkdir()
    (st / "dictionary.txt").write_text("UNK\na\n")
    np.save(st / "utable.npy", np.zeros((2, 4), np.float32))
    np.savez(st / "uni_skip.npz", other=np.zeros(1))
    with pytest.raises(DataError, match=r"uni_skip.npz \(model.params.skipthought_dir\) fills only 0 of 6"):
        UniSkip(["a"], dim_word=4, dim_hidden=3, skipthought_dir=str(st), pretrained=True)
    (tmp_path / "g.txt").write_text("zebra 1 2 3\n")
    with pytest.raises(DataError, match=r"g.txt \(model.params.glove_path\) fills only 0 of 2"):
        init_embedding_from_glove(torch.zeros(3, 3), ["river", "plane"], tmp_path / "g.txt")
