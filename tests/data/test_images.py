"""Image decoding (16-bit and gray files checked pixel by pixel) and the up-front check of every image a run reads,
also through train.py: exit 2, one line naming every bad file, nothing earlier overwritten."""
import logging

import numpy as np
import pytest
from PIL import Image

import train
from core.errors import DataError
from data.images import check_images, clear_cache, load_image


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


def _png_rgb16(path, arr):
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_rgb_is_refused_not_darkened(tmp_path):
    _png_rgb16(tmp_path / "rgb16.png", np.array([[[0, 1000, 4095], [2000, 3000, 100]]], np.uint16))
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
