"""Property tests over open-ended inputs (hypothesis)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import torchpenalty as tp
from torchpenalty import functional as F

arrays = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
)
strengths = st.floats(0, 10, allow_nan=False)
thresholds = st.floats(0, 5, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(arrays, min_size=1, max_size=4), strengths)
def test_elementwise_values_match_numpy(ws, s):
    ts = [torch.tensor(w) for w in ws]
    l2 = 0.5 * s * sum(float((w**2).sum()) for w in ws)
    l1 = s * sum(float(np.abs(w).sum()) for w in ws)
    np.testing.assert_allclose(tp.L2(s)(ts).item(), l2, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(tp.L1(s)(ts).item(), l1, rtol=1e-10, atol=1e-10)


def _prox_objective(pen_value, x, w, t):
    return pen_value(x) * t + 0.5 * float(((x - w) ** 2).sum())


@settings(max_examples=60, deadline=None)
@given(arrays, thresholds, st.integers(0, 2**31 - 1))
def test_prox_points_minimize_the_prox_objective(w, t, seed):
    """prox_{tP}(w) = argmin_x t P(x) + |x - w|^2 / 2: no nearby point does better."""
    rng = np.random.default_rng(seed)
    cases = [
        (lambda x: np.abs(x).sum(), lambda p: F.l1_prox_(p, t)),
        (lambda x: 0.5 * (x**2).sum(), lambda p: F.l2_prox_(p, t)),
        (
            lambda x: 0.3 * np.abs(x).sum() + 0.35 * (x**2).sum(),
            lambda p: F.elastic_net_prox_(p, t, 0.3),
        ),
        (
            lambda x: np.linalg.norm(x.reshape(x.shape[0], -1), axis=1).sum(),
            lambda p: F.group_lasso_prox_(p, t, 0),
        ),
    ]
    for value, prox in cases:
        p = torch.tensor(w)
        prox([p])
        x = p.numpy()
        best = _prox_objective(value, x, w, t)
        for _ in range(5):
            y = x + rng.normal(scale=1e-3 * (1 + np.abs(x)), size=x.shape)
            assert best <= _prox_objective(value, y, w, t) + 1e-9 * (1 + abs(best))


def _row_norms_and_error(w):
    """Row norms computed with scaling (``m * ||x / m||``: the squares never go
    subnormal, so the norm is correct to a few ulps), and the error bound of a norm
    taken from the plain sum of squares (what torch does): a few ulps, plus the
    subnormal spacing of the squares, ``k * 2^-1074``, which costs ``k * 2^-1074 / (2
    norm)`` on the norm once squares fall under float64's smallest normal."""
    rows = np.abs(w.reshape(w.shape[0], -1))
    m = rows.max(axis=1)
    safe = np.where(m > 0, m, 1.0)
    norms = m * np.sqrt(((rows / safe[:, None]) ** 2).sum(axis=1))
    tiny = np.finfo(np.float64).smallest_subnormal
    k = rows.shape[1]
    error = 1e-9 * norms + k * tiny / np.where(norms > 0, norms, 1.0)
    return norms, error


@settings(max_examples=60, deadline=None)
@given(arrays, thresholds)
@example(w=np.array([5.10855508e-160]), t=5.1085550756331946e-160)
@example(w=np.array([[3e-162, 1e-162], [2.0, 0.0]]), t=3.1622776601683794e-162)
def test_group_prox_zeroes_exactly_the_small_groups(w, t):
    p = torch.tensor(w)
    F.group_lasso_prox_([p], t, 0)
    norms, error = _row_norms_and_error(w)
    zero_rows = (p.reshape(p.shape[0], -1) == 0).all(dim=1).numpy()
    # a row is zeroed iff ||w_g|| <= t; rows whose norm is within float64's error of t
    # (as the sum of squares is rounded) could go either way and are left out
    decided = (norms > 0) & (np.abs(norms - t) > error)
    assert np.array_equal(zero_rows[decided], (norms <= t)[decided])
    assert zero_rows[norms == 0].all()


@settings(max_examples=40, deadline=None)
@given(st.lists(arrays, min_size=1, max_size=3), strengths)
def test_half_precision_values_accumulate_in_fp32(ws, s):
    ts = [torch.tensor(w).to(torch.bfloat16) for w in ws]
    exact = 0.5 * s * sum(float(t.double().pow(2).sum()) for t in ts)
    v = tp.L2(s)(ts)
    assert v.dtype == torch.float32
    np.testing.assert_allclose(v.item(), exact, rtol=1e-5, atol=1e-5)
