"""Embedding store and FAISS index for searching a folder of images.

An index folder (written by ``scripts/build_index.py``, read by ``scripts/search.py``) holds::

    meta.json        {"version", "kind", "dim", "n", "params", "checkpoint_id", "images_root", "normalized"}
    files.txt        one image path per line, relative to ``images_root`` (row i of the embeddings)
    embeddings.npy   float32 [N, D], the model's raw image embeddings (re-scoring needs them unnormalised)
    index.faiss      inner-product index over the L2-normalised embeddings (inner product == cosine)
    shards/          only while building: per-chunk embeddings + manifest.json, so a build can resume

``meta.json`` is written last (temp file + ``os.replace``): a folder without it is an unfinished build, never
read as an index.

Kinds (``choose_kind``): ``flat`` (exact, ``IndexFlatIP``) up to ``AUTO_EXACT_MAX`` vectors, ``ivf``
(``IndexIVFFlat``, sqrt(N) lists) above. ``hnsw`` (``IndexHNSWFlat``) is available by name; its build is
much slower on CPU than IVF's, so it is not the automatic choice. The approximate kinds calibrate their search
breadth (``nprobe`` / ``efSearch``) at build time: the smallest value whose top-10 agrees with exact search on
``recall_target`` of a sample of held-in queries. Data without cluster structure (isotropic noise) needs a wide
search, which the calibration finds instead of silently returning poor neighbours.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
AUTO_EXACT_MAX = 100_000
KINDS = ("auto", "flat", "ivf", "hnsw")
IMAGE_EXTS = (".tif", ".tiff", ".jpg", ".jpeg", ".png")


class IndexFolderError(ValueError):
    """A missing, unfinished or inconsistent index folder (one-line message)."""


# ----------------------------------------------------------------------------------------------- building


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation. Args: x [N, D]. Returns: float32 contiguous [N, D] (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def choose_kind(n: int, kind: str = "auto", exact_max: int = AUTO_EXACT_MAX) -> str:
    """Resolve ``auto`` to ``flat`` (n <= exact_max) or ``ivf``; other kinds pass through."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if n <= exact_max else "ivf"


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k in numpy (the reference every index is checked against).

    Args:
        base: [N, D] float32. queries: [Q, D] float32. k: neighbours per query (clipped to N).

    Returns:
        (scores [Q, k], ids [Q, k]) sorted by decreasing score.
    """
    k = min(k, base.shape[0])
    best_s = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((queries.shape[0], 0), dtype=np.int64)
    for start in range(0, base.shape[0], block):  # blocks bound the [Q, block] score matrix
        s = queries @ base[start:start + block].T
        ids = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        s, i = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, ids], axis=1)
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else np.argsort(-s, axis=1)
        best_s, best_i = np.take_along_axis(s, part, 1), np.take_along_axis(i, part, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def topk_agreement(ids_a: np.ndarray, ids_b: np.ndarray) -> float:
    """Mean fraction of shared ids between two [Q, k] top-k lists (order ignored)."""
    k = ids_a.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(ids_a, ids_b)]))


def _drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """[Q, k+1] neighbour lists without each query's own row (or without the last entry if it is absent)."""
    keep = [[j for j in row if j != s][:k] for row, s in zip(ids.tolist(), self_ids.tolist())]
    return np.asarray(keep, dtype=np.int64)


def _set_breadth(index: faiss.Index, kind: str, value: int) -> None:
    if kind == "ivf":
        index.nprobe = int(value)
    elif kind == "hnsw":
        index.hnsw.efSearch = int(value)


def calibrate(index: faiss.Index, kind: str, base: np.ndarray, recall_target: float = 0.98, k: int = 10,
              n_queries: int = 512, seed: int = 0) -> int:
    """Pick the smallest search breadth (IVF ``nprobe``, HNSW ``efSearch``) reaching ``recall_target``.

    Queries are held-out database rows (leave-one-out: the row itself is dropped from both lists), which behave
    like fresh queries from the same distribution; the reference is :func:`exact_topk`.

    Returns:
        The chosen breadth, already set on ``index``.
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(base.shape[0], size=min(n_queries, base.shape[0]), replace=False)
    q = np.ascontiguousarray(base[pick])
    ref = _drop_self(exact_topk(base, q, k + 1)[1], pick, k)
    limit = index.nlist if kind == "ivf" else 4096
    value = 8 if kind == "ivf" else 32
    while True:
        _set_breadth(index, kind, value)
        agree = topk_agreement(_drop_self(index.search(q, k + 1)[1], pick, k), ref)
        if agree >= recall_target or value >= limit:
            break
        value = min(int(np.ceil(value * 1.5)), limit)  # finer than doubling: breadth is paid on every query
    log.info("%s calibrated: breadth %d gives top-%d agreement %.3f on %d queries", kind, value, k, agree, len(q))
    if agree < recall_target:
        log.warning("%s reaches only %.3f top-%d agreement at full breadth; the data has little cluster "
                    "structure, exact search (kind=flat) is as fast here", kind, agree, k)
    return value


def build_faiss(emb: np.ndarray, kind: str = "auto", *, exact_max: int = AUTO_EXACT_MAX,
                recall_target: float = 0.98, hnsw_m: int = 32, seed: int = 0) -> tuple[faiss.Index, dict]:
    """Build an inner-product index over normalised embeddings.

    Args:
        emb: [N, D] embeddings (normalised here, so inner product is cosine).
        kind: ``auto`` | ``flat`` | ``ivf`` | ``hnsw`` (see :func:`choose_kind`).
        recall_target: top-10 agreement with exact search that the approximate kinds calibrate for.

    Returns:
        (index, params): params records ``kind`` and the structural/search settings (stored in meta.json).
    """
    x = normalize(emb)
    n, d = x.shape
    kind = choose_kind(n, kind, exact_max)
    params: dict[str, Any] = {"kind": kind}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, params
    if kind == "ivf":
        # 2 sqrt(N) lists (faiss suggests 4-16 sqrt(N); fewer keeps CPU k-means and assignment affordable at 1M),
        # at least 39 training points per list as faiss requires
        nlist = int(max(1, min(n // 39, round(2 * np.sqrt(n)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # coarse k-means quality barely moves recall once nprobe is calibrated
        index.cp.seed = seed
        train = x[np.random.default_rng(seed).choice(n, size=min(n, 40 * nlist), replace=False)]
        index.train(train)
        params["nlist"] = nlist
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        params["M"] = hnsw_m
    index.add(x)
    params["breadth"] = calibrate(index, kind, x, recall_target, seed=seed)
    return index, params


def apply_params(index: faiss.Index, params: dict) -> None:
    """Restore the calibrated search breadth on a loaded index (faiss does not always serialise it)."""
    if "breadth" in params:
        _set_breadth(index, params["kind"], params["breadth"])


# ----------------------------------------------------------------------------------------------- files


def list_images(root: str | Path, exts: Sequence[str] = IMAGE_EXTS) -> list[str]:
    """Every image below ``root`` (recursive), as sorted POSIX paths relative to ``root``."""
    root = Path(root)
    found = [p.relative_to(root).as_posix() for p in root.rglob("*")
             if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")]
    return sorted(found)


def files_digest(files: Sequence[str]) -> str:
    """sha256 of the file list (identity of what row i means)."""
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder, then ``os.replace`` (no half-written file is visible)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    _atomic_write(path, write)


def _save_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


@dataclass
class ShardStore:
    """Per-chunk embedding shards of a build in progress: ``<out>/shards/shard_00000.npy`` + ``manifest.json``.

    The manifest pins the checkpoint identity, the file-list digest and the chunk size; shards written under
    another identity are never mixed in (:meth:`open` raises instead).
    """

    folder: Path
    checkpoint_id: str
    digest: str
    chunk: int
    n: int

    @property
    def n_shards(self) -> int:
        return (self.n + self.chunk - 1) // self.chunk

    def shard_path(self, i: int) -> Path:
        return self.folder / f"shard_{i:05d}.npy"

    def rows(self, i: int) -> range:
        """Row range (into the file list) of shard ``i``."""
        return range(i * self.chunk, min(self.n, (i + 1) * self.chunk))

    def is_done(self, i: int) -> bool:
        return self.shard_path(i).is_file()

    def write(self, i: int, emb: np.ndarray) -> None:
        """Store shard ``i``. Args: emb [len(rows(i)), D]."""
        if emb.shape[0] != len(self.rows(i)):
            raise ValueError(f"shard {i}: {emb.shape[0]} rows, expected {len(self.rows(i))}")
        _save_npy(self.shard_path(i), np.asarray(emb, dtype=np.float32))

    def load_all(self) -> np.ndarray:
        """All shards concatenated: [N, D] float32."""
        return np.concatenate([np.load(self.shard_path(i)) for i in range(self.n_shards)], axis=0)

    @classmethod
    def open(cls, out: str | Path, checkpoint_id: str, files: Sequence[str], chunk: int) -> "ShardStore":
        """Open (resume) or start the shard folder of ``out``.

        Raises:
            IndexFolderError: the folder holds shards of another checkpoint, file list or chunk size.
        """
        folder = Path(out) / "shards"
        want = {"checkpoint_id": checkpoint_id, "files_sha256": files_digest(files), "chunk": chunk,
                "n": len(files)}
        manifest = folder / "manifest.json"
        if manifest.is_file():
            have = json.loads(manifest.read_text())
            diff = [k for k in want if have.get(k) != want[k]]
            if diff:
                raise IndexFolderError(f"{folder} holds shards of a different build ({', '.join(diff)} differ); "
                                  f"pass --overwrite to discard them or choose another --out")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            _save_text(manifest, json.dumps(want, indent=1))
        return cls(folder, checkpoint_id, want["files_sha256"], chunk, len(files))


# ----------------------------------------------------------------------------------------------- index folder


@dataclass
class ImageIndex:
    """A loaded index folder (see module docstring)."""

    root: Path
    meta: dict
    files: list[str]
    embeddings: np.ndarray
    index: faiss.Index = field(repr=False)

    def path(self, i: int) -> Path:
        """Absolute-ish path of row ``i`` (images_root / files[i])."""
        return Path(self.meta["images_root"]) / self.files[i]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-k. Args: queries [Q, D]. Returns: (scores [Q, k'], ids [Q, k']), k' = min(k, N)."""
        q = normalize(np.atleast_2d(queries))
        if q.shape[1] != self.meta["dim"]:
            raise IndexFolderError(f"query dim {q.shape[1]} != index dim {self.meta['dim']}")
        scores, ids = self.index.search(q, min(k, len(self.files)))
        return scores, ids


def write_index(out: str | Path, files: Sequence[str], emb: np.ndarray, *, images_root: str, checkpoint_id: str,
                kind: str = "auto", exact_max: int = AUTO_EXACT_MAX, recall_target: float = 0.98,
                extra: dict | None = None) -> dict:
    """Build the FAISS index over ``emb`` [N, D] and write the index folder (meta.json last, atomically).

    Returns:
        The meta dict written to ``meta.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # from here on the folder is "unfinished" until meta is back
    index, params = build_faiss(emb, kind, exact_max=exact_max, recall_target=recall_target)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=out))
    try:
        np.save(stage / "embeddings.npy", np.asarray(emb, dtype=np.float32))
        faiss.write_index(index, str(stage / "index.faiss"))
        (stage / "files.txt").write_text("".join(f + "\n" for f in files))
        for name in ("embeddings.npy", "index.faiss", "files.txt"):
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    meta = {"version": FORMAT_VERSION, "kind": params["kind"], "dim": int(emb.shape[1]), "n": int(emb.shape[0]),
            "params": params, "checkpoint_id": checkpoint_id, "images_root": str(images_root),
            "files_sha256": files_digest(files), "normalized": True, **(extra or {})}
    _save_text(out / "meta.json", json.dumps(meta, indent=1))
    return meta


def load_index(folder: str | Path) -> ImageIndex:
    """Read an index folder and check that its parts agree.

    Raises:
        IndexFolderError: missing folder, unfinished build (no meta.json) or inconsistent parts.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IndexFolderError(f"index folder not found: {folder}")
    if not (folder / "meta.json").is_file():
        hint = " (an unfinished build: rerun build_index.py with the same arguments to resume)" \
            if (folder / "shards").is_dir() else ""
        raise IndexFolderError(f"{folder} is not a finished index: meta.json missing{hint}")
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("version") != FORMAT_VERSION:
        raise IndexFolderError(f"{folder}: index format {meta.get('version')} != supported {FORMAT_VERSION}")
    missing = [n for n in ("files.txt", "embeddings.npy", "index.faiss") if not (folder / n).is_file()]
    if missing:
        raise IndexFolderError(f"{folder}: missing {', '.join(missing)}")
    files = (folder / "files.txt").read_text().splitlines()
    emb = np.load(folder / "embeddings.npy")
    index = faiss.read_index(str(folder / "index.faiss"))
    if not (len(files) == emb.shape[0] == index.ntotal == meta["n"]) or files_digest(files) != meta["files_sha256"]:
        raise IndexFolderError(f"{folder}: files.txt ({len(files)}), embeddings ({emb.shape[0]}) and index "
                          f"({index.ntotal}) disagree with meta.json (n={meta['n']})")
    apply_params(index, meta["params"])
    return ImageIndex(folder, meta, files, emb, index)
