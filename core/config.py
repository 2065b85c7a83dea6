"""Typed, strict experiment configuration: loading, merging, checking and dumping.

A config is YAML loaded into the frozen dataclasses of :mod:`core.schema` (the schema: every key, its default, its
allowed values), with six sections (model / data / loss / optim / train / eval). This module is the machinery; it
re-exports the schema's names, so ``from core.config import Config, ModelCfg, RANGES`` works as before.
Rules (detectron2-style schema, open_clip-style ``Cfg(**d)`` strictness):

* ``_base_: path`` (or a list of paths, relative to the file) is merged first; the file's own keys win.
* Every key must exist in the schema; an unknown key or a wrong type raises :class:`ConfigError` naming
  the dotted key and the file it came from.
* ``overrides`` (``--set a.b=value`` on the command line) are parsed with ``yaml.safe_load`` and type-checked
  the same way; list entries are addressed by index (``loss.terms.0.weight=2``).
* ``model.params`` and each ``loss.terms[i].params`` are free-form here and validated by the method's (or the
  loss's) own dataclass through :func:`parse_params` when the model / loss is built.
* :func:`dump_config` writes YAML that :func:`config_from_dict` turns back into an equal ``Config``.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError
from core.schema import (CHOICES, MOVED_KEYS, RANGES, RANK_METRICS, SELECT_METRICS, Config, DataCfg, EvalCfg,
                         LossCfg, LossTermCfg, ModelCfg, OptimCfg, TrainCfg, lower_is_better, select_metrics)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # the shipped configs (bare names resolve here)

__all__ = ["Config", "ConfigError", "ModelCfg", "DataCfg", "LossTermCfg", "LossCfg", "OptimCfg", "TrainCfg",
           "EvalCfg", "SELECT_METRICS", "RANK_METRICS", "RANGES", "CHOICES", "MOVED_KEYS", "select_metrics",
           "lower_is_better", "parse_params", "apply_overrides", "config_from_dict", "load_config", "config_to_dict",
           "dump_config", "save_config", "migrate", "CONFIG_DIR"]


# --------------------------------------------------------------------------------------------------- typing
def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to ``tp`` (lists -> tuples, ints -> floats) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {type(value).__name__} {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_check_type(v, inner, f"{key}.{i}", source) for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__} {value!r}")
        return copy.deepcopy(value)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _check_type(value, arm, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: '{key}' has the wrong type: {value!r} (expected {tp})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: '{key}' must be null")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{source}: '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or 'config'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{source}: unknown key '{where}' (known keys here: {', '.join(names)})")
    kwargs = {k: _check_type(v, hints[k], f"{prefix}.{k}" if prefix else k, source) for k, v in data.items()}
    return cls(**kwargs)


def parse_params(cls: type, params: dict, prefix: str, source: str = "") -> Any:
    """Validate a free-form ``params`` mapping with a method's or loss's own dataclass.

    Args:
        cls: the dataclass that lists the allowed keys with their types and defaults.
        params: the mapping from the config.
        prefix: dotted key used in errors, e.g. ``model.params``.
        source: the config file, for errors.

    A string value ``pkg:<module>/<path>`` is resolved to the file inside the installed package
    (:func:`core.weights.resolve_path`: pinned files are sha256-checked; a missing package is a one-line error
    naming the key and the pip package), so every weights path of every method accepts such references.
    """
    from core.weights import is_pkg_ref, resolve_path

    parsed = _build(cls, params, prefix, source or "config")
    refs = {f.name: resolve_path(getattr(parsed, f.name), f"{prefix}.{f.name}") for f in dataclasses.fields(parsed)
            if is_pkg_ref(getattr(parsed, f.name))}
    return dataclasses.replace(parsed, **refs) if refs else parsed


# --------------------------------------------------------------------------------------------------- loading
def _merge(base: dict, new: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: _base_ cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    bases = data.pop("_base_", [])
    if not isinstance(bases, (str, list)) or not all(isinstance(b, str) for b in ([bases] if isinstance(bases, str)
                                                                                  else bases)):
        raise ConfigError(f"{path}: '_base_' must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        target = path.parent / b
        if not target.is_file():
            raise ConfigError(_missing_base_message(path, b, target))
        merged = _merge(merged, _read_yaml(target, seen + (path.resolve(),)))
    return _merge(merged, data)


def _missing_base_message(path: Path, base: str, target: Path) -> str:
    """Name the referring file and its ``_base_`` key; point at the shipped base file when one has that name."""
    msg = f"{path}: '_base_: {base}' not found (relative paths are resolved from {path.parent}, giving {target})"
    shipped = [p for p in (CONFIG_DIR / base, CONFIG_DIR / "_base_" / Path(base).name) if p.is_file()]
    if shipped:
        return f"{msg}; a config copied out of configs/ needs an absolute _base_, e.g. '_base_: {shipped[0]}'"
    return f"{msg}; give _base_ as an absolute path or relative to the file that names it"


def _set_dotted(data: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node: Any = data
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"{source}: --set '{key}': no list entry {p}")
            node = node[int(p)]
        else:
            node = node.setdefault(p, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"{source}: --set '{key}': '{'.'.join(parts[:i + 1])}' is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{source}: --set '{key}': no list entry {last}")
        node[int(last)] = value
    else:
        node[last] = value


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "source"}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], source: str) -> dict:
    """Apply ``a.b=value`` strings to a plain config mapping (values parsed as YAML)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. train.epochs=2")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value, source)
    return data


# --------------------------------------------------------------------------------------------------- values
def _get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_select_metric(ev: EvalCfg, source: str) -> None:
    allowed = select_metrics(ev)
    if ev.select_metric not in allowed:
        close = [m for m in allowed if m.lower() == ev.select_metric.lower()]
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{source}: 'eval.select_metric' must be a metric that evaluation reports "
                          f"({', '.join(allowed)}), got {ev.select_metric!r}{hint}")


def _check_values(cfg: Config, source: str) -> None:
    """Ranges and choices of the schema's values (a NaN fails every range)."""
    for key, (lo, hi, open_hi) in RANGES.items():
        v = _get_dotted(cfg, key)
        ok = (lo is None or v >= lo) and (hi is None or (v < hi if open_hi else v <= hi))
        if not ok:
            want = " and ".join(w for w in (f">= {lo}" if lo is not None else "",
                                             (f"< {hi}" if open_hi else f"<= {hi}") if hi is not None else "") if w)
            raise ConfigError(f"{source}: '{key}' must be {want}, got {v!r}")
    for key, allowed in CHOICES.items():
        if _get_dotted(cfg, key) not in allowed:
            raise ConfigError(f"{source}: '{key}' must be one of {', '.join(allowed)}, got {_get_dotted(cfg, key)!r}")
    if any(r < 1 for r in cfg.eval.scene_recall):
        raise ConfigError(f"{source}: 'eval.scene_recall' must be cut-offs >= 1, got {list(cfg.eval.scene_recall)}")
    _check_select_metric(cfg.eval, source)
    bits = cfg.data.near_dup_hash_size ** 2
    if cfg.data.near_dup_threshold >= bits:
        raise ConfigError(f"{source}: 'data.near_dup_threshold' must be < {bits} (the bits of a "
                          f"{cfg.data.near_dup_hash_size}x{cfg.data.near_dup_hash_size} hash), got "
                          f"{cfg.data.near_dup_threshold}")
    if cfg.data.protocol == "kfold" and cfg.data.n_folds < 2:
        raise ConfigError(f"{source}: 'data.n_folds' must be >= 2 with data.protocol=kfold, got {cfg.data.n_folds}")
    if cfg.eval.recipe not in ("", "none"):
        _check_recipe(cfg, source)


def _check_recipe(cfg: Config, source: str) -> None:
    """An evaluation recipe is CLIP-family code in fp32: refuse settings that would evaluate otherwise."""
    recipe = cfg.eval.recipe
    if cfg.data.tokenizer != "clip":
        raise ConfigError(f"{source}: 'eval.recipe: {recipe}' evaluates open_clip models; it needs data.tokenizer: "
                          f"clip, got {cfg.data.tokenizer!r}")
    if cfg.eval.amp != "off":
        raise ConfigError(f"{source}: 'eval.recipe: {recipe}' evaluates in fp32; set eval.amp: off (got "
                          f"{cfg.eval.amp!r})")
    precision = cfg.model.params.get("precision", "fp32")
    if precision != "fp32":
        raise ConfigError(f"{source}: 'eval.recipe: {recipe}' evaluates in fp32; set model.params.precision: fp32 "
                          f"(got {precision!r})")


def migrate(data: dict) -> dict:
    """Move keys of older configs to their current place (a key already at the new place wins)."""
    data = copy.deepcopy(data)
    for (sec, key), (new_sec, new_key, field_name) in MOVED_KEYS.items():
        section = data.get(sec)
        if isinstance(section, dict) and key in section:
            value = section.pop(key)
            target = data.setdefault(new_sec, {})
            params = target.get(new_key)
            params = dict(params) if isinstance(params, dict) else {}
            params.setdefault(field_name, value)
            target[new_key] = params
    for sec, key in (("train", "amp"), ("eval", "amp"), ("train", "feature_cache")):  # YAML 1.1 reads a bare
        section = data.get(sec)  # `amp: off` as false: mean the choice "off"
        if isinstance(section, dict) and section.get(key) is False:
            section[key] = "off"
    return data


def config_from_dict(data: dict, source: str = "config") -> Config:
    """Build a strict ``Config`` from a plain mapping (old keys migrated, missing keys take their defaults, ranges
    are checked)."""
    cfg = _build(Config, migrate(data), "", source)
    _check_values(cfg, source)
    return dataclasses.replace(cfg, source=source)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config with ``_base_`` inheritance and ``--set`` overrides.

    Args:
        path: the YAML file.
        overrides: ``KEY=VALUE`` strings applied after the files are merged.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key or wrong type (the message names key and file).
    """
    path = Path(path)
    data = _read_yaml(path)
    data = _merge(_to_plain(Config()), data)  # defaults first so list overrides can address entries
    data = apply_overrides(data, overrides, str(path))
    return config_from_dict(data, str(path))


def config_to_dict(cfg: Config) -> dict:
    """Plain nested mapping of a config (tuples as lists)."""
    return _to_plain(cfg)


def dump_config(cfg: Config) -> str:
    """YAML text of the resolved config; ``config_from_dict(yaml.safe_load(text))`` gives it back."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(dump_config(cfg))
