"""Typed, strict experiment configuration.

A config is YAML loaded into frozen dataclasses with six sections (model / data / loss / optim / train / eval).
Rules (detectron2-style schema, open_clip-style ``Cfg(**d)`` strictness):

* ``_base_: path`` (or a list of paths, relative to the file) is merged first; the file's own keys win.
* Every key must exist in the schema below; an unknown key or a wrong type raises :class:`ConfigError` naming
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # the shipped configs (bare names resolve here)

__all__ = ["Config", "ConfigError", "ModelCfg", "DataCfg", "LossTermCfg", "LossCfg", "OptimCfg", "TrainCfg",
           "EvalCfg", "parse_params", "apply_overrides", "config_from_dict", "load_config", "config_to_dict",
           "dump_config", "save_config"]


@dataclass(frozen=True)
class ModelCfg:
    name: str = "vse"  # registered method name (models/registry.py)
    embed_dim: int = 512  # joint embedding size
    pretrained: bool = True  # load the pretrained assets named in params; false = random init, no file read
    init_from: str = ""  # "upstream:PATH" (upstream key layout) or "rsitr:PATH" (an rsitr checkpoint)
    upstream_compat: bool = False  # reproduce the upstream code's numeric quirks (METHODS.md E)
    params: dict = field(default_factory=dict)  # method-specific, validated by the method's Params dataclass


@dataclass(frozen=True)
class DataCfg:
    dataset: str = "demo"  # preset (rsicd, rsitmd, ucm, sydney, nwpu, demo) or "precomp" for any folder
    root: str = "data"  # folder that holds <name>_precomp/
    name: str = ""  # precomp folder stem (default: the preset's)
    image_dir: str = ""  # image folder, relative to the precomp folder or absolute (default: the preset's)
    encoding: str = "utf-8"  # caption / filename files; decoded strictly (a bad byte is an error naming file + line)
    tokenizer: str = "vocab"  # vocab (word ids) | bert | clip
    vocab: str = ""  # vocab JSON (word2idx/idx2word/idx); "" = build from the training captions
    tokenizer_path: str = ""  # local directory of a HF tokenizer (bert)
    clip_model: str = "ViT-B-32"  # open_clip name whose tokenizer is used (clip)
    max_tokens: int = 47  # longest token sequence kept
    drop_stopwords: bool = False  # drop stop-words at encode time (upstream keeps them as <unk>)
    word_deletion: float = 0.0  # training-time random word deletion probability (FISVL)
    cap_weight_file: str = ""  # JSON of per-caption loss weights -> batch["cap_weight"] (data/caption_weights.py)
    transform: str = "galr"  # train/eval pipeline name (data/transforms.py)
    image_size: int = 256
    batch_size: int = 100  # global batch size (split over processes)
    eval_batch_size: int = 128
    num_workers: int = 2
    protocol: str = "random_8020"  # random_8020 | stratified | kfold | fixed
    n_folds: int = 1
    val_ratio: float = 0.2
    base_seed: int = 0  # fold k is drawn with base_seed + k
    split_dir: str = ""  # protocol=fixed: folder with train/val_filename_verify.txt
    max_images: int = 0  # >0: keep only the first N images of every split (smoke tests)
    cache: bool = True  # decode each image once per run into a uint8 memory cache (data/images.py); false = per sample
    # leakage check (data/near_dups.py): perceptual hash of every image; train images within the threshold of a test
    # image are removed from training, near-duplicates inside training are reported
    near_dup_hash: str = "phash"  # phash | dhash | ahash | whash (imagehash)
    near_dup_hash_size: int = 16  # imagehash hash_size: a hash of hash_size**2 bits (16: 256 bits)
    near_dup_threshold: int = 64  # near-duplicate: Hamming distance <= this many bits (of hash_size**2)
    near_dup_action: str = "auto"  # remove | report | auto (remove; report on the generated demo set)
    datasets: tuple[str, ...] = ()  # a union of presets / *_precomp folders (data/union.py); data.dataset then unused
    format: str = "precomp"  # precomp (in memory) | webdataset: training pairs streamed from data.shards (data/shards.py)
    shards: str = ""  # webdataset: folder of tar shards + index.json (scripts/make_shards.py); test: data.dataset(s)
    shuffle_buffer: int = 1000  # webdataset: pairs in each worker's shuffle buffer


@dataclass(frozen=True)
class LossTermCfg:
    name: str = "triplet"  # registered loss (losses/__init__.py)
    weight: float = 1.0
    start_epoch: int = 0  # active from this 0-based epoch ...
    end_epoch: int = -1  # ... up to (excluding) this one; -1 = until the end
    params: dict = field(default_factory=dict)  # validated by the loss's Params dataclass


@dataclass(frozen=True)
class LossCfg:
    terms: tuple[LossTermCfg, ...] = (LossTermCfg(),)


@dataclass(frozen=True)
class OptimCfg:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    no_decay_norm_bias: bool = True  # no weight decay on norms, biases and 1-d parameters
    lr_mult: dict = field(default_factory=dict)  # parameter-name prefix -> lr multiplier
    scheduler: str = "step"  # step | warmup_linear | cosine | constant
    step_epochs: int = 20  # step: multiply lr by gamma every step_epochs epochs
    gamma: float = 0.7
    warmup_ratio: float = 0.1  # warmup_linear / cosine: share of steps spent warming up
    grad_clip: float = 0.0  # max grad norm after backward; 0 = off
    fused: bool = False  # PyTorch's fused optimizer kernel (3x faster step on CPU, same update up to rounding)


@dataclass(frozen=True)
class TrainCfg:
    epochs: int = 20
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms, single-threaded data order
    amp: str = "bf16"  # bf16 | fp16 | off (always off on CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_dir: str = "checkpoints"
    experiment: str = ""  # run name (default: the config file's stem)
    log_every: int = 10  # steps between progress lines in log.txt when the console is not a terminal
    log_every_s: float = 60.0  # ... or seconds between them, whichever comes first (0 = by steps only)
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    dist_timeout_s: int = 1800  # torchrun: a collective waiting longer (a stopped node) raises; covers rank 0's eval


@dataclass(frozen=True)
class EvalCfg:
    select_metric: str = "mR"  # validation metric that picks best.pth
    every: int = 1  # validate every N epochs
    sim_shard: int = 1024  # rows per similarity block
    rerank: str = "none"  # a reranker of engine/rerank.py (none | galr | galr_unweighted); test.py --rerank too
    rerank_params: dict = field(default_factory=dict)  # its settings, e.g. {k: 30, wp1: 0.3, wp2: 1.1} (galr);
    # checked by the reranker's own dataclass (engine/rerank.py RERANK_PARAMS), missing keys take its defaults
    tune_rerank: bool = True  # tune the rerank settings on validation before testing (rerankers that can be tuned)
    scene_recall: tuple[int, ...] = ()  # SRR@r cut-offs to report (SWAN), e.g. [1, 5, 10]
    amp: str = "off"  # off | bf16 | fp16: autocast while encoding val/test on CUDA; off = fp32, so metrics and the
    # best-epoch choice do not depend on train.amp (bf16/fp16 evaluate faster, with slightly different numbers)


@dataclass(frozen=True)
class Config:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    source: str = field(default="", compare=False)  # file the config came from (for messages; not dumped)


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
    """
    return _build(cls, params, prefix, source or "config")


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
# dotted key -> (lowest allowed, highest allowed, highest is excluded); None = no bound
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "model.embed_dim": (1, None, False),
    "data.max_tokens": (1, None, False), "data.word_deletion": (0, 1, True), "data.image_size": (1, None, False),
    "data.batch_size": (1, None, False), "data.eval_batch_size": (1, None, False), "data.num_workers": (0, None, False),
    "data.n_folds": (1, None, False), "data.val_ratio": (0, 1, True), "data.max_images": (0, None, False),
    "data.near_dup_hash_size": (2, None, False), "data.near_dup_threshold": (0, None, False),
    "data.shuffle_buffer": (1, None, False),
    "optim.lr": (0, None, False), "optim.weight_decay": (0, None, False), "optim.momentum": (0, 1, False),
    "optim.step_epochs": (1, None, False), "optim.gamma": (0, None, False), "optim.warmup_ratio": (0, 1, False),
    "optim.grad_clip": (0, None, False),
    "train.epochs": (0, None, False), "train.log_every": (1, None, False), "train.log_every_s": (0, None, False),
    "train.num_threads": (0, None, False), "train.dist_timeout_s": (1, None, False),
    "eval.every": (1, None, False), "eval.sim_shard": (1, None, False),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "data.tokenizer": ("vocab", "bert", "clip"),
    "data.protocol": ("random_8020", "stratified", "kfold", "fixed"),
    "data.near_dup_hash": ("phash", "dhash", "ahash", "whash"),
    "data.near_dup_action": ("auto", "remove", "report"),
    "data.format": ("precomp", "webdataset"),
    "optim.name": ("adam", "adamw", "sgd"),
    "optim.scheduler": ("step", "warmup_linear", "cosine", "constant"),
    "train.amp": ("bf16", "fp16", "off"),
    "eval.amp": ("bf16", "fp16", "off"),
}


def _get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


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
    bits = cfg.data.near_dup_hash_size ** 2
    if cfg.data.near_dup_threshold >= bits:
        raise ConfigError(f"{source}: 'data.near_dup_threshold' must be < {bits} (the bits of a "
                          f"{cfg.data.near_dup_hash_size}x{cfg.data.near_dup_hash_size} hash), got "
                          f"{cfg.data.near_dup_threshold}")
    if cfg.data.protocol == "kfold" and cfg.data.n_folds < 2:
        raise ConfigError(f"{source}: 'data.n_folds' must be >= 2 with data.protocol=kfold, got {cfg.data.n_folds}")


# old key -> its place now (configs and checkpoints written before the move still load)
MOVED_KEYS = {("eval", "rerank_k"): ("eval", "rerank_params", "k"),
              ("eval", "rerank_wp1"): ("eval", "rerank_params", "wp1"),
              ("eval", "rerank_wp2"): ("eval", "rerank_params", "wp2")}


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
    for sec in ("train", "eval"):  # YAML 1.1 reads a bare `amp: off` as false: mean the choice "off"
        section = data.get(sec)
        if isinstance(section, dict) and section.get("amp") is False:
            section["amp"] = "off"
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
