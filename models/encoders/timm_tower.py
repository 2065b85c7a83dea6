"""Any timm image model as a tower that can be locked whole or up to its last stages (LiT-style).

``unlocked`` stages train, the rest is the frozen *prefix* whose output ``engine/feature_cache.py`` may cache:

* ``0``: the whole tower is locked; the prefix is the whole pooled model (any timm model);
* ``k > 0``: the last ``k`` stages of ``blocks`` plus the head conv train; the prefix ends at the stage before
  (EfficientNet / MobileNet family: ``conv_stem, bn1, blocks, conv_head, bn2``; another family is a ConfigError);
* ``-1``: everything trains (no prefix, nothing to cache).

Weights come from a local file or a ``pkg:`` reference (already resolved), in timm's, torchvision's or
efficientnet_pytorch's layout (:func:`models.encoders.pretrained.load_timm_weights`).
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from core.errors import ConfigError
from models.encoders.pretrained import load_timm_weights

_EFFNET_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")


class TimmImageTower(nn.Module):
    """A timm trunk (no classifier) split into a frozen prefix and a trained suffix.

    Args:
        name: timm model name.
        weights: local weights file ("" = random init).
        unlocked: stages that train (see the module docstring).
        key: the config key of ``weights`` / ``unlocked``, for messages.
    """

    def __init__(self, name: str, weights: str = "", unlocked: int = 0, key: str = "model.params.image_weights",
                 lock_key: str = "model.params.image_unlocked") -> None:
        super().__init__()
        self.net = timm.create_model(name, pretrained=False, num_classes=0)
        if weights:
            load_timm_weights(self.net, weights, key, f"the image tower (timm '{name}')")
        self.unlocked = unlocked
        self.num_features = int(self.net.num_features)
        n_stages = len(getattr(self.net, "blocks", ()))
        if unlocked > 0:
            if not all(hasattr(self.net, p) for p in _EFFNET_PARTS):
                raise ConfigError(f"{lock_key}: {unlocked} (train the last stages) needs an EfficientNet/MobileNet-"
                                  f"family timm model; '{name}' can be locked whole (0) or trained whole (-1)")
            if unlocked > n_stages:
                raise ConfigError(f"{lock_key}: {unlocked}, but '{name}' has {n_stages} stages")
        self.split = n_stages - unlocked if unlocked > 0 else 0
        for m in self.frozen_modules():
            m.requires_grad_(False)

    @property
    def locked(self) -> bool:
        """True when no parameter of the tower trains."""
        return self.unlocked == 0

    def frozen_modules(self) -> list[nn.Module]:
        """The modules of the frozen prefix (kept in eval mode)."""
        if self.unlocked == 0:
            return [self.net]
        if self.unlocked < 0:
            return []
        return [self.net.conv_stem, self.net.bn1, *self.net.blocks[:self.split]]

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part: pooled features [B, F] (locked), the stage-``split`` feature map, or the images."""
        if self.unlocked == 0:
            return self.net(images)
        if self.unlocked < 0:
            return images
        x = self.net.bn1(self.net.conv_stem(images))
        for stage in self.net.blocks[:self.split]:
            x = stage(x)
        return x

    def suffix(self, x: torch.Tensor) -> torch.Tensor:
        """The trained part: -> pooled [B, F]."""
        if self.unlocked == 0:
            return x
        if self.unlocked < 0:
            return self.net(x)
        for stage in self.net.blocks[self.split:]:
            x = stage(x)
        return self.net.global_pool(self.net.bn2(self.net.conv_head(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(images))
