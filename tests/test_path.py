"""The path solver (torchpenalty.sweep.path) against scikit-learn: Lasso, ElasticNet and
LogisticRegression coefficients over the grid on the same folds (1e-5 relative, identical
zero sets), GridSearchCV's validation curves, and the sweep's wiring (solver="auto"/"path")."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import path
from torchpenalty.sweep.folds import kfold, stratified_kfold

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine  # noqa: E402
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

GRID = [10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 1e-3, 1e-4, 1e-5]
DIABETES = load_diabetes(return_X_y=True)
TARGETS = {"raw": lambda y: y, "y*1000+5000": lambda y: y * 1000 + 5000}


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    top = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / top) if top > 0 else float(np.max(np.abs(a)))


def compare(fit, X, y, splits, make, strengths, coef_of=lambda W: W[0]):
    """Max relative coefficient difference and whether every zero set is equal."""
    worst, same = 0.0, True
    for i, s in enumerate(strengths):
        for f, (tr, _) in enumerate(splits):
            Z = StandardScaler().fit(X[tr]).transform(X[tr])
            ref = make(s, len(tr)).fit(Z, y[tr]).coef_
            ours = coef_of(fit.weight[i, f].numpy()).reshape(ref.shape)
            worst = max(worst, rel(ours, ref))
            same &= bool(np.array_equal(ours == 0, ref == 0))
    return worst, same


REGRESSION = [  # (name, terms, scikit-learn estimator at strength s)
    ("lasso", {"l1": 1.0}, lambda s, n: Lasso(alpha=s / 2, tol=1e-12, max_iter=10**6)),
    ("enet", {"l1": 0.3, "l2": 0.7},
     lambda s, n: ElasticNet(alpha=s / 2, l1_ratio=0.3, tol=1e-12, max_iter=10**6)),
]  # fmt: skip


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize(("name", "coef", "make"), REGRESSION, ids=[r[0] for r in REGRESSION])
def test_mse_path_equals_sklearn_over_the_grid(name, coef, make, target):
    """L1(s) = Lasso(alpha=s/2), ElasticNet(s, r) = ElasticNet(alpha=s/2, l1_ratio=r) on the
    raw target (std 77) and on y*1000+5000: every strength, every fold."""
    X, y = DIABETES[0], TARGETS[target](DIABETES[1])
    splits = kfold(len(X), 5, seed=0)
    fit = path.mse_path(X, y, splits, GRID, coef)
    assert bool(fit.converged.all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's own gap warnings at tol=1e-15
        worst, same = compare(fit, X, y, splits, make, GRID)
    assert worst < 1e-5 and same, (worst, same)


def _wide():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 60))
    return X, X[:, :8] @ rng.normal(size=8) * 5 + rng.normal(size=300), kfold(300, 5, seed=1)


def _offset():  # inputs far from zero and a constant column: the fold moments stay exact
    X, y = DIABETES
    X = X * 3 + 1e4
    X[:, 3] = 7.0
    return X, y, kfold(len(X), 4, seed=2)


def _subsets():  # training rows that are not the complement of the validation rows
    X, y = DIABETES
    rng = np.random.default_rng(3)
    splits = [(np.sort(rng.permutation(442)[:300]), np.arange(0, 50)) for _ in range(3)]
    return X, y, splits


def _more_features_than_rows():  # singular Gram matrices: 40 training rows, 100 features
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 100))
    return X, X[:, :5].sum(1) + rng.normal(size=60), kfold(60, 3, seed=4)


PROBLEMS = {"wide 300x60": _wide, "offset + constant column": _offset, "subsets": _subsets,
            "100 features, 40 rows": _more_features_than_rows}  # fmt: skip


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize(("name", "coef", "make"), REGRESSION, ids=[r[0] for r in REGRESSION])
def test_mse_path_equals_sklearn_on_harder_problems(name, coef, make, problem):
    """The active set gathered to its coordinates (wide), fold moments from all-rows sums
    minus the validation block's (offset inputs, a constant column) and splits without
    that structure: still Lasso / ElasticNet on every fold and strength."""
    X, y, splits = PROBLEMS[problem]()
    grid = [3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 1e-3]
    fit = path.mse_path(X, y, splits, grid, coef)
    assert bool(fit.converged.all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        worst, same = compare(fit, X, y, splits, make, grid)
    assert worst < 1e-5 and same, (worst, same)


@pytest.mark.parametrize("batch", [0, 32], ids=["strength by strength", "all strengths at once"])
def test_active_set_cut_short_hands_over_to_fista(monkeypatch, batch):
    """Where the active-set method stops short of the tolerance (here: after 2 iterations),
    FISTA with Newton steps finishes the strength: the same Lasso solutions."""
    monkeypatch.setattr(path, "ONE_BATCH_FEATURES", batch)
    real = path.active_set
    monkeypatch.setattr(path, "active_set", lambda *a, **k: real(*a, **{**k, "max_iter": 2}))
    X, y = DIABETES
    splits = kfold(len(X), 5, seed=0)
    fit = path.mse_path(X, y, splits, GRID[:7], {"l1": 1.0})
    assert bool(fit.converged.all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        worst, same = compare(fit, X, y, splits, REGRESSION[0][2], GRID[:7])
    assert worst < 1e-5 and same, (worst, same)


def test_duplicate_features_reach_lassos_objective():
    """Two identical columns and more features than rows: no unique solution, so compare
    the objective mean((Zw + b - y)**2) + s*|w|_1 with Lasso's (and no singular solve
    stops the path)."""
    X, y, splits = _more_features_than_rows()
    X[:, 1] = X[:, 0]
    grid = [1.0, 0.1, 0.01, 0.003]
    fit = path.mse_path(X, y, splits, grid, {"l1": 1.0})
    assert bool(fit.converged.all())
    for i, s in enumerate(grid):
        for f, (tr, _) in enumerate(splits):
            Z = StandardScaler().fit(X[tr]).transform(X[tr])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = Lasso(alpha=s / 2, tol=1e-14, max_iter=10**6).fit(Z, y[tr])
            w, b = fit.weight[i, f, 0].numpy(), float(fit.bias[i, f, 0])
            ours = np.mean((Z @ w + b - y[tr]) ** 2) + s * np.abs(w).sum()
            theirs = np.mean((ref.predict(Z) - y[tr]) ** 2) + s * np.abs(ref.coef_).sum()
            assert ours <= theirs * (1 + 1e-9), (s, f, ours, theirs)


def test_mse_validation_curve_equals_gridsearchcv():
    X, y = DIABETES
    r = tp.sweep(lambda: nn.Linear(10, 1), (X, y), penalty="l1", strengths=GRID, folds=5,
                 progress=False)  # fmt: skip
    assert r.settings["solver"] == "path" and all(r.settings["converged"])
    splits = kfold(len(X), 5, seed=0)
    pipe = make_pipeline(StandardScaler(), Lasso(tol=1e-15, max_iter=10**6))
    grid = {"lasso__alpha": [s / 2 for s in GRID]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gs = GridSearchCV(pipe, grid, cv=splits, scoring="neg_mean_squared_error").fit(X, y)
    ours = [row["val_loss_mean"] for row in r.table]
    assert rel(ours, -gs.cv_results_["mean_test_score"]) < 1e-8
    assert r.best_strength == 2 * gs.best_params_["lasso__alpha"]
    Z = StandardScaler().fit(X).transform(X)
    ref = Lasso(alpha=r.best_strength / 2, tol=1e-15, max_iter=10**6).fit(Z, y)
    assert rel(r.model.model.weight.detach().double().numpy()[0], ref.coef_) < 1e-5
    assert np.allclose(r.predict(X), ref.predict(Z), rtol=1e-5)


def _binary(W):  # a two-output model is the logistic model of v = w_1 - w_0
    return (W[1] - W[0])[None]


CANCER = load_breast_cancer(return_X_y=True)
WINE = load_wine(return_X_y=True)
CLASSIFY = [  # (data, terms, strengths, estimator, coefficient map)
    ("cancer-l2", CANCER, {"l2": 1.0}, [1.0, 0.1, 0.01, 1e-3],
     lambda s, n: LogisticRegression(C=2 / (s * n), l1_ratio=0.0, solver="newton-cholesky",
                                     tol=1e-12, max_iter=1000), _binary),
    ("cancer-l1", CANCER, {"l1": 1.0}, [0.3, 0.1, 0.03],
     lambda s, n: LogisticRegression(C=1 / (s * n), l1_ratio=1.0, solver="saga", tol=1e-12,
                                     max_iter=10**6), _binary),
    ("cancer-enet", CANCER, {"l1": 0.5, "l2": 0.5}, [0.3, 0.1, 0.03],
     lambda s, n: LogisticRegression(C=2 / (s * n * 1.5), l1_ratio=1 / 1.5, solver="saga",
                                     tol=1e-12, max_iter=10**6), _binary),
    ("wine-l2", WINE, {"l2": 1.0}, [1.0, 0.1, 0.01],
     lambda s, n: LogisticRegression(C=1 / (s * n), l1_ratio=0.0, solver="newton-cholesky",
                                     tol=1e-12, max_iter=1000), lambda W: W),
    ("wine-l1", WINE, {"l1": 1.0}, [0.3, 0.1, 0.03],
     lambda s, n: LogisticRegression(C=1 / (s * n), l1_ratio=1.0, solver="saga", tol=1e-12,
                                     max_iter=10**6), lambda W: W),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "coef", "grid", "make", "coef_of"), CLASSIFY,
                         ids=[c[0] for c in CLASSIFY])  # fmt: skip
def test_cross_entropy_path_equals_logistic_regression(name, data, coef, grid, make, coef_of):
    """Multinomial (K >= 3): C = 1/(s*n) for every penalty. Binary (a two-output model):
    the logistic model of v = w_1 - w_0 with C = 2/(s*n*(1+r)), l1_ratio = 2r/(1+r)
    (L1: C = 1/(s*n); L2: C = 2/(s*n)); intercepts unpenalized on both sides."""
    X, y = data
    splits = stratified_kfold(y, 3, seed=0)
    fit = path.ce_path(X, y, len(np.unique(y)), splits, grid, coef)
    assert bool(fit.converged.all())
    worst, same = compare(fit, X, y, splits, make, grid, coef_of)
    assert worst < 1e-5 and same, (worst, same)


def test_group_lasso_path_satisfies_kkt_in_numpy():
    """Group lasso has no scikit-learn estimator: check the optimality conditions of
    mean((ZW^T + b - Y)^2) + s * sum_j ||W[:, j]|| (groups: inputs, GroupLasso(dim=1))."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 6))
    Y = X[:, :2] @ rng.normal(size=(2, 3)) + 0.5 * rng.normal(size=(80, 3))
    splits = kfold(80, 4, seed=0)
    fit = path.mse_path(X, Y, splits, [1.0, 0.3, 0.1], {"group": 1.0, "group_dim": 1})
    assert bool(fit.converged.all())
    for i, s in enumerate([1.0, 0.3, 0.1]):
        for f, (tr, _) in enumerate(splits):
            Z = StandardScaler().fit(X[tr]).transform(X[tr])
            W, b = fit.weight[i, f].numpy(), fit.bias[i, f].numpy()
            grad = 2 * (Z @ W.T + b - Y[tr]).T @ Z / (len(tr) * 3)  # (k, d)
            for j in range(6):
                norm = np.linalg.norm(W[:, j])
                if norm > 0:
                    assert np.abs(grad[:, j] + s * W[:, j] / norm).max() < 1e-7, (s, f, j)
                else:
                    assert np.linalg.norm(grad[:, j]) <= s * (1 + 1e-9)
    assert (fit.weight == 0).any()  # some groups are exactly zero


def test_logistic_l1_with_more_features_than_rows_reaches_sagas_objective():
    """Binary L1 on 40 training rows and 80 features (a singular Hessian): every fold and
    strength converges, and the objective mean log loss + s*|v|_1 (v = w_1 - w_0) is at
    most saga's (C = 1/(s*n), tol 1e-10)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 80))
    y = (X[:, :5].sum(1) + rng.normal(size=60) > 0).astype(int)
    splits, grid = stratified_kfold(y, 3, seed=0), [0.1, 0.03]
    fit = path.ce_path(X, y, 2, splits, grid, {"l1": 1.0})
    assert bool(fit.converged.all())
    for i, s in enumerate(grid):
        for f, (tr, _) in enumerate(splits):
            Z = StandardScaler().fit(X[tr]).transform(X[tr])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = LogisticRegression(C=1 / (s * len(tr)), l1_ratio=1.0, solver="saga",
                                         tol=1e-10, max_iter=10**5).fit(Z, y[tr])  # fmt: skip
            W, b = fit.weight[i, f].numpy(), fit.bias[i, f].numpy()

            def objective(v, c, Z=Z, t=y[tr], s=s):
                u = Z @ v + c
                return np.mean(np.logaddexp(0, u) - t * u) + s * np.abs(v).sum()

            ours = objective(W[1] - W[0], b[1] - b[0])
            assert ours <= objective(ref.coef_[0], ref.intercept_[0]) * (1 + 1e-9), (s, f)


def test_sweep_solver_choice():
    X, y = DIABETES
    kw = {"strengths": [1.0, 0.1], "folds": 3, "progress": False}
    assert (
        tp.sweep(lambda: nn.Linear(10, 1), (X, y), penalty="l1", **kw).settings["solver"] == "path"
    )
    trained = tp.sweep(
        lambda: nn.Linear(10, 1), (X, y), penalty="l1", solver="train", epochs=2, **kw
    )
    assert "solver" not in trained.settings
    mlp = lambda: nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 1))  # noqa: E731
    with pytest.raises(
        ValueError, match=r"solver='path' needs a model that is one trainable nn.Linear"
    ):
        tp.sweep(mlp, (X, y), penalty="l1", solver="path", **kw)
    Xc, yc = CANCER
    r = tp.sweep(lambda: nn.Linear(30, 2), (Xc, yc), penalty="l1", **kw)
    assert r.settings["solver"] == "path" and r.classes == [0, 1]
    assert (r.predict(Xc) == yc).mean() > 0.9


def test_not_converged_warns(monkeypatch):
    monkeypatch.setattr(path, "MAX_ITER", 10)
    monkeypatch.setattr(path, "TOL", 1e-30)
    X, y = CANCER
    with pytest.warns(RuntimeWarning, match="did not reach its KKT tolerance"):
        r = tp.sweep(lambda: nn.Linear(30, 2), (X, y), penalty="l1", strengths=[0.01],
                     folds=3, progress=False)  # fmt: skip
    assert r.settings["converged"] == [False] and r.settings["tol"] == 1e-30


@pytest.mark.parametrize(("target", "s"), [("raw", 1.0), ("y*1000+5000", 1000.0)])
def test_trained_l1_sweep_reports_raw_target_units(target, s):
    """solver="train" trains on the standardized target with L1(s / sd_y) per fold, so
    the refit equals Lasso(alpha=s/2) on the raw target (was Lasso(alpha=s/2 * sd_y))."""
    X, y = DIABETES[0], TARGETS[target](DIABETES[1])
    r = tp.sweep(lambda: nn.Linear(10, 1), (X, y), penalty="l1", strengths=[s], folds=2,
                 solver="train", epochs=400, batch_size=None, lr=0.05, progress=False)  # fmt: skip
    assert r.settings["strength_units"] == "raw target"
    assert all(rec.strength == s for rec in r.records)
    Z = StandardScaler().fit_transform(X)
    ref = Lasso(alpha=s / 2, tol=1e-12, max_iter=10**6).fit(Z, y).coef_
    m = r.model
    w = m.model.weight.detach().double().numpy()[0] * float(m.y_std)  # raw-target units
    assert rel(w, ref) < 1e-5 and np.array_equal(w == 0, ref == 0), rel(w, ref)


def test_path_sweep_on_an_offset_target_equals_gridsearchcv():
    X, y = DIABETES[0], DIABETES[1] * 1000 + 5000
    grid = [3000.0, 1000.0, 300.0, 100.0, 10.0]
    r = tp.sweep(lambda: nn.Linear(10, 1), (X, y), penalty="l1", strengths=grid, progress=False)
    pipe = make_pipeline(StandardScaler(), Lasso(tol=1e-12, max_iter=10**6))
    gs = GridSearchCV(pipe, {"lasso__alpha": [s / 2 for s in grid]}, cv=kfold(len(X), 5, seed=0),
                      scoring="neg_mean_squared_error").fit(X, y)  # fmt: skip
    assert rel([row["val_loss_mean"] for row in r.table], -gs.cv_results_["mean_test_score"]) < 1e-8
    assert r.best_strength == 2 * gs.best_params_["lasso__alpha"]


def test_strength_units_of_penalties_without_a_factor():
    """Elastic net mixes degrees 1 and 2: trained on a standardized target its strength
    stays in standardized-target units, and the settings say so."""
    X, y = DIABETES
    r = tp.sweep(lambda: nn.Linear(10, 1), (X[:100], y[:100]), penalty="elastic_net",
                 strengths=[0.1], folds=2, epochs=2, solver="train", progress=False)  # fmt: skip
    assert r.settings["strength_units"] == "standardized target"
    r = tp.sweep(lambda: nn.Linear(10, 1), (X[:100], y[:100]), strengths=[0.1], folds=2,
                 epochs=2, solver="train", progress=False)  # fmt: skip
    assert r.settings["strength_units"] == "raw target"  # L2 is scale-free


def test_selected_features_at_best_and_1se_and_in_json():
    import json

    X, y = DIABETES
    names = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    r = tp.sweep(lambda: nn.Linear(10, 1), (X, y), penalty="l1", strengths=GRID, progress=False)
    r.feature_names = names
    Z = StandardScaler().fit_transform(X)
    for rule, s in (("best", r.best_strength), ("1se", r.strength_1se)):
        coef = Lasso(alpha=s / 2, tol=1e-12, max_iter=10**6).fit(Z, y).coef_
        assert r.selected[rule] == [n for n, c in zip(names, coef, strict=True) if c != 0]
    assert json.loads(r.to_json())["selected"] == r.selected
    trained = tp.sweep(lambda: nn.Linear(10, 1), (X, y), penalty="l1", strengths=[50.0, 1.0],
                       folds=2, epochs=2, solver="train", progress=False)  # fmt: skip
    assert set(trained.selected) == {"best", "1se"}  # only the refit's strength is known


def test_cli_prints_and_reports_the_kept_features_in_raw_units(tmp_path, capsys):
    """The command line calls the sweep: its strengths are the raw target's (the L1 path
    on a CSV with header names), it prints the kept features and report.json has them."""
    import json

    from torchpenalty import cli

    X, y = DIABETES
    names = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    path_csv = tmp_path / "d.csv"
    np.savetxt(path_csv, np.c_[X, y], delimiter=",", header=",".join([*names, "y"]), comments="")
    out = tmp_path / "run"
    code = cli.main(["sweep", "--data", str(path_csv), "--target", "y", "--model", "linear",
                     "--penalty", "l1", "--strengths", "10,3,1,0.3,0.1", "--folds", "5",
                     "--quiet", "--out", str(out)])  # fmt: skip
    stdout = capsys.readouterr().out
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    direct = tp.sweep(lambda: nn.Linear(10, 1), (X, y), penalty="l1",
                      strengths=[10, 3, 1, 0.3, 0.1], progress=False)  # fmt: skip
    assert rep["best_strength"] == direct.best_strength and rep["settings"]["solver"] == "path"
    direct.feature_names = names
    assert rep["selected"] == direct.selected
    assert f"kept at the best strength ({len(direct.selected['best'])}): " in stdout


def test_wide_problem_solves_with_two_threads():
    """torch 2.13's CPU build aborts in a two-thread batched LU solve of 200 x 200 float64
    systems (oneMKL DLASWP error): the path solver's Newton solves run in one thread."""
    import os
    import pathlib
    import subprocess
    import sys

    src = pathlib.Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = (
        "import numpy as np, torch; torch.set_num_threads(2)\n"
        "from torchpenalty.sweep.path import mse_path\n"
        "from torchpenalty.sweep.folds import kfold\n"
        "rng = np.random.default_rng(0); X = rng.normal(size=(600, 200))\n"
        "y = X[:, :5].sum(1) + rng.normal(size=600)\n"
        "fit = mse_path(X, y, kfold(600, 5, 0), [0.1], {'l1': 1.0})\n"
        "print(bool(fit.converged.all()))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr[-500:]
