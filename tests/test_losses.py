"""Common checks for every sweep loss in ``tests/loss_cases.py``: the per-row loss equals
its NumPy reference, a sweep trains with it and reports it by name, and the held-out score
of the refit model is the reference's mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loss_cases import LOSSES
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import losses


def test_every_built_in_loss_has_a_row():
    built_in = {n for n, c in losses.LOSSES.items() if c.__module__.startswith("torchpenalty.")}
    assert built_in == {c.name for c in LOSSES}


def _data(case, n=60):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    if case.labels:
        return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 1)
    return X, X @ np.array([1.5, -2.0, 0.5]) + 0.3 * rng.standard_t(2, size=n)


@pytest.mark.parametrize("case", LOSSES, ids=lambda c: c.name)
def test_rows_equal_the_reference(case):
    rng = np.random.default_rng(1)
    out = rng.normal(size=(2, 5, 3 if case.labels else 1)) * 3
    y = rng.integers(0, 3, size=(2, 5)) if case.labels else rng.normal(size=(2, 5, 1)) * 3
    got = losses.get_loss(case.name).rows(torch.tensor(out), torch.tensor(y))
    want = np.stack([case.rows(out[m], y[m]) for m in range(2)])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", LOSSES, ids=lambda c: c.name)
def test_a_sweep_trains_with_it(case):
    X, y = _data(case)
    k = 3 if case.labels else 1
    r = tp.sweep(lambda: nn.Linear(3, k), (X, y), loss=case.name, strengths=[1e-3, 1.0],
                 folds=2, epochs=5, solver="train", progress=False, test=(X, y))  # fmt: skip
    assert r.loss == case.name and len(r.table) == 2
    assert all(np.isfinite(row["val_loss_mean"]) for row in r.table)
    with torch.no_grad():
        out = r.model(torch.tensor(X, dtype=torch.float32)).double().numpy()
    codes = np.searchsorted(r.classes, y) if case.labels else y
    want = case.rows(out if case.labels else out.reshape(len(X), -1), codes).mean()
    assert r.test["loss"] == pytest.approx(want, rel=1e-5)
