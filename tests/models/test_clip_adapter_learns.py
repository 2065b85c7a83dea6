"""Learning tests on the demo data: a tiny CLIP fine-tuned briefly (clip_finetune) learns; evaluated zero-shot from
its saved weights (clip_zeroshot through test.py --config) it keeps that score; the MRS-Adapter trained on top of the
same frozen weights (clip_adapter + HMMC) beats that zero-shot score, and only the adapter changes.

Why the fine-tuning step: a random tiny CLIP's zero-shot score is chance, so "beats zero-shot" would say little.
Chance mR on the demo test split (100 images x 5 captions) is about 5.3.
"""
import json

import pytest
import torch

import test as test_entry
import train

SMALL = ["--set", "data.max_images=300"]  # 240 train images (1200 captions), 60 val, the full 100-image test split
CHANCE_MR = 5.3


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(run folder, open_clip-format weights file, test mR) of configs/tests/tiny_clip_finetune.yaml (2 epochs)."""
    out = tmp_path_factory.mktemp("clip_ft")
    assert train.main(["--config", "configs/tests/tiny_clip_finetune.yaml", "--output-dir", str(out)] + SMALL) == 0
    run = out / "tiny_clip_finetune" / "fold0"
    state = torch.load(run / "best.pth", weights_only=True)["model"]
    weights = out / "tiny_clip.pt"  # the fine-tuned CLIP as a plain open_clip state dict (like RemoteCLIP's files)
    torch.save({k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.")}, weights)
    return run, weights, json.loads((run / "test.json").read_text())["mR"]


@pytest.mark.slow
def test_tiny_clip_finetune_learns(tiny_clip):
    _, _, mr = tiny_clip
    assert mr > CHANCE_MR + 7, mr


@pytest.mark.slow
def test_adapter_beats_its_own_zero_shot(tiny_clip, tmp_path):
    _, weights, ft_mr = tiny_clip
    zs_json = tmp_path / "zs.json"
    assert test_entry.main(["--config", "configs/tests/tiny_clip_zeroshot.yaml", "--set", "model.pretrained=true",
                            "--set", f"model.params.weights={weights}", "--json", str(zs_json)] + SMALL) == 0
    zs_mr = json.loads(zs_json.read_text())["mR"]
    assert zs_mr == pytest.approx(ft_mr, abs=1e-6)  # the same weights through the local-file path

    assert train.main(["--config", "configs/tests/tiny_clip_adapter.yaml", "--output-dir", str(tmp_path),
                       "--set", "model.pretrained=true", "--set", f"model.params.weights={weights}"] + SMALL) == 0
    run = tmp_path / "tiny_clip_adapter" / "fold0"
    ad_mr = json.loads((run / "test.json").read_text())["mR"]
    assert ad_mr > zs_mr + 4.0, (zs_mr, ad_mr)
    # CLIP stayed frozen: every CLIP tensor of the adapter run equals the loaded weights
    state = torch.load(run / "best.pth", weights_only=True)["model"]
    source = torch.load(weights, weights_only=True)
    for k, v in source.items():
        assert torch.equal(state[f"clip.{k}"], v), k
    assert any(k.startswith("adapter.") and v.abs().sum() > 0 for k, v in state.items() if "up" in k)
