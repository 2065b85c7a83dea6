"""Locked towers cost nothing after the first pass: their outputs, computed once per image / caption (issue 27.3).

A model declares the locked leading parts of its towers (``RetrievalModel.frozen_prefixes``). Before training,
:func:`prime_feature_caches` computes each prefix's output for every image (and caption) of the run's splits that
its :class:`core.feature_store.FeatureStore` does not hold yet, attaches the store to the model, and, with
``train.feature_cache: disk``, saves it, so later folds, resumed runs and test.py read it back instead.

When the image cache is used (``train.feature_cache`` not ``off``, a locked image prefix, and a training pipeline
that draws no random numbers and equals the evaluation one, e.g. ``data.transform: inception``), the loaders decode
no image: batches carry names, and the model reads rows by name. With a random training pipeline the image tower
runs on the augmented pixels every step (a cached feature would be of another image). Captions are keyed by their
token ids, so word deletion simply misses the cache.

Stale features are never served: the store's fingerprint is the sha256 of the locked weights plus the pipeline
(transform, size, normalisation, tokenizer), and an image row's key is its file's path, size and mtime.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from core import dist
from core.config import Config
from core.errors import ConfigError
from core.feature_store import FeatureStore, file_key, state_sha256, tokens_key
from data.build import DataBundle
from data.datasets import ImageDataset, image_collate
from data.precomp import PrecompSplit
from data.transforms import build_transform
from engine.checkpoint import unwrap

log = logging.getLogger(__name__)

MODES = ("off", "memory", "disk")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FeaturePlan:
    """Which towers' outputs are cached: ``image`` (and then no split's pixels are decoded) and ``text``."""

    image: bool = False
    text: bool = False


def feature_plan(model: nn.Module, cfg: Config) -> FeaturePlan:
    """What :func:`prime_feature_caches` will cache for ``model`` under ``cfg`` (decided before any weight loads)."""
    mode = cfg.train.feature_cache
    if mode not in MODES:
        raise ConfigError(f"{cfg.source or 'config'}: train.feature_cache must be one of {', '.join(MODES)}, "
                          f"got '{mode}'")
    prefixes = unwrap(model).frozen_prefixes()
    if mode == "off" or not prefixes:
        return FeaturePlan()
    train = build_transform(cfg.data.transform, True, cfg.data.image_size)
    evalp = build_transform(cfg.data.transform, False, cfg.data.image_size)
    same = not train.random and train.key == evalp.key and torch.equal(train.norm, evalp.norm)
    same = same and not cfg.eval.recipe  # a recipe evaluates through another pipeline than the cached one
    if "image" in prefixes and not same:
        log.info("feature cache: data.transform '%s' augments training images, so the locked image tower runs on "
                 "every batch (only deterministic pipelines such as 'inception' or 'clip' are cached)",
                 cfg.data.transform)
    return FeaturePlan(image="image" in prefixes and same, text="text" in prefixes)


def cache_folder(cfg: Config) -> Path | None:
    """Where disk stores live (None for ``memory``)."""
    if cfg.train.feature_cache != "disk":
        return None
    return Path(cfg.train.feature_cache_dir or Path(cfg.train.output_dir) / "feature_cache")


def _splits(bundle: DataBundle) -> list[tuple[str, PrecompSplit]]:
    out = [(n, getattr(bundle, n)) for n in ("train", "val") if getattr(bundle, n, None) is not None]
    return out + list(bundle.test_splits().items())


def _image_store(prefix: Any, bundle: DataBundle, cfg: Config, device: torch.device) -> FeatureStore:
    pipe = build_transform(cfg.data.transform, False, cfg.data.image_size)
    fingerprint = state_sha256(prefix.modules, f"{prefix.spec}|{cfg.data.transform}|{cfg.data.image_size}|"
                                               f"{pipe.key}|{pipe.norm.tolist()}")
    store = FeatureStore(fingerprint, cache_folder(cfg))
    store.load()
    for _, split in _splits(bundle):
        keys = [file_key(split.image_path(i)) for i in range(split.n_images)]
        todo = [i for i, k in enumerate(keys) if k not in store]
        if todo:
            sub = split.subset(todo, "feature_cache")
            loader = DataLoader(ImageDataset(sub, pipe, [0] * len(todo)), batch_size=cfg.data.eval_batch_size,
                                shuffle=False, collate_fn=image_collate, num_workers=max(0, cfg.data.num_workers))
            done = 0
            for batch in loader:
                n = len(batch["filenames"])
                out = prefix.encode({"images": batch["images"].to(device), "filenames": batch["filenames"]})
                store.add([keys[todo[done + j]] for j in range(n)], out)
                done += n
        store.alias.update({split.filenames[i]: store.rows[k] for i, k in enumerate(keys)})
    return store


def _text_store(prefix: Any, bundle: DataBundle, cfg: Config, device: torch.device) -> FeatureStore:
    tok = bundle.tokenizer
    state = {k: v for k, v in tok.state().items() if k != "words"}
    words = getattr(tok, "words", None)
    vocab = hashlib.sha256("\n".join(words).encode()).hexdigest() if words else ""
    extra = json.dumps(state, sort_keys=True, default=str) + f"|{vocab}"
    store = FeatureStore(state_sha256(prefix.modules, f"{prefix.spec}|{extra}"), cache_folder(cfg))
    store.load()
    for _, split in _splits(bundle):
        ids = [tok.encode(c) for c in split.captions]
        keys = [tokens_key(torch.tensor(x).numpy(), len(x)) for x in ids]
        todo = [j for j, k in enumerate(keys) if k not in store]
        for start in range(0, len(todo), cfg.data.eval_batch_size):
            part = todo[start:start + cfg.data.eval_batch_size]
            batch = {k: v.to(device) for k, v in tok.collate([ids[j] for j in part]).items()}
            store.add([keys[j] for j in part], prefix.encode(batch))
    return store


def prime_feature_caches(model: nn.Module, bundle: DataBundle, cfg: Config, device: torch.device,
                         plan: FeaturePlan) -> dict[str, dict]:
    """Fill (or read back) the stores of ``plan`` for every split of ``bundle`` and attach them to the model.

    Call it after the model holds its final weights (after a resume's checkpoint is loaded): the fingerprint is
    taken from them. Under DDP with a disk store, rank 0 computes and saves first and the other ranks read it.

    Returns:
        ``{"image"|"text": {"rows", "from_disk", "computed", "seconds"}}`` (logged too).
    """
    bare = unwrap(model)
    prefixes = bare.frozen_prefixes()
    wanted = [n for n in ("image", "text") if getattr(plan, n)]
    report: dict[str, dict] = {}
    if not wanted:
        return report
    shared_disk = dist.is_dist() and cache_folder(cfg) is not None
    if shared_disk and not dist.is_main():
        dist.barrier()  # rank 0 writes the stores first
    was_training = bare.training
    bare.eval()
    for name in wanted:
        t0 = time.perf_counter()
        build = _image_store if name == "image" else _text_store
        store = build(prefixes[name], bundle, cfg, device)
        prefixes[name].store = store
        if dist.is_main():
            store.save()
        report[name] = {"rows": len(store), "from_disk": store.loaded, "computed": len(store) - store.loaded,
                        "seconds": round(time.perf_counter() - t0, 2)}
        log.info("feature cache (%s): %d rows, %d read from %s, %d computed in %.1fs", name, len(store),
                 store.loaded, store.path or "memory", len(store) - store.loaded, report[name]["seconds"])
    bare.train(was_training)
    if shared_disk and dist.is_main():
        dist.barrier()
    return report


def image_rows_cover(model: nn.Module, split: PrecompSplit) -> bool:
    """True when the model's image store holds every image of ``split`` (its loader then decodes nothing)."""
    prefix = unwrap(model).frozen_prefixes().get("image")
    store = getattr(prefix, "store", None)
    return store is not None and all(n in store.alias for n in split.filenames)
