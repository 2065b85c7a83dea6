"""Named dataset presets and the resolution of ``data.*`` config keys to folders.

A preset only says where a benchmark's files live: the ``*_precomp`` folder stem, the image folder (relative to
the precomp folder unless absolute) and the image file extension. The caption/filename files themselves follow the
GaLR ``*_precomp`` layout (METHODS.md A1) for every preset. ``data.dataset: precomp`` means "any folder
``data.root/<data.name>_precomp``" with the default image folder ``images``.

Image folders are not part of the upstream releases (they are distributed through cloud drives); put or link the
images of a benchmark into ``<root>/<stem>_precomp/images/`` or set ``data.image_dir``. UCM's image folder can be
made from the UC Merced LandUse classification set with ``prepare_ucm`` (``scripts/prepare_ucm.py``).

Scenes: an image's scene is its filename prefix (``data.precomp.scene_of``), except where a preset knows better.
UCM-Captions names its images ``1`` .. ``2100`` with no prefix, but image N is UC Merced class (N-1)//100 in
alphabetical order (the numbering ``prepare_ucm`` inverts), so the ``ucm`` preset gives each image its class
(``ucm_scene``); without that every UCM image was ``noneclass``, scene-stratified folds were plain random ones and
PIR/FISVL's affiliation loss was the constant ln(batch size).
"""
from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.config import ConfigError, DataCfg
from core.registry import Registry
from core.errors import DataError, MissingFileError
from data.precomp import NONECLASS

DATASETS = Registry("dataset")


@dataclass(frozen=True)
class Preset:
    """Where one benchmark's files live.

    Attributes:
        stem: precomp folder stem (``<root>/<stem>_precomp``).
        image_dir: image folder, relative to the precomp folder or absolute.
        ext: image extension, appended to filenames that have none (the real files list names with extension).
        splits: the caption splits the release ships.
        generated: the folder is generated on first use (the demo set).
        scene: filename -> scene, for benchmarks whose names do not carry it (None: the filename prefix).
        near_dup_action: what ``data.near_dup_action: auto`` does with training images that are near-duplicates of
            test images (``data/folds.py``): remove them (every real benchmark), or only report them (the generated
            demo set, whose images are drawn from a few shape templates on noisy ground: near-duplicates across its
            splits are there by construction).
    """

    stem: str
    image_dir: str = "images"
    ext: str = ".jpg"
    splits: tuple[str, ...] = ("train", "test")
    generated: bool = False
    scene: Callable[[str], str] | None = None
    near_dup_action: str = "remove"


# ------------------------------------------------------------------------------------------ UCM image numbering
UCM_CLASSES = ("agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral", "denseresidential",
               "forest", "freeway", "golfcourse", "harbor", "intersection", "mediumresidential", "mobilehomepark",
               "overpass", "parkinglot", "river", "runway", "sparseresidential", "storagetanks", "tenniscourt")
UCM_IMAGES = 2100


def ucm_scene(filename: str) -> str:
    """UC Merced class of UCM-Captions image ``N.<ext>`` (class (N-1)//100); ``noneclass`` for other names."""
    stem = Path(filename).stem
    if stem.isdigit() and 1 <= int(stem) <= UCM_IMAGES:
        return UCM_CLASSES[(int(stem) - 1) // 100]
    return NONECLASS


for _name, _preset in {
    "rsicd": Preset("rsicd", ext=".jpg"),
    "rsitmd": Preset("rsitmd", ext=".tif"),
    "ucm": Preset("ucm", ext=".tif", scene=ucm_scene),
    "sydney": Preset("sydney", ext=".tif"),
    "nwpu": Preset("nwpu", ext=".jpg"),  # KAMCL's NWPU-Captions release: test split only
    "demo": Preset("demo", ext=".png", generated=True, near_dup_action="report"),
}.items():
    DATASETS.register(_name)(_preset)


def get_preset(cfg: DataCfg) -> Preset:
    """The preset named by ``data.dataset`` with ``data.name`` / ``data.image_dir`` applied.

    Raises:
        ConfigError: unknown preset, or ``precomp`` without ``data.name``.
    """
    if cfg.dataset == "precomp":
        if not cfg.name:
            raise ConfigError("data.dataset 'precomp' needs data.name (the folder is data.root/<name>_precomp)")
        base = Preset(cfg.name, ext="")
    elif cfg.dataset in DATASETS:
        base = DATASETS.get(cfg.dataset)
    else:
        raise ConfigError(f"unknown data.dataset '{cfg.dataset}'; known: {', '.join(DATASETS.names())}, precomp")
    return Preset(
        stem=cfg.name or base.stem,
        image_dir=cfg.image_dir or base.image_dir,
        ext=base.ext,
        splits=base.splits,
        generated=base.generated and not cfg.name,
        scene=base.scene,
        near_dup_action=base.near_dup_action,
    )


def resolve_folders(cfg: DataCfg) -> tuple[Path, Path]:
    """(precomp folder, image folder) for a data config; generated presets are created here.

    Relative ``data.root`` is taken from the current working directory (the repository root for the entry points).
    """
    preset = get_preset(cfg)
    root = Path(cfg.root)
    if preset.generated:
        from data.demo import ensure_demo  # local import: the demo generator draws with PIL

        folder = ensure_demo(root)
    else:
        folder = root / f"{preset.stem}_precomp"
    if not folder.is_dir():
        raise MissingFileError(
            f"dataset folder not found: {folder} (data.dataset={cfg.dataset}, data.root={cfg.root}); it must hold "
            "train_caps.txt, train_filename.txt, test_caps.txt, test_filename.txt and the image folder "
            f"'{preset.image_dir}'"
        )
    image_dir = Path(preset.image_dir)
    return folder, image_dir if image_dir.is_absolute() else folder / image_dir


# ------------------------------------------------------------------------------------------ UCM image folder
def ucm_source(n: int) -> tuple[str, str]:
    """(class folder, file name) in UC Merced LandUse of UCM-Captions image ``n.tif`` (1..2100).

    Class (n-1)//100 in alphabetical order, index (n-1)%100; agricultural is shifted by one (1.tif is
    agricultural01.tif ... 99.tif agricultural99.tif, 100.tif agricultural00.tif).
    """
    if not 1 <= n <= UCM_IMAGES:
        raise ValueError(f"UCM-Captions images are numbered 1..{UCM_IMAGES}, got {n}")
    cls = UCM_CLASSES[(n - 1) // 100]
    k = n % 100 if cls == "agricultural" else (n - 1) % 100
    return cls, f"{cls}{k:02d}.tif"


def prepare_ucm(source: str | Path, out: str | Path) -> dict[str, int]:
    """Byte-copy the UC Merced LandUse images into the UCM-Captions image folder ``out`` as ``1.tif`` .. ``2100.tif``.

    Args:
        source: the folder with the 21 class folders (``UCMerced_LandUse/Images``) or the folder above it.
        out: the image folder to fill (created), e.g. ``data/ucm_precomp/images``.

    Returns:
        ``{"copied": ..., "already_there": ...}`` (files identical to their source are left as they are).

    Raises:
        MissingFileError: sources are missing (all are checked before anything is copied; the message names them).
        DataError: ``out`` holds a file of that name with other content (nothing is overwritten or copied).
    """
    source, out = Path(source), Path(out)
    if not (source / UCM_CLASSES[0]).is_dir() and (source / "Images" / UCM_CLASSES[0]).is_dir():
        source = source / "Images"
    pairs = [(source.joinpath(*ucm_source(n)), out / f"{n}.tif") for n in range(1, UCM_IMAGES + 1)]
    missing = [str(src.relative_to(source)) for src, _ in pairs if not src.is_file()]
    if missing:
        raise MissingFileError(f"{len(missing)} of {UCM_IMAGES} UC Merced LandUse images are missing in {source}: "
                               f"{', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}; give the folder "
                               "that holds the 21 class folders (UCMerced_LandUse/Images)")
    existing = [(src, dst) for src, dst in pairs if dst.exists()]
    different = [dst.name for src, dst in existing if not filecmp.cmp(src, dst, shallow=False)]
    if different:
        raise DataError(f"{len(different)} file(s) in {out} differ from their UC Merced source and are not "
                        f"overwritten: {', '.join(different[:10])}{', ...' if len(different) > 10 else ''}; "
                        "move them away or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    done = {dst for _, dst in existing}
    for src, dst in pairs:
        if dst not in done:
            tmp = dst.with_name(f".{dst.name}.part")
            shutil.copyfile(src, tmp)  # a byte copy; renamed into place so no half file is ever left as n.tif
            tmp.replace(dst)
    return {"copied": len(pairs) - len(done), "already_there": len(done)}
