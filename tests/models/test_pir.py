"""PIR on the tiny config: forward/backward with the configured criterion, frozen prior ResNet, text masking and
its upstream_compat switch, VIR token selection (and its upstream tie order), the cross block's residual."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.config import load_config
from losses import build_criterion
from models.base import ModelContext
from models.encoders.blocks import CrossBlock
from models.pir import select_tokens
from models.registry import build_model

CFG = "configs/tests/tiny_pir.yaml"
CTX = ModelContext(vocab_words=[f"w{i}" for i in range(1, 49)] + ["<unk>"], vocab_size=50, scene_names=["a", "b"])


def make_batch(n: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 5, 3, 2, 6, 4])[:n]
    tokens = torch.randint(1, 50, (n, 7), generator=g) * (torch.arange(7)[None] < lengths[:, None])
    return {"images": torch.randn(n, 3, 32, 32, generator=g), "tokens": tokens, "lengths": lengths,
            "attention_mask": (tokens != 0).long(), "img_ids": torch.tensor([0, 0, 1, 1, 2, 2])[:n],
            "scene_ids": torch.tensor([0, 0, 0, 0, 1, 1])[:n], "cap_weight": torch.ones(n)}


def build(*sets: str):
    torch.manual_seed(0)
    cfg = load_config(CFG, list(sets))
    return cfg, build_model(cfg.model, CTX)


def test_forward_backward_with_configured_losses():
    cfg, model = build()
    model.train()
    bn = model.conv_encoder.bn1
    stats = bn.running_mean.clone()
    out = model(make_batch())
    assert out["img_emb"].shape == out["txt_emb"].shape == (6, 64)
    assert torch.allclose(out["img_emb"].norm(dim=-1), torch.ones(6), atol=1e-5)
    assert torch.allclose(out["txt_emb"].norm(dim=-1), torch.ones(6), atol=1e-5)
    assert out["temp"].item() == pytest.approx(0.07) and out["temp2"].item() == pytest.approx(0.07)
    losses = build_criterion(cfg.loss)(out, make_batch(), 0)
    assert set(losses) == {"loss", "loss_infonce", "loss_affiliation"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    for name in ("temp", "temp2", "vision_proj.weight", "text_proj.weight", "conv_proj.weight", "head_img.weight",
                 "head_txt.weight", "mapping_img.1.weight", "mapping_txt.2.weight", "img_ca.1.ffn.3.weight",
                 "txt_sa.0.mhatt.linear_q.weight", "vision_encoder.patch_embed.proj.weight",
                 "text_encoder.embeddings.word_embeddings.weight"):
        p = dict(model.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the prior ResNet is frozen and its BatchNorm kept in eval mode (statistics unchanged by a training forward)
    assert not any(p.requires_grad for p in model.conv_encoder.parameters())
    assert not bn.training and torch.equal(bn.running_mean, stats)


def test_text_padding_is_masked_unless_upstream_compat():
    batch = make_batch()
    noisy = dict(batch, tokens=batch["tokens"].clone())
    noisy["tokens"][noisy["attention_mask"] == 0] = 7  # change only the padded positions
    noisy["attention_mask"] = batch["attention_mask"]
    for compat, same in (("false", True), ("true", False)):
        _, model = build(f"model.upstream_compat={compat}")
        model.eval()
        with torch.no_grad():
            a, b = model.encode_text(batch), model.encode_text(noisy)
        assert torch.allclose(a[3], b[3], atol=1e-5) == same  # caption 3 has 5 padded positions


def test_batch_of_one_and_similarity():
    _, model = build()
    model.eval()
    with torch.no_grad():
        batch = make_batch()
        img = model.encode_image({"images": batch["images"][:1]})
        full = model.encode_image({"images": batch["images"]})
        txt = model.encode_text(batch)
    assert torch.allclose(img[0], full[0], atol=1e-5)
    assert torch.allclose(model.similarity(full, txt), full @ txt.t(), atol=1e-5)


def test_vir_keeps_filter_size_tokens_by_prior_score():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [-1.0, 0.0]]])
    prior = torch.tensor([[1.0, 0.5]])  # scores 1, 0.5, 2, -1 -> order 2, 0, 1, 3
    assert torch.equal(select_tokens(tokens, prior, 3), tokens[:, [2, 0, 1]])
    assert torch.equal(select_tokens(tokens, prior, 9), tokens[:, [2, 0, 1, 3]])
    _, small = build("model.params.filter_size=4")
    small.eval()
    with torch.no_grad():
        assert small.encode_image({"images": make_batch()["images"]}).shape == (6, 64)


def test_vir_ties_keep_token_order_under_compat():
    """Products 0, 0, 200, 0, 0: the softmax gives exactly 1 and four exact zeros, so ties decide the rest."""
    tokens = torch.tensor([[[0.0, 1.0], [0.0, 2.0], [200.0, 0.0], [0.0, 3.0], [0.0, 4.0]]])
    prior = torch.tensor([[1.0, 0.0]])
    scores = torch.softmax((tokens @ prior.unsqueeze(-1)).squeeze(-1), 1)
    assert scores[0, 2] == 1 and (scores[0, [0, 1, 3, 4]] == 0).all()
    assert torch.equal(select_tokens(tokens, prior, 3, stable=True), tokens[:, [2, 0, 1]])
    assert torch.equal(select_tokens(tokens, prior, 9, stable=True), tokens[:, [2, 0, 1, 3, 4]])
    assert torch.equal(select_tokens(tokens, prior, 1), tokens[:, [2]])  # topk: the best token, ties aside


def test_cross_block_residual_is_the_key_value_input():
    """Upstream ``y = norm1(y + attn(q=x, k=y, v=y))``, ``y = norm2(y + ffn(y))``, written out by hand."""
    torch.manual_seed(0)
    blk = CrossBlock(dim=8, heads=2, dropout=0.0).eval()
    q, kv = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    att = blk.mhatt_cross

    def heads(z: torch.Tensor, lin: torch.nn.Linear) -> torch.Tensor:
        return lin(z).view(2, 5, 2, 4).transpose(1, 2)

    a = torch.softmax(heads(q, att.linear_q) @ heads(kv, att.linear_k).transpose(-1, -2) / math.sqrt(4), -1)
    a = att.linear_merge((a @ heads(kv, att.linear_v)).transpose(1, 2).reshape(2, 5, 8))
    y = F.layer_norm(kv + a, (8,), blk.norm1.weight, blk.norm1.bias)
    y = F.layer_norm(y + blk.ffn(y), (8,), blk.norm2.weight, blk.norm2.bias)
    with torch.no_grad():
        torch.testing.assert_close(blk(q, kv), y)
        # queries only steer the attention: with one key/value token the output ignores them
        one = kv[:, :1]
        torch.testing.assert_close(blk(q[:, :1], one), blk(torch.randn(2, 1, 8), one))


def test_bert_pad_row_gets_a_gradient_only_as_upstream():
    """Upstream's BERT embedding has no padding_idx: with the padding attended, the [PAD] row (id 0) gets a gradient.
    rsitr keeps transformers' padding_idx (row 0 gradient exactly 0) unless bert_pad_grad / upstream_compat."""
    batch = make_batch()
    for sets, pad_grad in (((), False), (("model.upstream_compat=true",), True),
                           (("model.params.bert_pad_grad=true", "model.params.text_mask=false"), True)):
        cfg, model = build(*sets)
        model.train()
        build_criterion(cfg.loss)(model(batch), batch, 0)["loss"].backward()
        emb = model.text_encoder.embeddings.word_embeddings
        assert (emb.padding_idx is None) == pad_grad, sets
        row0 = emb.weight.grad[0].abs().max().item()
        assert (row0 > 0) == pad_grad, (sets, row0)
        assert emb.weight.grad[batch["tokens"][0, 0]].abs().max() > 0  # a real word trains either way
