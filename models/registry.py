"""``MODELS`` registry, ``build_model`` and loading of published (upstream-layout) checkpoints."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from core.config import ConfigError, ModelCfg, parse_params
from core.registry import Registry
from core.utils import import_submodules
from core.errors import CheckpointError, MissingFileError
from core.files import RequiredFile, check_required_files
from core.weights import resolve_path
from models.base import ModelContext, RetrievalModel

MODELS = Registry("model")
log = logging.getLogger(__name__)
_loaded = False


def _ensure_registered() -> None:
    global _loaded
    if not _loaded:
        import models

        import_submodules(models, skip=("base", "registry"))
        _loaded = True


def list_models() -> list[str]:
    """Every registered method name."""
    _ensure_registered()
    return MODELS.names()


def _method(cfg: ModelCfg, source: str) -> tuple[type[RetrievalModel], Any]:
    """(class, validated params) of the method named by ``cfg``."""
    _ensure_registered()
    try:
        cls = MODELS.get(cfg.name)
    except KeyError as e:
        raise ConfigError(f"{source or 'config'}: model.name: {e.args[0]}") from None
    return cls, parse_params(cls.Params, cfg.params, "model.params", source)


def model_required_files(cfg: ModelCfg, source: str = "") -> list[RequiredFile]:
    """Every file building ``cfg`` reads: the method's declared assets (``required_files``) and the checkpoint of
    ``model.init_from``. Nothing is read; with ``model.pretrained: false`` only ``init_from`` can appear."""
    cls, params = _method(cfg, source)
    needs = list(cls.required_files(cfg, params))
    kind, _, path = cfg.init_from.partition(":")
    if path:
        path = resolve_path(path, "model.init_from")
        needs.append(RequiredFile("model.init_from", path, f"{kind} checkpoint whose weights initialise the model"))
    return needs


def missing_model_files_hint(cfg: ModelCfg) -> str:
    """What to do about missing model files (random init is offered only when pretrained files are read)."""
    hint = "put the files there or point the named keys at them"
    return hint + ("; or set model.pretrained=false for random init (reads no pretrained file)" if cfg.pretrained
                   else "")


def build_model(cfg: ModelCfg, ctx: ModelContext, source: str = "") -> RetrievalModel:
    """Build the method named ``cfg.name`` with its validated ``model.params``.

    Every file the build reads is checked first and all missing ones are reported in one
    :class:`core.errors.MissingFileError`.

    Args:
        cfg: the ``model`` section.
        ctx: vocabulary / scene information from the data.
        source: config file name, for error messages.
    """
    cls, params = _method(cfg, source)
    check_required_files(model_required_files(cfg, source), "missing pretrained file", missing_model_files_hint(cfg))
    model = cls(cfg, params, ctx)
    if cfg.init_from:
        init_from(model, cfg.init_from)
    return model


def _read_state(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"model.init_from: checkpoint file not found: {p}")
    try:
        ckpt: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem becomes one clear line
        raise CheckpointError(f"model.init_from: cannot read {p} as a weights-only checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None
    for key in ("model", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"model.init_from: {p} holds no state dict")
    return {k[7:] if k.startswith("module.") else k: v for k, v in ckpt.items() if torch.is_tensor(v)}


def load_upstream(model: RetrievalModel, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Load an upstream-layout state dict into ``model``.

    Every converted tensor whose shape matches is copied; the rest is reported.

    Returns:
        ``{"loaded": rsitr keys, "unplaced": upstream keys not used, "shape_mismatch": rsitr keys,
        "missing": rsitr keys that received nothing}``.
    """
    converted, used = model.convert_upstream(state)
    own = model.state_dict()
    loadable, mismatch = {}, []
    for k, v in converted.items():
        if k in own and tuple(own[k].shape) == tuple(v.shape):
            loadable[k] = v
        else:
            mismatch.append(k)
    model.load_state_dict(loadable, strict=False)
    report = {"loaded": sorted(loadable), "unplaced": sorted(set(state) - set(used)),
              "shape_mismatch": sorted(mismatch), "missing": sorted(set(own) - set(loadable))}
    if report["unplaced"] or report["shape_mismatch"]:
        log.warning("upstream checkpoint: %d keys could not be placed: %s", len(report["unplaced"]) +
                    len(mismatch), ", ".join((report["unplaced"] + mismatch)[:20]))
    log.info("upstream checkpoint: loaded %d tensors, %d model keys left at init", len(loadable), len(report["missing"]))
    return report


def init_from(model: RetrievalModel, spec: str) -> dict[str, list[str]]:
    """Apply ``model.init_from``: ``upstream:PATH`` or ``rsitr:PATH`` (an rsitr checkpoint's weights)."""
    kind, _, path = spec.partition(":")
    path = resolve_path(path, "model.init_from")
    if kind == "upstream" and path:
        return load_upstream(model, _read_state(path))
    if kind == "rsitr" and path:
        state = _read_state(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        return {"loaded": sorted(set(state) - set(unexpected)), "unplaced": list(unexpected), "shape_mismatch": [],
                "missing": list(missing)}
    raise ConfigError(f"model.init_from must be 'upstream:PATH' or 'rsitr:PATH', got '{spec}'")
