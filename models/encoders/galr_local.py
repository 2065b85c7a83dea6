"""GaLR's local branch: region-graph inputs and the GCN over them (METHODS.md C2, D6).

Upstream feeds two precomputed per-image matrices, ``local_rep`` (20 nodes x 20-d) and ``local_adj`` (20 x 20), made
by the unreleased DREA detector pipeline and shipped as one ``.npy`` per dataset: a pickled dict
``{"adj_matrix": {stem.txt: [20, 20]}, "local_rep": {stem.txt: [20, 20]}}``, read with
``np.load(path, allow_pickle=True).item()`` and keyed by the image name up to its first dot plus ``.txt``
(``airport_1.tif`` -> ``airport_1.txt``). Because reading it unpickles, rsitr only opens the file the user names.

Sources (``model.params.local_source``):

* ``npy``: the upstream file at ``model.params.local_path`` (:class:`LocalFeatureBank`).
* ``zeros``: all-zero matrices, the ablation (the local feature is then the GCN's output bias, the same for
  every image).
* ``backbone``: an rsitr variant for datasets without DREA files (:class:`BackboneRegions`): a 1x1 conv maps the
  ResNet f4 map to ``node_dim`` channels, adaptive average pooling to a rows x cols grid (4 x 5 for 20 nodes) gives
  one node per cell, and the adjacency is the row-normalised, non-negative cosine similarity of the nodes.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.encoders.mvsa import l2norm
from core.errors import DataError, MissingEntryError, MissingFileError

log = logging.getLogger(__name__)


def local_key(filename: str) -> str:
    """The upstream dict key of an image: base name up to the first dot, plus ``.txt``."""
    return os.path.basename(filename).split(".")[0] + ".txt"


def load_local_npy(path: str) -> tuple[dict, dict]:
    """Read an upstream DREA ``.npy``. Returns: (local_rep by key, adj_matrix by key)."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"missing GaLR local-feature file: {p} (the upstream DREA .npy dict with "
                                f"'adj_matrix' and 'local_rep'; model.params.local_path). Without it set "
                                f"model.params.local_source to 'backbone' or 'zeros'")
    # allow_pickle: the upstream format is a pickled dict; only the file the user configured is opened.
    obj = np.load(p, allow_pickle=True)
    data = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == () else obj
    if not isinstance(data, dict) or not {"adj_matrix", "local_rep"} <= set(data):
        raise DataError(f"{p}: expected a dict with keys 'adj_matrix' and 'local_rep'")
    return data["local_rep"], data["adj_matrix"]


class LocalFeatureBank:
    """Per-image ``local_rep`` / ``local_adj`` lookup by filename, read lazily from an upstream ``.npy``.

    Args:
        path: the ``.npy`` file.
        nodes, dim: expected matrix sizes (rep [nodes, dim], adj [nodes, nodes]).
    """

    def __init__(self, path: str, nodes: int, dim: int) -> None:
        self.path, self.nodes, self.dim = path, nodes, dim
        self._rep: dict | None = None
        self._adj: dict | None = None
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _get(self, filename: str) -> tuple[torch.Tensor, torch.Tensor]:
        key = local_key(filename)
        if key not in self._cache:
            if self._rep is None:
                self._rep, self._adj = load_local_npy(self.path)
                log.info("GaLR local features: %d images from %s", len(self._rep), self.path)
            if key not in self._rep or key not in self._adj:
                raise MissingEntryError(f"GaLR local features: no entry '{key}' (image '{filename}') in {self.path}")
            rep = torch.as_tensor(np.asarray(self._rep[key], dtype=np.float32))
            adj = torch.as_tensor(np.asarray(self._adj[key], dtype=np.float32))
            if rep.shape != (self.nodes, self.dim) or adj.shape != (self.nodes, self.nodes):
                raise DataError(f"{self.path}: '{key}' has rep {tuple(rep.shape)} / adj {tuple(adj.shape)}, "
                                 f"expected ({self.nodes}, {self.dim}) / ({self.nodes}, {self.nodes})")
            self._cache[key] = (rep, adj)
        return self._cache[key]

    def lookup(self, filenames: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: filenames (B names). Returns: (rep [B, nodes, dim], adj [B, nodes, nodes]) on ``device``."""
        pairs = [self._get(f) for f in filenames]
        rep = torch.stack([p[0] for p in pairs]).to(device)
        adj = torch.stack([p[1] for p in pairs]).to(device)
        return rep, adj


def grid_shape(nodes: int) -> tuple[int, int]:
    """The most square rows x cols factorisation of ``nodes`` (20 -> 4 x 5)."""
    rows = max(r for r in range(1, int(math.isqrt(nodes)) + 1) if nodes % r == 0)
    return rows, nodes // rows


class BackboneRegions(nn.Module):
    """rsitr variant: region nodes and adjacency from a backbone feature map (module docstring).

    Args:
        in_channels: channels of the feature map (512 for ResNet-18 f4).
        nodes: number of nodes (a rows x cols pooling grid).
        dim: node feature size.
    """

    def __init__(self, in_channels: int, nodes: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=1)
        self.grid = grid_shape(nodes)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: fmap [B, C, h, w]. Returns: (rep [B, nodes, dim], adj [B, nodes, nodes], rows sum to 1)."""
        x = F.adaptive_avg_pool2d(self.proj(fmap), self.grid).flatten(2).transpose(1, 2)  # [B, N, dim]
        xn = F.normalize(x, dim=-1)
        adj = (xn @ xn.transpose(1, 2)).clamp(min=0)
        adj = adj / adj.sum(-1, keepdim=True).clamp(min=1e-6)
        return x, adj


class GCN(nn.Module):
    """Three propagation layers relu(A X W) (dims dim -> dim -> dim/2 -> dim, no bias), flatten, Linear, L2-norm.

    Args:
        nodes: graph size N (20 upstream).
        dim: node feature size (20 upstream).
        embed_dim: output size.
    """

    def __init__(self, nodes: int = 20, dim: int = 20, embed_dim: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim // 2, bias=False)
        self.fc3 = nn.Linear(dim // 2, dim, bias=False)
        self.out = nn.Linear(nodes * dim, embed_dim)

    def forward(self, adj: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
        """Args: adj [B, N, N], rep [B, N, dim]. Returns: [B, embed_dim], L2-normalised."""
        x = rep
        for fc in (self.fc1, self.fc2, self.fc3):
            x = torch.relu(fc(adj @ x))
        return l2norm(self.out(x.flatten(1)))
