"""Streamed webdataset shards (data/shards.py, scripts/make_shards.py): shards hold every pair once with the image
bytes unchanged, every shard is read by one worker of one rank per epoch, every rank takes the same number of steps,
the order depends only on (seed, epoch), a resumed train.py run equals an uninterrupted one, and a planted copy of
a test image is skipped and reported."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from core.config import load_config
from core.errors import DataError
from data.build import build_data, train_loader
from data.images import load_image
from data.near_dups import ALTERATIONS
from data.precomp import load_split
from data.shards import (ShardStream, StreamInfo, iter_samples, pairs_from_table, plan_epoch, read_index,
                         write_shards)
from data.transforms import build_transform

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import make_shards  # noqa: E402


def _ucm(shared_data: Path) -> Path:
    folder = shared_data / "ucm" / "ucm_precomp"
    if not (folder / "images").is_dir():
        pytest.skip("../shared/data/ucm is not available")
    return folder


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory) -> Path:
    """The first 12 UCM training images (60 pairs) in shards of 7 pairs (8 full shards and one of 4)."""
    out = tmp_path_factory.mktemp("shards") / "ucm_shards"
    assert make_shards.main(["--precomp", str(_ucm(shared_data)), "--out", str(out), "--max-images", "12",
                             "--pairs-per-shard", "7"]) == 0
    return out


def test_shards_hold_every_pair_once_with_the_image_bytes(shards, shared_data):
    ucm = load_split(_ucm(shared_data), "train", check_images=False)
    index = read_index(shards)
    assert [s["pairs"] for s in index["shards"]] == [7] * 8 + [4]
    assert (index["n_pairs"], index["n_images"], index["scenes"]) == (60, 12, ["agricultural"])
    got = list(iter_samples(shards / s["name"] for s in index["shards"]))
    assert [json.loads(s["json"])["cap_id"] for s in got] == list(range(60))
    for s in got:
        meta = json.loads(s["json"])
        assert s["txt"].decode() == ucm.captions[meta["cap_id"]] and meta["name"] == ucm.filenames[meta["img_id"]]
        assert s["jpg"] == ucm.image_path(meta["img_id"]).read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    assert make_shards.main(["--precomp", str(_ucm(shared_data)), "--out", str(shards), "--max-images", "2"]) == 2
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir()} == before  # nothing overwritten


def test_table_input(tmp_path, shared_data):
    ucm = _ucm(shared_data)
    (tmp_path / "t.csv").write_text(f"image,caption\n{ucm}/images/1.jpg,a field\n{ucm}/images/2.jpg,two\n"
                                    f"{ucm}/images/1.jpg,a green field\n")
    pairs = pairs_from_table(tmp_path / "t.csv")
    assert [(p.name, p.caption, p.img_id, p.cap_id) for p in pairs] == [("1.jpg", "a field", 0, 0), ("2.jpg", "two", 1, 1),
                                                                       ("1.jpg", "a green field", 0, 2)]
    index = write_shards(pairs, tmp_path / "out", 2, "t.csv")
    assert index["n_pairs"] == 3 and index["n_images"] == 2 and len(index["shards"]) == 2
    (tmp_path / "bad.csv").write_text("path,text\nx.jpg,y\n")
    with pytest.raises(DataError, match="bad.csv: needs columns 'image' and 'caption', has path, text"):
        pairs_from_table(tmp_path / "bad.csv")
    (tmp_path / "gap.csv").write_text("image,caption\nx.jpg,\n")
    with pytest.raises(DataError, match="gap.csv, row 2: empty 'caption'"):
        pairs_from_table(tmp_path / "gap.csv")


@pytest.mark.parametrize("world, workers", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2)])
def test_plan_reads_every_shard_once_and_gives_every_rank_the_same_steps(world, workers):
    counts = np.random.default_rng(world * 10 + workers).integers(5, 40, 23).tolist()
    for epoch in range(3):
        plan = plan_epoch(counts, epoch, 7, world, workers, 4)
        assert sorted(k for sh in plan.shards for k in sh) == list(range(23))  # each shard in exactly one slot
        for r in range(world):
            assert sum(plan.quotas[r * workers:(r + 1) * workers]) == plan.steps
        for s, sh in enumerate(plan.shards):
            assert plan.quotas[s] <= sum(counts[k] for k in sh) // 4
        # the steps are the smallest rank's whole batches
        assert plan.steps == min(sum(sum(counts[k] for k in plan.shards[s]) // 4
                                     for s in range(r * workers, (r + 1) * workers)) for r in range(world))
    assert plan_epoch(counts, 0, 7, world, workers, 4).shards != plan_epoch(counts, 1, 7, world, workers, 4).shards


def _stream(shards: Path, rank: int = 0, world: int = 1, workers: int = 1, local: int = 5) -> ShardStream:
    index = read_index(shards)
    info = StreamInfo(shards, index, counts=[s["pairs"] for s in index["shards"]])
    from data.tokenize import tokenizer_from_state

    tok = tokenizer_from_state({"kind": "vocab", "words": ["field", "<unk>"], "max_tokens": 47,
                                "drop_stopwords": False})
    return ShardStream(info, tok, build_transform("galr", True, 32), {"agricultural": 0, "noneclass": 1}, 3, rank,
                       world, workers, local, 8)


def test_stream_splits_pairs_over_ranks_and_workers_without_duplicates(shards):
    seen = []
    for rank in range(2):
        s = _stream(shards, rank, 2, 2)
        s.set_epoch(1)
        mine = [it["cap_id"] for w in range(2) for it in s.slot_items(w)]
        assert len(mine) == s.plan.steps * 5 == len(s)
        seen += mine
    assert len(seen) == len(set(seen)) and set(seen) <= set(range(60))
    assert len(seen) >= 60 - 2 * 2 * 5  # at most one partial batch per slot is left out


def test_epoch_order_depends_only_on_seed_and_epoch(shards):
    fresh, used = _stream(shards), _stream(shards)
    for e in (0, 1):
        used.set_epoch(e)
        list(used.slot_items(0))
    used.set_epoch(2)
    fresh.set_epoch(2)
    a, b = list(used.slot_items(0)), list(fresh.slot_items(0))
    assert [x["cap_id"] for x in a] == [x["cap_id"] for x in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))  # the augmentation too
    fresh.set_epoch(1)
    assert [x["cap_id"] for x in fresh.slot_items(0)] != [x["cap_id"] for x in b]
    assert Counter(x["cap_id"] for x in b) == Counter(x["cap_id"] for x in fresh.slot_items(0))  # same pairs


def _planted_shards(shared_data: Path, tmp: Path) -> tuple[Path, str]:
    """Shards of the first 20 UCM training images plus an altered copy of test image 81.jpg named plant.png."""
    ucm = _ucm(shared_data)
    tr = load_split(ucm, "train", check_images=False)
    from data.shards import Pair, pairs_from_split
    from data.precomp import truncate

    pairs = pairs_from_split(truncate(tr, 20))
    ALTERATIONS["crop_4px"](load_image(ucm / "images" / "81.jpg")).save(tmp / "plant.png")
    pairs += [Pair(tmp / "plant.png", f"a planted copy {k} .", "plant.png", 20, 100 + k, "noneclass")
              for k in range(5)]
    write_shards(pairs, tmp / "planted", 10, "test")
    return tmp / "planted", "plant.png"


def _sets(folder: Path, shared_data: Path, workers: int) -> list[str]:
    return ["--set", "data.format=webdataset", "--set", f"data.shards={folder}", "--set", "data.dataset=ucm",
            "--set", f"data.root={shared_data / 'ucm'}", "--set", "data.max_images=20", "--set", "data.batch_size=10",
            "--set", f"data.num_workers={workers}", "--set", "data.shuffle_buffer=16"]


def test_train_streams_skips_the_planted_copy_and_resumes_exactly(shared_data, tmp_path):
    folder, plant = _planted_shards(shared_data, tmp_path)
    cfg = load_config("configs/tests/tiny_vse.yaml", [s for s in _sets(folder, shared_data, 2) if s != "--set"])
    bundle = build_data(cfg.data)
    assert bundle.leakage["removed"] == [["shards", plant]]
    assert bundle.leakage["test_near_dups"][0][1] == ["test", "81.jpg"]
    loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=True)
    loader.dataset.set_epoch(0)
    names = [n for b in loader for n in b["filenames"]]
    real = set(load_split(_ucm(shared_data), "train", check_images=False).filenames[:20])
    assert plant not in names and len(names) == len(loader) * 10 and set(names) <= real
    # two epochs in one go, and one epoch then --resume: the same weights
    out = tmp_path / "runs"
    base = ["--config", "configs/tests/tiny_vse.yaml", *_sets(folder, shared_data, 2)]
    assert train.main(base + ["--output-dir", str(out / "full"), "--set", "train.epochs=2"]) == 0
    assert train.main(base + ["--output-dir", str(out / "half"), "--set", "train.epochs=1"]) == 0
    assert train.main(["--resume", str(out / "half" / "tiny_vse" / "fold0" / "last.pth"),
                       "--set", "train.epochs=2"]) == 0
    a, b = (torch.load(out / d / "tiny_vse" / "fold0" / "last.pth", weights_only=True)["model"]
            for d in ("full", "half"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res = json.loads((out / "full" / "tiny_vse" / "fold0" / "test.json").read_text())
    assert res["leakage"]["removed"] == [["shards", plant]] and res["n_images"] == 20
