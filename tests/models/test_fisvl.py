"""FISVL on the tiny config: forward/backward through the value-guided criterion on both sides of the switch,
the SFGS freezing fix and its upstream_compat switch, text = norm(text_proj(CLS)), FGIS graph nodes."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.config import load_config
from losses import build_criterion
from models.registry import build_model
from tests.models.test_pir import CTX, make_batch

CFG = "configs/tests/tiny_fisvl.yaml"


def build(*sets: str):
    torch.manual_seed(0)
    cfg = load_config(CFG, list(sets))
    return cfg, build_model(cfg.model, CTX)


@pytest.mark.parametrize("epoch,terms", [(0, {"infonce", "affiliation", "fisvl_scene"}),
                                         (3, {"affiliation", "weighted_infonce"})])
def test_forward_backward_both_schedule_phases(epoch, terms):
    cfg, model = build()
    model.train()
    batch = make_batch()
    out = model(batch)
    assert out["img_emb"].shape == out["txt_emb"].shape == (6, 64)
    assert torch.allclose(out["img_emb"].norm(dim=-1), torch.ones(6), atol=1e-5)
    losses = build_criterion(cfg.loss)(out, batch, epoch)
    assert set(losses) == {"loss"} | {f"loss_{t}" for t in terms} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("temp", "temp2", "sfgs.fc.linear.weight", "sfgs.conv_filter.0.weight", "img_gcn.1.sim_graph_w.weight",
                 "head_img.weight", "conv_proj.weight", "text_proj.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(g is None for n, g in grads.items() if n.startswith("conv_encoder."))


def test_sfgs_freeze_is_a_flag_and_follows_upstream_compat():
    _, model = build()
    assert all(p.requires_grad for p in model.sfgs.parameters())
    assert not any(p.requires_grad for p in model.conv_encoder.parameters())
    for sets in (["model.params.freeze_sfgs=true"], ["model.upstream_compat=true"]):
        _, frozen = build(*sets)
        assert not any(p.requires_grad for p in frozen.sfgs.parameters())
    assert frozen.sfgs.wsa.mhatt.upstream_order and not model.sfgs.wsa.mhatt.upstream_order


class _StubBert(nn.Module):
    """Last layer: token 0 of caption i is [3, 4 (i + 1), 0, ...], every other token 100 everywhere."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden, self.masks = hidden, []

    def forward(self, input_ids, attention_mask=None):
        self.masks.append(attention_mask)
        b, L = input_ids.shape
        h = torch.full((b, L, self.hidden), 100.0)
        h[:, 0] = 0.0
        h[:, 0, 0] = 3.0
        h[:, 0, 1] = 4.0 * torch.arange(1, b + 1)
        return SimpleNamespace(last_hidden_state=h)


def test_text_is_normalised_projected_cls():
    """Hand-computed: text_proj keeps the first two of 32 hidden units, so caption i gives [3, 4(i+1)] / norm."""
    for compat in (False, True):
        _, model = build(*(["model.upstream_compat=true"] if compat else []))
        model.eval()
        model.text_encoder = _StubBert(32)
        with torch.no_grad():
            model.text_proj.weight.zero_()
            model.text_proj.bias.zero_()
            model.text_proj.weight[0, 0] = model.text_proj.weight[1, 1] = 1.0
        batch = make_batch()
        out = model.encode_text(batch)
        expected = torch.zeros(6, 64)
        for i in range(6):
            n = math.sqrt(9 + 16 * (i + 1) ** 2)
            expected[i, 0], expected[i, 1] = 3 / n, 4 * (i + 1) / n
        assert torch.allclose(out, expected, atol=1e-6)
        mask = model.text_encoder.masks[-1]  # upstream_compat attends to padding (no mask)
        assert (mask is None) if compat else torch.equal(mask, batch["attention_mask"])


class _StubSwin(nn.Module):
    """Last stage of 2 x 2 tokens; token k (row-major, 1-based) is k * e0."""

    def forward_features(self, images):
        b = images.shape[0]
        x = torch.zeros(b, 2, 2, 64)
        x[..., 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        return x


class _Mix(nn.Module):
    """A graph step stand-in: node 2 <- node 0 + 2 node 1 + node 2 (records the node count)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.shape[1])
        y = x.clone()
        y[:, 2] = x[:, 0] + 2 * x[:, 1] + x[:, 2]
        return y


def test_image_is_swin_cls_plus_graph_cls_node():
    """Hand-computed wiring: nodes [conv = e1, loc = e2, Swin mean = 2.5 e0, 4 tokens]; two mixing steps make node 2
    2.5 e0 + 2 e1 + 4 e2; the image is norm(Swin mean + head(node 2)) = [5, 2, 4] / sqrt(45) with head = identity."""
    _, model = build()
    model.eval()
    e = torch.eye(64)
    model.vision_encoder, model.vision_proj = _StubSwin(), nn.Identity()
    model._resnet = lambda images: {"stem": images, "gap": e[1].expand(images.shape[0], 64)}
    model.conv_proj, model.head_img = nn.Identity(), nn.Identity()
    model.sfgs = _Const(e[2])
    model.img_gcn = nn.ModuleList([_Mix(), _Mix()])
    out = model.encode_image({"images": torch.zeros(3, 3, 32, 32)})
    expected = torch.zeros(3, 64)
    expected[:, :3] = torch.tensor([5.0, 2.0, 4.0]) / math.sqrt(45)
    assert torch.allclose(out, expected, atol=1e-6)
    assert [step.seen for step in model.img_gcn] == [[3 + 4], [3 + 4]]  # conv, loc, Swin mean, 2 x 2 tokens


class _Const(nn.Module):
    def __init__(self, v: torch.Tensor) -> None:
        super().__init__()
        self.v = v

    def forward(self, stem):
        return self.v.expand(stem.shape[0], -1)
