"""Seeded train/val protocols over the training images, split files, and a leakage check (METHODS.md A3, D1).

Upstream (xiaoyuan1996/GaLR and AMFMN ``k_fold`` option, mcx-mcx/KAMCL, kinshingpoon/SWAN-pytorch) draws each
"fold" as an unseeded random 80/20 split of the train images and overwrites the split files in the shared data
folder (METHODS.md D1). Here every protocol is a pure function of its arguments, folds are returned as image index
lists (sorted, so subsets keep file order), and split files are written only where the caller says (the run dir).

* ``random_8020``: fold k shuffles the N images with ``numpy.random.Generator(PCG64(base_seed + k))`` and takes
  the first ``int((1 - val_ratio) N)`` as train (RSITMD 3432/859, RSICD 7862/1966 as upstream).
* ``stratified``: SWAN's ``--step_sample``; per scene c (sorted scene names, ``noneclass`` included) the images of c
  are shuffled and ``round((1 - val_ratio) n_c)`` go to train (RSITMD 3435/856, SWAN's committed split).
* ``kfold``: one shuffle with ``base_seed``, cut into ``n_folds`` near-equal disjoint parts; fold k validates on
  part k (a true partition; ``val_ratio`` is unused).
* ``fixed``: ``split_dir/train_filename_verify.txt`` (one line per image) and ``val_filename_verify.txt`` (one line
  per caption, upstream format); every fold is that same split.
"""
from __future__ import annotations

import hashlib
import logging
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from data.precomp import PrecompSplit, read_lines

log = logging.getLogger(__name__)
PROTOCOLS = ("random_8020", "stratified", "kfold", "fixed")
Fold = tuple[list[int], list[int]]


def _random(n: int, val_ratio: float, seed: int) -> Fold:
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int((1 - val_ratio) * n)
    return sorted(perm[:n_train].tolist()), sorted(perm[n_train:].tolist())


def _stratified(scenes: Sequence[str], val_ratio: float, seed: int) -> Fold:
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for scene in sorted(set(scenes)):
        members = np.array([i for i, s in enumerate(scenes) if s == scene])
        members = members[rng.permutation(len(members))]
        n_train = int(round((1 - val_ratio) * len(members)))
        train += members[:n_train].tolist()
        val += members[n_train:].tolist()
    return sorted(train), sorted(val)


def _kfold(n: int, n_folds: int, seed: int) -> list[Fold]:
    if n_folds < 2:
        raise ValueError(f"protocol 'kfold' needs data.n_folds >= 2, got {n_folds}")
    if n_folds > n:
        raise ValueError(f"protocol 'kfold': {n_folds} folds for only {n} images")
    parts = np.array_split(np.random.default_rng(seed).permutation(n), n_folds)
    folds = []
    for k in range(n_folds):
        val = sorted(parts[k].tolist())
        val_set = set(val)
        folds.append(([i for i in range(n) if i not in val_set], val))
    return folds


def _unique_runs(names: list[str]) -> list[str]:
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def _fixed(split: PrecompSplit, split_dir: str) -> Fold:
    if not split_dir:
        raise ValueError("protocol 'fixed' needs data.split_dir (a folder with train_filename_verify.txt and "
                         "val_filename_verify.txt)")
    folder = Path(split_dir)
    files = {k: folder / f"{k}_filename_verify.txt" for k in ("train", "val")}
    absent = [str(p) for p in files.values() if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"fixed split files not found: {', '.join(absent)} (train_filename_verify.txt: one "
                                "image name per line; val_filename_verify.txt: one name per caption)")
    index = {name: i for i, name in enumerate(split.filenames)}
    out = []
    for key, path in files.items():
        names = _unique_runs([n.strip() for n in read_lines(path) if n.strip()])
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} name(s) not in split '{split.split}' of {split.folder}: "
                             f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")
        out.append(sorted(index[n] for n in names))
    both = set(out[0]) & set(out[1])
    if both:
        raise ValueError(f"fixed split in {folder}: {len(both)} image(s) are in both train and val, e.g. "
                         f"{split.filenames[min(both)]}")
    unused = split.n_images - len(out[0]) - len(out[1])
    if unused:
        log.info("fixed split %s leaves %d of %d images unused", folder, unused, split.n_images)
    return out[0], out[1]


def make_folds(split: PrecompSplit, protocol: str, n_folds: int, val_ratio: float, base_seed: int,
               split_dir: str = "") -> list[Fold]:
    """Train/val image indices of every fold.

    Args:
        split: the full training split (train + val images).
        protocol: random_8020 | stratified | kfold | fixed.
        n_folds: number of folds returned (>= 1).
        val_ratio: share of images for validation (random_8020, stratified).
        base_seed: fold k is drawn with seed ``base_seed + k`` (kfold: one shuffle with ``base_seed``).
        split_dir: folder of the fixed split files.

    Returns:
        ``n_folds`` pairs (train indices, val indices), each sorted ascending.
    """
    n = split.n_images
    n_folds = max(1, n_folds)
    if protocol in ("random_8020", "stratified") and not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"data.val_ratio must be in [0, 1), got {val_ratio}")
    if protocol == "random_8020":
        return [_random(n, val_ratio, base_seed + k) for k in range(n_folds)]
    if protocol == "stratified":
        return [_stratified(split.scenes, val_ratio, base_seed + k) for k in range(n_folds)]
    if protocol == "kfold":
        return _kfold(n, n_folds, base_seed)
    if protocol == "fixed":
        fold = _fixed(split, split_dir)
        return [fold for _ in range(n_folds)]
    raise ValueError(f"unknown data.protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")


def write_split_files(out_dir: Path, split: PrecompSplit, train_idx: Sequence[int], val_idx: Sequence[int]) -> None:
    """Write the upstream ``*_verify.txt`` files of one fold into ``out_dir``.

    ``train_filename_verify.txt`` has one line per image, ``val_filename_verify.txt`` one line per caption (the name
    repeated for each of its captions), ``{train,val}_caps_verify.txt`` the captions of those images in order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, idx, per_caption in (("train", train_idx, False), ("val", val_idx, True)):
        names, caps = [], []
        for i in idx:
            group = split.img2txt[i]
            caps += [split.captions[j] for j in group]
            names += [split.filenames[i]] * (len(group) if per_caption else 1)
        (out_dir / f"{key}_filename_verify.txt").write_text("".join(n + "\n" for n in names))
        (out_dir / f"{key}_caps_verify.txt").write_text("".join(c + "\n" for c in caps))


def _file_hash(path: Path) -> str | None:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


def leakage_report(splits: dict[str, PrecompSplit], content_hash: bool = False) -> dict:
    """Images shared between splits, by filename and (optionally) by file content.

    Args:
        splits: e.g. ``{"train": ..., "val": ..., "test": ...}``.
        content_hash: also hash every image file (SHA-1) and report identical contents under any names.

    Returns:
        ``{"by_name": {"a&b": [names]}, "by_hash": {"a&b": [[name_in_a, name_in_b], ...]}, "n_shared": int}``
        with one entry per pair of splits that share something; ``n_shared`` counts all reported pairs.
    """
    by_name: dict[str, list[str]] = {}
    by_hash: dict[str, list[list[str]]] = {}
    hashes: dict[str, dict[str, str]] = {}
    if content_hash:
        for key, sp in splits.items():
            hashes[key] = {}
            for i, name in enumerate(sp.filenames):
                h = _file_hash(sp.image_path(i))
                if h is not None:
                    hashes[key].setdefault(h, name)
    for a, b in combinations(splits, 2):
        shared = sorted(set(splits[a].filenames) & set(splits[b].filenames))
        if shared:
            by_name[f"{a}&{b}"] = shared
        if content_hash:
            common = sorted(set(hashes[a]) & set(hashes[b]))
            if common:
                by_hash[f"{a}&{b}"] = [[hashes[a][h], hashes[b][h]] for h in common]
    n_shared = sum(map(len, by_name.values())) + sum(map(len, by_hash.values()))
    if n_shared:
        log.warning("leakage check: %s", {k: len(v) for k, v in {**by_name, **by_hash}.items()})
    return {"by_name": by_name, "by_hash": by_hash, "n_shared": n_shared}
