"""ResNet backbones (torchvision layout, which is also the layout of every upstream checkpoint) with local weights.

Pretrained weights are read from a local file only (ImageNet ``resnet18-*.pth`` / ``resnet50-*.pth`` from
torchvision, or the AID-pretrained RSP ResNet-50 ``aid_28-rsp-resnet-50-ckpt.pth`` whose weights sit under ``model``
with a 30-class ``fc``). Nothing is downloaded.
"""
from __future__ import annotations

import logging
import re

import torch
import torchvision
from torch import nn

from core.errors import ConfigError
from core.files import RequiredFile, check_required_files
from models.encoders.pretrained import load_matching, read_state

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
        raise ConfigError(f"unknown ResNet '{arch}'; choose one of {', '.join(ARCHS)}")
    net = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        load_backbone_weights(net, weights, what or f"{arch} weights")
    return net


def load_backbone_weights(net: nn.Module, path: str, what: str) -> None:
    """Load a local backbone checkpoint into ``net``; the classifier (``fc.``) is not required from the file.

    The file must fill at least 90 % of the trunk's weight tensors (models/encoders/pretrained.py).
    """
    needs = resnet_required_files(path, what)
    check_required_files(needs, "missing pretrained file",
                         "set the path in the config or use model.pretrained=false for random init")
    state = {k.removeprefix("backbone."): v for k, v in read_state(path, needs[0].key).items()}
    skipped = load_matching(net, state, path, what, needs[0].key, skip=("fc.",))
    if skipped:
        log.info("%s: skipped %d tensors (%s...)", path, len(skipped), ", ".join(skipped[:3]))


def resnet_required_files(path: str, what: str, key: str = "") -> list[RequiredFile]:
    """The weights file a pretrained ResNet reads (``key`` defaults to the one named in ``what``, if any)."""
    if not key:
        found = re.search(r"model\.params\.\w+", what)
        key = found.group(0) if found else "model.params"
    return [RequiredFile(key, path, what)]


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
