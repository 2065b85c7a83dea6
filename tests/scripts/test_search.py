"""build_index.py + search.py + visualize.py end to end on the demo test images with a trained tiny VSE model."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import build_index, search, visualize
from search.index import load_index, normalize
from search.pictures import PAD, grid_layout, wrap_title
from search.query import encode_texts, load_model

DEMO = Path("data/demo_precomp")


# The shared 2-epoch tiny_vse run (tests/conftest.py) ranks the true image of a caption at chance level
# (test t2i R@5 5.6 vs 5.0: hardest-negative triplet learns slowly from scratch). The same run with the summed
# triplet costs the same and reaches t2i R@5 47.8, a model whose search results mean something.
TRAIN = ["--config", "configs/tests/tiny_vse.yaml",
         "--set", "loss.terms=[{name: triplet, params: {margin: 0.2, mode: sum}}]"]


@pytest.fixture(scope="module")
def best(tmp_path_factory) -> str:
    import train

    out = tmp_path_factory.mktemp("search_model")
    assert train.main(TRAIN + ["--output-dir", str(out)]) == 0
    return str(out / "tiny_vse" / "fold0" / "best.pth")


@pytest.fixture(scope="module")
def demo_test(tmp_path_factory, best):
    """The 100 demo test images copied into scene sub-folders (the builder searches recursively)."""
    names = list(dict.fromkeys((DEMO / "test_filename.txt").read_text().split()))
    caps = (DEMO / "test_caps.txt").read_text().splitlines()
    assert len(caps) == 5 * len(names)
    root = tmp_path_factory.mktemp("demo_test_images")
    for n in names:
        (root / n.split("_")[0]).mkdir(exist_ok=True)
        shutil.copy(DEMO / "images" / n, root / n.split("_")[0] / n)
    return root, names, caps


@pytest.fixture(scope="module")
def index_dir(best, demo_test, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "index"
    assert build_index.main(["--resume", best, "--images", str(demo_test[0]), "--out", str(out), "--chunk", "32",
                             "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    return out


def test_index_folder(index_dir, demo_test):
    idx = load_index(index_dir)
    root, names, _ = demo_test
    assert idx.meta["n"] == len(names) == 100 and idx.meta["kind"] == "flat"
    assert sorted(Path(f).name for f in idx.files) == sorted(names)
    assert idx.path(0) == root.resolve() / idx.files[0]
    assert not (index_dir / "shards").exists()  # shards are dropped once the index is complete


def test_text_search_finds_true_image_well_above_chance(best, index_dir, demo_test):
    """Acceptance: the true image of a test caption is in the top 5 far more often than chance (5/100)."""
    _, names, caps = demo_test
    idx = load_index(index_dir)
    loaded = load_model(idx, None, "cpu")
    txt = encode_texts(loaded, caps, "cpu")
    scores, ids = idx.search(txt.numpy(), 5)
    truth = [names[c // 5] for c in range(len(caps))]  # five captions per image, in file order
    hits = np.mean([truth[c] in {Path(idx.files[i]).name for i in ids[c]} for c in range(len(caps))])
    chance = 5 / len(names)
    assert hits >= 5 * chance, f"top-5 hit rate {hits:.3f} vs chance {chance:.3f}"
    # the index returns exactly the brute-force cosine ranking of the stored embeddings
    ref = normalize(txt.numpy()) @ normalize(idx.embeddings).T
    np.testing.assert_array_equal(ids[:20], np.argsort(-ref[:20], axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.sort(ref, axis=1)[:, ::-1][:, :5], atol=1e-5)


def test_search_cli_prints_ranked_paths_and_grid(index_dir, demo_test, tmp_path, capsys):
    _, _, caps = demo_test
    grid = tmp_path / "grid.png"
    assert search.main(["--index", str(index_dir), caps[0], "--topk", "7", "--grid", str(grid), "--cols", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == caps[0]
    rows = [line.split() for line in lines[1:8]]
    assert [int(r[0]) for r in rows] == list(range(1, 8))
    assert all(Path(r[2]).is_file() for r in rows)
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    pic = Image.open(grid)
    title = wrap_title(caps[0], PAD + 4 * (224 + PAD))
    (w, h), boxes = grid_layout(7, 4, 224, len(title), 2)
    assert pic.size == (w, h) and len(boxes) == 7
    arr = np.asarray(pic.convert("RGB"), dtype=np.float32)
    for x0, y0, x1, y1 in boxes:
        assert arr[y0:y1, x0:x1].var() > 10  # a demo image, not a blank tile


def test_image_query_and_captions(index_dir, demo_test, tmp_path, capsys):
    root, names, caps = demo_test
    query = root / names[3].split("_")[0] / names[3]
    capfile = tmp_path / "caps.txt"
    capfile.write_text("\n".join(caps[:50]) + "\n")
    assert search.main(["--index", str(index_dir), "--image", str(query), "--topk", "3",
                        "--captions", str(capfile)]) == 0
    out = capsys.readouterr().out.splitlines()
    first = out[1].split()
    assert first[2] == str(query.resolve()) and float(first[1]) == pytest.approx(1.0, abs=1e-4)  # itself
    assert out[4] == f"captions for {names[3]}" and len(out) == 8


def test_resume_after_interruption(best, demo_test, tmp_path, monkeypatch, index_dir):
    root = demo_test[0]
    out = tmp_path / "index"
    real, calls = build_index.encode_shard, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while encoding the third shard
        return real(*a, **kw)

    monkeypatch.setattr(build_index, "encode_shard", flaky)
    args = ["--resume", best, "--images", str(root), "--out", str(out), "--chunk", "16", "--workers", "0",
            "--device", "cpu", "--quiet"]
    with pytest.raises(KeyboardInterrupt):
        build_index.main(args)
    assert sorted(p.name for p in (out / "shards").glob("shard_*.npy")) == ["shard_00000.npy", "shard_00001.npy"]
    assert not (out / "meta.json").exists()
    assert search.main(["--index", str(out), "x"]) == 2  # an unfinished build is never searched
    calls.clear()
    monkeypatch.setattr(build_index, "encode_shard", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    assert build_index.main(args) == 0
    assert len(calls) == 7 - 2  # ceil(100 / 16) shards, two already on disk
    np.testing.assert_allclose(load_index(out).embeddings, load_index(index_dir).embeddings, atol=1e-5)
    calls.clear()
    assert build_index.main(args) == 0 and not calls  # up to date: nothing re-encoded


def test_bad_inputs_one_line_exit_2(best, demo_test, tmp_path, capsys):
    root = demo_test[0]
    assert build_index.main(["--resume", best, "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert build_index.main(["--resume", best, "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no .tif" in capsys.readouterr().err
    out = tmp_path / "foreign"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "manifest.json").write_text(json.dumps({"checkpoint_id": "other", "files_sha256": "x",
                                                              "chunk": 2048, "n": 100}))
    assert build_index.main(["--resume", best, "--images", str(root), "--out", str(out), "--workers", "0",
                             "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different build" in err and not (out / "meta.json").exists()
    bad = tmp_path / "badimg"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    assert build_index.main(["--resume", best, "--images", str(bad), "--out", str(tmp_path / "b"), "--workers", "0",
                             "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"1 of 1 image files of --images {bad} cannot be read: in {bad}: broken.png (" \
        in err
    assert not (tmp_path / "b" / "meta.json").exists()
    assert search.main(["--index", str(tmp_path / "missing"), "a query"]) == 2
    assert "not found" in capsys.readouterr().err


def test_visualize_writes_expected_pictures(best, tmp_path, capsys):
    out = tmp_path / "vis"
    assert visualize.main(["--resume", best, "--split", "test", "--n", "3", "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == \
        ["i2t_00.png", "i2t_01.png", "i2t_02.png", "queries.json", "t2i_00.png", "t2i_01.png", "t2i_02.png"]
    q = json.loads((out / "queries.json").read_text())
    for rec in q["t2i"]:
        assert len(rec["top"]) == 5
        title = wrap_title(f"{rec['query']}   [ground truth at rank {rec['gt_rank']}]", PAD + 5 * (224 + PAD))
        (w, h), boxes = grid_layout(5, 5, 224, len(title), 2)
        pic = np.asarray(Image.open(out / rec["file"]).convert("RGB"), dtype=np.float32)
        assert pic.shape == (h, w, 3)
        assert all(pic[y0:y1, x0:x1].var() > 10 for x0, y0, x1, y1 in boxes)  # five non-blank image panels
        scores = [s for _, s in rec["top"]]
        assert scores == sorted(scores, reverse=True)
        if rec["gt_rank"] <= 5:  # the framed panel is the ground truth's
            names = [n for n, _ in rec["top"]]
            assert names.index(Path(names[rec["gt_rank"] - 1]).name) == rec["gt_rank"] - 1
    for rec in q["i2t"]:
        assert len(rec["top"]) == 5
        assert Image.open(out / rec["file"]).size[0] > 600
        gt = [is_gt for _, _, is_gt in rec["top"]]
        assert (rec["gt_rank"] <= 5) == any(gt) and (not any(gt) or gt.index(True) == rec["gt_rank"] - 1)
    assert "pictures" in capsys.readouterr().out
