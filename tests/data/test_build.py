"""build_data / train_loader / eval_loaders / model_context on the demo set and on hand-made folders."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import build as build_mod
from data.build import build_data, eval_loaders, model_context, train_loader
from data.transforms import build_transform
from engine.train_loop import to_device
from data.demo import ensure_demo
from data.presets import DATASETS, get_preset
from core.config import ConfigError, DataCfg
from core.errors import DataError

TRAIN_KEYS = {"images", "filenames", "tokens", "lengths", "attention_mask", "img_ids", "cap_ids", "scene_ids",
              "cap_weight", "image_norm"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("data_root")
    ensure_demo(r)
    return r


def _cfg(root: Path, **kw) -> DataCfg:
    base = dict(dataset="demo", root=str(root), transform="plain", image_size=32, batch_size=8, eval_batch_size=16,
                num_workers=0, max_images=40)
    base.update(kw)
    return DataCfg(**base)


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_presets_registered():
    assert DATASETS.names() == ["demo", "nwpu", "rsicd", "rsitmd", "sydney", "ucm"]
    assert get_preset(DataCfg(dataset="rsitmd")).ext == ".tif"
    assert get_preset(DataCfg(dataset="precomp", name="mine")).stem == "mine"
    with pytest.raises(ConfigError, match="needs data.name"):
        get_preset(DataCfg(dataset="precomp"))
    with pytest.raises(ConfigError, match="unknown data.dataset 'coco'"):
        get_preset(DataCfg(dataset="coco"))


def test_build_data_fold_sizes_and_run_dir_split_files(root, tmp_path):
    before = _listing(root / "demo_precomp")
    b = build_data(_cfg(root), fold=1, run_dir=tmp_path)
    assert (b.train.n_images, b.val.n_images, b.test.n_images) == (32, 8, 40)
    assert b.train.n_captions == 160 and not set(b.train.filenames) & set(b.val.filenames)
    assert b.scene_names[-1] == "noneclass" and b.scene_names[:-1] == sorted(set(b.scene_names[:-1]))
    assert sorted(p.name for p in (tmp_path / "splits").iterdir())[1] == "train_filename_verify.txt"
    assert (tmp_path / "splits" / "val_filename_verify.txt").read_text().count("\n") == 40  # 8 images x 5
    assert _listing(root / "demo_precomp") == before  # nothing written into the data folder
    b0 = build_data(_cfg(root), fold=0)
    assert b0.val.filenames != b.val.filenames
    with pytest.raises(ConfigError, match="fold 3 requested"):
        build_data(_cfg(root, protocol="kfold", n_folds=2), fold=3)


def test_tokenizer_from_fold_or_state(root):
    b = build_data(_cfg(root, max_images=0))
    assert b.tokenizer.kind == "vocab" and 60 < len(b.tokenizer) < 150
    again = build_data(_cfg(root, max_images=0), tokenizer_state=b.tokenizer.state(), splits=("test",))
    assert again.train is None and again.val is None and again.tokenizer.words == b.tokenizer.words
    assert again.scene_names == b.scene_names
    ctx = model_context(b)
    assert ctx.vocab_words == b.tokenizer.words and ctx.vocab_size == len(b.tokenizer)
    assert ctx.scene_names == b.scene_names
    # the fold's training images (file names), none of its validation or test images; none without training data
    assert ctx.train_images == [Path(f).name for f in b.train.filenames] and len(ctx.train_images) > 0
    assert not set(ctx.train_images) & {Path(f).name for f in b.val.filenames + b.test.filenames}
    assert model_context(again).train_images is None


def test_train_loader_batch(root):
    cfg = _cfg(root)
    b = build_data(cfg)
    loader = train_loader(b, cfg, distributed=False, seed=0, deterministic=True)
    loader.sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == len(loader) == 160 // 8  # 32 train images x 5 captions, drop_last
    batch = batches[0]
    assert set(batch) == TRAIN_KEYS
    assert batch["images"].shape == (8, 3, 32, 32) and batch["images"].dtype == torch.uint8
    # the engine's to_device finishes the batch: each image equals the whole per-sample pipeline, bit for bit
    pipe = build_transform(cfg.transform, True, cfg.image_size)
    finished = to_device(dict(batch), torch.device("cpu"))
    assert "image_norm" not in finished and finished["images"].dtype == torch.float32
    for k in range(8):
        img = Image.open(b.train.image_path(int(batch["img_ids"][k]))).convert("RGB")
        assert torch.equal(finished["images"][k], pipe(img)), k  # plain: no random op
    assert batch["tokens"].dtype == torch.long and batch["tokens"].shape[0] == 8
    assert torch.equal(batch["attention_mask"].sum(1), batch["lengths"])
    assert batch["cap_weight"].tolist() == [1.0] * 8
    for k in range(8):  # every item is consistent with the split
        j, i = int(batch["cap_ids"][k]), int(batch["img_ids"][k])
        assert b.train.txt2img[j] == i and batch["filenames"][k] == b.train.filenames[i]
        assert b.scene_names[int(batch["scene_ids"][k])] == b.train.scenes[i]
        ids = b.tokenizer.encode(b.train.captions[j])
        assert batch["tokens"][k, :len(ids)].tolist() == ids
    assert sorted(int(c) for bt in batches for c in bt["cap_ids"]) == list(range(160))


def _epoch(loader, e):
    loader.sampler.set_epoch(e)
    return [(bt["cap_ids"].clone(), bt["images"].clone()) for bt in loader]


def test_order_and_augmentation_depend_only_on_seed_and_epoch(root):
    cfg = _cfg(root, transform="galr", max_images=16)
    b = build_data(cfg)
    l1 = train_loader(b, cfg, distributed=False, seed=5, deterministic=True)
    l2 = train_loader(b, cfg, distributed=False, seed=5, deterministic=True)
    torch.manual_seed(123)  # the global RNG state must not matter
    e3 = _epoch(l1, 3)
    _epoch(l2, 0)  # l2 has been through another epoch first (as a run before resuming)
    torch.manual_seed(999)
    e3b = _epoch(l2, 3)
    assert all(torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]) for a, c in zip(e3, e3b))
    e4 = _epoch(l1, 4)
    assert not torch.equal(e3[0][0], e4[0][0])
    l3 = train_loader(b, cfg, distributed=False, seed=6, deterministic=True)
    assert not torch.equal(_epoch(l3, 3)[0][0], e3[0][0])
    lw = train_loader(b, _cfg(root, transform="galr", max_images=16, num_workers=2), distributed=False, seed=5,
                      deterministic=True)
    ew = _epoch(lw, 3)  # worker processes give the same data
    assert all(torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]) for a, c in zip(e3, ew))


def test_two_ranks_concatenate_to_the_one_process_batch(root, monkeypatch):
    cfg = _cfg(root, transform="galr", max_images=16)
    b = build_data(cfg)
    one = _epoch(train_loader(b, cfg, distributed=False, seed=1, deterministic=True), 2)
    parts = []
    for r in (0, 1):
        monkeypatch.setattr(build_mod.dist, "world_size", lambda: 2)
        monkeypatch.setattr(build_mod.dist, "rank", lambda r=r: r)
        loader = train_loader(b, cfg, distributed=True, seed=1, deterministic=True)
        assert loader.batch_size == 4
        parts.append(_epoch(loader, 2))
    for (c, im), (c0, im0), (c1, im1) in zip(one, *parts):
        assert torch.equal(c, torch.cat([c0, c1])) and torch.equal(im, torch.cat([im0, im1]))


def test_loader_errors(root):
    b = build_data(_cfg(root, max_images=4))
    with pytest.raises(ConfigError, match="larger than"):
        train_loader(b, _cfg(root, batch_size=64), distributed=False, seed=0, deterministic=False)
    test_only = build_data(_cfg(root), tokenizer_state=b.tokenizer.state(), splits=("test",))
    with pytest.raises(ValueError, match="'train' split"):
        train_loader(test_only, _cfg(root), distributed=False, seed=0, deterministic=False)


def test_eval_loaders_file_order(root):
    cfg = _cfg(root, max_images=20)
    b = build_data(cfg)
    img_loader, cap_loader = eval_loaders(b.test, b, cfg)
    imgs = list(img_loader)
    caps = list(cap_loader)
    assert set(imgs[0]) == {"images", "filenames", "img_ids", "scene_ids"}
    assert set(caps[0]) == {"tokens", "lengths", "attention_mask", "cap_ids", "img_ids"}
    assert torch.cat([x["img_ids"] for x in imgs]).tolist() == list(range(20))
    assert torch.cat([x["cap_ids"] for x in caps]).tolist() == list(range(100))
    assert torch.cat([x["img_ids"] for x in caps]).tolist() == b.test.txt2img
    assert imgs[0]["images"].shape == (16, 3, 32, 32)
    first = img_loader.dataset[0]["image"]
    assert torch.equal(first, list(img_loader)[0]["images"][0])  # eval transform is deterministic


def _folder(tmp_path: Path, with_train_images: bool) -> Path:
    d = tmp_path / "mine_precomp"
    (d / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        names = [f"{split}x_{i}.png" for i in range(n)]
        (d / f"{split}_caps.txt").write_text("".join(f"a red roof number {i} .\n" for i in range(5 * n)))
        (d / f"{split}_filename.txt").write_text("".join(n_ + "\n" for n_ in names))
        if split == "test" or with_train_images:
            for n_ in names:
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / "images" / n_)
    return d


def test_any_precomp_folder_and_missing_train_images(tmp_path):
    _folder(tmp_path, with_train_images=False)
    cfg = DataCfg(dataset="precomp", name="mine", root=str(tmp_path), transform="plain", image_size=16,
                  batch_size=4, num_workers=0)
    with pytest.raises(DataError, match=r"6 of 8 image files of split\(s\) train, val, test .* trainx_2.png \(no such"):
        build_data(cfg)  # fold 0: 4 of the 6 train images for training (+ 2 val), none on disk: all named at once
    state = {"kind": "vocab", "words": ["red", "roof", "<unk>"], "max_tokens": 47, "drop_stopwords": False}
    b = build_data(cfg, tokenizer_state=state, splits=("test",))  # test-only needs no training image
    assert b.test.n_images == 2 and b.scene_names == ["trainx", "noneclass"]
    assert b.scene_ids(b.test) == [1, 1]  # a scene unseen in training maps to noneclass
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        build_data(DataCfg(dataset="rsicd", root=str(tmp_path)))


def test_fixed_protocol_on_real_names_with_max_images(shared_data, tmp_path):
    """SWAN's fixed RSITMD split through build_data (placeholder images), also when max_images cuts the file."""
    root = tmp_path / "root"
    folder = root / "rsitmd_precomp"
    folder.mkdir(parents=True)
    for f in ("train_caps.txt", "train_filename.txt", "test_caps.txt", "test_filename.txt"):
        (folder / f).symlink_to(shared_data / "precomp" / "rsitmd_precomp" / f)
    (folder / "images").mkdir()
    names = {n for f in ("train_filename.txt", "test_filename.txt")
             for n in (shared_data / "precomp" / "rsitmd_precomp" / f).read_text().split()}
    one = tmp_path / "one.tif"  # the same tiny valid image under every name (the header check opens each)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(one)
    data = one.read_bytes()
    for n in names:
        (folder / "images" / n).write_bytes(data)
    state = {"kind": "vocab", "words": ["<unk>"]}
    # one placeholder file under every name: every image is a near-duplicate of every other, so only report them
    cfg = DataCfg(dataset="rsitmd", root=str(root), protocol="fixed", near_dup_action="report",
                  split_dir=str(shared_data / "splits" / "rsitmd_fixed"))
    b = build_data(cfg, tokenizer_state=state, run_dir=tmp_path / "run")
    assert b.leakage["n_near_test"] == 3435 + 856 and b.leakage["n_removed"] == 0
    assert len(b.leakage["train_near_dups"]) == 1 and b.leakage["n_train_near_dups"] == 3435 + 856 - 1
    assert (b.train.n_images, b.val.n_images, b.test.n_images) == (3435, 856, 452)
    assert b.train.n_captions + b.val.n_captions == 21455 and len(b.scene_names) == 34
    small = build_data(dataclasses.replace(cfg, max_images=100), tokenizer_state=state)
    assert small.train.n_images + small.val.n_images == 100 and small.scene_names == b.scene_names


def test_bundle_reports_vocabulary_and_leakage(root, tmp_path):
    b = build_data(_cfg(root, max_images=0), fold=0)
    train_words = build_mod.build_tokenizer(DataCfg(), b.train.captions).words
    assert b.tokenizer.words == train_words  # the default: built from this fold's training captions only
    assert b.vocab["source"] == f"built from the training captions of fold 0 ({b.train.n_captions} captions)"
    assert (b.vocab["n_from_test"], b.vocab["n_test_only"]) == (0, 0)
    assert b.leakage["n_same_name"] == 0 and b.leakage["by_name"] == {}
    # a test image that is also a training image stops the build, naming it
    d = _folder(tmp_path, with_train_images=True)
    (d / "test_filename.txt").write_text("trainx_3.png\ntestx_1.png\n")
    cfg = DataCfg(dataset="precomp", name="mine", root=str(tmp_path), transform="plain", image_size=16, batch_size=4,
                  num_workers=0)
    with pytest.raises(ConfigError, match=r"1 test image\(s\) are also train/val images \(x.yaml\): trainx_3.png"):
        build_data(cfg, source="x.yaml")
    # a renamed copy of a test image leaves training (the fold is drawn as before: the other images keep theirs)
    (d / "test_filename.txt").write_text("testx_0.png\ntestx_1.png\n")
    before = build_data(dataclasses.replace(cfg, near_dup_action="report"))
    assert before.leakage["action"] == "report" and before.leakage["removed"] == []
    (d / "images" / "testx_1.png").write_bytes((d / "images" / "trainx_2.png").read_bytes())
    b = build_data(cfg, run_dir=tmp_path / "run")
    split = "train" if "trainx_2.png" in before.train.filenames else "val"
    assert b.leakage["test_near_dups"] == [[[split, "trainx_2.png"], ["test", "testx_1.png"], 0]]
    assert b.leakage["removed"] == [[split, "trainx_2.png"]] and b.leakage["n_removed"] == 1
    kept = [n for n in before.train.filenames + before.val.filenames if n != "trainx_2.png"]
    assert b.train.filenames + b.val.filenames == kept
    assert "trainx_2.png" not in (tmp_path / "run" / "splits" / f"{split}_filename_verify.txt").read_text()
    # report only: the copy stays where the fold put it
    r = build_data(dataclasses.replace(cfg, near_dup_action="report"))
    assert r.leakage["n_near_test"] == 1 and r.leakage["n_removed"] == 0
    assert r.train.filenames == before.train.filenames and r.val.filenames == before.val.filenames


def test_model_context_is_the_core_contract_type(root):
    from core.context import ModelContext
    from models.base import ModelContext as FromModels

    assert FromModels is ModelContext
    assert type(model_context(build_data(_cfg(root, max_images=20)))) is ModelContext
