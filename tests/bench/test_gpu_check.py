"""bench/gpu_check.py --dry-run on the CPU: the JSON it writes has every part, and its numbers hang together."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from core.config import load_config
from engine.metrics import retrieval_metrics, txt2img_from_counts

ROOT = Path(__file__).resolve().parents[2]
TINY = sorted(p.stem[len("tiny_"):] for p in (ROOT / "configs" / "tests").glob("tiny_*.yaml"))


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gpu_check = _load_gpu_check()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    res = json.loads((out / "gpu_check.json").read_text())
    res["_out"] = str(out)
    return res


def test_dry_run_gpu_tests_ran_on_cpu_and_passed(dry_run):
    """What the dry run measured, whatever the machine's speed: it runs without a time budget (on a busy machine the
    tests part once hit its 168 s share of a 420 s budget and was killed), so every case ran to its end."""
    t = dry_run["tests"]
    assert dry_run["dry_run"] is True and dry_run["complete"] is True and dry_run["environment"]["device"] == "cpu"
    assert dry_run["budget_s"] is None  # no wall-clock budget: the verdict below cannot depend on the machine
    assert t["exit_code"] == 0, t["output_tail"]
    assert t["wall_s"] >= sum(c["time_s"] for c in t["cases"]) > 0  # the cases' own measured times
    names = {c["name"] for c in t["cases"]}
    # the dry run restricts the AMP tests to vse: 2 AMP cases + 2 test.py comparisons + 1 resume
    assert names == {"test_amp_training_steps_are_finite_and_learn[vse-bf16]",
                     "test_amp_training_steps_are_finite_and_learn[vse-fp16]",
                     "test_test_py_on_cuda_matches_cpu[off]", "test_test_py_on_cuda_matches_cpu[bf16]",
                     "test_resume_on_device_is_exact_in_deterministic_mode"}
    assert t["counts"] == {"passed": 5, "failed": 0, "error": 0, "skipped": 0}


def test_dry_run_throughput_rows_for_every_method(dry_run):
    rows = {r["method"]: r for r in dry_run["throughput"]["rows"]}
    assert sorted(rows) == TINY
    for m, r in rows.items():
        assert "error" not in r, (m, r.get("error"))
        tiny = load_config(ROOT / "configs" / "tests" / f"tiny_{m}.yaml")
        assert r["config"] == f"tiny_{m}.yaml"
        assert (r["batch_size"], r["image_size"]) == (tiny.data.batch_size, tiny.data.image_size)
        assert r["backbone_img_s"] > 0 and r["loader_samples_s"] > 0 and r["backbone_peak_gb"] is None
        if "note" in r:  # evaluation-only method: nothing trained, no ratio
            assert m == "clip_zeroshot" and "ratio" not in r
            continue
        assert len(r["losses"]) == r["steps"] == 2 and all(math.isfinite(v) for v in r["losses"])
        assert r["method_img_s"] > 0
        assert r["ratio"] == pytest.approx(r["method_img_s"] / r["backbone_img_s"])
        assert r["loader_vs_method"] == pytest.approx(r["loader_samples_s"] / r["method_img_s"])


def test_dry_run_ucm_part_and_table(dry_run, shared_data):
    ucm = dry_run["ucm"]
    assert ucm["data"] == str((shared_data / "ucm").resolve())
    assert [r["config"] for r in ucm["runs"]] == [f"{c}.yaml" for c in gpu_check.UCM_CONFIGS]
    for r in ucm["runs"]:
        assert "error" not in r, r
        assert r["epochs"] == 1 and len(r["val_mR"]) == 1 and 0.0 <= r["val_mR"][0] <= 100.0
        assert r["val_images"] == 12  # 20 % of the first 60 training images
        assert r["chance_val_mR"] == pytest.approx(gpu_check.chance_mr(12))
        assert 0.0 <= r["test_mR"] <= 100.0 and math.isfinite(r["train_loss"][0])
    md = (Path(dry_run["_out"]) / "gpu_check.md").read_text()
    assert md.count("| train speed |") == len(TINY) and md.count("| UCM from scratch |") == len(ucm["runs"])
    assert (Path(dry_run["_out"]) / "gpu_tests.xml").is_file()


class SlowClock:
    """``time`` for gpu_check on a very slow machine: every reading is 1000 s after the one before."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1000.0
        return self.now


def test_dry_run_never_skips_or_kills_a_part_for_time(tmp_path, monkeypatch):
    """The dry run on a machine where every step takes 1000 s: the tests part gets no timeout, and no throughput row
    or UCM run is skipped for time (each part is stubbed to record what it was asked to run)."""
    runs = {"timeout": [], "methods": [], "ucm": []}

    def fake_pytest(cmd, **kw):
        runs["timeout"].append(kw.get("timeout"))
        xml = next(a.split("=", 1)[1] for a in cmd if a.startswith("--junitxml="))
        Path(xml).write_text('<testsuite><testcase name="a" time="1.5"/><testcase name="b" time="2"/></testsuite>')
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(gpu_check, "time", SlowClock())
    monkeypatch.setattr(gpu_check, "table", lambda res: "")  # the stub rows lack what the table prints
    monkeypatch.setattr(gpu_check.subprocess, "run", fake_pytest)
    monkeypatch.setattr(gpu_check, "measure_method", lambda m, *a: runs["methods"].append(m) or {"method": m})
    monkeypatch.setattr(gpu_check, "train_ucm",
                        lambda name, *a: runs["ucm"].append(name) or {"config": f"{name}.yaml", "epochs": 1})
    ucm = tmp_path / "ucm"
    (ucm / "ucm_precomp").mkdir(parents=True)
    (ucm / "ucm_precomp" / "train_caps.txt").write_text("x\n")
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "out"), "--ucm", str(ucm), "--methods", "vse,galr",
                           "--ucm-configs", "ucm_galr,ucm_amfmn"]) == 0
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert runs == {"timeout": [None], "methods": ["vse", "galr"], "ucm": ["ucm_galr", "ucm_amfmn"]}
    assert res["budget_s"] is None and res["tests"]["counts"]["passed"] == 2
    assert [r for r in res["throughput"]["rows"] if "error" in r] == [] and len(res["ucm"]["runs"]) == 2
    assert all("error" not in r for r in res["ucm"]["runs"])
    # a real run keeps its budget: the same slow clock skips what does not fit
    runs.update(timeout=[], methods=[], ucm=[])
    monkeypatch.setattr(gpu_check, "time", SlowClock())
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "real"), "--ucm", str(ucm), "--methods",
                           "vse,galr", "--ucm-configs", "ucm_galr"]) == 0
    res = json.loads((tmp_path / "real" / "gpu_check.json").read_text())
    assert runs["timeout"] == [pytest.approx(0.4 * 420)] and res["budget_s"] == 420
    assert {r.get("error") for r in res["throughput"]["rows"]} == {"skipped: time budget spent"}


def test_chance_level_matches_random_scores():
    """chance_mr(n) against the mean mR of random score matrices (n images x 5 captions)."""
    n, trials = 12, 300
    g = torch.Generator().manual_seed(0)
    t2i = txt2img_from_counts([5] * n)
    mean = sum(retrieval_metrics(torch.rand(n, 5 * n, generator=g), t2i)["mR"] for _ in range(trials)) / trials
    assert mean == pytest.approx(gpu_check.chance_mr(n), abs=1.5)
    # hand case, 2 images: t2i R@1 = 1/2, R@5 = R@10 = 1; i2t R@1 = 1 - 5/10, R@5 = 1 - 1/252, R@10 = 1
    assert gpu_check.chance_mr(2) == pytest.approx(100 * (0.5 + 1 + 1 + 0.5 + (1 - 1 / 252) + 1) / 6)


def test_find_and_pack_ucm(tmp_path, monkeypatch, capsys):
    src = tmp_path / "ucm" / "ucm_precomp"
    (src / "images").mkdir(parents=True)
    for f in ("train_caps.txt", "train_filename.txt", "test_caps.txt", "test_filename.txt"):
        (src / f).write_text(f"{f}\n")
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "ucm_splits_vocab.json").write_text('{"word2idx": {}}')
    for i, size in enumerate([(256, 256), (247, 256)]):
        Image.new("RGB", size, (10 * i, 100, 200)).save(src / "images" / f"{i + 1}.jpg", quality=95)
    monkeypatch.setenv("RSITR_UCM_DIR", str(tmp_path / "ucm"))
    assert gpu_check.find_ucm(None) == (tmp_path / "ucm").resolve()
    assert gpu_check.find_ucm(str(tmp_path)) is None  # no ucm_precomp/ there
    assert gpu_check.main(["--pack-ucm", str(tmp_path / "packed")]) == 0
    out = tmp_path / "packed" / "ucm" / "ucm_precomp"
    assert (out / "test_caps.txt").read_text() == "test_caps.txt\n"
    assert (tmp_path / "packed" / "vocab" / "ucm_splits_vocab.json").read_text() == '{"word2idx": {}}'
    with Image.open(out / "images" / "2.jpg") as im:
        assert im.format == "JPEG" and im.size == (247, 256)
    assert gpu_check.main(["--pack-ucm", str(tmp_path / "packed")]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_the_real_run_exits_2(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "--dry-run" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.json").exists()
