"""Swin Transformer image tower through timm, with local weights only (PIR / FISVL, METHODS.md C5, C6).

The upstream code (X-VLM lineage) uses Microsoft's Swin implementation and loads the ImageNet-22k checkpoint
``swin_tiny_patch4_window7_224_22k.pth`` from https://github.com/microsoft/Swin-Transformer. rsitr builds the same
network with ``timm.create_model("swin_tiny_patch4_window7_224", ...)`` and reads the weights from a local file
through timm's checkpoint filter, which accepts both its own layout and Microsoft's (patch merging at the end of a
stage, ``head.*``), so the Microsoft file can be used unchanged. The file must fill at least 90 % of the trunk's
weight tensors (models/encoders/pretrained.py); an empty or unrelated file is an error, not a random tower.

The tower output follows upstream: the final-norm tokens of the last stage, prefixed by their average
("CLS"), i.e. ``[B, 1 + h*w, C]`` (50 x 768 for Swin-T at 224 px).

Layout differences between the upstream state dict (``vision_encoder.*``) and timm, handled by
:func:`convert_swin_upstream`: Microsoft stores the patch merging of stage i as ``layers.i.downsample``, timm as
``layers.{i+1}.downsample``; ``relative_position_index`` and ``attn_mask`` are deterministic buffers that timm
recomputes (non-persistent), so they are consumed without being copied.
"""
from __future__ import annotations

import logging
import re
from typing import Mapping

import timm
import torch
from timm.models.swin_transformer import checkpoint_filter_fn
from torch import nn

from core.files import RequiredFile, check_required_files
from models.encoders.pretrained import load_matching, read_state

log = logging.getLogger(__name__)

SWIN_NAME = "swin_tiny_patch4_window7_224"


def build_swin(pretrained: bool, weights: str = "", img_size: int = 224, embed_dim: int = 96,
               depths: tuple[int, ...] = (2, 2, 6, 2), heads: tuple[int, ...] = (3, 6, 12, 24), window: int = 7,
               drop_path: float = 0.1, name: str = SWIN_NAME) -> nn.Module:
    """Build a headless timm Swin Transformer, loading ``weights`` from a local file when ``pretrained``.

    Args:
        pretrained: read ``weights``; False gives random init and reads no file.
        weights: local checkpoint (timm or Microsoft Swin layout, optionally under ``model``).
        img_size, embed_dim, depths, heads, window: architecture (Swin-T defaults; tiny values for tests).
        drop_path: stochastic depth rate (upstream 0.1).
        name: timm architecture whose defaults the other arguments override.

    Returns:
        the timm model (``num_classes=0``); use :func:`swin_tokens` to run it.
    """
    kwargs = dict(num_classes=0, img_size=img_size, embed_dim=embed_dim, depths=tuple(depths),
                  num_heads=tuple(heads), window_size=window, drop_path_rate=drop_path)
    net = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained:
        check_required_files(swin_required_files(weights), "missing pretrained file",
                             "or set model.pretrained=false for random init")
        load_swin_weights(net, weights, name)
    return net


def swin_required_files(weights: str, key: str = "model.params.swin_weights") -> list[RequiredFile]:
    """The Swin weights file a pretrained tower reads."""
    return [RequiredFile(key, weights, "Swin Transformer weights, e.g. Microsoft's "
                                       "swin_tiny_patch4_window7_224_22k.pth (ImageNet-22k) or a timm state dict")]


def load_swin_weights(net: nn.Module, weights: str, name: str = SWIN_NAME,
                      key: str = "model.params.swin_weights") -> None:
    """Load a local Swin file (timm or Microsoft layout) into ``net``; it must fill the trunk (no classifier).

    timm's own pretrained path drops the classifier and then loads with ``strict=False``, so an empty file passed
    silently; here timm's checkpoint filter does the layout change and :func:`load_matching` checks the coverage.
    """
    state = checkpoint_filter_fn(read_state(weights, key), net)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    unused = load_matching(net, state, weights, f"the Swin Transformer (timm '{name}')", key, skip=("head.",))
    if unused:
        log.info("%s: %d tensors not used (%s ...)", weights, len(unused), ", ".join(unused[:3]))


def swin_tokens(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Run the Swin trunk and return the averaged token followed by every last-stage token.

    Args:
        net: a timm Swin Transformer.
        images: [B, 3, H, W].

    Returns:
        [B, 1 + h*w, C] (row-major token order, as Microsoft's ``flatten(2)``).
    """
    x = net.forward_features(images)  # timm: NHWC after the final norm
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)


_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def convert_swin_upstream(state: Mapping[str, torch.Tensor], src_prefix: str = "vision_encoder.",
                          dst_prefix: str = "vision_encoder.") -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map Microsoft-layout Swin keys (under ``src_prefix``) to timm keys (under ``dst_prefix``).

    Returns:
        (converted keys -> tensors, upstream keys consumed). Derived buffers (``relative_position_index``,
        ``attn_mask``) count as consumed: timm rebuilds them identically from the architecture.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, value in state.items():
        if not key.startswith(src_prefix):
            continue
        sub = key[len(src_prefix):]
        used.add(key)
        if sub.endswith("relative_position_index") or sub.endswith("attn_mask"):
            continue
        sub = _DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", sub)
        out[dst_prefix + sub] = value
    return out, used


def swin_state_to_upstream(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse layout change (timm -> Microsoft) of a bare Swin state dict; used to write test fixtures."""
    out = {}
    for key, value in state.items():
        out[_DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)] = value
    return out
