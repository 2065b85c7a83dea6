"""Make the UCM-Captions image folder (``1.tif`` .. ``2100.tif``) from the UC Merced LandUse classification set.

    python scripts/prepare_ucm.py --source UCMerced_LandUse/Images --out data/ucm_precomp/images

``N.tif`` is class (N-1)//100 of the 21 class folders in alphabetical order, image (N-1)%100, except agricultural,
which is shifted by one (``1.tif`` = ``agricultural01.tif`` ... ``100.tif`` = ``agricultural00.tif``). Files are
byte copies. All 2100 sources are checked before anything is copied, and an existing file with other content is
never overwritten (exit 2 with a message naming the files); identical files already there are kept.
The caption files (``train_caps.txt`` ...) come from the GaLR / PE-RSITR ``ucm_precomp`` release.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import RsitrError, one_line  # noqa: E402
from data.presets import prepare_ucm  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="UCMerced_LandUse/Images (the 21 class folders) or its parent")
    p.add_argument("--out", required=True, help="image folder to fill, e.g. data/ucm_precomp/images")
    args = p.parse_args(argv)
    try:
        done = prepare_ucm(args.source, args.out)
    except RsitrError as e:
        print(f"prepare_ucm: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"{args.out}: {done['copied']} images copied, {done['already_there']} identical ones already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
