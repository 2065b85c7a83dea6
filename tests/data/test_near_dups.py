"""Perceptual-hash leakage control (data/near_dups.py, data/folds.py, data/build.py): the pair search against brute
force, altered copies of real UCM images planted under other names are all found and removed from training, and
different UCM images of one class do not collide at the default threshold."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import ConfigError, DataCfg, load_config
from data import near_dups
from data.build import build_data
from data.images import load_image
from data.near_dups import ALTERATIONS, HashSpec, close_pairs, groups_of, hash_bits, image_hashes
from data.precomp import load_split
from data.presets import UCM_CLASSES

SPEC = HashSpec()  # the defaults: phash, 256 bits, distance <= 64


def _brute(a: np.ndarray, b: np.ndarray | None, t: int) -> list[tuple[int, int, int]]:
    """Every pair by Python integers: the bits of each hash as one int, distance = popcount of the XOR."""
    ints = lambda h: [sum(int(w) << (64 * k) for k, w in enumerate(row)) for row in h]  # noqa: E731
    ia = ints(a)
    ib = ia if b is None else ints(b)
    out = []
    for i, x in enumerate(ia):
        for j, y in enumerate(ib):
            if (b is not None or i < j) and (x ^ y).bit_count() <= t:
                out.append((i, j, (x ^ y).bit_count()))
    return out


def test_close_pairs_match_brute_force(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, (120, 4), dtype=np.uint64)
    b = rng.integers(0, 2**63, (70, 4), dtype=np.uint64)
    for k in range(0, 120, 7):  # plant close copies: a few bits flipped
        flips = rng.choice(256, int(rng.integers(0, 80)), replace=False)
        row = a[k].copy()
        for f in flips:
            row[f // 64] ^= np.uint64(1) << np.uint64(f % 64)
        if k % 2:
            b[k % 70] = row
        else:
            a[(k + 3) % 120] = row
    monkeypatch.setattr(near_dups, "_BLOCK", 300)  # many small blocks: the block edges are exercised
    for t in (0, 40, 64, 100):
        assert close_pairs(a, b, t) == _brute(a, b, t)
        assert close_pairs(a, None, t) == _brute(a, None, t)
    assert close_pairs(a[:0], b, 64) == [] and close_pairs(a[:1], None, 64) == []


def test_groups_of_links_chains():
    assert groups_of([(0, 5, 3), (5, 9, 1), (2, 3, 0)]) == [[0, 5, 9], [2, 3]]
    assert groups_of([]) == []


def test_hash_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="data.near_dup_threshold must be in \\[0, 64\\)"):
        HashSpec("phash", 8, 64).check()
    with pytest.raises(ConfigError, match="data.near_dup_hash must be one of"):
        HashSpec("md5").check()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {near_dup_hash_size: 8, near_dup_threshold: 64}\n")
    with pytest.raises(ConfigError, match="'data.near_dup_threshold' must be < 64"):
        load_config(cfg)
    cfg.write_text("data: {near_dup_hash: sha1}\n")
    with pytest.raises(ConfigError, match="'data.near_dup_hash' must be one of phash, dhash, ahash, whash"):
        load_config(cfg)
    assert load_config(cfg, ["data.near_dup_hash=dhash"]).data.near_dup_hash == "dhash"


def _smooth(rng: np.random.Generator) -> Image.Image:
    """A smooth random 256 px picture (UCM's size; 16 x 16 noise, bicubic upsampled): two of them hash unrelated."""
    small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return small.resize((256, 256), Image.BICUBIC)


def test_altered_copies_of_synthetic_images_are_near_and_others_far():
    rng = np.random.default_rng(1)
    images = [_smooth(rng) for _ in range(12)]
    h = np.stack([hash_bits(im, SPEC) for im in images])
    assert close_pairs(h, None, SPEC.threshold) == []
    for name, alter in ALTERATIONS.items():
        copies = np.stack([hash_bits(alter(im), SPEC) for im in images])
        found = close_pairs(copies, h, SPEC.threshold)
        assert [(i, j) for i, j, _ in found] == [(i, i) for i in range(12)], name


def _ucm(shared_data: Path) -> Path:
    folder = shared_data / "ucm" / "ucm_precomp"
    if not (folder / "images").is_dir():
        pytest.skip("../shared/data/ucm is not available")
    return folder


def test_ucm_images_of_one_class_do_not_collide(shared_data):
    """Three whole UC Merced classes (100 images each, same-class images look alike): at the default threshold the
    only pair is 102.jpg / 103.jpg, byte-identical files (the same image twice in UCM-Captions)."""
    folder = _ucm(shared_data)
    numbers = [n for c in ("agricultural", "airplane", "denseresidential")
               for n in range(100 * UCM_CLASSES.index(c) + 1, 100 * UCM_CLASSES.index(c) + 101)]
    paths = [folder / "images" / f"{n}.jpg" for n in numbers]
    pairs = close_pairs(image_hashes(paths, SPEC), None, SPEC.threshold)
    assert [(numbers[i], numbers[j], d) for i, j, d in pairs] == [(102, 103, 0)]
    assert (folder / "images" / "102.jpg").read_bytes() == (folder / "images" / "103.jpg").read_bytes()


def _mix_folder(shared_data: Path, tmp_path: Path, n_train: int = 24, n_test: int = 8,
                originals: int = 3) -> tuple[Path, dict[str, str]]:
    """``tmp_path/mix_precomp``: real UCM train and test images (bytes copied, real captions), and, among the
    training images, every alteration of the first ``originals`` test images, each under a new name ``plant_*``.

    Returns the folder and {planted name: test image it copies}."""
    ucm = _ucm(shared_data)
    train, test = (load_split(ucm, s, check_images=False) for s in ("train", "test"))
    d = tmp_path / "mix_precomp"
    (d / "images").mkdir(parents=True)
    planted: dict[str, str] = {}
    names, caps = [], []
    for i in range(n_train):
        names.append(train.filenames[i])
        caps += [train.captions[j] for j in train.img2txt[i]]
        (d / "images" / train.filenames[i]).write_bytes(train.image_path(i).read_bytes())
    for i in range(originals):
        img = load_image(test.image_path(i))
        for k, (alt, fn) in enumerate(ALTERATIONS.items()):
            name = f"plant_{i}_{k}.png"  # lossless: the file holds the altered pixels exactly
            fn(img).save(d / "images" / name)
            planted[name] = test.filenames[i]
            names.append(name)
            caps += [f"a planted copy {alt} ."] * 5
    (d / "train_filename.txt").write_text("".join(n + "\n" for n in names))
    (d / "train_caps.txt").write_text("".join(c + "\n" for c in caps))
    tnames, tcaps = [], []
    for i in range(n_test):
        (d / "images" / test.filenames[i]).write_bytes(test.image_path(i).read_bytes())
        tnames += [test.filenames[i]] * len(test.img2txt[i])
        tcaps += [test.captions[j] for j in test.img2txt[i]]
    (d / "test_filename.txt").write_text("".join(n + "\n" for n in tnames))
    (d / "test_caps.txt").write_text("".join(c + "\n" for c in tcaps))
    return d, planted


def test_planted_altered_ucm_copies_are_found_and_removed(shared_data, tmp_path, caplog):
    d, planted = _mix_folder(shared_data, tmp_path)
    cfg = DataCfg(dataset="precomp", name="mix", root=str(tmp_path), transform="plain", image_size=32,
                  num_workers=0)
    with caplog.at_level("INFO"):
        b = build_data(cfg, run_dir=tmp_path / "run")
    leak = b.leakage
    assert leak["action"] == "remove" and leak["n_same_name"] == 0
    # every planted copy is found, next to the test image it was made from, and nothing else is
    assert sorted((tr[1], te[1]) for tr, te, _ in leak["test_near_dups"]) == sorted(planted.items())
    assert all(dist <= SPEC.threshold for _, _, dist in leak["test_near_dups"])
    assert sorted(n for _, n in leak["removed"]) == sorted(planted) and leak["n_removed"] == len(planted) == 30
    kept = b.train.filenames + b.val.filenames
    assert not set(kept) & set(planted) and len(kept) == 24  # the real training images all stay
    written = (tmp_path / "run" / "splits" / "train_filename_verify.txt").read_text().split()
    assert sorted(written) == sorted(b.train.filenames)
    # inside training: only planted copies group, each group the copies of one test image
    for group in leak["train_near_dups"]:
        assert len({planted.get(n, n) for _, n in group}) == 1 and all(n in planted for _, n in group)
    assert "30 training image(s) are near-duplicates of a test image and are removed from training" in caplog.text
    assert "plant_0_0.png" in caplog.text
    # a second hash setting is honoured (dhash, 64 bits); with report the copies stay in training
    r = build_data(dataclasses.replace(cfg, near_dup_action="report", near_dup_hash="dhash", near_dup_hash_size=8,
                                       near_dup_threshold=16))
    assert r.leakage["near_dup"] == {"hash": "dhash", "hash_size": 8, "bits": 64, "threshold": 16}
    assert r.leakage["removed"] == [] and len(r.train.filenames + r.val.filenames) == 54
