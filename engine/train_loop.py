"""One epoch of training, as a plain function (the MAE/DeiT ``engine.py`` shape)."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from engine.checkpoint import unwrap
from core.dist import is_main, reduce_mean
from core.errors import NonFiniteLossError
from data.transforms import normalize_batch

log = logging.getLogger(__name__)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch to ``device`` (non-blocking); other values pass through. uint8 training images
    are normalised there (``image_norm``, see ``data.transforms.normalize_batch``)."""
    return normalize_batch({k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()})


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA; a no-op on CPU or with ``amp: off``."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _progress(loader: Iterable, epoch: int, enabled: bool) -> Iterable:
    if not enabled or not sys.stderr.isatty():  # no carriage-return spam in CI logs and files
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, mininterval=2.0)


class StepLog:
    """Progress lines for consoles that are not terminals (nohup, batch jobs) and for ``log.txt``.

    One line every ``every`` steps or ``every_s`` seconds (whichever comes first) and at the last step:
    ``epoch E step i/N: loss L, lr X, S samples/s, ETA h:mm:ss (epoch)``.
    """

    def __init__(self, epoch: int, total: int | None, every: int, every_s: float) -> None:
        self.epoch, self.total, self.every, self.every_s = epoch, total, max(1, every), every_s
        self.t0 = self.last = time.perf_counter()
        self.samples = 0

    def step(self, i: int, batch_size: int, loss: float, lr: float) -> None:
        """Record step ``i`` (0-based) and log when a line is due."""
        self.samples += batch_size
        now = time.perf_counter()
        due = (i + 1) % self.every == 0 or (i + 1) == self.total or (0 < self.every_s <= now - self.last)
        if not due:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total:
            left = round((self.total - i - 1) * elapsed / (i + 1))
            eta = f", ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d} (epoch)"
        log.info("epoch %d step %d%s: loss %.4f, lr %.2e, %.1f samples/s%s", self.epoch, i + 1, of, loss, lr,
                 self.samples / elapsed, eta)


def _batch_size(batch: Mapping[str, Any]) -> int:
    """Rows of ``batch["images"]`` (else of the first tensor)."""
    if torch.is_tensor(batch.get("images")):
        return int(batch["images"].shape[0])
    return next((int(v.shape[0]) for v in batch.values() if torch.is_tensor(v) and v.dim() > 0), 0)


def train_one_epoch(model: nn.Module, criterion: Callable, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: torch.amp.GradScaler, epoch: int, device: torch.device, *,
                    amp: str = "off", grad_clip: float = 0.0, log_every: int = 10, log_every_s: float = 60.0,
                    progress: bool = True, on_step: Callable[[int, dict], None] | None = None) -> dict[str, float]:
    """Train ``model`` for one epoch.

    Args:
        model: the (possibly DDP-wrapped) RetrievalModel; ``forward(batch) -> outputs``.
        criterion: ``criterion(outputs, batch, epoch) -> {"loss": total, "loss_<term>": ...}``.
        loader: yields batch dicts (docs/ARCHITECTURE.md).
        scheduler: stepped after every optimizer step (per-step schedule).
        scaler: GradScaler (enabled for fp16 on CUDA only).
        grad_clip: max global grad norm, applied after backward (0 = off).
        log_every, log_every_s: without a terminal (no progress bar), a :class:`StepLog` line every this many
            steps or seconds (rank 0).

    Returns:
        mean of every logged loss over the epoch (averaged over ranks), plus ``lr``, ``time_s``, ``data_s``.

    Raises:
        NonFiniteLossError: the loss is NaN/inf (nothing of this step is applied).
    """
    model.train()
    bare = unwrap(model)
    sums: dict[str, float] = {}
    n, t0, data_time, tick = 0, time.perf_counter(), 0.0, time.perf_counter()
    bar = _progress(loader, epoch, progress and is_main())
    steplog = None
    if is_main() and not hasattr(bar, "set_postfix"):
        steplog = StepLog(epoch, len(loader) if hasattr(loader, "__len__") else None, log_every, log_every_s)
    for i, batch in enumerate(bar):
        data_time += time.perf_counter() - tick
        batch_size = _batch_size(batch)
        batch = to_device(batch, device)
        bare.on_train_step_start()
        with autocast(device, amp):
            outputs = model(batch)
            losses = criterion(outputs, batch, epoch)
        loss = losses["loss"]
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(f"epoch {epoch} step {i}: loss is {loss.item()} "
                                     f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        n += 1
        if hasattr(bar, "set_postfix") and i % max(1, log_every) == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if steplog is not None:
            steplog.step(i, batch_size, losses["loss"].item(), optimizer.param_groups[0]["lr"])
        if on_step is not None:
            on_step(i, losses)
        tick = time.perf_counter()
    stats = {k: reduce_mean(v / max(1, n), device) for k, v in sums.items()}
    stats.update(lr=optimizer.param_groups[0]["lr"], time_s=time.perf_counter() - t0, data_s=data_time, steps=n)
    return stats
