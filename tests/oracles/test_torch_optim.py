"""Trajectories against torch.optim: L2 in the loss == grad mode == SGD(weight_decay) on
the selected parameters; decoupled L2 on Adam == AdamW; the lr-independent mode ==
AdamW with weight_decay / initial_lr."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchpenalty as tp

STEPS = 25


def tutorial_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 5)).double()


def data(seed=1, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(
        n, 5, generator=g, dtype=torch.float64
    )


def train(model, opt, *, reg=None, loss_mode=False, steps=STEPS, sched=None):
    x, y = data()
    for i in range(steps):
        opt.zero_grad()
        xb, yb = x[i % 4 :: 4], y[i % 4 :: 4]
        loss = nn.functional.mse_loss(model(xb), yb)
        if loss_mode:
            loss = loss + reg()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return model


def assert_same(a, b, atol):
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=atol, msg=n)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_l2_loss_mode_eq_grad_mode_eq_sgd_weight_decay(momentum):
    s = 0.05
    base = tutorial_net()
    m_loss, m_grad, m_sgd = (copy.deepcopy(base) for _ in range(3))

    reg = tp.Regularizer(m_loss, tp.L2(s))
    train(
        m_loss,
        torch.optim.SGD(m_loss.parameters(), lr=0.1, momentum=momentum),
        reg=reg,
        loss_mode=True,
    )

    opt = torch.optim.SGD(m_grad.parameters(), lr=0.1, momentum=momentum)
    tp.Regularizer(m_grad, tp.L2(s)).attach(opt, mode="grad")
    train(m_grad, opt)

    train(m_sgd, torch.optim.SGD(tp.param_groups(m_sgd, s), lr=0.1, momentum=momentum))

    assert_same(m_grad, m_sgd, atol=0)  # the same floating-point operations
    assert_same(m_loss, m_sgd, atol=1e-10)
    # and the penalty did something: an unregularized run differs
    m_none = train(copy.deepcopy(base), torch.optim.SGD(base.parameters(), lr=0.1))
    assert (m_none[0].weight - m_sgd[0].weight).abs().max() > 1e-3


@pytest.mark.parametrize("foreach", [False, True])
def test_decoupled_l2_on_adam_eq_adamw(foreach):
    s = 0.1
    base = tutorial_net()
    m_reg, m_ref = copy.deepcopy(base), copy.deepcopy(base)

    opt = torch.optim.Adam(m_reg.parameters(), lr=1e-2, foreach=foreach)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    tp.Regularizer(m_reg, tp.L2(s)).attach(opt, mode="decoupled")
    train(m_reg, opt, sched=sched)

    opt_ref = torch.optim.AdamW(tp.param_groups(m_ref, s), lr=1e-2, foreach=foreach)
    sched_ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt_ref, T_max=STEPS)
    train(m_ref, opt_ref, sched=sched_ref)

    assert_same(m_reg, m_ref, atol=1e-12)


def test_independent_decay_eq_adamw_with_wd_over_initial_lr():
    s, lr = 1e-3, 1e-2
    base = tutorial_net()
    m_reg, m_ref = copy.deepcopy(base), copy.deepcopy(base)
    opt = torch.optim.Adam(m_reg.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    tp.Regularizer(m_reg, tp.L2(s)).attach(opt, mode="independent")
    train(m_reg, opt, sched=sched)

    opt_ref = torch.optim.AdamW(tp.param_groups(m_ref, s / lr), lr=lr)
    sched_ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt_ref, T_max=STEPS)
    train(m_ref, opt_ref, sched=sched_ref)
    assert_same(m_reg, m_ref, atol=1e-12)


def test_proximal_l2_is_a_backward_step():
    s, lr = 0.3, 0.1
    m = tutorial_net()
    w0 = m[0].weight.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    tp.Regularizer(m, tp.L2(s)).attach(opt, mode="proximal")
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(m[0].weight.detach(), w0 / (1 + lr * s), rtol=0, atol=1e-15)


def test_grad_mode_with_gradient_accumulation_applies_once_per_step():
    """N micro-batches with grad mode == one big batch (the penalty is added once per
    optimizer step, not once per micro-batch); loss mode needs reg(accumulation_steps=N)."""
    s, n_micro = 0.2, 4
    x, y = data(n=32)
    base = tutorial_net()
    big, micro, loss_micro = (copy.deepcopy(base) for _ in range(3))

    opt = torch.optim.SGD(big.parameters(), lr=0.1)
    tp.Regularizer(big, tp.L2(s)).attach(opt, mode="grad")
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(big(x), y).backward()
        opt.step()

    opt = torch.optim.SGD(micro.parameters(), lr=0.1)
    tp.Regularizer(micro, tp.L2(s)).attach(opt, mode="grad")
    opt2 = torch.optim.SGD(loss_micro.parameters(), lr=0.1)
    reg2 = tp.Regularizer(loss_micro, tp.L2(s))
    for _ in range(5):
        opt.zero_grad()
        opt2.zero_grad()
        for xb, yb in zip(x.chunk(n_micro), y.chunk(n_micro), strict=True):
            (nn.functional.mse_loss(micro(xb), yb) / n_micro).backward()
            loss2 = nn.functional.mse_loss(loss_micro(xb), yb) / n_micro
            (loss2 + reg2(accumulation_steps=n_micro)).backward()
        opt.step()
        opt2.step()
    assert_same(big, micro, atol=1e-12)
    assert_same(big, loss_micro, atol=1e-12)
