"""scripts/results_table.py: every run is listed, means/stds equal numpy's, rerank rows, md and csv, bad input."""
import csv
import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from scripts import results_table

KEYS = results_table.KEYS


def fold_rows(rng, n, rerank=False):
    rows = []
    for k in range(n):
        r = {key: float(rng.uniform(1, 90)) for key in KEYS}
        r.update(fold=k, rsum=sum(r[key] for key in KEYS[:6]))
        if rerank:
            r["rerank"] = {key: float(rng.uniform(1, 90)) for key in KEYS} | {"name": "galr"}
        rows.append(r)
    return rows


def write_summary(root, experiment, method, dataset, folds):
    root.mkdir(parents=True)
    (root / "summary.json").write_text(json.dumps(
        {"experiment": experiment, "method": method, "dataset": dataset, "folds": folds, "mean": {}, "std": {}}))
    for r in folds:  # fold dirs with test.json exist too; the summary must cover them (no duplicate rows)
        (root / f"fold{r['fold']}").mkdir()
        (root / f"fold{r['fold']}" / "test.json").write_text(json.dumps({k: r[k] for k in KEYS} | {"method": method}))


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    a = fold_rows(rng, 5, rerank=True)
    b = fold_rows(rng, 3)
    write_summary(tmp_path / "ck" / "rsitmd_galr", "rsitmd_galr", "galr", "rsitmd", a)
    write_summary(tmp_path / "ck" / "nested" / "rsicd_vse", "rsicd_vse", "vse", "rsicd", b)
    single = tmp_path / "ck" / "ucm_swan" / "fold0"  # single-fold run: test.json + config.yaml
    single.mkdir(parents=True)
    c = {k: float(rng.uniform(1, 90)) for k in KEYS}
    (single / "test.json").write_text(json.dumps(c | {"method": "swan", "rerank": {"name": "galr", "k": 5}}))
    (single / "config.yaml").write_text(yaml.safe_dump({"data": {"dataset": "ucm"}, "model": {"name": "swan"}}))
    return tmp_path / "ck", a, b, c


def test_markdown_means_and_stds_equal_numpy(runs, capsys):
    root, a, b, c = runs
    assert results_table.main([str(root)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    body = [line.split("|")[1:-1] for line in out[2:]]
    rows = {(cells[0].strip(), cells[3].strip()): [x.strip() for x in cells] for cells in body}
    assert set(rows) == {("galr", "off"), ("galr", "galr"), ("vse", "off"), ("swan", "galr")}  # every run listed
    expected = {("galr", "off"): a, ("galr", "galr"): [r["rerank"] for r in a], ("vse", "off"): b}
    for key, folds in expected.items():
        cells = rows[key]
        assert cells[4] == str(len(folds))
        for j, k in enumerate(KEYS):
            vals = np.array([r[k] for r in folds])
            assert cells[5 + j] == f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}"
    swan = rows[("swan", "galr")]
    assert swan[1] == "ucm" and swan[2] == "ucm_swan" and swan[4] == "1"
    assert swan[5:] == [f"{c[k]:.2f}" for k in KEYS]  # one fold: no std


def test_csv_and_out_file(runs, tmp_path, capsys):
    root, a, b, _ = runs
    out = tmp_path / "tables" / "t.csv"
    assert results_table.main([str(root / "nested"), str(root / "rsitmd_galr" / "summary.json"),
                               "--format", "csv", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    rows = list(csv.DictReader(io.StringIO(printed)))
    assert [(r["method"], r["rerank"]) for r in rows] == [("vse", "off"), ("galr", "off"), ("galr", "galr")]
    for r, folds in zip(rows, (b, a)):
        for k in KEYS:
            vals = np.array([f[k] for f in folds])
            assert float(r[f"{k}_mean"]) == pytest.approx(vals.mean(), abs=1e-4)
            assert float(r[f"{k}_std"]) == pytest.approx(vals.std(ddof=1), abs=1e-4)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert results_table.main([str(tmp_path / "missing")]) == 2
    assert "path not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert results_table.main([str(tmp_path / "empty")]) == 2
    assert "no summary.json" in capsys.readouterr().err
    bad = tmp_path / "bad" / "summary.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    assert results_table.main([str(tmp_path / "bad"), "--out", str(tmp_path / "t.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err
    assert not (tmp_path / "t.md").exists()
    bad.write_text(json.dumps({"experiment": "x", "folds": [{"i2t_R1": 1.0}]}))
    assert results_table.main([str(bad)]) == 2
    assert "lack" in capsys.readouterr().err


def test_dataset_filter_keeps_only_that_dataset(runs, capsys):
    root, *_ = runs
    assert results_table.main([str(root), "--dataset", "rsitmd"]) == 0
    body = capsys.readouterr().out.strip().splitlines()[2:]
    assert [(line.split("|")[1].strip(), line.split("|")[2].strip()) for line in body] == [("galr", "rsitmd")] * 2
    assert results_table.main([str(root), "--dataset", "nwpu"]) == 2
    assert "no run of dataset 'nwpu'" in capsys.readouterr().err


def write_metrics(fold_dir, values):
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train/loss": 1.0, "val/mR": v}) + "\n" for e, v in enumerate(values)))


def test_plot_draws_every_fold_curve(runs, tmp_path):
    root, *_ = runs
    write_metrics(root / "rsitmd_galr" / "fold0", [10.0, 40.0, 60.0])  # 3 of galr's 5 fold dirs have curves
    write_metrics(root / "rsitmd_galr" / "fold1", [20.0, 30.0, 50.0])
    write_metrics(root / "rsitmd_galr" / "fold2", [5.0, 5.0, 5.0])
    out = tmp_path / "img" / "val.png"
    assert results_table.main([str(root), "--dataset", "rsitmd", "--plot", str(out)]) == 0
    curves = results_table.val_curves(results_table.load_runs(results_table.find_files([str(root / "rsitmd_galr")])))
    assert curves == {"galr": [[(0, 10.0), (1, 40.0), (2, 60.0)], [(0, 20.0), (1, 30.0), (2, 50.0)],
                               [(0, 5.0), (1, 5.0), (2, 5.0)]]}
    pic = np.asarray(Image.open(out).convert("RGB"))
    colour = np.array(Image.new("RGB", (1, 1), results_table.PALETTE[0]).getpixel((0, 0)))
    ys, xs = np.nonzero((pic == colour).all(axis=2))
    assert len(xs) > 200  # the three galr lines (and the legend) are drawn in the first palette colour
    # the flat 5.0 curve is the lowest line: its pixels sit near the bottom of the plot area
    assert ys.max() > 0.8 * pic.shape[0]
    vse_dir = root / "nested" / "rsicd_vse"
    assert results_table.main([str(vse_dir), "--plot", str(tmp_path / "none.png")]) == 2  # no metrics.jsonl
    assert not (tmp_path / "none.png").exists()


def test_run_dir_json_takes_run_name_and_dataset_from_the_folds(tmp_path, capsys):
    """test.py --run-dir --json output (no experiment/dataset keys): named after the run, dataset from config.yaml."""
    rng = np.random.default_rng(3)
    folds = []
    for k in range(2):
        fold = tmp_path / "ucm_galr" / f"fold{k}"
        fold.mkdir(parents=True)
        (fold / "config.yaml").write_text(yaml.safe_dump({"data": {"dataset": "ucm"}}))
        folds.append({key: float(rng.uniform(1, 90)) for key in KEYS}
                     | {"method": "galr", "checkpoint": str(fold / "best.pth"), "rerank": {"name": "galr", "k": 30}})
    out = tmp_path / "rerank.json"
    out.write_text(json.dumps({"folds": folds, "method": "galr", "checkpoint": str(tmp_path / "ucm_galr")}))
    assert results_table.main([str(out), "--dataset", "ucm"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[2].split("|")[1:-1]
    assert [c.strip() for c in row[:5]] == ["galr", "ucm", "ucm_galr", "galr", "2"]
    vals = np.array([f["mR"] for f in folds])
    assert row[-1].strip() == f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}"
