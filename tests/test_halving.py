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
    """Strength 100 is hopeless (weights shrunk to nothing): it stops at a rung;
    the others (the best and its guarded neighbours) train to the end with the records of
    the full run."""
    eng = engine(epochs=10)
    grid = [1e-3, 1e-2, 2e-2, 3e-2, 100.0]
    tasks = [Task(i, k, s) for i, s in enumerate(grid) for k in range(2)]
    full = {(r.i, r.fold): r for r in eng.run(tasks)[0]}
    seen = []
    done = H.run(eng, tasks, lambda live: [live[j : j + 3] for j in range(0, len(live), 3)],
                 on_rung=lambda d: seen.append(len(d)))  # fmt: skip
    assert set(done) == set(full)
    stopped = [done[(4, k)].stopped_epoch for k in range(2)]
    assert stopped[0] == stopped[1] and stopped[0] in H.rungs(10)[:-1]
    assert len(done[(4, 0)].history["val"]) == stopped[0]
    for i in range(4):
        for k in range(2):
            assert done[(i, k)].stopped_epoch is None
            np.testing.assert_allclose(done[(i, k)].val_loss, full[(i, k)].val_loss, rtol=1e-5)
    assert seen == sorted(seen) and 2 in seen and seen[-1] == 10  # grows rung by rung


# ---------------------------------------------------------------------------- tp.sweep
@pytest.fixture(scope="module")
def diabetes_sweeps():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    kw = dict(epochs=20, progress=False, refit=False, vectorize=True)
    make = lambda: nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))  # noqa: E731
    return (
        (X, y, make, kw),
        tp.sweep(make, (X, y), **kw),
        tp.sweep(make, (X, y), halving=True, **kw),
    )


def test_halving_keeps_the_choices_and_trains_fewer_model_epochs(diabetes_sweeps):
    _, full, half = diabetes_sweeps
    assert half.best_strength == full.best_strength
    assert half.strength_1se == full.strength_1se
    assert half.settings["model_epochs"] < full.settings["model_epochs"] == 13 * 5 * 20
    stopped = [r for r in half.table if r["stopped_epoch"] is not None]
    assert stopped and all(r["stopped_epoch"] in H.rungs(20)[:-1] for r in stopped)
    assert "stopped_epoch" not in full.table[0]
    assert half.settings["halving"] == {"n_se": H.N_SE, "rungs": H.rungs(20)}
    for r in half.records:  # the records of the strengths trained to the end are the full run's
        if r.stopped_epoch is None:
            f = next(q for q in full.records if (q.i, q.fold) == (r.i, r.fold))
            np.testing.assert_allclose(r.val_loss, f.val_loss, rtol=1e-5)


def test_halving_interrupted_then_resumed_gives_the_same_table(diabetes_sweeps):
    (X, y, make, kw), _, half = diabetes_sweeps
    calls = []

    def stop_after_first_rung(state):
        calls.append(len(state["records"]))
        if len(calls) == 2:  # the state before training, then after the first rung
            raise KeyboardInterrupt

    with pytest.raises(tp.SweepInterrupted) as info:
        tp.sweep(make, (X, y), halving=True, on_chunk=stop_after_first_rung, **kw)
    state = info.value.state
    assert 0 < len(state["records"]) < 65
    again = tp.sweep(make, (X, y), halving=True, resume=state, **kw)
    assert [r["stopped_epoch"] for r in again.table] == [r["stopped_epoch"] for r in half.table]
    np.testing.assert_allclose([r["val_loss_mean"] for r in again.table],
                               [r["val_loss_mean"] for r in half.table], rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="resume must come from a sweep with the same"):
        tp.sweep(make, (X, y), resume=state, **kw)  # halving is part of the settings


@pytest.mark.parametrize(
    ("strengths", "expected"),
    [
        # best 1e-2: 1e-3 below and 0.1, 1 above are guarded, 10 stops
        ([1e-3, 1e-2, 1e-1, 1.0, 10.0], [False, False, False, False, True]),
        ([10.0, 1.0, 1e-1, 1e-2, 1e-3], [True, False, False, False, False]),  # any order
    ],
)
def test_the_neighbours_of_the_best_never_stop_unless_diverged(strengths, expected):
    order = np.argsort(strengths)
    means = np.array([3.0, 1.0, 3.0, 3.0, 3.0])  # in increasing strength: best is the 2nd
    val = np.empty((5, 3))
    val[order] = means[:, None] + np.array([-0.01, 0.0, 0.01])
    assert H.to_stop(val, 3.0, strengths).tolist() == expected
    val[order[2], 0] = np.nan  # a diverged neighbour stops
    assert H.to_stop(val, 3.0, strengths)[order[2]]
