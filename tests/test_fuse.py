"""``attach(..., fuse=True)``: the optimizer's own ``weight_decay`` where it is exactly the
mode, equal to the hook path and to torch.optim's weight_decay, refused (with the reason)
where it is not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchpenalty as tp

SCHEDULE = tp.schedules.Linear(0.0, 0.1, steps=10)


def model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2)).to(dtype)


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g).to(dtype), torch.randn(16, 2, generator=g).to(dtype)


OPTIMIZERS = {  # name -> (mode, factory(params, lr))
    "SGD grad": ("grad", lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9)),
    "Adam grad": ("grad", lambda ps, lr: torch.optim.Adam(ps, lr=lr)),
    "AdamW decoupled": ("decoupled", lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0)),
    "Adam(decoupled_weight_decay) decoupled": (
        "decoupled",
        lambda ps, lr: torch.optim.Adam(ps, lr=lr, decoupled_weight_decay=True),
    ),
}


def train(name, *, fuse, strength=SCHEDULE, steps=20):
    mode, make = OPTIMIZERS[name]
    net = model()
    lr = torch.tensor(0.01)
    opt = make(net.parameters(), lr)
    handle = tp.Regularizer(net, tp.L2(strength)).attach(opt, mode=mode, fuse=fuse)
    x, y = data()
    for k in range(steps):
        lr.fill_(0.01 * (1 - k / steps))
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()], handle, opt


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_equals_the_hooks(name):
    got, handle, opt = train(name, fuse=True)
    ref, ref_handle, _ = train(name, fuse=False)
    assert handle.fused and not ref_handle.fused
    assert "fused into weight_decay" in repr(handle)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # the group holding the weights was split from the one holding biases and norms
    decayed = [g for g in opt.param_groups if g["weight_decay"]]
    assert len(decayed) == 1 and len(decayed[0]["params"]) == 2
    assert decayed[0]["weight_decay"] == pytest.approx(SCHEDULE(19))  # the last step's


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_equals_torch_weight_decay(name):
    got, _, _ = train(name, fuse=True, strength=0.05)
    _, make = OPTIMIZERS[name]
    net = model()
    lr = torch.tensor(0.01)
    opt = make(tp.param_groups(net, 0.05), lr)  # torch.optim's own weight_decay
    x, y = data()
    for k in range(20):
        lr.fill_(0.01 * (1 - k / 20))
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    ref = [p.detach() for p in net.parameters()]
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_remove_sets_weight_decay_back_to_zero_and_keeps_the_selection():
    _, handle, opt = train("AdamW decoupled", fuse=True, strength=0.05, steps=1)
    names = handle.regularizer.names
    decayed = [g for g in opt.param_groups if g["weight_decay"]]
    assert {id(p) for p in decayed[0]["params"]} == handle.param_ids()
    assert names == ["0.weight", "3.weight"]
    handle.remove()
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    assert not handle.active


def _attach(mode="grad", opt=None, penalty=None, **kw):
    net = model(kw.pop("dtype", torch.float32))
    opt = (opt or (lambda ps: torch.optim.SGD(ps, lr=0.1)))(net.parameters())
    reg = tp.Regularizer(net, penalty or tp.L2(0.1))
    return reg.attach(opt, mode=mode, fuse=True, **kw)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"penalty": tp.L1(0.1)}, r"every penalty must be tp.L2 \(weight_decay is L2\), got L1"),
        (
            {"opt": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0)},
            r"mode='grad' is the weight_decay of SGD or Adam, not of AdamW",
        ),
        (
            {"mode": "decoupled"},
            r"mode='decoupled' is the weight_decay of AdamW or Adam\(decoupled_weight_decay",
        ),
        ({"mode": "decoupled", "cautious": True}, r"mode must be 'grad' or 'decoupled' \(without"),
        ({"mode": "proximal", "penalty": tp.L2(0.1)}, r"mode must be 'grad' or 'decoupled'"),
        (
            {"opt": lambda ps: torch.optim.SGD(ps, lr=0.1, maximize=True)},
            r"maximize=True negates the gradient",
        ),
        (
            {"opt": lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.01)},
            r"param_groups\[0\]\['weight_decay'\] must be 0 to fuse the penalty into it, got 0.01",
        ),
        (
            {
                "mode": "decoupled",
                "opt": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0),
                "dtype": torch.bfloat16,
            },
            r"rounding must be 'nearest' \(what torch.optim does\).*got 'stochastic'",
        ),
        ({"fuse_value": "yes"}, r"fuse must be a bool"),
    ],
)
def test_fuse_refuses_what_is_not_exact(kwargs, match):
    if "fuse_value" in kwargs:
        net = model()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        with pytest.raises(TypeError, match=match):
            tp.Regularizer(net, tp.L2(0.1)).attach(opt, fuse=kwargs["fuse_value"])
        return
    with pytest.raises(ValueError, match=match):
        _attach(**kwargs)


def test_fuse_after_an_lr_scheduler_refuses_to_split():
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    with pytest.raises(ValueError, match=r"an LR scheduler already holds the groups"):
        tp.Regularizer(net, tp.L2(0.1)).attach(opt, mode="grad", fuse=True)
    # with groups that need no split (tp.param_groups), a scheduler is no obstacle
    opt = torch.optim.SGD(tp.param_groups(net, 0.0), lr=0.1)
    torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    assert tp.Regularizer(net, tp.L2(0.1)).attach(opt, mode="grad", fuse=True).fused


def test_check_capturable_refuses_a_fused_schedule():
    _, handle, opt = train("SGD grad", fuse=True, steps=1)
    with pytest.raises(ValueError, match=r"attach\(fuse=True\) with a scheduled strength"):
        handle.regularizer.check_capturable(opt)
