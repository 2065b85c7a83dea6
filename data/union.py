"""Dataset unions (``data.datasets``): the members of a union and their splits merged under qualified names.

``data.datasets: [rsicd, rsitmd, ucm]`` trains on the union of the members' training files, draws the validation
folds over that union (``data.protocol`` on the merged list, as for one dataset) and tests on every member's own
official test split, one result row per member (``engine/runner.py``). A member is a preset name (its folder is
``data.root/<stem>_precomp``) or the path of a ``*_precomp`` folder; a folder whose stem is a preset (``.../ucm_precomp``)
gets that preset's extension and scene rule (UCM's classes), any other is read as ``data.dataset: precomp``. Members
keep their own image folders and captions (any number per image).

Names: inside a union every image is ``<member>/<file name>`` (``ucm/81.jpg``, ``rsitmd/airport_1.tif``), so equal
file names of two members stay two images, split files and leakage reports say which member an image comes from,
and each image keeps its own file (``PrecompSplit.paths``). The leakage check (``data/folds.py``) then compares every
training image of the union with every test image of every member.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from core.config import DataCfg
from core.errors import ConfigError, MissingFileError
from data.precomp import PrecompSplit
from data.presets import DATASETS

log = logging.getLogger(__name__)
SUFFIX = "_precomp"


def members(cfg: DataCfg, where: str = "") -> list[tuple[str, DataCfg]]:
    """(label, data config of that member alone) for every entry of ``data.datasets``.

    Raises:
        ConfigError: ``data.name`` / ``data.image_dir`` set beside ``data.datasets``, a label listed twice, a folder
            not named ``<stem>_precomp``.
        MissingFileError: an entry that is neither a preset nor a folder.
    """
    if cfg.name or cfg.image_dir:
        raise ConfigError(f"data.datasets cannot be combined with data.name / data.image_dir{where}: every member is "
                          "a preset or a *_precomp folder with its own images/ folder")
    out: list[tuple[str, DataCfg]] = []
    for i, entry in enumerate(cfg.datasets):
        base = dataclasses.replace(cfg, datasets=())
        if entry in DATASETS:
            label, member = entry, dataclasses.replace(base, dataset=entry)
        else:
            folder = Path(entry)
            if not folder.is_dir():
                raise MissingFileError(f"data.datasets.{i}: '{entry}' is neither a preset ({', '.join(DATASETS.names())})"
                                       f" nor a folder{where}")
            if not folder.name.endswith(SUFFIX) or folder.name == SUFFIX:
                raise ConfigError(f"data.datasets.{i}: folder {folder} must be named <name>{SUFFIX}{where}")
            label = folder.name[:-len(SUFFIX)]
            known = label in DATASETS and not DATASETS.get(label).generated
            member = dataclasses.replace(base, dataset=label if known else "precomp", name="" if known else label,
                                         root=str(folder.parent))
        if label in (lbl for lbl, _ in out):
            raise ConfigError(f"data.datasets.{i}: '{label}' is listed twice{where} (members are told apart by name)")
        if "/" in label:
            raise ConfigError(f"data.datasets.{i}: member name '{label}' must not contain '/'{where}")
        out.append((label, member))
    if cfg.dataset != DataCfg().dataset:
        log.info("data.datasets is set: data.dataset '%s' is not used", cfg.dataset)
    return out


def qualify(split: PrecompSplit, label: str) -> PrecompSplit:
    """``split`` with every name ``<label>/<name>`` and each image's file kept (``PrecompSplit.paths``)."""
    return dataclasses.replace(split, filenames=[f"{label}/{n}" for n in split.filenames],
                               paths=[split.image_path(i) for i in range(split.n_images)],
                               meta=dict(split.meta, member=label))


def concat(splits: Sequence[PrecompSplit], name: str) -> PrecompSplit:
    """One split holding the images of ``splits`` in order (their captions and maps shifted), paths kept."""
    filenames, captions, txt2img, img2txt, scenes, paths = [], [], [], [], [], []
    for sp in splits:
        off_i, off_c = len(filenames), len(captions)
        filenames += sp.filenames
        captions += sp.captions
        txt2img += [i + off_i for i in sp.txt2img]
        img2txt += [[j + off_c for j in g] for g in sp.img2txt]
        scenes += sp.scenes
        paths += [sp.image_path(i) for i in range(sp.n_images)]
    folder = Path("+".join(sp.meta.get("member", sp.folder.name) for sp in splits))
    return PrecompSplit(folder, name, filenames, captions, txt2img, img2txt, scenes, Path("."),
                        {"members": [sp.meta.get("member", "") for sp in splits]}, paths)
