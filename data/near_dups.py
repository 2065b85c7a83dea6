"""Near-duplicate images by perceptual hash: the content half of the leakage check (``data/folds.py``).

Hash (``data.near_dup_hash``, ``data.near_dup_hash_size``): an image is decoded by ``data.images.load_image`` (the
8-bit RGB rule of every loader) and hashed with the ``imagehash`` library. The default is ``phash`` with
``hash_size`` 16: imagehash's perceptual hash of the 64 x 64 grey image (the 16 x 16 lowest DCT frequencies, each
bit "above the median"), 256 bits. ``dhash`` (gradient), ``ahash`` (mean) and ``whash`` (Haar wavelet) are the
library's other hashes; each gives ``hash_size ** 2`` bits.

Near-duplicate: two images whose hashes differ in at most ``data.near_dup_threshold`` bits (default 64 of 256).
Measured on the 2100 real UCM images (``python bench/bench_near_dups.py --root ../shared/data/ucm``): no pair of
different images is within 64 bits (0 false positives in 2,203,949 pairs; the closest two are 74 bits apart; the
only pair within is 102.jpg / 103.jpg, the same file twice), while altered copies of 300 images stay close to their
original: re-encoded as JPEG quality 30 at most 44 bits, resized by 0.5 / 0.75 / 1.5 at most 14, 2 or 4 pixels
cropped from every side 48 / 56, brightness x0.7 / x1.3 22 / 56; 8 pixels cropped from one side 68 (299 of 300
found). A 64-bit phash (``hash_size`` 8) cannot separate them: two different UCM images come within 8 bits while a
4-pixel crop moves up to 12; dhash, ahash and whash do worse (the bench prints the comparison).

Speed: hashes are remembered per (path, size, mtime, hash, size) for the life of the process (every fold of a
``--folds all`` run and every member of a union hashes each file once), decoded on a few threads; the pair search
is a blocked brute force over packed 64-bit words (``numpy.bitwise_count``), about 0.1 s for the 1890 x 210 UCM
pairs and a few seconds for the 14k x 14k training pairs of RSICD + RSITMD + UCM.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.errors import ConfigError, DataError
from data.images import load_image

log = logging.getLogger(__name__)

HASHES = ("phash", "dhash", "ahash", "whash")
_LISTED = 20  # bad files named in one error
_BLOCK = 1 << 22  # word comparisons per block of the pair search (a few MB of temporaries)


@dataclass(frozen=True)
class HashSpec:
    """Which hash and when two images are near-duplicates (``data.near_dup_*``).

    Attributes:
        kind: phash | dhash | ahash | whash (imagehash's functions).
        size: imagehash's ``hash_size``; the hash has ``size ** 2`` bits.
        threshold: largest Hamming distance (in bits) that still counts as a near-duplicate.
    """

    kind: str = "phash"
    size: int = 16
    threshold: int = 64

    @property
    def bits(self) -> int:
        return self.size * self.size

    def check(self, where: str = "") -> None:
        """Raise ConfigError naming the ``data.near_dup_*`` key that is out of range."""
        if self.kind not in HASHES:
            raise ConfigError(f"data.near_dup_hash must be one of {', '.join(HASHES)}, got {self.kind!r}{where}")
        if self.size < 2 or (self.kind == "whash" and self.size & (self.size - 1)):
            raise ConfigError(f"data.near_dup_hash_size must be >= 2 (a power of 2 for whash), got {self.size}{where}")
        if not 0 <= self.threshold < self.bits:
            raise ConfigError(f"data.near_dup_threshold must be in [0, {self.bits}) for a {self.size}x{self.size} "
                              f"hash ({self.bits} bits), got {self.threshold}{where}")

    def describe(self) -> dict:
        return {"hash": self.kind, "hash_size": self.size, "bits": self.bits, "threshold": self.threshold}


def _hash_fn(kind: str) -> Callable:
    import imagehash  # local import: only runs that check images need it

    return {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash,
            "whash": imagehash.whash}[kind]


def hash_bits(img, spec: HashSpec) -> np.ndarray:
    """The packed hash of a PIL image: uint64 words, ``bits`` bits zero-padded to a multiple of 64."""
    flat = np.asarray(_hash_fn(spec.kind)(img, hash_size=spec.size).hash, dtype=bool).ravel()
    packed = np.packbits(flat)
    pad = (-len(packed)) % 8
    return np.concatenate([packed, np.zeros(pad, np.uint8)]).view(np.uint64)


_MEMO: dict[tuple, np.ndarray] = {}
_MEMO_LOCK = threading.Lock()


def _key(path: Path, spec: HashSpec) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # load_image names the file
    return str(path), st.st_size, st.st_mtime_ns, spec.kind, spec.size


def image_hashes(paths: Sequence[str | os.PathLike], spec: HashSpec, threads: int = 2) -> np.ndarray:
    """Hashes of image files, [N, words] uint64 (remembered per file and hash for the life of the process).

    Raises:
        DataError: one line naming every file that cannot be decoded (``data.images.load_image``'s reasons).
    """
    paths = [Path(p) for p in paths]
    keys = [_key(p, spec) for p in paths]
    with _MEMO_LOCK:
        out = [_MEMO.get(k) if k is not None else None for k in keys]
    todo = [i for i, h in enumerate(out) if h is None]
    bad: list[str] = []

    def work(i: int) -> None:
        try:
            img = load_image(paths[i])
        except DataError as e:
            bad.append(str(e))
            return
        h = hash_bits(img, spec)
        if keys[i] is not None:
            with _MEMO_LOCK:
                _MEMO[keys[i]] = h
        out[i] = h

    if todo:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(work, todo))
    if bad:  # every bad file in one error, as the pixel cache reports them
        bad.sort()
        more = f"; ... and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
        raise DataError(f"{len(bad)} of {len(paths)} image files cannot be read (leakage check): "
                        f"{'; '.join(bad[:_LISTED])}{more}")
    words = (spec.bits + 63) // 64
    return np.stack(out) if out else np.zeros((0, words), np.uint64)


def clear_hashes() -> None:
    """Forget every remembered hash (tests, benchmarks)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances [len(a), len(b)] between two hash arrays (small inputs; the search uses blocks)."""
    return np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(-1, dtype=np.int32)


def close_pairs(a: np.ndarray, b: np.ndarray | None, threshold: int) -> list[tuple[int, int, int]]:
    """Every (i, j, distance) with distance <= threshold between rows of ``a`` and rows of ``b``, sorted.

    With ``b`` None the pairs are within ``a`` (i < j).
    """
    same = b is None
    b = a if same else b
    if not len(a) or not len(b):
        return []
    rows = max(1, _BLOCK // (len(b) * a.shape[1]))
    found: list[tuple[int, int, int]] = []
    for start in range(0, len(a), rows):
        lo = start + 1 if same else 0  # within a: only columns after the block's first row
        if same and lo >= len(b):
            break
        d = distances(a[start:start + rows], b[lo:])
        ii, jj = np.nonzero(d <= threshold)
        for i, j in zip(ii.tolist(), jj.tolist()):
            if not same or start + i < lo + j:
                found.append((start + i, lo + j, int(d[i, j])))
    return sorted(found)


def nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``a``: (the smallest distance to a row of ``b``, the first row of ``b`` at that distance).

    Memory stays O(len(a)) however many pairs are close (a folder of identical placeholder images included).
    """
    best = np.full(len(a), np.iinfo(np.int32).max, np.int32)
    arg = np.zeros(len(a), np.int64)
    if not len(b):
        return best, arg
    rows = max(1, _BLOCK // (len(b) * a.shape[1]))
    for start in range(0, len(a), rows):
        d = distances(a[start:start + rows], b)
        arg[start:start + rows] = d.argmin(1)
        best[start:start + rows] = d.min(1)
    return best, arg


def near_groups(h: np.ndarray, threshold: int) -> list[list[int]]:
    """Groups (:func:`groups_of`) of the rows of ``h`` linked by distances <= threshold.

    Equal hashes are merged first, so only distinct hashes are compared pairwise: copies of one file (placeholder
    images, re-used tiles) cost nothing however many there are.
    """
    if not len(h):
        return []
    uniq, first, inverse = np.unique(h, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    copies = np.flatnonzero(first[inverse] != np.arange(len(h)))
    links = [(int(first[inverse[i]]), int(i), 0) for i in copies]
    links += [(int(first[i]), int(first[j]), d) for i, j, d in close_pairs(uniq, None, threshold)]
    return groups_of(links)


def groups_of(pairs: Sequence[tuple[int, int, int]]) -> list[list[int]]:
    """Connected groups (>= 2 members, each sorted, the list sorted) of the items linked by ``pairs``."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    out: dict[int, list[int]] = {}
    for x in parent:
        out.setdefault(root(x), []).append(x)
    return sorted(sorted(g) for g in out.values() if len(g) > 1)


# ------------------------------------------------------------------------------------------ measured alterations
def _jpeg(img, quality: int):
    import io

    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _crop(img, left: int, top: int, right: int, bottom: int):
    w, h = img.size
    return img.crop((left, top, w - right, h - bottom))


def _resize(img, scale: float):
    from PIL import Image

    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)


def _brightness(img, factor: float):
    from PIL import ImageEnhance

    return ImageEnhance.Brightness(img).enhance(factor)


# name -> PIL RGB image -> altered copy: what the default threshold is measured against (bench/bench_near_dups.py)
# and what the tests plant as renamed copies
ALTERATIONS: dict[str, Callable] = {
    "jpeg_q30": lambda im: _jpeg(im, 30), "jpeg_q75": lambda im: _jpeg(im, 75),
    "resize_0.5": lambda im: _resize(im, 0.5), "resize_0.75": lambda im: _resize(im, 0.75),
    "resize_1.5": lambda im: _resize(im, 1.5),
    "crop_2px": lambda im: _crop(im, 2, 2, 2, 2), "crop_4px": lambda im: _crop(im, 4, 4, 4, 4),
    "crop_8px_left": lambda im: _crop(im, 8, 0, 0, 0),
    "brightness_0.7": lambda im: _brightness(im, 0.7), "brightness_1.3": lambda im: _brightness(im, 1.3),
}
