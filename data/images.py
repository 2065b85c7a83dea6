"""Image files: decoding to 8-bit RGB, the up-front check of every image a run reads, and the decoded-pixel cache.

Decoding rule (``load_image``, ``decode_rgb``; the one reader of every path that turns a file into model input:
training, evaluation, ``engine.inference``, ``scripts/build_index.py``, ``search.query`` and the pictures served):
8-bit images (RGB, L, P, RGBA, CMYK, ...) are converted to RGB by Pillow. Images with more than 8 bits per sample
that Pillow opens as one band (16-bit ``I;16*``, 32-bit ``I``, float ``F``: 16-bit TIFF and PNG exports, elevation
and radar rasters) are scaled to 8 bit by the range of their valid pixels,
``round(255 * (v - min) / (max - min))``, then copied to the three RGB channels. (Converting them directly, as
Pillow does, clips every value above 255: a 16-bit image became white.)

* Nodata: NaN and +-inf pixels, and pixels equal to a TIFF's GDAL nodata value (tag 42113, as GDAL writes it), are
  not valid: they take no part in ``min`` / ``max`` and become 0 (black, like the minimum).
* An image with no valid pixel at all (all NaN, say) is refused: a one-line error naming the file. An image whose
  valid pixels all hold one value has no range and becomes 0 everywhere (black).
* Multi-band 16-bit files (16-bit RGB PNG / TIFF), which Pillow can only read as their top 8 bits, are refused with
  an error naming the file rather than loaded dark.
* Images over Pillow's decompression-bomb limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 Mpx: full satellite
  scenes) are refused, named with their size, rather than decoded at several GB each: tile or downscale them.

Check (``check_images``): before the first epoch every image of every split a run uses is opened once (header only,
fast); the result is remembered per (path, size, mtime) for the life of the process. All missing and unreadable
files (including 16-bit RGB and images over the pixel limit) are reported together in one :class:`DataError`.

Cache (``PixelCache``): each image is decoded once per process into a uint8 array holding the output of the
pipeline's deterministic first step (``data.transforms.Pipeline.prefix``, e.g. GaLR's resize to 278 x 278; the
decoded image itself when the pipeline starts with a random op, e.g. PIR's RandomResizedCrop). The random
augmentation then runs per sample on those pixels, so a sample is bit-identical to the uncached path with the same
seed. Entries are keyed by (path, file size, mtime, prefix), so a changed file or working size is decoded again.
The cache is filled in the main process before the loader starts its workers; the workers (forked) share it.

Memory bound: every cached array lives in one process-wide store of at most ``_CACHE_BYTES`` (6 GiB) of pixels,
and a ``PixelCache`` holds only arrays of that store, so the cap bounds the process's cached pixels. An entry is
*pinned* while a live ``PixelCache`` uses it and is never evicted then; a new entry may evict unpinned entries,
least recently used first, and is not cached when the pinned ones leave no room. An image that is not cached is
decoded each time it is used (in the loader workers too; nothing is added to the store there). The training loader
keeps the entries of its run's train, val and test images pinned (``fill_cache``, in that order) for its life, so
evaluations reuse them and decode only what the cap left out; a ``PixelCache`` skips the up-front decode of an image
this process decoded fine before and that has no room.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from core.errors import DataError

log = logging.getLogger(__name__)

_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # one band, more than 8 bits per sample
_LISTED = 50  # bad files named in one error message (the total is always given)
_CACHE_BYTES = 6 << 30  # decoded pixels kept per process (see "Memory bound" in the module docstring)
_GDAL_NODATA = 42113  # TIFF tag GDAL writes the nodata value to, as text


class PixelError(ValueError):
    """The file opens, but its pixels cannot become the 8-bit RGB image of the decoding rule (the reason)."""


# what a bad image file raises while it is opened or decoded (Pillow: OSError / SyntaxError / ValueError; the
# decompression-bomb guard raises an Exception of its own)
BAD_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def to_rgb8(img: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB (see the module docstring for the rule on images deeper than 8 bit).

    Raises:
        PixelError: a one-band deep image without one valid pixel (all NaN / inf / nodata).
    """
    if img.mode not in _WIDE_MODES:
        return img.convert("RGB")
    arr = np.asarray(img, dtype=np.float64)
    valid = np.isfinite(arr) if img.mode == "F" else None
    nodata = _nodata_value(img)
    if nodata is not None:
        valid = (arr != nodata) if valid is None else (valid & (arr != nodata))
    if valid is not None and valid.all():
        valid = None
    values = arr if valid is None else arr[valid]
    if values.size == 0:
        what = f"NaN, inf or the nodata value {nodata:g}" if nodata is not None else "NaN or inf"
        raise PixelError(f"no valid pixel: every pixel of this {img.mode} image is {what}")
    lo, hi = float(values.min()), float(values.max())
    scaled = np.zeros(arr.shape, np.uint8)
    if hi > lo:
        level = np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        if valid is None:
            scaled = level
        else:
            scaled[valid] = level
    return Image.fromarray(scaled).convert("RGB")


def _nodata_value(img: Image.Image) -> float | None:
    """The GDAL nodata value of a TIFF (tag 42113), when it is a finite number."""
    tags = getattr(img, "tag_v2", None)
    raw = tags.get(_GDAL_NODATA) if tags is not None else None
    if isinstance(raw, (tuple, list)):
        raw = raw[0] if raw else None
    try:
        value = float(str(raw).strip().rstrip("\x00")) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and np.isfinite(value) else None


def decode_rgb(img: Image.Image) -> Image.Image:
    """An image as 8-bit RGB, by the decoding rule (16-bit RGB is recognised only in an image just opened by
    ``Image.open``, whose pixels are not loaded yet).

    Raises:
        PixelError: a 16-bit multi-band file, or a deep image without valid pixels.
        OSError / SyntaxError / ValueError: Pillow cannot decode the pixels (truncated, corrupt).
    """
    _refuse_wide_multiband(img)
    return to_rgb8(img)


def load_image(path: str | os.PathLike | IO[bytes], name: str | None = None) -> Image.Image:
    """Decode an image file (.tif/.jpg/.png/...) to 8-bit RGB.

    Args:
        path: the file, or a binary file object (then ``name`` names it in errors).
        name: what the error messages call it (default: the path).

    Raises:
        DataError: the file is missing, not an image, truncated, over the pixel limit, or refused by the decoding
            rule (one line naming the file).
    """
    shown = name if name is not None else path
    try:
        return _open_rgb(path)
    except FileNotFoundError:
        raise DataError(f"image file not found: {shown}; fix its line in the *_filename.txt file") from None
    except BAD_IMAGE as e:
        raise DataError(f"cannot decode image {shown}: {_reason(e)}; {_todo(e)}") from None


def read_image(path: str | os.PathLike) -> tuple[Image.Image | None, str]:
    """``(8-bit RGB image, "")``, or ``(None, why it cannot be read)``: for callers that list every bad file."""
    try:
        return _open_rgb(path), ""
    except BAD_IMAGE as e:
        return None, _reason(e)


def _open_rgb(path: str | os.PathLike | IO[bytes]) -> Image.Image:
    with Image.open(path) as img:
        return decode_rgb(img)


def _refuse_wide_multiband(img: Image.Image) -> None:
    """Pillow decodes 16-bit RGB(A) files to their top 8 bits (12-bit data turns almost black): refuse them."""
    for tile in getattr(img, "tile", None) or []:  # in-memory images (Image.new, converted copies) have none
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
        if isinstance(rawmode, str) and ";16" in rawmode and img.mode not in _WIDE_MODES:
            raise PixelError(f"{img.mode} with 16 bits per sample ({rawmode}) cannot be read without losing its low "
                             "8 bits; convert it to 8-bit RGB (e.g. scaled by its own range) or to one 16-bit band")


def _reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, Image.DecompressionBombError):
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} Mpx" if found else "too many pixels"
        return f"{size}, over Pillow's limit of {limit / 1e6:.0f} Mpx; tile it or downscale it"
    return (str(e).split("\n")[0] or type(e).__name__)[:120]


def _todo(e: BaseException) -> str:
    return "tile or downscale it" if isinstance(e, Image.DecompressionBombError) else "replace or re-export the file"


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
        except BAD_IMAGE as e:
            _HEADER_OK[key] = _reason(e)
    return _HEADER_OK[key]


def check_images(paths: Iterable[str | os.PathLike], what: str = "",
                 todo: str = "fix the files or remove their lines from the *_filename.txt files") -> None:
    """Open the header of every image once; raise one error naming every missing or unreadable file.

    Args:
        paths: the image files (duplicates are checked once).
        what: where the names come from (e.g. "splits train, test of data/ucm_precomp"), for the message.
        todo: what the message tells the user to do.

    Raises:
        DataError: one line listing the first ``_LISTED`` bad files with their reason, and the total.
    """
    unique = list(dict.fromkeys(Path(p) for p in paths))
    bad = [(p, r) for p in unique if (r := _header_problem(p))]
    if bad:
        raise bad_files_error(bad, len(unique), what, todo)


def bad_files_error(bad: Sequence[tuple[Path, str]], total: int, what: str, todo: str) -> DataError:
    """The one-line error naming bad image files: ``N of M image files [of what] cannot be read: ...; todo``."""
    folders = {p.parent for p, _ in bad}
    if len(folders) == 1:  # the usual case: name the folder once
        shown = f"in {folders.pop()}: " + "; ".join(f"{p.name} ({r})" for p, r in bad[:_LISTED])
    else:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:_LISTED])
    more = f"; ... and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
    where = f" of {what}" if what else ""
    return DataError(f"{len(bad)} of {total} image files{where} cannot be read: {shown}{more}; {todo}")


# ----------------------------------------------------------------------------------------------- the pixel store
class _Store:
    """The process-wide cache of pixel arrays: at most ``_CACHE_BYTES``, pinned entries never evicted.

    ``arrays`` is in least-recently-used order; ``free`` holds the unpinned keys in the same order (the eviction
    candidates); ``sizes`` remembers the size of every entry decoded fine in this process (so that a cache can skip
    decoding an image that has no room).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()  # re-entrant: a PixelCache finalizer may run while this thread holds it
        self.arrays: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
        self.free: "OrderedDict[tuple, None]" = OrderedDict()
        self.pins: dict[tuple, int] = {}
        self.sizes: dict[tuple, int] = {}
        self.nbytes = 0
        self.pinned_bytes = 0
        self.generation = 0  # bumped by clear(): the pins of caches built before it are void

    def take(self, key: tuple) -> np.ndarray | None:
        """The cached array of ``key``, pinned, or None."""
        with self.lock:
            arr = self.arrays.get(key)
            if arr is not None:
                self.arrays.move_to_end(key)
                self._pin(key, arr)
            return arr

    def has_room(self, nbytes: int) -> bool:
        """Whether an entry of ``nbytes`` would be cached (unpinned entries can make room)."""
        return nbytes <= _CACHE_BYTES - self.pinned_bytes

    def put(self, key: tuple, arr: np.ndarray) -> np.ndarray | None:
        """Cache and pin ``arr`` (evicting unpinned entries as needed); None when the pinned ones leave no room."""
        with self.lock:
            self.sizes[key] = arr.nbytes
            if key in self.arrays:
                return self.take(key)
            if not self.has_room(arr.nbytes):
                return None
            while self.nbytes + arr.nbytes > _CACHE_BYTES:
                old, _ = self.free.popitem(last=False)
                self.nbytes -= self.arrays.pop(old).nbytes
            self.arrays[key] = arr
            self.nbytes += arr.nbytes
            self.pins[key] = 0
            self.free[key] = None
            self._pin(key, arr)
            return arr

    def _pin(self, key: tuple, arr: np.ndarray) -> None:
        n = self.pins.get(key, 0)
        if n == 0:
            self.free.pop(key, None)
            self.pinned_bytes += arr.nbytes
        self.pins[key] = n + 1

    def unpin(self, keys: Sequence[tuple], generation: int) -> None:
        with self.lock:
            if generation != self.generation:
                return
            for key in keys:
                n = self.pins.get(key, 0)
                if n <= 0 or key not in self.arrays:
                    continue
                self.pins[key] = n - 1
                if n == 1:
                    self.free[key] = None
                    self.pinned_bytes -= self.arrays[key].nbytes

    def clear(self) -> None:
        with self.lock:
            self.arrays.clear()
            self.free.clear()
            self.pins.clear()
            self.sizes.clear()
            self.nbytes = self.pinned_bytes = 0
            self.generation += 1


_STORE = _Store()


def cache_bytes() -> int:
    """Bytes of pixels cached in this process now (never above ``_CACHE_BYTES``)."""
    return _STORE.nbytes


def _decode(path: Path, prefix: Callable | None) -> np.ndarray:
    img = _open_rgb(path)
    return np.array(prefix(img) if prefix is not None else img, dtype=np.uint8)  # writable: torch views it


def _fill(paths: Sequence[Path], prefix: Callable | None, key: str,
          threads: int) -> tuple[list[np.ndarray | None], list[tuple], list[tuple[Path, str]], int]:
    """(cached pixels of each path or None, keys pinned, (path, reason) of each failure, number decoded now)."""
    keys = [(*(_file_key(p) or (str(p), -1, -1)), key) for p in paths]
    pixels: list[np.ndarray | None] = [_STORE.take(k) for k in keys]  # every hit pinned before room is judged

    def no_room(k: tuple) -> bool:  # decoded fine before, and its size does not fit beside the pinned entries
        size = _STORE.sizes.get(k)
        return size is not None and not _STORE.has_room(size)

    # unknown images are decoded now (which checks them); one known not to fit is decoded when used
    todo = [i for i, (a, k) in enumerate(zip(pixels, keys)) if a is None and not no_room(k)]
    errors: list[tuple[Path, str]] = []

    def decode(i: int) -> None:
        try:
            arr = _decode(paths[i], prefix)
        except BAD_IMAGE as e:
            errors.append((paths[i], _reason(e)))
            return
        pixels[i] = _STORE.put(keys[i], arr)

    if todo:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(decode, todo))
    pinned = [k for k, a in zip(keys, pixels) if a is not None]
    return pixels, pinned, sorted(errors), len(todo)


def fill_cache(jobs: Sequence[tuple[Sequence[str | os.PathLike], Callable | None, str]],
               threads: int = 2) -> list["PixelCache"]:
    """Decode the images of several (paths, prefix, key) jobs into the cache, in job order.

    Returns:
        One :class:`PixelCache` per job: hold them to keep their entries pinned (the cache fills in job order, so
        the first jobs keep the room; ``sum(c.decoded for c in ...)`` images were decoded now).

    Raises:
        DataError: one line naming every image of every job that cannot be decoded.
    """
    bad: list[tuple[Path, str]] = []
    caches = []
    for paths, prefix, key in jobs:
        cache = PixelCache(paths, prefix, key, threads, report=False)
        bad += [e for e in cache.errors if e not in bad]
        caches.append(cache)
    if bad:
        raise bad_files_error(bad, sum(len(c) for c in caches), "", "replace or re-export the files")
    return caches


class PixelCache:
    """Decoded uint8 pixels of a list of images after a deterministic prefix (see the module docstring).

    Images the store has no room for (``pixels[i] is None``) are decoded again on every access.

    Args:
        paths: the image files, indexed as the dataset indexes its images.
        prefix: deterministic PIL -> PIL step applied once (None: keep the decoded image).
        key: text that identifies ``prefix`` (part of every cache key).
        threads: decoding threads (Pillow releases the GIL while decoding and resizing).
        report: raise on images that cannot be decoded (otherwise they are listed in ``errors``).

    Raises:
        DataError: listing every image that cannot be decoded.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], prefix: Callable | None, key: str,
                 threads: int = 2, report: bool = True) -> None:
        self.paths = [Path(p) for p in paths]
        self.prefix = prefix
        generation = _STORE.generation
        self.pixels, pinned, self.errors, self.decoded = _fill(self.paths, prefix, key, threads)
        weakref.finalize(self, _STORE.unpin, pinned, generation)
        if self.errors and report:
            raise bad_files_error(self.errors, len(self.paths), "", "replace or re-export the files")

    def __len__(self) -> int:
        return len(self.pixels)

    def array(self, i: int) -> np.ndarray:
        """Pixels [H, W, 3] of image ``i``: the cached array (never write to it), or decoded now."""
        arr = self.pixels[i]
        if arr is not None:
            return arr
        try:
            return _decode(self.paths[i], self.prefix)
        except BAD_IMAGE:
            load_image(self.paths[i])  # the one-line DataError naming the file
            raise

    def __getitem__(self, i: int) -> Image.Image:
        """Image ``i`` as the prefix left it (an RGB PIL image sharing the cached pixels, read-only)."""
        return Image.fromarray(self.array(i))

    def tensor(self, i: int) -> torch.Tensor:
        """Image ``i`` as a uint8 tensor [3, H, W] viewing the cached pixels (never write to it)."""
        return torch.from_numpy(self.array(i)).permute(2, 0, 1)

    @property
    def nbytes(self) -> int:
        """Bytes of this list's images held in the cache."""
        return sum(a.nbytes for a in self.pixels if a is not None)


def clear_cache() -> None:
    """Forget every cached pixel array and header check (tests)."""
    _STORE.clear()
    _HEADER_OK.clear()
