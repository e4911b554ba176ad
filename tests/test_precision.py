"""Low precision: decoupled/proximal steps on bf16/fp16 weights must not round the decay
away; values accumulate in fp32 under autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchpenalty as tp

LR, S, STEPS = 1e-3, 1e-2, 100


def bf16_ones(n=20_000, dtype=torch.bfloat16):
    return (
        nn.Linear(n // 100, 100, bias=False)
        .to(dtype)
        .requires_grad_(True)
        .apply(lambda m: nn.init.ones_(m.weight) if isinstance(m, nn.Linear) else None)
    )


def decay_steps(model, opt, steps):
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # the optimizer's update is 0: only the decay acts
        opt.step()


def test_torch_adamw_rounds_the_decay_away_on_bf16():
    model = bf16_ones()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=S)
    decay_steps(model, opt, STEPS)
    assert (model.weight == 1.0).all()  # the problem this module fixes


@pytest.mark.parametrize("mode", ["decoupled", "independent"])
def test_nearest_rounding_matches_torch(mode):
    model = bf16_ones()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    tp.Regularizer(model, tp.L2(S if mode == "decoupled" else S * LR)).attach(
        opt, mode=mode, rounding="nearest"
    )
    decay_steps(model, opt, STEPS)
    assert (model.weight == 1.0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compensated_rounding_is_exact(dtype):
    model = bf16_ones(dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # Adam's eps underflows in fp16
    handle = tp.Regularizer(model, tp.L2(S)).attach(opt, mode="decoupled", rounding="compensated")
    decay_steps(model, opt, STEPS)
    exact = (1 - LR * S) ** STEPS
    w = model.weight
    effective = w.float() + handle.residuals[id(w)]
    torch.testing.assert_close(effective, torch.full_like(effective, exact), rtol=0, atol=2e-6)
    decay_steps(model, opt, 200)
    exact = (1 - LR * S) ** 300
    assert (w == torch.tensor(exact).to(dtype)).all()  # the nearest representable value


def test_stochastic_rounding_is_right_on_average():
    torch.manual_seed(0)
    model = bf16_ones()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    tp.Regularizer(model, tp.L2(S)).attach(opt, mode="decoupled")  # stochastic by default
    decay_steps(model, opt, STEPS)
    exact = (1 - LR * S) ** STEPS
    assert model.weight.float().mean().item() == pytest.approx(exact, abs=1e-4)
    assert (model.weight != 1.0).any()


def test_proximal_l1_on_bf16_keeps_exact_zeros():
    torch.manual_seed(0)
    model = nn.Linear(50, 40, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.uniform_(-1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tp.Regularizer(model, tp.L1(0.5)).attach(opt, mode="proximal", rounding="compensated")
    before = model.weight.float().clone()
    model.weight.grad = torch.zeros_like(model.weight)
    opt.step()
    expected = torch.sign(before) * (before.abs() - 0.05).clamp_min(0)
    assert torch.equal(model.weight == 0, expected == 0)
    torch.testing.assert_close(model.weight.float(), expected, rtol=0, atol=4e-3)


def test_rounding_argument_is_checked():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"rounding must be one of 'stochastic', 'compensated', 'nearest', got 'up'",
    ):
        tp.Regularizer(model, tp.L2(1.0)).attach(opt, mode="decoupled", rounding="up")


def test_stochastic_round_is_unbiased():
    x = torch.linspace(0.5, 2.0, 1001, dtype=torch.float32).repeat(200)
    r = tp.functional.stochastic_round(
        x, torch.bfloat16, generator=torch.Generator().manual_seed(0)
    )
    assert r.dtype == torch.bfloat16
    err = (r.float() - x).view(200, -1).mean(0)
    assert err.abs().max() < 2e-3 and abs(err.mean().item()) < 1e-4
    exact = torch.tensor([1.0, 0.5, 2.0])
    assert torch.equal(tp.functional.stochastic_round(exact, torch.float16).float(), exact)


def test_values_under_autocast_accumulate_in_fp32():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    reg = tp.Regularizer(model, tp.L2(1.0))
    plain = reg()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 64))
        inside = reg()
    assert out.dtype == torch.bfloat16
    assert inside.dtype == torch.float32 and inside.item() == pytest.approx(plain.item(), rel=1e-6)
    inside.backward()  # gradient s * w in the weights' own dtype, not bf16-rounded
    assert model[1].weight.grad.dtype == torch.float32
    torch.testing.assert_close(model[1].weight.grad, model[1].weight.detach(), rtol=1e-6, atol=0)
