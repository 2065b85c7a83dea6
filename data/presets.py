"""Named dataset presets and the resolution of ``data.*`` config keys to folders.

A preset only says where a benchmark's files live: the ``*_precomp`` folder stem, the image folder (relative to
the precomp folder unless absolute) and the image file extension. The caption/filename files themselves follow the
GaLR ``*_precomp`` layout (METHODS.md A1) for every preset. ``data.dataset: precomp`` means "any folder
``data.root/<data.name>_precomp``" with the default image folder ``images``.

Image folders are not part of the upstream releases (they are distributed through cloud drives); put or link the
images of a benchmark into ``<root>/<stem>_precomp/images/`` or set ``data.image_dir``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import ConfigError, DataCfg
from core.registry import Registry
from core.errors import MissingFileError

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
    """

    stem: str
    image_dir: str = "images"
    ext: str = ".jpg"
    splits: tuple[str, ...] = ("train", "test")
    generated: bool = False


for _name, _preset in {
    "rsicd": Preset("rsicd", ext=".jpg"),
    "rsitmd": Preset("rsitmd", ext=".tif"),
    "ucm": Preset("ucm", ext=".tif"),
    "sydney": Preset("sydney", ext=".tif"),
    "nwpu": Preset("nwpu", ext=".jpg"),  # KAMCL's NWPU-Captions release: test split only
    "demo": Preset("demo", ext=".png", generated=True),
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
