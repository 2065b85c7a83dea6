"""FISVL on the tiny config: forward/backward through the value-guided criterion on both sides of the switch,
the SFGS freezing fix and its upstream_compat switch, text = norm(text_proj(CLS)), FGIS graph nodes."""
import pytest
import torch
import torch.nn.functional as F

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


def test_text_is_normalised_projected_cls():
    _, model = build()
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=batch["tokens"], attention_mask=batch["attention_mask"])
        ref = F.normalize(model.text_proj(hidden.last_hidden_state[:, 0]), dim=-1)
        assert torch.allclose(model.encode_text(batch), ref, atol=1e-6)
        # upstream_compat: no attention mask
        model.compat = True
        hidden = model.text_encoder(input_ids=batch["tokens"])
        ref = F.normalize(model.text_proj(hidden.last_hidden_state[:, 0]), dim=-1)
        assert torch.allclose(model.encode_text(batch), ref, atol=1e-6)


def test_image_is_swin_cls_plus_graph_cls_node():
    _, model = build()
    model.eval()
    images = make_batch()["images"]
    with torch.no_grad():
        tokens = model.vision_proj(torch.cat([model.vision_encoder.forward_features(images).flatten(1, 2).mean(1,
                                   keepdim=True), model.vision_encoder.forward_features(images).flatten(1, 2)], 1))
        res = model._resnet(images)
        nodes = torch.cat([model.conv_proj(res["gap"])[:, None], model.sfgs(res["stem"])[:, None], tokens], 1)
        assert nodes.shape[1] == 3 + 16  # conv, loc, Swin CLS, 4x4 tokens
        for step in model.img_gcn:
            nodes = step(nodes)
        ref = F.normalize(tokens[:, 0] + model.head_img(nodes[:, 2]), dim=-1)
        assert torch.allclose(model.encode_image({"images": images}), ref, atol=1e-5)
