"""Losses: the ``LOSSES`` registry and the criterion that sums the configured terms.

Every loss is an ``nn.Module`` registered with ``@LOSSES.register(name)``, with a ``Params`` dataclass (validated
from ``loss.terms[i].params``), constructed as ``cls(params)`` and called as
``loss(outputs, batch, epoch) -> scalar tensor`` where ``outputs`` is the dict returned by ``model.forward``.
Learnable quantities (temperatures) live in the model and reach the loss through ``outputs``, so DDP syncs them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from core.config import ConfigError, LossCfg, LossTermCfg, parse_params
from core.registry import Registry
from core.utils import import_submodules

LOSSES = Registry("loss")
_loaded = False


def _ensure_registered() -> None:
    global _loaded
    if not _loaded:
        import losses

        import_submodules(losses)
        _loaded = True


class Criterion(nn.Module):
    """Weighted sum of the active loss terms.

    Returns a dict with one ``loss_<name>`` entry per active term (unweighted value) and ``loss`` (weighted sum).
    A term is active in 0-based epoch e when ``start_epoch <= e`` and (``end_epoch == -1`` or ``e < end_epoch``).
    """

    def __init__(self, terms: list[tuple[LossTermCfg, nn.Module]]) -> None:
        super().__init__()
        self.cfgs = [t for t, _ in terms]
        self.terms = nn.ModuleList([m for _, m in terms])
        self.names = [_unique(t.name, [c.name for c in self.cfgs[:i]]) for i, t in enumerate(self.cfgs)]

    def active(self, epoch: int) -> list[str]:
        """Names of the terms active in ``epoch``."""
        return [n for n, c in zip(self.names, self.cfgs) if c.start_epoch <= epoch and (c.end_epoch < 0 or epoch < c.end_epoch)]

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], epoch: int) -> dict[str, torch.Tensor]:
        active = set(self.active(epoch))
        out: dict[str, torch.Tensor] = {}
        total = None
        for name, cfg, term in zip(self.names, self.cfgs, self.terms):
            if name not in active:
                continue
            value = term(outputs, batch, epoch)
            out[f"loss_{name}"] = value.detach()
            total = cfg.weight * value if total is None else total + cfg.weight * value
        if total is None:
            raise RuntimeError(f"no loss term is active in epoch {epoch}")
        out["loss"] = total
        return out


def _unique(name: str, before: list[str]) -> str:
    return name if name not in before else f"{name}{before.count(name) + 1}"


def build_criterion(cfg: LossCfg, source: str = "") -> Criterion:
    """Build the criterion from the ``loss`` section (validating each term's params)."""
    _ensure_registered()
    if not cfg.terms:
        raise ConfigError(f"{source or 'config'}: loss.terms is empty")
    terms = []
    for i, t in enumerate(cfg.terms):
        try:
            cls = LOSSES.get(t.name)
        except KeyError as e:
            raise ConfigError(f"{source or 'config'}: loss.terms.{i}.name: {e.args[0]}") from None
        terms.append((t, cls(parse_params(cls.Params, t.params, f"loss.terms.{i}.params", source))))
    return Criterion(terms)


@dataclass(frozen=True)
class NoParams:
    """A loss without params."""
