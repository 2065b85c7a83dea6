"""Image pipelines: output shapes/dtypes, normalisation constants, eval determinism, GridMask, restricted RandAugment."""
import numpy as np
import pytest
import torch
from PIL import Image

from torchvision.transforms import v2

from data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, PIPELINES, GridMask, \
    RestrictedRandAugment, ToNormalizedTensor, build_transform


@pytest.fixture(scope="module")
def img():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["galr", "amfmn", "pir", "fisvl", "clip", "plain"])
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_and_type(img, name, train):
    torch.manual_seed(0)
    x = build_transform(name, train, 48)(img)
    assert type(x) is torch.Tensor and x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name,mean,std", [("galr", IMAGENET_MEAN, IMAGENET_STD), ("plain", IMAGENET_MEAN, IMAGENET_STD),
                                           ("pir", CLIP_MEAN, CLIP_STD), ("clip", CLIP_MEAN, CLIP_STD)])
def test_eval_normalisation_constants(name, mean, std):
    flat = Image.new("RGB", (30, 20), (255, 0, 128))
    x = build_transform(name, False, 16)(flat)
    want = [(v - m) / s for v, m, s in zip((1.0, 0.0, 128 / 255), mean, std)]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(want), atol=1e-4)


@pytest.mark.parametrize("name", ["galr", "pir", "fisvl", "clip"])
def test_eval_is_deterministic_and_train_is_random(img, name):
    ev = build_transform(name, False, 32)
    assert torch.equal(ev(img), ev(img))
    if name != "clip":  # clip: train = eval
        tr = build_transform(name, True, 32)
        torch.manual_seed(1)
        a = tr(img)
        torch.manual_seed(1)
        assert torch.equal(a, tr(img))  # the global torch RNG drives every random op
        assert not all(torch.equal(a, tr(img)) for _ in range(3))


def test_galr_train_rotates_but_amfmn_does_not():
    torch.manual_seed(0)
    # a bright vertical bar: rotation moves it; amfmn only crops (the bar stays vertical)
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, 30:34] = 255
    bar = Image.fromarray(arr)
    amf = build_transform("amfmn", True, 64)
    for _ in range(5):
        x = amf(bar)[0]
        assert (x.max(dim=0).values - x.min(dim=0).values).abs().max() < 1e-5  # columns are constant
    galr = build_transform("galr", True, 64)
    assert any((g := galr(bar)[0]).max(dim=0).values.sub(g.min(dim=0).values).abs().max() > 0.5 for _ in range(5))


def test_gridmask_zeroes_a_grid():
    # period 28 at 224 px: line ceil(0.4 * 28) = 12, squares of side 16; a 224 px window holds 8 whole periods
    # in each direction, so whatever the offsets, (16 / 28)^2 of the pixels are zeroed, the same in every channel
    x = torch.full((3, 224, 224), 200, dtype=torch.uint8)
    for seed in range(3):
        torch.manual_seed(seed)
        out = GridMask(p=1.0, d_min=28, d_max=28, rotate=1)(x)
        assert out.dtype == torch.uint8 and set(out.unique().tolist()) == {0, 200}
        assert (out[0] == 0).float().mean().item() == pytest.approx((16 / 28) ** 2, abs=1e-6)
        assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
        rows = (out[0] == 0).any(dim=1)  # without rotation, 8 bands of 16 rows hold the squares
        assert int(rows.sum()) == 8 * 16
    torch.manual_seed(0)
    rotated = [GridMask(p=1.0, d_min=28, d_max=28)(x)[0] == 0 for _ in range(4)]
    assert any(int(r.any(dim=1).sum()) > 8 * 16 for r in rotated)  # a turned grid leaves no row free of squares
    for r in rotated:  # and a rotation keeps the zeroed share near (16 / 28)^2
        assert r.float().mean().item() == pytest.approx((16 / 28) ** 2, abs=0.04)
    assert torch.equal(GridMask(p=0.0)(x), x)


def test_restricted_randaugment_ops_keep_dtype_and_shape():
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    aug = RestrictedRandAugment(2, 7, prob=1.0)
    for op in aug.OPS:
        out = aug._apply(img, op)
        assert out.dtype == torch.uint8 and out.shape == img.shape
    assert torch.equal(aug._apply(img, "identity"), img)
    assert not torch.equal(aug._apply(img, "rotate"), img)


def test_unknown_transform():
    with pytest.raises(ValueError, match="unknown data.transform 'resnet'"):
        build_transform("resnet", True, 32)


def test_pipelines_are_registered():
    assert PIPELINES.names() == ["amfmn", "clip", "fisvl", "galr", "inception", "pir", "plain"]
    # which pipelines draw random numbers after their cached prefix (the datasets seed only those)
    assert {n for n in PIPELINES.names() if build_transform(n, True, 32).random} == {"amfmn", "fisvl", "galr", "pir"}
    assert not any(build_transform(n, False, 32).random for n in PIPELINES.names())


@pytest.mark.parametrize("mean,std", [(IMAGENET_MEAN, IMAGENET_STD), (CLIP_MEAN, CLIP_STD)])
def test_fused_tensor_conversion_is_torchvisions_bit_for_bit(img, mean, std):
    ref = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()])
    fused = ToNormalizedTensor(mean, std)
    assert torch.equal(fused(img), ref(img))
    assert torch.equal(fused(torch.from_numpy(np.array(img)).permute(2, 0, 1)), ref(img))  # uint8 tensor input


def test_randaugment_geometric_ops_fill_grey():
    # BLIP's RandomAugment (PIR, FISVL) gives the pixels a rotation uncovers the value 128
    white = torch.full((3, 64, 64), 255, dtype=torch.uint8)
    out = RestrictedRandAugment(2, 7)._apply(white, "rotate")
    assert out[:, 0, 0].tolist() == [128, 128, 128] and out[:, 32, 32].tolist() == [255, 255, 255]


def test_fisvl_erasing_and_gridmask_paint_black_before_normalisation():
    # FISVL erases on the [0, 1] tensor and then normalises: an erased pixel of a white image is (0 - mean) / std
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    black = torch.tensor([(0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    pipe = build_transform("fisvl", True, 64)
    found = 0
    for seed in range(20):
        torch.manual_seed(seed)
        x = pipe(white)
        hit = (x - black.view(3, 1, 1)).abs().amax(0) < 1e-6
        found += bool(hit.any())
    assert found >= 10  # P(erasing or GridMask) = 1 - 0.5 * 0.6 = 0.7 per image


@pytest.mark.parametrize("degrees", [(0.0, 90.0), None])
def test_rotate_crop_is_torchvisions_rotation_then_crop(degrees):
    # the fused GaLR / AMFMN step draws the same numbers and gives the same pixels as torchvision's own ops
    from data.transforms import RandomRotateCrop
    src = Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 70, 3), dtype=np.uint8))
    ref = v2.Compose(([v2.RandomRotation(degrees=degrees)] if degrees else []) + [v2.RandomCrop(64), v2.PILToTensor()])
    fused = RandomRotateCrop(64, degrees)
    for seed in range(5):
        torch.manual_seed(seed)
        want = ref(src)
        torch.manual_seed(seed)
        got = fused(src)
        assert got.dtype == torch.uint8 and torch.equal(got, want), seed
