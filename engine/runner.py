"""Wiring for the entry points: build everything for one fold, train it, select on validation, test once.

This is application code (it imports ``data``, ``models`` and ``losses``); ``train.py`` and ``test.py`` stay thin.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.build import DataBundle, build_data, eval_loaders, model_context, train_loader
from core import dist
from engine.checkpoint import (check_resumable, inference_state, load_checkpoint, rank_rng_state, rng_state,
                               save_checkpoint, set_rng_state, unwrap)
from core.config import Config, config_from_dict, config_to_dict, lower_is_better, save_config
from core.errors import RunError  # noqa: F401  (defined in core.errors; importable from here as before)
from engine.evaluate import evaluate, metrics_with_rerank
from engine.feature_cache import feature_plan, image_rows_cover, prime_feature_caches
from engine.preflight import check_run_files
from core.logger import MetricWriter
from engine.optim import build_optimizer, build_scheduler
from engine.train_loop import train_one_epoch
from losses import build_criterion
from models.base import RetrievalModel
from models.registry import MODELS, build_model, list_models

log = logging.getLogger("rsitr")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"train.device is '{name}' but CUDA is not available")
        if name == "cuda":
            name = f"cuda:{dist.world_info()[1]}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def setup_determinism(cfg: Config) -> None:
    """Seed everything; in deterministic mode also force deterministic kernels."""
    dist.seed_all(cfg.train.seed)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def experiment_dir(cfg: Config, output_dir: str | None) -> Path:
    """``<output_dir or train.output_dir>/<train.experiment or config stem>``."""
    name = cfg.train.experiment or Path(cfg.source).stem or "run"
    return Path(output_dir or cfg.train.output_dir) / name


def prepare_run_dir(run_dir: Path, resuming: bool) -> None:
    """Create the fold directory; refuse to overwrite a finished or running fold unless resuming."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"output path {run_dir} exists and is not a directory")
    if not resuming and (run_dir / "last.pth").exists():
        raise RunError(f"{run_dir} already holds a run (last.pth); pass --resume {run_dir / 'last.pth'} "
                       f"or choose another --output-dir / train.experiment")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write to output directory {run_dir}: {e.strerror or e}") from None


@dataclass
class Parts:
    """Everything one fold needs."""

    bundle: DataBundle
    model: RetrievalModel
    criterion: nn.Module
    loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    features: Any = None  # engine.feature_cache.FeaturePlan


def build_parts(cfg: Config, fold: int, run_dir: Path | None, device: torch.device,
                resume: dict | None = None) -> Parts:
    """Data, model, criterion, loader, optimizer, scheduler and scaler for one fold."""
    bundle = build_data(cfg.data, fold=fold, run_dir=run_dir if dist.is_main() else None,
                        tokenizer_state=resume["tokenizer"] if resume else None, source=cfg.source)
    # a resumed run takes every weight from the checkpoint: no pretrained file is read again
    mcfg = replace(cfg.model, pretrained=False, init_from="") if resume else cfg.model
    model = build_model(mcfg, model_context(bundle), cfg.source).to(device)
    criterion = build_criterion(cfg.loss, cfg.source).to(device)
    plan = feature_plan(model, cfg)  # cached image features: the loaders decode no image
    loader = train_loader(bundle, cfg.data, distributed=dist.is_dist(), seed=cfg.train.seed,
                          deterministic=cfg.train.deterministic, pixels=not plan.image,
                          pixel_splits=() if plan.image else ("train", "val", "test"))
    if cfg.train.epochs == 0:  # evaluation of the initial weights only (zero-shot methods, baselines)
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
    else:
        optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, len(loader), max(1, cfg.train.epochs))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.train.amp == "fp16")
    return Parts(bundle, model, criterion, loader, optimizer, scheduler, scaler, plan)


def checkpoint_state(cfg: Config, parts: Parts, model: nn.Module, epoch: int, step: int, best: float,
                     best_epoch: int, fold: int, rng: list[dict] | None = None) -> dict[str, Any]:
    """What ``last.pth`` holds; ``rng``: every process's generators in rank order (default: this process's)."""
    bare = unwrap(model)
    return {"model": bare.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(), "epoch": epoch,
            "step": step, "best_metric": best, "best_epoch": best_epoch, "config": config_to_dict(cfg),
            "tokenizer": parts.bundle.tokenizer.state(), "scene_names": list(parts.bundle.scene_names),
            "fold": fold, "config_source": cfg.source, "rng": rng if rng is not None else [rng_state()],
            "extra": bare.extra_state(), "method": cfg.model.name}


def restore(parts: Parts, ckpt: dict) -> tuple[int, int, float, int]:
    """Load a ``last.pth`` into the parts; return (next epoch, step, best metric, best epoch)."""
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    restore_scaler(parts.scaler, ckpt["scaler"])
    parts.model.load_extra_state(ckpt.get("extra", {}))
    stored = ckpt["rng"]
    n_states = len(stored) if isinstance(stored, list) else 1
    if n_states != dist.world_size():
        log.warning("the checkpoint holds the generators of %d process(es), this run has %d: the resume is not exact "
                    "(random draws such as dropout differ from an uninterrupted run)", n_states, dist.world_size())
    set_rng_state(rank_rng_state(stored, dist.rank()))  # every rank its own generators
    return ckpt["epoch"] + 1, ckpt["step"], ckpt["best_metric"], ckpt.get("best_epoch", -1)


def restore_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Load a checkpoint's GradScaler state; across amp settings too.

    A checkpoint trained without fp16 holds ``{}`` (a disabled scaler's state), which an enabled scaler refuses:
    resuming such a run with ``train.amp=fp16`` starts the scaler fresh (its initial scale, as a new fp16 run). A
    disabled scaler (bf16 / off, CPU) ignores a stored fp16 state.
    """
    if scaler.is_enabled() and not state:
        log.info("train.amp=fp16 over a checkpoint saved without a gradient scaler: the scaler starts fresh (scale "
                 "%g)", scaler.get_scale())
        return
    scaler.load_state_dict(state)


def evaluate_split(cfg: Config, model: nn.Module, bundle: DataBundle, split: str, device: torch.device,
                   rerank: str = "none", rerank_kw: dict | None = None) -> tuple[dict, torch.Tensor]:
    """Metrics of one split of ``bundle`` (``val``, ``test`` or a union's ``test/<member>``), encoded under
    ``eval.amp`` (fp32 by default, never ``train.amp``: validation and test numbers must not depend on the training
    precision)."""
    data = bundle.split(split)
    pixels = not image_rows_cover(model, data) or bool(cfg.eval.recipe)
    img_loader, txt_loader = eval_loaders(data, bundle, cfg.data, cfg.eval.recipe, pixels=pixels)
    names = {n: i for i, n in enumerate(bundle.scene_names)}
    scenes = torch.tensor([names.get(s, -1) for s in data.scenes])
    return evaluate(model, img_loader, txt_loader, torch.tensor(data.txt2img), device, amp=cfg.eval.amp,
                    shard=cfg.eval.sim_shard, rerank=rerank, rerank_kw=rerank_kw, img_scenes=scenes,
                    scene_rs=tuple(cfg.eval.scene_recall))


def fit(cfg: Config, fold: int, run_dir: Path, device: torch.device, resume: dict | None = None) -> dict:
    """Train one fold, keep ``last.pth`` and ``best.pth`` (by validation ``eval.select_metric``), test best once.

    Returns:
        ``{"fold", "best_epoch", "best_val", "test": test metrics}`` (test metrics on rank 0 only).
    """
    list_models()  # make sure every method is registered
    if resume is not None:
        check_resumable(resume, run_dir / "last.pth")
    check_run_files(cfg, resume["tokenizer"] if resume else None)  # every missing file at once, before any data
    if MODELS.get(cfg.model.name).zero_shot and cfg.train.epochs:
        log.info("%s is evaluation-only: train.epochs set to 0", cfg.model.name)
        cfg = replace(cfg, train=replace(cfg.train, epochs=0))
    setup_determinism(cfg)
    parts = build_parts(cfg, fold, run_dir, device, resume)
    start, step, best, best_epoch = restore(parts, resume) if resume else (0, 0, initial_best(cfg), -1)
    if resume is not None:
        best, best_epoch = _resumed_best(cfg, resume, best, best_epoch)
    prime_feature_caches(parts.model, parts.bundle, cfg, device, parts.features)  # from the final weights
    model: nn.Module = parts.model
    if dist.is_dist():
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                    broadcast_buffers=parts.model.ddp_broadcast_buffers)
    writer = MetricWriter(run_dir) if dist.is_main() else None
    facts = data_facts(parts.bundle)
    if dist.is_main():  # on resume too: the run's config.yaml shows what --set changed
        save_config(cfg, run_dir / "config.yaml")
        with open(run_dir / "config.yaml", "a") as f:  # comments: the file still loads as the run's config
            f.write(facts_comment(facts))
    tr = parts.bundle.train
    log.info("fold %d: %s, %d val images, %d steps per epoch, %d epochs", fold,
             f"{len(tr.filenames)} train images / {len(tr.captions)} captions" if tr is not None
             else f"training pairs streamed from {cfg.data.shards}",
             len(parts.bundle.val.filenames) if parts.bundle.val else 0, len(parts.loader), cfg.train.epochs)
    for epoch in range(start, cfg.train.epochs):
        for order in (parts.loader.sampler, parts.loader.dataset):  # in-memory: the sampler; streamed: the dataset
            if hasattr(order, "set_epoch"):
                order.set_epoch(epoch)
        stats = train_one_epoch(model, parts.criterion, parts.loader, parts.optimizer, parts.scheduler, parts.scaler,
                                epoch, device, amp=cfg.train.amp, grad_clip=cfg.optim.grad_clip,
                                log_every=cfg.train.log_every, log_every_s=cfg.train.log_every_s)
        step += stats["steps"]
        best, best_epoch = _end_of_epoch(cfg, parts, model, writer, stats, epoch, step, best, best_epoch, fold,
                                         run_dir, device)
        dist.barrier()
    if cfg.train.epochs == 0:
        best, best_epoch = _end_of_epoch(cfg, parts, model, writer, {"time_s": 0.0}, -1, 0, best, best_epoch, fold,
                                         run_dir, device)
    result = {"fold": fold, "best_epoch": best_epoch, "best_val": best, **facts}
    if dist.is_main():
        result["test"] = _final_test(cfg, parts, run_dir, device, writer, step, facts)
        writer.close()
    dist.barrier()
    return result


def initial_best(cfg: Config) -> float:
    """The best validation score before any validation: -inf, or +inf for a rank metric (lower is better)."""
    return math.inf if lower_is_better(cfg.eval.select_metric) else -math.inf


def improves(score: float, best: float, metric: str) -> bool:
    """Whether validation ``score`` of ``metric`` beats ``best``: higher, or lower for medR / meanR (a NaN never)."""
    if math.isnan(score):
        return False
    return score < best if lower_is_better(metric) else score > best


def _resumed_best(cfg: Config, ckpt: dict, best: float, best_epoch: int) -> tuple[float, int]:
    """The checkpoint's best score, unless ``--set`` changed ``eval.select_metric``: then the best epoch is chosen
    anew (a score of another metric, or of the other direction, cannot be compared)."""
    before = ckpt["config"].get("eval", {}).get("select_metric", "mR")
    if before == cfg.eval.select_metric:
        return best, best_epoch
    log.warning("eval.select_metric changed from %s to %s on resume: best.pth is chosen anew from the next "
                "validation", before, cfg.eval.select_metric)
    return initial_best(cfg), -1


def _end_of_epoch(cfg: Config, parts: Parts, model: nn.Module, writer: MetricWriter | None, stats: dict, epoch: int,
                  step: int, best: float, best_epoch: int, fold: int, run_dir: Path,
                  device: torch.device) -> tuple[float, int]:
    """Called by every rank: rank 0 validates, then every rank's generators are gathered (each where its next epoch
    starts: rank 0 after validating), and rank 0 writes ``last.pth`` (and ``best.pth``) and the metrics row."""
    row, improved = {}, False
    if dist.is_main():
        row, improved, best, best_epoch = _validate(cfg, parts, model, stats, epoch, best, best_epoch, device)
    rng = dist.gather_object(rng_state())
    if not dist.is_main():
        return best, best_epoch
    state = checkpoint_state(cfg, parts, model, epoch, step, best, best_epoch, fold, rng)
    if improved:
        save_checkpoint(run_dir / "best.pth", inference_state(state))  # weights only: never resumed
    save_checkpoint(run_dir / "last.pth", state)
    writer.write(step, row, epoch=epoch)
    val = f"val {cfg.eval.select_metric} {row.get('val/' + cfg.eval.select_metric, float('nan')):.2f}"
    log.info("epoch %d: loss %.4f, %s (best %.2f at epoch %d), %.1fs", epoch, stats.get("loss", float("nan")), val,
             best, best_epoch, stats["time_s"])
    return best, best_epoch


def _validate(cfg: Config, parts: Parts, model: nn.Module, stats: dict, epoch: int, best: float, best_epoch: int,
              device: torch.device) -> tuple[dict, bool, float, int]:
    """(metrics row, improved, best, best epoch) after epoch ``epoch`` (validation when it is due)."""
    row = {f"train/{k}": v for k, v in stats.items()}
    improved = False
    if parts.bundle.val is not None and ((epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.train.epochs):
        metrics, _ = evaluate_split(cfg, model, parts.bundle, "val", device)
        row.update({f"val/{k}": v for k, v in metrics.items()})
        score = metrics[cfg.eval.select_metric]
        improved = improves(score, best, cfg.eval.select_metric)
        if improved:
            best, best_epoch = score, epoch
    elif parts.bundle.val is None:
        improved, best_epoch = True, epoch  # no validation split: the last epoch is the one kept
    return row, improved, best, best_epoch


def _final_test(cfg: Config, parts: Parts, run_dir: Path, device: torch.device, writer: MetricWriter,
                step: int, facts: dict) -> dict:
    """Test ``best.pth`` once on every test set and write ``test.json``: the metrics of the test split, or for a
    union ``{"test_sets": {member: metrics}}`` (one row per member's own test split), with the run's facts."""
    ckpt = load_checkpoint(run_dir / "best.pth", method=cfg.model.name)
    parts.model.load_state_dict(ckpt["model"])
    parts.model.load_extra_state(ckpt.get("extra", {}))
    rerank = cfg.eval.rerank
    kw = rerank_for_test(cfg, parts.model, parts.bundle, rerank, device) if rerank != "none" else {}
    sets = parts.bundle.test_splits()
    per = {name: _test_set(cfg, parts, name, device, rerank, kw) for name in sets}
    if list(sets) == ["test"]:
        metrics, rows = per["test"], {"test": per["test"]}
    else:
        rows = {name.split("/", 1)[1]: m for name, m in per.items()}
        metrics = {"test_sets": rows}
    metrics.update(best_epoch=ckpt.get("best_epoch", ckpt["epoch"]), method=cfg.model.name,
                   checkpoint=str(run_dir / "best.pth"), **facts)
    (run_dir / "test.json").write_text(json.dumps(metrics, indent=2))
    for label, m in rows.items():
        prefix = "test" if label == "test" else f"test/{label}"
        writer.write(step, {f"{prefix}/{k}": v for k, v in m.items() if isinstance(v, (int, float))})
        log.info("%s (best epoch %s): %s", prefix, metrics["best_epoch"], format_metrics(m))
    return metrics


def _test_set(cfg: Config, parts: Parts, name: str, device: torch.device, rerank: str, kw: dict) -> dict:
    """Metrics of one test set; reranked ones with the plain ones beside (as test.py --rerank)."""
    metrics, sim = evaluate_split(cfg, parts.model, parts.bundle, name, device, rerank, kw)
    if rerank != "none":
        plain = metrics_with_rerank(sim, torch.tensor(parts.bundle.split(name).txt2img))
        metrics.update(rerank={"name": rerank, **kw}, no_rerank=plain)
        log.info("%s without rerank: %s", name, format_metrics(plain))
    return metrics


def rerank_params(cfg: Config) -> dict:
    """The config's rerank settings, ``eval.rerank_params`` (checked per reranker by ``engine.rerank.rerank_settings``)."""
    return dict(cfg.eval.rerank_params)


def rerank_for_test(cfg: Config, model: nn.Module, bundle: DataBundle, name: str, device: torch.device) -> dict:
    """Settings of rerank ``name`` for a test: tuned on the fold's validation split (``eval.tune_rerank``, for the
    rerankers that can be tuned, when the bundle has one), else the config's; never tuned on test."""
    from engine.rerank import TUNERS, rerank_settings

    val = None
    if name in TUNERS and cfg.eval.tune_rerank and bundle.val is not None:
        _, sim = evaluate_split(cfg, model, bundle, "val", device)
        val = (sim, bundle.val.txt2img)
    return rerank_settings(name, rerank_params(cfg), val, cfg.source)


def data_facts(bundle: DataBundle) -> dict:
    """What a run's outputs say about its data: the vocabulary and the leakage check.

    Returns:
        ``{"vocab": {tokenizer, source, n_words[, n_test_only, test_only_examples]}, "leakage": {n_same_name,
        near_dup, action, n_near_test, n_removed, removed, test_near_dups, n_train_near_dups, train_near_dups}}`` (see
        data.tokenize.vocab_report and data.folds.leakage_report: ``removed`` names every training image dropped as a
        near-duplicate of a test image, ``test_near_dups`` each such pair with its distance).
    """
    leak = bundle.leakage
    keys = ("near_dup", "action", "n_near_test", "n_removed", "removed", "test_near_dups", "n_train_near_dups",
            "train_near_dups")
    return {"vocab": dict(bundle.vocab),
            "leakage": {"n_same_name": leak.get("n_same_name", 0), **{k: leak[k] for k in keys if k in leak}}}


def facts_comment(facts: dict) -> str:
    """:func:`data_facts` as YAML comment lines (appended to the run's config.yaml)."""
    v, leak = facts["vocab"], facts["leakage"]
    test_only = (f"; {v['n_from_test']} of them only thanks to test captions, {v['n_test_only']} in no training "
                 f"caption" if "n_from_test" in v else "")
    spec = leak.get("near_dup", {})
    return (f"# vocabulary used: {v.get('tokenizer')} {v.get('source', '')} ({v.get('n_words')} words{test_only})\n"
            f"# leakage check: {leak['n_same_name']} shared file names; {spec.get('hash', '?')} {spec.get('bits', '?')}"
            f" bits, distance <= {spec.get('threshold', '?')}: {leak.get('n_near_test', 0)} training image(s) near a test "
            f"image, {leak.get('n_removed', 0)} removed (near_dup_action {leak.get('action', '?')}); "
            f"{leak.get('n_train_near_dups', 0)} near-duplicate copies inside training\n")


def format_metrics(m: dict) -> str:
    """One line: R@1/5/10 both ways, mR."""
    keys = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR")
    return "  ".join(f"{k} {m[k]:.2f}" for k in keys if k in m)


def config_for_rebuild(ckpt: dict) -> Config:
    """The checkpoint's config with pretrained loading switched off (the weights come from the checkpoint)."""
    cfg = config_from_dict(ckpt["config"], source=f"checkpoint:{ckpt.get('method')}")
    return replace(cfg, model=replace(cfg.model, pretrained=False, init_from=""))
