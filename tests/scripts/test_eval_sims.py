"""scripts/eval_sims.py: numbers equal engine.metrics, the img2txt path, saved reranked arrays, bad-input exits."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.metrics import retrieval_metrics, txt2img_from_counts
from engine.rerank import galr_rerank, galr_rerank_unweighted

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("eval_sims", ROOT / "scripts" / "eval_sims.py")
eval_sims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_sims)

KEYS = ("i2t_R1 i2t_R5 i2t_R10 t2i_R1 t2i_R5 t2i_R10 mR rsum i2t_medR t2i_medR i2t_meanR t2i_meanR").split()


@pytest.fixture()
def sims(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((12, 6))
    S = img @ (np.repeat(img, 5, axis=0) + 1.5 * rng.standard_normal((60, 6))).T
    np.save(tmp_path / "s.npy", S)
    return S


def run(tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "out.json"
    code = eval_sims.main([*map(str, args), "--json", str(out)])
    return code, (json.loads(out.read_text()) if out.exists() else {})


def test_json_equals_retrieval_metrics(tmp_path, sims):
    code, got = run(tmp_path, "--sims", tmp_path / "s.npy")
    assert code == 0 and list(got) == KEYS
    ref = retrieval_metrics(torch.from_numpy(sims), txt2img_from_counts([5] * 12))
    assert got == {k: ref[k] for k in KEYS}


def test_npz_and_img2txt_map(tmp_path, sims):
    # Shuffle the columns and describe them with an explicit map: the metrics must not change.
    perm = np.random.default_rng(1).permutation(60)
    np.savez(tmp_path / "p.npz", sims=sims[:, perm], other=np.zeros(3))
    inv = np.argsort(perm)
    img2txt = [sorted(int(inv[5 * i + c]) for c in range(5)) for i in range(12)]
    (tmp_path / "map.json").write_text(json.dumps(img2txt))
    code, got = run(tmp_path, "--sims", tmp_path / "p.npz", "--img2txt", tmp_path / "map.json")
    assert code == 0
    _, ref = run(tmp_path, "--sims", tmp_path / "s.npy")
    assert got == pytest.approx(ref, abs=0)


@pytest.mark.parametrize("name", ["galr", "galr_unweighted"])
def test_rerank_and_save_reranked(tmp_path, sims, name):
    out = tmp_path / "r.npz"
    code, got = run(tmp_path, "--sims", tmp_path / "s.npy", "--rerank", name, "--k", "12", "--wp1", "0.5",
                    "--wp2", "0.9", "--save-reranked", out)
    assert code == 0
    S = torch.from_numpy(sims)
    i2t, t2i = galr_rerank(S, k=12, wp1=0.5, wp2=0.9) if name == "galr" else galr_rerank_unweighted(S, k=12)
    z = np.load(out)
    assert set(z.files) == {"i2t", "t2i"} and z["i2t"].shape == sims.shape == z["t2i"].shape
    np.testing.assert_array_equal(z["i2t"], i2t.numpy())
    np.testing.assert_array_equal(z["t2i"], t2i.numpy())
    ref = retrieval_metrics(i2t, txt2img_from_counts([5] * 12), sim_t2i=t2i)
    assert got == {k: ref[k] for k in KEYS}


def test_tune_prints_best(tmp_path, sims, capsys):
    assert eval_sims.main(["--sims", str(tmp_path / "s.npy"), "--tune"]) == 0
    assert "tune: best galr setting" in capsys.readouterr().out


def bad_cases(tmp_path, sims):
    nan = sims.copy()
    nan[3, 7] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "odd.npy", sims[:, :-1])
    np.save(tmp_path / "vec.npy", sims[0])
    np.savez(tmp_path / "two.npz", a=sims, b=sims)
    (tmp_path / "junk.npy").write_text("not numpy")
    (tmp_path / "short.json").write_text(json.dumps([[5 * i + c for c in range(5)] for i in range(12)][:-1] + [[]]))
    (tmp_path / "dup.json").write_text(json.dumps([[0, 1, 2, 3, 4]] * 12))
    (tmp_path / "broken.json").write_text("[[0, 1")
    s = str(tmp_path / "s.npy")
    return [
        (["--sims", str(tmp_path / "missing.npy")], "missing.npy"),
        (["--sims", str(tmp_path / "nan.npy")], "nan.npy"),
        (["--sims", str(tmp_path / "odd.npy")], "odd.npy"),
        (["--sims", s, "--captions-per-image", "4"], "s.npy"),
        (["--sims", str(tmp_path / "vec.npy")], "vec.npy"),
        (["--sims", str(tmp_path / "two.npz")], "two.npz"),
        (["--sims", str(tmp_path / "junk.npy")], "junk.npy"),
        (["--sims", s, "--img2txt", str(tmp_path / "short.json")], "short.json"),
        (["--sims", s, "--img2txt", str(tmp_path / "dup.json")], "dup.json"),
        (["--sims", s, "--img2txt", str(tmp_path / "broken.json")], "broken.json"),
        (["--sims", s, "--img2txt", str(tmp_path / "nomap.json")], "nomap.json"),
    ]


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, sims, capsys):
    for argv, name in bad_cases(tmp_path, sims):
        outs = [tmp_path / "o.json", tmp_path / "o.npz"]
        code = eval_sims.main(argv + ["--rerank", "galr", "--json", str(outs[0]), "--save-reranked", str(outs[1])])
        cap = capsys.readouterr()
        assert code == 2, argv
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and lines[0].startswith("error:"), (argv, cap.err)
        assert not any(p.exists() for p in outs), argv


def test_rerank_choices_are_the_registered_rerankers():
    from engine.rerank import RERANKERS

    assert sorted(eval_sims.RERANK_NAMES) == sorted(RERANKERS)


def test_output_folders_created_and_bad_output_refused_before_reading(tmp_path, sims, capsys):
    out = tmp_path / "new" / "dir" / "m.json"
    assert eval_sims.main(["--sims", str(tmp_path / "s.npy"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mR"] == pytest.approx(
        retrieval_metrics(torch.from_numpy(sims), txt2img_from_counts([5] * 12))["mR"])
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    capsys.readouterr()
    assert eval_sims.main(["--sims", str(tmp_path / "missing.npy"), "--json", str(blocker / "m.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --json {blocker / 'm.json'}: cannot create its folder") and "Errno" not in err


def test_runs_without_importing_torch(tmp_path, sims):
    # A fresh interpreter runs the script (plain, galr with --tune, galr_unweighted) and reports sys.modules.
    child = ("import json, runpy, sys\n"
             "sys.argv = ['eval_sims.py'] + sys.argv[1:]\n"
             "try:\n"
             "    runpy.run_path('scripts/eval_sims.py', run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    code = e.code\n"
             "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}))\n")
    for name, extra in (("none", []), ("galr", ["--tune"]), ("galr_unweighted", [])):
        out = tmp_path / f"{name}.json"
        r = subprocess.run([sys.executable, "-c", child, "--sims", str(tmp_path / "s.npy"), "--rerank", name,
                            "--k", "12", "--json", str(out), *extra], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1]) == {"code": 0, "torch": False}, name
        S = torch.from_numpy(sims)  # the same numbers as the torch-tensor entry points give
        kw = {} if name == "none" else {"k": 12}
        i2t, t2i = {"none": lambda s: (s, s), "galr": lambda s: galr_rerank(s, **kw),
                    "galr_unweighted": lambda s: galr_rerank_unweighted(s, **kw)}[name](S)
        ref = retrieval_metrics(i2t, txt2img_from_counts([5] * 12), sim_t2i=t2i)
        assert json.loads(out.read_text()) == {k: ref[k] for k in KEYS}
