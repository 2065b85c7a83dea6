"""Optimizer groups and per-step schedules against hand-computed values."""
import pytest
import torch
from torch import nn

from core.config import OptimCfg
from engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)


def test_groups_no_decay_and_lr_mult():
    cfg = OptimCfg(lr=1.0, weight_decay=0.1, lr_mult={"backbone": 0.1})
    groups = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in param_groups(cfg, Net())}
    # backbone weight (decay) / backbone bias (no decay) at 0.1x; head weight decays; head bias + norm w/b do not
    assert groups == {(0.1, 0.1): 1, (0.1, 0.0): 1, (1.0, 0.1): 1, (1.0, 0.0): 3}


def test_frozen_parameters_are_excluded():
    net = Net()
    net.backbone.requires_grad_(False)
    n = sum(len(g["params"]) for g in param_groups(OptimCfg(), net))
    assert n == 4


def test_step_decay_matches_upstream_rule():
    f = lr_factor(OptimCfg(scheduler="step", step_epochs=20, gamma=0.7), steps_per_epoch=3, epochs=70)
    # upstream: lr *= 0.7 at the start of 0-based epochs 19, 39, 59
    per_epoch = [f(e * 3) for e in range(70)]
    assert per_epoch[18] == 1.0 and per_epoch[19] == pytest.approx(0.7) and per_epoch[39] == pytest.approx(0.49)
    assert per_epoch[59] == pytest.approx(0.343) and per_epoch[58] == pytest.approx(0.49)


def test_warmup_linear():
    f = lr_factor(OptimCfg(scheduler="warmup_linear", warmup_ratio=0.1), steps_per_epoch=10, epochs=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(99) == pytest.approx(1 / 90)


def test_scheduler_steps_lr():
    net = Net()
    opt = build_optimizer(OptimCfg(lr=0.5, scheduler="warmup_linear", warmup_ratio=0.5), net)
    sched = build_scheduler(OptimCfg(lr=0.5, scheduler="warmup_linear", warmup_ratio=0.5), opt, 2, 2)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.5, 0.25])


def test_bad_names():
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer(OptimCfg(name="lamb"), Net())
    with pytest.raises(ValueError, match="optim.scheduler"):
        lr_factor(OptimCfg(scheduler="poly"), 1, 1)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_optimizer_gives_the_same_updates(name):
    """optim.fused selects PyTorch's fused kernel; its parameters follow the default loop up to float rounding."""
    runs = []
    for fused in (False, True):
        torch.manual_seed(0)
        net = Net()
        start = [p.detach().clone() for p in net.parameters()]
        opt = build_optimizer(OptimCfg(name=name, lr=0.01, weight_decay=0.01, fused=fused), net)
        assert all(g.get("fused") == (True if fused else None) for g in opt.param_groups)
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            for p in net.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        runs.append([p.detach().clone() for p in net.parameters()])
    assert min(float((a - b).abs().max()) for a, b in zip(runs[0], start)) > 1e-3  # every parameter moved
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_optimizer_state_survives_a_weights_only_round_trip(tmp_path):
    """Exact resume with optim.fused: a state saved mid-run and loaded with weights_only=True continues bit-equal."""
    def run(net, opt, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            for p in net.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    cfg = OptimCfg(name="adam", lr=0.01, fused=True)
    torch.manual_seed(0)
    net = Net()
    opt = build_optimizer(cfg, net)
    run(net, opt, 3, 1)
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ck.pth")
    run(net, opt, 3, 2)
    state = torch.load(tmp_path / "ck.pth", weights_only=True)
    resumed = Net()
    resumed.load_state_dict(state["model"])
    opt2 = build_optimizer(cfg, resumed)
    opt2.load_state_dict(state["optimizer"])
    run(resumed, opt2, 3, 2)
    for a, b in zip(net.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
