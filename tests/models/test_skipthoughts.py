"""Uni-skip encoder: loader for the original file format (synthetic tiny files), GRU maths, dropout, key map."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.encoders.skipthoughts import UniSkip, missing_skipthought_files, upstream_uniskip_keys

E, H = 5, 4
DICT = ["UNK", "<eos>", "a", "b", "c"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture()
def st_dir(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "dictionary.txt").write_text("\n".join(DICT) + "\n", encoding="utf-8")
    np.save(tmp_path / "utable.npy", rng.standard_normal((len(DICT), E)).astype(np.float32))
    gru = {"encoder_W": rng.standard_normal((E, 2 * H)), "encoder_b": rng.standard_normal(2 * H),
           "encoder_U": rng.standard_normal((H, 2 * H)), "encoder_Wx": rng.standard_normal((E, H)),
           "encoder_bx": rng.standard_normal(H), "encoder_Ux": rng.standard_normal((H, H)),
           "Wemb": rng.standard_normal((3, E))}
    np.savez(tmp_path / "uni_skip.npz", **{k: v.astype(np.float32) for k, v in gru.items()})
    return tmp_path


def _theano_reference(emb: np.ndarray, p: dict, length: int) -> np.ndarray:
    """The Theano gru_layer step written from its equations: [r,u] = sig(xW+b+hU); h = u h + (1-u) tanh(...)."""
    h = np.zeros(H)
    for t in range(length):
        x = emb[t]
        pre = x @ p["encoder_W"] + p["encoder_b"] + h @ p["encoder_U"]
        r, u = _sigmoid(pre[:H]), _sigmoid(pre[H:])
        cand = np.tanh(x @ p["encoder_Wx"] + p["encoder_bx"] + r * (h @ p["encoder_Ux"]))
        h = u * h + (1 - u) * cand
    return h


def test_embedding_rows_follow_dictionary_with_unk(st_dir):
    vocab = ["b", "zzz", "a", "<unk>"]  # rsitr ids 1..4; "zzz" and "<unk>" are not in the dictionary
    m = UniSkip(vocab, dim_word=E, dim_hidden=H, skipthought_dir=str(st_dir), pretrained=True)
    table = np.load(st_dir / "utable.npy")
    w = m.embedding.weight.detach().numpy()
    assert w.shape == (5, E)
    np.testing.assert_array_equal(w[0], np.zeros(E))
    np.testing.assert_array_equal(w[1], table[3])  # b
    np.testing.assert_array_equal(w[2], table[0])  # zzz -> UNK
    np.testing.assert_array_equal(w[3], table[2])  # a
    np.testing.assert_array_equal(w[4], table[0])  # <unk> -> UNK


def test_gru_matches_theano_equations(st_dir):
    vocab = ["a", "b", "c"]
    m = UniSkip(vocab, dim_word=E, dim_hidden=H, skipthought_dir=str(st_dir), pretrained=True).eval()
    p = {k: v.astype(np.float64) for k, v in np.load(st_dir / "uni_skip.npz").items()}
    tokens = torch.tensor([[1, 3, 2, 2], [3, 1, 0, 0]])
    lengths = torch.tensor([4, 2])
    with torch.no_grad():
        last, steps = m(tokens, lengths)
    assert last.shape == (2, H) and steps.shape == (2, 4, H)
    emb = m.embedding.weight.detach().double().numpy()
    for b in range(2):
        ref = _theano_reference(emb[tokens[b].numpy()], p, int(lengths[b]))
        np.testing.assert_allclose(last[b].double().numpy(), ref, atol=1e-5)
    # steps past the caption keep running on the zero pad embedding (upstream behaviour)
    ref_full = _theano_reference(emb[tokens[1].numpy()], p, 4)
    np.testing.assert_allclose(steps[1, 3].double().numpy(), ref_full, atol=1e-5)
    # the fused loop equals the plain per-step cell
    h = torch.zeros(1, H)
    with torch.no_grad():
        for t in range(4):
            h = m.cell.step(m.embedding(tokens[:1, t]), h)
    torch.testing.assert_close(steps[0, 3:4], h, atol=1e-6, rtol=1e-5)


def test_variational_dropout_masks_are_per_gate_and_constant_over_time():
    torch.manual_seed(0)
    m = UniSkip(["a", "b", "c"], dim_word=E, dim_hidden=H, dropout=0.5).train()
    mx = torch.bernoulli(torch.full((3, 2, E), 0.5)) * 2
    mh = torch.bernoulli(torch.full((3, 2, H), 0.5)) * 2
    m._masks = lambda b, ref: (mx, mh)  # fixed masks so the reference can apply them by hand
    tokens = torch.tensor([[1, 2, 3], [3, 3, 0]])
    last, steps = m(tokens, torch.tensor([3, 2]))
    c = m.cell
    h = torch.zeros(2, H)
    for t in range(3):
        x = m.embedding(tokens[:, t])
        r = torch.sigmoid(c.weight_ir(x * mx[0]) + c.weight_hr(h * mh[0]))
        i = torch.sigmoid(c.weight_ii(x * mx[1]) + c.weight_hi(h * mh[1]))
        n = torch.tanh(c.weight_in(x * mx[2]) + r * c.weight_hn(h * mh[2]))
        h = (1 - i) * n + i * h
        torch.testing.assert_close(steps[:, t], h, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(last[1], steps[1, 1])
    # real masks: values are 0 or 1/(1-p), drawn per sequence
    del m._masks
    mx2, mh2 = m._masks(2, torch.zeros(1))
    assert set(torch.unique(torch.cat([mx2.flatten(), mh2.flatten()])).tolist()) <= {0.0, 2.0}
    assert m.eval()._masks(2, torch.zeros(1)) is None


def test_missing_files_one_error_lists_all(tmp_path):
    assert len(missing_skipthought_files(str(tmp_path))) == 3
    with pytest.raises(FileNotFoundError) as e:
        UniSkip(["a"], dim_word=E, dim_hidden=H, skipthought_dir=str(tmp_path), pretrained=True)
    msg = str(e.value)
    assert "dictionary.txt" in msg and "utable.npy" in msg and "uni_skip.npz" in msg


def test_random_init_reads_nothing_and_shapes():
    m = UniSkip(["a", "b"], dim_word=E, dim_hidden=H, skipthought_dir="/nonexistent", pretrained=False)
    assert m.embedding.weight.shape == (3, E)
    assert torch.all(m.embedding.weight[0] == 0)
    assert m.cell.weight_hr.bias is None and m.cell.weight_ir.bias is not None


def test_upstream_key_map_covers_the_ten_tensors():
    keys = upstream_uniskip_keys("text_feature.seq2vec.", "text.encoder.")
    assert len(keys) == 10
    assert keys["text.encoder.cell.weight_ii.bias"] == "text_feature.seq2vec.rnn.gru_cell.weight_ii.bias"
    m = UniSkip(["a"], dim_word=E, dim_hidden=H)
    assert {k.removeprefix("text.encoder.") for k in keys} == set(m.state_dict())


def test_pickled_python2_style_table_loads(st_dir):
    table = np.load(st_dir / "utable.npy")
    obj = np.empty(len(DICT), dtype=object)
    for k in range(len(DICT)):
        obj[k] = table[k]
    np.save(st_dir / "utable.npy", obj, allow_pickle=True)
    m = UniSkip(["c"], dim_word=E, dim_hidden=H, skipthought_dir=str(st_dir), pretrained=True)
    np.testing.assert_array_equal(m.embedding.weight[1].detach().numpy(), table[4])
