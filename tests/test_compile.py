"""reg() inside a compiled loss: one graph (fullgraph=True), no recompilation when a
schedule changes the strength, same values and gradients as eager."""

from __future__ import annotations

import torch
from torch import nn

import torchpenalty as tp


def test_compiled_loss_fullgraph_without_recompiles(monkeypatch):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 5))
    reg = tp.Regularizer(
        model, {"0.*": tp.L2(tp.schedules.Linear(0.0, 1.0, steps=10)), "2.*": tp.L1(0.1)}
    )

    def loss_fn(x, y):
        return nn.functional.mse_loss(model(x), y) + reg()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    for i in range(4):
        model.zero_grad()
        loss = compiled(x, y)
        loss.backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        eager = loss_fn(x, y)
        eager.backward()
        torch.testing.assert_close(loss, eager)
        for g, p in zip(got, model.parameters(), strict=True):
            torch.testing.assert_close(g, p.grad)
        if i == 0:  # from now on any recompilation is an error
            monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        reg.step()  # the scheduled strength changes every step
    assert reg.step_count == 4
