"""engine/index.py: exact search equals brute force, approximate search agrees with it, the folder round-trips."""
import json

import numpy as np
import pytest

from search.index import (IndexFolderError, ShardStore, build_faiss, choose_kind, exact_topk, list_images,
                          load_index, normalize, topk_agreement, write_index)


def clustered(n: int, d: int, rng: np.random.Generator, centers: np.ndarray, noise: float = 1.0) -> np.ndarray:
    """Unit vectors drawn around random centres (embeddings of real images cluster by scene)."""
    lab = rng.integers(0, len(centers), n)
    return normalize(centers[lab] + noise * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d))


def test_exact_topk_matches_full_sort():
    rng = np.random.default_rng(0)
    base, q = rng.standard_normal((1000, 16)).astype(np.float32), rng.standard_normal((7, 16)).astype(np.float32)
    s, i = exact_topk(base, q, 10, block=128)  # several blocks: exercises the running merge
    full = q @ base.T
    ref = np.argsort(-full, axis=1)[:, :10]
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_allclose(s, np.take_along_axis(full, ref, 1), rtol=1e-6)
    assert exact_topk(base[:3], q, 10)[1].shape == (7, 3)  # k clipped to N


def test_choose_kind():
    assert choose_kind(100_000) == "flat"
    assert choose_kind(100_001) == "ivf"
    assert choose_kind(10, "hnsw") == "hnsw"
    assert choose_kind(500, exact_max=100) == "ivf"
    with pytest.raises(ValueError, match="unknown index kind"):
        choose_kind(10, "lsh")


def test_flat_index_equals_brute_force():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((3000, 48)).astype(np.float32) * 3  # unnormalised: the index normalises
    q = rng.standard_normal((20, 48)).astype(np.float32)
    index, params = build_faiss(emb, "auto")
    assert params["kind"] == "flat"
    s, i = index.search(normalize(q), 10)
    rs, ri = exact_topk(normalize(emb), normalize(q), 10)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, atol=1e-5)
    # cosine by hand for one pair
    j = ri[0, 0]
    cos = emb[j] @ q[0] / np.linalg.norm(emb[j]) / np.linalg.norm(q[0])
    assert s[0, 0] == pytest.approx(cos, abs=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_agrees_with_exact_on_100k(kind):
    """Acceptance: >= 95% top-10 agreement on 100k random vectors (fresh queries, not database rows)."""
    rng = np.random.default_rng(2)
    d = 64
    centers = normalize(rng.standard_normal((1000, d)).astype(np.float32))
    n = 100_000 if kind == "ivf" else 20_000  # HNSW's CPU build is ~5x slower; keep the test short
    base, q = clustered(n, d, rng, centers), clustered(300, d, rng, centers)
    index, params = build_faiss(base, kind)
    assert params["kind"] == kind and params["breadth"] >= 8 and index.ntotal == n
    _, ids = index.search(q, 10)
    _, ref = exact_topk(base, q, 10)
    assert topk_agreement(ids, ref) >= 0.95
    # and it is approximate, i.e. cheaper than exact: it visits a fraction of the database, not all of it
    if kind == "ivf":
        assert params["nlist"] == 632  # round(2 sqrt(100000)); 100000 // 39 training points allow more
        assert params["breadth"] <= 632 // 4
    else:
        assert params["M"] == 32 and params["breadth"] <= n // 100


def test_ivf_calibration_widens_search_on_isotropic_noise():
    """No cluster structure: calibration must search more lists instead of returning poor neighbours."""
    rng = np.random.default_rng(3)
    base = normalize(rng.standard_normal((20_000, 32)).astype(np.float32))
    q = normalize(rng.standard_normal((200, 32)).astype(np.float32))
    index, params = build_faiss(base, "ivf")
    assert params["breadth"] > 8
    assert topk_agreement(index.search(q, 10)[1], exact_topk(base, q, 10)[1]) >= 0.9


def test_topk_agreement_hand_case():
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    b = np.array([[4, 3, 9, 1], [0, 1, 2, 3]])
    assert topk_agreement(a, b) == pytest.approx((3 / 4 + 0) / 2)


def test_index_folder_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    files = [f"sub/img_{i:02d}.png" for i in range(50)]
    meta = write_index(tmp_path / "idx", files, emb, images_root="/data/imgs", checkpoint_id="ck@1")
    assert meta["kind"] == "flat" and meta["n"] == 50
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == \
        ["embeddings.npy", "files.txt", "index.faiss", "meta.json"]  # no staging leftovers
    idx = load_index(tmp_path / "idx")
    np.testing.assert_array_equal(idx.embeddings, emb)  # raw embeddings kept for re-scoring
    s, i = idx.search(emb[17], 3)
    assert i[0, 0] == 17 and s[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert str(idx.path(17)) == "/data/imgs/sub/img_17.png"
    with pytest.raises(IndexFolderError, match="query dim"):
        idx.search(np.ones((1, 9), np.float32), 3)


def test_unfinished_and_inconsistent_folders_are_refused(tmp_path):
    with pytest.raises(IndexFolderError, match="not found"):
        load_index(tmp_path / "nope")
    (tmp_path / "part" / "shards").mkdir(parents=True)
    with pytest.raises(IndexFolderError, match="unfinished build"):
        load_index(tmp_path / "part")
    emb = np.eye(4, dtype=np.float32)
    write_index(tmp_path / "ok", list("abcd"), emb, images_root=".", checkpoint_id="x")
    (tmp_path / "ok" / "files.txt").write_text("a\nb\nc\n")
    with pytest.raises(IndexFolderError, match="disagree"):
        load_index(tmp_path / "ok")


def test_shard_store_resumes_and_refuses_foreign_shards(tmp_path):
    files = [f"{i}.png" for i in range(10)]
    store = ShardStore.open(tmp_path, "ck@1", files, chunk=4)
    assert store.n_shards == 3 and list(store.rows(2)) == [8, 9]
    store.write(0, np.zeros((4, 3)))
    store.write(2, np.full((2, 3), 2.0))
    again = ShardStore.open(tmp_path, "ck@1", files, chunk=4)  # restart: same identity
    assert [again.is_done(i) for i in range(3)] == [True, False, True]
    again.write(1, np.ones((4, 3)))
    np.testing.assert_array_equal(again.load_all()[:, 0], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="expected 4"):
        again.write(1, np.ones((3, 3)))
    for bad in (("ck@2", files, 4), ("ck@1", files[:-1], 4), ("ck@1", files, 5)):
        with pytest.raises(IndexFolderError, match="different build"):
            ShardStore.open(tmp_path, *bad)
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["checkpoint_id"] == "ck@1"


def test_list_images_recursive(tmp_path):
    for name in ("a.tif", "b.JPG", "sub/c.png", "sub/deep/d.jpeg", "e.txt", "sub/.hidden.png", "f.tiff"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_images(tmp_path) == ["a.tif", "b.JPG", "f.tiff", "sub/c.png", "sub/deep/d.jpeg"]
