"""Training-loader throughput on the real UCM images, without and with the decoded-pixel cache (``data.cache``).

    python bench/bench_loader.py --root ../shared/data/ucm [--size 256] [--workers 2] [--samples 600] [--steps 6]

1. Samples/s of the training loader for every method transform (galr, amfmn, pir, fisvl, clip, plain) at
   ``--size`` px with ``--workers`` workers (``configs/ucm_galr.yaml``'s setting: 256 px, 2 workers), before
   (``data.cache=false``: every sample decodes its JPEG) and after (``data.cache=true``), measured in the same run.
   The cache is filled once per run (every image decoded once); that time is its own column. Goal: >= 5x.
2. For every tiny config (``configs/tests/tiny_*.yaml`` that trains) on the real images, at its own image size,
   transform and workers: the model's own training rate (samples/s of forward + backward + step), the loader's
   rate and the share of step time spent waiting for data, uncached and cached, through
   ``engine.train_loop.train_one_epoch``. Goal: data wait < 10 % of step time with the cache.

Entry point only: everything it measures is library code (data.build, engine.train_loop).
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.config import load_config  # noqa: E402
from data.build import build_data, cache_jobs, model_context, train_loader  # noqa: E402
from data.images import clear_cache, fill_cache  # noqa: E402
from data.transforms import PIPELINES  # noqa: E402
from engine.optim import build_optimizer, build_scheduler  # noqa: E402
from engine.train_loop import train_one_epoch  # noqa: E402
from losses import build_criterion  # noqa: E402
from models.registry import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the training-loader measurement, run by a separate interpreter inside an export of an older commit ("today's code")
_BASELINE = """
import sys, time
from core.config import load_config
from data.build import build_data, train_loader
samples, sets = int(sys.argv[1]), sys.argv[2:]
cfg = load_config("configs/ucm_galr.yaml", sets)
bundle = build_data(cfg.data, splits=("train", "val", "test"))
loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=False)
loader.sampler.set_epoch(0)
it = iter(loader)
next(it)
n, t = 0, time.perf_counter()
while n < samples:
    n += len(next(it)["images"])
print(n / (time.perf_counter() - t))
"""
TINY = ["vse", "amfmn", "galr", "swan", "kamcl", "pir", "fisvl", "clip_finetune", "clip_adapter"]


def ucm_sets(root: str, *extra: str) -> list[str]:
    return ["data.dataset=ucm", f"data.root={root}", "data.vocab=", "data.max_images=0", "train.device=cpu", *extra]


def loader_rate(cfg, bundle, samples: int) -> tuple[float, float]:
    """(samples/s after the first batch, seconds to fill the pixel cache) of the training loader of ``cfg``."""
    t = time.perf_counter()
    if cfg.data.cache:
        fill_cache(cache_jobs(bundle, cfg.data))
    fill_s = time.perf_counter() - t
    loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=False)
    loader.sampler.set_epoch(0)
    it = iter(loader)
    next(it)  # worker start-up is not loading
    n, t = 0, time.perf_counter()
    while n < samples:
        n += len(next(it)["images"])
    rate = n / (time.perf_counter() - t)
    del it, loader
    return rate, fill_s


def baseline_rate(tree: Path, root: str, sets: list[str], samples: int) -> float:
    """Samples/s of the training loader of the code in ``tree`` (another checkout), in a separate interpreter."""
    out = subprocess.run([sys.executable, "-c", _BASELINE, str(samples), *ucm_sets(str(Path(root).resolve())), *sets],
                         cwd=tree, capture_output=True, text=True, env={"PYTHONPATH": str(tree), "PATH": ""})
    if out.returncode != 0:
        raise RuntimeError(f"baseline run failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip().splitlines()[-1])


def export_commit(commit: str, into: Path) -> Path:
    """``git archive`` of ``commit`` unpacked into ``into`` (the repository is only read)."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return into


def part1(args) -> None:
    print(f"## 1. Training loader on the real UCM images: {args.size} px, {args.workers} workers, "
          f"{args.samples} samples per row\n")
    print(f"today = the code of commit {args.baseline} (decode per sample), run in the same session; uncached / "
          f"cached = this checkout with data.cache=false / true\n")
    print("| transform | today samples/s | uncached samples/s | cached samples/s | cached / today | "
          "cached / uncached | cache fill s (once per run) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tree = export_commit(args.baseline, Path(tmp)) if args.baseline else None
        for name in args.transforms:
            sets = [f"data.transform={name}", f"data.image_size={args.size}", f"data.num_workers={args.workers}"]
            today = baseline_rate(tree, args.root, sets, args.samples) if tree else float("nan")
            rates = {}
            for cache in (False, True):
                cfg = load_config("configs/ucm_galr.yaml", ucm_sets(args.root, *sets, f"data.cache={str(cache).lower()}"))
                bundle = build_data(cfg.data, splits=("train", "val", "test"))
                rates[cache] = loader_rate(cfg, bundle, args.samples)
            (before, _), (after, fill) = rates[False], rates[True]
            print(f"| {name} | {today:.0f} | {before:.0f} | {after:.0f} | {after / today:.1f}x | {after / before:.1f}x "
                  f"| {fill:.1f} |", flush=True)
            clear_cache()  # each row pays its own fill


def wait_share(cfg, steps: int) -> dict[str, float]:
    """Train ``steps`` steps of ``cfg`` on its real loader; model rate, loader rate and data wait share."""
    torch.manual_seed(0)
    bundle = build_data(cfg.data)
    t = time.perf_counter()
    loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=False)
    fill_s = time.perf_counter() - t
    model = build_model(cfg.model, model_context(bundle))
    criterion = build_criterion(cfg.loss)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, len(loader), 1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loader.sampler.set_epoch(0)
    batches = _take(loader, steps + 1)
    warm = next(batches)  # worker start-up and the first (slow) step are not measured
    train_one_epoch(model, criterion, [warm], optimizer, scheduler, scaler, 0, torch.device("cpu"), progress=False)
    s = train_one_epoch(model, criterion, batches, optimizer, scheduler, scaler, 0, torch.device("cpu"),
                        progress=False)
    n = cfg.data.batch_size * s["steps"]
    return {"model": n / (s["time_s"] - s["data_s"]), "loader": n / max(s["data_s"], 1e-9),
            "wait": s["data_s"] / s["time_s"], "fill": fill_s}


def part2(args) -> None:
    print(f"\n## 2. Tiny configs on the real UCM images ({args.steps} steps each, after one warm-up step; "
          f"{torch.get_num_threads()} torch threads)\n")
    print("| config | px / transform / workers | model samples/s | loader samples/s uncached -> cached | "
          "data wait uncached | data wait cached | cache fill s |")
    print("|---|---|---|---|---|---|---|")
    for method in args.tiny:
        res = {}
        for cache in (False, True):
            cfg = load_config(f"configs/tests/tiny_{method}.yaml", ucm_sets(args.root, f"data.cache={str(cache).lower()}"))
            try:
                res[cache] = wait_share(cfg, args.steps)
            except Exception as e:  # a config that cannot run on UCM (e.g. tag files of another set) is reported
                res = {"error": f"{type(e).__name__}: {str(e)[:100]}"}
                break
            clear_cache()
        if "error" in res:
            print(f"| tiny_{method} | | not run: {res['error']} | | | | |", flush=True)
            continue
        d = cfg.data
        print(f"| tiny_{method} | {d.image_size} / {d.transform} / {d.num_workers} | {res[True]['model']:.0f} | "
              f"{res[False]['loader']:.0f} -> {res[True]['loader']:.0f} | {100 * res[False]['wait']:.1f} % | "
              f"{100 * res[True]['wait']:.1f} % | {res[True]['fill']:.1f} |", flush=True)


def _take(loader, n: int):
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/ucm", help="folder holding ucm_precomp/ (with images/)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples", type=int, default=600)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--part", choices=["1", "2", "all"], default="all")
    p.add_argument("--baseline", default="719e957", help="commit whose loader is 'today' (\"\" = skip)")
    p.add_argument("--transforms", nargs="+", default=PIPELINES.names(), help="transforms of part 1")
    p.add_argument("--tiny", nargs="+", default=TINY, help="tiny configs of part 2 (method names)")
    args = p.parse_args(argv)
    if not (Path(args.root) / "ucm_precomp" / "images").is_dir():
        print(f"no UCM images under {args.root}/ucm_precomp/images", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    if args.part in ("1", "all"):
        part1(args)
    if args.part in ("2", "all"):
        part2(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
