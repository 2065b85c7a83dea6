"""What a locked image tower costs per training step: recomputed, from the feature cache, and with no tower at all.

    python bench/bench_feature_cache.py [--config ucm_dual_encoder.yaml] [--root ../shared/data/ucm]
                                        [--images 300] [--steps 12] [--recompute-steps 4]

One process, one config (default: ``configs/ucm_dual_encoder.yaml`` on the real UCM images when ``--root`` exists,
else the generated demo set with ``configs/tests/tiny_dual_encoder.yaml``), the first ``--images`` images of every
split. Each setting times whole training steps, loader included (next batch, forward, loss, backward, optimizer):

1. ``recompute``: ``train.feature_cache: off``: every batch is decoded (from the uint8 pixel cache) and runs
   through the locked image tower;
2. ``cached``: the feature cache: batches carry names only, the model reads the tower's rows;
3. ``no image tower``: the same step with the image features taken from a fixed table by image id (what a model
   with no image tower at all would pay), the baseline of the goal "cached within 1.15x of no tower".

The text tower is as configured (locked and cached in the UCM config). Median step time of each setting, measured
in this run; the cache's first pass (priming) is reported separately.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.config import load_config  # noqa: E402
from data.build import build_data, model_context, train_loader  # noqa: E402
from engine.benchmark import markdown_table  # noqa: E402
from engine.cli import resolve_config_path  # noqa: E402
from engine.feature_cache import FeaturePlan, feature_plan, prime_feature_caches  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from losses import build_criterion  # noqa: E402
from models.registry import build_model  # noqa: E402
from engine.train_loop import to_device  # noqa: E402


def _steps(model, criterion, optimizer, loader, n: int) -> list[float]:
    times, it = [], iter(loader)
    model.train()
    for _ in range(n + 1):  # the first step warms up (allocations, lazy inits): not counted
        t0 = time.perf_counter()
        try:
            raw = next(it)
        except StopIteration:  # a short split: the next epoch (its start is timed as a step would pay it)
            it = iter(loader)
            raw = next(it)
        batch = to_device(raw, torch.device("cpu"))
        losses = criterion(model(batch), batch, 0)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="ucm_dual_encoder.yaml")
    ap.add_argument("--root", default="../shared/data/ucm")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--recompute-steps", type=int, default=4)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    if Path(args.root).is_dir():
        cfg = load_config(resolve_config_path(args.config), [f"data.root={args.root}"])
        where = f"{args.config} on {args.root}"
    else:
        cfg = load_config("configs/tests/tiny_dual_encoder.yaml")
        where = "configs/tests/tiny_dual_encoder.yaml on the demo set (no --root)"
    cfg = replace(cfg, data=replace(cfg.data, max_images=args.images, num_workers=0),
                  train=replace(cfg.train, feature_cache="memory"))
    bundle = build_data(cfg.data, fold=0, source=cfg.source)
    torch.manual_seed(0)
    model = build_model(cfg.model, model_context(bundle), cfg.source)
    criterion = build_criterion(cfg.loss, cfg.source)
    optimizer = build_optimizer(cfg.optim, model)
    plan = feature_plan(model, cfg)
    if not plan.image:
        raise SystemExit(f"{where}: the image tower is not cacheable (locked tower + deterministic pipeline needed)")

    # 1. recompute: pixels through the locked tower every step (the text cache as configured)
    text_only = FeaturePlan(image=False, text=plan.text)
    prime_feature_caches(model, bundle, cfg, torch.device("cpu"), text_only)
    pix = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=True)
    recompute = _steps(model, criterion, optimizer, pix, args.recompute_steps)

    # 2. cached: prime the image store (timed), loaders without pixels
    t0 = time.perf_counter()
    prime_feature_caches(model, bundle, cfg, torch.device("cpu"), FeaturePlan(image=True, text=False))
    prime_s = time.perf_counter() - t0
    names = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=True, pixels=False,
                         pixel_splits=())
    cached = _steps(model, criterion, optimizer, names, args.steps)

    # 3. no image tower: fixed rows by image id, same loader, same heads
    store = model.frozen_prefixes()["image"].store
    table = torch.randn(bundle.train.n_images, *store.table.shape[1:])
    model._image_features = lambda batch: table[batch["img_ids"]]  # type: ignore[method-assign]
    none = _steps(model, criterion, optimizer, names, args.steps)

    base = statistics.median(none)
    rows = []
    for name, t in (("recompute (feature_cache: off)", recompute), ("cached", cached), ("no image tower", none)):
        med = statistics.median(t)
        rows.append([name, str(len(t)), f"{med * 1000:.1f}", f"{med / base:.2f}x"])
    print(f"# locked image tower, {where}, batch {cfg.data.batch_size}, {args.images} images per split, "
          f"{torch.get_num_threads()} threads")
    print(markdown_table([("setting", "l"), ("steps", "r"), ("median step ms", "r"), ("vs no image tower", "r")],
                         rows))
    print(f"first pass of the cache (priming, {len(store)} images): {prime_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
