"""Atomic checkpoints, weights_only loading, RNG round trip and clear errors."""
import random

import numpy as np
import pytest
import torch

from engine.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def minimal(method="vse"):
    return {"model": {"w": torch.arange(3.0)}, "config": {"model": {"name": method}}, "epoch": 1, "method": method}


def test_round_trip_and_method_check(tmp_path):
    save_checkpoint(tmp_path / "a.pth", minimal())
    ck = load_checkpoint(tmp_path / "a.pth", method="vse")
    assert torch.equal(ck["model"]["w"], torch.arange(3.0)) and ck["version"] == 1
    with pytest.raises(CheckpointError, match="'vse' checkpoint.*'galr'"):
        load_checkpoint(tmp_path / "a.pth", method="galr")


def test_truncated_missing_foreign(tmp_path):
    save_checkpoint(tmp_path / "a.pth", minimal())
    data = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pth")
    torch.save({"state_dict": {}}, tmp_path / "f.pth")
    with pytest.raises(CheckpointError, match="not an rsitr checkpoint"):
        load_checkpoint(tmp_path / "f.pth")


def test_failed_save_keeps_old_file(tmp_path):
    save_checkpoint(tmp_path / "a.pth", minimal())
    before = (tmp_path / "a.pth").read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(tmp_path / "a.pth", {**minimal(), "bad": lambda: 0})  # unpicklable
    assert (tmp_path / "a.pth").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]  # no temp file left behind


def test_rng_round_trip(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = rng_state()
    save_checkpoint(tmp_path / "r.pth", {**minimal(), "rng": state})
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "r.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
