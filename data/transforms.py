"""Per-method image pipelines (METHODS.md A4), built with ``torchvision.transforms.v2``, registered in ``PIPELINES``.

Every pipeline maps a PIL image to a float tensor [3, S, S] (S = ``data.image_size``). Each is a :class:`Pipeline`
split at its first random op; the deterministic prefix is what the pixel cache (``data/images.py``) stores:

* ``galr`` (GaLR / SWAN / KAMCL): train = resize to 278x278 (278/256 of S), rotation by an angle uniform in
  [0, 90] degrees, random crop S; eval = resize to SxS; ImageNet mean/std.
* ``amfmn``: as ``galr`` without the rotation (AMFMN calls ``RandomRotation(0, 90)``, i.e. degrees=0, a no-op).
* ``pir`` (PIR): train = RandomResizedCrop(S, scale 0.5-1, bicubic), horizontal flip, a RandAugment of 2 ops at
  magnitude 7 restricted to Identity, AutoContrast, Equalize, Brightness, Sharpness, ShearX/Y, TranslateX/Y and Rotate
  (the BLIP/X-VLM ``RandomAugment`` PIR uses: each chosen op applied with probability 0.5, geometric ops with a random
  sign); eval = bicubic resize to SxS; CLIP mean/std.
* ``fisvl`` (FISVL on RSICD/UCM/Sydney): ``pir`` plus GaussianBlur (sigma 0.1-2, p=0.5) before RandAugment and,
  after normalisation, RandomErasing (scale 0.1-0.2) and GridMask (p=0.5).
* ``clip``: CLIP preprocessing (bicubic resize of the short side to S, centre crop S, CLIP mean/std); train = eval.
* ``plain``: resize to SxS + ImageNet normalisation (tests, demo).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from core.registry import Registry

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_BICUBIC = InterpolationMode.BICUBIC


class RestrictedRandAugment(torch.nn.Module):
    """RandAugment over a fixed op list (PIL images or uint8 tensors [C, H, W]).

    ``num_ops`` ops are drawn uniformly (with replacement); each is applied with probability ``prob``. Magnitudes
    follow the BLIP/X-VLM ``RandomAugment`` (level ``m`` of 10): enhance factor 0.1 + 1.8 m/10, shear 0.3 m/10,
    translation 10 m/10 pixels at 224 px (scaled with the image), rotation 30 m/10 degrees.
    """

    OPS = ("identity", "autocontrast", "equalize", "brightness", "sharpness", "shear_x", "shear_y",
           "translate_x", "translate_y", "rotate")

    def __init__(self, num_ops: int = 2, magnitude: int = 7, prob: float = 0.5) -> None:
        super().__init__()
        self.num_ops, self.level, self.prob = num_ops, magnitude / 10.0, prob

    def _apply(self, img: torch.Tensor, op: str) -> torch.Tensor:
        sign = 1.0 if torch.rand(()) < 0.5 else -1.0
        if op == "autocontrast":
            return TF.autocontrast(img)
        if op == "equalize":
            return TF.equalize(img)
        if op in ("brightness", "sharpness"):
            factor = 0.1 + 1.8 * self.level
            return TF.adjust_brightness(img, factor) if op == "brightness" else TF.adjust_sharpness(img, factor)
        if op.startswith("shear"):
            deg = math.degrees(math.atan(0.3 * self.level)) * sign
            shear = [deg, 0.0] if op == "shear_x" else [0.0, deg]
            return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear)
        if op.startswith("translate"):
            px = round(10 * self.level * TF.get_size(img)[-1] / 224) * sign
            shift = [px, 0] if op == "translate_x" else [0, px]
            return TF.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])
        if op == "rotate":
            return TF.rotate(img, 30.0 * self.level * sign)
        return img

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        for k in torch.randint(len(self.OPS), (self.num_ops,)).tolist():
            if torch.rand(()) < self.prob:
                img = self._apply(img, self.OPS[k])
        return img


class GridMask(torch.nn.Module):
    """GridMask (Chen et al., 2020): zero a regular grid of square holes, with probability ``p``.

    The grid period ``d`` is uniform in [d_min, d_max] x image side, each hole has side ``ratio * d`` and the grid
    is shifted by a random offset. Applied after normalisation, so a hole has the dataset mean colour.

    Args:
        p: probability of masking an image.
        d_min, d_max: grid period range as a fraction of the image side.
        ratio: hole side / period.
    """

    def __init__(self, p: float = 0.5, d_min: float = 0.25, d_max: float = 0.5, ratio: float = 0.5) -> None:
        super().__init__()
        self.p, self.d_min, self.d_max, self.ratio = p, d_min, d_max, ratio

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return img
        h, w = img.shape[-2:]
        side = min(h, w)
        d = int(torch.randint(max(2, int(self.d_min * side)), max(3, int(self.d_max * side)) + 1, ()).item())
        hole = max(1, int(self.ratio * d))
        oy, ox = (int(v) for v in torch.randint(d, (2,)).tolist())
        rows = ((torch.arange(h) + oy) % d) < hole
        cols = ((torch.arange(w) + ox) % d) < hole
        keep = ~(rows[:, None] & cols[None, :])
        return img * keep.to(img.dtype)


class ToNormalizedTensor(torch.nn.Module):
    """RGB PIL image (or uint8 tensor [3, H, W]) -> float32 tensor [3, H, W], ``(x / 255 - mean) / std``.

    The ops of ``v2.ToImage, v2.ToDtype(float32, scale=True), v2.Normalize(mean, std)`` in the same order (so the
    same float32 values, bit for bit), fused into one allocation: about 2x faster, and this runs once per sample.
    """

    def __init__(self, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def forward(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(img, Image.Image):
            img = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        return img.contiguous().to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)


def _finish(mean: tuple, std: tuple) -> list:
    # geometric and colour ops run on the PIL image (PIL's C kernels are much faster than torch's grid_sample on
    # small images); conversion to a tensor happens here
    return [ToNormalizedTensor(mean, std)]


class Pipeline:
    """An image pipeline split at its first random op: ``rest(prefix(img))``.

    ``prefix`` holds the leading deterministic ops (resizes, centre crop) and is what ``data.images.PixelCache``
    applies once per image; ``rest`` runs per sample. Calling the pipeline on a PIL image runs both, so a cached
    and an uncached sample are the same tensor.

    Args:
        prefix: deterministic PIL -> PIL ops (empty: none).
        rest: PIL -> float tensor [3, S, S] ops, random ones included.
        random: ``rest`` draws random numbers (the datasets seed it per item); a rest without random ops must also
            take a uint8 tensor [3, H, W] (the cache then skips the PIL image).
    """

    def __init__(self, prefix: list, rest: list, random: bool = True) -> None:
        self.prefix = v2.Compose(prefix) if prefix else None
        self.rest = v2.Compose(rest)
        self.random = random
        self.key = repr(self.prefix) if prefix else "decoded"  # identifies the cached pixels

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.rest(self.prefix(img) if self.prefix is not None else img)


PIPELINES = Registry("data.transform")


@PIPELINES.register("galr")
def galr(train: bool, s: int, rotate: bool = True) -> Pipeline:
    """GaLR / SWAN / KAMCL: train resize 278/256 S, rotation in [0, 90], random crop S; eval resize S x S."""
    if not train:
        return plain(train, s)
    big = round(278 * s / 256)
    rot = [v2.RandomRotation(degrees=(0.0, 90.0))] if rotate else []
    return Pipeline([v2.Resize((big, big))], rot + [v2.RandomCrop(s)] + _finish(IMAGENET_MEAN, IMAGENET_STD))


@PIPELINES.register("amfmn")
def amfmn(train: bool, s: int) -> Pipeline:
    """AMFMN: ``galr`` without the rotation."""
    return galr(train, s, rotate=False)


@PIPELINES.register("plain")
def plain(train: bool, s: int) -> Pipeline:
    """Resize to S x S, ImageNet normalisation (train = eval)."""
    return Pipeline([v2.Resize((s, s))], _finish(IMAGENET_MEAN, IMAGENET_STD), random=False)


@PIPELINES.register("clip")
def clip(train: bool, s: int) -> Pipeline:
    """CLIP preprocessing: bicubic resize of the short side to S, centre crop S (train = eval)."""
    return Pipeline([v2.Resize(s, interpolation=_BICUBIC), v2.CenterCrop(s)], _finish(CLIP_MEAN, CLIP_STD),
                    random=False)


@PIPELINES.register("pir")
def pir(train: bool, s: int, fisvl: bool = False) -> Pipeline:
    """PIR (and FISVL with ``fisvl``): see the module docstring; eval = bicubic resize to S x S."""
    if not train:
        return Pipeline([v2.Resize((s, s), interpolation=_BICUBIC)], _finish(CLIP_MEAN, CLIP_STD), random=False)
    ops = [v2.RandomResizedCrop(s, scale=(0.5, 1.0), interpolation=_BICUBIC), v2.RandomHorizontalFlip()]
    if fisvl:
        kernel = 2 * math.ceil(3 * 2.0 * s / 224) + 1  # covers sigma up to 2 at 224 px
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    ops += [RestrictedRandAugment(2, 7)] + _finish(CLIP_MEAN, CLIP_STD)
    if fisvl:
        ops += [v2.RandomErasing(p=0.5, scale=(0.1, 0.2)), GridMask(p=0.5), v2.ToPureTensor()]
    return Pipeline([], ops)  # the first op is random: the cache keeps the decoded image


@PIPELINES.register("fisvl")
def fisvl(train: bool, s: int) -> Pipeline:
    """FISVL: ``pir`` plus blur, random erasing and GridMask in training."""
    return pir(train, s, fisvl=True)


TRANSFORMS = tuple(PIPELINES.names())


def build_transform(name: str, train: bool, image_size: int) -> Pipeline:
    """The pipeline ``name`` (see module docstring) for training or evaluation.

    Args:
        name: a registered pipeline (galr, amfmn, pir, fisvl, clip, plain).
        train: training augmentation (True) or the deterministic eval pipeline (False).
        image_size: output side S.

    Returns:
        A :class:`Pipeline`: PIL.Image -> float tensor [3, S, S].
    """
    if name not in PIPELINES:
        raise ValueError(f"unknown data.transform '{name}'; known: {', '.join(PIPELINES.names())}")
    return PIPELINES.get(name)(train, image_size)
