"""The feature cache of locked towers (engine/feature_cache.py, core/feature_store.py; issue 27.3).

Results with the cache equal recomputing; disk stores are read back by later runs; a changed image file or other
weights is never served an old row; resume is exact; with cached image features the loaders decode no image.
"""
import json
import os
from pathlib import Path

import pytest
import torch

import train
from core.feature_store import FeatureStore, file_key, state_sha256

CFG = "configs/tests/tiny_dual_encoder.yaml"
RUN = "tiny_dual_encoder"


def _rows(out: Path) -> list[dict]:
    lines = (out / RUN / "fold0" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if "time" not in k and not k.endswith("data_s")} for x in lines]


def _close(a: list[dict], b: list[dict], tol: float = 1e-4) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert abs(ra[k] - rb[k]) <= tol * max(1.0, abs(ra[k])), (k, ra[k], rb[k])


def _run(out: Path, *sets: str) -> int:
    args = ["--config", CFG, "--output-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    return train.main(args)


def test_store_rows_duplicates_and_atomic_disk_round_trip(tmp_path):
    s = FeatureStore("f" * 64, tmp_path)
    s.add(["a", "b", "a"], torch.arange(6.0).view(3, 2))  # a repeated key keeps its first row
    s.add(["b", "c"], torch.tensor([[9.0, 9.0], [4.0, 5.0]]))  # b is already there
    assert len(s) == 3
    assert torch.equal(s.get(["c", "a", "b"]), torch.tensor([[4.0, 5.0], [0.0, 1.0], [2.0, 3.0]]))
    s.save()
    assert [p.name for p in tmp_path.iterdir()] == [f"{'f' * 24}.pt"]  # no temporary file left
    t = FeatureStore("f" * 64, tmp_path)
    assert t.load() == 3 and torch.equal(t.get(["a", "b", "c"]), s.get(["a", "b", "c"]))
    assert FeatureStore("f" * 24 + "0" * 40, tmp_path).load() == 0  # same file name, other fingerprint: not read


def test_keys_change_with_the_file_and_the_weights(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(b"1")
    k1 = file_key(f)
    os.utime(f, ns=(1, 10**18))
    assert file_key(f) != k1
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert state_sha256([a]) != state_sha256([b])
    b.load_state_dict(a.state_dict())
    assert state_sha256([a]) == state_sha256([b]) != state_sha256([a], "other pipeline")


@pytest.mark.slow
def test_cache_equals_recomputing_and_disk_is_reused(tmp_path, caplog):
    assert _run(tmp_path / "off", "train.feature_cache=off") == 0
    assert _run(tmp_path / "mem", "train.feature_cache=memory") == 0
    cache = tmp_path / "cache"
    assert _run(tmp_path / "d1", "train.feature_cache=disk", f"train.feature_cache_dir={cache}") == 0
    caplog.clear()
    with caplog.at_level("INFO", logger="engine.feature_cache"):
        assert _run(tmp_path / "d2", "train.feature_cache=disk", f"train.feature_cache_dir={cache}") == 0
    off = _rows(tmp_path / "off")
    for other in ("mem", "d1", "d2"):
        _close(off, _rows(tmp_path / other))
    lines = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(lines) == 2 and all(" 0 computed" in x for x in lines), lines  # everything read back from disk
    # the locked towers did not move
    a = torch.load(tmp_path / "off" / RUN / "fold0" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "d2" / RUN / "fold0" / "last.pth", weights_only=True)["model"]
    for k in a:
        if k.startswith(("image.", "text.")):
            assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_a_changed_image_is_computed_again(tmp_path, caplog):
    cache = tmp_path / "cache"
    disk = "train.feature_cache=disk"
    assert _run(tmp_path / "a", disk, f"train.feature_cache_dir={cache}", "train.epochs=1") == 0
    img = sorted((Path("data") / "demo_precomp" / "images").iterdir())[0]
    st = img.stat()
    try:
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        caplog.clear()
        with caplog.at_level("INFO", logger="engine.feature_cache"):
            assert _run(tmp_path / "b", disk, f"train.feature_cache_dir={cache}", "train.epochs=1") == 0
    finally:
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    image_line = next(r.getMessage() for r in caplog.records if "feature cache (image)" in r.getMessage())
    assert " 1 computed" in image_line, image_line
    # other weights (another seed's random init): another store, nothing read
    caplog.clear()
    with caplog.at_level("INFO", logger="engine.feature_cache"):
        assert _run(tmp_path / "c", disk, f"train.feature_cache_dir={cache}", "train.epochs=1", "train.seed=1") == 0
    assert all(" 0 read" in r.getMessage() for r in caplog.records if "feature cache" in r.getMessage())


@pytest.mark.slow
def test_resume_with_the_cache_is_exact(tmp_path):
    cache = f"train.feature_cache_dir={tmp_path / 'cache'}"
    assert _run(tmp_path / "a", "train.feature_cache=disk", cache, "train.epochs=3") == 0
    assert _run(tmp_path / "b", "train.feature_cache=disk", cache, "train.epochs=2") == 0
    last_b = tmp_path / "b" / RUN / "fold0" / "last.pth"
    assert train.main(["--resume", str(last_b), "--set", "train.epochs=3"]) == 0
    a = torch.load(tmp_path / "a" / RUN / "fold0" / "last.pth", weights_only=True)
    b = torch.load(last_b, weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_cached_batches_carry_no_pixels(tmp_path):
    from core.config import load_config
    from data.build import build_data, model_context, train_loader
    from engine.feature_cache import feature_plan
    from models.registry import build_model

    cfg = load_config(CFG)
    bundle = build_data(cfg.data, fold=0, source=CFG)
    model = build_model(cfg.model, model_context(bundle), CFG)
    plan = feature_plan(model, cfg)
    assert plan.image and plan.text
    loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=True, pixels=not plan.image,
                          pixel_splits=())
    batch = next(iter(loader))
    assert "images" not in batch and len(batch["filenames"]) == cfg.data.batch_size
    # an augmenting pipeline is not cached: its image tower runs on every batch
    from dataclasses import replace

    aug = replace(cfg, data=replace(cfg.data, transform="galr"))
    assert not feature_plan(model, aug).image and feature_plan(model, aug).text
