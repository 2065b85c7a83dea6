"""Self-describing, atomic checkpoints.

A checkpoint is a dict with ``model optimizer scheduler scaler epoch step best_metric config tokenizer
scene_names fold rng extra method version`` (``rng``: the generators of every process, :func:`rank_rng_state`).
``last.pth`` holds all of it (a resume needs the optimizer, scheduler, scaler and RNG states); ``best.pth`` holds
everything but those four (:func:`inference_state`), so it is much smaller for Adam-trained models: it is read by
test.py and the final test, never resumed. Each is written to a temporary
file in the same folder and renamed over the target, so a crash never leaves a half-written ``last.pth`` /
``best.pth``, and loaded with ``weights_only=True`` (RNG states are stored as tensors and plain lists for that reason).
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import CheckpointError  # noqa: F401  (defined in core.errors; importable from here as before)

VERSION = 1
REQUIRED = ("model", "config", "epoch", "method", "version")
TRAINING_ONLY = ("optimizer", "scheduler", "scaler", "rng")  # in last.pth only: what a resume needs besides weights


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in a weights_only-loadable form."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_rng_state(stored: dict[str, Any] | list[dict[str, Any]], rank: int) -> dict[str, Any]:
    """Rank ``rank``'s generators out of a checkpoint's ``rng``.

    ``rng`` holds one :func:`rng_state` per process of the run that wrote it (rank order; rank 0's taken after its
    validation, the others' at the end of the epoch, where each process stands when the next epoch begins).
    Checkpoints written before that hold rank 0's state alone. A resume with more processes than the checkpoint
    has states reuses them round-robin (every rank starts from the same seed, as a new run does).
    """
    if isinstance(stored, dict):
        return stored
    return stored[rank % len(stored)]


def inference_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the keys only a resume reads (:data:`TRAINING_ONLY`): what ``best.pth`` holds."""
    return {k: v for k, v in state.items() if k not in TRAINING_ONLY}


def check_resumable(ckpt: dict[str, Any], last: str | Path) -> None:
    """Raise a CheckpointError when ``ckpt`` lacks the training state a resume needs (a ``best.pth``).

    Args:
        ckpt: a loaded checkpoint.
        last: the ``last.pth`` to suggest instead.
    """
    absent = [k for k in TRAINING_ONLY if k not in ckpt]
    if absent:
        raise CheckpointError(f"the checkpoint given to --resume holds no {'/'.join(absent)} state: a best.pth keeps "
                              f"only the weights (for test.py); resume from {last}")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({**state, "version": VERSION}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """Load an rsitr checkpoint (``weights_only=True``) and check it.

    Args:
        path: the ``.pth`` file.
        method: when given, the checkpoint must belong to this method.

    Raises:
        CheckpointError: missing file, unreadable/truncated file, not an rsitr checkpoint, other method.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle errors ... -> one line
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch file?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not an rsitr checkpoint (missing {', '.join(missing)})")
    if method is not None and ckpt["method"] != method:
        raise CheckpointError(f"{path} is a '{ckpt['method']}' checkpoint, but the config asks for '{method}'")
    return ckpt


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model
