"""Per-method image pipelines (METHODS.md A4), built with ``torchvision.transforms.v2``, registered in ``PIPELINES``.

Every pipeline maps a PIL image to a float tensor [3, S, S] (S = ``data.image_size``). Each is a :class:`Pipeline` in
three parts: a deterministic ``prefix`` (what the pixel cache of ``data/images.py`` stores), the per-sample ``rest``
(random ops included) that ends in a uint8 tensor [3, S, S], and ``normalize`` (``(x / 255 - mean) / std``). The
training loader stops after ``rest`` and ships uint8 batches; ``normalize_batch`` finishes them on the training
device (as timm's prefetcher does): a quarter of the bytes through worker IPC, and no float work in the workers. The
float values are those of normalising each sample, bit for bit.

* ``galr`` (GaLR / SWAN / KAMCL): train = resize to 278x278 (278/256 of S), rotation by an angle uniform in
  [0, 90] degrees, random crop S; eval = resize to SxS; ImageNet mean/std.
* ``amfmn``: as ``galr`` without the rotation (AMFMN calls ``RandomRotation(0, 90)``, i.e. degrees=0, a no-op).
* ``pir`` (PIR): train = RandomResizedCrop(S, scale 0.5-1, bicubic), horizontal flip, a RandAugment of 2 ops at
  magnitude 7 restricted to Identity, AutoContrast, Equalize, Brightness, Sharpness, ShearX/Y, TranslateX/Y and Rotate
  (the BLIP/X-VLM ``RandomAugment`` PIR uses: each chosen op applied with probability 0.5, geometric ops with a random
  sign, bilinear, uncovered pixels grey 128); eval = bicubic resize to SxS; CLIP mean/std.
* ``fisvl`` (FISVL on RSICD/UCM/Sydney): ``pir`` plus Pillow's GaussianBlur (radius = sigma uniform in 0.1-2, p=0.5;
  the MoCo-v2 blur FISVL's code calls) before RandAugment and, before normalisation as in FISVL's code,
  RandomErasing (p=0.5, scale 0.1-0.2, black) and GridMask (p=0.5 x 0.8, black squares, see :class:`GridMask`).
* ``clip``: CLIP preprocessing (bicubic resize of the short side to S, centre crop S, CLIP mean/std); train = eval.
* ``plain``: resize to SxS + ImageNet normalisation (tests, demo).
* ``inception``: bicubic resize to SxS + Inception normalisation (mean = std = 0.5; EfficientNet-Lite); train = eval.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from core.registry import Registry

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
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

    FILL = [128, 128, 128]  # the grey BLIP's RandomAugment gives pixels a geometric op uncovers

    def __init__(self, num_ops: int = 2, magnitude: int = 7, prob: float = 0.5) -> None:
        super().__init__()
        self.num_ops, self.level, self.prob = num_ops, magnitude / 10.0, prob
        self.geo = dict(interpolation=InterpolationMode.BILINEAR, fill=self.FILL)

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
            return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, **self.geo)
        if op.startswith("translate"):
            px = round(10 * self.level * TF.get_size(img)[-1] / 224) * sign
            shift = [px, 0] if op == "translate_x" else [0, px]
            return TF.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], **self.geo)
        if op == "rotate":
            return TF.rotate(img, 30.0 * self.level * sign, **self.geo)
        return img

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        for k in torch.randint(len(self.OPS), (self.num_ops,)).tolist():
            if torch.rand(()) < self.prob:
                img = self._apply(img, self.OPS[k])
        return img


class GridMask(torch.nn.Module):
    """GridMask (Chen et al., 2020) as FISVL's code configures it: black squares on a rotated grid, with probability p.

    A grid of period ``d`` (uniform integer in [d_min, d_max) x side / 224, FISVL: 96-224 px at 224 px) is drawn on
    a square as large as the image's diagonal, with lines ``ceil(ratio * d)`` wide at a random offset; the square is
    rotated by a whole-degree angle in [0, 360) and its centre cut to the image. Pixels between the lines (squares of
    side ``d - ceil(ratio * d)``) become 0, the lines stay. FISVL applies it on the [0, 1] tensor before
    normalisation with probability 0.5 (RandomApply) x 0.8 (its own ``prob``), so ``p`` = 0.4.

    Args:
        p: probability of masking an image.
        d_min, d_max: grid period range in pixels at 224 px (scaled with the image side).
        ratio: line width / period.
        rotate: the angle is a whole number of degrees below this (1: no rotation).
    """

    def __init__(self, p: float = 0.4, d_min: int = 96, d_max: int = 224, ratio: float = 0.4,
                 rotate: int = 360) -> None:
        super().__init__()
        self.p, self.d_min, self.d_max, self.ratio, self.rotate = p, d_min, d_max, ratio, rotate

    def mask(self, h: int, w: int) -> torch.Tensor:
        """A random keep-mask [h, w] (1 on the grid lines, 0 in the squares)."""
        side = math.ceil(math.sqrt(h * h + w * w))
        lo = max(2, round(self.d_min * min(h, w) / 224))
        d = int(torch.randint(lo, max(lo + 1, round(self.d_max * min(h, w) / 224)), ()).item())
        line = math.ceil(d * self.ratio)
        oy, ox = (int(torch.randint(d, ())) for _ in range(2))
        angle = int(torch.randint(self.rotate, ()))
        idx = torch.arange(side)
        rows, cols = (idx - oy) % d < line, (idx - ox) % d < line
        squares = (~(rows[:, None] | cols[None, :])).to(torch.uint8)  # 1 inside the squares
        squares = TF.rotate(squares[None], float(angle))[0]  # nearest; corners filled with 0 (kept)
        top, left = (side - h) // 2, (side - w) // 2
        return 1 - squares[top:top + h, left:left + w]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return img
        return img * self.mask(*img.shape[-2:]).to(img.dtype)


class PILGaussianBlur(torch.nn.Module):
    """Pillow's Gaussian blur with a radius (sigma) uniform in ``sigma`` (the MoCo-v2 blur FISVL's code calls)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, img: Image.Image) -> Image.Image:
        lo, hi = self.sigma
        return img.filter(ImageFilter.GaussianBlur(radius=lo + (hi - lo) * float(torch.rand(()))))


class RandomRotateCrop(torch.nn.Module):
    """``v2.RandomRotation(degrees)`` (nearest, black corners) then ``v2.RandomCrop(size)`` then :class:`ToUint8Tensor`
    in one step: the same random draws in the same order and the same pixels as those three torchvision ops, without
    their per-call dispatch, and the crop is a view of the rotated array (one copy less). PIL image in, uint8
    [3, size, size] channel-last view out.

    Args:
        size: output side.
        degrees: (min, max) rotation angle, or None for no rotation (AMFMN).
    """

    def __init__(self, size: int, degrees: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.size, self.degrees = size, degrees

    def forward(self, img: Image.Image) -> torch.Tensor:
        if self.degrees is not None:
            angle = torch.empty(1).uniform_(self.degrees[0], self.degrees[1]).item()
            img = img.rotate(angle, resample=Image.Resampling.NEAREST, expand=False, fillcolor=(0, 0, 0))
        w, h = img.size
        s = self.size
        if h < s or w < s:
            raise ValueError(f"crop size {s} is larger than the image ({h} x {w})")
        top = int(torch.randint(0, h - s + 1, size=())) if h > s else 0
        left = int(torch.randint(0, w - s + 1, size=())) if w > s else 0
        return torch.from_numpy(np.array(img)[top:top + s, left:left + s]).permute(2, 0, 1)


def to_uint8_tensor(img: Image.Image | torch.Tensor) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W], a channel-last view (a tensor passes through)."""
    if isinstance(img, Image.Image):
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    return img


def normalize_uint8(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> contiguous float32 ``(x / 255 - mean) / std`` (mean, std: [3, 1, 1]), on the images'
    device. The ops of ``v2.ToDtype(float32, scale=True), v2.Normalize`` in their order: the same values, bit for
    bit, whether one image or a batch is normalised."""
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device).copy_(images)
    return out.mul_(1.0 / 255).sub_(mean.to(out.device)).div_(std.to(out.device))


class ToUint8Tensor(torch.nn.Module):
    """:func:`to_uint8_tensor` as a pipeline op."""

    def forward(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        return to_uint8_tensor(img)


class ToNormalizedTensor(torch.nn.Module):
    """RGB PIL image (or uint8 tensor [3, H, W]) -> float32 tensor [3, H, W], ``(x / 255 - mean) / std``.

    The ops of ``v2.ToImage, v2.ToDtype(float32, scale=True), v2.Normalize(mean, std)`` in the same order (so the
    same float32 values, bit for bit), fused into one allocation: about 2x faster. :func:`normalize_batch` runs the
    same ops on a whole uint8 batch.
    """

    def __init__(self, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def forward(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        """A PIL image or uint8 tensor [3, H, W] / [B, 3, H, W] -> float32 of the same shape."""
        return normalize_uint8(to_uint8_tensor(img), self.mean, self.std)


def normalize_batch(batch: dict) -> dict:
    """Finish a training batch whose ``images`` are uint8: pop ``image_norm`` ([2, 3]: mean, std) and normalise the
    images where they are (the training device). Batches without ``image_norm`` are returned as they are."""
    norm = batch.pop("image_norm", None)
    if norm is not None:
        mean, std = norm.to(torch.float32).view(2, 3, 1, 1)
        batch["images"] = normalize_uint8(batch["images"], mean, std)
    return batch


def _finish() -> list:
    # geometric and colour ops run on the PIL image (PIL's C kernels are much faster than torch's grid_sample on
    # small images); the uint8 tensor is made here, normalisation is the pipeline's last part
    return [ToUint8Tensor()]


class Pipeline:
    """An image pipeline in three parts: ``normalize(rest(prefix(img)))``.

    ``prefix`` holds the leading deterministic ops (resizes, centre crop) and is what ``data.images.PixelCache``
    applies once per image; ``rest`` runs per sample and ends in a uint8 tensor; ``normalize`` makes the float
    tensor, per sample or per batch (``norm`` travels with uint8 training batches, see :func:`normalize_batch`).
    Calling the pipeline on a PIL image runs all three, so cached, uncached and batch-normalised samples are the
    same tensor.

    Args:
        prefix: deterministic PIL -> PIL ops (empty: none).
        rest: PIL -> uint8 tensor [3, S, S] ops, random ones included.
        mean, std: per-channel normalisation of ``x / 255``.
        random: ``rest`` draws random numbers (the datasets seed it per item); a rest without random ops must also
            take a uint8 tensor [3, H, W] (the cache then skips the PIL image).
    """

    def __init__(self, prefix: list, rest: list, mean: tuple, std: tuple, random: bool = True) -> None:
        self.prefix = v2.Compose(prefix) if prefix else None
        self.rest = v2.Compose(rest)
        self.normalize = ToNormalizedTensor(mean, std)
        self.norm = torch.tensor([mean, std], dtype=torch.float32)  # [2, 3]
        self.random = random
        self.key = repr(self.prefix) if prefix else "decoded"  # identifies the cached pixels

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.rest(self.prefix(img) if self.prefix is not None else img))


PIPELINES = Registry("data.transform")


@PIPELINES.register("galr")
def galr(train: bool, s: int, rotate: bool = True) -> Pipeline:
    """GaLR / SWAN / KAMCL: train resize 278/256 S, rotation in [0, 90], random crop S; eval resize S x S."""
    if not train:
        return plain(train, s)
    big = round(278 * s / 256)
    rotate_crop = RandomRotateCrop(s, (0.0, 90.0) if rotate else None)  # = v2.RandomRotation, v2.RandomCrop
    return Pipeline([v2.Resize((big, big))], [rotate_crop], IMAGENET_MEAN, IMAGENET_STD)


@PIPELINES.register("amfmn")
def amfmn(train: bool, s: int) -> Pipeline:
    """AMFMN: ``galr`` without the rotation."""
    return galr(train, s, rotate=False)


@PIPELINES.register("plain")
def plain(train: bool, s: int) -> Pipeline:
    """Resize to S x S, ImageNet normalisation (train = eval)."""
    return Pipeline([v2.Resize((s, s))], _finish(), IMAGENET_MEAN, IMAGENET_STD, random=False)


@PIPELINES.register("clip")
def clip(train: bool, s: int) -> Pipeline:
    """CLIP preprocessing: bicubic resize of the short side to S, centre crop S (train = eval)."""
    return Pipeline([v2.Resize(s, interpolation=_BICUBIC), v2.CenterCrop(s)], _finish(), CLIP_MEAN, CLIP_STD,
                    random=False)


@PIPELINES.register("inception")
def inception(train: bool, s: int) -> Pipeline:
    """Bicubic resize to S x S, Inception normalisation (mean = std = 0.5: timm's tf_efficientnet_lite*, Inception,
    many TF ports); train = eval, so a locked image tower's features can be cached (``engine/feature_cache.py``)."""
    return Pipeline([v2.Resize((s, s), interpolation=_BICUBIC)], _finish(), INCEPTION_MEAN, INCEPTION_STD,
                    random=False)


@PIPELINES.register("pir")
def pir(train: bool, s: int, fisvl: bool = False) -> Pipeline:
    """PIR (and FISVL with ``fisvl``): see the module docstring; eval = bicubic resize to S x S."""
    if not train:
        return Pipeline([v2.Resize((s, s), interpolation=_BICUBIC)], _finish(), CLIP_MEAN, CLIP_STD, random=False)
    ops = [v2.RandomResizedCrop(s, scale=(0.5, 1.0), interpolation=_BICUBIC), v2.RandomHorizontalFlip()]
    if fisvl:
        ops.append(v2.RandomApply([PILGaussianBlur((0.1, 2.0))], p=0.5))
    ops += [RestrictedRandAugment(2, 7)] + _finish()
    if fisvl:  # on the 8-bit image, before normalisation (FISVL: on the [0, 1] tensor): erased pixels are black
        ops += [v2.RandomErasing(p=0.5, scale=(0.1, 0.2), value=0), GridMask(), v2.ToPureTensor()]
    return Pipeline([], ops, CLIP_MEAN, CLIP_STD)  # the first op is random: the cache keeps the decoded image


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
