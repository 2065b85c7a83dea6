"""Benchmark the search web app: latency of text queries over HTTP, 1 and 8 concurrent clients, loopback only.

    python bench/bench_serve.py                                  # demo index + synthetic 100k-vector index
    python bench/bench_serve.py --resume best.pth --n 100000 --queries 200 --json out.json

Each index is served by ``scripts/serve.py`` in its own process on a free loopback port (the clients in this process
do not share its interpreter). The queries are distinct demo test captions, sent as ``GET /api/text?q=...&k=``;
every latency is one request, measured by the client. With C clients, C threads each send their share of the
``--queries`` one after another. The baseline, measured in the same run on the same queries, is the bare in-process
search call that the server makes (``search.query.Searcher.text``: encode the sentence, search the index).

Indexes: the demo index (every image of ``data/demo_precomp/images``, built with ``scripts/build_index.py``) and a
synthetic index of ``--n`` vectors (clustered unit vectors of the model's dimension, exact search as
``build_index.py`` chooses up to 100k images; file names only, no images). The model is ``--resume``, or by default
``configs/tests/tiny_vse.yaml`` with a 512-d embedding trained for one epoch (latency does not depend on training).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from engine.benchmark import latency_ms, markdown_table  # noqa: E402
from search.index import load_index, normalize, write_index  # noqa: E402
from search.query import Searcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo_precomp"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", help="checkpoint (default: train the tiny 512-d VSE model for one epoch)")
    p.add_argument("--n", type=int, default=100_000, help="vectors of the synthetic index")
    p.add_argument("--queries", type=int, default=200, help="requests per (index, clients) row (bounded)")
    p.add_argument("--clients", default="1,8", help="comma list of concurrent client counts")
    p.add_argument("--k", type=int, default=20, help="results per query (the page's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results as JSON")
    args = p.parse_args(argv)
    if not 1 <= args.queries <= 5000 or args.n < args.k:
        p.error("--queries must be in 1..5000 and --n >= --k")
    return args


def run_script(*argv: str) -> None:
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:1])} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def default_checkpoint(work: Path) -> str:
    run_script("train.py", "--config", "configs/tests/tiny_vse.yaml", "--output-dir", str(work / "run"),
               "--set", "model.embed_dim=512", "--set", "train.epochs=1")
    return str(work / "run" / "tiny_vse" / "fold0" / "best.pth")


def synthetic_index(out: Path, searcher_like: Searcher, n: int, seed: int) -> None:
    """``n`` clustered unit vectors of the model's dimension, tied to the same checkpoint as the demo index."""
    meta = searcher_like.index.meta
    rng = np.random.default_rng(seed)
    d = int(meta["dim"])
    centers = normalize(rng.standard_normal((1000, d)))
    emb = normalize(centers[rng.integers(0, 1000, n)] + rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d))
    write_index(out, [f"synthetic/{i:07d}.png" for i in range(n)], emb, images_root=str(out / "no_images"),
                checkpoint_id=meta["checkpoint_id"],
                extra={"checkpoint_path": meta["checkpoint_path"], "method": meta.get("method", "?")})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "scripts/serve.py", "--index", str(index), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"scripts/serve.py --index {index} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/api/info", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"scripts/serve.py did not answer within {timeout:.0f} s")


def http_latencies(url: str, queries: list[str], k: int, clients: int) -> tuple[np.ndarray, float]:
    """Latency in ms of every request, and the wall time of all of them (s)."""
    def worker(part: list[str]) -> list[float]:
        out = []
        with httpx.Client(base_url=url, timeout=60) as c:
            for q in part:
                t = time.perf_counter()
                r = c.get("/api/text", params={"q": q, "k": k})
                out.append(1000 * (time.perf_counter() - t))
                r.raise_for_status()
        return out

    parts = [queries[i::clients] for i in range(clients)]
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for part in pool.map(worker, parts) for x in part]
    return np.asarray(lat), time.perf_counter() - t


def in_process(searcher: Searcher, queries: list[str], k: int) -> np.ndarray:
    lat = []
    for q in queries:
        t = time.perf_counter()
        searcher.text(q, k)
        lat.append(1000 * (time.perf_counter() - t))
    return np.asarray(lat)


def row(index: str, n: int, mode: str, lat: np.ndarray, wall: float, base_p50: float) -> dict:
    p50_ms, p95_ms = latency_ms(lat, 2)
    return {"index": index, "n": n, "mode": mode, "p50_ms": p50_ms, "p95_ms": p95_ms, "qps": round(len(lat) / wall, 1),
            "p50_vs_in_process": round(float(np.median(lat)) / base_p50, 2)}


def bench_index(name: str, index: Path, searcher: Searcher, queries: list[str], args: argparse.Namespace
                ) -> list[dict]:
    searcher.text(queries[0], args.k)  # warm-up
    t = time.perf_counter()
    base = in_process(searcher, queries, args.k)
    rows = [row(name, searcher.index.meta["n"], "in-process call (baseline)", base, time.perf_counter() - t,
                float(np.median(base)))]
    proc, url = start_server(index)
    try:
        http_latencies(url, queries[:10], args.k, 1)  # warm-up: connections, first requests
        for c in [int(x) for x in args.clients.split(",")]:
            lat, wall = http_latencies(url, queries, args.k, c)
            rows.append(row(name, searcher.index.meta["n"], f"HTTP, {c} client{'s' * (c > 1)}", lat, wall,
                            float(np.median(base))))
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


COLUMNS = (("index", "l"), ("images", "r"), ("mode", "l"), ("p50 (ms)", "r"), ("p95 (ms)", "r"), ("queries/s", "r"),
           ("p50 / in-process p50", "r"))


def markdown(res: dict) -> str:
    head = (f"{res['queries']} distinct text queries per row, k={res['k']}, model {res['model']} (d={res['dim']}), "
            f"{res['cpus']} CPUs, loopback\n\n")
    return head + markdown_table(COLUMNS, ([r["index"], f"{r['n']:,}", r["mode"], f"{r['p50_ms']:.1f}",
                                           f"{r['p95_ms']:.1f}", f"{r['qps']:.1f}", f"{r['p50_vs_in_process']:.2f}"]
                                          for r in res["rows"]))


def run(args: argparse.Namespace, work: Path) -> dict:
    ckpt = args.resume or default_checkpoint(work)
    run_script("scripts/build_index.py", "--resume", ckpt, "--images", str(DEMO / "images"), "--out",
               str(work / "demo_index"), "--workers", "0", "--device", "cpu", "--quiet")
    demo = Searcher.open(work / "demo_index")
    caps = list(dict.fromkeys((DEMO / "test_caps.txt").read_text().splitlines()))
    queries = [caps[i % len(caps)] + (f" {i // len(caps)}" if i >= len(caps) else "") for i in range(args.queries)]
    rows = bench_index("demo", work / "demo_index", demo, queries, args)
    synthetic_index(work / "synthetic_index", demo, args.n, args.seed)
    big = Searcher(load_index(work / "synthetic_index"), demo.loaded)  # the same model, loaded once here
    rows += bench_index("synthetic", work / "synthetic_index", big, queries, args)
    return {"queries": args.queries, "k": args.k, "model": demo.facts()["model"], "dim": demo.index.meta["dim"],
            "cpus": os.cpu_count(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        res = run(args, Path(tmp))
    print(markdown(res), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
