"""A user-defined penalty from a file outside the package (DESIGN.md's Huber example)
works everywhere a built-in does: loss, grad, decoupled and independent modes, float16 /
bfloat16, configs, tp.get, the sweep and penalties.resolve("module:Class")."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import torchpenalty as tp
from torchpenalty.penalties import names, resolve

SOURCE = textwrap.dedent(
    '''
    import torch
    import torchpenalty as tp


    class Huber(tp.Penalty):
        """strength * sum(huber(w, delta))"""

        name = "huber"
        aliases = ("smooth_l1",)

        def __init__(self, strength, *, delta=1.0):
            super().__init__(strength)
            self.delta = delta

        def term(self, w):
            return torch.nn.functional.huber_loss(
                w, torch.zeros_like(w), delta=self.delta, reduction="sum"
            )
    '''
)


@pytest.fixture(scope="module")
def huber(tmp_path_factory):
    folder = tmp_path_factory.mktemp("userpkg")
    (folder / "tp_user_huber.py").write_text(SOURCE)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("tp_user_huber").Huber
    finally:
        sys.path.remove(str(folder))


def np_huber(w, delta):
    a = np.abs(w)
    return np.where(a <= delta, 0.5 * w**2, delta * (a - 0.5 * delta))


def np_huber_grad(w, delta):
    return np.clip(w, -delta, delta)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()


def test_value_and_registry(huber):
    pen = tp.get("huber", 0.1, delta=0.5)
    assert type(pen) is huber and pen.delta == 0.5
    assert type(tp.get("smooth-l1", 1.0)) is huber
    assert "huber" in names(sweepable=True)
    assert not huber.has_prox
    w = torch.randn(3, 5, dtype=torch.float64)
    assert pen([w]).item() == pytest.approx(0.1 * np_huber(w.numpy(), 0.5).sum(), rel=1e-12)


def test_config_round_trip(huber):
    pen = huber(0.3, delta=0.25)
    cfg = json.loads(json.dumps(pen.get_config()))
    assert cfg == {"name": "huber", "strength": 0.3, "delta": 0.25}
    assert huber.from_config(cfg) == pen and tp.get(cfg) == pen
    assert repr(pen) == "Huber(strength=0.3, delta=0.25)"


def test_duplicate_name_is_an_error(huber):
    with pytest.raises(ValueError, match=r"name must be unique among penalties: 'huber'"):

        class Other(tp.Penalty):
            name = "huber"

            def term(self, w):
                return w.sum()


@pytest.mark.parametrize("mode", ["loss", "grad", "decoupled", "independent"])
def test_modes(huber, mode):
    """One SGD step in each mode against the NumPy gradient of the Huber term."""
    s, lr, delta = 0.7, 0.1, 0.3
    net = model()
    reg = tp.Regularizer(net, huber(s, delta=delta))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    reg.attach(opt, mode=mode)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.zero_grad()
    loss = reg() if mode == "loss" else net(torch.zeros(1, 4, dtype=torch.float64)).sum() * 0
    loss.backward()
    opt.step()
    rate = lr if mode in ("loss", "grad", "decoupled") else 1.0  # independent: lr / lr0
    for n in ("0.weight", "2.weight"):
        w = before[n].numpy()
        expected = w - rate * s * np_huber_grad(w, delta)
        np.testing.assert_allclose(
            dict(net.named_parameters())[n].detach().numpy(), expected, rtol=1e-12, atol=1e-14
        )
    np.testing.assert_array_equal(net[0].bias.detach().numpy(), before["0.bias"].numpy())


def test_proximal_mode_refused(huber):
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(
        ValueError, match=r"for Huber, which has no proximal operator, got 'proximal'"
    ):
        tp.Regularizer(net, huber(0.1)).attach(opt, mode="proximal")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_float32(huber, dtype):
    w = torch.full((4000,), 300.0).to(dtype)  # sum in fp16 would overflow
    v = huber(1.0, delta=2.0)([w])
    assert v.dtype == torch.float32
    assert v.item() == pytest.approx(4000 * 2.0 * (300 - 1.0), rel=1e-6)
    g = [torch.zeros_like(w)]
    huber(1.0, delta=2.0).grad_(g, [w])
    assert g[0].dtype == dtype and torch.all(g[0] == 2.0)


def test_sweep_with_a_user_penalty(huber):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 4, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(
        60, generator=g, dtype=torch.float64
    )
    kw = dict(strengths=[1e-3, 1.0], folds=3, epochs=3, batch_size=16, progress=False, refit=False)
    res = tp.sweep(lambda: nn.Linear(4, 1), (X, y), penalty=huber(1.0, delta=0.5), **kw)
    one = tp.sweep(
        lambda: nn.Linear(4, 1), (X, y), penalty=huber(1.0, delta=0.5), vectorize=False, **kw
    )
    assert [r["strength"] for r in res.table] == [1e-3, 1.0]
    for a, b in zip(res.table, one.table, strict=True):  # stacked = one at a time
        assert a["val_loss_mean"] == pytest.approx(b["val_loss_mean"], rel=1e-5)


def test_resolve_module_class(huber):
    pen = resolve("tp_user_huber:Huber", 0.3)
    assert type(pen) is huber and pen.strength == 0.3
    assert resolve(huber, 0.2).strength == 0.2
    assert resolve("smooth_l1", 0.1).strength == 0.1
    with pytest.raises(
        ValueError, match=r"name must name an importable module, got 'no_such_mod:X'"
    ):
        resolve("no_such_mod:X", 1.0)
    with pytest.raises(
        TypeError,
        match=r"name must be a 'module:Class' naming a tp.Penalty subclass, got 'json:dumps'",
    ):
        resolve("json:dumps", 1.0)
    with pytest.raises(
        ValueError, match=r"name must look like 'package.module:ClassName', got 'a b:C'"
    ):
        resolve("a b:C", 1.0)
    with pytest.raises(ValueError, match=r"name must be one of .*got 'hubber'"):
        resolve("hubber", 1.0)


def test_user_prox_and_closed_form_grad_follow_the_optimizer():
    """A user penalty with term_grad and term_prox (per-coordinate thresholds) behaves
    exactly like the built-in L1 in grad and proximal modes, under Adam's metric."""

    class MyL1(tp.Penalty):
        name = "test_my_l1"

        def term(self, w):
            return w.abs().sum()

        def term_grad(self, w):
            return torch.sign(w)

        def term_prox(self, w, t):
            return torch.sign(w) * torch.clamp(w.abs() - t, min=0)

    assert MyL1.has_prox
    for mode in ("grad", "proximal"):
        nets = []
        for pen in (MyL1(0.05), tp.L1(0.05)):
            net = model()
            opt = torch.optim.Adam(net.parameters(), lr=0.05)
            tp.Regularizer(net, pen).attach(opt, mode=mode)
            x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            for _ in range(20):
                opt.zero_grad()
                net(x).pow(2).mean().backward()
                opt.step()
            nets.append(net)
        for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        if mode == "proximal":
            assert (nets[0][0].weight == 0).any()  # exact zeros from the user's prox
