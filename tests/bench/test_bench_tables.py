"""The result tables of bench/bench_serve.py and bench/bench_search.py (one shared engine.benchmark.markdown_table):
hand-written expected text, the same bytes the scripts printed before the tables were merged; and bench_kamcl's
pairs, which must time the same computation twice."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from engine.benchmark import latency_ms, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


LAT = np.array([3.0, 1.0, 2.0, 10.0, 4.0])  # median 3; p95 (linear) = 4 + 0.8 * (10 - 4) = 8.8


def test_markdown_table_and_latency():
    assert markdown_table((("a", "l"), ("b", "r")), [["x", "1"], ["y", ""]]) == (
        "| a | b |\n|---|---:|\n| x | 1 |\n| y |  |\n")
    assert markdown_table((("only", "l"),), []) == "| only |\n|---|\n"
    assert latency_ms(LAT, 2) == (3.0, 8.8)
    assert latency_ms(LAT / 3, 3) == (1.0, 2.933)


def test_bench_serve_table():
    serve = _load("bench_serve")
    base = np.array([0.5, 1.5, 1.0])
    rows = [serve.row("demo", 1234, "in-process call (baseline)", base, 0.25, 1.0),
            serve.row("synthetic", 100000, "HTTP, 8 clients", LAT, 2.0, 1.0)]
    assert rows[1] == {"index": "synthetic", "n": 100000, "mode": "HTTP, 8 clients", "p50_ms": 3.0, "p95_ms": 8.8,
                       "qps": 2.5, "p50_vs_in_process": 3.0}
    text = serve.markdown({"queries": 5, "k": 20, "model": "vse", "dim": 512, "cpus": 2, "rows": rows})
    assert text == (
        "5 distinct text queries per row, k=20, model vse (d=512), 2 CPUs, loopback\n\n"
        "| index | images | mode | p50 (ms) | p95 (ms) | queries/s | p50 / in-process p50 |\n"
        "|---|---:|---|---:|---:|---:|---:|\n"
        "| demo | 1,234 | in-process call (baseline) | 1.0 | 1.4 | 12.0 | 1.00 |\n"
        "| synthetic | 100,000 | HTTP, 8 clients | 3.0 | 8.8 | 2.5 | 3.00 |\n")


def test_bench_search_table():
    search = pytest.importorskip("faiss") and _load("bench_search")
    rows = [search.row("exact (IndexFlatIP brute force)", 1.234, LAT, 1.0, {}),
            search.row("ivf (search.index)", 12.5, LAT / 3, 0.98765, {"nlist": 1024, "nprobe": 16})]
    assert rows[1] == {"index": "ivf (search.index)", "build_s": 12.5, "query_median_ms": 1.0, "query_p95_ms": 2.933,
                       "recall_at_k": 0.9877, "params": {"nlist": 1024, "nprobe": 16}}
    text = search.markdown({"n": 1000000, "dim": 512, "data": "clustered", "queries": 200, "k": 10, "faiss": "1.8.0",
                            "threads": 2, "query_threads": 1, "rows": rows})
    assert text == (
        "n=1,000,000 d=512 (clustered), 200 single queries, k=10, faiss 1.8.0, build on 2 threads, queries on 1\n\n"
        "| index | build (s) | query median (ms) | query p95 (ms) | recall@10 vs exact | params |\n"
        "|---|---:|---:|---:|---:|---|\n"
        "| exact (IndexFlatIP brute force) | 1.2 | 3.00 | 8.80 | 1.000 |  |\n"
        "| ivf (search.index) | 12.5 | 1.00 | 2.93 | 0.988 | nlist=1024, nprobe=16 |\n")


def test_bench_kamcl_pairs_compute_the_same_gradients():
    """Each bench_kamcl row times two implementations of one computation: their gradients must agree."""
    import torch

    from models.encoders.gpo import GPO
    kamcl = _load("bench_kamcl")
    torch.manual_seed(0)
    gpo = GPO(8, 6)
    ours, base = kamcl.gru_case(gpo, torch.tensor([9, 4, 1]), 9)
    grads = []
    for fn in (ours, base):
        gpo.zero_grad()
        fn()
        grads.append([p.grad.clone() for p in gpo.gru.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    x = kamcl.sort_input((2, 12, 3))
    grads = []
    for fn in kamcl.sort_case(x):
        x.grad = None
        fn()
        grads.append(x.grad.clone())
    assert torch.equal(*grads)
