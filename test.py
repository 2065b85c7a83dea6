"""Evaluate a trained rsitr model on the test split.

    python test.py --resume checkpoints/rsitmd_galr/fold0/best.pth [--json out.json] [--rerank galr]
    python test.py --run-dir checkpoints/rsitmd_galr                 # average every fold (upstream test_ave)
    python test.py --config rsitmd_clip_zeroshot.yaml --set model.params.weights=PATH   # zero-shot methods

Everything is rebuilt from the checkpoint's stored config. ``--rerank galr`` tunes k / wp1 / wp2 on the fold's
validation split (``eval.tune_rerank``), then applies them to test once; it never tunes on test.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from data.build import build_data, model_context
from core.logger import setup_logging
from engine.checkpoint import CheckpointError, load_checkpoint
from core.config import Config, ConfigError, load_config
from engine.runner import RunError, config_for_rebuild, evaluate_split, format_metrics, resolve_device
from engine.summary import mean_std
from models.registry import MODELS, build_model, list_models
from train import resolve_config_path

log = logging.getLogger("rsitr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--resume", help="checkpoint to evaluate (best.pth)")
    src.add_argument("--run-dir", help="average the best.pth of every fold<k>/ below this folder")
    src.add_argument("--config", help="zero-shot methods only: evaluate straight from a config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --config: override a key")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--rerank", default=None, choices=["none", "galr", "galr_unweighted"],
                   help="rerank (default: eval.rerank of the config)")
    p.add_argument("--json", help="write the metrics as JSON")
    p.add_argument("--save-sims", help="save the similarity matrix (.npy, images x captions)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: auto)")
    return p.parse_args(argv)


def rerank_params(cfg: Config, model: torch.nn.Module, bundle, name: str, device: torch.device) -> dict:
    """k / wp1 / wp2: tuned on the validation split when ``eval.tune_rerank``, else the config's."""
    kw = {"k": cfg.eval.rerank_k, "wp1": cfg.eval.rerank_wp1, "wp2": cfg.eval.rerank_wp2}
    if name == "galr_unweighted":
        kw = {"k": cfg.eval.rerank_k}
    if cfg.eval.tune_rerank and bundle.val is not None and name == "galr":
        from engine.rerank import tune_rerank

        _, sim = evaluate_split(cfg, model, bundle, "val", device)
        best, best_mr, _ = tune_rerank(sim, torch.tensor(bundle.val.txt2img))
        log.info("rerank tuned on validation: %s (val mR %.2f)", best, best_mr)
        kw = dict(best)
    return kw


def evaluate_checkpoint(cfg: Config, state: dict | None, tokenizer_state: dict | None, fold: int,
                        args: argparse.Namespace) -> tuple[dict, torch.Tensor]:
    """Rebuild data + model, load ``state``, evaluate ``args.split`` (with the chosen rerank)."""
    device = resolve_device(args.device or cfg.train.device)
    rerank = args.rerank or cfg.eval.rerank
    splits = ("train", "val", "test") if rerank == "galr" and cfg.eval.tune_rerank or args.split == "val" else ("test",)
    bundle = build_data(cfg.data, fold=fold, tokenizer_state=tokenizer_state, splits=splits, source=cfg.source)
    model = build_model(cfg.model, model_context(bundle), cfg.source).to(device)
    if state is not None:
        model.load_state_dict(state["model"])
        model.load_extra_state(state.get("extra", {}))
    model.eval()
    kw = rerank_params(cfg, model, bundle, rerank, device) if rerank != "none" else {}
    metrics, sim = evaluate_split(cfg, model, bundle, args.split, device, rerank, kw)
    if rerank != "none":
        metrics["rerank"] = {"name": rerank, **kw}
    return metrics, sim


def load_target(args: argparse.Namespace, path: str | None) -> tuple[Config, dict | None, dict | None, int]:
    """(config, checkpoint, tokenizer state, fold) for a checkpoint path or a zero-shot config."""
    if path is not None:
        ckpt = load_checkpoint(path)
        return config_for_rebuild(ckpt), ckpt, ckpt["tokenizer"], ckpt.get("fold", 0)
    cfg = load_config(resolve_config_path(args.config), args.set)
    list_models()
    if not getattr(MODELS.get(cfg.model.name), "zero_shot", False):
        raise ConfigError(f"{cfg.source}: '{cfg.model.name}' must be trained first; test it with --resume best.pth")
    return cfg, None, None, 0


def run(args: argparse.Namespace) -> int:
    paths = [args.resume] if args.resume else None
    if args.run_dir:
        paths = sorted(str(p) for p in Path(args.run_dir).glob("fold*/best.pth"))
        if not paths:
            raise RunError(f"no fold*/best.pth under {args.run_dir}")
    rows = []
    for path in paths or [None]:
        cfg, ckpt, tok, fold = load_target(args, path)
        metrics, sim = evaluate_checkpoint(cfg, ckpt, tok, fold, args)
        metrics.update(method=cfg.model.name, checkpoint=path or f"zero-shot:{cfg.source}")
        print(f"{metrics['checkpoint']}: {format_metrics(metrics)}")
        rows.append(metrics)
        if args.save_sims and path is (paths or [None])[-1]:
            np.save(args.save_sims, sim.numpy())
    out = rows[0]
    if len(rows) > 1:
        mean, std = mean_std(rows)
        out = {**mean, "std": std, "folds": rows, "n_images": rows[0]["n_images"], "n_captions": rows[0]["n_captions"],
               "method": rows[0]["method"], "checkpoint": args.run_dir}
        print(f"mean over {len(rows)} folds: {format_metrics(mean)}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    args = parse_args(argv)
    setup_logging(None, is_main=True)
    try:
        with torch.no_grad():
            return run(args)
    except (ConfigError, CheckpointError, RunError, FileNotFoundError, KeyError, ValueError) as e:
        log.error("%s", e.args[0] if e.args else e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
