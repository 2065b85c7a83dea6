"""The docs/ADDING_A_METHOD.md example (models/example_meanpool.py): the text tower is the masked mean it claims
(hand-computed), the contracts (registry, Params, required_files, random init reads nothing, pretrained files
really loaded), bad config keys named, and the tiny config trained on the demo data beats chance."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch

from core.config import load_config
from core.errors import ConfigError, DataError
from losses import build_criterion
from models.base import ModelContext
from models.registry import MODELS, build_model, list_models, model_required_files
from tests.models.test_pir_learns import chance_mr, train_and_test

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "configs/tests/tiny_example_meanpool.yaml"
WORDS = ["red", "lake", "left", "two", "white", "roofs", "<unk>"]


def _ctx(words: list[str] | None = WORDS) -> ModelContext:
    return ModelContext(vocab_words=words, vocab_size=len(WORDS) + 1, scene_names=["lake", "residential"])


def _batch(side: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    tokens = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 2, 0], [7, 0, 0, 0, 0], [2, 2, 1, 5, 6]])
    mask = (tokens > 0).long()
    return {"images": torch.randn(4, 3, side, side, generator=g), "tokens": tokens, "lengths": mask.sum(1),
            "attention_mask": mask, "img_ids": torch.tensor([0, 1, 2, 0]), "filenames": [f"x{i}.png" for i in range(4)]}


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(CFG)
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, _ctx())


def test_registered_with_its_params():
    assert "example_meanpool" in list_models()
    cls = MODELS.get("example_meanpool")
    assert {f.name for f in dataclasses.fields(cls.Params)} == {"backbone", "backbone_weights", "word_dim",
                                                               "glove_path", "dropout"}


def test_text_tower_is_the_masked_mean_of_the_word_vectors(tiny):
    _, model = tiny
    model.eval()
    batch = _batch()
    emb = model.text.embed.weight
    by_hand = torch.stack([emb[[1, 2, 3]].mean(0), emb[[4, 5, 6, 2]].mean(0), emb[7], emb[[2, 2, 1, 5, 6]].mean(0)])
    torch.testing.assert_close(model.text(batch["tokens"], batch["attention_mask"]), by_hand)
    # more padding, other batch mates: the same caption embedding
    longer = {"tokens": torch.nn.functional.pad(batch["tokens"][:2], (0, 4)),
              "attention_mask": torch.nn.functional.pad(batch["attention_mask"][:2], (0, 4))}
    torch.testing.assert_close(model.encode_text(longer), model.encode_text(batch)[:2])


def test_forward_backward_with_its_loss(tiny):
    cfg, model = tiny
    model.train()
    batch = _batch()
    out = model(batch)
    assert out["img_emb"].shape == (4, 64) and out["txt_emb"].shape == (4, 64)
    torch.testing.assert_close(out["img_emb"].norm(dim=-1), torch.ones(4))
    criterion = build_criterion(cfg.loss)
    assert criterion.names == ["example_am_softmax"]
    loss = criterion(out, batch, epoch=0)["loss"]
    loss.backward()
    named = dict(model.named_parameters())
    for name in ("backbone.conv1.0.weight", "img_proj.weight", "text.embed.weight", "txt_proj.1.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    assert named["text.embed.weight"].grad[0].abs().sum() == 0  # the padding row never learns


def test_required_files_only_when_pretrained(tmp_path):
    assert model_required_files(load_config(CFG).model) == []
    pre = load_config(CFG, ["model.pretrained=true", "model.params.backbone_weights=w.pth",
                            "model.params.glove_path=g.txt"]).model
    assert [(f.key, f.path) for f in model_required_files(pre)] == [
        ("model.params.backbone_weights", "w.pth"), ("model.params.glove_path", "g.txt")]
    no_glove = load_config(CFG, ["model.pretrained=true", "model.params.backbone_weights=w.pth"]).model
    assert [f.key for f in model_required_files(no_glove)] == ["model.params.backbone_weights"]
    with pytest.raises(FileNotFoundError) as e:  # every missing file in one error
        build_model(pre, _ctx())
    assert "w.pth" in str(e.value) and "g.txt" in str(e.value)


def test_pretrained_files_are_loaded(tmp_path):
    torch.manual_seed(1)
    ref = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    (tmp_path / "g.txt").write_text("lake " + " ".join(["0.25"] * 64) + "\nroofs " + " ".join(["-1"] * 64) + "\n")
    cfg = load_config(CFG, ["model.pretrained=true", f"model.params.backbone_weights={tmp_path / 'w.pth'}",
                            f"model.params.glove_path={tmp_path / 'g.txt'}"])
    model = build_model(cfg.model, _ctx())
    for k, v in ref.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    emb = model.text.embed.weight
    assert torch.equal(emb[2], torch.full((64,), 0.25)) and torch.equal(emb[6], torch.full((64,), -1.0))
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "bad.pth")  # a file that fills nothing is refused
    bad = load_config(CFG, ["model.pretrained=true", f"model.params.backbone_weights={tmp_path / 'bad.pth'}"])
    with pytest.raises(DataError, match="model.params.backbone_weights"):
        build_model(bad.model, _ctx())


def test_bad_config_is_named():
    with pytest.raises(ConfigError, match=r"'model\.params\.word_dims'"):
        build_model(load_config(CFG, ["model.params.word_dims=8"]).model, _ctx())
    with pytest.raises(ConfigError, match="needs a tokenizer vocabulary"):
        build_model(load_config(CFG).model, ModelContext())
    # GloVe rows are words: a sub-word tokenizer (no vocab_words) cannot take them (checked before any file is read)
    cls = MODELS.get("example_meanpool")
    glove = load_config(CFG, ["model.pretrained=true", "model.params.glove_path=g.txt"]).model
    with pytest.raises(ConfigError, match="glove_path needs a word vocabulary"):
        cls(glove, cls.Params(glove_path="g.txt"), _ctx(None))


@pytest.mark.slow
def test_tiny_example_learns(tmp_path):
    res = train_and_test(str(CFG.relative_to(ROOT)), "tiny_example_meanpool", tmp_path)
    assert res["method"] == "example_meanpool" and res["n_images"] == 100 and res["n_captions"] == 500
    assert res["mR"] > 3 * chance_mr(res["n_images"], res["n_captions"] // res["n_images"])
