"""Bad files through the entry points (issue 14.2, 14.3, 14.7, 14.12, 14.16): exit code 2, one line that names the
culprit and what to do, nothing earlier lost; plus the shared helpers behind those messages."""
import logging
from pathlib import Path

import pytest
import torch

import test as test_entry
import train
from core.config import load_config
from core.errors import DataError, MissingFileError
from core.files import RequiredFile, check_required_files, missing_files
from engine.preflight import run_required_files

TINY_VSE = "configs/tests/tiny_vse.yaml"


def error_text(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def write_precomp(root: Path, name: str, train_caps: bytes, n_train: int, test_caps: bytes = b"", n_test: int = 0):
    """A precomp folder ``root/<name>_precomp`` with one filename line per image (no image files)."""
    folder = root / f"{name}_precomp"
    folder.mkdir(parents=True)
    (folder / "train_caps.txt").write_bytes(train_caps)
    (folder / "train_filename.txt").write_text("".join(f"s_{i}.png\n" for i in range(n_train)))
    (folder / "test_caps.txt").write_bytes(test_caps)
    (folder / "test_filename.txt").write_text("".join(f"t_{i}.png\n" for i in range(n_test)))
    return folder


def precomp_args(root: Path, name: str, out: Path) -> list[str]:
    return ["--config", TINY_VSE, "--output-dir", str(out), "--set", "data.dataset=precomp",
            "--set", f"data.root={root}", "--set", f"data.name={name}"]


@pytest.fixture
def out_dir(tmp_path):
    """An output folder that already holds something a failed run must leave alone."""
    out = tmp_path / "runs"
    (out / "tiny_vse" / "fold0").mkdir(parents=True)
    (out / "tiny_vse" / "fold0" / "notes.txt").write_text("keep me")
    return out


def assert_untouched(out: Path):
    assert (out / "tiny_vse" / "fold0" / "notes.txt").read_text() == "keep me"
    assert not list(out.rglob("*.pth")) and not list(out.rglob("config.yaml"))


# ------------------------------------------------------------------------------------------- 14.2 encoding
def test_non_utf8_caption_names_file_and_line(caplog, tmp_path, out_dir):
    caps = b"".join(b"a plane on the runway\n" for _ in range(7)) + b"a caf\xe9 near the road\n" + b"two ships\n" * 2
    folder = write_precomp(tmp_path, "bad", caps, 2, b"one boat\n" * 5, 1)
    assert train.main(precomp_args(tmp_path, "bad", out_dir)) == 2
    lines = error_lines(caplog)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"{folder / 'train_caps.txt'}, line 8: byte 0xe9 is not valid utf-8" in lines[0]
    assert "data.encoding" in lines[0]
    assert_untouched(out_dir)
    # an explicit encoding decodes the byte: the run gets past the captions (and stops at the missing images)
    caplog.clear()
    assert train.main(precomp_args(tmp_path, "bad", out_dir) + ["--set", "data.encoding=latin-1"]) == 2
    assert "not valid" not in error_text(caplog) and "s_0.png" in error_text(caplog)
    caplog.clear()
    assert train.main(precomp_args(tmp_path, "bad", out_dir) + ["--set", "data.encoding=klingon"]) == 2
    assert "data.encoding: unknown encoding 'klingon'" in error_text(caplog)


def test_read_lines_is_strict_and_honours_the_encoding(tmp_path):
    from data.precomp import read_lines

    path = tmp_path / "c.txt"
    path.write_bytes("first\nsecond caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"c.txt, line 2: byte 0xe9"):
        read_lines(path)
    assert read_lines(path, "latin-1") == ["first", "second caf\u00e9"]
    path.write_bytes("caf\u00e9\n".encode("utf-8"))
    assert read_lines(path) == ["caf\u00e9"]


# ------------------------------------------------------------------------------------------- 14.12 empty data
def test_empty_caption_files_are_named_not_batch_size(caplog, tmp_path, out_dir):
    folder = write_precomp(tmp_path, "empty", b"", 0, b"", 0)
    assert train.main(precomp_args(tmp_path, "empty", out_dir)) == 2
    msg = error_text(caplog)
    assert f"{folder / 'train_caps.txt'} is empty (no caption lines;" in msg and "train_filename.txt is empty too" in msg
    assert "batch_size" not in msg
    assert_untouched(out_dir)
    caplog.clear()  # blank lines only count as empty too; the test split is checked the same way
    write_precomp(tmp_path, "blank", b"\n\n  \n", 3, b"", 0)
    assert train.main(precomp_args(tmp_path, "blank", out_dir)) == 2
    assert "train_caps.txt holds no caption (3 line(s), all blank; train_filename.txt lists 3 name(s))" in \
        error_text(caplog)


# ------------------------------------------------------------------------------------------- 14.7 missing files
def fisvl_args(tmp_path: Path) -> list[str]:
    """The full-size FISVL config with its pretrained paths (same names) and data root in places that do not exist."""
    pre = tmp_path / "pretrained"
    return ["--config", "rsitmd_fisvl.yaml", "--output-dir", str(tmp_path / "runs"), "--set", "train.device=cpu",
            "--set", f"data.root={tmp_path / 'no_data'}", "--set", f"data.tokenizer_path={pre}/bert-base-uncased",
            "--set", f"model.params.swin_weights={pre}/swin_tiny_patch4_window7_224_22k.pth",
            "--set", f"model.params.bert_path={pre}/bert-base-uncased",
            "--set", f"model.params.resnet_weights={pre}/aid_28-rsp-resnet-50-ckpt.pth"]


def test_full_fisvl_reports_every_missing_file_before_the_data(caplog, tmp_path):
    # data.root does not exist either: the files message must come first, before any data is looked at
    assert train.main(fisvl_args(tmp_path)) == 2
    lines = error_lines(caplog)
    assert len(lines) == 1
    msg = lines[0]
    pre = tmp_path / "pretrained"
    for culprit in (f"{pre}/bert-base-uncased/vocab.txt or tokenizer.json (data.tokenizer_path",
                    f"{pre}/swin_tiny_patch4_window7_224_22k.pth (model.params.swin_weights",
                    f"{pre}/bert-base-uncased/config.json (model.params.bert_path",
                    f"{pre}/bert-base-uncased/model.safetensors or pytorch_model.bin (model.params.bert_path",
                    f"{pre}/aid_28-rsp-resnet-50-ckpt.pth (model.params.resnet_weights"):
        assert culprit in msg
    assert "missing files" in msg and "model.pretrained=false and data.tokenizer=vocab" in msg
    assert "dataset folder" not in msg
    assert not (tmp_path / "runs").exists()  # checked before any run folder is made


def test_random_init_needs_no_pretrained_file_and_names_the_tokenizer(caplog, tmp_path):
    args = fisvl_args(tmp_path) + ["--set", "model.pretrained=false"]
    assert train.main(args) == 2
    msg = error_text(caplog)
    assert "bert-base-uncased/vocab.txt or tokenizer.json (data.tokenizer_path" in msg
    assert "swin" not in msg and "config.json" not in msg and "resnet" not in msg
    assert "set data.tokenizer=vocab" in msg
    cfg = load_config("configs/rsitmd_fisvl.yaml", ["model.pretrained=false", "data.tokenizer=vocab"])
    assert run_required_files(cfg) == []
    caplog.clear()  # and with data.tokenizer=vocab the check passes: the next error is about the data, not a file
    assert train.main(args + ["--set", "data.tokenizer=vocab"]) == 2
    assert "dataset folder not found" in error_text(caplog)


@pytest.mark.slow
def test_random_init_fisvl_trains_without_any_pretrained_file(tmp_path):
    nowhere = tmp_path / "nothing_here"
    args = ["--config", "configs/tests/tiny_fisvl.yaml", "--output-dir", str(tmp_path),
            "--set", f"model.params.swin_weights={nowhere}/swin.pth", "--set", f"model.params.bert_path={nowhere}",
            "--set", f"model.params.resnet_weights={nowhere}/r.pth", "--set", "train.epochs=1",
            "--set", "data.max_images=40", "--set", "data.batch_size=20"]
    assert train.main(args) == 0
    assert (tmp_path / "tiny_fisvl" / "fold0" / "test.json").is_file() and not nowhere.exists()


def test_test_py_names_a_missing_checkpoint_tokenizer(caplog, tiny_vse_run, tmp_path):
    ckpt = torch.load(tiny_vse_run / "best.pth", map_location="cpu", weights_only=True)
    ckpt["tokenizer"] = {"kind": "bert", "path": str(tmp_path / "gone_bert"), "max_tokens": 47}
    torch.save(ckpt, tmp_path / "bert_tok.pth")
    assert test_entry.main(["--resume", str(tmp_path / "bert_tok.pth"), "--json", str(tmp_path / "m.json")]) == 2
    assert "gone_bert" in error_text(caplog) and not (tmp_path / "m.json").exists()


def test_test_py_zero_shot_checks_its_weights_before_the_data(caplog, tmp_path):
    args = ["--config", "configs/tests/tiny_clip_zeroshot.yaml", "--set", "model.pretrained=true",
            "--set", f"model.params.weights={tmp_path / 'nope.pt'}", "--set", f"data.root={tmp_path / 'no_data'}"]
    assert test_entry.main(args) == 2
    msg = error_text(caplog)
    assert f"{tmp_path / 'nope.pt'} (model.params.weights: CLIP" in msg and "model.pretrained=false" in msg
    assert "dataset folder" not in msg


def test_required_file_helpers(tmp_path):
    (tmp_path / "b.bin").write_bytes(b"x")
    a = RequiredFile("model.params.w", str(tmp_path / "a.safetensors"), "weights", (str(tmp_path / "b.bin"),))
    gone = RequiredFile("data.vocab", str(tmp_path / "v.json"), "vocabulary")
    unset = RequiredFile("model.params.weights", "", "CLIP weights")
    assert a.present() and not gone.present() and not unset.present()
    assert missing_files([a, gone, unset, gone]) == [gone, unset]
    with pytest.raises(MissingFileError) as e:
        check_required_files([a, gone, unset], "missing file", "fix it")
    assert str(e.value) == (f"missing files: {tmp_path / 'v.json'} (data.vocab: vocabulary); "
                            "(model.params.weights not set) (CLIP weights); fix it")
    check_required_files([a])  # nothing missing: no error


def test_every_method_declares_nothing_under_random_init():
    from models.registry import list_models, model_required_files

    names = list_models()
    for name in names:
        cfg = load_config(f"configs/tests/tiny_{name}.yaml", ["model.pretrained=false"])
        assert model_required_files(cfg.model) == [], name
    needs = {n: {f.key for f in model_required_files(load_config(f"configs/tests/tiny_{n}.yaml",
                                                                  ["model.pretrained=true"]).model)} for n in names}
    assert needs["fisvl"] == needs["pir"] == {"model.params.swin_weights", "model.params.bert_path",
                                              "model.params.resnet_weights"}
    assert needs["clip_zeroshot"] == {"model.params.weights"}


# ------------------------------------------------------------------------------------------- 14.16 best.pth
def test_best_holds_weights_only_and_is_not_resumed(caplog, tiny_vse_run):
    best = torch.load(tiny_vse_run / "best.pth", map_location="cpu", weights_only=True)
    last = torch.load(tiny_vse_run / "last.pth", map_location="cpu", weights_only=True)
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        assert key not in best and key in last
    assert best["model"].keys() == last["model"].keys() and best["tokenizer"] == last["tokenizer"]
    assert (tiny_vse_run / "best.pth").stat().st_size < (tiny_vse_run / "last.pth").stat().st_size
    before = {p: p.read_bytes() for p in (tiny_vse_run / "best.pth", tiny_vse_run / "last.pth")}
    assert train.main(["--resume", str(tiny_vse_run / "best.pth")]) == 2
    msg = error_text(caplog)
    assert "holds no optimizer/scheduler/scaler/rng state" in msg and f"resume from {tiny_vse_run / 'last.pth'}" in msg
    assert all(p.read_bytes() == data for p, data in before.items())
    assert test_entry.main(["--resume", str(tiny_vse_run / "best.pth")]) == 0  # test.py reads best.pth as before
