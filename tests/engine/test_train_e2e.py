"""End-to-end runs of train.py / test.py on the tiny baseline: layout, test == in-training test, resume, folds."""
import json

import pytest
import torch

import test as test_entry
import train

CFG = "configs/tests/tiny_vse.yaml"
KEYS = "i2t_R1 i2t_R5 i2t_R10 t2i_R1 t2i_R5 t2i_R10 mR rsum i2t_medR t2i_medR i2t_meanR t2i_meanR".split()


def test_run_layout_and_test_py_reproduces_final_evaluation(tiny_vse_run, tmp_path):
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "last.pth", "best.pth", "test.json"):
        assert (tiny_vse_run / name).is_file(), name
    assert any((tiny_vse_run / "tb").iterdir()) and any((tiny_vse_run / "splits").iterdir())
    rows = [json.loads(line) for line in (tiny_vse_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "epoch" in r] == [0, 1] and "val/mR" in rows[0]
    assert test_entry.main(["--resume", str(tiny_vse_run / "best.pth"), "--json", str(tmp_path / "t.json")]) == 0
    got, ref = json.loads((tmp_path / "t.json").read_text()), json.loads((tiny_vse_run / "test.json").read_text())
    for k in KEYS:
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k
    assert got["n_images"] == 100 and got["n_captions"] == 500 and got["method"] == "vse"


def test_best_is_chosen_on_validation(tiny_vse_run):
    rows = [json.loads(line) for line in (tiny_vse_run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "epoch" in r]
    best_epoch = max(range(len(rows)), key=lambda i: (rows[i]["val/mR"], -i))
    assert torch.load(tiny_vse_run / "best.pth", weights_only=True)["best_epoch"] == best_epoch


def test_resume_is_exact(tmp_path):
    common = ["--config", CFG, "--set", "data.max_images=120", "--set", "data.batch_size=20"]
    assert train.main(common + ["--set", "train.epochs=3", "--output-dir", str(tmp_path / "a")]) == 0
    assert train.main(common + ["--set", "train.epochs=2", "--output-dir", str(tmp_path / "b")]) == 0
    last_b = tmp_path / "b" / "tiny_vse" / "fold0" / "last.pth"
    assert train.main(["--resume", str(last_b), "--set", "train.epochs=3"]) == 0
    a = torch.load(tmp_path / "a" / "tiny_vse" / "fold0" / "last.pth", weights_only=True)
    b = torch.load(last_b, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k

    def epoch_row(run: str, epoch: int) -> dict:
        rows = [json.loads(x) for x in (tmp_path / run / "tiny_vse" / "fold0" / "metrics.jsonl").read_text().splitlines()]
        row = next(r for r in rows if r.get("epoch") == epoch)
        return {k: v for k, v in row.items() if "time" not in k and not k.endswith("data_s")}

    ra, rb = epoch_row("a", 2), epoch_row("b", 2)
    assert "val/mR" in ra
    assert ra == rb


def test_folds_all_summary(tmp_path):
    args = ["--config", CFG, "--set", "data.max_images=100", "--set", "data.batch_size=20", "--set", "train.epochs=1",
            "--set", "data.n_folds=2", "--folds", "all", "--output-dir", str(tmp_path)]
    assert train.main(args) == 0
    root = tmp_path / "tiny_vse"
    summary = json.loads((root / "summary.json").read_text())
    folds = [json.loads((root / f"fold{k}" / "test.json").read_text()) for k in (0, 1)]
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    for k in ("mR", "i2t_R1", "t2i_R10"):
        vals = torch.tensor([f[k] for f in folds], dtype=torch.float64)
        assert summary["mean"][k] == pytest.approx(vals.mean().item())
        assert summary["std"][k] == pytest.approx(vals.std().item())
    assert "| mean |" in (root / "summary.md").read_text()
    # the two folds drew different validation images
    v0, v1 = ((root / f"fold{k}" / "splits" / "val_filename_verify.txt").read_text() for k in (0, 1))
    assert v0 != v1


def test_checkpoint_with_old_rerank_keys_still_loads(tiny_vse_run, tmp_path):
    """Checkpoints written before eval.rerank_params stored eval.rerank_k / rerank_wp1 / rerank_wp2."""
    ckpt = torch.load(tiny_vse_run / "best.pth", weights_only=True)
    ev = ckpt["config"]["eval"]
    ev.pop("rerank_params", None)
    ev.update(rerank="galr_unweighted", rerank_k=12, rerank_wp1=0.3, rerank_wp2=1.1, tune_rerank=True)
    torch.save(ckpt, tmp_path / "old.pth")
    assert test_entry.main(["--resume", str(tmp_path / "old.pth"), "--json", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["rerank"] == {"name": "galr_unweighted", "k": 12}
