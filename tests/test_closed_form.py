"""The closed-form ridge sweep against scikit-learn (Ridge, StandardScaler, GridSearchCV)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchpenalty.sweep.closed_form import (
    fit_linear,
    is_linear_model,
    ridge_loo,
    ridge_solutions,
    sweep_records,
)
from torchpenalty.sweep.folds import kfold
from torchpenalty.sweep.result import StandardizedModel

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import Ridge  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

STRENGTHS = [0.0, 1e-4, 1e-2, 0.1, 1.0, 10.0]


def data(n=60, d=5, k=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 20, size=d) + rng.normal(size=d) * 5
    W = rng.normal(size=(d, k))
    Y = X @ W + 3.0 + rng.normal(size=(n, k)) * 4.0
    return X, Y


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.mark.parametrize(
    ("fit_intercept", "k", "n", "d"),
    [(True, 1, 50, 4), (False, 1, 50, 4), (True, 3, 50, 4), (True, 2, 10, 30)],  # d > n too
)
def test_ridge_solutions_equal_sklearn_ridge(fit_intercept, k, n, d):
    X, Y = data(n=n, d=d, k=k)
    lams = [1e-3, 0.5, 7.0, 300.0]
    W, b = ridge_solutions(X, Y, lams, fit_intercept=fit_intercept)
    for j, lam in enumerate(lams):
        ref = Ridge(alpha=lam, fit_intercept=fit_intercept, solver="svd").fit(X, Y)
        assert rel(W[j], ref.coef_.reshape(k, d).T) < 1e-8
        assert np.allclose(b[j], np.atleast_1d(ref.intercept_), rtol=1e-8, atol=1e-9)


def test_zero_strength_is_least_squares():
    X, Y = data(n=30, d=3)
    W, b = ridge_solutions(X, Y, [0.0])
    A = np.c_[X, np.ones(len(X))]
    sol = np.linalg.lstsq(A, Y, rcond=None)[0]
    assert rel(W[0], sol[:3]) < 1e-9 and rel(b[0], sol[3]) < 1e-9


@pytest.mark.parametrize("n", [60, 63])  # folds of equal and of unequal training sizes
def test_records_equal_per_fold_pipeline(n):
    """Every (strength, fold) validation MSE equals StandardScaler + Ridge(alpha=s*n_train/2)
    fitted on that fold's training rows, to 1e-6 relative."""
    X, Y = data(n=n, d=6)
    splits = kfold(n, 5, seed=3)
    recs = sweep_records(X, Y, splits, STRENGTHS)
    assert len(recs) == len(STRENGTHS) * 5
    for r in recs:
        tr, va = splits[r.fold]
        pipe = make_pipeline(StandardScaler(), Ridge(alpha=r.strength * len(tr) / 2))
        pipe.fit(X[tr], Y[tr])
        assert rel(r.val_loss, np.mean((pipe.predict(X[va]).reshape(-1, 1) - Y[va]) ** 2)) < 1e-6
        assert rel(r.train_loss, np.mean((pipe.predict(X[tr]).reshape(-1, 1) - Y[tr]) ** 2)) < 1e-6


def test_records_equal_gridsearchcv():
    """Mean validation MSE per strength and the best strength equal GridSearchCV on the
    same folds (n divisible by the folds: one alpha per strength for every fold)."""
    n, folds = 60, 5
    X, Y = data(n=n, d=6, seed=1)
    y = Y[:, 0]
    splits = kfold(n, folds, seed=0)
    n_train = n - n // folds
    recs = sweep_records(X, y, splits, STRENGTHS[1:])
    grid = GridSearchCV(
        make_pipeline(StandardScaler(), Ridge()),
        {"ridge__alpha": [s * n_train / 2 for s in STRENGTHS[1:]]},
        cv=splits,
        scoring="neg_mean_squared_error",
    ).fit(X, y)
    ours = [np.mean([r.val_loss for r in recs if r.i == i]) for i in range(len(STRENGTHS) - 1)]
    assert rel(ours, -grid.cv_results_["mean_test_score"]) < 1e-6
    assert int(np.argmin(ours)) == int(grid.best_index_)


def test_unstandardized_records_equal_plain_ridge():
    X, Y = data(n=40, d=3)
    splits = kfold(40, 4, seed=0)
    for r in sweep_records(X, Y, splits, [0.5], standardize=False):
        tr, va = splits[r.fold]
        ref = Ridge(alpha=0.5 * len(tr) / 2).fit(X[tr], Y[tr])
        assert rel(r.val_loss, np.mean((ref.predict(X[va]).reshape(-1, 1) - Y[va]) ** 2)) < 1e-6


@pytest.mark.parametrize("k", [1, 2])
def test_fit_linear_takes_raw_inputs(k):
    X, Y = data(n=50, d=4, k=k)
    model = fit_linear(lambda: nn.Linear(4, k), X, Y, 0.3)
    assert isinstance(model, StandardizedModel) and isinstance(model.model, nn.Linear)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=0.3 * 50 * k / 2)).fit(X, Y)
    ours = model(torch.tensor(X, dtype=torch.float32)).detach().double().numpy()
    assert rel(ours, ref.predict(X).reshape(50, k)) < 1e-4  # float32 weights


def test_fit_linear_without_bias():
    X, Y = data(n=50, d=4)
    model = fit_linear(lambda: nn.Sequential(nn.Linear(4, 1, bias=False)), X, Y, 0.3)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=0.3 * 50 / 2)).fit(X, Y)
    ours = model(torch.tensor(X, dtype=torch.float32)).detach().double().numpy()
    assert rel(ours, ref.predict(X).reshape(-1, 1)) < 1e-4


@pytest.mark.parametrize(
    ("make", "ok"),
    [
        (lambda: nn.Linear(3, 1), True),
        (lambda: nn.Sequential(nn.Linear(3, 2)), True),
        (lambda: nn.Sequential(nn.Linear(3, 2), nn.ReLU()), False),
        (lambda: nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)), False),
        (lambda: nn.Linear(3, 1).requires_grad_(False), False),
    ],
)
def test_is_linear_model(make, ok):
    assert is_linear_model(make()) is ok


def test_fit_linear_checks_the_shape():
    X, Y = data(n=20, d=4)
    with pytest.raises(ValueError, match=r"nn.Linear\(4, 1\)"):
        fit_linear(lambda: nn.Linear(3, 1), X, Y, 0.1)


# ---------------------------------------------------------------------------- via tp.sweep
import torchpenalty as tp  # noqa: E402


@pytest.fixture(scope="module")
def diabetes():
    from sklearn.datasets import load_diabetes

    return load_diabetes(return_X_y=True)


def test_sweep_auto_takes_the_closed_form_and_equals_per_fold_ridge(diabetes):
    X, y = diabetes
    r = tp.sweep(lambda: nn.Linear(10, 1), (X, y), progress=False)
    assert r.settings["solver"] == "closed_form" and r.loss == "mse"
    splits = kfold(len(X), 5, seed=0)
    for rec in r.records:
        tr, va = splits[rec.fold]
        pipe = make_pipeline(StandardScaler(), Ridge(alpha=rec.strength * len(tr) / 2))
        pred = pipe.fit(X[tr], y[tr]).predict(X[va])
        assert rel(rec.val_loss, np.mean((pred - y[va]) ** 2)) < 1e-6
    ref = make_pipeline(StandardScaler(), Ridge(alpha=r.best_strength * len(X) / 2)).fit(X, y)
    assert isinstance(r.model, StandardizedModel) and isinstance(r.model.model, nn.Linear)
    np.testing.assert_allclose(r.predict(X), ref.predict(X), rtol=1e-4)
    ours = r.model(torch.tensor(X, dtype=torch.float32)).detach().double().numpy()[:, 0]
    assert rel(ours, ref.predict(X)) < 1e-4
    assert '"solver": "closed_form"' in r.to_json()


def test_sweep_closed_form_equals_gridsearchcv(diabetes):
    X, y = diabetes[0][:440], diabetes[1][:440]  # 5 folds of 88: one n_train for all
    grid = [1e-4, 1e-3, 1e-2, 0.1, 1.0]
    r = tp.sweep(lambda: nn.Sequential(nn.Linear(10, 1)), (X, y), strengths=grid,
                 progress=False, solver="closed_form", refit=False)  # fmt: skip
    cv = GridSearchCV(
        make_pipeline(StandardScaler(), Ridge()),
        {"ridge__alpha": [s * 352 / 2 for s in grid]},
        cv=kfold(440, 5, seed=0),
        scoring="neg_mean_squared_error",
    ).fit(X, y)
    means = [row["val_loss_mean"] for row in r.table]
    assert rel(means, -cv.cv_results_["mean_test_score"]) < 1e-6
    assert r.best_strength == grid[cv.best_index_]


def test_training_converges_to_the_closed_form(diabetes):
    """An independent check that both solve the same problem: Adam, full batch, long."""
    X, y = diabetes
    kw = dict(strengths=[1e-3, 0.1, 1.0], folds=3, progress=False, refit=False)
    exact = tp.sweep(lambda: nn.Linear(10, 1), (X, y), solver="closed_form", **kw)
    trained = tp.sweep(lambda: nn.Linear(10, 1), (X, y), solver="train", epochs=1500,
                       batch_size=None, lr=0.05, **kw)  # fmt: skip
    assert "solver" not in trained.settings
    vals = [[r.val_loss for r in res.records] for res in (exact, trained)]
    np.testing.assert_allclose(vals[1], vals[0], rtol=1e-3)
    norms = [[r.param_norm for r in res.records] for res in (exact, trained)]
    np.testing.assert_allclose(norms[1], norms[0], rtol=2e-3)


@pytest.mark.parametrize(
    ("make", "kw", "match"),
    [
        (lambda: nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 1)), {},
         r"solver='closed_form' needs a model that is one trainable nn.Linear"),
        (lambda: nn.Linear(10, 1), {"penalty": "l1"}, r"needs penalty='l2' \(got 'l1'\)"),
        (lambda: nn.Linear(10, 2), {"loss": "cross_entropy"},
         r"needs loss='mse' \(got 'cross_entropy'\)"),
    ],
)  # fmt: skip
def test_sweep_closed_form_refuses_what_it_cannot_solve(diabetes, make, kw, match):
    X, y = diabetes
    if kw.get("loss") == "cross_entropy":
        y = (y > np.median(y)).astype(int)
    with pytest.raises(ValueError, match=match):
        tp.sweep(make, (X, y), solver="closed_form", progress=False, **kw)


@pytest.mark.parametrize(
    "kw", [{"early_stopping": 3}, {"mode": "decoupled"}, {"penalty": "l1", "mode": "decoupled"},
           {"solver": "train"}]
)  # fmt: skip
def test_sweep_auto_trains_when_training_aims_elsewhere(diabetes, kw):
    X, y = diabetes
    r = tp.sweep(lambda: nn.Linear(10, 1), (X[:100], y[:100]), strengths=[0.1], folds=2,
                 epochs=2, progress=False, refit=False, **kw)  # fmt: skip
    assert "solver" not in r.settings and len(r.records[0].history["val"]) >= 1


def test_solver_is_validated():
    with pytest.raises(
        ValueError, match=r"solver must be one of 'auto', 'closed_form', 'path', 'train'"
    ):
        tp.sweep(lambda: nn.Linear(2, 1), (np.eye(4, 2), [1.0, 2, 3, 4]), solver="svd")


def test_linear_probe_recipe(diabetes):
    """The README recipe: features of a frozen backbone, then the exact sweep of a linear
    head on them; equals Ridge on the same features."""
    X, y = diabetes
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(10, 64), nn.Tanh()).eval()
    with torch.no_grad():
        feats = backbone(torch.tensor(X, dtype=torch.float32)).numpy()
    r = tp.sweep(lambda: nn.Linear(64, 1), (feats, y), progress=False)
    assert r.settings["solver"] == "closed_form"
    probe = nn.Sequential(backbone, r.model)  # raw X in, prediction out
    s = r.best_strength
    f64 = feats.astype(np.float64)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=s * len(X) / 2)).fit(f64, y)
    ours = probe(torch.tensor(X, dtype=torch.float32)).detach().double().numpy()[:, 0]
    # float32 features and weights: errors small against the spread of the predictions
    assert np.max(np.abs(ours - ref.predict(f64))) < 1e-3 * np.std(y)


@pytest.mark.parametrize(("n", "d", "k"), [(442, 10, 1), (30, 60, 1), (50, 4, 3)])
def test_ridge_loo_equals_brute_force_and_ridgecv(n, d, k):
    """Exact leave-one-out residuals equal n refits without each row to 1e-10, down to
    strengths of 1e-10, and RidgeCV(store_cv_results=True) to 1e-8 (n >= d: at every
    strength; n < d: from 1e-3 up -- below, RidgeCV's own rounding reaches 1e-4 at 1e-10
    against the brute force, ours 1e-15)."""
    from sklearn.linear_model import RidgeCV

    if n == 442:
        from sklearn.datasets import load_diabetes

        X, Y = load_diabetes(return_X_y=True)
        Y = Y[:, None]
    else:
        X, Y = data(n=n, d=d, k=k)
    Z = (X - X.mean(0)) / X.std(0)
    lams = [1e-10, 1e-6, 1e-3, 1.0, 100.0]
    loo = ridge_loo(Z, Y, lams)
    for j, lam in enumerate(lams):
        for i in range(0, n, max(1, n // 25)):
            W, b = ridge_solutions(np.delete(Z, i, 0), np.delete(Y, i, 0), [lam])
            assert rel(loo[j, i], Y[i] - Z[i] @ W[0] - b[0]) < 1e-10
    ref = RidgeCV(alphas=lams, store_cv_results=True).fit(Z, Y if k > 1 else Y[:, 0])
    cv = ref.cv_results_.reshape(n, k, len(lams))  # squared LOO errors
    ours = np.moveaxis(loo**2, 0, -1)
    first = 0 if n >= d else 2
    assert rel(ours[..., first:], cv[..., first:]) < 1e-8


@pytest.mark.parametrize(("n", "d"), [(200, 8), (8, 200), (50, 50)])
def test_gram_and_svd_routes_agree(n, d):
    """n >= d goes through the Gram matrix's eigendecomposition, n < d through the thin
    SVD: both equal a direct solve of the normal equations to 1e-9 (in norm)."""
    X, Y = data(n=n, d=d, k=2)
    Z = (X - X.mean(0)) / X.std(0)
    lams = [1e-3, 1.0, 50.0]
    W, b = ridge_solutions(Z, Y, lams)
    Zc, Yc = Z - Z.mean(0), Y - Y.mean(0)
    for j, lam in enumerate(lams):
        ref = np.linalg.solve(Zc.T @ Zc + lam * np.eye(d), Zc.T @ Yc)
        assert np.linalg.norm(W[j] - ref) < 1e-9 * np.linalg.norm(ref)
        assert np.allclose(b[j], Y.mean(0) - Z.mean(0) @ ref, rtol=1e-9, atol=1e-9)


LOO_GRID = [1e-10, 1e-6, 1e-3, 1e-2, 0.1, 1.0, 10.0]


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (5000.0, 1000.0)])
def test_sweep_loo_equals_ridgecv(diabetes, shift, scale):
    """folds="loo": each row's fit minimizes its n - 1 training rows' mean squared error
    plus s/2 ||w||^2, i.e. RidgeCV(alphas=s * (n - 1) / 2) on X standardized with all rows'
    statistics, on the raw target (also y*1000 + 5000): mean squared LOO error to 1e-8
    down to s = 1e-10, its standard error over the rows, and the same choice."""
    from sklearn.linear_model import RidgeCV

    X, y = diabetes
    y = y * scale + shift
    n = len(X)
    r = tp.sweep(lambda: nn.Linear(10, 1), (X, y), strengths=LOO_GRID, folds="loo",
                 progress=False)  # fmt: skip
    Z = (X - X.mean(0)) / X.std(0)
    ref = RidgeCV(alphas=[s * (n - 1) / 2 for s in LOO_GRID], store_cv_results=True).fit(Z, y)
    cv = ref.cv_results_  # (n, L) squared LOO errors
    assert rel([row["val_loss_mean"] for row in r.table], cv.mean(0)) < 1e-8
    assert rel([row["val_loss_se"] for row in r.table], cv.std(0, ddof=1) / np.sqrt(n)) < 1e-8
    assert r.best_strength == pytest.approx(ref.alpha_ * 2 / (n - 1), rel=1e-12)
    assert r.settings["folds"] == "loo" and r.folds == n and r.complete
    pipe = make_pipeline(StandardScaler(), Ridge(alpha=r.best_strength * n / 2)).fit(X, y)
    assert rel(r.predict(X), pipe.predict(X)) < 1e-6  # the refit: all rows, lam = s n / 2


@pytest.mark.parametrize(("n", "d", "k", "first"), [(80, 5, 3, 0), (30, 60, 1, 2)])
def test_sweep_loo_multi_output_and_wide(n, d, k, first):
    """k outputs: alpha = s * (n - 1) * k / 2 (our loss is the mean over outputs too);
    n < d: from s = 1e-3 up (below, RidgeCV's own rounding, see the test above)."""
    from sklearn.linear_model import RidgeCV

    X, Y = data(n=n, d=d, k=k)
    r = tp.sweep(lambda: nn.Linear(d, k), (X, Y if k > 1 else Y[:, 0]), strengths=LOO_GRID,
                 folds="loo", progress=False)  # fmt: skip
    Z = (X - X.mean(0)) / X.std(0)
    alphas = [s * (n - 1) * k / 2 for s in LOO_GRID]
    ref = RidgeCV(alphas=alphas, store_cv_results=True).fit(Z, Y if k > 1 else Y[:, 0])
    cv = ref.cv_results_.reshape(n, k, len(LOO_GRID)).mean(1)
    ours = [row["val_loss_mean"] for row in r.table]
    assert rel(ours[first:], cv.mean(0)[first:]) < 1e-8


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"penalty": "l1"}, r"folds='loo' needs penalty='l2' \(got 'l1'\); got folds='loo'"),
        ({"solver": "train"}, r"folds='loo' needs solver 'auto' or 'closed_form' \(got solver='train'\)"),
        ({"loss": "huber"}, r"folds='loo' needs loss='mse'"),
        ({"folds": "lo"}, r"folds must be an integer >= 2 or 'loo', got 'lo'"),
        ({"groups": np.arange(442) % 5}, r"folds must be an integer when groups are given"),
    ],
)  # fmt: skip
def test_sweep_loo_refuses_what_it_cannot_solve(diabetes, kw, match):
    X, y = diabetes
    with pytest.raises(ValueError, match=match):
        tp.sweep(lambda: nn.Linear(10, 1), (X, y), **{"folds": "loo", **kw}, progress=False)
    with pytest.raises(ValueError, match=r"folds='loo' needs a model that is one trainable"):
        tp.sweep(lambda: nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 1)), (X, y),
                 folds="loo", progress=False)  # fmt: skip


def test_cli_folds_loo_and_load_sweep(diabetes, tmp_path):
    """--folds loo on the command line: report.json says folds "loo", tp.load_sweep
    rebuilds the same table (standard errors included) and choice."""
    from torchpenalty import cli

    X, y = diabetes
    csv = tmp_path / "d.csv"
    np.savetxt(csv, np.c_[X, y], delimiter=",", header=",".join([f"f{j}" for j in range(10)]
               + ["target"]), comments="")  # fmt: skip
    out = tmp_path / "run"
    cli.main(["sweep", "--data", str(csv), "--target", "target", "--model", "linear",
              "--folds", "loo", "--out", str(out), "--quiet"])  # fmt: skip
    back = tp.load_sweep(str(out))
    ours = tp.sweep(lambda: nn.Linear(10, 1), (X, y), strengths=back.strengths, folds="loo",
                    progress=False)  # fmt: skip
    assert back.settings["folds"] == "loo" and back.best_strength == ours.best_strength
    assert back.strength_1se == ours.strength_1se
    assert (
        rel([r["val_loss_se"] for r in back.table], [r["val_loss_se"] for r in ours.table]) < 1e-9
    )


def targets3(n=150, d=6, seed=1):
    """Three outputs on very different scales and noise levels: their best strengths differ."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Y = np.stack([X @ rng.normal(size=d) + 0.1 * rng.normal(size=n),
                  (X[:, 0] + 3.0 * rng.normal(size=n)) * 100 + 5000,
                  rng.normal(size=n)], 1)  # fmt: skip
    return X, Y


PT_GRID = [1e-10, 1e-4, 1e-2, 0.1, 1.0, 10.0, 100.0]


def test_per_target_loo_equals_ridgecv_alpha_per_target():
    """per_target=True with folds="loo": output j's strength is its own column's,
    RidgeCV(alphas=s * (n - 1) / 2, alpha_per_target=True): per-output mean squared LOO
    errors to 1e-8 and the same per-output choice."""
    from sklearn.linear_model import RidgeCV

    X, Y = targets3()
    n = len(X)
    r = tp.sweep(lambda: nn.Linear(6, 3), (X, Y), strengths=PT_GRID, folds="loo",
                 per_target=True, progress=False)  # fmt: skip
    Z = (X - X.mean(0)) / X.std(0)
    ref = RidgeCV(alphas=[s * (n - 1) / 2 for s in PT_GRID], alpha_per_target=True,
                  store_cv_results=True).fit(Z, Y)  # fmt: skip
    ours = np.array([row["val_loss_mean_per_target"] for row in r.table])  # (L, k)
    assert rel(ours, ref.cv_results_.mean(0).T) < 1e-8
    assert r.best_strength == pytest.approx(list(ref.alpha_ * 2 / (n - 1)), rel=1e-12)
    assert len(set(r.best_strength)) > 1  # the outputs do choose differently here


def test_per_target_kfold_equals_a_loop_of_single_target_sweeps():
    """per_target=True with K folds (which RidgeCV refuses) equals one single-output sweep
    per column on the same folds: table, choices, and the refit model's outputs."""
    X, Y = targets3()
    r = tp.sweep(lambda: nn.Linear(6, 3), (X, Y), strengths=PT_GRID, folds=5, per_target=True,
                 refit="1se", progress=False)  # fmt: skip
    assert r.settings["per_target"] and isinstance(r.best_strength, list)
    with torch.no_grad():
        pred = r.model(X).double().numpy()
    for j in range(3):
        one = tp.sweep(lambda: nn.Linear(6, 1), (X, Y[:, j]), strengths=PT_GRID, folds=5,
                       refit="1se", progress=False)  # fmt: skip
        col = [row["val_loss_mean_per_target"][j] for row in r.table]
        assert rel(col, [row["val_loss_mean"] for row in one.table]) < 1e-10
        assert r.best_strength[j] == one.best_strength
        assert r.strength_1se[j] == one.strength_1se
        with torch.no_grad():
            theirs = one.model(X).double().numpy()[:, 0]
        assert np.max(np.abs(pred[:, j] - theirs)) < 1e-5 * np.abs(Y[:, j]).max()
    with torch.no_grad():  # refit(which) reads the stored solutions, per output
        assert torch.equal(r.refit("1se")(X), r.model(X))
    assert "[" in str(r).splitlines()[0]  # the choices print as lists


def test_per_target_refuses_what_the_closed_form_cannot_solve():
    X, Y = targets3(n=40)
    with pytest.raises(ValueError, match=r"per_target=True needs penalty='l2' \(got 'l1'\)"):
        tp.sweep(lambda: nn.Linear(6, 3), (X, Y), penalty="l1", per_target=True, progress=False)
    with pytest.raises(TypeError, match=r"per_target must be True or False, got 'yes'"):
        tp.sweep(lambda: nn.Linear(6, 3), (X, Y), per_target="yes", progress=False)


def test_per_target_result_prints_serializes_and_plots(tmp_path):
    """A per-target result prints, turns into strict JSON and plots (the per-output
    strengths, lists, are not marked on the mean-over-outputs curve)."""
    import json

    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    X, Y = targets3(n=60)
    r = tp.sweep(lambda: nn.Linear(6, 3), (X, Y), strengths=PT_GRID, folds=3,
                 per_target=True, progress=False)  # fmt: skip
    d = json.loads(r.to_json())
    assert d["best_strength"] == r.best_strength and len(d["best_strength"]) == 3
    for kind in ("validation", "norm", "learning"):
        r.plot(kind=kind)
