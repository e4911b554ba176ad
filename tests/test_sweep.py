"""tp.sweep: vectorized == sequential, selection rules, scikit-learn agreement, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import (
    SweepInterrupted,
    SweepResult,
    default_strengths,
    kfold,
    stratified_kfold,
)
from torchpenalty.sweep.engine import Engine, Record


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    return X[:200], y[:200]


def mlp():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))


FAST = {"epochs": 15, "batch_size": 32, "progress": False, "folds": 3}
GRID = [1e-3, 3e-2, 0.3, 3.0]


def _vals(r):
    return np.array([rec.val_loss for rec in r.records])


def test_vectorized_equals_sequential(diabetes):
    vec = tp.sweep(mlp, diabetes, strengths=GRID, **FAST)
    seq = tp.sweep(mlp, diabetes, strengths=GRID, vectorize=False, **FAST)
    vmap = tp.sweep(mlp, diabetes, strengths=GRID, forward="vmap", **FAST)
    chunked = tp.sweep(mlp, diabetes, strengths=GRID, max_memory_mb=0.4, vectorize=True, **FAST)
    assert vec.settings["forward"] == "bmm" and vmap.settings["forward"] == "vmap"
    assert seq.settings["chunk_size"] == 1 and 1 < chunked.settings["chunks"] < 12
    for other in (seq, vmap, chunked):
        np.testing.assert_allclose(_vals(other), _vals(vec), rtol=1e-4)
        assert other.best_strength == vec.best_strength
        assert other.strength_1se == vec.strength_1se
    # the refit models agree too
    x = torch.tensor(diabetes[0][:5], dtype=torch.float32)
    torch.testing.assert_close(vec.model(x), seq.model(x), rtol=1e-4, atol=1e-3)


def test_result_table_and_json(diabetes):
    r = tp.sweep(mlp, diabetes, strengths=GRID, **FAST)
    assert [row["strength"] for row in r.table] == GRID
    assert all(row["folds_done"] == 3 for row in r.table)
    vals = np.array([[rec.val_loss for rec in r.records if rec.i == i] for i in range(4)])
    np.testing.assert_allclose([row["val_loss_mean"] for row in r.table], vals.mean(1))
    np.testing.assert_allclose(
        [row["val_loss_se"] for row in r.table], vals.std(1, ddof=1) / np.sqrt(3)
    )
    norms = [row["param_norm_mean"] for row in r.table]
    assert norms == sorted(norms, reverse=True)  # stronger penalty, smaller weights
    d = json.loads(r.to_json())
    assert d["best_strength"] == r.best_strength and d["complete"] is True
    assert len(d["learning_curves"]["val"]) == FAST["epochs"]
    assert "SweepResult(4 strengths x 3 folds" in repr(r)


def test_one_se_rule_on_a_hand_made_table():
    # strength: fold losses. min mean at 0.1 (1.0, se 0.1); 1.0 has mean 1.05 <= 1.1
    folds = {
        0.01: [1.5, 1.6, 1.7],
        0.1: [0.9, 1.0, 1.1 + 0.0],
        1.0: [1.0, 1.05, 1.1],
        10.0: [2, 2, 2],
    }
    recs = [
        Record(i, k, s, v, 0.0, 0.0, 0.0, 0)
        for i, (s, vs) in enumerate(folds.items())
        for k, v in enumerate(vs)
    ]
    r = SweepResult(list(folds), 3, recs)
    se = np.std([0.9, 1.0, 1.1], ddof=1) / np.sqrt(3)
    assert r.table[1]["val_loss_se"] == pytest.approx(se)
    assert r.best_strength == 0.1
    assert r.strength_1se == 1.0
    r.refit_at = "1se"
    assert r.chosen_strength == 1.0


def test_linear_sweep_agrees_with_sklearn_ridge_cv(diabetes):
    X, y = diabetes
    n_train = len(X) * 4 / 5
    grid = [float(s) for s in np.logspace(-3, 0.5, 8)]
    r = tp.sweep(lambda: nn.Linear(10, 1), (X, y), strengths=grid, folds=5, epochs=300,
                 batch_size=None, optimizer="sgd", lr=0.1, progress=False, refit=False)  # fmt: skip
    alphas = [tp.to_sklearn_ridge(s, n_train) for s in grid]
    search = GridSearchCV(make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": alphas},
                          cv=kfold(len(X), 5, seed=0), scoring="neg_mean_squared_error")  # fmt: skip
    search.fit(X, y)
    sk = -search.cv_results_["mean_test_score"]
    ours = np.array([row["val_loss_mean"] for row in r.table])
    np.testing.assert_allclose(ours, sk, rtol=2e-3)  # the same CV curve
    assert grid[int(np.argmin(sk))] == r.best_strength


def test_classification_is_stratified_and_reports_accuracy():
    X, y = load_iris(return_X_y=True)
    r = tp.sweep(lambda: nn.Linear(4, 3), (X, y), strengths=[1e-4, 1e-2, 10.0], loss="cross_entropy",
                 folds=3, epochs=40, lr=0.05, progress=False)  # fmt: skip
    assert 0.8 < r.table[0]["val_accuracy_mean"] <= 1.0
    assert r.table[-1]["val_accuracy_mean"] < r.table[0]["val_accuracy_mean"]
    for _, val in stratified_kfold(y, 3):
        assert np.abs(np.bincount(y[val]) - 50 / 3).max() <= 1
    logits = r.model(torch.tensor(X[:10], dtype=torch.float32))
    assert logits.shape == (10, 3)


def test_l1_sweep_gives_exact_zeros_growing_with_strength(diabetes):
    # strengths in the raw target's units (std 77): L1(s) = Lasso(alpha=s/2); trained
    r = tp.sweep(lambda: nn.Linear(10, 1), diabetes, penalty="l1", strengths=[0.1, 10, 50, 500],
                 epochs=60, batch_size=None, lr=0.05, progress=False, folds=3, solver="train")  # fmt: skip
    assert r.settings["mode"] == "proximal"
    zeros = [row["zero_fraction_mean"] for row in r.table]
    assert zeros == sorted(zeros) and zeros[0] < 0.5 and zeros[-1] == 1.0


def test_unequal_group_folds_train_as_one_at_a_time(diabetes):
    """Group folds training on 170, 150 and 80 rows take 6, 5 and 3 batches of 32 per
    epoch: chunks never mix them, so stacked training equals one model at a time."""
    X, y = diabetes
    groups = np.repeat([0, 1, 2], [30, 50, 120])
    kw = dict(strengths=GRID, groups=groups, **FAST)
    vec = tp.sweep(mlp, (X, y), vectorize=True, **kw)
    seq = tp.sweep(mlp, (X, y), vectorize=False, **kw)
    assert vec.settings["chunks"] == 3  # one per batch count, 4 strengths each
    np.testing.assert_allclose(_vals(vec), _vals(seq), rtol=1e-4)


def test_early_stopping_keeps_the_best_epoch(diabetes):
    r = tp.sweep(mlp, diabetes, strengths=[1e-4, 1.0], epochs=40, batch_size=16, lr=0.05,
                 early_stopping=3, progress=False, folds=3, refit=False)  # fmt: skip
    for rec in r.records:
        hist = rec.history["val"]
        # patience by hand: a model stops 3 epochs after its last improvement (its chunk may
        # train on, and record, further epochs that no longer count)
        best = 0
        for epoch, v in enumerate(hist):
            if v < hist[best]:
                best = epoch
            if epoch - best >= 3:
                break
        assert rec.best_epoch == best
        assert rec.val_loss == pytest.approx(hist[best], rel=1e-5)
        assert len(hist) <= 40
    assert any(len(rec.history["val"]) < 40 for rec in r.records)  # some stopped early


def _interrupt_at(monkeypatch, calls):
    real = Engine._penalty_step
    count = {"n": 0}

    def step(self, *a):
        count["n"] += 1
        if count["n"] == calls:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(Engine, "_penalty_step", step)


def test_the_memory_budget_counts_the_input_rows_each_model_gathers():
    """A chunk gathers every model's input rows at once ((M, rows, features) per epoch and
    per evaluation): with 2000 features they, not the parameters, decide the chunk."""
    g = np.random.default_rng(0)
    X, y = g.normal(size=(200, 2000)), g.normal(size=200)
    budget = 8.0

    def make():
        return nn.Sequential(nn.Linear(2000, 4), nn.ReLU(), nn.Linear(4, 1))

    r = tp.sweep(make, (X, y), strengths=GRID, max_memory_mb=budget, vectorize=True,
                 refit=False, **{**FAST, "epochs": 1})  # fmt: skip
    per_model = 200 * 2000 * 4  # float32 rows
    assert 1 <= r.settings["chunk_size"] <= budget * 2**20 // per_model


@pytest.mark.parametrize("budget", [2048.0, 0.4])  # one chunk, or many chunks
def test_interrupt_and_resume_gives_the_uninterrupted_result(diabetes, monkeypatch, budget):
    kw = dict(strengths=GRID, max_memory_mb=budget, vectorize=True, **FAST)
    full = tp.sweep(mlp, diabetes, **kw)
    _interrupt_at(monkeypatch, 37)  # mid-epoch, mid-chunk
    with pytest.raises(SweepInterrupted) as info:
        tp.sweep(mlp, diabetes, **kw)
    state = info.value.state
    assert state["snapshot"] is not None or state["records"]
    monkeypatch.undo()
    resumed = tp.sweep(mlp, diabetes, resume=state, **kw)
    np.testing.assert_allclose(_vals(resumed), _vals(full), rtol=1e-6)
    assert resumed.best_strength == full.best_strength
    with pytest.raises(ValueError, match="resume must come from a sweep with the same"):
        tp.sweep(mlp, diabetes, resume=state, **{**kw, "epochs": 3})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"strengths": [0.1, -1.0]}, ValueError, r"strengths must be a finite number >= 0, got -1.0"),
        ({"strengths": []}, ValueError, r"strengths must be a non-empty list"),
        ({"penalty": "orthogonal"}, ValueError, r"penalty must be one of 'l2', .*got 'orthogonal'"),
        ({"penalty": "ridge2"}, ValueError, r"name must be one of"),
        ({"mode": "loss"}, ValueError, r"mode must be one of 'grad', 'decoupled', 'proximal', got 'loss'"),
        ({"folds": 1}, ValueError, r"folds must be an integer >= 2, got 1"),
        ({"folds": 500}, ValueError, r"folds must be at most the number of rows \(200\), got 500"),
        ({"epochs": 0}, ValueError, r"epochs must be an integer >= 1, got 0"),
        ({"lr": float("nan")}, ValueError, r"lr must be a finite number > 0, got nan"),
        ({"loss": "mae"}, ValueError, r"loss must be one of 'mse', 'cross_entropy', 'huber', got 'mae'"),
        ({"optimizer": "lbfgs"}, ValueError, r"optimizer must be one of 'adam', 'sgd', got 'lbfgs'"),
        ({"refit": "last"}, ValueError, r"refit must be 'best', '1se' or False, got 'last'"),
        ({"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1, got 0"),
        ({"device": "gpu0"}, ValueError, r"device must be a torch device such as 'cpu' or 'cuda', got 'gpu0'"),
        ({"device": "meta"}, ValueError, r"device must be 'cpu' or 'cuda' \(a sweep trains on one of these\), got 'meta'"),
        ({"device": "mps"}, ValueError, r"device must be 'cpu' or 'cuda' .*got 'mps'"),
        ({"strengths": 0.1}, TypeError, r"strengths must be a sequence of numbers >= 0 .*got 0.1"),
        ({"strengths": "0.1"}, TypeError, r"strengths must be a sequence .*got '0.1'"),
        ({"strengths": [0.1, float("nan")]}, ValueError, r"strengths must be a finite number >= 0, got nan"),
        ({"penalty": "l2sp"}, ValueError, r"penalty must be one of 'l2', 'l1', 'elastic_net', 'group_lasso'.* \(the penalties a sweep stacks\), got 'l2sp'"),
        ({"resume": [1, 2]}, TypeError, r"resume must be the state of a SweepInterrupted \(a dict\) or None, got \[1, 2\]"),
        ({"resume": {"records": []}}, ValueError, r"resume must be the state of a SweepInterrupted, got a dict missing \['settings', 'strengths', 'chunk_size'\]"),
        ({"forward": "jit"}, ValueError, r"forward must be one of 'auto', 'bmm', 'vmap', got 'jit'"),
        ({"seed": -1}, ValueError, r"seed must be an integer >= 0, got -1"),
        ({"seed": 2**40}, ValueError, r"seed must be an integer in \[0, 4294967295\], got 1099511627776"),
        ({"seed": 1.5}, TypeError, r"seed must be an integer, got 1.5"),
        ({"vectorize": "yes"}, TypeError, r"vectorize must be True, False or 'auto', got 'yes'"),
        ({"early_stopping": 0}, ValueError, r"early_stopping must be an integer >= 1, got 0"),
        ({"max_memory_mb": 0}, ValueError, r"max_memory_mb must be a finite number > 0, got 0"),
        ({"on_chunk": 3}, TypeError, r"on_chunk must be a callable, got 3"),
    ],
)  # fmt: skip
def test_argument_errors(diabetes, kwargs, error, match):
    with pytest.raises(error, match=match):
        tp.sweep(mlp, diabetes, **{"progress": False, **kwargs})


def test_data_errors():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="X must be finite"):
        tp.sweep(mlp, (np.where(X > 1.5, np.nan, X), X[:, 0]), progress=False)
    with pytest.raises(ValueError, match=r"y must be non-constant, got every value 1.0"):
        tp.sweep(mlp, (X, np.ones(20)), progress=False)
    with pytest.raises(
        ValueError, match=r"y must be of the same length as X \(20 rows\), got 19 rows"
    ):
        tp.sweep(mlp, (X, X[:19, 0]), progress=False)
    with pytest.raises(ValueError, match=r"X must be a 2-D array"):
        tp.sweep(mlp, (X[:, 0], X[:, 0]), progress=False)
    with pytest.raises(TypeError, match=r"make_model must be a callable"):
        tp.sweep(nn.Linear(3, 1), (X, X[:, 0]), progress=False)
    with pytest.raises(TypeError, match=r"make_model must return an nn.Module, got 3"):
        tp.sweep(lambda: 3, (X, X[:, 0]), progress=False)


def test_default_strengths_span_both_regimes(diabetes):
    from torchpenalty.sweep import default_strengths

    grid = default_strengths()
    assert len(grid) == 13 and grid[0] == 1e-5 and grid[-1] == 10.0
    r = tp.sweep(mlp, diabetes, epochs=20, batch_size=32, folds=3, progress=False, refit=False)
    t = r.table  # under-regularized end overfits, over-regularized end underfits
    assert t[0]["train_loss_mean"] < t[0]["val_loss_mean"]
    assert t[-1]["param_norm_mean"] < 0.01 * t[0]["param_norm_mean"]


def test_plots(diabetes, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = tp.sweep(mlp, diabetes, strengths=GRID, **FAST)
    for kind in ("validation", "norm", "learning"):
        fig, ax = plt.subplots()
        disp = r.plot(ax=ax, kind=kind)
        assert disp.ax_ is ax and disp.figure_ is fig
        assert ax.get_title()
        fig.savefig(tmp_path / f"{kind}.png")
        plt.close(fig)
    assert r.plot(kind="validation").ax_.get_xscale() == "log"
    with pytest.raises(
        ValueError, match=r"kind must be one of 'validation', 'norm', 'learning', got 'pie'"
    ):
        r.plot(kind="pie")
    plt.close("all")


def test_interrupt_during_refit_keeps_the_cross_validation(diabetes, monkeypatch):
    import torchpenalty.sweep.run as core

    kw = dict(strengths=GRID, **FAST)
    full = tp.sweep(mlp, diabetes, **kw)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "_refit", boom)
    with pytest.raises(SweepInterrupted) as info:
        tp.sweep(mlp, diabetes, **kw)
    assert info.value.result.complete and len(info.value.state["records"]) == len(GRID) * 3
    monkeypatch.undo()
    calls = {"n": 0}
    real = Engine.run

    def counting(self, tasks, **k):
        calls["n"] += 1
        return real(self, tasks, **k)

    monkeypatch.setattr(Engine, "run", counting)
    resumed = tp.sweep(mlp, diabetes, resume=info.value.state, **kw)
    assert calls["n"] == 1  # only the refit ran again
    np.testing.assert_allclose(_vals(resumed), _vals(full), rtol=1e-6)
    x = torch.tensor(diabetes[0][:4], dtype=torch.float32)
    torch.testing.assert_close(resumed.model(x), full.model(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1)),
        lambda: nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1)),
    ],
    ids=["dropout", "batchnorm"],
)
def test_models_with_dropout_and_batch_norm(diabetes, make):
    """Dropout draws per-model masks and is off for evaluation; batch norm keeps per-model
    running statistics, used for evaluation and carried into the refit model."""
    torch.manual_seed(0)  # dropout masks come from the global generator
    r = tp.sweep(make, diabetes, strengths=[1e-3, 0.1], **FAST)
    seq = tp.sweep(make, diabetes, strengths=[1e-3, 0.1], vectorize=False, **FAST)
    assert r.settings["forward"] == "vmap"
    # batch norm: the same up to Adam amplifying rounding noise in the bias before the norm;
    # dropout: each run draws its own masks, so compare the means across folds
    means = [row["val_loss_mean"] for row in r.table]
    np.testing.assert_allclose(means, [row["val_loss_mean"] for row in seq.table], rtol=0.15)
    model = r.model
    assert not model.training
    x = torch.tensor(diabetes[0][:8], dtype=torch.float32)
    torch.testing.assert_close(model(x), model(x))  # deterministic in evaluation
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    if bn:
        assert bn[0].num_batches_tracked > 0 and bn[0].running_mean.abs().sum() > 0


def test_model_and_label_errors():
    """Each bad combination of model and data gets a ValueError naming the argument before
    anything trains."""
    X, y = load_iris(return_X_y=True)
    cases = [
        (lambda: nn.Linear(3, 3), (X, y), r"X must be of a width the model accepts, got 4 columns \(.*\)"),
        (lambda: nn.ReLU(), (X, y), r"make_model must be a model with trainable parameters, got ReLU\(\)"),
        (lambda: nn.Linear(4, 2), (X, y), r"make_model must be a model with one output per class \(3\), got 2 outputs"),
        (lambda: nn.Linear(4, 3), (X, np.stack([y, y], 1)), r"y must be 1-D class labels for loss='cross_entropy', got shape \(150, 2\)"),
        (lambda: nn.Linear(4, 3), (X, np.where(np.arange(150) == 7, np.nan, y)), r"y must be class labels \(no NaN or inf\)"),
        (lambda: nn.Linear(4, 1), (X + 1j, X[:, 0]), r"X must be real \(not complex\), got dtype complex128"),
        (lambda: nn.Linear(4, 2), (X, X[:, :3]), r"make_model must be a model with 3 outputs \(y's columns\), got 2 outputs"),
    ]  # fmt: skip
    for make, data, match in cases:
        loss = (
            "mse"
            if data[1].ndim == 2 and data[1].dtype.kind == "f" and data[1].shape[1] == 3
            else "cross_entropy"
        )
        loss = "mse" if np.iscomplexobj(data[0]) else loss
        with pytest.raises(ValueError, match=match):
            tp.sweep(make, data, loss=loss, progress=False)


def test_loss_is_inferred_like_the_command_line():
    X, y = load_iris(return_X_y=True)
    kw = dict(strengths=[1e-3, 1.0], folds=3, epochs=3, progress=False, refit=False)
    r = tp.sweep(lambda: nn.Linear(4, 3), (X, y), **kw)
    assert r.loss == "cross_entropy" and r.settings["loss"] == "cross_entropy"
    assert "val_accuracy_mean" in r.table[0]
    text = np.array(["setosa", "versicolor", "virginica"])[y]
    assert tp.sweep(lambda: nn.Linear(4, 3), (X, text), **kw).loss == "cross_entropy"
    with pytest.warns(
        UserWarning, match=r"y holds 3 distinct integer values: if these are classes"
    ):
        r = tp.sweep(lambda: nn.Linear(4, 1), (X, y), loss="mse", **kw)
    assert r.loss == "mse"
    Xd, yd = load_diabetes(return_X_y=True)
    assert tp.sweep(lambda: nn.Linear(10, 1), (Xd[:60], yd[:60]), **kw).loss == "mse"


def test_frozen_parameters_stay_frozen(diabetes, monkeypatch):
    def make():
        m = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 1))
        m[0].requires_grad_(False)
        return m

    finals = []
    real = Engine.run

    def capture(self, tasks, **kw):
        recs, final = real(self, tasks, **kw)
        finals.append((self, tasks, final))
        return recs, final

    monkeypatch.setattr(Engine, "run", capture)
    r = tp.sweep(make, diabetes, strengths=[1e-3, 1.0], **FAST)
    assert sum(len(tasks) for _, tasks, _ in finals) == 2 * 3 + 1  # six folds and the refit
    for engine, tasks, final in finals:
        for j, t in enumerate(tasks):
            init = engine.init(t.fold)
            torch.testing.assert_close(final["0.weight"][j], init["0.weight"], rtol=0, atol=0)
            torch.testing.assert_close(final["0.bias"][j], init["0.bias"], rtol=0, atol=0)
            assert not torch.equal(final["2.weight"][j], init["2.weight"])  # the rest trains
    refit = r.model.model
    assert not refit[0].weight.requires_grad
    torch.testing.assert_close(refit[0].weight, finals[-1][0].init(3)["0.weight"])


def test_default_strengths_at_the_top_level():
    assert tp.default_strengths() == tp.sweep.default_strengths() == default_strengths()
    assert "default_strengths" in tp.__all__


def test_resume_never_duplicates_records(diabetes):
    """A state whose records repeat one (strength, fold), or already hold the chunk its
    snapshot belongs to, resumes to the uninterrupted table."""
    kw = dict(strengths=GRID, vectorize=False, **FAST)
    full = tp.sweep(mlp, diabetes, **kw)
    seen = []
    tp.sweep(mlp, diabetes, on_chunk=seen.append, **kw)
    state = dict(seen[3])  # three models done
    state["records"] = state["records"] + state["records"][:2]  # duplicates
    resumed = tp.sweep(mlp, diabetes, resume=state, **kw)
    assert len(resumed.records) == len(GRID) * 3
    assert all(row["folds_done"] == 3 for row in resumed.table)
    np.testing.assert_allclose(_vals(resumed), _vals(full), rtol=1e-6)
    changed = np.array(diabetes[1], copy=True)
    changed[0] += 1.0
    with pytest.raises(ValueError, match="resume must come from a sweep with the same data"):
        tp.sweep(mlp, (diabetes[0], changed), resume=state, **kw)


@pytest.mark.parametrize("vectorize", [False, True])
def test_batch_norm_never_sees_a_padding_row(vectorize):
    """66 training rows per fold in batches of 65 (a first batch of one row): the padding
    that keeps batch shapes equal never reaches a batch-norm model's forward pass, so a
    fold's model does not depend on a row it validates on (padding is row 0 of X)."""
    from torchpenalty.sweep.folds import kfold

    g = torch.Generator().manual_seed(0)
    X = torch.randn(99, 3, generator=g)
    y = X @ torch.tensor([1.0, 0.0, -2.0]) + 0.1 * torch.randn(99, generator=g)
    fold = next(k for k, (_, va) in enumerate(kfold(99, 3, 0)) if 0 in va)

    def make():
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))

    def run(X):
        r = tp.sweep(make, (X, y), strengths=[1e-3, 0.1], folds=3, epochs=2, batch_size=65,
                     vectorize=vectorize, progress=False, refit=False)  # fmt: skip
        return {(rec.i, rec.fold): (rec.train_loss, rec.param_norm) for rec in r.records}

    moved = X.clone()
    moved[0] = 100.0  # a validation row of `fold` only
    a, b = run(X), run(moved)
    for i in range(2):
        assert a[(i, fold)] == b[(i, fold)]


def test_resuming_twice_from_one_state_gives_the_same_result(diabetes, monkeypatch):
    """A resume trains on copies: the state it was given stays as it was."""
    kw = dict(strengths=[1e-3, 0.1], epochs=6, batch_size=32, folds=2, progress=False,
              refit=False, early_stopping=3, vectorize=True)  # fmt: skip
    full = tp.sweep(mlp, diabetes, **kw)
    _interrupt_at(monkeypatch, 15)
    with pytest.raises(tp.SweepInterrupted) as info:
        tp.sweep(mlp, diabetes, **kw)
    monkeypatch.undo()
    state = info.value.state
    assert state["snapshot"] is not None
    first = tp.sweep(mlp, diabetes, resume=state, **kw)
    second = tp.sweep(mlp, diabetes, resume=state, **kw)
    np.testing.assert_allclose(_vals(first), _vals(full), rtol=1e-6)
    assert _vals(second).tolist() == _vals(first).tolist()
