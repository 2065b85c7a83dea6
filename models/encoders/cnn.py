"""ResNet backbones (torchvision layout, which is also the layout of every upstream checkpoint) with local weights.

Pretrained weights are read from a local file only (ImageNet ``resnet18-*.pth`` / ``resnet50-*.pth`` from
torchvision, or the AID-pretrained RSP ResNet-50 ``aid_28-rsp-resnet-50-ckpt.pth`` whose weights sit under ``model``
with a 30-class ``fc``). Nothing is downloaded.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")


def build_resnet(arch: str, pretrained: bool, weights: str = "", what: str = "") -> torchvision.models.ResNet:
    """Build a torchvision ResNet and, when ``pretrained``, load ``weights`` from a local file.

    Args:
        arch: one of ``ARCHS``.
        pretrained: load ``weights``; False builds random weights and reads nothing.
        weights: local checkpoint path (torchvision state dict, or a dict with ``model``/``state_dict``).
        what: description for the missing-file error, e.g. "ImageNet ResNet-18 weights (model.params.resnet_weights)".
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown ResNet '{arch}'; choose one of {', '.join(ARCHS)}")
    net = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        load_backbone_weights(net, weights, what or f"{arch} weights")
    return net


def load_backbone_weights(net: nn.Module, path: str, what: str) -> None:
    """Load a local backbone checkpoint into ``net``; the classifier is skipped when its shape differs."""
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"missing pretrained file: {path or '(no path given)'} — expected {what}; "
                                f"set the path in the config or use model.pretrained=false for random init")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in ckpt.items()}
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    missing = sorted(k for k in own if k not in usable and not k.startswith("fc."))
    if missing:
        raise ValueError(f"{path} does not fit {what}: {len(missing)} backbone tensors missing, e.g. {missing[:3]}")
    net.load_state_dict(usable, strict=False)
    if skipped:
        log.info("%s: skipped %d tensors (%s...)", path, len(skipped), ", ".join(skipped[:3]))


def resnet_features(net: torchvision.models.ResNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the ResNet trunk and return every stage.

    Args:
        net: a torchvision ResNet.
        x: images [B, 3, H, W].

    Returns:
        ``stem`` (after maxpool, [B, 64, H/4, W/4]) and ``f1``..``f4`` (layer1..layer4 outputs; strides 4, 8, 16, 32).
    """
    stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    f1 = net.layer1(stem)
    f2 = net.layer2(f1)
    f3 = net.layer3(f2)
    f4 = net.layer4(f3)
    return {"stem": stem, "f1": f1, "f2": f2, "f3": f3, "f4": f4}
