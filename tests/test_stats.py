"""stats(): every number against a hand or torch computation, the update against the
change the optimizer actually made, the steady state against a simulated equilibrium."""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch
from torch import nn

import torchpenalty as tp


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Linear(3, 2))


def backward(model, n=16):
    torch.manual_seed(1)
    x, y = torch.randn(n, 6), torch.randn(n, 2)
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()


def test_norms_zeros_and_sigma_by_torch():
    model = net()
    with torch.no_grad():
        model[0].weight[:2] = 0.0
    backward(model)
    model[3].weight.grad = None  # no gradient: nan
    reg = tp.Regularizer(model, tp.L2(0.1))
    out = tp.stats(reg, singular_values=True)
    assert [t.name for t in out.tensors] == ["0.weight", "2.weight", "3.weight"]
    for t, p in zip(out.tensors, [model[0].weight, model[2].weight, model[3].weight], strict=True):
        assert t.group is None and t.numel == p.numel()
        assert t.weight_norm == pytest.approx(p.norm().item(), rel=1e-6)
        assert t.sigma_max == pytest.approx(torch.linalg.svdvals(p)[0].item(), rel=1e-5)
        assert t.zero_fraction == (p == 0).sum().item() / p.numel()
        assert math.isnan(t.decay) and math.isnan(t.update_norm) and t.idle_rows is None
        if p.grad is None:
            assert math.isnan(t.grad_norm)
        else:
            assert t.grad_norm == pytest.approx(p.grad.norm().item(), rel=1e-6)
    assert out.tensors[0].zero_fraction == pytest.approx(12 / 30)
    (g,) = out.groups
    assert g.names == ["0.weight", "2.weight", "3.weight"] and g.numel == 30 + 15 + 6
    expected = math.sqrt(sum(t.weight_norm**2 for t in out.tensors))
    assert g.weight_norm == pytest.approx(expected)
    assert g.zero_fraction == pytest.approx(12 / 51)
    assert g.sigma_max == max(t.sigma_max for t in out.tensors)


OPTIMIZERS = [
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1)),
    ("sgd_momentum", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    ("sgd_nesterov", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-2)),
    ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0)),
    ("amsgrad", lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0, amsgrad=True)),
]


@pytest.mark.parametrize("chunk", [1 << 24, 7], ids=["whole", "chunked"])
@pytest.mark.parametrize("make", [m for _, m in OPTIMIZERS], ids=[n for n, _ in OPTIMIZERS])
def test_update_is_the_change_the_optimizer_made(make, chunk, monkeypatch):
    monkeypatch.setattr(sys.modules["torchpenalty.stats"], "_CHUNK", chunk)
    model = net()
    reg = tp.Regularizer(model, tp.L2(0.1))
    opt = make(model.parameters())
    for _ in range(3):  # momentum and bias corrections past their first step
        backward(model)
        before = [p.detach().clone() for p in reg.parameters()]
        opt.step()
    out = tp.stats(reg, opt)
    for t, p, b in zip(out.tensors, reg.parameters(), before, strict=True):
        moved = (p.detach() - b).norm().item()
        assert t.update_norm == pytest.approx(moved, rel=1e-4)
        assert t.update_ratio == pytest.approx(moved / p.norm().item(), rel=1e-4)
        lr = opt.param_groups[0]["lr"]
        assert t.decay == pytest.approx(lr * 0.1)
        assert t.predicted_ratio == pytest.approx(math.sqrt(lr * 0.1 * (2 - lr * 0.1)))


def test_unknown_optimizer_reports_nan_update():
    model = net()
    reg = tp.Regularizer(model, tp.L2(0.1))
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    backward(model)
    opt.step()
    out = tp.stats(reg, opt)
    assert all(math.isnan(t.update_norm) and t.decay == pytest.approx(1e-4) for t in out.tensors)


@pytest.mark.parametrize(
    ("mode", "decay"),
    [("decoupled", 0.05 * 0.1), ("independent", 0.5 * 0.1), ("corrected", 0.1 * 0.05**2 / 0.1)],
)
def test_decay_per_mode_and_handle(mode, decay):
    model = net()
    reg = tp.Regularizer(model, tp.L2(0.1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["initial_lr"] = 0.1
    opt.param_groups[0]["lr"] = 0.05
    assert tp.stats(reg, opt, mode=mode).groups[0].decay == pytest.approx(decay)
    if mode != "corrected":  # an AttachHandle brings its mode
        with reg.attach(opt, mode=mode) as handle:
            assert tp.stats(reg, handle).groups[0].decay == pytest.approx(decay)
    assert math.isnan(tp.stats(reg, opt, mode="grad").groups[0].decay)


def test_groups_split_by_optimizer_group_and_penalty():
    model = net()
    reg = tp.Regularizer(model, {"0.*": tp.L2(0.1), "*": tp.L1(0.01)})
    opt = torch.optim.SGD(
        [{"params": [model[0].weight, model[2].weight], "lr": 0.1}, {"params": [model[3].weight]}],
        lr=0.2,
    )
    out = tp.stats(reg, opt)
    assert [(g.group, g.names) for g in out.groups] == [
        (0, ["0.weight"]),
        (0, ["2.weight"]),
        (1, ["3.weight"]),
    ]
    assert out.groups[0].decay == pytest.approx(0.01)
    assert math.isnan(out.groups[1].decay)  # L1: not a multiplicative decay


def test_steady_state_prediction_on_a_scale_invariant_walk():
    """Updates orthogonal to w of constant size (a weight followed by a normalization
    layer under SGD): the norm settles where ||u|| / ||w|| = sqrt(d (2 - d))."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(400) * 5)
    holder = nn.Module()
    holder.w = w
    reg = tp.Regularizer(holder, tp.L2(0.5), include="w")
    opt = torch.optim.SGD([w], lr=0.02)  # d = 0.01
    handle = reg.attach(opt, mode="decoupled")
    for _ in range(3000):
        g = torch.randn(400)
        g -= (g @ w.detach()) / (w.detach() @ w.detach()) * w.detach()
        w.grad = g / g.norm()
        opt.step()
    t = tp.stats(reg, handle).tensors[0]
    assert t.update_ratio == pytest.approx(t.predicted_ratio, rel=0.02)
    assert t.weight_norm == pytest.approx(0.02 / math.sqrt(0.01 * 1.99), rel=0.02)


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(self.emb(x))


def test_idle_embedding_rows_warn_and_exclude_fixes():
    model = LM()
    model(torch.tensor([[1, 2, 2, 5]])).sum().backward()
    reg = tp.Regularizer(model, tp.L2(0.1), include="*weight")
    with pytest.warns(RuntimeWarning, match="7 rows of the embedding 'emb.weight' got no gradient"):
        out = tp.stats(reg)
    assert [t.idle_rows for t in out.tensors] == [7, None]
    quiet = tp.Regularizer(model, tp.L2(0.1), include="*weight", exclude=nn.Embedding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quiet.names == ["proj.weight"] and tp.stats(quiet).tensors[0].idle_rows is None
        tp.stats(tp.Regularizer(model, tp.L2(0.0), include="*weight"))  # no decay, no warning


def test_low_precision_weights_fp32_norms():
    model = net().to(torch.bfloat16)
    reg = tp.Regularizer(model, tp.L2(0.1))
    t = tp.stats(reg).tensors[0]
    assert t.weight_norm == pytest.approx(model[0].weight.float().norm().item(), rel=1e-6)


def test_errors():
    model = net()
    reg = tp.Regularizer(model, tp.L2(0.1))
    with pytest.raises(
        TypeError, match="optimizer must be a torch.optim.Optimizer or an AttachHandle"
    ):
        tp.stats(reg, "adam")
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer must hold at least one parameter"):
        tp.stats(reg, other)
