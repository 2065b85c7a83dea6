"""A table of frozen-tower outputs, one row per input (an image file, a token sequence), in memory or on disk.

When a tower (or its leading part) is locked and its input pipeline is deterministic, its output depends only on
the weights, the pipeline and the input; :class:`FeatureStore` keeps that output so it is computed once per input
(``engine/feature_cache.py`` fills it; the model reads it). Staleness is ruled out by the keys:

* the store's ``fingerprint`` is the sha256 of the frozen weights' bytes plus everything that defines the input
  pipeline (image transform and size, tokenizer); a different fingerprint is a different file;
* an image row's key is ``path|size|mtime_ns`` of its file, so an edited or replaced image is a new key (a miss,
  computed again), never an old feature.

On disk a store is one ``<dir>/<fingerprint[:24]>.pt`` (``keys``, ``table``, ``fingerprint``), written atomically and
read with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch


def state_sha256(modules: Iterable[torch.nn.Module], extra: str = "") -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor of ``modules``' state dicts, plus ``extra``."""
    h = hashlib.sha256()
    for i, module in enumerate(modules):
        for name, t in module.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{i}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(extra.encode())
    return h.hexdigest()


def file_key(path: str | Path) -> str:
    """``abs path|size|mtime_ns`` of an image file (a changed file gets another key)."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def tokens_key(tokens: np.ndarray, length: int) -> str:
    """The key of a caption's row: a 128-bit BLAKE2 digest of its first ``length`` token ids."""
    ids = np.ascontiguousarray(tokens[:length], dtype=np.int64)
    return hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()


class FeatureStore:
    """Rows of one frozen computation.

    Args:
        fingerprint: what the rows are outputs of (see the module docstring).
        folder: where the store is saved / loaded ("" or None: memory only).
    """

    def __init__(self, fingerprint: str, folder: str | Path | None = None) -> None:
        self.fingerprint = fingerprint
        self.path = Path(folder) / f"{fingerprint[:24]}.pt" if folder else None
        self.rows: dict = {}  # key -> row index
        self.chunks: list[torch.Tensor] = []
        self._table: torch.Tensor | None = None
        self.alias: dict[str, int] = {}  # a run's short names (image filenames) -> row index
        self.loaded = 0  # rows read from disk
        self.dirty = False

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key) -> bool:
        return key in self.rows

    @property
    def table(self) -> torch.Tensor:
        """All rows as one tensor [N, ...] (concatenated lazily after additions)."""
        if self._table is None or len(self.chunks) > 1:
            self._table = torch.cat(self.chunks) if self.chunks else torch.empty(0)
            self.chunks = [self._table] if self.chunks else []
        return self._table

    def add(self, keys: Sequence, values: torch.Tensor) -> None:
        """Append rows (``values`` [len(keys), ...], stored detached on the CPU in their dtype)."""
        values = values.detach().to("cpu")
        first: dict = {}
        for i, k in enumerate(keys):  # repeated keys (identical captions) keep their first row
            if k not in self.rows and k not in first:
                first[k] = i
        new = list(first.items())
        if not new:
            return
        start = len(self.rows)
        for j, (k, _) in enumerate(new):
            self.rows[k] = start + j
        self.chunks.append(values[[i for _, i in new]].contiguous())
        self._table = None if len(self.chunks) > 1 else self.chunks[0]
        self.dirty = True

    def missing(self, keys: Iterable) -> list:
        """The keys that have no row."""
        return [k for k in keys if k not in self.rows]

    def get(self, keys: Sequence) -> torch.Tensor:
        """Rows of ``keys`` (all must be present: KeyError names the first absent one)."""
        idx = [self.rows[k] for k in keys]
        return self.table[torch.as_tensor(idx, dtype=torch.long)]

    def get_alias(self, names: Sequence[str]) -> torch.Tensor | None:
        """Rows by the run's short names, or None when any name has no row."""
        try:
            idx = [self.alias[n] for n in names]
        except KeyError:
            return None
        return self.table[torch.as_tensor(idx, dtype=torch.long)]

    def load(self) -> int:
        """Read the saved rows of this fingerprint (if any); returns how many were read."""
        if self.path is None or not self.path.is_file():
            return 0
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") != self.fingerprint:  # a truncated-name collision: not ours
            return 0
        self.add(list(saved["keys"]), saved["table"])
        self.dirty = False
        self.loaded = len(saved["keys"])
        return self.loaded

    def save(self) -> None:
        """Write the store atomically (tmp file + ``os.replace``) when it has new rows."""
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = [None] * len(self.rows)
        for k, i in self.rows.items():
            keys[i] = k
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"fingerprint": self.fingerprint, "keys": keys, "table": self.table}, tmp)
        os.replace(tmp, self.path)
        self.dirty = False
