"""Streamed webdataset shards against the in-memory loader on the same real UCM images: samples/s and peak RSS.

    python bench/bench_shards.py --root ../shared/data/ucm [--samples 1500] [--workers 2] [--size 256]
        [--per-shard 100 1000 5000] [--max-images 0] [--repeats 3] [--work /tmp/rsitr_shards]

The UCM training split (1890 images, 9450 pairs) is written as shards with every ``--per-shard`` size (so the same
pairs lie in 95, 10 and 2 shards by default; written once into ``--work``). Each loader then runs in a fresh
interpreter with ``configs/ucm_galr.yaml``'s pipeline (GaLR augmentation at ``--size`` px, ``--workers`` workers,
global batch 100): the in-memory loader with the decoded-pixel cache (``data.cache=true``, the default) and
without it (every sample decodes its JPEG, as a streamed sample must), and the streamed loader on each shard set.
Printed per loader: samples/s after the first batch (median of ``--repeats`` runs, the loaders interleaved), its ratio to the in-memory loader (both cached and uncached,
measured in the same run), the peak RSS of the main process and of the largest worker (``getrusage``), and the
time to build the data (the leakage check hashes every image; the streamed build also reads every shard once).

Entry point only: what it measures is library code (data.build, data.shards).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.benchmark import markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_CHILD = """
import json, resource, sys, time
sys.path.insert(0, ".")
from core.config import load_config
from data.build import build_data, train_loader
samples, sets = int(sys.argv[1]), sys.argv[2:]
t = time.perf_counter()
cfg = load_config("configs/ucm_galr.yaml", sets)
bundle = build_data(cfg.data, splits=("train", "test"))
loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=False)
build_s = time.perf_counter() - t
for order in (loader.sampler, loader.dataset):
    if hasattr(order, "set_epoch"):
        order.set_epoch(0)
it = iter(loader)
next(it)  # worker start-up is not loading
n, t = 0, time.perf_counter()
while n < samples:
    n += len(next(it)["images"])
rate = n / (time.perf_counter() - t)
del it, loader
kb = lambda who: resource.getrusage(who).ru_maxrss
print(json.dumps({"rate": rate, "build_s": build_s, "rss_main_mb": kb(resource.RUSAGE_SELF) / 1024,
                  "rss_worker_mb": kb(resource.RUSAGE_CHILDREN) / 1024}))
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/ucm", help="folder holding ucm_precomp/ (with images/)")
    p.add_argument("--samples", type=int, default=1500, help="samples timed per loader")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--per-shard", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--max-images", type=int, default=0, help="only the first N training images (0: all)")
    p.add_argument("--work", default="/tmp/rsitr_shards", help="where the shards are written (kept for reruns)")
    p.add_argument("--repeats", type=int, default=3, help="runs per loader, interleaved; the median is shown")
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args(argv)


def make(args: argparse.Namespace, per_shard: int) -> Path:
    out = Path(args.work) / f"ucm_{args.max_images or 'all'}_{per_shard}"
    if not (out / "index.json").is_file():
        cmd = [sys.executable, "scripts/make_shards.py", "--precomp", str(Path(args.root) / "ucm_precomp"),
               "--out", str(out), "--pairs-per-shard", str(per_shard), "--max-images", str(args.max_images)]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return out


def measure(args: argparse.Namespace, extra: list[str]) -> dict:
    sets = ["data.dataset=ucm", f"data.root={args.root}", "data.vocab=", f"data.max_images={args.max_images}",
            "train.device=cpu", f"data.num_workers={args.workers}", f"data.image_size={args.size}",
            "data.batch_size=100", *extra]
    r = subprocess.run([sys.executable, "-c", _CHILD, str(args.samples), *sets], cwd=ROOT, capture_output=True,
                       text=True, check=False)
    if r.returncode:
        raise SystemExit(f"loader run failed ({' '.join(extra)}):\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loaders = [("in-memory, pixel cache (data.cache=true)", ["data.cache=true"]),
               ("in-memory, no cache (decode per sample)", ["data.cache=false"])]
    for per in args.per_shard:
        folder = make(args, per)
        n_shards = len(json.loads((folder / "index.json").read_text())["shards"])
        loaders.append((f"webdataset, {n_shards} shards of {per} pairs",
                        ["data.format=webdataset", f"data.shards={folder}", "data.cache=false"]))
    runs: dict[str, list[dict]] = {name: [] for name, _ in loaders}
    for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits every loader alike
        for name, extra in loaders:
            runs[name].append(measure(args, extra))
    rows = []
    for name, _ in loaders:
        rates = sorted(r["rate"] for r in runs[name])
        rows.append((name, {**runs[name][0], "rate": statistics.median(rates), "rates": rates,
                            "rss_main_mb": max(r["rss_main_mb"] for r in runs[name]),
                            "rss_worker_mb": max(r["rss_worker_mb"] for r in runs[name])}))
    cached, uncached = rows[0][1]["rate"], rows[1][1]["rate"]
    table = [[name, f"{r['rate']:.0f} ({r['rates'][0]:.0f}-{r['rates'][-1]:.0f})", f"{r['rate'] / cached:.2f}",
              f"{r['rate'] / uncached:.2f}", f"{r['rss_main_mb']:.0f}", f"{r['rss_worker_mb']:.0f}",
              f"{r['build_s']:.1f}"] for name, r in rows]
    print(f"UCM train split ({args.max_images or 'all'} images), GaLR pipeline at {args.size} px, {args.workers} "
          f"workers, batch 100, {args.samples} samples timed per loader, median of {args.repeats} interleaved runs "
          "(range)\n")
    print(markdown_table((("loader", "l"), ("samples/s", "r"), ("vs cached", "r"), ("vs uncached", "r"),
                          ("peak RSS main (MB)", "r"), ("peak RSS worker (MB)", "r"), ("build s", "r")), table))
    if args.json:
        Path(args.json).write_text(json.dumps([{"loader": n, **r} for n, r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
