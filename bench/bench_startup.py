"""Start-up time of every entry point next to a bare ``python -c "import numpy"``, measured in the same run.

    python bench/bench_startup.py [--repeat 5] [--only train.py eval_sims ...] [--json out.json]

Each row is one whole process, run ``--repeat`` times; the rounds are interleaved (every command once per round) so
that a change in machine load touches all rows alike. Rows: the two baselines (``import numpy``, and ``import
torch`` for scale), ``train.py --help``, ``test.py --help``, ``--help`` of every ``scripts/*.py``, and
``scripts/eval_sims.py`` on a small saved matrix (200 images x 1000 captions, float32), plain and with
``--rerank galr``. Columns: median and best wall seconds, the median over numpy's median, and whether the process
imports torch (read once per row from ``python -X importtime``). This script needs numpy alone, so that it can tell.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.benchmark import markdown_table  # noqa: E402

COLUMNS = (("entry point", "l"), ("median s", "r"), ("best s", "r"), ("x import numpy", "r"),
           ("imports torch", "l"))
BASELINE = "python -c 'import numpy'"


def save_matrix(folder: Path, n_img: int = 200, cpi: int = 5) -> Path:
    """A small float32 similarity matrix (captions in image order, ``cpi`` per image) with a retrieval signal."""
    rng = np.random.default_rng(0)
    img = rng.standard_normal((n_img, 32))
    txt = np.repeat(img, cpi, axis=0) + 1.5 * rng.standard_normal((n_img * cpi, 32))
    path = folder / "sims.npy"
    np.save(path, (img @ txt.T).astype(np.float32))
    return path


def commands(matrix: Path) -> list[tuple[str, list[str]]]:
    """(label, arguments after the interpreter) of every row, baselines first."""
    rows = [(BASELINE, ["-c", "import numpy"]), ("python -c 'import torch'", ["-c", "import torch"]),
            ("train.py --help", ["train.py", "--help"]), ("test.py --help", ["test.py", "--help"])]
    rows += [(f"scripts/{p.name} --help", [f"scripts/{p.name}", "--help"])
             for p in sorted((ROOT / "scripts").glob("*.py"))]
    shown = f"{matrix.name} ({'x'.join(map(str, np.load(matrix, mmap_mode='r').shape))})"
    rows += [(f"scripts/eval_sims.py --sims {shown}", ["scripts/eval_sims.py", "--sims", str(matrix)]),
             (f"scripts/eval_sims.py --sims {shown} --rerank galr",
              ["scripts/eval_sims.py", "--sims", str(matrix), "--rerank", "galr"])]
    return rows


def run_once(args: list[str]) -> float:
    """Wall seconds of one process (output discarded; a failing command is an error)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - t


def imports_torch(args: list[str]) -> bool:
    """Whether the process imports torch (``-X importtime`` lists every module imported, one per stderr line)."""
    r = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, check=True)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in r.stderr.splitlines())


def measure(cmds: list[tuple[str, list[str]]], repeat: int) -> list[dict]:
    """One row per command: median and best of ``repeat`` interleaved runs, ratio to the first row's median."""
    times: dict[str, list[float]] = {label: [] for label, _ in cmds}
    for label, args in cmds:  # warm-up round (file cache), not counted
        run_once(args)
    for _ in range(repeat):
        for label, args in cmds:
            times[label].append(run_once(args))
    base = statistics.median(times[cmds[0][0]])
    return [{"entry": label, "median_s": statistics.median(times[label]), "best_s": min(times[label]),
             "ratio": statistics.median(times[label]) / base, "torch": imports_torch(args)} for label, args in cmds]


def markdown(meta: dict, rows: list[dict]) -> str:
    """The result table, after one line saying how it was measured."""
    head = (f"{meta['repeat']} interleaved runs per row, python {meta['python']}, {meta['cpus']} CPUs; ratio = "
            f"median / median of `{BASELINE}`\n\n")
    return head + markdown_table(COLUMNS, ([r["entry"], f"{r['median_s']:.2f}", f"{r['best_s']:.2f}",
                                            f"{r['ratio']:.2f}", "yes" if r["torch"] else "no"] for r in rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="timed runs per row (after one warm-up round)")
    p.add_argument("--only", nargs="*", default=None,
                   help="keep only the rows whose label contains one of these words (the numpy baseline stays)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(save_matrix(Path(tmp)))
        if args.only is not None:
            cmds = [cmds[0]] + [c for c in cmds[1:] if any(w in c[0] for w in args.only)]
        rows = measure(cmds, args.repeat)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    meta = {"repeat": args.repeat, "python": sys.version.split()[0], "cpus": cpus}
    print(markdown(meta, rows), end="")
    if args.json:
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
