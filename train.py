"""Train an rsitr method.

    python train.py --config rsitmd_galr.yaml                  # a bare name is looked up in configs/
    python train.py --config configs/demo.yaml --set train.epochs=2 --output-dir /tmp/runs
    python train.py --config rsitmd_galr.yaml --folds all      # every fold, then summary.json / summary.md
    python train.py --resume checkpoints/rsitmd_galr/fold0/last.pth
    torchrun --nproc_per_node 2 train.py --config rsitmd_fisvl.yaml

Run layout: <output-dir>/<experiment>/fold<k>/{config.yaml, log.txt, metrics.jsonl, tb/, splits/, last.pth, best.pth,
test.json}. The best epoch is chosen on validation; the test split is evaluated once, with the best checkpoint.
Exit codes: 0 done, 2 bad input (one line names the culprit), 1 an internal error (with its traceback) or a NaN
loss, 130 interrupted (the line says how to resume).
"""
from __future__ import annotations

import argparse
import sys

from engine.cli import resolve_config_path  # noqa: F401  (old import location, used by scripts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config: a path, or a bare name resolved in configs/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--output-dir", help="root of the run folders (default: train.output_dir)")
    p.add_argument("--resume", help="continue a fold from its last.pth (with the checkpoint's config; --set applies)")
    p.add_argument("--fold", type=int, default=0, help="fold to train (default 0)")
    p.add_argument("--folds", choices=["all"], help="train every fold of data.n_folds and write a summary")
    p.add_argument("--device", help="cpu | cuda | cuda:N (overrides train.device)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    from core.logger import setup_logging
    from engine import cli

    args = parse_args(argv)
    setup_logging(None, is_main=True)
    return cli.run_command(cli.train_command, args)


if __name__ == "__main__":
    sys.exit(main())
