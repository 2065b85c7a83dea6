"""Evaluate a trained rsitr model on the test split.

    python test.py --resume checkpoints/rsitmd_galr/fold0/best.pth [--json out.json] [--rerank galr]
    python test.py --run-dir checkpoints/rsitmd_galr                 # average every fold (upstream test_ave)
    python test.py --config rsitmd_clip_zeroshot.yaml --set model.params.weights=PATH   # zero-shot methods
    python test.py --resume best.pth --set data.root=/mnt/data --set eval.rerank=galr

Everything is rebuilt from the checkpoint's stored config. With --resume / --run-dir, --set may change only
data.root, data.image_dir, data.eval_batch_size, data.num_workers, data.max_images, data.cache, train.device,
train.amp, train.num_threads and eval.* (any other key is refused: the model was trained with it). The fold's train
and validation images are always the ones the run drew (with its own data.max_images); a data.max_images given here
only keeps the first N images of each evaluated split. Evaluation runs
in fp32 unless eval.amp says otherwise (train.amp is accepted but does not change evaluation). ``--rerank galr`` tunes its
settings on the fold's validation split (``eval.tune_rerank``), then applies them to test once; it never tunes on
test. Output paths (--json, --save-sims) are checked, and their folders created, before anything is evaluated.
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--resume", help="checkpoint to evaluate (best.pth)")
    src.add_argument("--run-dir", help="average the best.pth of every fold<k>/ below this folder")
    src.add_argument("--config", help="zero-shot methods only: evaluate straight from a config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key (with a checkpoint: test-time keys only, see above)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--rerank", default=None, metavar="NAME",
                   help="a reranker of engine/rerank.py, or none (default: eval.rerank of the config)")
    p.add_argument("--json", help="write the metrics as JSON")
    p.add_argument("--save-sims", help="save the similarity matrix (.npy, images x captions)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: auto)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 bad input, 1 internal error, 130 interrupted)."""
    from core.logger import setup_logging
    from engine import cli

    args = parse_args(argv)
    setup_logging(None, is_main=True)
    return cli.run_command(cli.test_command, args)


if __name__ == "__main__":
    sys.exit(main())
