"""What ``train.py`` and ``test.py`` do, behind their argument parsers.

The entry points only parse arguments and call :func:`run_command` with :func:`train_command` or
:func:`test_command`. This module imports no torch at import time (nor any method): ``--help`` and config errors
answer without that start-up cost; the heavy modules are imported inside the functions that need them.

Exit codes (:func:`run_command`): 0 done; 2 bad input (an :class:`core.errors.RsitrError`, one line naming the
culprit); 1 anything else (a bug keeps its traceback), a non-finite loss, and a torchrun run that lost a process (a
node killed, or frozen past ``train.dist_timeout_s``: one line, ``core.dist.is_peer_failure``); 130 interrupted
(Ctrl-C), with one line that says how to resume.
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from core.config import CONFIG_DIR, Config, apply_overrides, config_from_dict, load_config
from core.errors import ConfigError, NonFiniteLossError, RsitrError, RunError, one_line

log = logging.getLogger("rsitr")

# Keys ``test.py --resume ... --set`` may change: where the data lies, how it is batched, where it runs, and the
# evaluation section. Everything else describes the trained model and comes from the checkpoint.
TEST_TIME_KEYS = ("data.root", "data.image_dir", "data.eval_batch_size", "data.num_workers", "data.max_images",
                  "data.cache", "train.device", "train.amp", "train.num_threads", "eval.*")


class Interrupted(Exception):
    """Ctrl-C during a command; the message says how to resume."""


# ------------------------------------------------------------------------------------------------ configs
def config_names() -> list[str]:
    """Names of the shipped configs, as ``--config`` accepts them (``rsitmd_galr.yaml``, ``tests/tiny_vse.yaml``)."""
    return sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml") if "_base_" not in p.parts)


def resolve_config_path(name: str) -> Path:
    """A path as given, else ``configs/<name>`` (``.yaml`` optional); unknown names list the closest shipped ones."""
    for cand in (Path(name), CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    names = config_names()
    key = Path(name).name if not (CONFIG_DIR / name).parent.is_dir() else name
    close = difflib.get_close_matches(key if key.endswith(".yaml") else f"{key}.yaml", names, n=4, cutoff=0.5)
    hint = f"; closest in configs/: {', '.join(close)}" if close else f"; configs/ holds e.g. {', '.join(names[:4])}"
    raise ConfigError(f"config file not found: {name} (looked in . and {CONFIG_DIR}){hint}")


def split_test_overrides(sets: list[str]) -> list[str]:
    """Keys of ``sets`` that ``test.py`` may apply to a checkpoint's config; raises ConfigError for any other."""
    keys = []
    for item in sets:
        key = item.split("=", 1)[0].strip()
        allowed = any(key == k or (k.endswith(".*") and key.startswith(k[:-1])) for k in TEST_TIME_KEYS)
        if not allowed:
            raise ConfigError(f"--set {key}: cannot change at test time (the model was trained with the checkpoint's "
                              f"value); keys that may change: {', '.join(TEST_TIME_KEYS)}")
        keys.append(key)
    return keys


def checkpoint_config(ckpt: dict, sets: list[str], source: str) -> Config:
    """The checkpoint's stored config with ``--set`` applied (old checkpoints' keys migrated by core.config)."""
    return config_from_dict(apply_overrides(ckpt["config"], sets, source), source=ckpt.get("config_source", source))


# ------------------------------------------------------------------------------------------------ outputs
def check_output_file(path: str | None, flag: str) -> None:
    """Before any work: create the parent folders of an output file and make sure it can be written there."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise RunError(f"{flag} {path} is a folder; give a file name, e.g. {p / 'out.json'}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise RunError(f"{flag} {path}: cannot create the folder {p.parent} ({reason})") from None
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise RunError(f"{flag} {path}: not writable; choose another path")


def write_output(path: str, write: Callable[[Path], None], flag: str) -> None:
    """Run ``write(path)``; an OSError becomes one line naming the flag and the reason (never a bare errno)."""
    try:
        write(Path(path))
    except OSError as e:
        raise RunError(f"{flag} {path}: cannot write ({e.strerror or type(e).__name__})") from None


# ------------------------------------------------------------------------------------------------ running
def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command with the project's exit codes (see the module docstring)."""
    try:
        return command(args)
    except RsitrError as e:
        log.error("%s", one_line(e))
        return 2
    except NonFiniteLossError as e:
        log.error("stopped: %s; the last good checkpoint is kept", one_line(e))
        return 1
    except Interrupted as e:
        log.error("%s", one_line(e))
        return 130
    except KeyboardInterrupt:
        log.error("interrupted before anything was written; run the same command again")
        return 130
    except Exception as e:
        dist = sys.modules.get("core.dist")
        if dist is None or not dist.is_peer_failure(e):
            raise
        msg = (f"stopped: another process of this torchrun run died or stopped answering (rank {dist.rank()} of "
               f"{dist.world_size()}; {one_line(e)[:300]}); collectives wait at most train.dist_timeout_s; rank 0's "
               "last.pth is the last complete epoch: rerun with --resume")
        if dist.rank() == 0:
            log.error(msg)
        else:  # the console log is rank 0's alone, but every node must say why it stopped
            print(f"ERROR rsitr: {msg}", file=sys.stderr, flush=True)
        os._exit(1)  # the process group is broken: tearing it down could wait on the dead peer
    finally:
        if "core.dist" in sys.modules:  # only a command that got as far as torch has anything to clean up
            sys.modules["core.dist"].cleanup()


def _resume_hint(run_dir: Path, world: int) -> str:
    last = run_dir / "last.pth"
    if not last.is_file():
        return (f"interrupted before the first checkpoint of {run_dir}; nothing to resume, run the same command "
                f"again")
    launcher = "python" if world <= 1 else f"torchrun --nproc_per_node {world}"
    return f"interrupted; resume with: {launcher} train.py --resume {last}"


# ------------------------------------------------------------------------------------------------ train.py
def load_train_config(args: argparse.Namespace) -> tuple[Config, dict | None]:
    """The config (from --config, or stored in the --resume checkpoint) with --set / --device applied."""
    sets = list(args.set) + ([f"train.device={args.device}"] if args.device else [])
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues with the checkpoint's own config; change it with --set, not --config")
        from engine.checkpoint import CheckpointError, load_checkpoint

        ckpt = load_checkpoint(args.resume)
        cfg = checkpoint_config(ckpt, sets, args.resume)
        if cfg.model.name != ckpt["method"]:
            raise CheckpointError(f"{args.resume} is a '{ckpt['method']}' checkpoint; model.name cannot become "
                                  f"'{cfg.model.name}' on resume")
        return cfg, ckpt
    if not args.config:
        raise ConfigError("give --config (or --resume)")
    return load_config(resolve_config_path(args.config), sets), None


def train_command(args: argparse.Namespace) -> int:
    """Train one fold (``--fold``), every fold (``--folds all``, then the summary) or resume one."""
    cfg, ckpt = load_train_config(args)  # config errors surface before torch is imported
    from core import dist
    from core.logger import setup_logging
    from engine.runner import experiment_dir, fit, prepare_run_dir, resolve_device
    from engine.summary import write_summary

    device = resolve_device(cfg.train.device)
    dist.init_distributed(device, cfg.train.dist_timeout_s)
    if ckpt is not None:
        folds, root = [ckpt["fold"]], Path(args.resume).resolve().parent.parent
    else:
        folds = list(range(cfg.data.n_folds)) if args.folds == "all" else [args.fold]
        root = experiment_dir(cfg, args.output_dir)
    from dataclasses import replace

    cfg = replace(cfg, train=replace(cfg.train, output_dir=str(root.parent)))  # where it really goes (feature cache)
    if any(f < 0 or f >= max(1, cfg.data.n_folds) for f in folds):
        raise ConfigError(f"--fold {folds[0]} is outside data.n_folds={cfg.data.n_folds}")
    from engine.preflight import check_run_files

    check_run_files(cfg, ckpt["tokenizer"] if ckpt else None)  # every missing file, before any run folder is made
    results = []
    for fold in folds:
        run_dir = root / f"fold{fold}"
        if dist.is_main():
            prepare_run_dir(run_dir, resuming=ckpt is not None)
        dist.barrier()
        setup_logging(run_dir, dist.is_main())
        log.info("run %s on %s (world size %d)", run_dir, device, dist.world_size())
        if ckpt is not None:
            changed = [s.split("=", 1)[0] for s in args.set] + (["train.device"] if args.device else [])
            log.info("resuming %s: the checkpoint's config is used (edits of %s are ignored); from --set: %s",
                     args.resume, ckpt.get("config_source", "the config file"), ", ".join(changed) or "nothing")
        try:
            results.append(fit(cfg, fold, run_dir, device, resume=ckpt))
        except KeyboardInterrupt:
            raise Interrupted(_resume_hint(run_dir, dist.world_size())) from None
    if args.folds == "all" and dist.is_main():
        write_summary(root, cfg, results)
    return 0


# ------------------------------------------------------------------------------------------------ test.py
def load_test_target(args: argparse.Namespace, path: str | None) -> tuple[Config, dict | None, dict | None, int]:
    """(config, checkpoint, tokenizer state, fold) of a checkpoint (with the allowed --set) or a zero-shot config."""
    if path is not None:
        from dataclasses import replace

        from engine.checkpoint import load_checkpoint

        keys = split_test_overrides(args.set)
        ckpt = load_checkpoint(path)
        cfg = checkpoint_config(ckpt, args.set, path)
        cfg = replace(cfg, model=replace(cfg.model, pretrained=False, init_from=""))  # weights from the checkpoint
        log.info("evaluating %s with the checkpoint's config; from --set: %s", path, ", ".join(keys) or "nothing")
        return cfg, ckpt, ckpt["tokenizer"], ckpt.get("fold", 0)
    cfg = load_config(resolve_config_path(args.config), args.set)
    from models.registry import MODELS, list_models

    list_models()
    if cfg.model.name not in MODELS:
        raise ConfigError(f"{cfg.source}: unknown model.name '{cfg.model.name}'; registered: "
                          f"{', '.join(MODELS.names())}")
    if not MODELS.get(cfg.model.name).zero_shot:
        raise ConfigError(f"{cfg.source}: '{cfg.model.name}' must be trained first; test it with --resume best.pth")
    return cfg, None, None, 0


def trained_max_images(state: dict) -> int:
    """The ``data.max_images`` a checkpoint's run drew its folds with."""
    data = state["config"].get("data") or {}
    return int(data.get("max_images", 0))


def evaluate_checkpoint(cfg: Config, state: dict | None, tokenizer_state: dict | None, fold: int,
                        args: argparse.Namespace, where: str = "") -> tuple[dict, Any]:
    """Rebuild data + model, load ``state``, evaluate ``args.split`` (with the chosen rerank).

    The fold (train / val images) is the one the checkpoint's run drew: with its own ``data.max_images``, whatever
    ``--set data.max_images`` says (that value then only keeps the first images of each split). ``where`` names the
    checkpoint in messages.
    """
    from dataclasses import replace

    from data.build import build_data, model_context
    from engine.preflight import check_run_files
    from engine.rerank import TUNERS
    from engine.runner import evaluate_split, rerank_for_test, resolve_device
    from models.registry import build_model

    check_run_files(cfg, tokenizer_state)  # every missing file (tokenizer folder, zero-shot weights) before the data
    device = resolve_device(args.device or cfg.train.device)
    rerank = args.rerank or cfg.eval.rerank
    tune = rerank in TUNERS and cfg.eval.tune_rerank
    splits = ("train", "val", "test") if tune or args.split == "val" else ("test",)
    drawn = trained_max_images(state) if state is not None else None
    if drawn is not None and drawn != cfg.data.max_images:
        log.info("folds drawn as in training (data.max_images=%d); data.max_images=%d keeps the first images of each "
                 "split", drawn, cfg.data.max_images)
    bundle = build_data(cfg.data, fold=fold, tokenizer_state=tokenizer_state, splits=splits, source=cfg.source,
                        fold_max_images=drawn)
    if args.split == "val" and bundle.val is None:
        raise ConfigError(f"--split val: fold {fold} of {where or cfg.source} has no validation images "
                          f"(data.val_ratio={cfg.data.val_ratio}, data.protocol={cfg.data.protocol}); evaluate "
                          f"--split test, or train with data.val_ratio > 0")
    ctx = model_context(bundle)
    if state is not None:  # the weights (and what a method derives from training data) come from the checkpoint
        ctx = replace(ctx, train_images=None, train_captions=None)
    model = build_model(cfg.model, ctx, cfg.source).to(device)
    if state is not None:
        model.load_state_dict(state["model"])
        model.load_extra_state(state.get("extra", {}))
    model.eval()
    kw = rerank_for_test(cfg, model, bundle, rerank, device) if rerank != "none" else {}  # as train.py's test
    names = list(bundle.test_splits()) if args.split == "test" else [args.split]
    rows, sim = {}, None
    for name in names:  # a union: every member's test set (test/<member>)
        metrics, sim = evaluate_split(cfg, model, bundle, name, device, rerank, kw)
        if rerank != "none":
            metrics["rerank"] = {"name": rerank, **kw}
        rows[name.split("/", 1)[-1]] = metrics
    if names == [args.split]:
        return rows[args.split], sim
    return {"test_sets": rows}, sim


def test_command(args: argparse.Namespace) -> int:
    """Evaluate one checkpoint, every fold of a run folder, or a zero-shot config; write --json / --save-sims."""
    if args.set and args.run_dir:
        split_test_overrides(args.set)
    check_output_file(args.json, "--json")  # before any evaluation: a bad path costs nothing
    check_output_file(args.save_sims, "--save-sims")
    paths: list[str | None] = [args.resume] if args.resume else [None]
    if args.run_dir:
        paths = sorted(str(p) for p in Path(args.run_dir).glob("fold*/best.pth"))
        if not paths:
            raise RunError(f"no fold*/best.pth under {args.run_dir}")
    rows = []
    for i, path in enumerate(paths):
        cfg, ckpt, tok, fold = load_test_target(args, path)  # config errors surface before torch is imported
        import numpy as np
        import torch

        from engine.runner import format_metrics

        if args.save_sims and cfg.data.datasets and args.split == "test":
            raise ConfigError(f"--save-sims: {path} was trained on a union (data.datasets: "
                              f"{', '.join(cfg.data.datasets)}) and has one test set per member; it saves one matrix")
        with torch.no_grad():
            metrics, sim = evaluate_checkpoint(cfg, ckpt, tok, fold, args, path or "")
        metrics.update(method=cfg.model.name, checkpoint=path or f"zero-shot:{cfg.source}")
        for label, m in metrics.get("test_sets", {"": metrics}).items():
            print(f"{metrics['checkpoint']}{f' [{label}]' if label else ''}: {format_metrics(m)}")
        rows.append(metrics)
        if args.save_sims and i == len(paths) - 1:
            write_output(args.save_sims, lambda p: np.save(p, sim.numpy()), "--save-sims")
    out = rows[0]
    if len(rows) > 1 and "test_sets" in rows[0]:
        out = union_folds(rows, args.run_dir)
    elif len(rows) > 1:
        from engine.summary import mean_std

        mean, std = mean_std(rows)
        out = {**mean, "std": std, "folds": rows, "n_images": rows[0]["n_images"], "n_captions": rows[0]["n_captions"],
               "method": rows[0]["method"], "checkpoint": args.run_dir}
        print(f"mean over {len(rows)} folds: {format_metrics(mean)}")
    if args.json:
        write_output(args.json, lambda p: p.write_text(json.dumps(out, indent=2)), "--json")
    return 0


def union_folds(rows: list[dict], run_dir: str) -> dict:
    """``test.py --run-dir`` over the folds of a union run: per member test set, mean +- std and the fold rows."""
    from engine.runner import format_metrics
    from engine.summary import mean_std

    sets = {}
    for label in rows[0]["test_sets"]:
        folds = [r["test_sets"][label] for r in rows]
        mean, std = mean_std(folds)
        sets[label] = {**mean, "std": std, "folds": folds, "n_images": folds[0]["n_images"],
                       "n_captions": folds[0]["n_captions"]}
        print(f"mean over {len(rows)} folds [{label}]: {format_metrics(mean)}")
    return {"test_sets": sets, "method": rows[0]["method"], "checkpoint": run_dir}


__all__ = ["TEST_TIME_KEYS", "Interrupted", "config_names", "resolve_config_path", "split_test_overrides",
           "checkpoint_config", "check_output_file", "write_output", "run_command", "load_train_config",
           "train_command", "load_test_target", "trained_max_images", "evaluate_checkpoint", "test_command"]
