"""torch Datasets, collate functions and the epoch-seeded sampler behind ``data/build.py``.

Reproducibility: the training sampler yields ``(epoch, caption_index)`` pairs. The permutation of epoch ``e`` comes
from ``torch.Generator().manual_seed(seed + e)`` (``data/samplers.py``, also with one process), and the
random augmentation and word deletion of an item are seeded from ``(seed, epoch, caption_index)``. So the data of
epoch ``e`` depends only on the seed and ``e``: a resumed run sees exactly the batches of an uninterrupted one, the
result does not depend on ``num_workers``, and with N processes the N local batches of step t, concatenated in rank
order, are the single-process batch t, item for item and augmentation for augmentation (the DDP equality).
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data.images import PixelCache, load_image  # noqa: F401  (load_image: re-exported)
from data.precomp import PrecompSplit
from data.samplers import GlobalBatchSampler
from data.tokenize import Tokenizer


class _Images:
    """Image ``i`` of a split through a transform: decoded per call, or from a :class:`data.images.PixelCache`.

    With the cache the transform's deterministic prefix ran once per image and only ``transform.rest`` runs here;
    the random ops draw the same numbers in the same order, so both ways give the same tensor. With ``uint8`` (a
    ``data.transforms.Pipeline`` only) the image stops before normalisation: uint8 [3, S, S].
    """

    def __init__(self, split: PrecompSplit, transform: Callable, cache: bool, uint8: bool = False) -> None:
        self.split, self.transform = split, transform
        self.uint8 = uint8 and hasattr(transform, "normalize")
        self.cache = None
        if cache and hasattr(transform, "rest"):
            self.cache = PixelCache([split.image_path(i) for i in range(split.n_images)], transform.prefix,
                                    transform.key)

    def __call__(self, i: int) -> torch.Tensor:
        t = self.transform
        if self.cache is not None:  # without random ops the rest is the tensor conversion: skip the PIL round trip
            x = t.rest(self.cache.tensor(i) if not t.random else self.cache[i])
        elif hasattr(t, "normalize"):
            img = load_image(self.split.image_path(i))
            x = t.rest(t.prefix(img) if t.prefix is not None else img)
        else:
            return t(load_image(self.split.image_path(i)))
        return x if self.uint8 else t.normalize(x)


def delete_words(caption: str, p: float, rng: np.random.Generator) -> str:
    """Drop each word with probability ``p``; one random word is kept when all would go (never empty)."""
    words = caption.split()
    if p <= 0 or len(words) <= 1:
        return caption
    kept = [w for w, r in zip(words, rng.random(len(words))) if r >= p]
    return " ".join(kept) if kept else words[int(rng.integers(len(words)))]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one (seed, epoch, item) triple (numpy SeedSequence mixing)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


class EpochSampler(GlobalBatchSampler):
    """:class:`data.samplers.GlobalBatchSampler` that yields ``(epoch, index)`` so items can seed their randomness.

    ``set_epoch`` must be called before each epoch (the engine does); the order of epoch e depends only on ``seed``
    and e, and with ``world_size`` processes rank r gets the r-th slice of every global batch.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((epoch, i) for i in super().__iter__())


class CaptionTrainDataset(Dataset):
    """One item per caption: the (augmented) image of that caption and its token ids.

    Args:
        split: the training split.
        tokenizer: encodes captions.
        transform: PIL image -> float tensor [3, S, S]; a ``data.transforms.Pipeline`` (needed for the cache) stops
            before its normalisation: items hold uint8 images and ``image_norm`` is what finishes them.
        scene_ids: scene id of each image of ``split``.
        seed: base of the per-item random seeds.
        word_deletion: FISVL's training-time word deletion probability.
        cap_weight: optional per-caption weights (default 1.0).
        cache: decode every image once, here, into a ``data.images.PixelCache`` (``data.cache``).
        pixels: False when the model reads this split's image features from a cache (a locked image tower,
            ``engine/feature_cache.py``): items then carry no ``image`` and no file is decoded.

    Attributes:
        pinned: pixel caches kept alive with the dataset (``data.build.train_loader`` puts the run's val and test
            caches here, so their entries stay in the pixel store between evaluations).
    """

    pinned: list = []

    def __init__(self, split: PrecompSplit, tokenizer: Tokenizer, transform: Callable, scene_ids: Sequence[int],
                 seed: int = 0, word_deletion: float = 0.0, cap_weight: Sequence[float] | None = None,
                 cache: bool = False, pixels: bool = True) -> None:
        self.split, self.tokenizer, self.transform = split, tokenizer, transform
        self.pixels = pixels
        self.images = _Images(split, transform, cache and pixels, uint8=True)
        self.image_norm = transform.norm if self.images.uint8 else None  # [2, 3] mean, std for normalize_batch
        self.scene_ids, self.seed, self.word_deletion = list(scene_ids), seed, word_deletion
        self.cap_weight = list(cap_weight) if cap_weight is not None else [1.0] * split.n_captions
        self.ids_cache = None if word_deletion > 0 else [tokenizer.encode(c) for c in split.captions]

    def __len__(self) -> int:
        return self.split.n_captions

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, j = key if isinstance(key, tuple) else (0, key)
        i = self.split.txt2img[j]
        if not self.pixels:
            image = None
        elif not getattr(self.transform, "random", True):  # nothing to seed (plain, clip): same image, less work
            image = self.images(i)
        else:
            # augmentation draws from torch's global CPU generator: seed it for this item and restore it afterwards
            # (generator-level calls: torch.manual_seed would also touch every accelerator, ~50x slower)
            state = torch.get_rng_state()
            try:
                torch.default_generator.manual_seed(item_seed(self.seed, epoch, j))
                image = self.images(i)
            finally:
                torch.set_rng_state(state)
        if self.ids_cache is not None:
            ids = self.ids_cache[j]
        else:
            s = item_seed(self.seed, epoch, j)
            ids = self.tokenizer.encode(delete_words(self.split.captions[j], self.word_deletion,
                                                     np.random.default_rng(s)))
        return {"image": image, "ids": ids, "filename": self.split.filenames[i], "img_id": i, "cap_id": j,
                "scene_id": self.scene_ids[i], "cap_weight": float(self.cap_weight[j])}


class ImageDataset(Dataset):
    """Each image of a split once, in file order (evaluation); ``pixels=False``: names only (cached features)."""

    def __init__(self, split: PrecompSplit, transform: Callable, scene_ids: Sequence[int], cache: bool = False,
                 pixels: bool = True) -> None:
        self.split, self.transform, self.scene_ids = split, transform, list(scene_ids)
        self.pixels = pixels
        self.images = _Images(split, transform, cache and pixels)

    def __len__(self) -> int:
        return self.split.n_images

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images(i) if self.pixels else None, "filename": self.split.filenames[i],
                "img_id": i, "scene_id": self.scene_ids[i]}


class CaptionDataset(Dataset):
    """Each caption of a split once, in file order (evaluation); token ids are computed once up front."""

    def __init__(self, split: PrecompSplit, tokenizer: Tokenizer, prepare: Callable[[str], str] | None = None) -> None:
        """``prepare`` rewrites each caption before it is encoded (an evaluation recipe's caption rule)."""
        self.split = split
        self.ids = [tokenizer.encode(prepare(c) if prepare is not None else c) for c in split.captions]

    def __len__(self) -> int:
        return self.split.n_captions

    def __getitem__(self, j: int) -> dict:
        return {"ids": self.ids[j], "cap_id": j, "img_id": self.split.txt2img[j]}


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` that, inside a loader worker, writes straight into shared memory (as torch's default_collate
    does): the batch then reaches the main process without a second copy.

    Images that are channel-last views ([3, H, W] over an [H, W, 3] array, as the uint8 pipelines make them) are
    stacked as [B, H, W, 3] (a plain copy, not a strided gather) and returned as the [B, 3, H, W] view of that."""
    hwc = all(x.dim() == 3 and x.shape[0] == 3 and x.stride(0) == 1 for x in images)
    parts = [x.permute(1, 2, 0) for x in images] if hwc else images
    out = None
    if torch.utils.data.get_worker_info() is not None:
        first = parts[0]
        storage = first._typed_storage()._new_shared(len(parts) * first.numel(), device=first.device)
        out = first.new(storage).resize_(len(parts), *first.shape)
    out = torch.stack(parts, out=out)
    return out.permute(0, 3, 1, 2) if hwc else out


def _long(items: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([it[key] for it in items], dtype=torch.long)


class TrainCollate:
    """Batch dict of the training loader (docs/ARCHITECTURE.md). Picklable for worker processes.

    Args:
        tokenizer: pads the token ids.
        image_norm: [2, 3] mean and std when the images are uint8 (``CaptionTrainDataset.image_norm``); it travels
            in the batch as ``image_norm`` and ``data.transforms.normalize_batch`` applies it on the device.
    """

    def __init__(self, tokenizer: Tokenizer, image_norm: torch.Tensor | None = None) -> None:
        self.tokenizer, self.image_norm = tokenizer, image_norm

    def __call__(self, items: list[dict]) -> dict:
        batch = self.tokenizer.collate([it["ids"] for it in items])
        if items[0]["image"] is not None:
            batch["images"] = stack_images([it["image"] for it in items])
        batch.update(filenames=[it["filename"] for it in items], img_ids=_long(items, "img_id"), cap_ids=_long(items, "cap_id"),
                     scene_ids=_long(items, "scene_id"),
                     cap_weight=torch.tensor([it["cap_weight"] for it in items], dtype=torch.float32))
        if self.image_norm is not None and "images" in batch:
            batch["image_norm"] = self.image_norm.clone()
        return batch


def image_collate(items: list[dict]) -> dict:
    """Batch of the evaluation image loader: ``images filenames img_ids scene_ids`` (no ``images`` without pixels)."""
    batch = {"filenames": [it["filename"] for it in items], "img_ids": _long(items, "img_id"),
             "scene_ids": _long(items, "scene_id")}
    if items[0]["image"] is not None:
        batch["images"] = stack_images([it["image"] for it in items])
    return batch


class CaptionCollate:
    """Batch of the evaluation caption loader: ``tokens lengths attention_mask cap_ids img_ids``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        batch = self.tokenizer.collate([it["ids"] for it in items])
        batch.update(cap_ids=_long(items, "cap_id"), img_ids=_long(items, "img_id"))
        return batch


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed python and numpy from the worker's torch seed (set by the loader's generator)."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
