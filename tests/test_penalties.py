"""Common checks driven by the table in ``cases.py``: value, gradient, decoupled and
proximal steps, finite differences, config round trip, error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cases import (
    DTYPES,
    ERRORS,
    GRAD_TOL,
    PENALTIES,
    PENALTY_IDS,
    SHAPES,
    VALUE_TOL,
    make_tensors,
    to_numpy,
)

import torchpenalty as tp

STRENGTH = 0.37


def _setup(info, shapes, dtype):
    ws = make_tensors(shapes, dtype, seed=1)
    refs_t = make_tensors(shapes, dtype, seed=2)
    names = [f"p{i}" for i in range(len(ws))]
    pen = info.make(STRENGTH, dict(zip(names, refs_t)))
    return pen, ws, names, [to_numpy(w) for w in ws], [to_numpy(r) for r in refs_t]


def _close(actual, expected, tol):
    rtol, atol = tol
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shapes", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", PENALTIES, ids=PENALTY_IDS)
class TestTable:
    def test_value(self, info, dtype, shapes):
        pen, ws, names, np_ws, np_refs = _setup(info, shapes, dtype)
        v = pen(ws, names=names)
        assert v.ndim == 0
        assert v.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert v.device == ws[0].device
        _close(v.item(), info.value(np_ws, STRENGTH, np_refs), VALUE_TOL[dtype])

    def test_grad(self, info, dtype, shapes):
        pen, ws, names, np_ws, np_refs = _setup(info, shapes, dtype)
        grads = [torch.zeros_like(w) for w in ws]
        pen.grad_(grads, ws, names=names)
        for g, e in zip(grads, info.grad(np_ws, STRENGTH, np_refs)):
            assert g.dtype == dtype
            _close(to_numpy(g), e, GRAD_TOL[dtype])

    def test_loss_mode_gradient_equals_grad_mode(self, info, dtype, shapes):
        pen, ws, names, *_ = _setup(info, shapes, dtype)
        leaves = [w.clone().requires_grad_() for w in ws]
        pen(leaves, names=names).backward()
        grads = [torch.zeros_like(w) for w in ws]
        pen.grad_(grads, ws, names=names)
        for leaf, g in zip(leaves, grads):
            _close(to_numpy(leaf.grad), to_numpy(g), GRAD_TOL[dtype])

    def test_decay_is_a_gradient_step(self, info, dtype, shapes):
        pen, ws, names, np_ws, np_refs = _setup(info, shapes, dtype)
        lr = 0.05
        pen.decay_(ws, lr, names=names)
        for w, w0, g in zip(ws, np_ws, info.grad(np_ws, STRENGTH, np_refs)):
            _close(to_numpy(w), w0 - lr * g, GRAD_TOL[dtype])

    def test_prox(self, info, dtype, shapes):
        pen, ws, names, np_ws, np_refs = _setup(info, shapes, dtype)
        lr = 4.0  # a threshold large enough to zero some entries / groups
        if info.prox is None:
            with pytest.raises(ValueError, match="no proximal operator, got 'proximal'"):
                pen.prox_(ws, lr, names=names)
            return
        pen.prox_(ws, lr, names=names)
        expected = info.prox(np_ws, lr * STRENGTH, np_refs)
        for w, e in zip(ws, expected):
            _close(to_numpy(w), e, GRAD_TOL[dtype])
            if info.sparse_prox:  # exact zeros exactly where the reference has them
                assert np.array_equal(to_numpy(w) == 0, e == 0)
        if info.sparse_prox:
            assert any((e == 0).any() for e in expected), "threshold too small to test zeros"


@pytest.mark.parametrize("info", PENALTIES, ids=PENALTY_IDS)
def test_finite_differences_float64(info):
    shapes = SHAPES["mixed"]
    ws = make_tensors(shapes, torch.float64, seed=3)
    refs = make_tensors(shapes, torch.float64, seed=4)
    names = [f"p{i}" for i in range(len(ws))]
    pen = info.make(STRENGTH, dict(zip(names, refs)))
    leaves = [w.clone().requires_grad_() for w in ws]
    assert torch.autograd.gradcheck(lambda *p: pen(list(p), names=names), leaves)
    # and the in-place gradient matches central differences directly
    grads = [torch.zeros_like(w) for w in ws]
    pen.grad_(grads, ws, names=names)
    eps = 1e-6
    for i, w in enumerate(ws):
        flat = w.view(-1)
        for j in range(0, flat.numel(), max(1, flat.numel() // 5)):
            old = flat[j].item()
            flat[j] = old + eps
            up = pen(ws, names=names).item()
            flat[j] = old - eps
            down = pen(ws, names=names).item()
            flat[j] = old
            assert abs((up - down) / (2 * eps) - grads[i].view(-1)[j].item()) < 1e-6


@pytest.mark.parametrize("info", PENALTIES, ids=PENALTY_IDS)
def test_config_round_trip(info):
    refs = {"p0": torch.zeros(2, 2)}
    pen = info.make(STRENGTH, refs)
    cfg = pen.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg == {"name": info.name, "strength": STRENGTH, **info.config_extra}
    kwargs = {"reference": refs} if info.name == "l2sp" else {}
    again = type(pen).from_config(cfg, **kwargs)
    assert again.get_config() == cfg
    assert tp.get(cfg, **kwargs).get_config() == cfg
    # with a schedule as strength
    sched = tp.schedules.Cosine(1e-2, 1e-4, steps=50)
    pen2 = info.make(sched, refs)
    cfg2 = json.loads(json.dumps(pen2.get_config()))
    again2 = type(pen2).from_config(cfg2, **kwargs)
    assert again2.strength_at(25) == pytest.approx(sched(25))


@pytest.mark.parametrize("case", ERRORS, ids=[c.id for c in ERRORS])
def test_errors(case):
    with pytest.raises(case.error, match=case.match):
        case.call()


@pytest.mark.parametrize("info", PENALTIES, ids=PENALTY_IDS)
def test_empty_list_is_a_zero_scalar(info):
    pen = info.make(1.0, {})
    v = pen([], names=[])
    assert v.ndim == 0 and v.item() == 0.0


def test_aliases():
    assert isinstance(tp.get("ridge", 1.0), tp.L2)
    assert isinstance(tp.get("weight_decay", 1.0), tp.L2)
    assert isinstance(tp.get("Lasso", 1.0), tp.L1)
    assert isinstance(tp.get("elastic-net", 1.0, l1_ratio=0.2), tp.ElasticNet)
    assert isinstance(tp.get("group_lasso", 1.0), tp.GroupLasso)
    assert isinstance(tp.get("orthogonal", 1.0), tp.Orthogonal)
    pen = tp.L1(0.1)
    assert tp.get(pen) is pen


def test_fp16_sum_that_overflows_in_fp16():
    w = [torch.full((4096,), 300.0, dtype=torch.float16)]
    naive = torch.sum(w[0] ** 2)  # the tutorial: inf in fp16
    assert torch.isinf(naive)
    v = tp.L2(2.0)(w)
    assert v.dtype == torch.float32
    assert v.item() == pytest.approx(300.0**2 * 4096)


def test_bf16_many_small_tensors_accumulate_in_fp32():
    ws = [torch.full((8,), 0.01, dtype=torch.bfloat16) for _ in range(2000)]
    exact = sum(to_numpy(w).astype(np.float64).__pow__(2).sum() for w in ws)
    naive = torch.zeros((), dtype=torch.bfloat16)
    for w in ws:  # the tutorial's loop in the parameter dtype
        naive = naive + torch.sum(w**2)
    assert abs(naive.item() - exact) / exact > 0.1  # bf16 loses most of it
    assert tp.L2(2.0)(ws).item() == pytest.approx(exact, rel=1e-5)


def test_complex_uses_modulus():
    w = [torch.tensor([3 + 4j, 0j], dtype=torch.complex64)]
    assert tp.L1(1.0)(w).item() == pytest.approx(5.0)
    assert tp.L2(2.0)(w).item() == pytest.approx(25.0)


def test_meta_tensors():
    w = [torch.empty(3, 4, device="meta")]
    v = tp.L2(1.0)(w)
    assert v.device.type == "meta" and v.ndim == 0


def test_schedules():
    s = tp.schedules
    assert s.Linear(0, 1, 10)(5) == pytest.approx(0.5)
    assert s.Cosine(1, 0, 10)(0) == pytest.approx(1) and s.Cosine(1, 0, 10)(10) == pytest.approx(0)
    assert s.Exponential(1, 0.5)(3) == pytest.approx(0.125)
    assert [s.Piecewise([2, 4], [1, 2, 3])(i) for i in range(6)] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="boundaries must be strictly increasing"):
        s.Piecewise([4, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="values must have len"):
        s.Piecewise([2], [1])
    bad = tp.L2(lambda step: -1.0)
    with pytest.raises(ValueError, match=r"strength\(0\) must be a finite number >= 0, got -1.0"):
        bad.strength_at(0)


STACKABLE = [p for p in PENALTIES if tp.penalties.lookup(p.name).stackable]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex64], ids=str)
@pytest.mark.parametrize("info", STACKABLE, ids=[p.name for p in STACKABLE])
def test_stacked_models_with_per_model_strengths(info, dtype):
    """A 1-D strength of length M on tensors stacked along dim 0 equals M separate calls
    (what the vectorized sweep relies on)."""
    shapes = [(4, 3, 5), (4, 6), (4, 2, 3, 2)]  # M = 4 models
    strengths = torch.tensor([0.0, 0.1, 0.5, 2.0])
    ws = make_tensors(shapes, dtype, seed=5)
    pen = info.make(1.0, {})
    grads = [torch.zeros_like(w) for w in ws]
    pen.grad_(grads, ws, strength=strengths)
    prox = [w.clone() for w in ws]
    g = torch.Generator().manual_seed(7)
    metric = [torch.rand(w.shape, generator=g) + 0.1 for w in ws]  # a preconditioned step
    prox_m = [w.clone() for w in ws]
    if info.prox is not None:
        pen.prox_(prox, 0.7, strength=strengths)
        if not dtype.is_complex:
            pen.prox_(prox_m, 0.7, strength=strengths, metric=metric)
    for m, s in enumerate(strengths.tolist()):
        single = [w[m].clone() for w in ws]
        single_m = [w[m].clone() for w in ws]
        g1 = [torch.zeros_like(w) for w in single]
        if s:
            pen.grad_(g1, single, strength=s)
            if info.prox is not None:
                pen.prox_(single, 0.7, strength=s)
                if not dtype.is_complex:
                    pen.prox_(single_m, 0.7, strength=s, metric=[d[m] for d in metric])
        for a, b in zip(grads, g1):
            torch.testing.assert_close(a[m], b)
        for a, b in zip(prox, single):
            torch.testing.assert_close(a[m], b)
        for a, b in zip(prox_m, single_m):
            torch.testing.assert_close(a[m], b)


@pytest.mark.parametrize("info", [p for p in PENALTIES if p.prox is not None], ids=lambda p: p.name)
def test_prox_in_a_diagonal_metric(info):
    """``prox_(..., metric=d)`` thresholds coordinate i at ``lr * s / d_i`` (the NumPy
    reference with per-coordinate thresholds); group lasso with ``d`` constant on each
    group equals its Euclidean prox at ``lr * s / d_g``."""
    shapes = SHAPES["mixed"]
    pen, ws, names, np_ws, np_refs = _setup(info, shapes, torch.float64)
    g = torch.Generator().manual_seed(3)
    if info.name == "group_lasso":
        metric = [
            torch.rand((w.shape[0],) + (1,) * (w.ndim - 1), generator=g, dtype=torch.float64) + 0.2
            for w in ws
        ]
    else:
        metric = [torch.rand(w.shape, generator=g, dtype=torch.float64) + 0.2 for w in ws]
    lr = 0.3
    pen.prox_(ws, lr, names=names, metric=metric)
    # per-group thresholds (G,) for group lasso, per-coordinate ones otherwise
    ts = [
        lr * STRENGTH / (d.numpy().ravel() if info.name == "group_lasso" else d.numpy())
        for d in metric
    ]
    expected = [info.prox([w], t, [r])[0] for w, t, r in zip(np_ws, ts, np_refs)]
    for w, e in zip(ws, expected):
        np.testing.assert_allclose(to_numpy(w), e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("alias", "cls"),
    [("ridge", tp.L2), ("weight_decay", tp.L2), ("Lasso", tp.L1), ("elasticnet", tp.ElasticNet),
     ("enet", tp.ElasticNet), ("group-lasso", tp.GroupLasso), ("grouplasso", tp.GroupLasso),
     ("l2_sp", tp.L2SP), ("orth", tp.Orthogonal), ("maxnorm", tp.MaxNorm), ("nonneg", tp.NonNeg)],
)  # fmt: skip
def test_aliases_come_from_the_classes(alias, cls):
    assert tp.penalties.lookup(alias) is cls
    assert alias.lower().replace("-", "_") in {cls.name, *cls.aliases}


def test_classes_describe_themselves():
    sweepable = tp.penalties.names(sweepable=True)
    assert sweepable[:4] == ["l2", "l1", "elastic_net", "group_lasso"]
    assert not {"l2sp", "orthogonal", "max_norm", "sum"} & set(sweepable)
    assert [tp.penalties.lookup(n).sweep_mode for n in ("l2", "l1", "elastic_net", "group_lasso")] == [
        "grad", "proximal", "proximal", "proximal"
    ]  # fmt: skip
    assert not tp.Orthogonal.has_prox and tp.L1.has_prox and tp.MaxNorm.has_prox
    assert tp.ElasticNet.config_keys() == ("l1_ratio",) and tp.L2SP.config_keys() == ()
    assert tp.GroupLasso(1.0, dim=1).shard_ok(1, 2) and not tp.GroupLasso(1.0, dim=1).shard_ok(0, 2)
    assert not tp.Orthogonal(1.0).shard_ok(0, 2) and tp.L2(1.0).shard_ok(0, 2)
