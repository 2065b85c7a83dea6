"""SFGS (SWAN / FISVL scene fine-grained sensing branch): shapes, a functional reference, the attention-order quirk
and the upstream key layout."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.encoders.sfgs import MHAtt, SFGS, convert_sfgs_upstream
from tests.upstream_keys import read_upstream_keys



def _reference(m: SFGS, x: torch.Tensor) -> torch.Tensor:
    """Independent functional re-computation of SFGS in eval mode (textbook attention order)."""
    def cbr(seq, t, stride):
        conv, bn = seq[0], seq[1]
        t = F.conv2d(t, conv.weight, stride=stride)
        t = (t - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
        return F.relu(t * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])

    t = cbr(m.conv_filter, x, 1)
    b, g = x.shape[0], m.grid
    maps = [F.adaptive_avg_pool2d(cbr(blk, t, s), g).reshape(b, -1, g * g)
            for blk, s in ((m.conv2d_block_11, 1), (m.conv2d_block_33, 3), (m.conv2d_block_55, 5))]
    tok = F.relu(F.linear(torch.cat(maps, 1), m.fc.linear.weight, m.fc.linear.bias))
    att = m.wsa.mhatt
    h, d = att.heads, att.dim // att.heads
    split = lambda z: z.view(b, -1, h, d).transpose(1, 2)  # noqa: E731
    q, k, v = (split(F.linear(tok, lin.weight, lin.bias)) for lin in (att.linear_q, att.linear_k, att.linear_v))
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
    a = F.linear(a.transpose(1, 2).reshape(b, -1, att.dim), att.linear_merge.weight, att.linear_merge.bias)
    y = F.layer_norm(tok + a, (att.dim,), m.wsa.norm1.weight, m.wsa.norm1.bias)
    net = m.wsa.ffn.net
    f = F.linear(F.gelu(F.linear(y, net[0].weight, net[0].bias)), net[3].weight, net[3].bias)
    y = F.layer_norm(y + f, (att.dim,), m.wsa.norm2.weight, m.wsa.norm2.bias)
    fused = torch.einsum("td,btc->bdc", m.wsa.fmp_weight[0], y)  # Wᵀ X
    return fused.mean(1)


def _randomise_bn(m: torch.nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("side", [64, 56])
def test_sfgs_matches_functional_reference(side: int) -> None:
    torch.manual_seed(0)
    m = SFGS(in_channels=8, dim=32, mid=4, grid=16, dropout=0.1, heads=4).eval()
    _randomise_bn(m)
    x = torch.randn(2, 8, side, side)
    with torch.no_grad():
        out = m(x)
        ref = _reference(m, x)
    assert out.shape == (2, 32)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_full_size_shapes_swan_and_fisvl_inputs() -> None:
    torch.manual_seed(0)
    m = SFGS().eval()
    assert m.wsa.fmp_weight.shape == (1, 128, 512) and m.fc.linear.weight.shape == (512, 256)
    with torch.no_grad():
        for side in (64, 56):  # 256 px (SWAN) and 224 px (FISVL: the 5x5/s5 map is 11x11, pooled up to 16x16)
            assert m(torch.randn(1, 64, side, side)).shape == (1, 512)


def test_adaptive_pool_upsamples_11_to_16_as_expected() -> None:
    # hand case for the 56x56 input: 11 cells -> 16 cells; output cell i averages input cells
    # floor(11 i / 16) .. ceil(11 (i + 1) / 16) - 1
    row = torch.arange(11.0).view(1, 1, 1, 11)
    out = F.adaptive_avg_pool2d(row, (1, 16)).flatten()
    expect = [sum(range(math.floor(11 * i / 16), math.ceil(11 * (i + 1) / 16))) /
              (math.ceil(11 * (i + 1) / 16) - math.floor(11 * i / 16)) for i in range(16)]
    torch.testing.assert_close(out, torch.tensor(expect))
    m = SFGS(in_channels=4, dim=16, mid=2, grid=16, heads=2)
    assert m.conv2d_block_55[0](torch.zeros(1, 2, 56, 56)).shape[-1] == 11


def test_upstream_attention_order_is_a_relabelling() -> None:
    """Upstream computes softmax(K Vᵀ/√d)·Q; that equals textbook attention with q<-k, k<-v, v<-q projections."""
    torch.manual_seed(1)
    quirk = MHAtt(dim=8, heads=2, dropout=0.0, upstream_order=True)
    plain = MHAtt(dim=8, heads=2, dropout=0.0, upstream_order=False)
    plain.linear_q.load_state_dict(quirk.linear_k.state_dict())
    plain.linear_k.load_state_dict(quirk.linear_v.state_dict())
    plain.linear_v.load_state_dict(quirk.linear_q.state_dict())
    plain.linear_merge.load_state_dict(quirk.linear_merge.state_dict())
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(quirk(x, x, x), plain(x, x, x))
    # hand formula for the quirk with one head
    one = MHAtt(dim=4, heads=1, dropout=0.0, upstream_order=True)
    y = torch.randn(1, 3, 4)
    k, v, q = one.linear_k(y), one.linear_v(y), one.linear_q(y)
    expect = one.linear_merge(torch.softmax(k @ v.transpose(1, 2) / 2.0, -1) @ q)
    torch.testing.assert_close(one(y, y, y), expect)
    assert not torch.allclose(MHAtt(4, 1, 0.0)(y, y, y), one(y, y, y))


def test_mhatt_takes_q_k_v_and_masks_keys() -> None:
    """Queries and keys of different lengths; a masked key gets no weight (one head, hand formula)."""
    torch.manual_seed(2)
    att = MHAtt(dim=4, heads=1, dropout=0.0)
    q, k, v = torch.randn(1, 2, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    w = torch.softmax(att.linear_q(q) @ att.linear_k(k).transpose(1, 2) / 2.0, -1)
    torch.testing.assert_close(att(q, k, v), att.linear_merge(w @ att.linear_v(v)))
    keep = torch.tensor([[True, True, False]])
    w2 = torch.softmax(att.linear_q(q) @ att.linear_k(k[:, :2]).transpose(1, 2) / 2.0, -1)
    torch.testing.assert_close(att(q, k, v, keep), att.linear_merge(w2 @ att.linear_v(v[:, :2])))


@pytest.mark.parametrize("method,cf,sf", [("swan", "image_encoder.conv_filter.", "sfgs."),
                                          ("fisvl", "conv_encoder.loc_fea1.conv_filter.",
                                           "conv_encoder.loc_fea1.sfgs.")])
def test_upstream_keys_map_onto_sfgs(method: str, cf: str, sf: str) -> None:
    keys = read_upstream_keys(method)
    state = {k: torch.randn(s) if s else torch.tensor(3) for k, s in keys.items()}
    converted, used = convert_sfgs_upstream(state, cf, sf, "x.")
    own = {f"x.{k}": v for k, v in SFGS().state_dict().items()}
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    assert len(used) == len(own)
    assert all(torch.equal(converted[f"x.{k[len(sf):]}"], state[k]) for k in used if k.startswith(sf))


def test_mhatt_loads_checkpoints_with_the_old_projection_names() -> None:
    """rsitr checkpoints written before the single attention class named GaLR's projections v/k/q/merge."""
    torch.manual_seed(0)
    new = MHAtt(dim=8, heads=2, dropout=0.0)
    old_state = {k.replace("linear_", ""): v.clone() for k, v in new.state_dict().items()}
    assert set(old_state) == {f"{n}.{kind}" for n in ("v", "k", "q", "merge") for kind in ("weight", "bias")}
    fresh = MHAtt(dim=8, heads=2, dropout=0.0)
    fresh.load_state_dict(old_state)
    x = torch.randn(2, 3, 8)
    assert torch.equal(fresh(x, x, x), new(x, x, x))
