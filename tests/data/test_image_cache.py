"""The decoded-pixel cache: cached and uncached samples are the same tensors (eval, and train under the same seed),
through the datasets and the worker processes too; a changed file, size or pipeline is never served stale; the cap
bounds every cached byte, and evaluations decode only what the cap leaves out."""
import gc
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import DataError
from data import images as images_mod
from data.datasets import CaptionTrainDataset, ImageDataset, item_seed
from data.images import PixelCache, clear_cache, fill_cache, load_image
from data.precomp import load_split
from data.tokenize import VocabTokenizer, build_vocab
from data.transforms import PIPELINES, build_transform

NAMES = ["galr", "amfmn", "pir", "fisvl", "clip", "plain", "inception"]
SIZES = [(256, 256), (80, 100), (247, 250), (256, 256)]  # UCM has a few images that are not 256 x 256


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate(SIZES):
        p = d / f"{k}.{'jpg' if k % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_registry_holds_the_six_pipelines():
    assert PIPELINES.names() == sorted(NAMES)
    assert build_transform("pir", True, 32).prefix is None  # starts with RandomResizedCrop: cache the decoded image
    assert build_transform("galr", True, 256).key != build_transform("galr", False, 256).key
    assert build_transform("plain", True, 32).key != build_transform("plain", True, 64).key


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train", [False, True])
def test_cached_equals_uncached(files, name, train):
    pipe = build_transform(name, train, 48)
    cache = PixelCache(files, pipe.prefix, pipe.key)
    for i, p in enumerate(files):
        torch.manual_seed(i)  # the same seed: the random ops draw the same numbers in the same order
        want = pipe(load_image(p))
        torch.manual_seed(i)
        got = pipe.normalize(pipe.rest(cache[i]))
        assert torch.equal(got, want), (name, train, p.name)


def test_cached_pixels_are_the_prefix_output(files):
    pipe = build_transform("galr", True, 256)
    cache = PixelCache(files, pipe.prefix, pipe.key)
    assert cache.pixels[1].shape == (278, 278, 3) and cache.pixels[1].dtype == np.uint8
    assert np.array_equal(cache.pixels[1], np.asarray(pipe.prefix(load_image(files[1]))))
    raw = PixelCache(files, None, "decoded")
    assert [a.shape[:2] for a in raw.pixels] == SIZES


def test_decoded_once_then_reused(files):
    pipe = build_transform("plain", False, 32)
    assert PixelCache(files, pipe.prefix, pipe.key).decoded == len(files)
    assert PixelCache(files, pipe.prefix, pipe.key).decoded == 0
    other = build_transform("plain", False, 40)  # another working size is another entry
    assert PixelCache(files, other.prefix, other.key).decoded == len(files)


def test_changed_file_is_not_served_stale(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (16, 16), (10, 20, 30)).save(p)
    pipe = build_transform("plain", False, 8)
    assert PixelCache([p], pipe.prefix, pipe.key)[0].getpixel((0, 0)) == (10, 20, 30)
    Image.new("RGB", (16, 16), (200, 100, 0)).save(p)
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size is possible: the mtime changes the key
    assert PixelCache([p], pipe.prefix, pipe.key)[0].getpixel((0, 0)) == (200, 100, 0)


def test_fill_cache_names_every_file_that_fails(tmp_path, files):
    good = files[0].read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 3])
    (tmp_path / "junk.png").write_bytes(b"junk")
    pipe = build_transform("plain", False, 16)
    with pytest.raises(DataError) as err:
        fill_cache([([files[0], tmp_path / "cut.png"], pipe.prefix, pipe.key), ([tmp_path / "junk.png"], None, "decoded")])
    msg = str(err.value)
    assert "2 of 3 image files" in msg and "cut.png" in msg and "junk.png" in msg and "\n" not in msg


ENTRY = 16 * 16 * 3  # bytes of one image of the plain pipeline at 16 px


def _held_bytes(*caches) -> int:
    """Bytes of the distinct pixel arrays the process keeps: the store's and every live cache's."""
    arrays = {id(a): a for a in images_mod._STORE.arrays.values()}
    arrays.update({id(a): a for c in caches for a in c.pixels if a is not None})
    return sum(a.nbytes for a in arrays.values())


def test_the_cap_bounds_every_cached_byte(files, monkeypatch):
    cap = 2 * ENTRY  # room for two images
    monkeypatch.setattr(images_mod, "_CACHE_BYTES", cap)
    pipe = build_transform("plain", False, 16)
    first = PixelCache(files, pipe.prefix, pipe.key, threads=1)
    assert [a is not None for a in first.pixels] == [True, True, False, False]  # filled in the order of the paths
    assert first.nbytes == images_mod.cache_bytes() == _held_bytes(first) == 2 * ENTRY
    for i, p in enumerate(files):  # an image left out is decoded when used: the same pixels
        assert torch.equal(pipe.normalize(pipe.rest(first[i])), pipe(load_image(p)))
    other = build_transform("plain", False, 8)
    second = PixelCache(files, other.prefix, other.key)  # the first cache's entries are pinned: no room
    assert second.nbytes == 0 and _held_bytes(first, second) == 2 * ENTRY <= cap
    del first
    gc.collect()  # its entries are unpinned, so a new cache may evict them (least recently used first)
    third = PixelCache(files, other.prefix, other.key, threads=1)
    assert third.nbytes == 4 * 8 * 8 * 3 and images_mod.cache_bytes() == 4 * 8 * 8 * 3 + ENTRY  # one 16 px left
    assert _held_bytes(second, third) <= cap
    big = build_transform("plain", False, 64)  # 12288 bytes: larger than the whole cap, never cached
    assert PixelCache(files[:1], big.prefix, big.key).nbytes == 0 and images_mod.cache_bytes() <= cap


def _count_decodes(monkeypatch) -> list:
    calls = []
    real = images_mod._open_rgb

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(images_mod, "_open_rgb", counting)
    return calls


def test_evaluations_decode_only_what_the_cap_leaves_out(split, monkeypatch):
    monkeypatch.setattr(images_mod, "_CACHE_BYTES", 3 * ENTRY)  # 3 of the split's 4 images fit
    pipe = build_transform("plain", False, 16)
    want = torch.stack([ImageDataset(split, pipe, [0] * 4)[i]["image"] for i in range(4)])
    calls = _count_decodes(monkeypatch)
    per_eval = []
    for _ in range(3):  # three evaluations: a new dataset (and cache) each, as eval_loaders builds them
        calls.clear()
        images = ImageDataset(split, pipe, [0] * 4, cache=True)
        assert torch.equal(torch.stack([images[i]["image"] for i in range(4)]), want)
        assert _held_bytes(images.images.cache) == 3 * ENTRY  # before: the dataset kept all 4 arrays
        per_eval.append(len(calls))
        del images
        gc.collect()
    # the first evaluation decodes all 4 (and the one left out again when used); later ones only that one
    assert per_eval == [5, 1, 1] and images_mod.cache_bytes() == 3 * ENTRY


def test_train_loader_keeps_the_run_pinned_under_a_tiny_cap(tmp_path, monkeypatch):
    """The real loader: the cap holds the train and val images, not the test ones; memory stays under the cap,
    evaluations of val decode nothing, the test evaluation decodes each test image once, when used."""
    from core.config import load_config
    from data.build import build_data, eval_loaders, train_loader

    folder = tmp_path / "p_precomp"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split_name, n, off in (("train", 10, 0), ("test", 3, 50)):
        names = [f"im{off + i}.png" for i in range(n)]
        for name in names:
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "images" / name)
        (folder / f"{split_name}_caps.txt").write_text("\n".join(f"a caption number {k}" for k in range(5 * n)))
        (folder / f"{split_name}_filename.txt").write_text("\n".join(names))
    sets = ["data.dataset=precomp", "data.name=p", f"data.root={tmp_path}", "data.vocab=", "data.max_images=0",
            "data.transform=plain", "data.image_size=16", "data.num_workers=0", "data.batch_size=5",
            "data.val_ratio=0.2"]
    cfg = load_config("configs/tests/tiny_vse.yaml", sets)
    bundle = build_data(cfg.data, splits=("train", "val", "test"))
    assert (bundle.train.n_images, bundle.val.n_images, bundle.test.n_images) == (8, 2, 3)
    cap = 10 * ENTRY + ENTRY // 2
    monkeypatch.setattr(images_mod, "_CACHE_BYTES", cap)
    calls = _count_decodes(monkeypatch)
    loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=False)
    assert len(calls) == 13 and images_mod.cache_bytes() == 10 * ENTRY  # all checked, train + val cached
    loader.sampler.set_epoch(0)
    assert sum(len(b["img_ids"]) for b in loader) == 40 and len(calls) == 13  # training decodes nothing
    for _ in range(2):
        calls.clear()
        images, _ = eval_loaders(bundle.val, bundle, cfg.data)
        assert sum(len(b["img_ids"]) for b in images) == 2 and calls == []
    calls.clear()
    images, _ = eval_loaders(bundle.test, bundle, cfg.data)
    assert sum(len(b["img_ids"]) for b in images) == 3 and sorted(calls) == ["im50.png", "im51.png", "im52.png"]
    assert _held_bytes(loader.dataset.images.cache, images.dataset.images.cache, *loader.dataset.pinned) <= cap


@pytest.fixture(scope="module")
def split(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("precomp")
    names = [p.name for p in files]
    (folder / "train_caps.txt").write_text("\n".join(f"caption {k} of image {i}" for i in range(4) for k in range(2)))
    (folder / "train_filename.txt").write_text("\n".join(names))
    return load_split(folder, "train", files[0].parent)


@pytest.mark.parametrize("name", ["galr", "fisvl", "plain"])
def test_train_dataset_items_are_identical_with_and_without_cache(split, name):
    tok = VocabTokenizer(build_vocab(split.captions, min_count=1))
    pipe = build_transform(name, True, 32)
    plain = CaptionTrainDataset(split, tok, pipe, [0] * 4, seed=3)
    cached = CaptionTrainDataset(split, tok, pipe, [0] * 4, seed=3, cache=True)
    assert cached.images.cache is not None and plain.images.cache is None
    for key in [(0, 0), (0, 5), (2, 5), (7, 1)]:
        assert torch.equal(plain[key]["image"], cached[key]["image"])
    if name != "plain":  # plain has no random op
        assert not torch.equal(cached[(0, 5)]["image"], cached[(1, 5)]["image"])  # still random per epoch
    assert item_seed(3, 0, 5) != item_seed(3, 1, 5)


def test_eval_dataset_through_worker_processes(split):
    pipe = build_transform("clip", False, 24)
    ref = ImageDataset(split, pipe, [0] * 4)
    loader = torch.utils.data.DataLoader(ImageDataset(split, pipe, [0] * 4, cache=True), batch_size=2,
                                         num_workers=2)
    got = torch.cat([b["image"] for b in loader])
    assert torch.equal(got, torch.stack([ref[i]["image"] for i in range(4)]))
