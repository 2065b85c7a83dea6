"""eval.select_metric: checked at config load against the metrics evaluation reports, and the rank metrics
(medR / meanR) choose the lowest validation value."""
import json

import pytest
import torch

import train
from core.config import ConfigError, EvalCfg, load_config, select_metrics
from engine.metrics import retrieval_metrics
from engine.runner import improves
from engine.scene_recall import scene_recall

CFG = "configs/tests/tiny_vse.yaml"


def test_allowed_names_are_the_keys_evaluation_reports():
    """The config's list equals the keys of a real evaluation (retrieval metrics + the configured SRR@r)."""
    g = torch.Generator().manual_seed(0)
    sim, txt2img = torch.randn(6, 30, generator=g), torch.arange(30) // 5
    ev = EvalCfg(scene_recall=(1, 5))
    keys = set(retrieval_metrics(sim, txt2img)) | set(scene_recall(sim, torch.tensor([0, 0, 1, 1, 2, 2]), txt2img,
                                                                   ev.scene_recall))
    assert set(select_metrics(ev)) == keys
    assert set(select_metrics(EvalCfg())) == set(retrieval_metrics(sim, txt2img))


def test_a_typo_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"'eval.select_metric' must be a metric .* got 'mr'; did you mean 'mR'"):
        load_config(CFG, ["eval.select_metric=mr"])
    with pytest.raises(ConfigError, match="'eval.select_metric'"):  # SRR@r needs eval.scene_recall to list r
        load_config(CFG, ["eval.select_metric=i2t_SRR@5"])
    assert load_config(CFG, ["eval.select_metric=i2t_SRR@5", "eval.scene_recall=[1,5]"]).eval.select_metric


def test_train_refuses_a_typo_before_training(tmp_path, caplog):
    """Exit 2 with one line, and no run folder: the typo used to surface as a KeyError after the first epoch."""
    rc = train.main(["--config", CFG, "--output-dir", str(tmp_path), "--set", "eval.select_metric=mr"])
    assert rc == 2 and not (tmp_path / "tiny_vse").exists()
    assert any("eval.select_metric" in r.getMessage() and "\n" not in r.getMessage() for r in caplog.records)


def test_direction_by_hand():
    assert improves(3.0, 4.0, "t2i_meanR") and not improves(5.0, 4.0, "i2t_medR")
    assert improves(5.0, 4.0, "mR") and not improves(3.0, 4.0, "rsum")
    assert not improves(float("nan"), 4.0, "mR") and not improves(float("nan"), 4.0, "t2i_meanR")


@pytest.mark.slow
def test_rank_metric_keeps_the_epoch_with_the_lowest_value(tmp_path):
    """Four epochs selected by validation t2i_meanR: best.pth is the epoch of the smallest value in metrics.jsonl
    (the first of equal ones), and the final test is that epoch's."""
    args = ["--config", CFG, "--output-dir", str(tmp_path), "--set", "data.max_images=100", "--set",
            "data.batch_size=20", "--set", "train.epochs=4", "--set", "eval.select_metric=t2i_meanR"]
    assert train.main(args) == 0
    run = tmp_path / "tiny_vse" / "fold0"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val/t2i_meanR"] for r in rows if "epoch" in r]
    assert len(vals) == 4
    lowest = min(range(4), key=lambda i: (vals[i], i))
    highest = max(range(4), key=lambda i: (vals[i], -i))
    assert lowest != highest, vals  # else this run could not tell the directions apart
    assert torch.load(run / "best.pth", weights_only=True)["best_epoch"] == lowest
    last = torch.load(run / "last.pth", weights_only=True)
    assert last["best_metric"] == vals[lowest] and last["best_epoch"] == lowest
    assert json.loads((run / "test.json").read_text())["best_epoch"] == lowest
