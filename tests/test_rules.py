"""Common checks for every update rule in ``tests/rule_cases.py``: one SGD step on ``L2``
equals the NumPy reference, only the selected weights are touched, ``remove()`` restores
the plain optimizer, and every registered rule has a row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rule_cases import RULES
from torch import nn

import torchpenalty as tp
from torchpenalty import updates

S, LR = 0.3, 0.1


def _setup(dtype):
    torch.manual_seed(0)
    net = nn.Linear(4, 3).to(dtype)
    x, y = torch.randn(8, 4, dtype=dtype), torch.randn(8, 3, dtype=dtype)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    return net, x, y, opt


def _step(net, x, y, opt):
    opt.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    g = net.weight.grad.detach().double().numpy().copy()
    opt.step()
    return g


def test_every_built_in_rule_has_a_row():
    built_in = {n for n, c in updates.RULES.items() if c.__module__.startswith("torchpenalty.")}
    assert built_in <= {r.mode for r in RULES}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_one_step_equals_the_reference(rule, dtype):
    net, x, y, opt = _setup(dtype)
    reg = tp.Regularizer(net, tp.L2(S))
    handle = reg.attach(opt, mode=rule.mode, **rule.options)
    w0 = net.weight.detach().double().numpy().copy()
    b0 = net.bias.detach().clone()
    g = _step(net, x, y, opt)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(net.weight.detach().double().numpy(),
                               rule.step(w0, g, LR, S), rtol=tol, atol=tol)  # fmt: skip
    torch.testing.assert_close(net.bias.detach(), b0 - LR * net.bias.grad)  # bias: plain SGD
    handle.remove()


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_remove_restores_the_plain_optimizer(rule):
    net, x, y, opt = _setup(torch.float64)
    reg = tp.Regularizer(net, tp.L2(S))
    reg.attach(opt, mode=rule.mode, **rule.options).remove()
    w0 = net.weight.detach().clone()
    _step(net, x, y, opt)
    torch.testing.assert_close(net.weight.detach(), w0 - LR * net.weight.grad)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_zero_strength_is_the_plain_optimizer(rule):
    net, x, y, opt = _setup(torch.float64)
    ref = nn.Linear(4, 3).double()
    ref.load_state_dict(net.state_dict())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=LR)
    tp.Regularizer(net, tp.L2(0.0)).attach(opt, mode=rule.mode, **rule.options)
    for _ in range(3):
        _step(net, x, y, opt)
        _step(ref, x, y, ref_opt)
    torch.testing.assert_close(net.state_dict(), ref.state_dict())
