"""Reader for the GaLR ``*_precomp`` caption folders (METHODS.md A1).

The format is the one of xiaoyuan1996/GaLR (``data/*_precomp``), byte-identical in AMFMN, SWAN-pytorch, KAMCL and
PE-RSITR. Deliberate differences from the upstream loaders: the image/caption maps are explicit (any number of
captions per image), counts are checked, and missing images are reported before training starts.

A split ``S`` of a folder is two text files, one entry per line: ``S_caps.txt`` (captions, the captions of one image
on consecutive lines) and ``S_filename.txt`` in one of two layouts:

* one line per caption, each image name repeated on consecutive lines (RSICD/RSITMD/UCM/Sydney ``test``): detected
  when both files have the same number of lines; runs of equal consecutive names form one image, so an image may
  have any number of captions;
* one line per image (every ``train`` file, NWPU ``test``): the captions-per-image count is
  ``#captions / #filenames`` and must divide exactly (5 for every real set).

Upstream uses ``im_div = 5 if counts differ else 1`` and ``image = index // im_div``; here the image of every caption
and the captions of every image are explicit lists (``txt2img``, ``img2txt``).

Empty caption lines (RSITMD train has 20, around line 9631) are kept as empty strings, so caption indices stay those
of the file; the tokenizers encode them as a single padding token of length 1, the upstream "length 0 -> 1" rule.
The scene of an image is its filename prefix before the first ``_``; names without ``_`` (RSICD's 5-digit names,
Sydney) or with a numeric prefix have no scene and get ``noneclass``. (UCM's numbered images get their UC Merced
class from the ``ucm`` preset, ``data.presets.ucm_scene``.)
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from core.errors import ConfigError, DataError, MissingFileError

log = logging.getLogger(__name__)

NONECLASS = "noneclass"
_MAX_LISTED = 5  # names shown in "missing image" errors


def scene_of(filename: str) -> str:
    """Scene of an image name: the prefix before the first ``_``, or ``noneclass`` (no ``_`` / numeric prefix)."""
    stem = Path(filename).stem
    if "_" not in stem:
        return NONECLASS
    prefix = stem.split("_", 1)[0]
    return NONECLASS if (not prefix or prefix.isdigit()) else prefix


@dataclass
class PrecompSplit:
    """One split of a precomp folder: unique images, every caption, and the explicit maps between them.

    Attributes:
        folder: the precomp folder the split was read from.
        split: split name ("train", "test", or a derived "train_fold0" / "val_fold0").
        filenames: unique image names in file order.
        captions: every caption in file order (may be "").
        txt2img: image index of each caption.
        img2txt: caption indices of each image.
        scenes: scene of each image (``noneclass`` when the name carries none).
        image_dir: folder the image files are read from.
        paths: the file of each image when the images lie in several folders (a union of datasets, whose names
            are ``<member>/<name>``: ``data/union.py``); None: ``image_dir / filename``.
    """

    folder: Path
    split: str
    filenames: list[str]
    captions: list[str]
    txt2img: list[int]
    img2txt: list[list[int]]
    scenes: list[str]
    image_dir: Path
    meta: dict = field(default_factory=dict)
    paths: list[Path] | None = None

    @property
    def n_images(self) -> int:
        return len(self.filenames)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def image_path(self, i: int) -> Path:
        """Path of image ``i``."""
        return self.paths[i] if self.paths is not None else self.image_dir / self.filenames[i]

    def subset(self, image_indices: Sequence[int], split: str) -> "PrecompSplit":
        """A new split with the given images (in the given order) and all of their captions.

        Args:
            image_indices: indices into ``filenames``; each image keeps its caption group.
            split: name of the new split.
        """
        filenames, captions, txt2img, img2txt = [], [], [], []
        for new_i, i in enumerate(image_indices):
            filenames.append(self.filenames[i])
            group = []
            for j in self.img2txt[i]:
                group.append(len(captions))
                captions.append(self.captions[j])
                txt2img.append(new_i)
            img2txt.append(group)
        scenes = [self.scenes[i] for i in image_indices]
        paths = [self.paths[i] for i in image_indices] if self.paths is not None else None
        return PrecompSplit(self.folder, split, filenames, captions, txt2img, img2txt, scenes, self.image_dir,
                            dict(self.meta, parent=self.split), paths)


def read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """Lines of a text file without line endings; a final newline does not make an extra empty line.

    Decoding is strict: a byte that is not valid in ``encoding`` is an error naming the file and line (upstream
    decoding replaced it with U+FFFD, which silently changed captions and their tokens).

    Raises:
        DataError: an undecodable byte (file, line and byte are named).
        ConfigError: ``encoding`` is not a codec Python knows.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode(encoding)
    except LookupError:
        raise ConfigError(f"data.encoding: unknown encoding '{encoding}' (e.g. utf-8, latin-1, cp1252)") from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}, line {line}: byte 0x{data[e.start]:02x} is not valid {encoding} ({e.reason}); "
                        f"fix that line, or set data.encoding to the file's encoding (e.g. data.encoding=latin-1)"
                        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def group_filenames(names: list[str], n_captions: int, name_file: str, caps_file: str) -> tuple[list[str], list[int]]:
    """Detect the filename layout and return (unique names, image index of each caption).

    Raises:
        ValueError: the line counts fit neither layout, or a name recurs after another (per-caption layout).
    """
    if len(names) == n_captions:
        unique, txt2img, seen = [], [], set()
        for line_no, name in enumerate(names):
            if not unique or name != unique[-1]:
                if name in seen:
                    raise DataError(f"{name_file}: '{name}' appears again at line {line_no + 1} after other names; "
                                     "the captions of one image must be on consecutive lines")
                seen.add(name)
                unique.append(name)
            txt2img.append(len(unique) - 1)
        return unique, txt2img
    if len(names) == 0 or n_captions % len(names) != 0:
        raise DataError(f"{name_file} has {len(names)} lines, {caps_file} {n_captions}: expected one filename "
                         "line per caption (equal counts) or one per image (captions a multiple of filenames)")
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise DataError(f"{name_file}: one line per image expected, but '{dup}' is listed twice")
    per_image = n_captions // len(names)
    return list(names), [j // per_image for j in range(n_captions)]


def missing_images(image_dir: Path, filenames: Sequence[str]) -> list[str]:
    """Names in ``filenames`` with no file in ``image_dir`` (one directory listing, not one stat per file)."""
    try:
        present = set(os.listdir(image_dir))
    except FileNotFoundError:
        return list(filenames)
    missing = [n for n in filenames if n not in present]
    # names with sub-folders are not in the listing: check those individually
    return [n for n in missing if not (image_dir / n).is_file()]


def load_split(folder: str | Path, split: str, image_dir: str | Path | None = None, check_images: bool = True,
               ext: str = "", encoding: str = "utf-8") -> PrecompSplit:
    """Read ``<folder>/<split>_caps.txt`` and ``<folder>/<split>_filename.txt``.

    Args:
        folder: the ``*_precomp`` folder.
        split: "train", "test", ... (file prefix).
        image_dir: image folder (default ``<folder>/images``).
        check_images: verify up front that every image file exists.
        ext: extension appended to names that have none (e.g. ".tif").
        encoding: text encoding of both files (``data.encoding``; decoding is strict, see :func:`read_lines`).

    Returns:
        The split with N unique images and M captions.

    Raises:
        FileNotFoundError: a missing text file, or missing images (first few names and the total are listed).
        DataError (a ValueError): empty caption file, undecodable byte, line counts that fit no layout.
    """
    folder = Path(folder)
    caps_path, names_path = folder / f"{split}_caps.txt", folder / f"{split}_filename.txt"
    for p in (caps_path, names_path):
        if not p.is_file():
            raise MissingFileError(f"{p} not found (a precomp split needs {caps_path.name} and {names_path.name})")
    captions = [c.strip() for c in read_lines(caps_path, encoding)]
    names = [n.strip() for n in read_lines(names_path, encoding)]
    if not any(captions):
        listed = f"{names_path.name} lists {len(names)} name(s)" if any(names) else f"{names_path} is empty too"
        what = f"holds no caption ({len(captions)} line(s), all blank" if captions else "is empty (no caption lines"
        raise DataError(f"{caps_path} {what}; {listed}): split '{split}' has no data; fill the caption files or "
                        "check data.root / data.name")
    if ext:
        names = [n if Path(n).suffix else n + ext for n in names]
    filenames, txt2img = group_filenames(names, len(captions), names_path.name, caps_path.name)
    img2txt: list[list[int]] = [[] for _ in filenames]
    for j, i in enumerate(txt2img):
        img2txt[i].append(j)
    n_empty = sum(1 for c in captions if not c)
    if n_empty:
        log.info("%s: %d empty caption line(s) kept as empty captions (encoded as one padding token, length 1)",
                 caps_path, n_empty)
    image_dir = Path(image_dir) if image_dir is not None else folder / "images"
    out = PrecompSplit(folder, split, filenames, captions, txt2img, img2txt, [scene_of(n) for n in filenames],
                       image_dir, {"empty_captions": n_empty})
    if check_images:
        check_image_files(out)
    return out


def check_image_files(split: PrecompSplit) -> None:
    """Raise one FileNotFoundError listing the first few missing image files and their total."""
    missing = missing_images(split.image_dir, split.filenames)
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED])
        more = f", ... ({len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
        raise MissingFileError(f"{len(missing)} of {split.n_images} images of split '{split.split}' are missing "
                                f"in {split.image_dir}: {shown}{more}")


def truncate(split: PrecompSplit, max_images: int) -> PrecompSplit:
    """The first ``max_images`` images of a split (all of it when ``max_images <= 0``)."""
    if max_images <= 0 or max_images >= split.n_images:
        return split
    return split.subset(range(max_images), split.split)
