"""Training pairs streamed from webdataset tar shards (``data.format: webdataset``, ``data.shards``).

Shards (``write_shards``, ``scripts/make_shards.py``): the tar format of webdataset, open_clip and img2dataset, one
sample per image-caption pair: ``<key>.<ext>`` the image file's bytes as they were (jpg, png, tif ...; nothing is
re-encoded), ``<key>.txt`` the caption, ``<key>.json`` ``{"name", "img_id", "cap_id", "scene"}``. ``index.json``
beside them lists the shards in order with their pair counts (``{"format": "rsitr-shards-1", "shards": [{"name",
"pairs"}], "n_pairs", "n_images", "scenes", "source"}``); it is written last, so a folder without it is unfinished.

Order (``plan_epoch``): epoch e permutes the shards with ``numpy.random.default_rng([seed, e])``; with R ranks of W
loader workers each, slot ``s = rank * W + worker`` reads the shards ``perm[s::R*W]``, so every shard is read by
exactly one worker of one rank per epoch (no pair twice). Inside a slot the pairs pass a shuffle buffer
(``data.shuffle_buffer``) drawn from ``numpy.random.default_rng([seed, e, s])``, and the random augmentation of a
pair is seeded from (seed, e, its key), as the in-memory loader seeds by caption index. So the pairs of epoch e,
their order and their pixels depend only on (seed, e, R, W): a run resumed at an epoch boundary sees the batches of
an uninterrupted one. Every rank takes the same number of steps (DDP needs it): the plan gives each slot a quota of
whole local batches from the pair counts of its shards, so that every rank has ``steps`` batches, the smallest
rank's total; pairs beyond the quotas are left for that epoch (logged). With the DataLoader's workers the batches
of a rank come round-robin from its workers, the same way every run.

Memory: a worker holds its current shard's stream and the shuffle buffer, nothing else; the build step keeps only
the captions (for the vocabulary) and one 32-byte hash per image (leakage check, ``scan_shards``).
"""
from __future__ import annotations

import io
import json
import tarfile
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from core.errors import ConfigError, DataError, MissingFileError
from data.datasets import delete_words, item_seed
from data.images import to_rgb8
from data.near_dups import HashSpec, hash_bits
from data.precomp import PrecompSplit
from data.tokenize import Tokenizer

log = logging.getLogger(__name__)

FORMAT = "rsitr-shards-1"
INDEX = "index.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "tif", "tiff", "webp", "bmp")


@dataclass(frozen=True)
class Pair:
    """One image-caption pair to write: the image file, its caption and what the batch needs about it."""

    image: Path
    caption: str
    name: str
    img_id: int
    cap_id: int
    scene: str


# ------------------------------------------------------------------------------------------------ writing
def pairs_from_split(split: PrecompSplit) -> list[Pair]:
    """Every caption of a precomp split as a pair, in file order (image ``i``'s captions together)."""
    return [Pair(split.image_path(split.txt2img[j]), split.captions[j], split.filenames[split.txt2img[j]],
                 split.txt2img[j], j, split.scenes[split.txt2img[j]]) for j in range(split.n_captions)]


def pairs_from_table(path: str | os.PathLike, image_col: str = "image", caption_col: str = "caption",
                     scene: Callable[[str], str] | None = None) -> list[Pair]:
    """Pairs from a CSV or parquet table of (image path, caption), image paths relative to the table's folder.

    Rows of one image path share its ``img_id`` (first-seen order); captions keep row order.

    Raises:
        DataError: a missing column or an empty cell (file and row named); MissingFileError: no table.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"table not found: {path}")
    rows = _read_parquet(path) if path.suffix == ".parquet" else _read_csv(path)
    if rows and (image_col not in rows[0] or caption_col not in rows[0]):
        raise DataError(f"{path}: needs columns '{image_col}' and '{caption_col}', has {', '.join(rows[0])}")
    from data.precomp import scene_of

    ids: dict[str, int] = {}
    out = []
    for r, row in enumerate(rows):
        image, caption = str(row[image_col] or "").strip(), str(row[caption_col] or "").strip()
        if not image or not caption:
            raise DataError(f"{path}, row {r + 2}: empty '{image_col if not image else caption_col}'")
        name = Path(image).name
        img_id = ids.setdefault(image, len(ids))
        out.append(Pair(path.parent / image, caption, name, img_id, r, (scene or scene_of)(name)))
    return out


def _read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or give a CSV") from None
    return pq.read_table(path).to_pylist()


def write_shards(pairs: Sequence[Pair], out: str | os.PathLike, per_shard: int = 1000, source: str = "") -> dict:
    """Write ``pairs`` as tar shards of ``per_shard`` pairs into ``out`` and ``index.json`` last; return the index.

    Raises:
        DataError: ``out`` already holds shards (nothing is overwritten), an image file is missing.
    """
    import webdataset as wds

    out = Path(out)
    if (out / INDEX).exists() or any(out.glob("shard-*.tar")):
        raise DataError(f"{out} already holds shards; choose an empty folder (nothing was overwritten)")
    missing = sorted({str(p.image) for p in pairs if not p.image.is_file()})
    if missing:
        raise MissingFileError(f"{len(missing)} image file(s) not found, e.g. {', '.join(missing[:5])}")
    if per_shard < 1:
        raise ConfigError(f"--pairs-per-shard must be >= 1, got {per_shard}")
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, len(pairs), per_shard)):
        name = f"shard-{k:06d}.tar"
        tmp = out / f".{name}.part"
        # ustar: no pax header per member (a third of the reading cost of a small sample)
        with open(tmp, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0.0, format=tarfile.USTAR_FORMAT) as sink:
            for n, p in enumerate(pairs[start:start + per_shard], start):
                ext = p.image.suffix.lstrip(".").lower() or "img"
                meta = {"name": p.name, "img_id": p.img_id, "cap_id": p.cap_id, "scene": p.scene}
                sink.write({"__key__": f"{n:09d}", ext: p.image.read_bytes(), "txt": p.caption.encode("utf-8"),
                            "json": json.dumps(meta).encode("utf-8")})
        tmp.replace(out / name)
        shards.append({"name": name, "pairs": len(pairs[start:start + per_shard])})
    index = {"format": FORMAT, "shards": shards, "n_pairs": len(pairs), "n_images": len({p.img_id for p in pairs}),
             "scenes": sorted({p.scene for p in pairs}), "source": source}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return index


# ------------------------------------------------------------------------------------------------ reading
def read_index(folder: str | os.PathLike, key: str = "data.shards") -> dict:
    """``index.json`` of a shard folder, checked (format, shards present).

    Raises:
        MissingFileError: no folder, no index or a listed shard missing; DataError: a malformed index.
    """
    folder = Path(folder)
    path = folder / INDEX
    if not path.is_file():
        raise MissingFileError(f"{key}: {path} not found (write shards with scripts/make_shards.py; a folder "
                               "without index.json is unfinished)")
    try:
        index = json.loads(path.read_text())
        ok = index.get("format") == FORMAT and all(isinstance(s["pairs"], int) for s in index["shards"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise DataError(f"{path}: not an rsitr shard index (format {FORMAT})")
    absent = [s["name"] for s in index["shards"] if not (folder / s["name"]).is_file()]
    if absent:
        raise MissingFileError(f"{key}: {len(absent)} shard(s) listed in {path} are missing: {', '.join(absent[:5])}")
    return index


def iter_samples(paths: Iterable[Path]) -> Iterator[dict]:
    """Samples of tar shards in order, as webdataset groups them (``__key__`` and one bytes entry per extension)."""
    from webdataset.tariterators import tarfile_samples

    yield from tarfile_samples({"url": str(p)} for p in paths)


def _meta(sample: dict, where: str) -> dict:
    try:
        return json.loads(sample["json"])
    except (KeyError, json.JSONDecodeError):
        raise DataError(f"{where}: sample {sample.get('__key__')} has no valid .json entry") from None


def _image_bytes(sample: dict, where: str) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise DataError(f"{where}: sample {sample.get('__key__')} has no image entry ({', '.join(IMAGE_EXTS)})")


def decode(data: bytes, where: str) -> Image.Image:
    """Image bytes of a sample as 8-bit RGB (the rule of ``data.images``)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return to_rgb8(img)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode image {where}: {str(e).splitlines()[0][:120]}") from None


@dataclass
class Scan:
    """What the build step reads from the shards once: captions, per-image hashes, per-shard counts."""

    captions: list[str]
    names: list[str]  # unique image names, first-seen order
    hashes: np.ndarray  # [len(names), words] (empty without a hash spec)
    pairs_of: dict[str, list[int]]  # image name -> [shard index of each of its pairs]
    scenes: list[str]


_SCANS: dict[tuple, Scan] = {}


def scan_shards(folder: str | os.PathLike, index: dict, spec: HashSpec | None) -> Scan:
    """One pass over every shard (remembered per folder, index and hash for the life of the process)."""
    folder = Path(folder)
    key = (str(folder.resolve()), json.dumps(index["shards"]), spec)
    if key in _SCANS:
        return _SCANS[key]
    captions, names, hashes, scenes = [], [], [], set()
    pairs_of: dict[str, list[int]] = {}
    for k, s in enumerate(index["shards"]):
        where = f"{folder / s['name']}"
        for sample in iter_samples([folder / s["name"]]):
            meta = _meta(sample, where)
            captions.append(sample.get("txt", b"").decode("utf-8"))
            name = str(meta["name"])
            if name not in pairs_of:
                names.append(name)
                scenes.add(str(meta.get("scene", "")))
                if spec is not None:
                    hashes.append(hash_bits(decode(_image_bytes(sample, where), f"{where}:{sample['__key__']}"), spec))
            pairs_of.setdefault(name, []).append(k)
    words = (spec.bits + 63) // 64 if spec is not None else 1
    scan = Scan(captions, names, np.stack(hashes) if hashes else np.zeros((0, words), np.uint64), pairs_of,
                sorted(scenes))
    _SCANS[key] = scan
    return scan


def kept_counts(index: dict, scan: Scan, removed: set[str]) -> list[int]:
    """Pairs of every shard that the stream yields (the pairs of removed images are skipped)."""
    counts = [s["pairs"] for s in index["shards"]]
    for name in removed:
        for k in scan.pairs_of.get(name, []):
            counts[k] -= 1
    return counts


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Plan:
    """One epoch: the shards of every slot (rank * workers + worker), its quota of local batches, the steps."""

    shards: list[list[int]]
    quotas: list[int]
    steps: int


def plan_epoch(counts: Sequence[int], epoch: int, seed: int, world: int, workers: int, local_batch: int) -> Plan:
    """Shards and batch quotas of every slot for ``epoch`` (see the module docstring).

    Raises:
        ConfigError: some rank gets no complete batch (fewer shards than ranks x workers, or too few pairs).
    """
    slots = world * workers
    perm = np.random.default_rng([seed & 0xFFFFFFFF, epoch]).permutation(len(counts)).tolist()
    shards = [perm[s::slots] for s in range(slots)]
    avail = [sum(counts[k] for k in sh) // local_batch for sh in shards]
    steps = min(sum(avail[r * workers:(r + 1) * workers]) for r in range(world))
    if steps == 0:
        raise ConfigError(f"data.shards: {len(counts)} shard(s) with {sum(counts)} pairs give some rank no batch of "
                          f"{local_batch} ({world} rank(s) x {workers} worker(s) read disjoint shards); write more, "
                          "smaller shards (make_shards.py --pairs-per-shard) or use fewer workers")
    quotas = []
    for r in range(world):  # take the rank's steps from its workers, the fullest first (ties: lower worker)
        mine = list(avail[r * workers:(r + 1) * workers])
        take = [0] * workers
        for _ in range(steps):
            w = max(range(workers), key=lambda i: (mine[i] - take[i], -i))
            take[w] += 1
        quotas += take
    return Plan(shards, quotas, steps)


def buffer_shuffle(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """A seeded shuffle buffer: keep ``size`` items, yield a random one as each new one arrives, then the rest."""
    buf: list = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        k = int(rng.integers(len(buf)))
        buf[k], it = it, buf[k]
        yield it
    for k in rng.permutation(len(buf)).tolist():
        yield buf[k]


# ------------------------------------------------------------------------------------------------ the stream
@dataclass
class StreamInfo:
    """What a bundle holds for ``data.format: webdataset``: the folder, its index, the removed images, the counts."""

    folder: Path
    index: dict
    removed: set[str] = field(default_factory=set)
    counts: list[int] = field(default_factory=list)
    scenes: list[str] = field(default_factory=list)


class ShardStream(IterableDataset):
    """The training pairs of the shards, one item per pair, in the order of :func:`plan_epoch` (items as
    ``data.datasets.CaptionTrainDataset`` makes them). Call ``set_epoch(e)`` before each epoch (the engine does);
    with loader workers the loader must not keep them (``persistent_workers=False``), so they see the epoch."""

    def __init__(self, info: StreamInfo, tokenizer: Tokenizer, transform: Callable, scene_index: dict[str, int],
                 seed: int, rank: int, world: int, workers: int, local_batch: int, buffer: int,
                 word_deletion: float = 0.0) -> None:
        self.info, self.tokenizer, self.transform, self.scene_index = info, tokenizer, transform, scene_index
        self.seed, self.rank, self.world, self.workers = seed, rank, world, max(1, workers)
        self.local_batch, self.buffer, self.word_deletion = local_batch, buffer, word_deletion
        self.uint8 = hasattr(transform, "normalize")
        self.image_norm = transform.norm if self.uint8 else None
        self.epoch = 0
        self.plan = plan_epoch(info.counts, 0, seed, world, self.workers, local_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.plan = plan_epoch(self.info.counts, epoch, self.seed, self.world, self.workers, self.local_batch)

    def __len__(self) -> int:
        return self.plan.steps * self.local_batch

    def slot_items(self, worker: int) -> Iterator[dict]:
        """The items of this rank's worker ``worker`` for the current epoch (its quota, shuffled)."""
        slot = self.rank * self.workers + worker
        quota = self.plan.quotas[slot] * self.local_batch
        paths = [self.info.folder / self.info.index["shards"][k]["name"] for k in self.plan.shards[slot]]
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, slot])
        metas = ((s, _meta(s, "shard")) for s in iter_samples(paths))
        kept = ((s, m) for s, m in metas if str(m["name"]) not in self.info.removed)
        for n, (sample, meta) in enumerate(buffer_shuffle(kept, self.buffer, rng)):
            if n >= quota:
                return
            yield self.item(sample, meta)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"ShardStream planned for {self.workers} workers, loader has {info.num_workers}")
        return self.slot_items(info.id if info is not None else 0)

    def item(self, sample: dict, meta: dict) -> dict:
        key = int(sample["__key__"])
        where = f"shard sample {sample['__key__']} ({meta['name']})"
        img = decode(_image_bytes(sample, where), where)
        t = self.transform
        state = torch.get_rng_state()
        try:  # seeded per (seed, epoch, pair), as the in-memory loader seeds per caption
            torch.default_generator.manual_seed(item_seed(self.seed, self.epoch, key))
            if self.uint8:
                image = t.rest(t.prefix(img) if t.prefix is not None else img)
            else:
                image = t(img)
        finally:
            torch.set_rng_state(state)
        caption = sample.get("txt", b"").decode("utf-8")
        if self.word_deletion > 0:
            caption = delete_words(caption, self.word_deletion,
                                   np.random.default_rng(item_seed(self.seed, self.epoch, key)))
        return {"image": image, "ids": self.tokenizer.encode(caption), "filename": str(meta["name"]),
                "img_id": int(meta["img_id"]), "cap_id": int(meta["cap_id"]),
                "scene_id": self.scene_index.get(str(meta.get("scene", "")), self.scene_index.get("noneclass", 0)),
                "cap_weight": 1.0}
