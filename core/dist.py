"""torchrun + DDP helpers. With one process (no torchrun) every function is a cheap no-op."""
from __future__ import annotations

import os
import random
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def world_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def init_distributed(device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group when launched by torchrun; return whether it is distributed.

    ``timeout_s`` (``train.dist_timeout_s``) bounds every collective: a process whose peer stopped answering (a
    frozen node) raises after it instead of waiting for ever; a peer that died closes its connections, and the
    next collective fails at once. It must cover rank 0's validation, test and checkpoint writing, which the
    other ranks wait for at a barrier.
    """
    _, _, ws = world_info()
    if ws <= 1 or is_dist():
        return is_dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another process of the run died or stopped answering."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and is_dist() and any(k in text for k in (
        "Connection closed by peer", "Connection reset by peer", "Timed out waiting", "timed out", "gloo", "NCCL"))


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's picklable ``obj`` on rank ``dst`` (a list in rank order; None on the other ranks).

    With one process: ``[obj]``. Every rank must call it (a collective)."""
    if not is_dist():
        return [obj]
    out = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered tensor and returns the local slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        n = grad.shape[0] // world_size()
        return grad[rank() * n:(rank() + 1) * n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] (equal B on every rank) from every rank along dim 0, differentiably.

    Every rank computes the same global-batch loss; the backward sums the ranks' gradients of the gathered
    tensor, so after DDP averages parameter gradients they equal the 1-process gradient of that loss exactly
    (open_clip's ``gather_with_grad`` semantics). Integer tensors (ids) are gathered without autograd.
    """
    if not is_dist():
        return x
    if not x.is_floating_point():
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)
    return _GatherWithGrad.apply(x)


def reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Average a python number over ranks."""
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world_size()).item()


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

