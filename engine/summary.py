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
    return (f"# {summary['experiment']} ({summary['method']} on {summary['dataset']})\n\n" + head + rows + mean + std
            + summary_notes(summary))


def summary_notes(summary: dict) -> str:
    """The vocabulary and leakage notes under the table(s)."""
    notes = ""
    for v in summary.get("vocab", [])[:1]:
        extra = (f"; {v['n_from_test']} of them only thanks to test captions ({v['n_test_only']} in no training "
                 f"caption)" if "n_from_test" in v else "")
        notes += f"\nVocabulary (fold 0): {v.get('source', '?')}, {v.get('n_words', '?')} words{extra}.\n"
    if "leakage" in summary:
        leak = summary["leakage"]
        spec = leak.get("near_dup", {})
        removed = ", ".join(f"{k}:{n}" for k, n in leak.get("removed", [])[:10])
        notes += (f"\nLeakage check: no test image name in train/val; {spec.get('hash', '?')} {spec.get('bits', '?')} "
                  f"bits, distance <= {spec.get('threshold', '?')}: {leak.get('n_near_test', 0)} training image(s) "
                  f"near a test image, {leak.get('n_removed', 0)} removed{': ' + removed if removed else ''}"
                  f"{', ...' if leak.get('n_removed', 0) > 10 else ''}; {leak.get('n_train_near_dups', 0)} "
                  "near-duplicate copies inside training.\n")
    return notes


def build_summary(experiment: str, method: str, dataset: str, fold_rows: list[dict[str, Any]]) -> dict:
    """The summary dict (the format scripts/results_table.py reads).

    Besides the metrics, ``vocab`` (one entry per fold: which vocabulary, how many of its words come from the test
    captions) and ``leakage`` (the data check of fold 0: removed near-duplicates of test images, near-duplicates
    inside training; the names are the same for every fold, only their train/val label follows the fold)
    come from the fold rows when they carry them.
    """
    mean, std = mean_std(fold_rows)
    out = {"experiment": experiment, "method": method, "dataset": dataset, "n_folds": len(fold_rows),
           "folds": fold_rows, "mean": mean, "std": std}
    if any("vocab" in r for r in fold_rows):
        out["vocab"] = [r.get("vocab", {}) for r in fold_rows]
    if fold_rows and "leakage" in fold_rows[0]:
        out["leakage"] = fold_rows[0]["leakage"]
    return out


def _fold_rows(results: list[dict], test: dict | None = None) -> list[dict]:
    """One summary row per fold: its test metrics (``test`` picks them from each result) and the run's facts."""
    pick = test or {}
    return [{"fold": r["fold"], "best_epoch": r["best_epoch"], "best_val": r["best_val"],
             **{k: v for k, v in pick.get(r["fold"], r["test"]).items() if isinstance(v, (int, float))},
             **{k: r[k] for k in ("vocab", "leakage") if k in r}} for r in results]


def union_summary(experiment: str, method: str, results: list[dict]) -> dict:
    """The summary of a union run (``data.datasets``): ``test_sets`` holds, per member, the fold rows and mean +- std
    of that member's own test split (the format of :func:`build_summary` each)."""
    labels = list(results[0]["test"]["test_sets"])
    sets = {}
    for label in labels:
        rows = _fold_rows(results, {r["fold"]: r["test"]["test_sets"][label] for r in results})
        one = build_summary(experiment, method, label, rows)
        sets[label] = {k: one[k] for k in ("n_folds", "folds", "mean", "std")}
    whole = build_summary(experiment, method, "+".join(labels), _fold_rows(results, {r["fold"]: {} for r in results}))
    out = {k: whole[k] for k in ("experiment", "method", "dataset", "n_folds")}
    out.update(datasets=labels, test_sets=sets, **{k: whole[k] for k in ("vocab", "leakage") if k in whole})
    return out


def union_markdown(summary: dict) -> str:
    """One table per member's test set, then the notes (vocabulary, leakage) once."""
    parts = []
    for label, one in summary["test_sets"].items():
        text = summary_markdown({**one, "experiment": summary["experiment"], "method": summary["method"],
                                 "dataset": f"{label} test set, trained on {summary['dataset']}"})
        parts.append(text)
    return "\n".join(parts) + summary_notes(summary)


def write_summary(root: Path, cfg: Config, results: list[dict]) -> dict:
    """Write ``root/summary.json`` and ``root/summary.md`` from :func:`engine.runner.fit` results (a union run:
    :func:`union_summary`, one block per member's test set)."""
    if results and "test_sets" in results[0]["test"]:
        summary = union_summary(root.name, cfg.model.name, results)
        md = union_markdown(summary)
    else:
        summary = build_summary(root.name, cfg.model.name, cfg.data.dataset, _fold_rows(results))
        md = summary_markdown(summary)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    (root / "summary.md").write_text(md)
    return summary
