"""Engine overhead and data wait, on CPU.

    python bench/bench_train.py [--config configs/demo.yaml] [--steps 30] [--workers 2]

1. Step time of ``engine.train_loop.train_one_epoch`` against a bare PyTorch loop (forward, loss, zero_grad,
   backward, step) on the same model and the same pre-collated batch, measured in the same run, interleaved.
   Goal: engine <= 1.10x bare.
2. The share of step time spent waiting for data with the real demo loader (``data.num_workers`` workers).
   Goal: <= 10 %.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.build import build_data, model_context, train_loader  # noqa: E402
from core.config import load_config  # noqa: E402
from engine.optim import build_optimizer, build_scheduler  # noqa: E402
from engine.train_loop import train_one_epoch  # noqa: E402
from losses import build_criterion  # noqa: E402
from models.registry import build_model  # noqa: E402


def bare_loop(model, criterion, batch, optimizer, steps: int) -> float:
    """Seconds per step of the plainest possible loop."""
    model.train()
    t = time.perf_counter()
    for _ in range(steps):
        loss = criterion(model(batch), batch, 0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - t) / steps


def engine_loop(model, criterion, batch, optimizer, scheduler, steps: int) -> float:
    """Seconds per step of train_one_epoch over a loader that repeats the same batch."""
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    stats = train_one_epoch(model, criterion, [batch] * steps, optimizer, scheduler, scaler, 0, torch.device("cpu"),
                            progress=False)
    return stats["time_s"] / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    cfg = load_config(args.config, [f"data.num_workers={args.workers}", "train.device=cpu"])
    torch.manual_seed(0)
    bundle = build_data(cfg.data)
    model = build_model(cfg.model, model_context(bundle))
    criterion = build_criterion(cfg.loss)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, args.steps, 10 * args.repeats)
    loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=False)
    loader.sampler.set_epoch(0)
    batch = next(iter(loader))
    bare_loop(model, criterion, batch, optimizer, 3)  # warm-up
    bare, eng = [], []
    for _ in range(args.repeats):  # interleaved so that machine load hits both alike
        bare.append(bare_loop(model, criterion, batch, optimizer, args.steps))
        eng.append(engine_loop(model, criterion, batch, optimizer, scheduler, args.steps))
    b, e = statistics.median(bare), statistics.median(eng)
    real = train_one_epoch(model, criterion, _take(loader, args.steps), optimizer, scheduler,
                           torch.amp.GradScaler("cuda", enabled=False), 0, torch.device("cpu"), progress=False)
    wait = real["data_s"] / real["time_s"]
    print(f"config {args.config}: batch {cfg.data.batch_size}, image {cfg.data.image_size}px, "
          f"{torch.get_num_threads()} threads, {args.workers} loader workers\n")
    print("| measure | value | goal |\n|---|---|---|")
    print(f"| bare PyTorch loop, s/step (median of {args.repeats}) | {b:.4f} | |")
    print(f"| engine train_one_epoch, s/step | {e:.4f} | |")
    print(f"| engine / bare | {e / b:.3f}x | <= 1.10x |")
    print(f"| real loader: step time, s | {real['time_s'] / real['steps']:.4f} | |")
    print(f"| real loader: data wait share | {100 * wait:.1f} % | <= 10 % |")
    return 0


def _take(loader, n: int):
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield batch


if __name__ == "__main__":
    sys.exit(main())
