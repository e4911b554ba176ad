"""SweepResult: selection that skips diverged strengths, the warnings (pure function on
hand-made tables), the printed table, predictions in the data's units (checked against
scikit-learn), and grouped folds (checked against scikit-learn's GroupKFold)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep.engine import Record
from torchpenalty.sweep.folds import group_kfold
from torchpenalty.sweep.result import (
    SweepResult,
    best_index,
    diagnose,
    format_table,
    one_se_index,
)

NAN, INF = math.nan, math.inf
QUIET = {"progress": False}


def rows_of(vals, ses=None, strengths=None):
    strengths = strengths or [10.0 ** (i - 3) for i in range(len(vals))]
    ses = ses or [0.01] * len(vals)
    return [
        {"strength": s, "val_loss_mean": v, "val_loss_se": e}
        for s, v, e in zip(strengths, vals, ses, strict=True)
    ]


# ---------------------------------------------------------------------------- selection
SELECTION = [
    # val means, SEs, best, 1-SE
    ([1.0, 0.9, 0.93, 1.2], [0.1, 0.05, 0.04, 0.1], 1, 2),
    ([1.0, NAN, 0.93, 1.2], [0.1, NAN, 0.04, 0.1], 2, 2),
    ([INF, 0.9, 0.91, NAN], [NAN, 0.05, 0.04, NAN], 1, 2),  # the NaN at the end is never 1-SE
    ([0.5, 0.6, INF], [0.2, 0.1, NAN], 0, 1),
    ([NAN, NAN], [NAN, NAN], None, None),
    ([INF, -INF], [0.0, 0.0], None, None),
    ([0.9, 0.9], [NAN, NAN], 0, 1),  # one fold: SE NaN counts as 0; ties -> largest strength
    ([], [], None, None),
]


@pytest.mark.parametrize(("vals", "ses", "best", "one"), SELECTION)
def test_selection_skips_non_finite_rows(vals, ses, best, one):
    rows = rows_of(vals, ses)
    assert best_index(rows) == best
    assert one_se_index(rows) == one


# ---------------------------------------------------------------------------- warnings
FALLING = {"train": [8.0, 4.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05], "val": []}
FLAT = {"train": [8.0, 1.0] + [0.5] * 18, "val": []}
DIAGNOSE = [
    # id, val means, strengths, curves, expected warnings (regexes, in order)
    ("interior best, flat", [1.0, 0.5, 0.9], None, FLAT, []),
    ("best at the smallest", [0.4, 0.5, 0.9], None, FLAT, [r"^the best strength 0.001 is the smallest of the grid: .* extend the grid down$"]),
    ("best at the largest", [0.9, 0.5, 0.4], None, FLAT, [r"^the best strength 0.1 is the largest of the grid: .* extend the grid up$"]),
    ("best at strength 0: nothing below", [0.4, 0.5, 0.9], [0.0, 0.1, 1.0], FLAT, []),
    ("one strength", [0.4], None, FLAT, []),
    ("one diverged", [1.0, 0.5, 0.9, NAN], None, FLAT, [r"^strength 1 diverged \(non-finite validation loss\): marked, never chosen$"]),
    ("two diverged", [INF, 0.5, 0.9, NAN], None, FLAT, [r"^strengths 0.001, 1 diverged"]),
    ("all diverged", [NAN, INF, NAN], None, FALLING, [r"^every strength diverged \(non-finite losses at all 3 strengths\): no strength chosen"]),
    ("still falling", [1.0, 0.5, 0.9], None, FALLING, [r"^training loss still falling at the last epoch \(the last epoch 50.0% below the one before, validation loss falling too\)"]),
    ("falling, edge, diverged", [0.4, 0.5, NAN], None, FALLING, ["diverged", "smallest", "still falling"]),
    ("falling, validation falling too", [1.0, 0.5, 0.9], None, {"train": [4.0, 2.0, 1.0], "val": [5.0, 3.0, 2.0]}, [r"the last epoch 50.0% below the one before"]),
    ("falling while validation rises: overfitting", [1.0, 0.5, 0.9], None, {"train": [4.0, 2.0, 1.0], "val": [5.0, 3.0, 3.5]}, []),
    ("alternating noise: window means flat", [1.0, 0.5, 0.9], None, {"train": [1.04, 1.0] * 10}, []),
    ("falling 0.5% is noise", [1.0, 0.5, 0.9], None, {"train": [1.0] * 10 + [0.995]}, []),
    ("no curves", [1.0, 0.5, 0.9], None, None, []),
    ("one epoch", [1.0, 0.5, 0.9], None, {"train": [1.0], "val": [1.0]}, []),
    ("non-finite curve end", [1.0, 0.5, 0.9], None, {"train": [2.0, NAN], "val": []}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("vals", "strengths", "curves", "expected"),
    [d[1:] for d in DIAGNOSE],
    ids=[d[0] for d in DIAGNOSE],
)
def test_diagnose_on_hand_made_tables(vals, strengths, curves, expected):
    import re

    got = diagnose(rows_of(vals, strengths=strengths), curves)
    assert len(got) == len(expected), got
    for w, pattern in zip(got, expected, strict=True):
        assert re.search(pattern, w), w
        assert "\n" not in w


def test_underfit_window_is_a_tenth_of_the_epochs():
    train = list(np.linspace(2.0, 1.0, 40))  # 40 epochs: windows of 4
    (w,) = diagnose(rows_of([1.0, 0.5, 0.9]), {"train": train})
    before, last = np.mean(train[-8:-4]), np.mean(train[-4:])
    assert f"mean of the last 4 epochs {(before - last) / before:.1%} below the 4 before" in w
    assert diagnose(rows_of([1.0, 0.5, 0.9]), {"train": train}, falling=0.2) == []


# ---------------------------------------------------------------------------- table text
def _records(vals_per_strength, acc=None):
    recs = []
    for i, vals in enumerate(vals_per_strength):
        for k, v in enumerate(vals):
            recs.append(
                Record(
                    i=i,
                    fold=k,
                    strength=10.0 ** (i - 2),
                    val_loss=v,
                    train_loss=v * 0.8,
                    param_norm=1.0 / (i + 1),
                    zero_fraction=0.0,
                    best_epoch=3,
                    val_accuracy=acc,
                    history={"train": [2.0, 1.5, 1.49, 1.489], "val": [2.0, 1.6, 1.5, 1.5]},
                )
            )
    return recs


def test_print_result_shows_the_table_marks_and_warnings():
    vals = [[1.0, 1.2], [0.8, 0.9], [0.85, 0.95], [NAN, 1.0]]
    r = SweepResult([0.01, 0.1, 1.0, 10.0], 2, _records(vals), {"loss": "mse"}, refit_at="1se")
    text = str(r)
    assert repr(r) == text
    lines = text.splitlines()
    assert lines[0] == (
        "SweepResult(4 strengths x 2 folds, best_strength=0.1, strength_1se=1, refit='1se' at 1)"
    )
    assert lines[1].split() == [
        "strength", "val", "loss", "±", "SE", "train", "loss", "||w||", "zeros", "folds",
    ]  # fmt: skip
    assert lines[2].split()[:3] == ["0.01", "1.1", "0.1"]
    assert lines[3].endswith("<- best") and lines[4].endswith("<- 1se, refit")
    assert lines[5].split()[1] == "nan" and lines[5].endswith("<- DIVERGED")
    assert (
        lines[6]
        == "warning: strength 10 diverged (non-finite validation loss): marked, never chosen"
    )
    assert len(lines) == 7
    row = r.table[3]
    assert row["diverged"] and row["folds_diverged"] == 1 and not r.table[0]["diverged"]


def test_table_with_accuracy_and_incomplete_header():
    r = SweepResult([0.01, 0.1], 2, _records([[0.5, 0.6]], acc=0.75), {"loss": "cross_entropy"})
    text = str(r)
    assert text.splitlines()[0].startswith(
        "SweepResult(2 strengths x 2 folds (2 of 4 models finished), best_strength=0.01"
    )
    assert text.splitlines()[1].split()[-2:] == ["val", "acc"]
    assert text.splitlines()[2].split()[-4:] == ["0.750", "<-", "best,", "1se"]
    assert str(SweepResult([0.1], 2, [])) == "SweepResult(no completed models)"
    assert format_table([]).startswith("  strength")


def test_json_of_a_diverged_result_is_strict_json():
    r = SweepResult([0.01, 0.1], 2, _records([[NAN, INF], [NAN, NAN]]), {"loss": "mse"})
    assert r.best_strength is None and r.strength_1se is None and r.chosen_strength is None
    assert r.learning_curves() == {}

    def refuse(name):
        raise AssertionError(f"{name} in JSON")

    d = json.loads(r.to_json(), parse_constant=refuse)
    assert d["best_strength"] is None and d["table"][0]["val_loss_mean"] is None
    assert d["warnings"][0].startswith("every strength diverged")


def test_learning_curves_fall_back_to_saved_curves():
    recs = _records([[0.5, 0.6], [0.7, 0.8]])
    for rec in recs:
        rec.history = {}
    saved = {"train": [2.0, 1.0], "val": [2.5, 1.5]}
    r = SweepResult([0.01, 0.1], 2, recs, {"loss": "mse"}, curves=saved)
    assert r.learning_curves() == saved
    assert r.learning_curves(0.1) == {}  # saved curves are the chosen strength's only
    assert any("still falling" in w for w in r.warnings)


# ---------------------------------------------------------------------------- divergence
def _linear_data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, X @ np.array([1.0, 2.0, 3.0]) + rng.normal(size=n)


def test_all_strengths_diverging_is_reported_not_crashed():
    X, y = _linear_data()
    r = tp.sweep(
        lambda: nn.Linear(3, 1), (X, y), strengths=[1e-3, 1e-1, 1.0], folds=3, epochs=20,
        optimizer="sgd", lr=50.0, solver="train", **QUIET,
    )  # fmt: skip
    assert r.refit_at == "best" and r.model is None  # nothing to refit
    assert all(row["diverged"] for row in r.table)
    assert r.best_strength is None and r.strength_1se is None
    assert len(r.warnings) == 1 and r.warnings[0].startswith("every strength diverged")
    assert "DIVERGED" in str(r)
    json.loads(r.to_json(), parse_constant=lambda c: pytest.fail(c))


def test_a_strength_that_diverges_alone_is_marked_not_chosen():
    X, y = _linear_data()
    grid = [1e-3, 1e-2, 1e-1, 1000.0]  # lr * 1000 = 50: the L2 gradient step explodes
    r = tp.sweep(
        lambda: nn.Linear(3, 1), (X, y), strengths=grid, folds=3, epochs=20,
        optimizer="sgd", lr=0.05, solver="train", **QUIET,
    )  # fmt: skip
    t = r.table
    assert t[-1]["diverged"] and not any(row["diverged"] for row in t[:-1])
    assert r.best_strength in grid[:-1] and r.strength_1se in grid[:-1]
    assert any(w.startswith("strength 1e+03 diverged") for w in r.warnings)
    assert r.model is not None and np.isfinite(r.predict(X)).all()


# ---------------------------------------------------------------------------- predict
def test_predict_regression_in_raw_units_matches_sklearn():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 3)) * [1.0, 100.0, 0.01] + [5.0, -300.0, 0.0]
    y = 1000.0 + X @ np.array([2.0, 0.05, 300.0]) + rng.normal(size=80)
    r = tp.sweep(
        lambda: nn.Linear(3, 1), (X, y), strengths=[1e-6, 1e-4], folds=2, epochs=300,
        lr=0.05, batch_size=None, **QUIET,
    )  # fmt: skip
    ref = LinearRegression().fit(X, y).predict(X)
    p = r.predict(X)
    assert p.shape == (80,) and p.dtype == np.float64
    assert np.max(np.abs(p - ref)) < 0.02 * np.std(y)
    # every input type tp.sweep takes gives the same predictions
    for x in (
        torch.tensor(X),
        torch.tensor(X, dtype=torch.float32),
        X.tolist(),
        X.astype(np.float32),
    ):
        np.testing.assert_allclose(r.predict(x), p, rtol=1e-6, atol=1e-6)
    # the refit model takes NumPy and float64 tensors itself (in the model's float32)
    direct = r.model(X).detach().numpy().ravel()
    np.testing.assert_allclose(direct, p, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(r.model(torch.tensor(X)).detach().numpy().ravel(), direct)


def test_predict_multi_output_shape():
    X, y = _linear_data()
    Y = np.c_[y, -2 * y + 7]
    r = tp.sweep(lambda: nn.Linear(3, 2), (X, Y), strengths=[1e-4], folds=2, epochs=50, **QUIET)
    assert r.predict(X).shape == (60, 2)


def test_predict_classification_returns_the_original_labels():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    X = rng.normal(size=(150, 2)) * 10.0 + 50.0
    codes = np.digitize(X[:, 0] + 0.3 * X[:, 1], [55.0, 70.0])  # linearly separable
    y = np.array(["low", "mid", "high"])[codes]
    r = tp.sweep(
        lambda: nn.Linear(2, 3), (X, y), loss="cross_entropy", strengths=[1e-4, 1e-2],
        folds=3, epochs=100, lr=0.05, **QUIET,
    )  # fmt: skip
    assert r.classes == ["high", "low", "mid"] and r.loss == "cross_entropy"
    assert r.model_name == "Linear 2-3, 9 parameters"
    d = json.loads(r.to_json())
    assert d["classes"] == ["high", "low", "mid"] and d["model_name"] == r.model_name
    p = r.predict(X)
    assert p.dtype.kind == "U" and set(p) <= {"low", "mid", "high"}
    ref = LogisticRegression(C=1e4, max_iter=5000).fit(X, y).predict(X)
    assert (ref == y).mean() > 0.95
    assert (p == y).mean() > 0.9 and (p == ref).mean() > 0.9
    proba = r.predict_proba(torch.tensor(X))
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    assert (np.asarray(r.classes)[proba.argmax(1)] == p).all()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda r, X: r.predict(X[:, :2]), ValueError, r"X must be a 2-D array of shape \(rows, 3\), got shape \(60, 2\)"),
        (lambda r, X: r.predict(X[0]), ValueError, r"got shape \(3,\)"),
        (lambda r, X: r.predict(X + 1j), TypeError, r"X must be a real numeric array, got an array of dtype complex128"),
        (lambda r, X: r.predict(X.astype(str)), TypeError, r"dtype <U"),
        (lambda r, X: r.predict_proba(X), ValueError, r"predict_proba needs a classification sweep"),
    ],
)  # fmt: skip
def test_predict_errors(call, error, match):
    X, y = _linear_data()
    r = tp.sweep(lambda: nn.Linear(3, 1), (X, y), strengths=[1e-3], folds=2, epochs=2, **QUIET)
    with pytest.raises(error, match=match):
        call(r, X)
    r.model = None
    with pytest.raises(ValueError, match="no refit model"):
        r.predict(X)


# ---------------------------------------------------------------------------- group folds
GROUPS = [
    np.repeat(np.arange(6), [9, 7, 5, 4, 2, 1]),  # distinct sizes: the same split as sklearn
    np.repeat(np.arange(10), 3),  # all ties
    np.repeat(np.array(["ann", "bob", "cy", "dee", "eve"]), [4, 4, 3, 2, 2]),
    np.random.default_rng(0).integers(0, 12, size=100),
]


@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_group_kfold_matches_sklearn(groups, k):
    from sklearn.model_selection import GroupKFold

    mine = group_kfold(groups, k, seed=3)
    theirs = list(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups))
    n = len(groups)
    for tr, val in mine:
        assert not set(groups[tr]) & set(groups[val])  # no group on both sides
        assert sorted(np.concatenate([tr, val]).tolist()) == list(range(n))
    assert sorted(np.concatenate([v for _, v in mine]).tolist()) == list(range(n))
    # the same fold sizes as scikit-learn (largest group first, to the lightest fold)
    assert sorted(len(v) for _, v in mine) == sorted(len(v) for _, v in theirs)
    sizes = np.unique(groups, return_counts=True)[1]
    if len(set(sizes.tolist())) == len(sizes):  # no ties: the very same groups per fold
        as_sets = lambda folds: sorted(sorted(set(groups[v].tolist())) for _, v in folds)  # noqa: E731
        assert as_sets(mine) == as_sets(theirs)


def test_group_kfold_seed_breaks_ties_only():
    g = np.repeat(np.arange(10), 3)
    a, b = group_kfold(g, 5, seed=0), group_kfold(g, 5, seed=1)
    assert [v.tolist() for _, v in a] != [v.tolist() for _, v in b]
    assert [v.tolist() for _, v in a] == [v.tolist() for _, v in group_kfold(g, 5, seed=0)]


@pytest.mark.parametrize(
    ("groups", "k", "error", "match"),
    [
        ([1, 1, 2, 2], 3, ValueError, r"folds must be at most the number of groups \(2\), got 3"),
        ([1.0, np.nan, 2.0], 2, ValueError, r"groups must not contain NaN"),
        ([[1, 2], [3, 4]], 2, ValueError, r"groups must be 1-D \(one label per row\), got shape \(2, 2\)"),
        ([1, 2, 3], 1, ValueError, r"folds must be an integer >= 2, got 1"),
        ([1, 2, 3], True, ValueError, r"folds must be an integer >= 2, got True"),
        ([1 + 1j, 2j], 2, TypeError, r"groups must hold numbers or text labels, got dtype complex128"),
    ],
)  # fmt: skip
def test_group_kfold_errors(groups, k, error, match):
    with pytest.raises(error, match=match):
        group_kfold(groups, k)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 8), min_size=3, max_size=60), st.integers(2, 4), st.integers(0, 99))
def test_group_kfold_invariants(groups, k, seed):
    g = np.array(groups)
    if k > len(set(groups)):
        with pytest.raises(ValueError):
            group_kfold(g, k, seed)
        return
    folds = group_kfold(g, k, seed)
    assert len(folds) == k
    for tr, val in folds:
        assert len(val) > 0 and not set(g[tr]) & set(g[val])
    # balanced like LPT: no fold exceeds the smallest by more than the largest group
    sizes = [len(v) for _, v in folds]
    assert max(sizes) - min(sizes) <= np.bincount(g).max()


def test_table_is_built_once_and_handed_out_as_copies():
    """The table is computed once per state of the records (best_strength, strength_1se,
    warnings reuse it); callers get copies, and new records rebuild it."""
    vals = {(0, 0): 2.0, (0, 1): 2.0, (1, 0): 1.0, (1, 1): 9.0}
    recs = [Record(i=i, fold=f, strength=[0.1, 1.0][i], val_loss=v, train_loss=v,
                   param_norm=1.0, zero_fraction=0.0, best_epoch=0)
            for (i, f), v in vals.items()]  # fmt: skip
    r = SweepResult([0.1, 1.0], 2, recs[:3])
    assert r._rows() is r._rows() and r.best_strength == 1.0  # 1.0 has one fold so far
    r.table[0]["val_loss_mean"] = -1.0  # a copy
    assert r.table[0]["val_loss_mean"] == 2.0
    r.records.append(recs[3])
    assert r.table[1]["folds_done"] == 2 and r.best_strength == 0.1


@pytest.mark.parametrize("folds", [3, "loo"])
def test_refit_1se_of_the_ridge_closed_form_equals_sklearn(folds):
    """result.refit(which) reads the stored all-rows solutions (no second sweep):
    "best" is result.model, "1se" equals StandardScaler + Ridge(alpha=s_1se * n / 2)."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_diabetes(return_X_y=True)
    r = tp.sweep(lambda: nn.Linear(10, 1), (X, y), folds=folds, progress=False)
    assert r.refit_at == "best" and r.to_dict()["refit"] == "best"
    with torch.no_grad():
        assert torch.equal(r.refit("best")(X), r.model(X))
        ours = r.refit("1se")(X).double().numpy()[:, 0]
    assert r.strength_1se != r.best_strength
    ref = make_pipeline(StandardScaler(), Ridge(alpha=r.strength_1se * len(X) / 2)).fit(X, y)
    assert np.max(np.abs(ours - ref.predict(X))) < 1e-6 * np.abs(y).max() * 10  # float32 model


def test_refit_of_path_and_trained_sweeps():
    """The path solver reads its stored solutions (the 1-SE model has the zeros that
    result.selected names); a trained sweep trains the one all-rows model again, equal
    to its own refit at the best strength, and at any strength."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = 2 * X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=120)
    r = tp.sweep(lambda: nn.Linear(4, 1), (X, y), penalty="l1", strengths=[1.0, 0.3, 0.1, 0.01],
                 folds=3, progress=False)  # fmt: skip
    assert r.settings["solver"] == "path"
    w = r.refit("1se").model.weight.detach()
    assert [f"x{j}" for j in range(4) if w[0, j] != 0] == r.selected["1se"]
    t = tp.sweep(lambda: nn.Linear(4, 1), (X, y), solver="train", strengths=[1.0, 0.01],
                 folds=2, epochs=5, progress=False)  # fmt: skip
    with torch.no_grad():
        assert torch.equal(t.refit("best")(X), t.model(X))
        assert t.refit(0.5)(X).shape == (120, 1)


@pytest.mark.parametrize(
    ("which", "match"),
    [("foo", "which must be 'best', '1se' or a strength >= 0, got 'foo'"),
     (-1.0, "which must be 'best', '1se' or a strength >= 0, got -1.0"),
     (0.5, r"which must be 'best', '1se' or a strength of the grid \[0.01, 1.0\] \(solved")],
)  # fmt: skip
def test_refit_errors(which, match, tmp_path):
    X = np.random.default_rng(0).normal(size=(30, 2))
    r = tp.sweep(lambda: nn.Linear(2, 1), (X, X[:, 0]), strengths=[0.01, 1.0], folds=2,
                 progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=match):
        r.refit(which)
    loaded = SweepResult(r.strengths, 2, r.records, r.settings)  # no data, no solutions
    with pytest.raises(ValueError, match="refit needs the sweep's data"):
        loaded.refit("best")
