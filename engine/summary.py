"""Fold summaries: ``summary.json`` and ``summary.md`` with per-fold rows and mean +- std."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from core.config import Config

COLUMNS = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR", "rsum")


def mean_std(rows: list[dict[str, Any]], keys: tuple[str, ...] = COLUMNS) -> tuple[dict, dict]:
    """Mean and sample standard deviation (0 for one fold) of every key present in all rows."""
    keys = tuple(k for k in keys if all(k in r for r in rows))
    mean = {k: statistics.fmean(r[k] for r in rows) for k in keys}
    std = {k: statistics.stdev([r[k] for r in rows]) if len(rows) > 1 else 0.0 for k in keys}
    return mean, std


def summary_markdown(summary: dict) -> str:
    """A markdown table: one row per fold, then mean and std."""
    head = "| fold | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    rows = "".join(f"| {r['fold']} | " + " | ".join(f"{r.get(k, float('nan')):.2f}" for k in COLUMNS) + " |\n"
                   for r in summary["folds"])
    mean = "| mean | " + " | ".join(f"{summary['mean'].get(k, float('nan')):.2f}" for k in COLUMNS) + " |\n"
    std = "| std | " + " | ".join(f"{summary['std'].get(k, float('nan')):.2f}" for k in COLUMNS) + " |\n"
    return f"# {summary['experiment']} ({summary['method']} on {summary['dataset']})\n\n" + head + rows + mean + std


def build_summary(experiment: str, method: str, dataset: str, fold_rows: list[dict[str, Any]]) -> dict:
    """The summary dict (the format scripts/results_table.py reads)."""
    mean, std = mean_std(fold_rows)
    return {"experiment": experiment, "method": method, "dataset": dataset, "n_folds": len(fold_rows),
            "folds": fold_rows, "mean": mean, "std": std}


def write_summary(root: Path, cfg: Config, results: list[dict]) -> dict:
    """Write ``root/summary.json`` and ``root/summary.md`` from :func:`engine.runner.fit` results."""
    rows = [{"fold": r["fold"], "best_epoch": r["best_epoch"], "best_val": r["best_val"],
             **{k: v for k, v in r["test"].items() if isinstance(v, (int, float))}} for r in results]
    summary = build_summary(root.name, cfg.model.name, cfg.data.dataset, rows)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    (root / "summary.md").write_text(summary_markdown(summary))
    return summary
