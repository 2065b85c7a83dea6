"""GaLR: GCN and MIDF on hand-checked inputs, local-feature sources, tiny forward/backward, pretrained-file errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from core.config import load_config
from losses import build_criterion
from models.base import ModelContext
from models.encoders.galr_local import GCN, BackboneRegions, LocalFeatureBank, grid_shape, local_key
from models.encoders.midf import MIDF, MHAtt, SA, Norm, upstream_to_own
from models.registry import build_model

WORDS = [f"w{i}" for i in range(20)] + ["<unk>"]
CTX = ModelContext(vocab_words=WORDS, vocab_size=len(WORDS) + 1)


def _batch(b: int = 6, size: int = 32) -> dict:
    torch.manual_seed(0)
    tokens = torch.randint(1, len(WORDS) + 1, (b, 5))
    tokens[1, 2:] = 0
    return {"images": torch.randn(b, 3, size, size), "filenames": [f"scene_{i}.png" for i in range(b)],
            "tokens": tokens, "lengths": (tokens != 0).sum(1), "img_ids": torch.arange(b)}


def test_gcn_hand_case():
    gcn = GCN(nodes=2, dim=2, embed_dim=2)
    with torch.no_grad():
        gcn.fc1.weight.copy_(torch.eye(2))
        gcn.fc2.weight.copy_(torch.tensor([[1.0, -1.0]]))
        gcn.fc3.weight.copy_(torch.tensor([[1.0], [2.0]]))
        gcn.out.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
        gcn.out.bias.copy_(torch.tensor([3.0, 0.0]))
    adj = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    rep = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])
    # relu(A X I) = [[1,2],[4,1]]; A X1 W2ᵀ = [[1,2],[5,3]] @ [1,-1]ᵀ = [-1, 2] -> relu [0, 2];
    # A X2 W3ᵀ = [0, 2]ᵀ @ [1, 2] = [[0,0],[2,4]]; flatten [0,0,2,4] -> out [3, 4] -> L2 [0.6, 0.8]
    torch.testing.assert_close(gcn(adj, rep), torch.tensor([[0.6, 0.8]]), atol=1e-6, rtol=0)


class _Identity2(nn.Module):
    def forward(self, x, y=None):
        return x


@pytest.mark.parametrize("compat, expected", [(False, [0.875, 1.5]), (True, [0.375, 0.5])])
def test_midf_dynamic_weights_and_upstream_bug(compat, expected):
    m = MIDF(dim=2, heads=1, ffn=4, dynamic_dim=2, upstream_compat=compat).eval()
    m.sa_global = m.sa_local = _Identity2()
    m.correct_local = m.supplement_global = _Identity2()
    with torch.no_grad():  # constant logits [0, ln 3] -> softmax weights [0.25, 0.75]
        m.weight_mlp[0].weight.zero_()
        m.weight_mlp[3].weight.zero_()
        m.weight_mlp[3].bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    g, l = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])  # noqa: E741
    # g' = sigmoid(l) * g = [0.5, 0]; l' = g + l = [1, 2]; fixed: 0.25 g' + 0.75 l'; upstream: 0.25 (g' + l')
    torch.testing.assert_close(m(g, l), torch.tensor([expected]), atol=1e-6, rtol=0)


def test_layernorm_variants_hand_case():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    centred = x - 2.5
    up = Norm(4, upstream=True)(x)  # unbiased std = sqrt(5/3)
    torch.testing.assert_close(up, centred / (math.sqrt(5 / 3) + 1e-6), atol=1e-6, rtol=0)
    std = Norm(4, upstream=False)(x)  # biased var = 1.25
    torch.testing.assert_close(std, centred / math.sqrt(1.25 + 1e-6), atol=1e-6, rtol=0)


def test_length_one_attention_is_value_projection_and_sa_block():
    torch.manual_seed(0)
    att = MHAtt(8, 2, 0.1).eval()
    x = torch.randn(3, 1, 8)
    torch.testing.assert_close(att(x, x, x), att.linear_merge(att.linear_v(x)))
    sa = SA(8, 2, 16, 0.1, upstream_norm=True).eval()
    h = sa.norm1(x + att_out(sa, x))
    torch.testing.assert_close(sa(x), sa.norm2(h + sa.ffn.fc2(torch.relu(sa.ffn.fc1(h)))))


def att_out(sa: SA, x: torch.Tensor) -> torch.Tensor:
    return sa.attn.linear_merge(sa.attn.linear_v(x))


def test_midf_upstream_key_translation():
    assert upstream_to_own("l2l_SA.ffn.mlp.fc.linear.weight") == "sa_local.ffn.fc1.weight"
    assert upstream_to_own("g2l_SGA.mhatt2.linear_q.bias") == "correct_local.cross_attn.linear_q.bias"
    assert upstream_to_own("l2g_SGA.norm3.a_2") == "supplement_global.norm3.weight"
    assert upstream_to_own("dynamic_weight.3.weight") == "weight_mlp.3.weight"


def _write_local_npy(path, names, nodes=4, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    rep = {local_key(n): rng.standard_normal((nodes, dim)).astype(np.float32) for n in names}
    adj = {local_key(n): rng.random((nodes, nodes)).astype(np.float32) for n in names}
    np.save(path, {"adj_matrix": adj, "local_rep": rep}, allow_pickle=True)
    return rep, adj


def test_local_npy_loader_and_lookup(tmp_path):
    path = tmp_path / "demo_local.npy"
    rep, adj = _write_local_npy(path, ["airport_1.tif", "beach_2.tif"])
    assert local_key("some/dir/airport_1.tif") == "airport_1.txt"
    bank = LocalFeatureBank(str(path), nodes=4, dim=8)
    r, a = bank.lookup(["beach_2.tif", "airport_1.tif", "beach_2.tif"], torch.device("cpu"))
    assert r.shape == (3, 4, 8) and a.shape == (3, 4, 4)
    np.testing.assert_array_equal(r[0].numpy(), rep["beach_2.txt"])
    np.testing.assert_array_equal(a[1].numpy(), adj["airport_1.txt"])
    with pytest.raises(KeyError, match="lake_9.txt"):
        bank.lookup(["lake_9.tif"], torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="local_source"):
        LocalFeatureBank(str(tmp_path / "absent.npy"), 4, 8).lookup(["a.tif"], torch.device("cpu"))
    with pytest.raises(ValueError, match="expected"):
        LocalFeatureBank(str(path), nodes=20, dim=20).lookup(["beach_2.tif"], torch.device("cpu"))


def test_backbone_regions_shapes_and_adjacency():
    assert grid_shape(20) == (4, 5) and grid_shape(4) == (2, 2)
    reg = BackboneRegions(16, nodes=20, dim=6)
    rep, adj = reg(torch.randn(2, 16, 8, 8))
    assert rep.shape == (2, 20, 6) and adj.shape == (2, 20, 20)
    assert torch.all(adj >= 0)
    torch.testing.assert_close(adj.sum(-1), torch.ones(2, 20))


def _tiny_cfg(*overrides: str):
    return load_config("configs/tests/tiny_galr.yaml", list(overrides))


@pytest.mark.parametrize("source", ["backbone", "zeros"])
def test_tiny_forward_backward(source):
    cfg = _tiny_cfg(f"model.params.local_source={source}")
    model = build_model(cfg.model, CTX)
    batch = _batch()
    out = model(batch)
    assert out["img_emb"].shape == (6, 64) and out["txt_emb"].shape == (6, 64)
    loss = build_criterion(cfg.loss)(out, batch, 0)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    with torch.no_grad():
        sims = model.eval().similarity(model.encode_image(batch), model.encode_text(batch))
    assert sims.shape == (6, 6) and float(sims.abs().max()) <= 1 + 1e-5


def test_resnet18_tower_freezes_unused_classifier():
    model = build_model(_tiny_cfg("model.params.backbone=resnet18").model, CTX)
    assert not model.image.backbone.fc.weight.requires_grad
    assert model.image.mvsa.low_conv.in_channels == 192 and model.image.mvsa.high_conv.in_channels == 768


def test_npy_source_uses_the_file_through_filenames(tmp_path):
    path = tmp_path / "local.npy"
    batch = _batch(b=3)
    rep, adj = _write_local_npy(path, batch["filenames"])
    cfg = _tiny_cfg("model.params.local_source=npy", f"model.params.local_path={path}")
    model = build_model(cfg.model, CTX).eval()
    with torch.no_grad():
        got = model.encode_image(batch)
        g, _ = model.image(batch["images"])
        r = torch.stack([torch.from_numpy(rep[local_key(f)]) for f in batch["filenames"]])
        a = torch.stack([torch.from_numpy(adj[local_key(f)]) for f in batch["filenames"]])
        expected = model.fusion(g, model.gcn(a, r))
    torch.testing.assert_close(got, expected)


def test_npy_source_without_file_and_random_init_uses_zeros(tmp_path):
    cfg = _tiny_cfg("model.params.local_source=npy", f"model.params.local_path={tmp_path}/absent.npy")
    model = build_model(cfg.model, CTX).eval()
    assert model.bank is None
    batch = _batch(b=2)
    with torch.no_grad():
        g, _ = model.image(batch["images"])
        expected = model.fusion(g, model.gcn(torch.zeros(2, 4, 4), torch.zeros(2, 4, 8)))
        torch.testing.assert_close(model.encode_image(batch), expected)


def test_missing_pretrained_files_one_error(tmp_path):
    cfg = _tiny_cfg("model.pretrained=true", "model.params.backbone=resnet18",  # the paper's ResNet reads the file
                    f"model.params.resnet_weights={tmp_path}/r18.pth", f"model.params.skipthought_dir={tmp_path}/st", "model.params.local_source=npy",
                    f"model.params.local_path={tmp_path}/rsitmd_local.npy")
    with pytest.raises(FileNotFoundError) as e:
        build_model(cfg.model, CTX)
    msg = str(e.value)
    for name in ("r18.pth", "dictionary.txt", "utable.npy", "uni_skip.npz", "rsitmd_local.npy"):
        assert name in msg


def test_bad_local_source_is_a_config_error():
    with pytest.raises(ValueError, match="local_source"):
        build_model(_tiny_cfg("model.params.local_source=detector").model, CTX)
    with pytest.raises(ValueError, match="local_path"):
        build_model(_tiny_cfg("model.params.local_source=npy").model, CTX)


def test_mvsa_hand_case_and_size_check():
    from models.encoders.mvsa import MVSA

    def feats():
        return {"f1": torch.ones(1, 64, 8, 8), "f2": torch.ones(1, 128, 4, 4), "f3": torch.ones(1, 256, 2, 2),
                "f4": torch.ones(1, 512, 1, 1)}

    out = {}
    for norm in (True, False):
        m = MVSA(embed_dim=2, image_size=32, normalize=norm)
        assert m.grid == 2 and m.solo_gate.in_features == 4
        with torch.no_grad():
            for mod in (m.low_conv, m.high_conv, m.main_conv, m.att_conv, m.solo_gate, m.solo_proj):
                mod.weight.zero_()
                mod.bias.zero_()
            m.high_conv.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))  # high = [1, 2, 3], channel mean 2
            m.main_conv.weight.fill_(1.0)  # x = [0,0,0,1,2,3] + 2 -> main = 18 per pixel
            m.solo_gate.weight.fill_(1 / 36)  # att = sigmoid(0) = 0.5 -> 9 per pixel, 4 pixels -> 1
            m.solo_proj.bias.copy_(torch.tensor([3.0, 4.0]))
            out[norm] = m(feats())
    s = 1 / (1 + math.exp(-1.0))
    torch.testing.assert_close(out[False], torch.tensor([[3 * s, 4 * s]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[True], torch.tensor([[0.6, 0.8]]), atol=1e-6, rtol=0)
    bad = feats()
    bad["f3"] = torch.ones(1, 256, 4, 4)
    with pytest.raises(ValueError, match="image_size"):
        MVSA(embed_dim=2, image_size=32)(bad)
