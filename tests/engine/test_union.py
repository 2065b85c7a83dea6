"""Dataset unions through train.py (issue 23): real UCM + placeholder RSITMD (the real RSITMD caption and filename
files, a distinct smooth random picture per name), with altered copies of test images planted under RSITMD training
names. One test row per member (equal to testing that member alone), every planted copy named and removed, per-member
blocks in summary.json, test.py and the results table read the same rows."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from core.config import DataCfg, load_config
from core.errors import ConfigError, MissingFileError
from data.build import build_data, model_context
from data.images import load_image
from data.near_dups import ALTERATIONS
from data.precomp import load_split
from data.union import members
from engine.runner import evaluate_split
from models.registry import build_model

KEYS = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR")
N = 40  # data.max_images: the first 40 train and test images of each member


def _smooth(rng: np.random.Generator) -> Image.Image:
    small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return small.resize((256, 256), Image.BICUBIC)


@pytest.fixture(scope="module")
def union(shared_data, tmp_path_factory) -> dict:
    """Folders and the planted copies: {training name in rsitmd: (member, test name it copies)}."""
    ucm = shared_data / "ucm" / "ucm_precomp"
    if not (ucm / "images").is_dir():
        pytest.skip("../shared/data/ucm is not available")
    tmp = tmp_path_factory.mktemp("union")
    rsitmd = tmp / "rsitmd_precomp"
    (rsitmd / "images").mkdir(parents=True)
    for f in ("train_caps.txt", "train_filename.txt", "test_caps.txt", "test_filename.txt"):
        (rsitmd / f).symlink_to(shared_data / "precomp" / "rsitmd_precomp" / f)
    r_train, r_test = (load_split(rsitmd, s, check_images=False) for s in ("train", "test"))
    rng = np.random.default_rng(0)
    for name in r_train.filenames[:N] + r_test.filenames[:N]:
        _smooth(rng).save(rsitmd / "images" / name)
    u_test = load_split(ucm, "test", check_images=False)
    planted = {}
    for slot, (alt, src_split, src_i) in zip((5, 6, 7, 10), (("jpeg_q30", u_test, 0), ("crop_4px", u_test, 1),
                                                             ("brightness_1.3", u_test, 2), ("resize_0.75", r_test, 3))):
        name = r_train.filenames[slot]
        ALTERATIONS[alt](load_image(src_split.image_path(src_i))).save(rsitmd / "images" / name)
        member = "ucm" if src_split is u_test else "rsitmd"
        planted[f"rsitmd/{name}"] = (member, f"{member}/{src_split.filenames[src_i]}")
    return {"ucm": ucm, "rsitmd": rsitmd, "planted": planted, "tmp": tmp}


def _sets(u: dict) -> list[str]:
    return ["--set", f"data.datasets=[{u['ucm']}, {u['rsitmd']}]", "--set", f"data.max_images={N}",
            "--set", "data.n_folds=2", "--set", "train.epochs=1", "--set", "data.batch_size=40"]


def test_members_resolve_presets_and_folders(union, tmp_path):
    cfg = DataCfg(datasets=(str(union["ucm"]), str(union["rsitmd"]), "demo"), root=str(tmp_path))
    got = members(cfg)
    assert [(lbl, m.dataset, m.name, m.root) for lbl, m in got] == [
        ("ucm", "ucm", "", str(union["ucm"].parent)), ("rsitmd", "rsitmd", "", str(union["rsitmd"].parent)),
        ("demo", "demo", "", str(tmp_path))]
    with pytest.raises(ConfigError, match="data.datasets.1: 'ucm' is listed twice"):
        members(dataclasses.replace(cfg, datasets=("ucm", str(union["ucm"]))))
    with pytest.raises(MissingFileError, match="data.datasets.0: 'nowhere' is neither a preset"):
        members(dataclasses.replace(cfg, datasets=("nowhere",)))
    with pytest.raises(ConfigError, match="cannot be combined with data.name"):
        members(dataclasses.replace(cfg, name="x"))


def test_union_bundle_pools_training_and_keeps_member_tests(union):
    cfg = DataCfg(datasets=(str(union["ucm"]), str(union["rsitmd"])), max_images=N, transform="plain",
                  image_size=32, num_workers=0)
    b = build_data(cfg)
    assert list(b.test_splits()) == ["test/ucm", "test/rsitmd"]
    ucm_test = load_split(union["ucm"], "test", check_images=False)
    t = b.split("test/ucm")
    assert t.filenames == [f"ucm/{n}" for n in ucm_test.filenames[:N]] and t.n_captions == 5 * N
    assert t.image_path(0) == ucm_test.image_path(0)
    pool = b.train.filenames + b.val.filenames
    assert len(pool) == 2 * N - len(union["planted"])
    assert sum(n.startswith("ucm/") for n in pool) == N  # no UCM training image is near a test image
    assert not set(pool) & set(union["planted"])
    assert "agricultural" in b.scene_names and "baseballfield" in b.scene_names  # UCM's classes, RSITMD's prefixes


def test_union_run_reports_one_row_per_member_and_every_planted_copy(union, tmp_path, capsys):
    out = tmp_path / "runs"
    assert train.main(["--config", "configs/tests/tiny_vse.yaml", "--output-dir", str(out), "--folds", "all",
                       *_sets(union)]) == 0
    root = out / "tiny_vse"
    res = json.loads((root / "fold0" / "test.json").read_text())
    assert list(res["test_sets"]) == ["ucm", "rsitmd"]
    for label in ("ucm", "rsitmd"):
        row = res["test_sets"][label]
        assert (row["n_images"], row["n_captions"]) == (N, 5 * N) and all(0 <= row[k] <= 100 for k in KEYS)
    # each row is that member's own test split alone: rebuild it as a single dataset and evaluate best.pth on it
    ckpt = torch.load(root / "fold0" / "best.pth", weights_only=True)
    cfg = load_config("configs/tests/tiny_vse.yaml", [f"data.max_images={N}"])
    model = build_model(dataclasses.replace(cfg.model, pretrained=False),
                        model_context(build_data(dataclasses.replace(cfg.data, datasets=tuple(
                            str(union[m]) for m in ("ucm", "rsitmd"))), tokenizer_state=ckpt["tokenizer"],
                            splits=("test",))), cfg.source)
    model.load_state_dict(ckpt["model"])
    for label in ("ucm", "rsitmd"):
        alone = build_data(dataclasses.replace(cfg.data, dataset=label, root=str(union[label].parent)),
                           tokenizer_state=ckpt["tokenizer"], splits=("test",))
        with torch.no_grad():
            m, _ = evaluate_split(cfg, model, alone, "test", torch.device("cpu"))
        for k in KEYS:
            assert res["test_sets"][label][k] == pytest.approx(m[k], abs=1e-9), (label, k)
    # leakage: every planted copy named, next to the test image it copies, and removed from training
    leak = res["leakage"]
    planted = union["planted"]
    assert sorted(n for _, n in leak["removed"]) == sorted(planted) and leak["n_removed"] == 4
    assert {tr[1]: tuple(te) for tr, te, _ in leak["test_near_dups"]} == {
        k: (f"test/{m}", name) for k, (m, name) in planted.items()}
    for fold in ("fold0", "fold1"):
        names = set((root / fold / "splits" / "train_filename_verify.txt").read_text().split())
        names |= set((root / fold / "splits" / "val_filename_verify.txt").read_text().split())
        assert len(names) == 2 * N - 4 and not names & set(planted)
    assert "4 training image(s) are near-duplicates of a test image and are removed" in (
        root / "fold0" / "log.txt").read_text()
    # summary.json: one block per member over both folds, the leakage report once
    summary = json.loads((root / "summary.json").read_text())
    assert summary["datasets"] == ["ucm", "rsitmd"] and summary["dataset"] == "ucm+rsitmd"
    for label in ("ucm", "rsitmd"):
        block = summary["test_sets"][label]
        assert block["n_folds"] == 2 and block["folds"][0]["mR"] == res["test_sets"][label]["mR"]
        assert block["mean"]["mR"] == pytest.approx(sum(f["mR"] for f in block["folds"]) / 2)
    assert sorted(n for _, n in summary["leakage"]["removed"]) == sorted(planted)
    md = (root / "summary.md").read_text()
    assert "ucm test set, trained on ucm+rsitmd" in md and "rsitmd test set" in md and "4 removed" in md
    # test.py on the checkpoint gives the same rows; the results table one row per member
    import test as test_entry

    assert test_entry.main(["--resume", str(root / "fold0" / "best.pth"), "--json", str(tmp_path / "t.json")]) == 0
    again = json.loads((tmp_path / "t.json").read_text())
    for label in ("ucm", "rsitmd"):
        assert again["test_sets"][label]["mR"] == pytest.approx(res["test_sets"][label]["mR"], abs=1e-9)
    sys.path.insert(0, "scripts")
    import results_table

    capsys.readouterr()
    assert results_table.main([str(root), "--format", "csv"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "trained on ucm+rsitmd" in ln]
    assert len(lines) == 2 and any(",ucm," in ln for ln in lines) and any(",rsitmd," in ln for ln in lines)
