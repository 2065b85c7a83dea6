"""Optimizer and scheduler builders (torch optimizers, per-step ``LambdaLR`` schedules).

Schedules are functions of the global step, so they are exact under resume and independent of the loader:
* ``step``: the GaLR family's decay: at the start of 0-based epoch e the lr is lr0 · gamma^floor((e + 1) / step_epochs)
  (upstream multiplies by gamma when e mod step == step - 1, i.e. at epochs 19, 39, ... for step 20).
* ``warmup_linear``: linear warm-up over ``warmup_ratio`` of all steps, then linear decay to 0 (PIR/FISVL).
* ``cosine``: the same warm-up, then half-cosine decay to 0.
* ``constant``.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from core.config import OptimCfg
from core.errors import ConfigError

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._BatchNorm)


def _no_decay_names(modules: Iterable[nn.Module]) -> set[str]:
    names: set[str] = set()
    for mod in modules:
        for mname, m in mod.named_modules():
            for pname, p in m.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                if isinstance(m, NORM_TYPES) or p.ndim <= 1:
                    names.add(full)
    return names


def param_groups(cfg: OptimCfg, model: nn.Module) -> list[dict]:
    """Trainable parameters grouped by (lr multiplier, weight decay).

    ``cfg.lr_mult`` maps a parameter-name prefix to a multiplier (the longest matching prefix wins); with
    ``no_decay_norm_bias`` normalisation weights, biases and other 1-d parameters get no weight decay.
    """
    no_decay = _no_decay_names([model]) if cfg.no_decay_norm_bias else set()
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefixes = [k for k in cfg.lr_mult if name.startswith(k)]
        mult = float(cfg.lr_mult[max(prefixes, key=len)]) if prefixes else 1.0
        wd = 0.0 if name in no_decay else cfg.weight_decay
        groups.setdefault((mult, wd), []).append(p)
    return [{"params": ps, "lr": cfg.lr * m, "weight_decay": wd, "lr_mult": m} for (m, wd), ps in groups.items()]


def build_optimizer(cfg: OptimCfg, model: nn.Module) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over :func:`param_groups`."""
    groups = param_groups(cfg, model)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    fused = True if cfg.fused else None  # None: PyTorch's default (per-parameter loop on CPU, foreach on CUDA)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    raise ConfigError(f"optim.name must be adam, adamw or sgd, got '{cfg.name}'")


def lr_factor(cfg: OptimCfg, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The multiplicative lr factor as a function of the 0-based global step."""
    total = max(1, steps_per_epoch * epochs)
    warm = int(cfg.warmup_ratio * total)

    def step_decay(s: int) -> float:
        return cfg.gamma ** ((s // max(1, steps_per_epoch) + 1) // max(1, cfg.step_epochs))

    def warmup(s: int, decay: Callable[[float], float]) -> float:
        if s < warm:
            return (s + 1) / warm
        return decay(min(1.0, (s - warm) / max(1, total - warm)))

    table = {
        "step": step_decay,
        "warmup_linear": lambda s: warmup(s, lambda x: max(0.0, 1.0 - x)),
        "cosine": lambda s: warmup(s, lambda x: 0.5 * (1.0 + math.cos(math.pi * x))),
        "constant": lambda s: 1.0,
    }
    if cfg.scheduler not in table:
        raise ConfigError(f"optim.scheduler must be one of {', '.join(table)}, got '{cfg.scheduler}'")
    return table[cfg.scheduler]


def build_scheduler(cfg: OptimCfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR``; call ``scheduler.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, epochs))
