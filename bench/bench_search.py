"""Benchmark the image index: build time, single-query latency and recall@10 against exact brute force.

    python bench/bench_search.py                       # 1M vectors, d=512, IVF vs exact (about 4 GB of RAM)
    python bench/bench_search.py --n 100000 --kinds ivf,hnsw --data gaussian --json out.json

Database vectors are unit vectors. ``--data clustered`` (default) draws them around ``--centers`` random centres
(image embeddings cluster by scene); ``--data gaussian`` is isotropic noise, the worst case for any approximate
index. Queries are fresh draws from the same distribution, searched one at a time (a user's search is one query).
Exact search is ``faiss.IndexFlatIP`` (brute force) over the same vectors in the same run; its results are the
reference for recall@10. Approximate indexes are built by ``search.index.build_faiss``, i.e. with the same
calibration the index builder uses.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from engine.benchmark import latency_ms, markdown_table  # noqa: E402
from search.index import build_faiss, normalize, topk_agreement  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200, help="single-query searches timed per index")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--kinds", default="ivf", help="comma list of approximate kinds: ivf, hnsw")
    p.add_argument("--data", choices=["clustered", "gaussian"], default="clustered")
    p.add_argument("--centers", type=int, default=10_000, help="clusters for --data clustered")
    p.add_argument("--noise", type=float, default=1.0, help="within-cluster noise norm (centres have norm 1)")
    p.add_argument("--recall-target", type=float, default=0.98, help="calibration target of the approximate kinds")
    p.add_argument("--query-threads", type=int, default=1,
                   help="OpenMP threads while timing single queries (1: stable under load, as a search server)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results as JSON")
    return p.parse_args(argv)


def make_vectors(n: int, d: int, rng: np.random.Generator, centers: np.ndarray | None, noise: float,
                 chunk: int = 100_000) -> np.ndarray:
    """[n, d] float32 unit vectors, generated in chunks so float64 temporaries stay small."""
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = rng.standard_normal((m, d), dtype=np.float32)
        if centers is not None:
            x = centers[rng.integers(0, len(centers), m)] + noise / np.sqrt(d) * x
        out[s:s + m] = normalize(x)
    return out


def time_queries(index: faiss.Index, q: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Search one query at a time on ``threads`` threads. Returns (ids [Q, k], latencies in ms [Q])."""
    ids, lat = np.empty((len(q), k), dtype=np.int64), np.empty(len(q))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        index.search(q[:1], k)  # warm-up (page-in, thread pool)
        for i in range(len(q)):
            t = time.perf_counter()
            ids[i] = index.search(q[i:i + 1], k)[1][0]
            lat[i] = 1000 * (time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(before)
    return ids, lat


def row(name: str, build_s: float, lat: np.ndarray, recall: float, params: dict) -> dict:
    median_ms, p95_ms = latency_ms(lat, 3)
    return {"index": name, "build_s": round(build_s, 2), "query_median_ms": median_ms, "query_p95_ms": p95_ms,
            "recall_at_k": round(recall, 4), "params": params}


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    centers = normalize(rng.standard_normal((args.centers, args.dim))) if args.data == "clustered" else None
    t = time.perf_counter()
    base = make_vectors(args.n, args.dim, rng, centers, args.noise)
    q = make_vectors(args.queries, args.dim, rng, centers, args.noise)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(base)
    ref, lat = time_queries(flat, q, args.k, args.query_threads)
    rows = [row("exact (IndexFlatIP brute force)", time.perf_counter() - t - lat.sum() / 1000, lat, 1.0, {})]
    del flat  # frees its 4 bytes x n x d copy before the next index is built
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        t = time.perf_counter()
        index, params = build_faiss(base, kind, recall_target=args.recall_target, seed=args.seed)
        build_s = time.perf_counter() - t
        ids, lat = time_queries(index, q, args.k, args.query_threads)
        rows.append(row(f"{kind} (search.index)", build_s, lat, topk_agreement(ids, ref), params))
        del index
    return {"n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k, "data": args.data,
            "centers": args.centers if centers is not None else None, "noise": args.noise,
            "threads": faiss.omp_get_max_threads(), "query_threads": args.query_threads, "faiss": faiss.__version__,
            "generate_s": round(gen_s, 1),
            "rows": rows}


def markdown(res: dict) -> str:
    head = (f"n={res['n']:,} d={res['dim']} ({res['data']}), {res['queries']} single queries, k={res['k']}, "
            f"faiss {res['faiss']}, build on {res['threads']} threads, queries on {res['query_threads']}\n\n")
    columns = (("index", "l"), ("build (s)", "r"), ("query median (ms)", "r"), ("query p95 (ms)", "r"),
               (f"recall@{res['k']} vs exact", "r"), ("params", "l"))
    return head + markdown_table(columns, ([r["index"], f"{r['build_s']:.1f}", f"{r['query_median_ms']:.2f}",
                                            f"{r['query_p95_ms']:.2f}", f"{r['recall_at_k']:.3f}",
                                            ", ".join(f"{k}={v}" for k, v in r["params"].items())]
                                           for r in res["rows"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.n < 2 * args.k or args.queries < 1:
        print("error: need --n >= 2k and --queries >= 1", file=sys.stderr)
        return 2
    res = run(args)
    print(markdown(res), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
