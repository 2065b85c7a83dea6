"""Helpers shared by the ``bench/`` scripts (entry points never import each other): the markdown result table and
the latency summary of one row. The scripts print; nothing here does."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def markdown_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table, one line per row, each ending in a newline.

    Args:
        columns: (title, align) per column; align ``"l"`` (text) or ``"r"`` (numbers, ``---:``).
        rows: the cells of each row, already formatted, as many as ``columns``.
    """
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(cells) + " |\n"

    rule = "|" + "|".join("---:" if align == "r" else "---" for _, align in columns) + "|\n"
    return line(title for title, _ in columns) + rule + "".join(line(r) for r in rows)


def latency_ms(lat: np.ndarray, digits: int) -> tuple[float, float]:
    """(median, 95th percentile) of latencies in ms, rounded to ``digits``."""
    return round(float(np.median(lat)), digits), round(float(np.percentile(lat, 95)), digits)
