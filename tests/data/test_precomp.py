"""The *_precomp reader: exact counts of the real caption sets, both layouts, clear errors, scenes."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.datasets import load_image
from data.precomp import NONECLASS, load_split, read_lines, scene_of

# (dataset, split, images, captions, layout of *_filename.txt)
REAL = [
    ("rsicd", "train", 9828, 49140, "image"), ("rsicd", "test", 1093, 5465, "caption"),
    ("rsitmd", "train", 4291, 21455, "image"), ("rsitmd", "test", 452, 2260, "caption"),
    ("ucm", "train", 1890, 9450, "image"), ("ucm", "test", 210, 1050, "caption"),
    ("sydney", "train", 497, 2485, "image"), ("sydney", "test", 58, 290, "caption"),
    ("nwpu", "test", 3150, 15750, "image"),
]


def _placeholders(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).touch()
    return folder


@pytest.mark.parametrize("name,split,n_img,n_cap,layout", REAL)
def test_real_caption_sets_load_with_exact_counts(shared_data, tmp_path, name, split, n_img, n_cap, layout):
    folder = shared_data / "precomp" / f"{name}_precomp"
    names = read_lines(folder / f"{split}_filename.txt")
    assert len(names) == (n_img if layout == "image" else n_cap)
    images = _placeholders(tmp_path / "images", set(names))
    sp = load_split(folder, split, images, check_images=True)
    assert (sp.n_images, sp.n_captions) == (n_img, n_cap)
    assert all(len(g) == 5 for g in sp.img2txt)
    # the explicit map is the upstream "caption j belongs to image j // 5" on every real set
    assert sp.txt2img == [j // 5 for j in range(n_cap)]
    assert sp.img2txt[7] == [35, 36, 37, 38, 39]
    assert sp.image_path(0) == images / sp.filenames[0]


def test_rsitmd_empty_captions_are_kept(shared_data):
    sp = load_split(shared_data / "precomp" / "rsitmd_precomp", "train", check_images=False)
    empty = [j for j, c in enumerate(sp.captions) if c == ""]
    assert len(empty) == 20 and sp.meta["empty_captions"] == 20
    assert 9600 < empty[0] < 9700  # "around line 9631" (METHODS.md A1)


def test_scene_counts_of_real_sets(shared_data):
    sp = load_split(shared_data / "precomp" / "rsicd_precomp", "train", check_images=False)
    assert sp.scenes.count(NONECLASS) == 855  # numeric names (METHODS.md A1)
    assert len(set(sp.scenes)) == 31  # 30 scenes + noneclass
    test = load_split(shared_data / "precomp" / "rsicd_precomp", "test", check_images=False)
    assert test.scenes.count(NONECLASS) == 66
    rsitmd = load_split(shared_data / "precomp" / "rsitmd_precomp", "train", check_images=False)
    assert len(set(rsitmd.scenes)) == 33 and NONECLASS not in rsitmd.scenes


@pytest.mark.parametrize("name,scene", [("airport_348.jpg", "airport"), ("00017.jpg", NONECLASS), ("1.tif", NONECLASS),
                                        ("boat_0.tif", "boat"), ("12_3.png", NONECLASS), ("a_b_c.png", "a")])
def test_scene_of(name, scene):
    assert scene_of(name) == scene


def _write(folder: Path, split: str, caps, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_caps.txt").write_text("".join(c + "\n" for c in caps))
    (folder / f"{split}_filename.txt").write_text("".join(n + "\n" for n in names))


def test_both_layouts_give_the_same_mapping(tmp_path):
    caps = [f"caption {j}" for j in range(15)]
    _write(tmp_path / "a", "test", caps, ["x_1.png", "y_2.png", "z_3.png"])  # one line per image
    _write(tmp_path / "b", "test", caps, [n for n in ["x_1.png", "y_2.png", "z_3.png"] for _ in range(5)])
    a = load_split(tmp_path / "a", "test", check_images=False)
    b = load_split(tmp_path / "b", "test", check_images=False)
    assert a.img2txt == b.img2txt == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    assert a.filenames == b.filenames and a.scenes == ["x", "y", "z"]


def test_uneven_caption_groups_are_explicit(tmp_path):
    _write(tmp_path, "test", ["a", "b", "c", "d", "e", "f"], ["p.png", "p.png", "q.png", "r.png", "r.png", "r.png"])
    sp = load_split(tmp_path, "test", check_images=False)
    assert sp.img2txt == [[0, 1], [2], [3, 4, 5]] and sp.txt2img == [0, 0, 1, 2, 2, 2]
    sub = sp.subset([2, 0], "x")
    assert sub.filenames == ["r.png", "p.png"] and sub.captions == ["d", "e", "f", "a", "b"]
    assert sub.img2txt == [[0, 1, 2], [3, 4]] and sub.txt2img == [0, 0, 0, 1, 1]


def test_count_mismatch_error_names_both_files(tmp_path):
    _write(tmp_path, "test", [f"c{j}" for j in range(11)], [f"{i}.png" for i in range(5)])
    with pytest.raises(ValueError, match=r"test_filename.txt has 5 lines, test_caps.txt 11"):
        load_split(tmp_path, "test", check_images=False)


def test_repeated_name_after_others_is_an_error(tmp_path):
    _write(tmp_path, "test", ["a", "b", "c"], ["p.png", "q.png", "p.png"])
    with pytest.raises(ValueError, match="'p.png' appears again at line 3"):
        load_split(tmp_path, "test", check_images=False)


def test_missing_images_listed_up_front(tmp_path):
    names = [f"s_{i}.png" for i in range(12)]
    _write(tmp_path, "train", [f"c{j}" for j in range(60)], names)
    _placeholders(tmp_path / "images", names[:4])
    with pytest.raises(FileNotFoundError) as e:
        load_split(tmp_path, "train")
    msg = str(e.value)
    assert "8 of 12 images" in msg and "s_4.png, s_5.png, s_6.png, s_7.png, s_8.png" in msg and "(3 more)" in msg
    assert "s_9.png" not in msg


def test_missing_text_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="val_caps.txt not found"):
        load_split(tmp_path, "val", check_images=False)


def test_extension_appended_and_images_read_as_rgb(tmp_path):
    _write(tmp_path, "test", ["a", "b"], ["g_1", "g_1"])
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((5, 6), 200, np.uint8), "L").save(tmp_path / "images" / "g_1.tif")
    sp = load_split(tmp_path, "test", ext=".tif")
    img = load_image(sp.image_path(0))
    assert sp.filenames == ["g_1.tif"] and img.mode == "RGB" and img.size == (6, 5)


def test_real_mini_images_open(shared_data):
    folder = shared_data / "real_mini_precomp"
    for split, n in (("train", 20), ("test", 9)):
        sp = load_split(folder, split)
        assert sp.n_images == n and sp.n_captions == 5 * n
        exts = {Path(f).suffix for f in sp.filenames}
        assert exts <= {".jpg", ".tif"}
    sp = load_split(folder, "train")
    assert all(load_image(sp.image_path(i)).mode == "RGB" for i in range(sp.n_images))
