"""Training sampler whose order depends only on (seed, epoch), identical for any number of processes.

Every epoch draws one permutation of the items with ``torch.Generator().manual_seed(seed + epoch)`` and cuts it
into global batches of ``global_batch`` items (the incomplete tail is dropped). With ``world_size`` processes,
rank r receives the r-th contiguous slice of every global batch. So a 2-process DDP run sees exactly the global
batches of a 1-process run, and losses that all-gather features (rank order = slice order) reproduce the
1-process batch matrix: the property the DDP equivalence test checks. ``torch.utils.data.DistributedSampler``
interleaves ranks over the permutation instead, which changes the batch composition with the world size.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[int]):
    """Seeded, epoch-aware, DDP-aware item sampler (use with ``batch_size = global_batch // world_size``).

    Args:
        n: number of items.
        global_batch: batch size summed over all processes (must be divisible by ``world_size``).
        seed: base seed; epoch e uses ``seed + e``.
        rank, world_size: this process and the number of processes.
        shuffle: permute (training) or keep file order.
    """

    def __init__(self, n: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        if global_batch % world_size:
            raise ValueError(f"data.batch_size {global_batch} is not divisible by the {world_size} processes")
        if n < global_batch:
            raise ValueError(f"data.batch_size {global_batch} is larger than the {n} training captions")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.local = global_batch // world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.n // self.global_batch) * self.local

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        for b in range(self.n // self.global_batch):
            start = b * self.global_batch + self.rank * self.local
            yield from order[start:start + self.local].tolist()
