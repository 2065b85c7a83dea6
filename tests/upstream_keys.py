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


def assert_placed(state: dict, own: dict, own_name) -> int:
    """Every upstream tensor that ``own_name`` maps (None = deliberately dropped) equals the model tensor it landed
    in; returns how many were checked."""
    import torch

    placed = 0
    for key, value in state.items():
        name = own_name(key)
        if name is None:
            continue
        assert name in own, f"{key} -> {name} is not a model key"
        assert torch.equal(own[name], value.to(own[name].dtype)), key
        placed += 1
    return placed
