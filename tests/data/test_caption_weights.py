"""data.cap_weight_file: per-caption weights reach batch["cap_weight"] in caption order."""
import json

import pytest

from data.build import build_data, train_loader
from data.caption_weights import load_caption_weights
from core.config import load_config


def test_weights_reach_the_batch(tmp_path):
    cfg = load_config("configs/tests/tiny_vse.yaml", ["data.max_images=20", "data.batch_size=10"])
    bundle = build_data(cfg.data)
    caps = bundle.train.captions
    weights = {c: 1.0 + i / 100 for i, c in enumerate(caps)}
    (tmp_path / "w.json").write_text(json.dumps(weights))
    cfg = load_config("configs/tests/tiny_vse.yaml", ["data.max_images=20", "data.batch_size=10",
                                                       f"data.cap_weight_file={tmp_path / 'w.json'}"])
    loader = train_loader(build_data(cfg.data), cfg.data, distributed=False, seed=0, deterministic=True)
    loader.sampler.set_epoch(0)
    batch = next(iter(loader))
    expect = [weights[caps[j]] for j in batch["cap_ids"].tolist()]
    assert batch["cap_weight"].tolist() == pytest.approx(expect)


def test_list_length_must_match(tmp_path):
    (tmp_path / "w.json").write_text("[1.0, 2.0]")
    with pytest.raises(ValueError, match="2 weights for 3 captions"):
        load_caption_weights(tmp_path / "w.json", ["a", "b", "c"])
