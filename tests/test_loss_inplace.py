"""``reg()`` in the loss: large weights get the penalty's gradient added to ``.grad`` in
place after their other gradients (``functional._add_later``) instead of a returned
tensor. Every case is checked against plain autograd of the tutorial's formula
``loss + s/2 * sum(w**2)`` (no torchpenalty code in the reference): zeroed or ``None``
gradients, gradient accumulation, a weight the forward pass does not use, a weight used
twice (tied), the penalty built before the forward pass, a scaled loss (GradScaler), the
dtypes, ``torch.autograd.grad`` and ``create_graph=True`` (gradients returned there)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchpenalty as tp
from torchpenalty import functional as F

S = 0.3


class Net(nn.Module):
    """Two Linear layers, a tied use of the first, and a Linear the forward never uses."""

    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(12, 12).to(dtype)
        self.b = nn.Linear(12, 2).to(dtype)
        self.unused = nn.Linear(12, 12).to(dtype)

    def forward(self, x, tied=False):
        h = torch.tanh(self.a(x))
        if tied:
            h = torch.tanh(self.a(h))
        return self.b(h)


def weights(net):
    return [net.a.weight, net.b.weight, net.unused.weight]


def reference(dtype, case):
    """Gradients from plain autograd of the formula."""
    net = Net(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32  # the sum's dtype
    _run(net, case, lambda n: S / 2 * sum((w.to(acc) ** 2).sum() for w in weights(n)))
    return [p.grad for p in net.parameters()]


def ours(dtype, case):
    net = Net(dtype)
    reg = tp.Regularizer(net, tp.L2(S))
    _run(net, case, lambda n: reg())
    return [p.grad for p in net.parameters()]


def _run(net, case, penalty):
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1)).to(net.a.weight.dtype)
    micro = 2 if case == "accumulation" else 1
    if case == "zeroed":
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
    for _ in range(micro):
        pen = penalty(net) if case == "penalty first" else None
        out = net(x, tied=case == "tied")
        loss = out.to(torch.float64 if out.dtype == torch.float64 else torch.float32)
        loss = loss.square().mean()
        pen = penalty(net) if pen is None else pen
        total = (loss + pen) / micro
        if case == "scaled":
            total = total * 1024.0
        total.backward()


CASES = ["none grads", "zeroed", "accumulation", "tied", "penalty first", "scaled"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@pytest.fixture
def defer_all(monkeypatch):
    monkeypatch.setattr(F, "_DEFER_MIN", 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_in_place_gradient_equals_the_formula(defer_all, case, dtype):
    tol = {torch.bfloat16: 2e-2, torch.float32: 1e-6, torch.float64: 1e-12}[dtype]
    for got, ref in zip(ours(dtype, case), reference(dtype, case), strict=True):
        assert (got is None) == (ref is None)
        if ref is not None:  # bf16: the strength is rounded to bf16 in both paths
            atol = tol * float(ref.abs().max())
            torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=atol)


def test_the_unused_weight_gets_only_the_penalty(defer_all):
    net = Net(torch.float64)
    reg = tp.Regularizer(net, tp.L2(S))
    (net(torch.randn(3, 12, dtype=torch.float64)).sum() + reg()).backward()
    torch.testing.assert_close(net.unused.weight.grad, S * net.unused.weight.detach())
    assert net.unused.bias.grad is None  # not penalized, not used


def test_hooks_are_removed_after_each_backward(defer_all):
    net = Net(torch.float32)
    reg = tp.Regularizer(net, tp.L2(S))
    for _ in range(3):
        (net(torch.randn(3, 12)).sum() + reg()).backward()
    for w in weights(net):
        assert not w._post_accumulate_grad_hooks


def test_autograd_grad_and_create_graph_return_the_gradient(defer_all):
    net = Net(torch.float64)
    reg = tp.Regularizer(net, tp.L2(S))
    x = torch.randn(4, 12, dtype=torch.float64)
    params = list(net.parameters())
    got = torch.autograd.grad(net(x).square().mean() + reg(), params, allow_unused=True)
    ref_net = Net(torch.float64)
    pen = S / 2 * sum((w**2).sum() for w in weights(ref_net))
    ref = torch.autograd.grad(
        ref_net(x).square().mean() + pen, list(ref_net.parameters()), allow_unused=True
    )
    for g, r in zip(got, ref, strict=True):
        assert (g is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(g, r)
    assert all(p.grad is None for p in params)  # autograd.grad accumulates nothing
    net.zero_grad()
    (net(x).square().mean() + reg()).backward(create_graph=True)
    torch.testing.assert_close(net.unused.weight.grad, S * net.unused.weight.detach())


def test_small_weights_and_other_penalties_keep_the_returned_gradient():
    """Below ``_DEFER_MIN`` elements nothing is deferred (no hook is registered)."""
    net = Net(torch.float32)
    reg = tp.Regularizer(net, tp.L2(S))
    seen = []
    for w in weights(net):
        w.register_post_accumulate_grad_hook(
            lambda t: seen.append(len(t._post_accumulate_grad_hooks))
        )
    (net(torch.randn(3, 12)).sum() + reg()).backward()
    assert seen and set(seen) == {1}  # only the test's own hook
