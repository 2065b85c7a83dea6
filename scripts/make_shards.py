"""Write webdataset tar shards of image-caption pairs for ``data.format: webdataset`` (data/shards.py).

    python scripts/make_shards.py --precomp ../shared/data/ucm/ucm_precomp --out data/ucm_shards [--split train]
    python scripts/make_shards.py --table pairs.csv --out data/my_shards [--image-col image --caption-col caption]
        [--pairs-per-shard 1000] [--max-images N]

``--precomp``: every caption of one split of a ``*_precomp`` folder (default ``train``), one pair per caption, the
image bytes copied as they are; a folder whose stem is a preset (``ucm_precomp``) takes that preset's image
extension and scene rule. ``--table``: a CSV (or parquet, with pyarrow) of (image path, caption) rows, image paths
relative to the table's folder; rows of one path are one image. Shards are ``shard-000000.tar`` ... with
``--pairs-per-shard`` pairs each, then ``index.json`` (the folder is complete once it is there). An existing shard
folder is never overwritten. Train with ``--set data.format=webdataset --set data.shards=<out>``; the test split
still comes from ``data.dataset`` / ``data.datasets``. Exit code 2 with one line on bad input.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import RsitrError, one_line  # noqa: E402

log = logging.getLogger("make_shards")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--precomp", help="a *_precomp folder")
    src.add_argument("--table", help="a CSV or parquet file of (image path, caption) rows")
    p.add_argument("--out", required=True, help="the shard folder to write (must not hold shards)")
    p.add_argument("--split", default="train", help="split of --precomp (default train)")
    p.add_argument("--image-col", default="image")
    p.add_argument("--caption-col", default="caption")
    p.add_argument("--pairs-per-shard", type=int, default=1000)
    p.add_argument("--max-images", type=int, default=0, help="only the first N images (0: all)")
    return p.parse_args(argv)


def precomp_pairs(folder: Path, split: str, max_images: int) -> list:
    import dataclasses

    from core.config import DataCfg
    from data.precomp import load_split, truncate
    from data.presets import DATASETS, get_preset
    from data.shards import pairs_from_split

    stem = folder.name[:-len("_precomp")] if folder.name.endswith("_precomp") else folder.name
    preset = get_preset(DataCfg(dataset=stem) if stem in DATASETS else DataCfg(dataset="precomp", name=stem))
    sp = load_split(folder, split, folder / preset.image_dir, True, preset.ext)
    if preset.scene is not None:  # UCM: the class of the image number
        sp = dataclasses.replace(sp, scenes=[preset.scene(n) for n in sp.filenames])
    return pairs_from_split(truncate(sp, max_images))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from data.shards import pairs_from_table, write_shards

    try:
        if args.precomp:
            pairs, source = precomp_pairs(Path(args.precomp), args.split, args.max_images), f"{args.precomp}:{args.split}"
        else:
            pairs, source = pairs_from_table(args.table, args.image_col, args.caption_col), str(args.table)
            if args.max_images > 0:
                pairs = [p for p in pairs if p.img_id < args.max_images]
        index = write_shards(pairs, args.out, args.pairs_per_shard, source)
    except RsitrError as e:
        log.error("%s", one_line(e))
        return 2
    print(f"{args.out}: {index['n_pairs']} pairs of {index['n_images']} images in {len(index['shards'])} shard(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
