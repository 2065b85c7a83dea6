"""MVSA: the multiscale visual self-attention global branch shared by AMFMN and GaLR (METHODS.md C1/C2).

Yuan et al., "Exploring a Fine-Grained Multiscale Method for Cross-Modal Remote Sensing Image Retrieval" (TGRS 2021,
https://github.com/xiaoyuan1996/AMFMN) and "Remote Sensing Cross-Modal Text-Image Retrieval Based on Global and
Local Information" (TGRS 2022, https://github.com/xiaoyuan1996/GaLR). Written from the spec, not from their code.

With a ResNet-18 at 256 px (f1 64x64x64, f2 128x32x32, f3 256x16x16, f4 512x8x8):

1. lower = concat(f1, up2(f2)) [192, 64, 64]; higher = concat(f3, up2(f4)) [768, 16, 16];
   solo = Linear(512 -> D)(GAP(f4)).
2. ``low_conv`` (3x3, stride 4) and ``high_conv`` (1x1) map both to [3, 16, 16].
3. x = concat (6 channels) + the channel mean of the higher map (broadcast), a residual.
4. main = ``main_conv`` (1x1, 6 -> 1), att = sigmoid(``att_conv`` (1x1, 6 -> 1)); flatten main * att to grid².
5. out = solo * sigmoid(``solo_gate``(flattened)); GaLR L2-normalises it, AMFMN does not (``normalize``).

The attention map is (image_size / 16)² long, so ``solo_gate`` depends on the input size (16 x 16 = 256 at 256 px).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from models.encoders.cnn import build_resnet
from models.encoders.multiscale import STAGES, backbone_stages, build_stage_backbone, is_resnet_name, stage_widths

# own module name -> upstream module name (AMFMN and GaLR use the same names)
UPSTREAM_NAMES = {
    "backbone": "extract_feature.resnet",
    "mvsa.solo_proj": "extract_feature.linear",
    "mvsa.low_conv": "mvsa.LF_conv",
    "mvsa.high_conv": "mvsa.HF_conv",
    "mvsa.main_conv": "mvsa.conv1x1_1",
    "mvsa.att_conv": "mvsa.conv1x1_2",
    "mvsa.solo_gate": "mvsa.solo_attention",
}


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / (||x|| + eps), the normalisation of the GaLR family (eps added to the norm, not clamped)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


class MVSA(nn.Module):
    """The MVSA head on ResNet stage outputs.

    Args:
        embed_dim: output size D.
        image_size: input side in pixels (a multiple of 32); fixes the attention-map length (image_size/16)².
        widths: channels of f1..f4 (ResNet-18: 64, 128, 256, 512).
        channels: channels of each subsampled map (3 upstream).
        normalize: L2-normalise the output (GaLR) or not (AMFMN).
    """

    def __init__(self, embed_dim: int, image_size: int = 256, widths: tuple[int, ...] = (64, 128, 256, 512),
                 channels: int = 3, normalize: bool = True) -> None:
        super().__init__()
        if image_size % 32:
            raise ConfigError(f"MVSA needs an image size divisible by 32, got {image_size}")
        self.image_size, self.normalize = image_size, normalize
        self.grid = (image_size // 4 - 3) // 4 + 1  # low_conv output side; equals image_size / 16
        if self.grid != image_size // 16:
            raise ConfigError(f"MVSA: image size {image_size} gives mismatched map sides")
        self.solo_proj = nn.Linear(widths[3], embed_dim)
        self.low_conv = nn.Conv2d(widths[0] + widths[1], channels, kernel_size=3, stride=4)
        self.high_conv = nn.Conv2d(widths[2] + widths[3], channels, kernel_size=1)
        self.main_conv = nn.Conv2d(2 * channels, 1, kernel_size=1)
        self.att_conv = nn.Conv2d(2 * channels, 1, kernel_size=1)
        self.solo_gate = nn.Linear(self.grid * self.grid, embed_dim)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Args: feats with f1..f4 ([B, C_k, H_k, W_k]). Returns: [B, D] global feature."""
        f1, f2, f3, f4 = feats["f1"], feats["f2"], feats["f3"], feats["f4"]
        if f3.shape[-1] != self.grid:
            raise ConfigError(f"MVSA was built for {self.image_size}px images (model.params.image_size) but got a "
                             f"{f3.shape[-1] * 16}px input; set model.params.image_size to data.image_size")
        lower = torch.cat([f1, F.interpolate(f2, scale_factor=2, mode="nearest")], 1)
        higher = torch.cat([f3, F.interpolate(f4, scale_factor=2, mode="nearest")], 1)
        solo = self.solo_proj(f4.flatten(2).mean(-1))
        low = self.low_conv(lower)
        high = self.high_conv(higher)
        x = torch.cat([low, high], 1)
        x = x + high.mean(1, keepdim=True)  # residual: the higher map's channel mean, broadcast over 6 channels
        att = torch.sigmoid(self.att_conv(x))
        attended = (self.main_conv(x) * att).flatten(1)  # [B, grid²]
        out = solo * torch.sigmoid(self.solo_gate(attended))
        return l2norm(out) if self.normalize else out


class MVSAImageTower(nn.Module):
    """Multi-scale backbone + MVSA (the image side of AMFMN and GaLR's global branch).

    Args:
        embed_dim: output size.
        image_size: input side (see :class:`MVSA`).
        arch: torchvision ResNet name (the paper's, with upstream keys), or any timm model name
            (:mod:`models.encoders.multiscale`; ``timm:<name>`` is the same name). MVSA is built for the
            backbone's stage widths (its first layers are linear in the channels, so no adapter is needed).
        pretrained: load the weights from ``weights`` (ResNet) or ``timm_weights`` (timm backbone).
        weights: path of the torchvision checkpoint, e.g. ``pretrained/resnet18-f37072fd.pth``.
        normalize: L2-normalise the MVSA output.
        timm_weights: weights file of a timm backbone (``model.params.backbone_weights``; local or ``pkg:``).
        finetune: train the backbone; False freezes it (BatchNorm in eval mode; a feature-cache prefix).
    """

    def __init__(self, embed_dim: int, image_size: int, arch: str = "resnet18", pretrained: bool = False,
                 weights: str = "", normalize: bool = True, timm_weights: str = "", finetune: bool = True) -> None:
        super().__init__()
        self.timm = not is_resnet_name(arch)
        self.finetune = finetune
        if self.timm:
            self.backbone = build_stage_backbone(arch, pretrained, timm_weights, "", "model.params.backbone_weights",
                                                 image_size)
        else:
            self.backbone = build_resnet(arch, pretrained, weights,
                                         f"ImageNet {arch} weights (torchvision layout; model.params.resnet_weights)")
            # The classifier is never used; it stays so upstream checkpoints (which hold it) load, but takes no
            # gradient, which keeps DDP from waiting for it.
            self.backbone.fc.requires_grad_(False)
        if not finetune:
            self.backbone.requires_grad_(False)
        widths = stage_widths(self.backbone)
        self.mvsa = MVSA(embed_dim, image_size, tuple(widths[s] for s in STAGES), normalize=normalize)

    def train(self, mode: bool = True) -> "MVSAImageTower":
        super().train(mode)
        if not self.finetune:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def stages(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """f1..f4 of the backbone (no graph through a frozen one)."""
        return backbone_stages(self.backbone, images, self.finetune)

    def forward(self, images: torch.Tensor, feats: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Args: images [B, 3, S, S] (or precomputed ``feats``). Returns: (global feature [B, D], f1..f4)."""
        if feats is None:
            feats = self.stages(images)
        return self.mvsa(feats), feats


def upstream_tower_keys(own_prefix: str, own_state: dict[str, Any]) -> dict[str, str]:
    """{own key: upstream key} for every tower tensor (``own_prefix`` is where the tower sits, e.g. ``image.``)."""
    out = {}
    for k in own_state:
        if not k.startswith(own_prefix):
            continue
        rest = k[len(own_prefix):]
        for own, up in UPSTREAM_NAMES.items():
            if rest.startswith(own + "."):
                out[k] = up + rest[len(own):]
                break
    return out
