"""Reading ../shared/docs/upstream_keys/<method>.txt (one ``key [d0, d1, ...]`` line per tensor) in tests."""
from pathlib import Path

import pytest

KEY_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "upstream_keys"


def read_upstream_keys(method: str) -> dict[str, list[int]]:
    """Every upstream key of ``method`` with its shape; skips the test when the shared folder is absent."""
    path = KEY_DIR / f"{method}.txt"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    out = {}
    for line in path.read_text().splitlines():
        key, _, shape = line.partition(" ")
        out[key] = [int(s) for s in shape.strip("[] ").split(",") if s.strip()]
    return out
