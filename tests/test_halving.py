"""Successive halving inside the stack (torchpenalty.sweep.halving): the rule as pure
functions, per-task states repacked into new stacks, and the driver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import halving as H
from torchpenalty.sweep.engine import Engine, Problem, Task, join_states, split_state


@pytest.mark.parametrize(
    ("epochs", "warmup", "expected"),
    [(100, 0.1, [10, 20, 40, 80, 100]), (10, 0.1, [1, 2, 4, 8, 10]), (1, 0.1, [1]),
     (5, 0.5, [2, 4, 5]), (8, 0.25, [2, 4, 8]), (3, 0.01, [1, 2, 3])],
)  # fmt: skip
def test_rungs(epochs, warmup, expected):
    assert H.rungs(epochs, warmup) == expected


@pytest.mark.parametrize(
    ("val", "n_se", "expected"),
    [
        # best mean 1.0 with SE 0.1 (folds 0.9, 1.1, 1.0): the margin is 1.0 + 3 * 0.0577
        ([[0.9, 1.1, 1.0], [1.1, 1.2, 1.15], [1.3, 1.4, 1.35]], 3.0, [False, False, True]),
        ([[0.9, 1.1, 1.0], [1.1, 1.2, 1.15], [1.3, 1.4, 1.35]], 1.0, [False, True, True]),
        ([[0.9, 1.1, 1.0], [np.nan, 1.0, 1.0], [np.inf, 1, 1]], 3.0, [False, True, True]),
        ([[np.nan, 1.0], [np.inf, 1.0]], 3.0, [True, True]),  # all diverged: all stop
        ([[1.0], [2.0]], 3.0, [False, True]),  # one fold: no SE, any worse mean stops
        ([[1.0, 1.0], [1.0, 1.0]], 3.0, [False, False]),  # ties never stop
    ],
)
def test_to_stop(val, n_se, expected):
    assert H.to_stop(np.array(val), n_se).tolist() == expected


def test_to_stop_never_stops_the_best_or_a_strength_within_the_margin():
    rng = np.random.default_rng(0)
    for _ in range(200):
        val = rng.lognormal(size=(7, 5))
        stop = H.to_stop(val)
        mean = val.mean(1)
        b = int(np.argmin(mean))
        se = val[b].std(ddof=1) / math.sqrt(5)
        assert not stop[b]
        np.testing.assert_array_equal(stop, mean > mean[b] + H.N_SE * se)


# ---------------------------------------------------------------------------- engine states
def engine(epochs=6, patience=None, make=None) -> Engine:
    g = torch.Generator().manual_seed(0)
    n = 48
    X = torch.randn(3, n, 4, generator=g)
    Y = X[..., :1] * 2 + 0.3 * torch.randn(3, n, 1, generator=g)
    idx = np.arange(n)
    pb = Problem(X, Y, torch.ones(3, 1), [idx[:24], idx[24:], idx], [idx[24:], idx[:24], idx[:0]],
                 "mse")  # fmt: skip
    make = make or (lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
    return Engine(make, pb, tp.L2(1.0), epochs=epochs, batch_size=8, optimizer="adam", lr=0.05,
                  mode="grad", seed=0, early_stopping=patience)  # fmt: skip


@pytest.mark.parametrize("patience", [None, 2])
def test_states_split_and_repacked_train_as_one_stack(patience):
    eng = engine(patience=patience)
    tasks = [Task(i, k, s) for i, s in enumerate([1e-3, 0.1, 1.0]) for k in range(2)]
    straight, _ = eng.run(tasks)
    last = {}
    eng.run(tasks, epochs=3, on_epoch=lambda e, snap: last.update(snap=snap))
    parts = split_state(last["snap"](), len(tasks))
    recs = {}
    for pick in ([4, 0, 2], [5, 1], [3]):  # new stacks, in a new order
        state = join_states([parts[j] for j in pick])
        out, _ = eng.run([tasks[j] for j in pick], state=state)
        recs.update(((r.i, r.fold), r) for r in out)
    for r in straight:
        got = recs[(r.i, r.fold)]
        assert got.best_epoch == r.best_epoch
        np.testing.assert_allclose(got.val_loss, r.val_loss, rtol=1e-5)
        np.testing.assert_allclose(got.history["val"], r.history["val"], rtol=1e-5)


def test_join_states_refuses_snapshots_of_different_epochs():
    eng = engine()
    tasks = [Task(0, 0, 0.1), Task(1, 0, 1.0)]
    snaps = []
    for e in (1, 2):
        last = {}
        eng.run(tasks, epochs=e, on_epoch=lambda _, snap, last=last: last.update(snap=snap))
        snaps.append(split_state(last["snap"](), 2)[0])
    with pytest.raises(ValueError, match="same epoch"):
        join_states(snaps)


def test_the_driver_stops_bad_strengths_and_keeps_the_rest_exact():
    """Strength 100 is hopeless (weights shrunk to nothing): it stops at the first rung;
    the others train to the end with the records of the full run."""
    eng = engine(epochs=10)
    grid = [1e-3, 1e-2, 100.0]
    tasks = [Task(i, k, s) for i, s in enumerate(grid) for k in range(2)]
    full = {(r.i, r.fold): r for r in eng.run(tasks)[0]}
    seen = []
    done = H.run(eng, tasks, lambda live: [live[j : j + 3] for j in range(0, len(live), 3)],
                 on_rung=lambda d: seen.append(len(d)))  # fmt: skip
    assert set(done) == set(full)
    assert [done[(2, k)].stopped_epoch for k in range(2)] == [1, 1]
    assert len(done[(2, 0)].history["val"]) == 1
    for i in (0, 1):
        for k in range(2):
            assert done[(i, k)].stopped_epoch is None
            np.testing.assert_allclose(done[(i, k)].val_loss, full[(i, k)].val_loss, rtol=1e-5)
    assert seen[0] == 2 and seen[-1] == 6  # the checkpoint grows rung by rung
