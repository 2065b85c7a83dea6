"""From a ``DataCfg`` to splits, a tokenizer and DataLoaders: the one entry point the engine uses.

``build_data`` reads the preset's (or any) precomp folder, draws fold ``fold`` of the configured protocol from the
training images (``data/folds.py``), writes that fold's split files into ``run_dir/splits/`` (never into the data
folder), checks that the images it will read exist, and builds the tokenizer. ``train_loader`` and
``eval_loaders`` wrap the splits in DataLoaders whose batches are the dicts of docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from core import dist
from core.config import ConfigError, DataCfg
from data.datasets import (CaptionCollate, CaptionDataset, CaptionTrainDataset, EpochSampler, ImageDataset,
                           TrainCollate, image_collate, seed_worker)
from data.caption_weights import load_caption_weights
from core.context import ModelContext
from core.errors import MissingFileError
from data.folds import check_leakage, make_folds, write_split_files
from data.near_dups import HashSpec
from data.images import check_images, fill_cache
from data.precomp import NONECLASS, PrecompSplit, load_split, truncate
from data.presets import Preset, get_preset, resolve_folders
from data.recipes import get_recipe
from data.union import concat, members as union_members, qualify
from data.tokenize import Tokenizer, build_tokenizer, tokenizer_from_state, vocab_report
from data.transforms import build_transform

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """Everything a run needs from the data side.

    Attributes:
        train, val: the fold's training and validation images (None when not requested / empty).
        test: the official test split (a union: its first member's, ``tests`` has them all).
        tokenizer: caption tokenizer (its ``state()`` goes into checkpoints).
        scene_names: scene label of each scene id: sorted scenes of the full training file, ``noneclass`` last.
        vocab: which vocabulary the tokenizer holds and how many of its words only test captions contain
            (:func:`data.tokenize.vocab_report`).
        leakage: images shared between the splits (:func:`data.folds.check_leakage`).
        tests: a union's test sets, ``test/<member>`` -> that member's test split (``data/union.py``); empty for one
            dataset.
        stream: ``data.format: webdataset``: the shards the training loader streams (``data/shards.py``).
    """

    train: PrecompSplit | None
    val: PrecompSplit | None
    test: PrecompSplit
    tokenizer: Tokenizer
    scene_names: list[str]
    vocab: dict = field(default_factory=dict)
    leakage: dict = field(default_factory=dict)
    tests: dict[str, PrecompSplit] = field(default_factory=dict)
    stream: Any = None  # data.shards.StreamInfo with data.format webdataset (then train and val are None)

    def test_splits(self) -> dict[str, PrecompSplit]:
        """The test sets: ``{"test": test}``, or for a union ``{"test/<member>": ...}`` (one per member, in order)."""
        return dict(self.tests) if self.tests else {"test": self.test}

    def split(self, name: str) -> PrecompSplit:
        """Split ``train`` / ``val`` / ``test`` / ``test/<member>`` of the bundle."""
        if name.startswith("test/"):
            if name not in self.tests:
                raise ValueError(f"no test set {name!r}; this bundle has {', '.join(self.test_splits())}")
            return self.tests[name]
        return getattr(self, name)

    def scene_ids(self, split: PrecompSplit) -> list[int]:
        """Scene id of every image of ``split`` (scenes unseen in training map to ``noneclass``)."""
        index = {s: i for i, s in enumerate(self.scene_names)}
        return [index.get(s, index[NONECLASS]) for s in split.scenes]


def _scenes(split: PrecompSplit, preset: Preset) -> PrecompSplit:
    """``split`` with the preset's own scene rule applied (UCM: the class of the image number), if it has one."""
    if preset.scene is None:
        return split
    return dataclasses.replace(split, scenes=[preset.scene(n) for n in split.filenames])


def _scene_names(scenes: Sequence[str]) -> list[str]:
    return sorted(set(scenes) - {NONECLASS}) + [NONECLASS]


def _fold_indices(full_all: PrecompSplit, full: PrecompSplit, cfg: DataCfg, fold: int,
                  where: str) -> tuple[list[int], list[int]]:
    """Train/val indices of fold ``fold`` within ``full`` (the first ``data.max_images`` images of ``full_all``)."""
    # fold k of a repeated random split is defined for any k; only kfold has exactly n_folds folds
    n_folds = cfg.n_folds if cfg.protocol == "kfold" else max(cfg.n_folds, fold + 1)
    # a fixed split names images of the whole file: resolve it there, then keep the images that max_images kept
    source = full_all if cfg.protocol == "fixed" else full
    folds = make_folds(source, cfg.protocol, n_folds, cfg.val_ratio, cfg.base_seed, cfg.split_dir)
    if not 0 <= fold < len(folds):
        raise ConfigError(f"fold {fold} requested but data.n_folds gives {len(folds)} fold(s){where}")
    tr_idx, va_idx = folds[fold]
    n = full.n_images
    return [i for i in tr_idx if i < n], [i for i in va_idx if i < n]


def near_dup_spec(cfg: DataCfg) -> HashSpec:
    """The leakage check's hash and threshold (``data.near_dup_*``)."""
    return HashSpec(cfg.near_dup_hash, cfg.near_dup_hash_size, cfg.near_dup_threshold)


def near_dup_remove(cfg: DataCfg, preset: Preset) -> bool:
    """Whether near-duplicates of test images leave training: ``data.near_dup_action``, ``auto`` = the preset's."""
    action = preset.near_dup_action if cfg.near_dup_action == "auto" else cfg.near_dup_action
    return action == "remove"


def drop_removed(full: PrecompSplit, tr_idx: Sequence[int], va_idx: Sequence[int], leakage: dict,
                 where: str = "") -> tuple[list[int], list[int]]:
    """The fold's train / val indices without the images the leakage check removed (near-duplicates of test images).

    The fold itself is drawn as before (on every image), so the other images keep their fold.

    Raises:
        ConfigError: no training image is left.
    """
    gone = {name for key, name in leakage.get("removed", []) if key in ("train", "val")}
    tr = [i for i in tr_idx if full.filenames[i] not in gone]
    va = [i for i in va_idx if full.filenames[i] not in gone]
    if tr_idx and not tr:
        raise ConfigError(f"every training image of the fold is a near-duplicate of a test image{where}; check the "
                          "test split, or raise the bar with a smaller data.near_dup_threshold")
    return tr, va


def build_data(cfg: DataCfg, fold: int = 0, run_dir: Path | None = None, tokenizer_state: dict | None = None,
               source: str = "", splits: Sequence[str] = ("train", "val", "test"),
               fold_max_images: int | None = None) -> DataBundle:
    """Load the dataset of ``cfg`` and draw fold ``fold``.

    Args:
        cfg: the ``data`` config section.
        fold: 0-based fold index of ``cfg.protocol``.
        run_dir: when given, the fold's ``*_verify.txt`` files are written to ``run_dir/splits/``.
        tokenizer_state: a saved ``Tokenizer.state()`` (test.py); otherwise ``data.vocab`` or the fold's training
            captions define the vocabulary.
        source: config file name, for error messages.
        splits: which of train / val / test are needed; with ("test",) and a tokenizer state, no training image
            is checked (the training filenames are still read for the scene names).
        fold_max_images: the ``data.max_images`` the run's folds were drawn with (test.py passes the checkpoint's).
            The fold is drawn over that many images, then ``cfg.max_images`` (when > 0) keeps the first images of
            each split, so a changed value never moves an image between train and val. None: ``cfg.max_images``
            truncates the file before the draw (training).

    Raises:
        FileNotFoundError: missing folder, text file or images (listed up front).
        ConfigError / ValueError: bad protocol settings or inconsistent files.
    """
    where = f" ({source})" if source else ""
    if cfg.format == "webdataset":
        return _stream_data(cfg, fold, tokenizer_state, where, splits)
    want_train = "train" in splits or "val" in splits or (tokenizer_state is None and cfg.tokenizer == "vocab"
                                                           and not cfg.vocab)
    sources = ([_load_source(m, label, want_train, where) for label, m in union_members(cfg, where)]
               if cfg.datasets else [_load_source(cfg, "", want_train, where)])
    if want_train and all(s.full is None for s in sources):
        names = ", ".join(str(s.folder) for s in sources)
        raise MissingFileError(f"{names} has no train_caps.txt{where}; this dataset can only be evaluated "
                                "(give a tokenizer via data.vocab / a checkpoint and use splits=('test',))")
    if cfg.datasets:  # one pool of qualified names; each member's test split on its own
        pool = [qualify(s.full, s.label) for s in sources if s.full is not None]
        full_all = full = concat(pool, "train") if pool else None
        tests = {f"test/{s.label}": qualify(s.test, s.label) for s in sources}
        folder = full.folder if full is not None else Path("+".join(s.label for s in sources))
    else:
        full_all, full, tests, folder = sources[0].full_all, sources[0].full, {"test": sources[0].test}, sources[0].folder
    train = val = None
    tr_idx: list[int] = []
    va_idx: list[int] = []
    if want_train and full is not None:
        if fold_max_images is not None and not cfg.datasets:  # test.py: the fold as the run drew it
            full = truncate(full_all, fold_max_images)
        tr_idx, va_idx = _fold_indices(full_all, full, cfg, fold, where)
        if fold_max_images is not None and cfg.max_images > 0:  # the run's fold, then its first images
            tr_idx, va_idx = tr_idx[:cfg.max_images], va_idx[:cfg.max_images]
        train = full.subset(tr_idx, "train")
        val = full.subset(va_idx, "val") if va_idx else None
        log.info("fold %d (%s, seed %d): %d train / %d val images", fold, cfg.protocol, cfg.base_seed + fold,
                 len(tr_idx), len(va_idx))
    used = [(n, sp) for n, sp in (("train", train), ("val", val)) if sp is not None and n in splits]
    used += list(tests.items())
    check_images([sp.image_path(i) for _, sp in used for i in range(sp.n_images)],  # all bad files in one error
                 f"split(s) {', '.join(n for n, _ in used)} of {folder}")
    # a test image named in train/val is an error; near-duplicates of test images leave the fold's train and val
    remove = any(near_dup_remove(cfg, s.preset) for s in sources)
    leakage = check_leakage({**{k: v for k, v in (("train", train), ("val", val)) if v is not None}, **tests},
                            near_dup_spec(cfg), where=where, remove=remove)
    if train is not None:
        tr_idx, va_idx = drop_removed(full, tr_idx, va_idx, leakage, where)
        train, val = full.subset(tr_idx, "train"), full.subset(va_idx, "val") if va_idx else None
        if run_dir is not None and dist.is_main():
            write_split_files(Path(run_dir) / "splits", full, tr_idx, va_idx)
    if tokenizer_state is not None:
        tokenizer = tokenizer_from_state(tokenizer_state)
    else:
        tokenizer = build_tokenizer(cfg, train.captions if train is not None else None,
                                    f"the training captions of fold {fold}")
    test_caps = [c for sp in tests.values() for c in sp.captions]
    vocab = vocab_report(tokenizer, full_all.captions if full_all is not None else [], test_caps)
    if "n_from_test" in vocab:
        (log.warning if vocab["n_from_test"] else log.info)(
            "vocabulary: %s, %d words; %d of them are there only thanks to test captions (%d occur in no training "
            "caption)%s", vocab["source"], vocab["n_words"], vocab["n_from_test"], vocab["n_test_only"],
            f", e.g. {', '.join(vocab['from_test_examples'][:5])}" if vocab["n_from_test"] else "")
    scene_names = _scene_names(full_all.scenes if full_all is not None else
                               [x for sp in tests.values() for x in sp.scenes])
    keep = set(splits)
    return DataBundle(train if "train" in keep else None, val if "val" in keep else None, next(iter(tests.values())),
                      tokenizer, scene_names, vocab, leakage, tests if cfg.datasets else {})


def _stream_data(cfg: DataCfg, fold: int, tokenizer_state: dict | None, where: str,
                 splits: Sequence[str]) -> DataBundle:
    """``data.format: webdataset``: training pairs from the shards of ``data.shards`` (no validation split: the
    last epoch is kept), test split(s) from ``data.dataset`` / ``data.datasets`` as for the in-memory format; the
    shard images are hashed in one pass and those near a test image are skipped by the stream."""
    from data.shards import StreamInfo, kept_counts, read_index, scan_shards

    if not cfg.shards:
        raise ConfigError(f"data.format 'webdataset' needs data.shards (a folder written by scripts/make_shards.py)"
                          f"{where}")
    if cfg.cap_weight_file:
        raise ConfigError(f"data.cap_weight_file is not supported with data.format 'webdataset'{where}")
    index = read_index(cfg.shards)
    sources = ([_load_source(m, label, False, where) for label, m in union_members(cfg, where)]
               if cfg.datasets else [_load_source(cfg, "", False, where)])
    tests = ({f"test/{s.label}": qualify(s.test, s.label) for s in sources} if cfg.datasets
             else {"test": sources[0].test})
    check_images([sp.image_path(i) for sp in tests.values() for i in range(sp.n_images)],
                 f"test split(s) {', '.join(tests)}")
    info = StreamInfo(Path(cfg.shards), index, scenes=list(index.get("scenes", [])))
    want_train = "train" in splits or tokenizer_state is None
    leakage: dict = {}
    captions: list[str] = []
    if want_train:
        spec = near_dup_spec(cfg)
        scan = scan_shards(cfg.shards, index, spec)
        captions = scan.captions
        leakage = stream_leakage(scan.names, scan.hashes, tests, spec, any(near_dup_remove(cfg, s.preset)
                                                                             for s in sources))
        info.removed = {n for _, n in leakage["removed"]}
        info.counts = kept_counts(index, scan, info.removed)
        log.info("shards %s: %d pairs of %d images in %d shard(s); %d pair(s) of removed images skipped",
                 cfg.shards, index["n_pairs"], len(scan.names), len(index["shards"]),
                 index["n_pairs"] - sum(info.counts))
    tokenizer = (tokenizer_from_state(tokenizer_state) if tokenizer_state is not None
                 else build_tokenizer(cfg, captions, f"the captions of the shards in {cfg.shards}"))
    vocab = vocab_report(tokenizer, captions, [c for sp in tests.values() for c in sp.captions])
    scene_names = _scene_names(info.scenes or [x for sp in tests.values() for x in sp.scenes])
    return DataBundle(None, None, next(iter(tests.values())), tokenizer, scene_names, vocab, leakage,
                      tests if cfg.datasets else {}, stream=info)


def stream_leakage(names: list[str], hashes: Any, tests: dict[str, PrecompSplit], spec: HashSpec,
                   remove: bool) -> dict:
    """The leakage report (``data.folds.check_leakage``'s keys) of shard images against the test images: training
    refs are ``["shards", name]``; names are not compared (a shard collection names its files its own way)."""
    import numpy as np

    from data.folds import _LOGGED
    from data.near_dups import image_hashes, near_groups, nearest

    te_refs = [(k, n) for k, sp in tests.items() for n in sp.filenames]
    te_h = image_hashes([sp.image_path(i) for sp in tests.values() for i in range(sp.n_images)], spec)
    best, arg = nearest(hashes, te_h)
    cross = sorted((("shards", names[i]), te_refs[int(arg[i])], int(best[i]))
                   for i in np.flatnonzero(best <= spec.threshold))
    groups = near_groups(hashes, spec.threshold)
    near = [list(tr) for tr, _, _ in cross]
    rep = {"by_name": {}, "n_same_name": 0, "near_dup": spec.describe(),
           "test_near_dups": [[list(tr), list(te), d] for tr, te, d in cross], "near_test": near,
           "n_near_test": len(near), "train_near_dups": [[["shards", names[i]] for i in g] for g in groups],
           "n_train_near_dups": sum(len(g) - 1 for g in groups), "n_hashed": len(names) + len(te_refs),
           "action": "remove" if remove else "report", "removed": near if remove else []}
    rep["n_removed"] = len(rep["removed"])
    shown = ", ".join(n for _, n in near[:_LOGGED]) + (f", ... (all {len(near)} in test.json)"
                                                        if len(near) > _LOGGED else "")
    (log.warning if near else log.info)(
        "leakage check (%s %d bits, distance <= %d, %d images): %d shard image(s) are near-duplicates of a test "
        "image%s%s; %d near-duplicate copies inside the shards", spec.kind, spec.bits, spec.threshold,
        rep["n_hashed"], len(near), (" and are skipped" if remove else " (kept: data.near_dup_action report)")
        if near else "", f": {shown}" if near else "", rep["n_train_near_dups"])
    return rep


@dataclass
class _Source:
    """One dataset's files: its training pool (all of it, and the first ``data.max_images``) and its test split."""

    label: str
    folder: Path
    preset: Preset
    full_all: PrecompSplit | None
    full: PrecompSplit | None
    test: PrecompSplit


def _load_source(cfg: DataCfg, label: str, want_train: bool, where: str) -> _Source:
    """Read one dataset's train (when there: its names also give the scene names) and test files; a union member
    without a train file is only tested (logged)."""
    folder, image_dir = resolve_folders(cfg)
    preset = get_preset(cfg)
    ext = preset.ext
    has_train = (folder / "train_caps.txt").is_file()
    if want_train and not has_train and label:
        log.info("union member %s (%s) has no train_caps.txt: it is only tested", label, folder)
    full_all = _scenes(load_split(folder, "train", image_dir, False, ext, cfg.encoding), preset) if has_train else None
    full = truncate(full_all, cfg.max_images) if full_all is not None else None
    test = truncate(_scenes(load_split(folder, "test", image_dir, False, ext, cfg.encoding), preset), cfg.max_images)
    return _Source(label, folder, preset, full_all, full, test)


def _loader_kwargs(cfg: DataCfg) -> dict[str, Any]:
    workers = max(0, cfg.num_workers)
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available(),
            "worker_init_fn": seed_worker}


def cache_jobs(bundle: DataBundle, cfg: DataCfg, skip: Sequence[str] = ()) -> list[tuple[list[Path], Any, str]]:
    """(paths, prefix, key) of the pixel cache: training images by the train pipeline, val/test by the eval one
    (none for the splits named in ``skip``, whose image features come from a feature cache)."""
    jobs = []
    tests = tuple(("test", t, False) for t in bundle.test_splits().values())  # a union's member test sets too
    for name, split, train in (("train", bundle.train, True), ("val", bundle.val, False), *tests):
        if split is not None and name not in skip:
            pipe = build_transform(cfg.transform, train, cfg.image_size)
            jobs.append(([split.image_path(i) for i in range(split.n_images)], pipe.prefix, pipe.key))
    return jobs


def train_loader(bundle: DataBundle, cfg: DataCfg, *, distributed: bool, seed: int,
                 deterministic: bool, pixels: bool = True, pixel_splits: Sequence[str] = ("train", "val", "test")
                 ) -> DataLoader:
    """Shuffled training loader over captions (one item per caption, ``drop_last``).

    The global ``data.batch_size`` is split over the processes. The sampler is an :class:`EpochSampler`
    (``data.samplers.GlobalBatchSampler`` with ``seed``; rank r takes the r-th slice of every global batch); call
    ``loader.sampler.set_epoch(e)`` before epoch e. Data order and augmentation depend only on (seed, epoch), in
    deterministic mode and otherwise alike.

    Args:
        bundle: from :func:`build_data` (needs ``bundle.train``).
        cfg: the data config.
        distributed: shard over the torch.distributed world.
        seed: the run seed.
        deterministic: the engine's deterministic mode (the order is reproducible either way).
        pixels: False when the model reads the training images' features from a feature cache: batches carry no
            ``images`` and no image is decoded.
        pixel_splits: the splits whose pixels the run reads (the pixel cache is filled for these only).
    """
    if bundle.stream is not None:
        return _stream_loader(bundle, cfg, distributed, seed)
    if bundle.train is None:
        raise ValueError("train_loader needs a bundle built with the 'train' split")
    world, rank = (dist.world_size(), dist.rank()) if distributed else (1, 0)
    # decode every image of the run now: a broken file in any split stops it before the first epoch; the loader's
    # dataset holds the caches, so the run's train, val and test pixels stay pinned (data/images.py) while it lives
    skip = [s for s in ("train", "val", "test") if s not in pixel_splits]  # their features are cached instead
    pinned = fill_cache(cache_jobs(bundle, cfg, skip)) if cfg.cache else []
    dataset = CaptionTrainDataset(bundle.train, bundle.tokenizer, build_transform(cfg.transform, True, cfg.image_size),
                                  bundle.scene_ids(bundle.train), seed, cfg.word_deletion,
                                  load_caption_weights(cfg.cap_weight_file, bundle.train.captions)
                                  if cfg.cap_weight_file else None, cache=cfg.cache, pixels=pixels)
    dataset.pinned = pinned
    try:
        sampler = EpochSampler(len(dataset), cfg.batch_size, seed=seed, rank=rank, world_size=world)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=sampler.local, sampler=sampler, drop_last=True,
                      collate_fn=TrainCollate(bundle.tokenizer, dataset.image_norm), generator=generator,
                      **_loader_kwargs(cfg))


def _stream_loader(bundle: DataBundle, cfg: DataCfg, distributed: bool, seed: int) -> DataLoader:
    """The loader over :class:`data.shards.ShardStream` (workers rebuilt every epoch, so they see ``set_epoch``)."""
    from data.shards import ShardStream

    world, rank = (dist.world_size(), dist.rank()) if distributed else (1, 0)
    if cfg.batch_size % world:
        raise ConfigError(f"data.batch_size {cfg.batch_size} is not divisible by the {world} processes")
    if cfg.cache:  # the test images, as for the in-memory format
        fill_cache(cache_jobs(bundle, cfg))
    pipe = build_transform(cfg.transform, True, cfg.image_size)
    dataset = ShardStream(bundle.stream, bundle.tokenizer, pipe, {s: i for i, s in enumerate(bundle.scene_names)},
                          seed, rank, world, cfg.num_workers, cfg.batch_size // world, cfg.shuffle_buffer,
                          cfg.word_deletion)
    kw = dict(_loader_kwargs(cfg), persistent_workers=False)
    return DataLoader(dataset, batch_size=cfg.batch_size // world, drop_last=True,
                      collate_fn=TrainCollate(bundle.tokenizer, dataset.image_norm), **kw)


def eval_loaders(split: PrecompSplit, bundle: DataBundle, cfg: DataCfg, recipe: str = "", pixels: bool = True
                 ) -> tuple[DataLoader, DataLoader]:
    """(images once, captions once) loaders of a split, in file order, batch ``data.eval_batch_size``.

    ``recipe`` (``eval.recipe``, data/recipes.py) replaces the eval pipeline of ``data.transform`` / ``image_size``
    and rewrites the captions before they are encoded, as that recipe's evaluation code does. ``pixels=False``: image
    batches carry names only, for a model whose image features are cached (engine/feature_cache.py)."""
    rule = get_recipe(recipe)
    transform = (build_transform(rule.transform, False, rule.image_size) if rule is not None
                 else build_transform(cfg.transform, False, cfg.image_size))
    images = ImageDataset(split, transform, bundle.scene_ids(split), cache=cfg.cache, pixels=pixels)
    captions = CaptionDataset(split, bundle.tokenizer, rule.caption if rule is not None else None)
    kw = dict(_loader_kwargs(cfg), persistent_workers=False)  # eval loaders are rebuilt per evaluation
    return (DataLoader(images, batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=image_collate, **kw),
            DataLoader(captions, batch_size=cfg.eval_batch_size, shuffle=False,  # ids are precomputed: no workers
                       collate_fn=CaptionCollate(bundle.tokenizer)))


def model_context(bundle: DataBundle) -> ModelContext:
    """The :class:`core.context.ModelContext` of the bundle: vocab words, vocab size (incl. padding), scene names and
    the file names of the fold's training images with their captions."""
    train = bundle.train
    return ModelContext(vocab_words=list(bundle.tokenizer.words) if bundle.tokenizer.words else None,
                        vocab_size=len(bundle.tokenizer), scene_names=list(bundle.scene_names),
                        train_images=[Path(f).name for f in train.filenames] if train else None,
                        train_captions=[[train.captions[j] for j in g] for g in train.img2txt] if train else None)
