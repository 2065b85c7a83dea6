"""Image files: decoding to 8-bit RGB, the up-front check of every image a run reads, and the decoded-pixel cache.

Decoding rule (``load_image``): 8-bit images (RGB, L, P, RGBA, CMYK, ...) are converted to RGB by Pillow. Images with
more than 8 bits per sample that Pillow opens as one band (16-bit ``I;16*``, 32-bit ``I``, float ``F``: 16-bit TIFF
and PNG exports, elevation and radar rasters) are scaled to 8 bit by their own range,
``round(255 * (v - min) / (max - min))`` over all pixels (a constant image becomes 0), then copied to the three RGB
channels. (Converting them directly, as Pillow does, clips every value above 255: a 16-bit image became white.)
Multi-band 16-bit files (16-bit RGB PNG / TIFF), which Pillow can only read as their top 8 bits, are refused with an
error naming the file rather than loaded dark.

Check (``check_images``): before the first epoch every image of every split a run uses is opened once (header only,
fast); the result is remembered per (path, size, mtime) for the life of the process. All missing and unreadable
files are reported together in one :class:`DataError`.

Cache (``PixelCache``): each image is decoded once per process into a uint8 array holding the output of the
pipeline's deterministic first step (``data.transforms.Pipeline.prefix``, e.g. GaLR's resize to 278 x 278; the
decoded image itself when the pipeline starts with a random op, e.g. PIR's RandomResizedCrop). The random
augmentation then runs per sample on those pixels, so a sample is bit-identical to the uncached path with the same
seed. Entries are keyed by (path, file size, mtime, prefix), so a changed file or working size is decoded again.
The cache is filled in the main process before the loader starts its workers; the workers (forked) share it.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from core.errors import DataError

log = logging.getLogger(__name__)

_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # one band, more than 8 bits per sample
_LISTED = 50  # bad files named in one error message (the total is always given)
_CACHE_BYTES = 6 << 30  # decoded pixels kept per process; the least recently built entries go first


def to_rgb8(img: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB (see the module docstring for the rule on images deeper than 8 bit)."""
    if img.mode not in _WIDE_MODES:
        return img.convert("RGB")
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = np.zeros(arr.shape, np.uint8) if hi <= lo else np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file (.tif/.jpg/.png/...) to 8-bit RGB.

    Raises:
        DataError: the file is missing, not an image, or truncated (one line naming the file).
    """
    try:
        return _open_rgb(path)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}; fix its line in the *_filename.txt file") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports bad files as OSError / SyntaxError / ValueError
        raise DataError(f"cannot decode image {path}: {_reason(e)}; replace or re-export the file") from None


def _open_rgb(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as img:
        _refuse_wide_multiband(img)
        return to_rgb8(img)


def _refuse_wide_multiband(img: Image.Image) -> None:
    """Pillow decodes 16-bit RGB(A) files to their top 8 bits (12-bit data turns almost black): refuse them."""
    for tile in img.tile:
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
        if isinstance(rawmode, str) and ";16" in rawmode and img.mode not in _WIDE_MODES:
            raise ValueError(f"{img.mode} with 16 bits per sample ({rawmode}) cannot be read without losing its low "
                             "8 bits; convert it to 8-bit RGB (e.g. scaled by its own range) or to one 16-bit band")


def _reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    return (str(e).split("\n")[0] or type(e).__name__)[:120]


def _file_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(path), st.st_size, st.st_mtime_ns


_HEADER_OK: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> "" (ok) or the reason it failed


def _header_problem(path: Path) -> str:
    key = _file_key(path)
    if key is None:
        return "no such file"
    if key not in _HEADER_OK:
        try:
            with Image.open(path) as img:  # reads the header only
                _refuse_wide_multiband(img)
                w, h = img.size
            _HEADER_OK[key] = "" if w > 0 and h > 0 else "empty image"
        except (OSError, ValueError, SyntaxError) as e:
            _HEADER_OK[key] = _reason(e)
    return _HEADER_OK[key]


def check_images(paths: Iterable[str | os.PathLike], what: str = "") -> None:
    """Open the header of every image once; raise one error naming every missing or unreadable file.

    Args:
        paths: the image files (duplicates are checked once).
        what: where the names come from (e.g. "splits train, test of data/ucm_precomp"), for the message.

    Raises:
        DataError: one line listing the first ``_LISTED`` bad files with their reason, and the total.
    """
    unique = list(dict.fromkeys(Path(p) for p in paths))
    bad = [(p, r) for p in unique if (r := _header_problem(p))]
    if bad:
        _raise_bad(bad, len(unique), what, "fix the files or remove their lines from the *_filename.txt files")


def _raise_bad(bad: Sequence[tuple[Path, str]], total: int, what: str, todo: str) -> None:
    folders = {p.parent for p, _ in bad}
    if len(folders) == 1:  # the usual case: name the folder once
        shown = f"in {folders.pop()}: " + "; ".join(f"{p.name} ({r})" for p, r in bad[:_LISTED])
    else:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:_LISTED])
    more = f"; ... and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
    where = f" of {what}" if what else ""
    raise DataError(f"{len(bad)} of {total} image files{where} cannot be read: {shown}{more}; {todo}")


def _fill(paths: Sequence[Path], prefix: Callable | None, key: str,
          threads: int) -> tuple[list[np.ndarray | None], list[tuple[Path, str]], int]:
    """(pixels of each path, (path, reason) of each failure, number decoded now) through the process-wide memo."""
    keys = [(*(_file_key(p) or (str(p), -1, -1)), key) for p in paths]
    with _MEMO_LOCK:
        pixels: list[np.ndarray | None] = [_MEMO.get(k) for k in keys]
    todo = [i for i, a in enumerate(pixels) if a is None]
    errors: list[tuple[Path, str]] = []

    def decode(i: int) -> None:
        try:
            img = _open_rgb(paths[i])
        except (OSError, ValueError, SyntaxError) as e:
            errors.append((paths[i], _reason(e)))
            return
        arr = np.array(prefix(img) if prefix is not None else img, dtype=np.uint8)  # writable: torch views it
        _store(keys[i], arr)
        pixels[i] = arr

    if todo:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(decode, todo))
    return pixels, sorted(errors), len(todo)


def fill_cache(jobs: Sequence[tuple[Sequence[str | os.PathLike], Callable | None, str]], threads: int = 2) -> int:
    """Decode the images of several (paths, prefix, key) jobs into the cache; return how many were decoded.

    Raises:
        DataError: one line naming every image of every job that cannot be decoded.
    """
    bad: list[tuple[Path, str]] = []
    total = decoded = 0
    for paths, prefix, key in jobs:
        _, errors, n = _fill([Path(p) for p in paths], prefix, key, threads)
        bad += [e for e in errors if e not in bad]
        total, decoded = total + len(paths), decoded + n
    if bad:
        _raise_bad(bad, total, "", "replace or re-export the files")
    return decoded


class PixelCache:
    """Decoded uint8 pixels of a list of images after a deterministic prefix (see the module docstring).

    Args:
        paths: the image files, indexed as the dataset indexes its images.
        prefix: deterministic PIL -> PIL step applied once (None: keep the decoded image).
        key: text that identifies ``prefix`` (part of every cache key).
        threads: decoding threads (Pillow releases the GIL while decoding and resizing).

    Raises:
        DataError: listing every image that cannot be decoded.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], prefix: Callable | None, key: str,
                 threads: int = 2) -> None:
        self.paths = [Path(p) for p in paths]
        pixels, errors, self.decoded = _fill(self.paths, prefix, key, threads)
        if errors:
            _raise_bad(errors, len(self.paths), "", "replace or re-export the files")
        self.pixels: list[np.ndarray] = pixels  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> Image.Image:
        """Image ``i`` as the prefix left it (an RGB PIL image sharing the cached pixels, read-only)."""
        return Image.fromarray(self.pixels[i])

    def tensor(self, i: int) -> torch.Tensor:
        """Image ``i`` as a uint8 tensor [3, H, W] viewing the cached pixels (never write to it)."""
        return torch.from_numpy(self.pixels[i]).permute(2, 0, 1)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.pixels)


_MEMO: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_MEMO_LOCK = threading.Lock()
_memo_bytes = 0


def _store(key: tuple, arr: np.ndarray) -> None:
    global _memo_bytes
    with _MEMO_LOCK:
        _MEMO[key] = arr
        _memo_bytes += arr.nbytes
        while _memo_bytes > _CACHE_BYTES and len(_MEMO) > 1:  # entries in use stay alive in their PixelCache
            _, old = _MEMO.popitem(last=False)
            _memo_bytes -= old.nbytes


def clear_cache() -> None:
    """Forget every cached pixel array and header check (tests)."""
    global _memo_bytes
    with _MEMO_LOCK:
        _MEMO.clear()
        _memo_bytes = 0
    _HEADER_OK.clear()
