"""VSE's timm backbone weights go through models/encoders/pretrained.py: a file that does not fill the trunk stops
the run (exit 2, one line naming the file and model.params.backbone_weights); a right file really loads."""
import logging

import pytest
import timm
import torch
import torchvision

import train
from core.config import load_config
from core.errors import DataError
from core.context import ModelContext
from models.registry import build_model

KEY = "model.params.backbone_weights"


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def run_args(tmp_path, weights) -> list[str]:
    return ["--config", "configs/tests/tiny_vse.yaml", "--output-dir", str(tmp_path / "runs"),
            "--set", "model.pretrained=true", "--set", f"{KEY}={weights}", "--set", "data.max_images=40"]


def test_empty_weights_file_exits_2_naming_it(caplog, tmp_path):
    weights = tmp_path / "empty.pth"
    weights.write_bytes(b"")
    assert train.main(run_args(tmp_path, weights)) == 2
    lines = error_lines(caplog)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"{weights} ({KEY})" in lines[0]
    assert not list((tmp_path / "runs").rglob("*.pth"))


def test_other_architecture_exits_2_naming_it(caplog, tmp_path):
    # a real ResNet file, but not timm's test_resnet (3-conv 16-channel stem, other widths): no tensor fits
    weights = tmp_path / "resnet18_torchvision.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    assert train.main(run_args(tmp_path, weights)) == 2
    lines = error_lines(caplog)
    assert len(lines) == 1
    assert f"{weights} ({KEY}) fills only 0 of 75 weight tensors" in lines[0]
    assert not list((tmp_path / "runs").rglob("*.pth"))


def test_right_file_fills_the_backbone(tmp_path):
    torch.manual_seed(3)
    net = timm.create_model("test_resnet")  # with its classifier, as timm's released files are
    for t in net.state_dict().values():
        if torch.is_floating_point(t):
            t.uniform_(-1, 1)  # values no random init would give
    weights = tmp_path / "test_resnet.pth"
    torch.save(net.state_dict(), weights)
    cfg = load_config("configs/tests/tiny_vse.yaml", ["model.pretrained=true", f"{KEY}={weights}"])
    model = build_model(cfg.model, ModelContext(vocab_words=["a", "b"], vocab_size=3))
    want = net.state_dict()
    got = model.backbone.state_dict()
    assert set(got) == set(want) - {"fc.weight", "fc.bias"}
    for k, v in got.items():
        assert torch.equal(v, want[k]), k


def test_wrong_file_through_build_model_is_a_data_error(tmp_path):
    weights = tmp_path / "effnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    cfg = load_config("configs/tests/tiny_vse.yaml", ["model.pretrained=true", f"{KEY}={weights}"])
    with pytest.raises(DataError, match=rf"{weights.name} \({KEY}\) fills only 0 of 75"):
        build_model(cfg.model, ModelContext(vocab_words=["a", "b"], vocab_size=3))


def test_partial_file_below_90_percent_is_refused(tmp_path):
    """The right family without its last stage: fewer than 90 % of the trunk's float tensors are filled."""
    state = timm.create_model("test_resnet").state_dict()
    n_layer4 = sum(1 for k, v in state.items() if k.startswith("layer4.") and torch.is_floating_point(v))
    assert 75 - n_layer4 < 0.9 * 75
    weights = tmp_path / "no_layer4.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, weights)
    cfg = load_config("configs/tests/tiny_vse.yaml", ["model.pretrained=true", f"{KEY}={weights}"])
    with pytest.raises(DataError, match=rf"fills only {75 - n_layer4} of 75 weight tensors"):
        build_model(cfg.model, ModelContext(vocab_words=["a", "b"], vocab_size=3))
