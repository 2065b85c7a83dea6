"""Train/serve parity: every path that turns an image file into model input decodes it as training does.

A 16-bit PNG with values over the whole 0..65535 range is the case that split them: training's reader
(``data.images``) scales it by its range (pixel mean about 127.5), ``Image.convert("RGB")`` clipped it (mean about
254.5, almost every pixel 255). Here the model input of training's evaluation dataset is compared, tensor for
tensor, with the input of ``engine.inference.Loaded``, ``scripts/build_index.py``, ``search.query.open_image`` (the
web app and ``scripts/search.py``), and the pictures drawn by ``scripts/search.py`` / ``scripts/visualize.py``.
"""
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import DataError
from data.datasets import ImageDataset
from data.images import clear_cache, load_image
from data.precomp import load_split
from data.transforms import build_transform
from engine.inference import Loaded
from scripts import build_index, visualize
from search.query import NotAnImage, open_image
from tests.image_files import png_header_only, png_rgb16

SIZE = 32


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture()
def folder(tmp_path):
    """A one-image precomp folder whose image is a 16-bit PNG (and an 8-bit one for comparison)."""
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (40, 48), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "images" / "deep.png")
    assert Image.open(tmp_path / "images" / "deep.png").mode == "I;16"
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / "rgb.png")
    (tmp_path / "test_caps.txt").write_text("\n".join(["a caption"] * 10) + "\n")
    (tmp_path / "test_filename.txt").write_text("\n".join(["deep.png"] * 5 + ["rgb.png"] * 5) + "\n")
    return tmp_path


class Recorder(torch.nn.Module):
    """A stub model: remembers the images it is given; the embedding is their mean per channel."""

    pairwise_similarity = False

    def __init__(self):
        super().__init__()
        self.seen = []

    def encode_image(self, batch):
        self.seen.append(batch["images"].clone())
        return batch["images"].mean(dim=(2, 3))


def _training_inputs(folder, transform, cache):
    split = load_split(folder, "test", folder / "images")
    data = ImageDataset(split, transform, [0, 0], cache=cache)
    return torch.stack([data[i]["image"] for i in range(2)])


def test_every_path_feeds_the_model_what_training_fed_it(folder):
    transform = build_transform("plain", False, SIZE)
    train_x = _training_inputs(folder, transform, cache=False)
    assert torch.equal(train_x, _training_inputs(folder, transform, cache=True))
    paths = [folder / "images" / "deep.png", folder / "images" / "rgb.png"]
    deep = np.asarray(Image.open(paths[0]), dtype=np.float64)
    pixels = np.asarray(load_image(paths[0]))
    want = np.round((deep - deep.min()) * 255.0 / (deep.max() - deep.min()))  # the range scaling, by hand
    assert (pixels[..., 1] == want).all()
    assert np.asarray(Image.open(paths[0]).convert("RGB")).mean() > 250  # what serving made of it before

    # engine.inference.Loaded, from files and from opened images
    model = Recorder()
    loaded = Loaded(model, SimpleNamespace(), SimpleNamespace(), transform, "stub", {}, torch.device("cpu"))
    loaded.encode_images([Image.open(p) for p in paths])
    assert torch.equal(model.seen[0], train_x)
    loaded.encode_files(paths)
    assert torch.equal(model.seen[1], train_x)

    # scripts/build_index.py: its dataset and shard encoder
    images = build_index.FolderImages(folder / "images", ["deep.png", "rgb.png"], transform)
    assert torch.equal(torch.stack([images[i][0] for i in range(2)]), train_x)
    args = Namespace(batch_size=2, workers=0)
    bar = SimpleNamespace(update=lambda n: None)
    emb = build_index.encode_shard(model, images, args, torch.device("cpu"), bar)
    assert torch.equal(model.seen[-1], train_x) and np.allclose(emb, train_x.mean(dim=(2, 3)).numpy())

    # search.query (scripts/search.py --image, the web app's uploads and "more like this" pictures)
    assert torch.equal(torch.stack([transform(open_image(p, p.name)) for p in paths]), train_x)
    with open(paths[0], "rb") as f:
        assert torch.equal(transform(open_image(f, "upload.png")), train_x[0])

    # the pictures drawn for people: the same 8-bit pixels
    assert np.array_equal(np.asarray(visualize._open(paths[0])), pixels)


def test_a_refused_image_is_refused_by_the_serving_paths_too(folder, tmp_path):
    """16-bit RGB (which Pillow reads as its top 8 bits) is refused in training: the query path says why."""
    png_rgb16(tmp_path / "rgb16.png", np.array([[[0, 1000, 4095], [2000, 3000, 100]]], np.uint16))
    with pytest.raises(NotAnImage, match=r"^rgb16.png cannot be used: RGB with 16 bits per sample"):
        open_image(tmp_path / "rgb16.png", "rgb16.png")
    model = Recorder()
    loaded = Loaded(model, SimpleNamespace(), SimpleNamespace(), build_transform("plain", False, SIZE), "stub", {},
                    torch.device("cpu"))
    with pytest.raises(DataError, match="rgb16.png: RGB with 16 bits per sample"):
        loaded.encode_files([tmp_path / "rgb16.png"])
    assert model.seen == []


def test_build_index_names_every_bad_file_in_one_line(folder, tmp_path, capsys):
    """Header problems (a non-image, an image over Pillow's pixel limit) are found before the model is loaded; a
    file whose pixels fail (all NaN) is named with the others of its chunk."""
    root = tmp_path / "scenes"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "ok.png")
    (root / "junk.png").write_bytes(b"not a png")
    png_header_only(root / "scene.png", 15000, 12000)  # a 180 Mpx satellite scene
    out = tmp_path / "index"
    assert build_index.main(["--resume", str(tmp_path / "no_checkpoint.pth"), "--images", str(root), "--out",
                             str(out), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: 2 of 3 image files of --images {root} cannot be read: ")
    assert "junk.png (cannot identify image file" in err
    assert "scene.png (180 Mpx, over Pillow's limit of 179 Mpx; tile it or downscale it)" in err
    assert err.rstrip().endswith("replace, re-export or remove them") and not out.exists()

    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(root / "void.tif")
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(root / "void2.tif")
    images = build_index.FolderImages(root, ["ok.png", "void.tif", "void2.tif"], build_transform("plain", False, 8))
    with pytest.raises(DataError) as e:
        build_index.encode_shard(Recorder(), images, Namespace(batch_size=1, workers=0), torch.device("cpu"),
                                 SimpleNamespace(update=lambda n: None))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"2 of 3 image files of --images {root} cannot be read: in {root}: "
                                              "void.tif (no valid pixel")
    assert "void2.tif (no valid pixel" in msg
