"""Convex problems: ``tp.sweep`` (path solver, ridge closed form) against scikit-learn's
cross-validated estimators, on the same grid and the same folds.

Rows (``--quick``: diabetes L1 and L2 only, one repetition):

- diabetes (442 x 10), raw target: ``LassoCV``, ``ElasticNetCV(l1_ratio=0.5)`` against
  ``penalty="l1"`` / ``"elastic_net"``; ``GridSearchCV(Ridge)`` against ``penalty="l2"``;
- breast cancer (569 x 30): ``LogisticRegressionCV`` (liblinear, saga; L1) against
  ``penalty="l1"`` with ``nn.Linear(30, 2)``; (lbfgs; L2) against ``"l2"``; (saga;
  elastic net, ``l1_ratio=0.5``) against ``"elastic_net"``;
- synthetic regression, 20,000 x 200 (``--n``/``--d``): ``LassoCV``, ``ElasticNetCV``,
  ``GridSearchCV(Ridge)``.

Grid: 13 strengths from 1e-3 to 10 (x the target's variance for regressions), 5 folds:
the sweep's own folds passed to scikit-learn as ``cv=``. The conversions: ``Lasso(alpha=s/2)``,
``ElasticNet(alpha=s/2)``, ``Ridge(alpha=s*n_train/2)`` (``n_train`` is the same for every
fold when 5 divides n; otherwise it differs by one row and ``GridSearchCV(Ridge)`` solves a
slightly different problem per fold), binary logistic L1 ``C = 1/(s*n_train)``, L2
``C = 2/(s*n_train)``, elastic net ``C = 2/(s*n_train*(1+r))`` with ``l1_ratio = 2r/(1+r)``
(a two-output model is the logistic model of ``w_1 - w_0``; liblinear also penalizes the
intercept: its choice may differ). scikit-learn runs at its default ``tol``;
ours at its KKT tolerance (``1e-8`` relative). ``LogisticRegressionCV`` chooses by
validation log loss (``scoring="neg_log_loss"``), as the sweep does.

Each contender is timed in turn (interleaved), the median of ``--repeats`` (3), with one
thread (``torch.set_num_threads(1)`` and threadpoolctl for NumPy/scikit-learn) and with the
defaults. Printed: seconds, the ratio scikit-learn / ours (> 1: we are faster) and whether
the chosen strengths are equal. On a loaded machine the figures move: quote them with the
load. Run: ``python benchmarks/convex.py [--quick]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import ElasticNetCV, LassoCV, LogisticRegressionCV, Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep.folds import kfold, stratified_kfold


def grid(scale: float = 1.0) -> list[float]:
    return [float(f"{v:.3g}") * scale for v in np.logspace(1, -3, 13)]


def ours(X, y, penalty, strengths, classes=None):
    k = 1 if classes is None else classes
    r = tp.sweep(lambda: nn.Linear(X.shape[1], k), (X, y), penalty=penalty,
                 strengths=strengths, folds=5, progress=False)  # fmt: skip
    return r.best_strength, r.settings.get("solver")


def rows(quick: bool, n: int, d: int):
    """(name, X, y, penalty, grid, classes, {contender: fit -> chosen strength})."""
    Xd, yd = load_diabetes(return_X_y=True)
    out = []
    S = grid(1.0)
    splits = kfold(len(Xd), 5, seed=0)
    pipe = lambda est: make_pipeline(StandardScaler(), est)  # noqa: E731
    out.append(("diabetes", Xd, yd, "l1", S, None, {
        "LassoCV": lambda: 2 * pipe(LassoCV(alphas=[s / 2 for s in S], cv=splits)).fit(Xd, yd)[-1].alpha_}))  # fmt: skip
    out.append(("diabetes", Xd, yd, "elastic_net", S, None, {
        "ElasticNetCV": lambda: 2 * pipe(ElasticNetCV(alphas=[s / 2 for s in S], l1_ratio=0.5,
                                                      cv=splits)).fit(Xd, yd)[-1].alpha_}))  # fmt: skip
    ntr = len(splits[0][0])
    out.append(("diabetes", Xd, yd, "l2", S, None, {
        "GridSearchCV(Ridge)": lambda: 2 / ntr * GridSearchCV(
            pipe(Ridge()), {"ridge__alpha": [s * ntr / 2 for s in S]}, cv=splits,
            scoring="neg_mean_squared_error").fit(Xd, yd).best_params_["ridge__alpha"]}))  # fmt: skip
    if quick:
        return [out[0], out[2]]
    Xc, yc = load_breast_cancer(return_X_y=True)
    Sc = grid(0.1)
    csplits = stratified_kfold(np.unique(yc, return_inverse=True)[1], 5, seed=0)
    nc = len(csplits[0][0])
    for solver in ("liblinear", "saga"):
        out.append(("breast cancer", Xc, yc, "l1", Sc, 2, {
            f"LogisticRegressionCV({solver})": (lambda solver=solver: 1 / (nc * pipe(
                LogisticRegressionCV(Cs=[1 / (s * nc) for s in Sc], l1_ratios=(1.0,),
                                     solver=solver, cv=csplits, max_iter=10_000,
                                     scoring="neg_log_loss")
            ).fit(Xc, yc)[-1].C_[0]))}))  # fmt: skip
    # binary L2(s): C = 2/(s*n); ElasticNet(s, r): C = 2/(s*n*(1+r)), l1_ratio = 2r/(1+r)
    for pen, r, solver in (("l2", 0.0, "lbfgs"), ("elastic_net", 0.5, "saga")):
        out.append(("breast cancer", Xc, yc, pen, Sc, 2, {
            f"LogisticRegressionCV({solver})": (lambda r=r, solver=solver: 2 / (nc * (1 + r) * pipe(
                LogisticRegressionCV(Cs=[2 / (s * nc * (1 + r)) for s in Sc],
                                     l1_ratios=(2 * r / (1 + r),), solver=solver, cv=csplits,
                                     max_iter=10_000, scoring="neg_log_loss")
            ).fit(Xc, yc)[-1].C_[0]))}))  # fmt: skip
    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(n, d))
    ys = Xs[:, :20] @ rng.normal(size=20) + rng.normal(size=n) * 3
    ssplits = kfold(n, 5, seed=0)
    Ss = grid(float(ys.var()) / 100)
    out.append((f"synthetic {n}x{d}", Xs, ys, "l1", Ss, None, {
        "LassoCV": lambda: 2 * pipe(LassoCV(alphas=[s / 2 for s in Ss], cv=ssplits)).fit(Xs, ys)[-1].alpha_}))  # fmt: skip
    out.append((f"synthetic {n}x{d}", Xs, ys, "elastic_net", Ss, None, {
        "ElasticNetCV": lambda: 2 * pipe(ElasticNetCV(alphas=[s / 2 for s in Ss], l1_ratio=0.5,
                                                      cv=ssplits)).fit(Xs, ys)[-1].alpha_}))  # fmt: skip
    nts = len(ssplits[0][0])
    out.append((f"synthetic {n}x{d}", Xs, ys, "l2", Ss, None, {
        "GridSearchCV(Ridge)": lambda: 2 / nts * GridSearchCV(
            pipe(Ridge()), {"ridge__alpha": [s * nts / 2 for s in Ss]}, cv=ssplits,
            scoring="neg_mean_squared_error").fit(Xs, ys).best_params_["ridge__alpha"]}))  # fmt: skip
    return out


def timed(fn, *args):
    t = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - t, value


def interleaved(contenders, mine, repeats: int, warm_up: bool = False):
    """Time ``mine()`` against each of ``contenders`` (label -> fit) with one thread, then
    the default (torch and, through threadpoolctl, NumPy/scikit-learn): ``repeats`` runs
    taken in turn, after one untimed call of each if ``warm_up``. Yields ``(threads,
    label, our median s, their median s, our last result, their last result)``."""
    from threadpoolctl import threadpool_limits

    default_threads = torch.get_num_threads()
    try:
        for threads in (1, default_threads):
            torch.set_num_threads(threads)
            with threadpool_limits(limits=threads):
                for label, fn in contenders.items():
                    if warm_up:
                        mine(), fn()  # untimed (first-call costs)
                    ours_s, theirs_s = [], []
                    for _ in range(repeats):  # interleaved
                        t, got = timed(mine)
                        ours_s.append(t)
                        t, chosen = timed(fn)
                        theirs_s.append(t)
                    m, s = statistics.median(ours_s), statistics.median(theirs_s)
                    yield threads, label, m, s, got, chosen
    finally:
        torch.set_num_threads(default_threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=200)
    ap.add_argument("--ridge", action="store_true", help="only the ridge rows (ridge_rows)")
    a = ap.parse_args()
    repeats = 1 if a.quick else a.repeats
    if a.ridge:
        return ridge_main(a.quick, repeats, a.n, a.d)
    warnings.simplefilter("ignore")  # scikit-learn's convergence warnings at default tol
    print(f"{'problem':<20} {'penalty':<12} {'scikit-learn':<30} {'thr':>3} {'ours s':>8} "
          f"{'sk s':>8} {'sk/ours':>8}  same choice  solver")  # fmt: skip
    for name, X, y, pen, S, classes, contenders in rows(a.quick, a.n, a.d):
        mine = functools.partial(ours, X, y, pen, S, classes)
        for threads, label, m, s, (best, solver), chosen in interleaved(contenders, mine, repeats):
            same = bool(np.isclose(best, chosen, rtol=1e-6))
            print(f"{name:<20} {pen:<12} {label:<30} {threads:>3} {m:>8.3f} {s:>8.3f} "
                  f"{s / m:>8.2f}  {same!s:<11}  {solver}")  # fmt: skip


# ---------------------------------------------------------------------------- ridge rows
def ridge_rows(quick: bool, n: int, d: int):
    """Ridge rows, (name, X, y, folds, grid, {contender: fit -> chosen strength}):
    ``RidgeCV`` (its leave-one-out, ``alpha = s * (n - 1) / 2`` on all rows' standardized
    X: in a pipeline with ``StandardScaler``, and alone on X scaled beforehand, untimed)
    against ``folds="loo"``; ``RidgeCV(cv=folds)`` and ``GridSearchCV(Ridge)`` (pipelines
    with ``StandardScaler``, ``alpha = s * n_train / 2``) against ``folds=5``. On diabetes
    (raw target) and the synthetic ``n x d`` regression (``--quick``: diabetes only)."""
    from sklearn.linear_model import RidgeCV

    Xd, yd = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(n, d))
    ys = Xs[:, :20] @ rng.normal(size=20) + rng.normal(size=n) * 3
    out = []
    for name, X, y in [("diabetes", Xd, yd)] + ([] if quick else [(f"synthetic {n}x{d}", Xs, ys)]):
        S = grid(1.0)
        m = len(X)
        Z = (X - X.mean(0)) / X.std(0)
        a_loo = [s * (m - 1) / 2 for s in S]
        out.append((name, X, y, "loo", S, {
            # the same computation as ours (all rows' scaling, then leave-one-out), as a user
            # would write it; the bare row gives RidgeCV the scaled X for free
            "StandardScaler+RidgeCV (LOO)": lambda X=X, y=y, a=a_loo, m=m: 2 / (m - 1) * make_pipeline(
                StandardScaler(), RidgeCV(alphas=a)).fit(X, y)[-1].alpha_,
            "RidgeCV (LOO), X pre-scaled": lambda Z=Z, y=y, a=a_loo, m=m: 2 / (m - 1) * RidgeCV(
                alphas=a).fit(Z, y).alpha_}))  # fmt: skip
        splits = kfold(m, 5, seed=0)
        ntr = len(splits[0][0])
        alphas = [s * ntr / 2 for s in S]
        out.append((name, X, y, 5, S, {
            "RidgeCV(cv=folds)": lambda X=X, y=y, sp=splits, a=alphas, ntr=ntr: 2 / ntr * make_pipeline(
                StandardScaler(), RidgeCV(alphas=a, cv=sp, scoring="neg_mean_squared_error")
            ).fit(X, y)[-1].alpha_,
            "GridSearchCV(Ridge)": lambda X=X, y=y, sp=splits, a=alphas, ntr=ntr: 2 / ntr * GridSearchCV(
                make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": a}, cv=sp,
                scoring="neg_mean_squared_error").fit(X, y).best_params_["ridge__alpha"]}))  # fmt: skip
    return out


def ours_ridge(X, y, folds, S):
    r = tp.sweep(lambda: nn.Linear(X.shape[1], 1), (X, y), strengths=S, folds=folds,
                 progress=False)  # fmt: skip
    return r.best_strength


def ridge_main(quick: bool, repeats: int, n: int, d: int) -> None:
    """Time :func:`ridge_rows` (one thread, then the default; one untimed warm-up call of
    each contender, then ``repeats`` interleaved runs; medians)."""
    for name, X, y, folds, S, contenders in ridge_rows(quick, n, d):
        mine = functools.partial(ours_ridge, X, y, folds, S)
        for threads, label, m, s, best, chosen in interleaved(contenders, mine, repeats, True):
            same = bool(np.isclose(best, chosen, rtol=1e-6))
            print(f"{name:<20} {'l2 folds=' + str(folds):<12} {label:<30} {threads:>3} "
                  f"{m:>8.4f} {s:>8.4f} {s / m:>8.2f}  {same!s:<11}  closed_form")  # fmt: skip


if __name__ == "__main__":
    main()
