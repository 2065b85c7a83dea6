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
train or validation image stops the run (ConfigError naming the first few). Every training-side image is then
compared with every test image by perceptual hash (``data/near_dups.py``: ``data.near_dup_hash``, default phash of
256 bits, near-duplicate at Hamming distance <= ``data.near_dup_threshold``, default 64): training images that are
near-duplicates of a test image are listed (``data/build.py`` removes them from the fold's train and val images),
near-duplicates inside training are grouped and counted. Counts and names go to the log, the run's ``test.json``
and ``summary.json``.
"""
from __future__ import annotations

import logging
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from core.config import ConfigError
from core.errors import DataError, MissingFileError
from data.near_dups import HashSpec, image_hashes, near_groups, nearest
from data.precomp import PrecompSplit, read_lines

log = logging.getLogger(__name__)
PROTOCOLS = ("random_8020", "stratified", "kfold", "fixed")
Fold = tuple[list[int], list[int]]
_LOGGED = 50  # near-duplicate names in one log line (test.json lists them all)


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


def _is_test(key: str) -> bool:
    """Split keys ``test`` and ``test/<member>`` (a union's test sets) are the test side; the rest is training."""
    return key == "test" or key.startswith("test/")


def _refs(splits: dict[str, PrecompSplit], keys: Sequence[str]) -> tuple[list[tuple[str, str]], list[Path]]:
    """(split, name) and path of every image of the splits ``keys``, each (split, name) once."""
    refs, paths, seen = [], [], set()
    for key in keys:
        sp = splits[key]
        for i, name in enumerate(sp.filenames):
            if (key, name) not in seen:
                seen.add((key, name))
                refs.append((key, name))
                paths.append(sp.image_path(i))
    return refs, paths


def near_duplicates(splits: dict[str, PrecompSplit], spec: HashSpec) -> dict:
    """Near-duplicates (``data.near_dups``) of every test image among the training-side images, and inside training.

    Returns:
        ``{"test_near_dups": [[[split, name], [test split, name], distance], ...], "near_test": [[split, name], ...],
        "train_near_dups": [[[split, name], ...], ...], "n_near_test", "n_train_near_dups", "n_hashed"}``:
        ``near_test`` are the training-side images within the threshold of some test image (sorted),
        ``test_near_dups`` pairs each with its nearest test image (the first of equals) and the distance; ``train_near_dups``
        the groups of training-side images linked by near-duplicate pairs; ``n_train_near_dups`` counts their extra
        copies (a group of k counts k - 1).
    """
    train_keys = [k for k in splits if not _is_test(k)]
    test_keys = [k for k in splits if _is_test(k)]
    tr_refs, tr_paths = _refs(splits, train_keys)
    te_refs, te_paths = _refs(splits, test_keys)
    hashes = image_hashes(tr_paths + te_paths, spec) if tr_refs else np.zeros((0, 1), np.uint64)  # no training side
    tr_h, te_h = hashes[:len(tr_refs)], hashes[len(tr_refs):]
    best, arg = nearest(tr_h, te_h)
    cross = sorted((tr_refs[i], te_refs[int(arg[i])], int(best[i])) for i in np.flatnonzero(best <= spec.threshold))
    inside = near_groups(tr_h, spec.threshold)
    return {"test_near_dups": [[list(tr), list(te), d] for tr, te, d in cross],
            "near_test": [list(tr) for tr, _, _ in cross], "n_near_test": len(cross),
            "train_near_dups": [[list(tr_refs[i]) for i in g] for g in inside],
            "n_train_near_dups": sum(len(g) - 1 for g in inside), "n_hashed": len(hashes)}


def leakage_report(splits: dict[str, PrecompSplit], near_dup: HashSpec | None = None) -> dict:
    """Images shared between splits by file name, and (with ``near_dup``) near-duplicate images by perceptual hash.

    Args:
        splits: e.g. ``{"train": ..., "val": ..., "test": ...}``; keys ``test`` and ``test/<member>`` are test sets,
            every other key is training side.
        near_dup: the hash and threshold of the content check (:func:`near_duplicates`); None: names only.

    Returns:
        ``{"by_name": {"a&b": [names]}, "n_same_name": int}`` (one ``by_name`` entry per pair of splits that share a
        name), with ``near_dup`` also ``"near_dup": spec`` and the keys of :func:`near_duplicates`.
    """
    by_name: dict[str, list[str]] = {}
    for a, b in combinations(splits, 2):
        shared = sorted(set(splits[a].filenames) & set(splits[b].filenames))
        if shared:
            by_name[f"{a}&{b}"] = shared
    out: dict = {"by_name": by_name, "n_same_name": sum(map(len, by_name.values()))}
    if near_dup is not None:
        out.update(near_dup=near_dup.describe(), **near_duplicates(splits, near_dup))
    return out


def _show(refs: Sequence[Sequence[str]]) -> str:
    return ", ".join(f"{k}:{n}" for k, n in refs)


def check_leakage(splits: dict[str, PrecompSplit], near_dup: HashSpec | None = HashSpec(), where: str = "",
                  n_listed: int = 5, remove: bool = True) -> dict:
    """:func:`leakage_report`, and stop when a test image's file name is also a training-side image.

    Near-duplicates are logged: those of test images with their names (``remove``: the caller, ``data.build``,
    drops them from training; the report's ``removed`` lists them, else it is empty), those inside training with
    their count and a few groups (some benchmarks hold copies: UCM ``102.jpg`` = ``103.jpg``, both train).

    Returns:
        the report, with ``action`` (remove | report), ``removed`` and ``n_removed`` added.

    Raises:
        ConfigError: a test file name is in train or val; the message names the first ``n_listed``.
    """
    rep = leakage_report(splits)  # names first: a shared name stops the run before any image is hashed
    leaked = sorted({n for pair, names in rep["by_name"].items() if any(map(_is_test, pair.split("&")))
                     for n in names})
    if leaked:
        raise ConfigError(f"{len(leaked)} test image(s) are also train/val images{where}: "
                          f"{', '.join(leaked[:n_listed])}{', ...' if len(leaked) > n_listed else ''}; the test "
                          "split must not share images with the training file (fix the filename lists)")
    if rep["n_same_name"]:
        log.warning("leakage check: %s share file names", {k: len(v) for k, v in rep["by_name"].items()})
    if near_dup is None:
        return rep
    rep.update(near_dup=near_dup.describe(), **near_duplicates(splits, near_dup))
    rep.update(action="remove" if remove else "report", removed=rep["near_test"] if remove else [])
    rep["n_removed"] = len(rep["removed"])
    spec = f"{near_dup.kind} {near_dup.bits} bits, Hamming distance <= {near_dup.threshold}"
    names = rep["near_test"]
    shown = f": {_show(names[:_LOGGED])}{f', ... (all {len(names)} in test.json)' if len(names) > _LOGGED else ''}"
    (log.warning if names else log.info)(
        "leakage check (%s, %d images): no test image name is in train/val; %d training image(s) are near-duplicates "
        "of a test image%s%s", spec, rep["n_hashed"], len(names),
        (" and are removed from training" if remove else " (data.near_dup_action: report, so they stay in training)")
        if names else "", shown if names else "")
    groups = rep["train_near_dups"]
    log.info("leakage check: %d near-duplicate copies inside training (%d group(s))%s", rep["n_train_near_dups"],
             len(groups), f", e.g. {'; '.join(' = '.join(f'{k}:{n}' for k, n in g) for g in groups[:3])}"
             if groups else "")
    return rep
