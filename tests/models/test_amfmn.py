"""AMFMN: the pairwise gated-text score against the brute-force [N, M, D] formula, training outputs, tiny
forward/backward, pretrained-file errors and the compat text length."""
from __future__ import annotations

import pytest
import torch

from core.config import load_config
from losses import build_criterion
from models.amfmn import gated_cosine
from models.base import ModelContext
from models.encoders.skipthoughts import SkipThoughtText
from models.registry import build_model

WORDS = [f"w{i}" for i in range(20)] + ["<unk>"]
CTX = ModelContext(vocab_words=WORDS, vocab_size=len(WORDS) + 1)


def _brute_force(v: torch.Tensor, gate: torch.nn.Linear, t: torch.Tensor) -> torch.Tensor:
    """Upstream: expand to [N, M, D], gate the text by sigmoid(W v + b), cosine with denominator clamp 1e-8."""
    g = torch.sigmoid(gate(v)).unsqueeze(1).expand(-1, t.shape[0], -1)
    ft = g * t.unsqueeze(0).expand(v.shape[0], -1, -1)
    vv = v.unsqueeze(1).expand_as(ft)
    return (vv * ft).sum(-1) / (vv.norm(dim=-1) * ft.norm(dim=-1)).clamp(min=1e-8)


def test_gated_cosine_equals_brute_force():
    torch.manual_seed(0)
    gate = torch.nn.Linear(16, 16)
    v, t = torch.randn(5, 16) * 3, torch.relu(torch.randn(7, 16))
    t[2] = 0  # an all-zero caption: both give 0 through the clamp
    with torch.no_grad():
        torch.testing.assert_close(gated_cosine(v, torch.sigmoid(gate(v)), t), _brute_force(v, gate, t),
                                   atol=1e-6, rtol=1e-5)


def test_gated_cosine_hand_case():
    v = torch.tensor([[1.0, 1.0]])
    g = torch.tensor([[1.0, 0.5]])
    t = torch.tensor([[2.0, 4.0]])
    # g * t = [2, 2] -> cos([1, 1], [2, 2]) = 1; v . (g t) = 4, |v| |g t| = sqrt(2) sqrt(8) = 4
    torch.testing.assert_close(gated_cosine(v, g, t), torch.tensor([[1.0]]))


def _batch(b: int = 6) -> dict:
    torch.manual_seed(1)
    tokens = torch.randint(1, len(WORDS) + 1, (b, 5))
    tokens[0, 3:] = 0
    return {"images": torch.randn(b, 3, 32, 32), "filenames": [f"x_{i}.png" for i in range(b)], "tokens": tokens,
            "lengths": (tokens != 0).sum(1), "img_ids": torch.arange(b)}


def test_tiny_forward_backward_and_sims():
    cfg = load_config("configs/tests/tiny_amfmn.yaml")
    model = build_model(cfg.model, CTX)
    batch = _batch()
    out = model(batch)
    assert out["img_emb"].shape == (6, 64) and out["txt_emb"].shape == (6, 64) and out["sims"].shape == (6, 6)
    torch.testing.assert_close(out["sims"], _brute_force(out["img_emb"], model.gate, out["txt_emb"]),
                               atol=1e-5, rtol=1e-4)
    loss = build_criterion(cfg.loss)(out, batch, 0)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    # the MVSA output is not normalised in AMFMN (the gate reads its scale)
    assert not torch.allclose(out["img_emb"].norm(dim=-1), torch.ones(6))


def test_missing_pretrained_files_one_error(tmp_path):
    cfg = load_config("configs/tests/tiny_amfmn.yaml", ["model.pretrained=true", "model.params.backbone=resnet18",
                                                         f"model.params.resnet_weights={tmp_path}/r18.pth",
                                                         f"model.params.skipthought_dir={tmp_path}/st"])
    with pytest.raises(FileNotFoundError) as e:
        build_model(cfg.model, CTX)
    for name in ("r18.pth", "dictionary.txt", "utable.npy", "uni_skip.npz"):
        assert name in str(e.value)


def test_word_vocabulary_required():
    cfg = load_config("configs/tests/tiny_amfmn.yaml")
    with pytest.raises(ValueError, match="word vocabulary"):
        build_model(cfg.model, ModelContext(vocab_words=None, vocab_size=30522))


def test_compat_reads_empty_caption_at_last_step():
    torch.manual_seed(0)
    text = SkipThoughtText(WORDS, embed_dim=8, dim_word=6, dim_hidden=10).eval()
    compat = SkipThoughtText(WORDS, embed_dim=8, dim_word=6, dim_hidden=10, upstream_lengths=True).eval()
    compat.load_state_dict(text.state_dict())
    tokens = torch.tensor([[0, 0, 0], [3, 4, 0]])  # an empty caption (length forced to 1) and a normal one
    lengths = torch.tensor([1, 2])
    with torch.no_grad():
        _, steps = text.encoder(tokens, lengths)
        a, b = text(tokens, lengths), compat(tokens, lengths)
    torch.testing.assert_close(a[0], torch.relu(text.proj(steps[0, 0])))
    torch.testing.assert_close(b[0], torch.relu(text.proj(steps[0, 2])))
    torch.testing.assert_close(a[1], b[1])
