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
from data.images import check_images, fill_cache
from data.precomp import NONECLASS, PrecompSplit, load_split, truncate
from data.presets import Preset, get_preset, resolve_folders
from data.recipes import get_recipe
from data.tokenize import Tokenizer, build_tokenizer, tokenizer_from_state, vocab_report
from data.transforms import build_transform

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """Everything a run needs from the data side.

    Attributes:
        train, val: the fold's training and validation images (None when not requested / empty).
        test: the official test split.
        tokenizer: caption tokenizer (its ``state()`` goes into checkpoints).
        scene_names: scene label of each scene id: sorted scenes of the full training file, ``noneclass`` last.
        vocab: which vocabulary the tokenizer holds and how many of its words only test captions contain
            (:func:`data.tokenize.vocab_report`).
        leakage: images shared between the splits (:func:`data.folds.check_leakage`).
    """

    train: PrecompSplit | None
    val: PrecompSplit | None
    test: PrecompSplit
    tokenizer: Tokenizer
    scene_names: list[str]
    vocab: dict = field(default_factory=dict)
    leakage: dict = field(default_factory=dict)

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
    folder, image_dir = resolve_folders(cfg)
    preset = get_preset(cfg)
    ext = preset.ext
    want_train = "train" in splits or "val" in splits or (tokenizer_state is None and cfg.tokenizer == "vocab"
                                                           and not cfg.vocab)
    has_train = (folder / "train_caps.txt").is_file()
    if want_train and not has_train:
        raise MissingFileError(f"{folder} has no train_caps.txt{where}; this dataset can only be evaluated "
                                "(give a tokenizer via data.vocab / a checkpoint and use splits=('test',))")
    full_all = _scenes(load_split(folder, "train", image_dir, False, ext, cfg.encoding), preset) if has_train else None
    train = val = None
    if want_train and full_all is not None:
        full = truncate(full_all, cfg.max_images if fold_max_images is None else fold_max_images)
        tr_idx, va_idx = _fold_indices(full_all, full, cfg, fold, where)
        if fold_max_images is not None and cfg.max_images > 0:  # the run's fold, then its first images
            tr_idx, va_idx = tr_idx[:cfg.max_images], va_idx[:cfg.max_images]
        train = full.subset(tr_idx, "train")
        val = full.subset(va_idx, "val") if va_idx else None
        log.info("fold %d (%s, seed %d): %d train / %d val images", fold, cfg.protocol, cfg.base_seed + fold,
                 len(tr_idx), len(va_idx))
        if run_dir is not None and dist.is_main():
            write_split_files(Path(run_dir) / "splits", full, tr_idx, va_idx)
    test = truncate(_scenes(load_split(folder, "test", image_dir, False, ext, cfg.encoding), preset), cfg.max_images)
    used = [(n, sp) for n, sp in (("train", train), ("val", val), ("test", test)) if sp is not None and n in splits]
    check_images([sp.image_path(i) for _, sp in used for i in range(sp.n_images)],  # all bad files in one error
                 f"split(s) {', '.join(n for n, _ in used)} of {folder}")
    # a test image named in train/val is an error; identical files under other names are counted and logged
    leakage = check_leakage({k: v for k, v in (("train", train), ("val", val), ("test", test)) if v is not None},
                            content_hash=True, where=where)
    if tokenizer_state is not None:
        tokenizer = tokenizer_from_state(tokenizer_state)
    else:
        tokenizer = build_tokenizer(cfg, train.captions if train is not None else None,
                                    f"the training captions of fold {fold}")
    vocab = vocab_report(tokenizer, full_all.captions if full_all is not None else [], test.captions)
    if "n_from_test" in vocab:
        (log.warning if vocab["n_from_test"] else log.info)(
            "vocabulary: %s, %d words; %d of them are there only thanks to test captions (%d occur in no training "
            "caption)%s", vocab["source"], vocab["n_words"], vocab["n_from_test"], vocab["n_test_only"],
            f", e.g. {', '.join(vocab['from_test_examples'][:5])}" if vocab["n_from_test"] else "")
    scene_names = _scene_names(full_all.scenes if full_all is not None else test.scenes)
    keep = set(splits)
    return DataBundle(train if "train" in keep else None, val if "val" in keep else None, test, tokenizer,
                      scene_names, vocab, leakage)


def _loader_kwargs(cfg: DataCfg) -> dict[str, Any]:
    workers = max(0, cfg.num_workers)
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available(),
            "worker_init_fn": seed_worker}


def cache_jobs(bundle: DataBundle, cfg: DataCfg, skip: Sequence[str] = ()) -> list[tuple[list[Path], Any, str]]:
    """(paths, prefix, key) of the pixel cache: training images by the train pipeline, val/test by the eval one
    (none for the splits named in ``skip``, whose image features come from a feature cache)."""
    jobs = []
    for name, split, train in (("train", bundle.train, True), ("val", bundle.val, False), ("test", bundle.test, False)):
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
