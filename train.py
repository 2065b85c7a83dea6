"""Train an rsitr method.

    python train.py --config rsitmd_galr.yaml                  # a bare name is looked up in configs/
    python train.py --config configs/demo.yaml --set train.epochs=2 --output-dir /tmp/runs
    python train.py --config rsitmd_galr.yaml --folds all      # every fold, then summary.json / summary.md
    python train.py --resume checkpoints/rsitmd_galr/fold0/last.pth
    torchrun --nproc_per_node 2 train.py --config rsitmd_fisvl.yaml

Run layout: <output-dir>/<experiment>/fold<k>/{config.yaml, log.txt, metrics.jsonl, tb/, splits/, last.pth, best.pth,
test.json}. The best epoch is chosen on validation; the test split is evaluated once, with the best checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core import dist
from engine.checkpoint import CheckpointError, load_checkpoint
from core.config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from core.logger import setup_logging
from engine.runner import RunError, experiment_dir, fit, prepare_run_dir, resolve_device
from engine.summary import write_summary
from engine.train_loop import NonFiniteLossError

log = logging.getLogger("rsitr")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config: a path, or a bare name resolved in configs/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--output-dir", help="root of the run folders (default: train.output_dir)")
    p.add_argument("--resume", help="continue a fold from its last.pth")
    p.add_argument("--fold", type=int, default=0, help="fold to train (default 0)")
    p.add_argument("--folds", choices=["all"], help="train every fold of data.n_folds and write a summary")
    p.add_argument("--device", help="cpu | cuda | cuda:N (overrides train.device)")
    return p.parse_args(argv)


def resolve_config_path(name: str) -> Path:
    """A path as given, else ``configs/<name>`` (``.yaml`` optional)."""
    for cand in (Path(name), CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config file not found: {name} (looked in . and {CONFIG_DIR})")


def load(args: argparse.Namespace) -> tuple[Config, dict | None]:
    """The config (from --config, or stored in the --resume checkpoint) with --set / --device applied."""
    sets = list(args.set) + ([f"train.device={args.device}"] if args.device else [])
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues with the checkpoint's own config; change it with --set, not --config")
        ckpt = load_checkpoint(args.resume)
        cfg = config_from_dict(apply_overrides(ckpt["config"], sets, args.resume),
                               source=ckpt.get("config_source", args.resume))
        if cfg.model.name != ckpt["method"]:
            raise CheckpointError(f"{args.resume} is a '{ckpt['method']}' checkpoint; model.name cannot become "
                                  f"'{cfg.model.name}' on resume")
        return cfg, ckpt
    if not args.config:
        raise ConfigError("give --config (or --resume)")
    return load_config(resolve_config_path(args.config), sets), None


def run(args: argparse.Namespace) -> int:
    cfg, ckpt = load(args)
    device = resolve_device(cfg.train.device)
    dist.init_distributed(device)
    if ckpt is not None:
        folds, root = [ckpt["fold"]], Path(args.resume).resolve().parent.parent
    else:
        folds = list(range(cfg.data.n_folds)) if args.folds == "all" else [args.fold]
        root = experiment_dir(cfg, args.output_dir)
    if any(f < 0 or f >= max(1, cfg.data.n_folds) for f in folds):
        raise ConfigError(f"--fold {folds[0]} is outside data.n_folds={cfg.data.n_folds}")
    results = []
    for fold in folds:
        run_dir = root / f"fold{fold}"
        if dist.is_main():
            prepare_run_dir(run_dir, resuming=ckpt is not None)
        dist.barrier()
        setup_logging(run_dir, dist.is_main())
        log.info("run %s on %s (world size %d)", run_dir, device, dist.world_size())
        results.append(fit(cfg, fold, run_dir, device, resume=ckpt))
    if args.folds == "all" and dist.is_main():
        write_summary(root, cfg, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, 1 for a run that failed)."""
    args = parse_args(argv)
    setup_logging(None, is_main=True)
    try:
        return run(args)
    except (ConfigError, CheckpointError, RunError, FileNotFoundError, KeyError, ValueError) as e:
        log.error("%s", e.args[0] if e.args else e)
        return 2
    except NonFiniteLossError as e:
        log.error("stopped: %s; the last good checkpoint is kept", e)
        return 1
    finally:
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(main())
