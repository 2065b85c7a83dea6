"""scripts/prepare_ucm.py on a fake UC Merced tree: the mapping (against ../shared/data/ucm/ucm_mapping.csv when
present), byte copies, missing sources named up front, a different existing file never overwritten."""
import csv

import pytest

from data.precomp import NONECLASS
from data.presets import UCM_CLASSES, ucm_scene, ucm_source
from scripts import prepare_ucm


@pytest.fixture()
def fake_tree(tmp_path):
    """UCMerced_LandUse/Images/<class>/<class>NN.tif, each file's bytes naming it."""
    images = tmp_path / "UCMerced_LandUse" / "Images"
    for cls in UCM_CLASSES:
        (images / cls).mkdir(parents=True)
        for k in range(100):
            (images / cls / f"{cls}{k:02d}.tif").write_bytes(f"{cls}{k:02d}\0".encode() * 3)
    return images


def test_mapping_by_hand():
    assert ucm_source(1) == ("agricultural", "agricultural01.tif")
    assert ucm_source(99) == ("agricultural", "agricultural99.tif")
    assert ucm_source(100) == ("agricultural", "agricultural00.tif")
    assert ucm_source(101) == ("airplane", "airplane00.tif")
    assert ucm_source(2100) == ("tenniscourt", "tenniscourt99.tif")
    with pytest.raises(ValueError):
        ucm_source(2101)


def test_mapping_matches_the_shared_list(shared_data):
    path = shared_data / "ucm" / "ucm_mapping.csv"
    if not path.is_file():
        pytest.skip("../shared/data/ucm/ucm_mapping.csv is not available")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2100
    for row in rows:
        n = int(row["ucm_captions_file"].removesuffix(".tif"))
        assert ucm_source(n) == (row["class"], row["ucmerced_original_file"]), row
        assert ucm_scene(row["ucm_captions_file"]) == ucm_scene(f"{n}.jpg") == row["class"], row  # the UCM scenes


def test_ucm_scene_of_other_names_is_noneclass():
    assert [ucm_scene(n) for n in ("0.jpg", "2101.tif", "airport_1.jpg", "x.jpg")] == [NONECLASS] * 4
    assert (ucm_scene("100.tif"), ucm_scene("101.tif"), ucm_scene("2100.tif")) == ("agricultural", "airplane",
                                                                                   "tenniscourt")


def test_copies_every_image(fake_tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare_ucm.main(["--source", str(fake_tree.parent), "--out", str(out)]) == 0  # the parent works too
    assert len(list(out.iterdir())) == 2100
    for n in (1, 100, 101, 777, 2100):
        cls, name = ucm_source(n)
        assert (out / f"{n}.tif").read_bytes() == (fake_tree / cls / name).read_bytes()
    assert "2100 images copied" in capsys.readouterr().out
    assert prepare_ucm.main(["--source", str(fake_tree), "--out", str(out)]) == 0  # again: nothing to do
    assert "0 images copied, 2100 identical" in capsys.readouterr().out


def test_missing_sources_are_named_and_nothing_is_copied(fake_tree, tmp_path, capsys):
    (fake_tree / "beach" / "beach07.tif").unlink()
    (fake_tree / "agricultural" / "agricultural00.tif").unlink()
    out = tmp_path / "out"
    assert prepare_ucm.main(["--source", str(fake_tree), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 of 2100" in err and "agricultural/agricultural00.tif" in err and "beach/beach07.tif" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_different_existing_file_is_not_overwritten(fake_tree, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "5.tif").write_bytes(b"my own file")
    (out / "6.tif").write_bytes((fake_tree / "agricultural" / "agricultural06.tif").read_bytes())  # identical: fine
    assert prepare_ucm.main(["--source", str(fake_tree), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "5.tif" in err and "6.tif" not in err.split("overwritten:")[1]
    assert (out / "5.tif").read_bytes() == b"my own file" and sorted(p.name for p in out.iterdir()) == ["5.tif", "6.tif"]
