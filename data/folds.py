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

Leakage check (``check_leakage``, run by ``data/build.py`` for every run): a test image whose file name is also a
train or validation image stops the run (ConfigError naming the first few); byte-identical image files under
different names (SHA-1 of the files whose size another file shares) are counted and logged, and the count goes into
the run's ``test.json`` and ``summary.json``.
"""
from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from core.config import ConfigError
from core.errors import DataError, MissingFileError
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
        raise ConfigError(f"protocol 'kfold' needs data.n_folds >= 2, got {n_folds}")
    if n_folds > n:
        raise ConfigError(f"protocol 'kfold': {n_folds} folds for only {n} images")
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
        raise ConfigError("protocol 'fixed' needs data.split_dir (a folder with train_filename_verify.txt and "
                         "val_filename_verify.txt)")
    folder = Path(split_dir)
    files = {k: folder / f"{k}_filename_verify.txt" for k in ("train", "val")}
    absent = [str(p) for p in files.values() if not p.is_file()]
    if absent:
        raise MissingFileError(f"fixed split files not found: {', '.join(absent)} (train_filename_verify.txt: one "
                                "image name per line; val_filename_verify.txt: one name per caption)")
    index = {name: i for i, name in enumerate(split.filenames)}
    out = []
    for key, path in files.items():
        names = _unique_runs([n.strip() for n in read_lines(path) if n.strip()])
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DataError(f"{path}: {len(unknown)} name(s) not in split '{split.split}' of {split.folder}: "
                             f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")
        out.append(sorted(index[n] for n in names))
    both = set(out[0]) & set(out[1])
    if both:
        raise DataError(f"fixed split in {folder}: {len(both)} image(s) are in both train and val, e.g. "
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
        raise ConfigError(f"data.val_ratio must be in [0, 1), got {val_ratio}")
    if protocol == "random_8020":
        return [_random(n, val_ratio, base_seed + k) for k in range(n_folds)]
    if protocol == "stratified":
        return [_stratified(split.scenes, val_ratio, base_seed + k) for k in range(n_folds)]
    if protocol == "kfold":
        return _kfold(n, n_folds, base_seed)
    if protocol == "fixed":
        fold = _fixed(split, split_dir)
        return [fold for _ in range(n_folds)]
    raise ConfigError(f"unknown data.protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")


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


def _file_hash(path: Path, size: int) -> str | None:
    try:
        return _cached_hash(str(path), size, path.stat().st_mtime_ns)
    except OSError:
        return None


@lru_cache(maxsize=1 << 16)  # every fold of a --folds all run checks the same files
def _cached_hash(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _same_content_groups(splits: dict[str, PrecompSplit]) -> list[list[tuple[str, str]]]:
    """Groups (>= 2 different names) of byte-identical image files, each a list of (split, name).

    Only files whose size another file shares are hashed (SHA-1); empty and unreadable files are skipped.
    """
    by_size: dict[int, list[tuple[str, str, Path]]] = {}
    seen: set[tuple[str, str]] = set()
    for key, sp in splits.items():
        for i, name in enumerate(sp.filenames):
            if (key, name) in seen:
                continue
            seen.add((key, name))
            path = sp.image_path(i)
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size > 0:
                by_size.setdefault(size, []).append((key, name, path))
    by_hash: dict[str, list[tuple[str, str]]] = {}
    for size, files in by_size.items():
        if len(files) > 1:
            for key, name, path in files:
                h = _file_hash(path, size)
                if h is not None:
                    by_hash.setdefault(h, []).append((key, name))
    groups = [sorted(g) for g in by_hash.values() if len({name for _, name in g}) > 1]
    return sorted(groups)


def leakage_report(splits: dict[str, PrecompSplit], content_hash: bool = False) -> dict:
    """Images shared between splits by file name, and byte-identical image files under different names.

    Args:
        splits: e.g. ``{"train": ..., "val": ..., "test": ...}``.
        content_hash: also look for identical file contents (SHA-1 of every file whose size another file shares).

    Returns:
        ``{"by_name": {"a&b": [names]}, "same_content": [[[split, name], ...], ...], "n_same_name": int,
        "n_same_content": int, "n_same_content_test": int}``: ``by_name`` has one entry per pair of splits that
        share a name; ``same_content`` lists the groups of identical files under different names (within or across
        splits); ``n_same_content`` counts the extra copies (a group of k files counts k - 1) and
        ``n_same_content_test`` the groups that hold a test image and a train or val image.
    """
    by_name: dict[str, list[str]] = {}
    for a, b in combinations(splits, 2):
        shared = sorted(set(splits[a].filenames) & set(splits[b].filenames))
        if shared:
            by_name[f"{a}&{b}"] = shared
    groups = _same_content_groups(splits) if content_hash else []
    cross_test = [g for g in groups if {k for k, _ in g} & {"test"} and {k for k, _ in g} - {"test"}]
    return {"by_name": by_name, "same_content": [[list(x) for x in g] for g in groups],
            "n_same_name": sum(map(len, by_name.values())), "n_same_content": sum(len(g) - 1 for g in groups),
            "n_same_content_test": len(cross_test)}


def check_leakage(splits: dict[str, PrecompSplit], content_hash: bool = True, where: str = "",
                  n_listed: int = 5) -> dict:
    """:func:`leakage_report`, and stop when a test image's file name is also a train or validation image.

    Identical contents under different names are only reported (logged with their count and a few examples):
    some benchmarks hold such copies (UCM: ``102.jpg`` = ``103.jpg``, both train), and the images are the dataset's.

    Raises:
        ConfigError: a test file name is in train or val; the message names the first ``n_listed``.
    """
    rep = leakage_report(splits, content_hash)
    leaked = sorted({n for pair, names in rep["by_name"].items() if "test" in pair.split("&") for n in names})
    if leaked:
        raise ConfigError(f"{len(leaked)} test image(s) are also train/val images{where}: "
                          f"{', '.join(leaked[:n_listed])}{', ...' if len(leaked) > n_listed else ''}; the test "
                          "split must not share images with the training file (fix the filename lists)")
    if rep["n_same_name"]:
        log.warning("leakage check: %s share file names", {k: len(v) for k, v in rep["by_name"].items()})
    if content_hash:
        groups = rep["same_content"]
        show = "; ".join(" = ".join(f"{k}:{n}" for k, n in g) for g in groups[:3])
        log_fn = log.warning if rep["n_same_content_test"] else log.info
        log_fn("leakage check: no test image name is in train/val; %d identical image file(s) under other names "
               "(%d group(s) with a test image and a train/val image)%s", rep["n_same_content"],
               rep["n_same_content_test"], f", e.g. {show}" if groups else "")
    return rep
