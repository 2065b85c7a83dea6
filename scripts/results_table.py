"""One paper-style results table across methods and datasets, from the runs' summary files.

    python scripts/results_table.py checkpoints/ [more paths ...] [--format md|csv] [--out table.md]
        [--dataset ucm] [--plot val_mr.png]

Every path is searched recursively for ``summary.json`` (written by ``train.py --folds all``) and for single-fold
runs ``fold<k>/test.json`` that no ``summary.json`` above them covers. Each run gives one row per rerank setting:
columns R@1/5/10 image->text and text->image and mR, as mean +- sample std over the folds (std as
``engine/summary.py``: ``statistics.stdev``, 0 for one fold).

Rerank: a fold record whose ``rerank`` entry holds metrics (``{"mR": ..., ...}``) adds a reranked row; a record
whose ``rerank`` entry only names the method (``{"name": "galr", "k": ...}``, as ``test.py --rerank`` writes) is
itself reranked. A union run (``data.datasets``; ``test_sets`` in its files) gives one row per member's test set,
its dataset that member. ``--dataset`` keeps only that dataset's runs (``run_<dataset>.sh`` passes it). ``--plot FILE``
also writes a PNG of validation mR per epoch of every kept run (one line per fold, one colour per method) from the
runs' ``fold<k>/metrics.jsonl``. Exit code 2 with one line on bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402

import yaml  # noqa: E402

KEYS = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR")
HEAD = ("I->T R@1", "I->T R@5", "I->T R@10", "T->I R@1", "T->I R@5", "T->I R@10", "mR")


class TableError(ValueError):
    """Bad input (one line)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run folders, checkpoint roots or summary.json/test.json files")
    p.add_argument("--format", choices=["md", "csv"], default="md")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--digits", type=int, default=2, help="decimals in the md table (csv keeps 4)")
    p.add_argument("--dataset", help="keep only the runs of this dataset (e.g. ucm)")
    p.add_argument("--plot", help="also write a PNG of validation mR per epoch (from fold*/metrics.jsonl) here")
    return p.parse_args(argv)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TableError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise TableError(f"{path}: expected a JSON object")
    return data


def find_files(paths: list[str]) -> list[Path]:
    """summary.json files plus the fold*/test.json files not covered by one, sorted, without duplicates."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise TableError(f"path not found: {p}")
        if p.is_file():
            found.add(p.resolve())
            continue
        found.update(q.resolve() for q in p.rglob("summary.json"))
        found.update(q.resolve() for q in p.rglob("test.json") if q.parent.name.startswith("fold"))
    summaries = {q.parent for q in found if q.name == "summary.json"}
    keep = [q for q in found if q.name == "summary.json" or not any(s in q.parents for s in summaries)]
    return sorted(keep)


def _split_rerank(rec: dict) -> dict[str, dict]:
    """{rerank label: metrics} of one fold record (see module docstring)."""
    rr = rec.get("rerank")
    if isinstance(rr, dict) and "mR" in rr:
        return {"off": rec, str(rr.get("name", "on")): rr}
    if isinstance(rr, dict):
        return {str(rr.get("name", "on")): rec}
    if isinstance(rr, str) and rr != "none":
        return {rr: rec}
    return {"off": rec}


def _dataset_of(fold_dir: Path) -> str:
    cfg = fold_dir / "config.yaml"
    if cfg.is_file():
        data = yaml.safe_load(cfg.read_text()) or {}
        return str((data.get("data") or {}).get("dataset", "?"))
    return "?"


def load_runs(files: list[Path]) -> list[dict]:
    """One entry per (run, rerank): {experiment, method, dataset, rerank, folds: [metric dicts]}."""
    runs = []
    for f in files:
        data = _read_json(f)
        if isinstance(data.get("test_sets"), dict):  # a union run: one row per member's test set
            runs += _union_runs(f, data)
            continue
        if f.name == "summary.json" or "folds" in data:  # test.py --run-dir --json files carry folds too
            folds = data.get("folds")
            if not isinstance(folds, list) or not folds:
                raise TableError(f"{f}: no 'folds' list")
            info = (data.get("experiment", f.parent.name), data.get("method", "?"), data.get("dataset", "?"))
            if f.name != "summary.json" and "experiment" not in data and isinstance(data.get("checkpoint"), str):
                # test.py --run-dir --json: the run folder and, from its first fold's config.yaml, the dataset
                ckpt = Path(str(folds[0].get("checkpoint", "")))
                info = (Path(data["checkpoint"]).name, info[1],
                        info[2] if "dataset" in data else _dataset_of(ckpt.parent))
        else:
            folds = [data]
            info = (f.parent.parent.name, data.get("method", "?"), _dataset_of(f.parent))
        by_rerank: dict[str, list[dict]] = {}
        for rec in folds:
            for label, metrics in _split_rerank(rec).items():
                by_rerank.setdefault(label, []).append(metrics)
        for label, recs in by_rerank.items():
            missing = [k for k in KEYS if any(k not in r for r in recs)]
            if missing:
                raise TableError(f"{f}: fold records lack {', '.join(missing)}")
            runs.append({"experiment": info[0], "method": info[1], "dataset": info[2], "rerank": label,
                         "folds": recs, "source": str(f)})
    runs.sort(key=lambda r: (r["dataset"], r["method"], r["experiment"], r["rerank"] != "off", r["rerank"]))
    return runs


def _union_runs(f: Path, data: dict) -> list[dict]:
    """Rows of a union run (``data.datasets``): per member test set, dataset ``<member>``, experiment marked with the
    union it was trained on (summary.json: ``test_sets.<member>.folds``; test.json: ``test_sets.<member>``)."""
    out = []
    experiment = data.get("experiment", f.parent.parent.name if f.name == "test.json" else f.parent.name)
    union = "+".join(data["test_sets"])
    for label, block in data["test_sets"].items():
        folds = block.get("folds", [block]) if isinstance(block, dict) else None
        if not isinstance(folds, list) or not folds:
            raise TableError(f"{f}: test_sets.{label} holds no metrics")
        by_rerank: dict[str, list[dict]] = {}
        for rec in folds:
            for rr, metrics in _split_rerank(rec).items():
                by_rerank.setdefault(rr, []).append(metrics)
        for rr, recs in by_rerank.items():
            missing = [k for k in KEYS if any(k not in r for r in recs)]
            if missing:
                raise TableError(f"{f}: test_sets.{label} lacks {', '.join(missing)}")
            out.append({"experiment": f"{experiment} (trained on {union})", "method": data.get("method", "?"),
                        "dataset": label, "rerank": rr, "folds": recs, "source": str(f)})
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value), as engine/summary.py."""
    vals = [float(v) for v in values]
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def render_md(runs: list[dict], digits: int = 2) -> str:
    head = ("Method", "Dataset", "Experiment", "Rerank", "Folds") + HEAD
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 5 + "---:|" * len(HEAD)]
    for r in runs:
        cells = []
        for k in KEYS:
            m, s = mean_std([f[k] for f in r["folds"]])
            cells.append(f"{m:.{digits}f} ± {s:.{digits}f}" if len(r["folds"]) > 1 else f"{m:.{digits}f}")
        lines.append("| " + " | ".join([r["method"], r["dataset"], r["experiment"], r["rerank"],
                                        str(len(r["folds"]))] + cells) + " |")
    return "\n".join(lines) + "\n"


def render_csv(runs: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "dataset", "experiment", "rerank", "folds"]
               + [f"{k}_{stat}" for k in KEYS for stat in ("mean", "std")])
    for r in runs:
        stats = [f"{x:.4f}" for k in KEYS for x in mean_std([f[k] for f in r["folds"]])]
        w.writerow([r["method"], r["dataset"], r["experiment"], r["rerank"], len(r["folds"])] + stats)
    return buf.getvalue()


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")


def val_curves(runs: list[dict]) -> dict[str, list[list[tuple[int, float]]]]:
    """{method label: [[(epoch, val mR), ...] per fold]} from each run's ``fold<k>/metrics.jsonl``."""
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for src in dict.fromkeys(r["source"] for r in runs):  # rerank rows share their run
        path = Path(src)
        run_dir = path.parent
        fold_dirs = [run_dir] if run_dir.name.startswith("fold") else sorted(run_dir.glob("fold*"))
        label = next(r for r in runs if r["source"] == src)["method"]
        for fold in fold_dirs:
            metrics = fold / "metrics.jsonl"
            if not metrics.is_file():
                continue
            points = []
            for n, line in enumerate(metrics.read_text().splitlines(), 1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise TableError(f"{metrics}:{n}: not a JSON line") from None
                if "val/mR" in rec and "epoch" in rec:
                    points.append((int(rec["epoch"]), float(rec["val/mR"])))
            if points:
                curves.setdefault(label, []).append(points)
    if not curves:
        raise TableError("--plot: no fold*/metrics.jsonl with val/mR beside the runs")
    return curves


def plot_val_mr(curves: dict[str, list[list[tuple[int, float]]]], out: Path, title: str = "") -> None:
    """Line chart (PIL) of validation mR per epoch: one colour per method, one line per fold; written atomically."""
    from PIL import Image, ImageDraw

    from search.pictures import font

    w, h, left, right, top, bottom = 960, 540, 64, 190, 44, 52
    pic = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(pic)
    max_epoch = max(e for folds in curves.values() for pts in folds for e, _ in pts)
    max_val = max(v for folds in curves.values() for pts in folds for _, v in pts)
    y_top = max(10.0, 10.0 * -(-max_val // 10))
    x0, x1, y0, y1 = left, w - right, h - bottom, top

    def xy(e: float, v: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * (e / max(max_epoch, 1)), y0 - (y0 - y1) * (v / y_top)

    for k in range(int(y_top // 10) + 1):  # horizontal grid every 10 mR
        _, y = xy(0, 10 * k)
        draw.line([(x0, y), (x1, y)], fill="#e0e0e0")
        draw.text((x0 - 8, y), f"{10 * k}", fill="black", font=font(12), anchor="rm")
    for e in range(max_epoch + 1):
        x, _ = xy(e, 0)
        draw.line([(x, y0), (x, y0 + 4)], fill="black")
        draw.text((x, y0 + 8), str(e), fill="black", font=font(12), anchor="mt")
    draw.line([(x0, y1), (x0, y0), (x1, y0)], fill="black")
    draw.text((x0 + (x1 - x0) / 2, h - 14), "epoch (0-based)", fill="black", font=font(13), anchor="mm")
    draw.text((12, top - 24), "validation mR", fill="black", font=font(13))
    if title:
        draw.text((w / 2, 14), title, fill="black", font=font(14), anchor="mt")
    for i, (label, folds) in enumerate(sorted(curves.items())):
        colour = PALETTE[i % len(PALETTE)]
        for pts in folds:
            line = [xy(e, v) for e, v in sorted(pts)]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            for x, y in line:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
        ly = top + 8 + 22 * i
        draw.line([(x1 + 16, ly), (x1 + 40, ly)], fill=colour, width=3)
        folds_txt = f"{len(folds)} fold{'s' if len(folds) > 1 else ''}"
        draw.text((x1 + 46, ly), f"{label} ({folds_txt})", fill="black", font=font(13), anchor="lm")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pic.save(tmp, format="PNG", optimize=True)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) the table; returns the exit code (2 for bad input)."""
    args = parse_args(argv)
    try:
        files = find_files(args.paths)
        if not files:
            raise TableError(f"no summary.json or fold*/test.json under {', '.join(args.paths)}")
        runs = load_runs(files)
        if args.dataset:
            runs = [r for r in runs if r["dataset"] == args.dataset]
            if not runs:
                raise TableError(f"no run of dataset '{args.dataset}' under {', '.join(args.paths)}")
        curves = val_curves(runs) if args.plot else {}
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = render_md(runs, args.digits) if args.format == "md" else render_csv(runs)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(out)
    if args.plot:
        datasets = sorted({r["dataset"] for r in runs})
        plot_val_mr(curves, Path(args.plot), f"validation mR per epoch ({', '.join(datasets)})")
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
