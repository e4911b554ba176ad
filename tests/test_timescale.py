"""timescale(): EMA timescales of the decay, checked by hand and against AdamW itself."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torchpenalty as tp
from torchpenalty.timescale import decay_per_step


def two_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


# (penalty, mode, group, expected per-step decay) by hand
CASES = [
    (tp.L2(0.1), "decoupled", {"lr": 1e-3}, 1e-4),
    (tp.L2(0.1), "independent", {"lr": 5e-4, "initial_lr": 1e-3}, 0.05),
    (tp.L2(0.1), "corrected", {"lr": 5e-4, "initial_lr": 1e-3}, 0.1 * 5e-4**2 / 1e-3),
    (
        tp.L2(0.1),
        "corrected",
        {"lr": 5e-4, "initial_lr": 1e-4, "max_lr": 2e-3},
        0.1 * 2.5e-7 / 2e-3,
    ),
    (tp.ElasticNet(0.2, l1_ratio=0.25), "decoupled", {"lr": 1e-2}, 1e-2 * 0.2 * 0.75),
    (tp.L2(lambda step: 0.5), "decoupled", {"lr": 0.1}, 0.05),
]


@pytest.mark.parametrize(("penalty", "mode", "group", "decay"), CASES)
def test_rows_by_hand(penalty, mode, group, decay):
    model = two_layer()
    reg = tp.Regularizer(model, penalty)
    opt = torch.optim.SGD(model.parameters(), lr=group["lr"])
    opt.param_groups[0].update(group)
    (row,) = tp.timescale(reg, opt, steps_per_epoch=250, mode=mode)
    assert row.names == ["0.weight", "2.weight"]
    assert row.decay == pytest.approx(decay, rel=1e-12)
    assert row.tau_iter == pytest.approx(1 / decay, rel=1e-12)
    assert row.tau_epoch == pytest.approx(1 / decay / 250, rel=1e-12)


def test_per_group_and_per_penalty():
    model = two_layer()
    reg = tp.Regularizer(model, {"0.*": tp.L2(0.1), "2.*": tp.L1(0.1)})
    opt = torch.optim.AdamW(
        [{"params": [model[0].weight], "lr": 1e-3}, {"params": [model[2].weight], "lr": 1e-2}],
        weight_decay=0.0,
    )
    rows = tp.timescale(reg, opt, steps_per_epoch=10)
    assert [(r.group, r.names) for r in rows] == [(0, ["0.weight"])]  # L1 has no timescale
    reg2 = tp.Regularizer(model, tp.L2(0.1))
    rows = tp.timescale(reg2, opt, steps_per_epoch=10)
    assert [(r.group, r.names, round(r.tau_iter)) for r in rows] == [
        (0, ["0.weight"], 10000),
        (1, ["2.weight"], 1000),
    ]


def test_zero_decay_is_an_infinite_timescale():
    model = two_layer()
    reg = tp.Regularizer(model, tp.L2(0.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (row,) = tp.timescale(reg, opt, steps_per_epoch=3)
    assert row.tau_iter == math.inf and row.tau_epoch == math.inf


def test_the_ema_reading_matches_adamw():
    """With zero gradients AdamW's weights decay as (1 - lr*s)**t: after tau_iter steps
    they are at exp(-1) of the start (to O(d))."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 5))
    model = nn.Module()
    model.w = w
    reg = tp.Regularizer(model, tp.L2(0.5), include="w")
    opt = torch.optim.AdamW([w], lr=0.02, weight_decay=0.5)
    (row,) = tp.timescale(reg, opt, steps_per_epoch=1)
    start = w.detach().clone()
    for _ in range(round(row.tau_iter)):
        w.grad = torch.zeros_like(w)
        opt.step()
    torch.testing.assert_close(w.detach(), start * (1 - row.decay) ** row.tau_iter)
    assert (w.detach() / start).mean().item() == pytest.approx(math.exp(-1), rel=0.01)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps_per_epoch": 0}, ValueError, "steps_per_epoch must be a finite number > 0, got 0"),
        ({"steps_per_epoch": 1, "mode": "grad"}, ValueError, "mode must be one of"),
        ({"steps_per_epoch": 1, "lr_max": -1.0}, ValueError, "lr_max must be"),
    ],
)
def test_errors(kwargs, error, match):
    model = two_layer()
    reg = tp.Regularizer(model, tp.L2(0.1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        tp.timescale(reg, opt, **kwargs)


def test_errors_no_timescale_and_not_an_optimizer():
    model = two_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="L2, L2SP or ElasticNet"):
        tp.timescale(tp.Regularizer(model, tp.L1(0.1)), opt, steps_per_epoch=1)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, got"):
        tp.timescale(tp.Regularizer(model, tp.L2(0.1)), [opt], steps_per_epoch=1)


# ----------------------------------------------------------------- transfer_strength
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 0.1),
        ({"new_dataset_size": 4000}, 0.025),  # 4x the data: 4x the steps per epoch
        ({"new_batch_size": 40}, 0.4),  # 4x the batch: 4x fewer steps
        ({"new_lr": 2e-3}, 0.05),  # 2x the lr: half the strength
        ({"new_lr": 2e-3, "new_dataset_size": 4000, "new_batch_size": 20}, 0.1 * 0.5 / 2),
    ],
)
def test_transfer_strength_by_hand(kwargs, expected):
    got = tp.transfer_strength(0.1, lr=1e-3, dataset_size=1000, batch_size=10, **kwargs)
    assert got == pytest.approx(expected, rel=1e-12)


def tau_epoch(s, lr, n, b):
    return 1.0 / (lr * s) / (n / b)


@given(
    s=st.floats(1e-4, 1.0),
    lr=st.floats(1e-5, 1e-1),
    n=st.integers(100, 10**7),
    b=st.integers(1, 4096),
    lr2=st.floats(1e-5, 1e-1),
    n2=st.integers(100, 10**7),
    b2=st.integers(1, 4096),
)
def test_transfer_strength_keeps_tau_epoch(s, lr, n, b, lr2, n2, b2):
    s2 = tp.transfer_strength(
        s, lr=lr, dataset_size=n, batch_size=b, new_lr=lr2, new_dataset_size=n2, new_batch_size=b2
    )
    assert tau_epoch(s2, lr2, n2, b2) == pytest.approx(tau_epoch(s, lr, n, b), rel=1e-9)


def test_transfer_strength_errors():
    with pytest.raises(ValueError, match="new_batch_size must be a finite number > 0, got 0"):
        tp.transfer_strength(0.1, lr=1e-3, dataset_size=10, batch_size=1, new_batch_size=0)
    with pytest.raises(ValueError, match="strength must be a finite number >= 0, got -1"):
        tp.transfer_strength(-1, lr=1e-3, dataset_size=10, batch_size=1)


def test_decay_per_step_lr_max_default_tracks_the_peak():
    # no initial_lr: the current lr is its own peak, so corrected == decoupled
    assert decay_per_step(0.1, {"lr": 0.01}, "corrected") == pytest.approx(0.001)
