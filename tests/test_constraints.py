"""Constraints (projections applied by mode="proximal") against NumPy implementations of
Keras's formulas, on Keras's (in, out) kernel layout vs torch's (out, in), and penalties
that add."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import torchpenalty as tp

EPS = 1e-7  # keras.config.epsilon()


def k_norms(w, axis):
    return np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))


def k_max_norm(w, max_value, axis):
    n = k_norms(w, axis)
    return w * (np.clip(n, 0, max_value) / (EPS + n))


def k_min_max_norm(w, lo, hi, rate, axis):
    n = k_norms(w, axis)
    return w * ((rate * np.clip(n, lo, hi) + (1 - rate) * n) / (EPS + n))


def k_unit_norm(w, axis):
    return w / (EPS + k_norms(w, axis))


def k_non_neg(w):
    return w * (w >= 0)


# (id, torchpenalty constraint, Keras formula on the Keras kernel, torch->keras layout)
DENSE = lambda w: w.T  # noqa: E731  torch Linear (out, in) -> Keras Dense (in, out)
CONV = lambda w: np.transpose(w, (2, 3, 1, 0))  # noqa: E731  (out,in,h,w) -> (h,w,in,out)
CASES = [
    ("max_norm_dense", tp.MaxNorm(1.5, dim=1), lambda k: k_max_norm(k, 1.5, 0), DENSE, (4, 6)),
    ("max_norm_default", tp.MaxNorm(1.5), lambda k: k_max_norm(k, 1.5, 0), DENSE, (4, 6)),
    ("max_norm_conv", tp.MaxNorm(2.0, dim=(1, 2, 3)), lambda k: k_max_norm(k, 2.0, (0, 1, 2)), CONV, (3, 2, 3, 3)),
    ("max_norm_conv_default", tp.MaxNorm(2.0), lambda k: k_max_norm(k, 2.0, (0, 1, 2)), CONV, (3, 2, 3, 3)),
    ("min_max_norm", tp.MinMaxNorm(1.0, 2.0, rate=0.7, dim=1), lambda k: k_min_max_norm(k, 1.0, 2.0, 0.7, 0), DENSE, (4, 6)),
    ("unit_norm", tp.UnitNorm(dim=1), lambda k: k_unit_norm(k, 0), DENSE, (4, 6)),
    ("unit_norm_axis1", tp.UnitNorm(dim=0), lambda k: k_unit_norm(k, 1), DENSE, (4, 6)),
    ("non_neg", tp.NonNeg(), k_non_neg, DENSE, (4, 6)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("cid", "con", "keras", "layout", "shape"), CASES, ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projection_matches_keras(cid, con, keras, layout, shape, dtype):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.3).to(dtype)
    expected = keras(layout(w.double().numpy()))
    con.prox_([w])
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(layout(w.double().numpy()), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("con", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_constraint_config_round_trip(con):
    cfg = json.loads(json.dumps(con.get_config()))
    assert "strength" not in cfg
    assert tp.get(cfg) == con
    assert type(con).from_config(cfg) == con


def test_applied_by_proximal_mode_after_every_step_any_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    tp.Regularizer(model, tp.MaxNorm(0.5, dim=1)).attach(opt, mode="proximal")
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        for m in (model[0], model[2]):
            assert m.weight.norm(dim=1).max() <= 0.5 + 1e-6  # Euclidean, not preconditioned
    assert model[0].bias.abs().max() > 0.5  # biases are not constrained


def test_constraints_refuse_other_modes():
    model = nn.Linear(3, 2)
    reg = tp.Regularizer(model, tp.L2(1e-2) + tp.MaxNorm(1.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for mode in ("grad", "decoupled", "independent"):
        with pytest.raises(ValueError, match=r"mode must be 'proximal' for .*MaxNorm.*got '"):
            reg.attach(opt, mode=mode)


def test_penalties_add():
    """Values and gradients add; prox steps apply in turn (L2 shrink, then projection)."""
    w = torch.tensor([[3.0, 4.0], [0.3, -0.4]], dtype=torch.float64)
    pen = tp.L2(0.5) + tp.L1(0.2) + tp.MaxNorm(1.0, dim=1)
    assert isinstance(pen, tp.Sum) and len(pen.parts) == 3
    assert pen([w]).item() == pytest.approx(0.25 * (w**2).sum().item() + 0.2 * w.abs().sum().item())
    g = [torch.zeros_like(w)]
    pen.grad_(g, [w.clone()])
    torch.testing.assert_close(g[0], 0.5 * w + 0.2 * torch.sign(w))
    p = w.clone()
    pen.prox_([p], 0.1)
    e = w / 1.05
    e = torch.sign(e) * torch.clamp(e.abs() - 0.02, min=0)
    e = e * torch.clamp(e.norm(dim=1, keepdim=True), max=1.0) / (1e-7 + e.norm(dim=1, keepdim=True))
    torch.testing.assert_close(p, e)
    cfg = json.loads(json.dumps(pen.get_config()))
    assert tp.get(cfg) == pen


def test_decay_and_constrain_one_regularizer():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.mul_(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg = tp.Regularizer(model, tp.L2(0.1) + tp.MaxNorm(1.0, dim=1))
    reg.attach(opt, mode="proximal")
    w0 = model.weight.detach().clone()
    model.weight.grad = torch.zeros_like(w0)
    model.bias.grad = torch.zeros(3)
    opt.step()
    shrunk = w0 / (1 + 0.1 * 0.1)
    n = shrunk.norm(dim=1, keepdim=True)
    torch.testing.assert_close(model.weight.detach(), shrunk * torch.clamp(n, max=1.0) / (1e-7 + n))
    assert reg.value() == pytest.approx(0.05 * (model.weight.detach() ** 2).sum().item(), rel=1e-6)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: tp.MaxNorm(-1.0), ValueError, r"max_value must be a finite number >= 0, got -1.0"),
        (lambda: tp.MaxNorm(1.0, dim=1.5), TypeError, r"dim must be an integer, a non-empty tuple"),
        (
            lambda: tp.MinMaxNorm(2.0, 1.0),
            ValueError,
            r"max_value must be >= min_value \(2.0\), got 1.0",
        ),
        (
            lambda: tp.MinMaxNorm(0.0, 1.0, rate=2.0),
            ValueError,
            r"rate must be a number in \[0, 1\], got 2.0",
        ),
    ],
)
def test_constraint_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()
