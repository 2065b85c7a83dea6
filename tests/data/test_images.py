"""Image decoding (16-bit and gray files checked pixel by pixel) and the up-front check of every image a run reads,
also through train.py: exit 2, one line naming every bad file, nothing earlier overwritten."""
import logging

import numpy as np
import pytest
from PIL import Image

import train
from core.errors import DataError
from data.images import check_images, clear_cache, load_image
from tests.image_files import png_header_only, png_rgb16


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_16bit_tiff_scaled_by_its_own_range(tmp_path):
    # values 100..1100: (v - 100) * 255 / 1000 -> 0, 51, 102, 255 (by hand)
    Image.fromarray(np.array([[100, 300], [500, 1100]], np.uint16)).save(tmp_path / "a.tif")
    assert Image.open(tmp_path / "a.tif").mode == "I;16"
    img = load_image(tmp_path / "a.tif")
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert arr[..., 0].tolist() == [[0, 51], [102, 255]]
    assert (arr == arr[..., :1]).all()  # gray: three equal channels


def test_16bit_png_and_constant_image(tmp_path):
    # 0..4095 (12-bit data in 16-bit): 1000 * 255 / 4095 = 62.27 -> 62, 2000 * 255 / 4095 = 124.54 -> 125
    Image.fromarray(np.array([[0, 1000], [2000, 4095]], np.uint16)).save(tmp_path / "b.png")
    assert np.asarray(load_image(tmp_path / "b.png"))[..., 1].tolist() == [[0, 62], [125, 255]]
    Image.fromarray(np.full((3, 3), 3000, np.uint16)).save(tmp_path / "c.tif")
    assert np.asarray(load_image(tmp_path / "c.tif")).max() == 0  # no range: 0 by the documented rule


def test_float_raster_nan_and_inf_are_nodata_scaled_by_the_finite_range(tmp_path):
    # finite values 1..5: (v - 1) * 255 / 4 -> 1: 0, 3: 127.5 -> 128 (numpy rounds half to even), 5: 255; the
    # NaN / inf pixels are nodata: 0. (Before: the NaN made min and max NaN and the whole image black.)
    arr = np.array([[np.nan, 1.0], [3.0, np.inf], [-np.inf, 5.0]], np.float32)
    Image.fromarray(arr).save(tmp_path / "dem.tif")
    assert Image.open(tmp_path / "dem.tif").mode == "F"
    got = np.asarray(load_image(tmp_path / "dem.tif"))
    assert got[..., 0].tolist() == [[0, 0], [128, 0], [0, 255]] and (got == got[..., :1]).all()
    # one NaN in a 16 x 16 gradient: every other pixel is exactly the NaN-free scaling of its own range
    grad = np.arange(256, dtype=np.float32).reshape(16, 16) * 3.0 + 10
    grad[5, 7] = np.nan
    Image.fromarray(grad).save(tmp_path / "grad.tif")
    got = np.asarray(load_image(tmp_path / "grad.tif"))[..., 0].astype(int)
    finite = np.isfinite(grad)
    want = np.round((grad - np.nanmin(grad)) * 255.0 / (np.nanmax(grad) - np.nanmin(grad)))
    assert (got[finite] == want[finite]).all() and got[5, 7] == 0 and got.max() == 255


def test_gdal_nodata_value_is_nodata_too(tmp_path):
    from PIL import TiffImagePlugin

    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[42113] = "-9999"  # GDAL's nodata tag, as gdal_translate writes it
    ifd.tagtype[42113] = 2
    Image.fromarray(np.array([[-9999, 10], [20, 30]], np.float32)).save(tmp_path / "nd.tif", tiffinfo=ifd)
    # valid range 10..30: 10 -> 0, 20 -> 127.5 -> 128, 30 -> 255; -9999 -> 0 (not the minimum that squashes the rest)
    assert np.asarray(load_image(tmp_path / "nd.tif"))[..., 0].tolist() == [[0, 0], [128, 255]]


def test_all_nodata_image_is_a_one_line_error_and_constant_images_are_black(tmp_path):
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "void.tif")
    check_images([tmp_path / "void.tif"])  # the header is fine: the pixels tell
    with pytest.raises(DataError) as err:
        load_image(tmp_path / "void.tif")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"cannot decode image {tmp_path / 'void.tif'}: no valid pixel: every "
                                               "pixel of this F image is NaN or inf")
    from data.images import fill_cache

    with pytest.raises(DataError, match=r"1 of 1 image files cannot be read: in .*: void.tif \(no valid pixel"):
        fill_cache([([tmp_path / "void.tif"], None, "decoded")])
    # one value among NaN pixels, or one value everywhere: no range, every pixel 0 (the documented rule)
    Image.fromarray(np.array([[np.nan, 7.0], [7.0, np.inf]], np.float32)).save(tmp_path / "flat.tif")
    Image.fromarray(np.full((3, 3), 0.5, np.float32)).save(tmp_path / "flat2.tif")
    assert np.asarray(load_image(tmp_path / "flat.tif")).max() == 0
    assert np.asarray(load_image(tmp_path / "flat2.tif")).max() == 0


def test_images_over_the_pixel_limit_are_named_not_a_crash(tmp_path):
    """A full scene of 15000 x 12000 = 180 Mpx is over Pillow's limit (2 * 89478485 px): before, Pillow's
    DecompressionBombError (not an OSError) escaped the header check with a traceback."""
    png_header_only(tmp_path / "scene.png", 15000, 12000)
    Image.new("RGB", (8, 8)).save(tmp_path / "tile.png")
    with pytest.raises(DataError) as err:
        check_images([tmp_path / "tile.png", tmp_path / "scene.png"], "split(s) train")
    msg = str(err.value)
    assert "\n" not in msg and msg == (f"1 of 2 image files of split(s) train cannot be read: in {tmp_path}: "
                                       "scene.png (180 Mpx, over Pillow's limit of 179 Mpx; tile it or downscale "
                                       "it); fix the files or remove their lines from the *_filename.txt files")
    with pytest.raises(DataError, match=r"cannot decode image .*scene.png: 180 Mpx, over Pillow's limit"):
        load_image(tmp_path / "scene.png")


def test_16bit_rgb_is_refused_not_darkened(tmp_path):
    png_rgb16(tmp_path / "rgb16.png", np.array([[[0, 1000, 4095], [2000, 3000, 100]]], np.uint16))
    assert np.asarray(Image.open(tmp_path / "rgb16.png")).max() == 15  # what Pillow alone makes of 4095
    with pytest.raises(DataError, match="rgb16.png.*16 bits per sample"):
        load_image(tmp_path / "rgb16.png")
    with pytest.raises(DataError, match=r"rgb16.png \(RGB with 16 bits"):
        check_images([tmp_path / "rgb16.png"])


def test_gray_and_palette_png_pixels(tmp_path):
    Image.fromarray(np.array([[0, 17], [128, 255]], np.uint8)).save(tmp_path / "g.png")
    arr = np.asarray(load_image(tmp_path / "g.png"))
    assert arr.shape == (2, 2, 3) and arr[..., 2].tolist() == [[0, 17], [128, 255]] and (arr == arr[..., :1]).all()
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png")).tolist() == [[[10, 20, 30], [200, 150, 100]]]


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="gone.jpg"):
        load_image(tmp_path / "gone.jpg")


def test_check_images_reports_every_bad_file_at_once(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "junk.png").write_bytes(b"\x00" * 50)
    paths = [tmp_path / "good.png", tmp_path / "junk.png", tmp_path / "nofile.png", tmp_path / "good.png"]
    with pytest.raises(DataError) as err:
        check_images(paths, "split(s) train")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("2 of 3 image files of split(s) train cannot be read")
    assert "junk.png (" in msg and "nofile.png (no such file)" in msg and "good.png" not in msg


def test_check_images_cache_follows_size_and_mtime(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"garbage")
    with pytest.raises(DataError):
        check_images([p])
    Image.new("RGB", (8, 8)).save(p)  # fixed: another size and mtime, so the old verdict is not reused
    check_images([p])


# ----------------------------------------------------------------------------------------- through train.py
def _precomp(root, n_train=12, n_test=4):
    """A tiny precomp folder (5 captions per image, png images) under root/bad_precomp."""
    folder = root / "bad_precomp"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = "a red roof near green trees and two white boats on the dark water".split()
    for split, n, off in (("train", n_train, 0), ("test", n_test, 100)):
        names = [f"im{off + i}.png" for i in range(n)]
        for name in names:
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "images" / name)
        caps = [" ".join(rng.choice(words, 6)) for _ in range(5 * n)]
        (folder / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
        lines = names if split == "train" else [nm for nm in names for _ in range(5)]
        (folder / f"{split}_filename.txt").write_text("\n".join(lines) + "\n")
    return folder


def _train_args(root, out, *extra):
    sets = ["data.dataset=precomp", "data.name=bad", f"data.root={root}", "data.vocab=", "data.max_images=0",
            "data.batch_size=10", "train.epochs=1", *extra]
    return ["--config", "configs/tests/tiny_vse.yaml", "--output-dir", str(out)] + [a for s in sets for a in ("--set", s)]


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_train_reports_all_bad_images_before_training(caplog, tmp_path):
    folder = _precomp(tmp_path / "data")
    (folder / "images" / "im3.png").write_bytes(b"this is no png")  # a train image that does not open
    (folder / "images" / "im101.png").unlink()  # a test filename line naming no file
    out = tmp_path / "runs"
    earlier = out / "older_run" / "fold0"
    earlier.mkdir(parents=True)
    (earlier / "test.json").write_text('{"mR": 1.0}')
    assert train.main(_train_args(tmp_path / "data", out)) == 2
    errors = _errors(caplog)
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "2 of 16 image files" in errors[0] and "im3.png (" in errors[0] and "im101.png (no such file)" in errors[0]
    assert (earlier / "test.json").read_text() == '{"mR": 1.0}'  # an earlier run is untouched
    assert not _run_outputs(out / "tiny_vse" / "fold0")


def _run_outputs(run):
    """Files a run writes once it trains (log.txt and the fold's split lists may exist before the check)."""
    return [p for p in run.rglob("*") if p.is_file() and p.name != "log.txt" and p.parent.name != "splits"]


def test_train_reports_an_image_that_fails_to_decode(caplog, tmp_path):
    folder = _precomp(tmp_path / "data")
    good = (folder / "images" / "im100.png").read_bytes()
    (folder / "images" / "im100.png").write_bytes(good[: len(good) // 2])  # header fine, pixels cut off
    out = tmp_path / "runs"
    assert train.main(_train_args(tmp_path / "data", out)) == 2
    errors = _errors(caplog)
    assert len(errors) == 1 and "im100.png" in errors[0] and "1 of 16 image files" in errors[0]
    assert not _run_outputs(out / "tiny_vse" / "fold0")
