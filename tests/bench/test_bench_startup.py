"""bench/bench_startup.py: its table (hand-written expected text), its torch detection, and a short real run that
itself never imports torch and finds that scripts/eval_sims.py does not either."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_startup", ROOT / "bench" / "bench_startup.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_markdown_table():
    rows = [{"entry": bench.BASELINE, "median_s": 0.1, "best_s": 0.09, "ratio": 1.0, "torch": False},
            {"entry": "train.py --help", "median_s": 0.125, "best_s": 0.11, "ratio": 1.25, "torch": True}]
    assert bench.markdown({"repeat": 3, "python": "3.11.7", "cpus": 2}, rows) == (
        "3 interleaved runs per row, python 3.11.7, 2 CPUs; ratio = median / median of "
        "`python -c 'import numpy'`\n\n"
        "| entry point | median s | best s | x import numpy | imports torch |\n"
        "|---|---:|---:|---:|---|\n"
        "| python -c 'import numpy' | 0.10 | 0.09 | 1.00 | no |\n"
        "| train.py --help | 0.12 | 0.11 | 1.25 | yes |\n")


def test_torch_detection_reads_the_import_log(tmp_path):
    # A stand-in module named torch: detection must see that name in the -X importtime log, and only that name.
    (tmp_path / "torch.py").write_text("")
    (tmp_path / "torchvision_like.py").write_text("")
    add = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
    assert bench.imports_torch(["-c", add + "import torch"])
    assert not bench.imports_torch(["-c", add + "import torchvision_like"])


def test_rows_cover_every_entry_point(tmp_path):
    labels = [label for label, _ in bench.commands(bench.save_matrix(tmp_path))]
    assert labels[0] == bench.BASELINE
    for script in ["train.py", "test.py"] + [f"scripts/{p.name}" for p in (ROOT / "scripts").glob("*.py")]:
        assert f"{script} --help" in labels
    assert sum(label.startswith("scripts/eval_sims.py --sims") for label in labels) == 2


def test_short_run_without_torch(tmp_path):
    out = tmp_path / "rows.json"
    child = ("import runpy, sys\n"
             "sys.argv = ['bench_startup.py', '--repeat', '1', '--only', 'eval_sims.py --sims', "
             f"'--json', {str(out)!r}]\n"
             "try:\n"
             "    runpy.run_path('bench/bench_startup.py', run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('torch imported:', 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("torch imported: False")
    rows = json.loads(out.read_text())["rows"]
    assert [row["entry"].split(" --sims")[0] for row in rows] == [bench.BASELINE] + ["scripts/eval_sims.py"] * 2
    assert rows[0]["ratio"] == 1.0 and not any(row["torch"] for row in rows)
    assert "| scripts/eval_sims.py --sims sims.npy (200x1000) --rerank galr |" in r.stdout
