"""Exact sweeps for a linear model with L2 and a mean-squared loss (ridge regression).

For ``nn.Linear(d, k)`` trained on standardized inputs ``Z`` (``n`` rows) and targets
``T`` with the loss ``mean((Z W^T + b - T)**2)`` (mean over rows and outputs) plus
``L2(s)`` on the weight, ``s/2 * sum(W**2)`` (the bias is not penalized), the minimizer is

    W^T = (Zc^T Zc + lam I)^-1 Zc^T Tc,   lam = s * n * k / 2,   b = mean(T) - mean(Z) W^T

with ``Zc``, ``Tc`` centered on the training rows. One SVD ``Zc = U S V^T`` per fold gives
every strength: ``W^T = V diag(S / (S**2 + lam)) U^T Tc``. This equals scikit-learn
``Ridge(alpha=s * n_train / 2)`` (one output) on the same standardized data, so a sweep of
``tp.sweep(lambda: nn.Linear(d, k), (X, y), penalty="l2")`` equals
``GridSearchCV(make_pipeline(StandardScaler(), Ridge(alpha=s * n_train / 2)))``.

A linear probe (a linear head on frozen features) is the same problem: compute the
features once (``feats = backbone(X)`` under ``torch.no_grad()``) and sweep
``nn.Linear(feats.shape[1], k)`` on ``(feats, y)``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> Z = rng.normal(size=(40, 3)); T = Z @ [[1.0], [0.0], [-2.0]] + 0.5
>>> W, b = ridge_solutions(Z, T, [0.0, 10.0])
>>> np.allclose(W[0], [[1.0], [0.0], [-2.0]]) and np.allclose(b[0], 0.5)
True
>>> lam = 10.0; Zc = Z - Z.mean(0); Tc = T - T.mean(0)
>>> np.allclose(W[1], np.linalg.solve(Zc.T @ Zc + lam * np.eye(3), Zc.T @ Tc))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..penalties import L2
from .engine import Record
from .folds import Standardizer
from .result import StandardizedModel, SweepResult, describe_model
from .stream import StreamedData, merge, part_scatter
from .validated import Validated

__all__ = [
    "chooses_closed_form",
    "fit_linear",
    "is_linear_model",
    "linear_of",
    "loo_table",
    "not_applicable",
    "ridge_loo",
    "ridge_solutions",
    "sweep_closed_form",
    "sweep_loo",
    "sweep_records",
]


def linear_of(model: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` of ``model`` if it is one (or an ``nn.Sequential`` of one), else None."""
    if isinstance(model, nn.Linear):
        return model
    if isinstance(model, nn.Sequential) and len(model) == 1 and isinstance(model[0], nn.Linear):
        return model[0]
    return None


def is_linear_model(model: nn.Module) -> bool:
    """Whether the closed form applies to ``model``: one trainable float ``nn.Linear``."""
    lin = linear_of(model)
    return lin is not None and all(
        p.requires_grad and p.is_floating_point() for p in lin.parameters()
    )


def ridge_solutions(
    Z: np.ndarray, T: np.ndarray, lams: Sequence[float], *, fit_intercept: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge solutions for every ``lam`` in ``lams`` from one decomposition (float64).

    Minimizes ``||Z W + 1 b - T||**2 + lam * ||W||**2`` (``b`` unpenalized, fixed at 0 when
    ``fit_intercept=False``). Returns ``W`` of shape ``(len(lams), d, k)`` and ``b`` of shape
    ``(len(lams), k)``. With ``n >= d`` rows the Gram matrix ``Zc^T Zc`` (``d x d``, cost
    ``n d^2``) is eigendecomposed (:func:`gram_solutions`); with ``n < d`` the thin SVD
    ``Zc = U S V^T`` (cost ``n^2 d``) gives ``W = V diag(S / (S**2 + lam)) U^T Tc``.
    ``lam = 0`` gives the minimum-norm least-squares solution.
    """
    Z = np.asarray(Z, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64).reshape(len(Z), -1)
    zm = Z.mean(0) if fit_intercept else np.zeros(Z.shape[1])
    tm = T.mean(0) if fit_intercept else np.zeros(T.shape[1])
    Zc, Tc = Z - zm, T - tm
    if len(Z) >= Z.shape[1]:
        W = gram_solutions(Zc.T @ Zc, Zc.T @ Tc, lams, len(Z))
    else:
        U, S, Vt = np.linalg.svd(Zc, full_matrices=False)
        lam = np.asarray(lams, dtype=np.float64)[:, None]
        keep = S.max(initial=0.0) * max(Z.shape) * np.finfo(np.float64).eps < S
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = np.where(keep, S / (S**2 + lam), 0.0)  # (L, r)
        W = np.einsum("rd,lr,rk->ldk", Vt, shrink, U.T @ Tc)
    b = tm - np.einsum("d,ldk->lk", zm, W)
    return W, b


def _scaled(X: np.ndarray, Y: np.ndarray, rows: np.ndarray, standardize: bool):
    d, k = X.shape[1], Y.shape[1]
    sx = Standardizer(X[rows] if standardize else np.zeros((1, d)))
    sy = Standardizer(Y[rows] if standardize else np.zeros((1, k)))
    return sx, sy, sx.transform(X), sy.transform(Y)


def _losses(Z: np.ndarray, T: np.ndarray, W: np.ndarray, b: np.ndarray, scale: np.ndarray):
    """Mean squared error in the data's units of every solution ``(W[l], b[l])`` on the
    rows ``Z``, ``T``: shape ``(L,)`` (NaN for no rows)."""
    return _target_losses(Z, T, W, b, scale).mean(1)


def _target_losses(Z, T, W, b, scale) -> np.ndarray:
    """:func:`_losses` for each output: shape ``(L, k)``."""
    if not len(T):
        return np.full(W.shape[::2], np.nan)
    err = (np.matmul(Z, W) + b[:, None, :] - T) * scale  # (L, rows, k)
    return np.mean(err**2, axis=1)


def fold_statistics(
    X: np.ndarray,
    Y: np.ndarray,
    split: tuple[np.ndarray, np.ndarray],
    strengths: Sequence[float],
    *,
    standardize: bool = True,
    fit_intercept: bool = True,
) -> np.ndarray:
    """One fold's ``(4, L)`` statistics at every strength, all from one decomposition:
    validation and training mean squared errors in the data's units, the weight's norm and
    its fraction of exact zeros (standardized units, as the trained sweep reports)."""
    tr, va = split
    _, sy, Z, T = _scaled(X, Y, tr, standardize)
    lams = [s * len(tr) * Y.shape[1] / 2 for s in strengths]
    W, b = ridge_solutions(Z[tr], T[tr], lams, fit_intercept=fit_intercept)
    return np.stack([
        _losses(Z[va], T[va], W, b, sy.std),
        _losses(Z[tr], T[tr], W, b, sy.std),
        np.sqrt(np.sum(W**2, axis=(1, 2))),
        np.mean(W == 0, axis=(1, 2)),
    ])  # fmt: skip


def records_of(stats: np.ndarray, strengths: Sequence[float]) -> list[Record]:
    """:class:`Record` objects, one per (strength, fold) in that order, from statistics of
    shape ``(folds, 4, L)`` (:func:`fold_statistics`)."""
    vals = stats.tolist()  # Python floats once, not one NumPy scalar per field
    return [
        Record(i=i, fold=f, strength=float(s), val_loss=vals[f][0][i], train_loss=vals[f][1][i],
               param_norm=vals[f][2][i], zero_fraction=vals[f][3][i], best_epoch=0,
               history={"train": [vals[f][1][i]], "val": [vals[f][0][i]]})
        for i, s in enumerate(strengths)
        for f in range(len(vals))
    ]  # fmt: skip


def sweep_records(
    X: np.ndarray,
    Y: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    strengths: Sequence[float],
    *,
    standardize: bool = True,
    fit_intercept: bool = True,
) -> list[Record]:
    """One :class:`Record` per (strength, fold), in that order, computed exactly: the
    validation and training mean-squared errors in the data's units, the weight's norm
    and fraction of exact zeros (in standardized units, as the trained sweep reports).
    Each fold is one decomposition for all strengths (:func:`fold_statistics`)."""
    Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
    X = np.asarray(X, dtype=np.float64)
    stats = np.stack([
        fold_statistics(X, Y, sp, strengths, standardize=standardize, fit_intercept=fit_intercept)
        for sp in splits
    ])  # fmt: skip
    return records_of(stats, strengths)


def fit_linear(
    make_model: Callable[[], nn.Module],
    X: np.ndarray,
    Y: np.ndarray,
    strength: float,
    *,
    standardize: bool = True,
) -> StandardizedModel:
    """``make_model()``'s linear layer solved exactly on all rows at ``strength``, wrapped
    like the trained sweep's refit: a :class:`StandardizedModel` taking raw ``X`` (NumPy
    or tensors) around the model ``make_model`` returns, its weights in standardized units."""
    model = make_model()
    lin = linear_of(model)
    if lin is None:
        raise TypeError(f"make_model must return an nn.Linear for the closed form, got {model!r}")
    Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
    n, k = Y.shape
    if (lin.in_features, lin.out_features) != (X.shape[1], k):
        raise ValueError(
            f"make_model must return nn.Linear({X.shape[1]}, {k}) for this data, got {lin!r}"
        )
    sx, sy, Z, T = _scaled(X, Y, np.arange(n), standardize)
    has_bias = lin.bias is not None
    W, b = ridge_solutions(Z, T, [strength * n * k / 2], fit_intercept=has_bias)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(W[0].T))
        if has_bias:
            lin.bias.copy_(torch.as_tensor(b[0]))
    f64 = torch.float64  # standardization statistics at full precision (#18)
    return StandardizedModel(
        model,
        torch.tensor(sx.mean, dtype=f64),
        torch.tensor(sx.std, dtype=f64),
        torch.tensor(sy.mean, dtype=f64),
        torch.tensor(sy.std, dtype=f64),
    ).eval()


def ridge_loo(Z: np.ndarray, T: np.ndarray, lams: Sequence[float]) -> np.ndarray:
    """Exact leave-one-out residuals of ridge with an unpenalized intercept for every
    ``lam``, shape ``(len(lams), n, k)``: ``(t_i - fit_i) / (1 - h_ii)`` with the hat matrix
    ``H = 11^T/n + Zc (Zc^T Zc + lam I)^-1 Zc^T`` (the intercept column is orthogonal to the
    centered ``Zc``). From the Gram matrix's eigendecomposition when ``n >= d``, else from
    ``Zc Zc^T`` (``n x n``): ``Zc = U S V^T`` gives ``H = 11^T/n + U diag(S^2/(S^2 + lam))
    U^T``. Equal to scikit-learn ``RidgeCV(alphas=lams, store_cv_results=True)``'s
    ``cv_results_`` (squared) on the same ``Z``.

    >>> rng = np.random.default_rng(0)
    >>> Z = rng.normal(size=(20, 3)); T = Z @ [[1.0], [2.0], [0.0]] + rng.normal(size=(20, 1))
    >>> e = ridge_loo(Z, T, [0.5])[0, 3]
    >>> W, b = ridge_solutions(np.delete(Z, 3, 0), np.delete(T, 3, 0), [0.5])
    >>> bool(np.allclose(e, T[3] - Z[3] @ W[0] - b[0]))
    True
    """
    Z = np.asarray(Z, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64).reshape(len(Z), -1)
    n, d = Z.shape
    Zc, Tc = Z - Z.mean(0), T - T.mean(0)
    lam = np.asarray(lams, dtype=np.float64)[:, None]
    if n < d:
        return _loo_kernel(Zc, Tc, lam)
    e, V = np.linalg.eigh(Zc.T @ Zc)
    keep = e > e.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    U = (Zc @ V[:, keep]) / np.sqrt(e[keep])  # left singular vectors
    shrink = e[keep] / (e[keep] + lam)  # (L, r)
    fit = T.mean(0) + np.einsum("ir,lr,rk->lik", U, shrink, U.T @ Tc)
    h = 1.0 / n + np.einsum("ir,lr->li", U**2, shrink)
    return (T - fit) / (1.0 - h)[:, :, None]


def _loo_kernel(Zc: np.ndarray, Tc: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """:func:`ridge_loo` for ``n < d``: in the centered subspace ``I - H = lam (K + lam)^-1``
    with ``K = Zc Zc^T``, so the LOO residual is ``(K + lam)^-1 Tc`` over the diagonal of
    ``(K + lam)^-1`` without the all-ones direction (both finite as ``lam -> 0``, where
    ``1 - h`` cancels). That direction is given eigenvalue ``c`` and its known share
    ``(1/n) / (c + lam)`` taken off the diagonal."""
    n = len(Zc)
    K = Zc @ Zc.T
    c = float(np.trace(K)) + 1.0
    e, Q = np.linalg.eigh(K + c / n)
    inv = 1.0 / (np.clip(e, 0.0, None) + lam)  # (L, n)
    num = np.einsum("ir,lr,rk->lik", Q, inv, Q.T @ Tc)
    den = np.einsum("ir,lr->li", Q**2, inv) - (1.0 / n) / (c + lam)
    return num / den[:, :, None]


# ---------------------------------------------------------------------------- streamed data
Scatter = tuple  # (count, mean, scatter matrix) of the rows u = [x, y], float64


def gram_solutions(G: np.ndarray, B: np.ndarray, lams: Sequence[float], n: int) -> np.ndarray:
    """:func:`ridge_solutions` from ``G = Z^T Z`` and ``B = Z^T T`` (centered or not, as
    the intercept needs) instead of ``Z``: one eigendecomposition ``G = V diag(e) V^T``
    gives ``W = V diag(1 / (e + lam)) V^T B`` for every ``lam``, shape ``(L, d, k)``.
    Directions with ``e <= e.max() * max(n, d) * eps`` (below what ``G``, a product of
    float64 rows, resolves) are dropped, the minimum-norm rule of the SVD version on a
    squared scale: equal to it for full-rank data, up to float rounding.

    >>> rng = np.random.default_rng(0)
    >>> Z = rng.normal(size=(30, 3)); T = rng.normal(size=(30, 2))
    >>> W = gram_solutions(Z.T @ Z, Z.T @ T, [0.5], 30)
    >>> np.allclose(W[0], ridge_solutions(Z, T, [0.5], fit_intercept=False)[0])
    True
    """
    e, V = np.linalg.eigh(G)
    keep = e > e.max(initial=0.0) * max(n, len(e)) * np.finfo(np.float64).eps
    lam = np.asarray(lams, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        shrink = np.where(keep, 1.0 / (e + lam), 0.0)  # (L, d)
    return np.einsum("de,le,ek->ldk", V, shrink, V.T @ B)


def _scaling(acc: Scatter, d: int, standardize: bool) -> tuple[np.ndarray, ...]:
    """Means and population stds (0 -> 1) of x and y over the rows of ``acc``, as
    :class:`~torchpenalty.sweep.folds.Standardizer` fits them (0 and 1 without
    ``standardize``)."""
    n, mean, C = acc
    if not standardize:
        k = len(mean) - d
        return np.zeros(d), np.ones(d), np.zeros(k), np.ones(k)
    std = np.sqrt(np.maximum(np.diag(C), 0.0) / n)
    std = np.where(std > 0, std, 1.0)
    return mean[:d], std[:d], mean[d:], std[d:]


def _solve(acc: Scatter, d: int, lams: list[float], scaling: tuple, intercept: bool):
    """Ridge solutions ``W`` (L, d, k), ``b`` (L, k) in standardized units on the rows of
    ``acc`` (the training rows), from their count, mean and scatter matrix."""
    n, mean, C = acc
    mx, sx, my, sy = scaling
    a, c = (mean[:d] - mx) / sx, (mean[d:] - my) / sy  # mean of Z and of T
    G = C[:d, :d] / np.outer(sx, sx)
    B = C[:d, d:] / np.outer(sx, sy)
    if not intercept:  # uncentered products
        G, B = G + n * np.outer(a, a), B + n * np.outer(a, c)
    W = gram_solutions(G, B, lams, n)
    b = c - np.einsum("d,ldk->lk", a, W) if intercept else np.zeros((len(lams), len(c)))
    return W, b


def _moment_mse(acc: Scatter, d: int, W, b, scaling) -> np.ndarray:
    """Mean squared error in the data's units of every solution on the rows of ``acc``:
    with residuals ``e = u^T A + const`` linear in ``u = [x, y]``, the sum of squares of
    each output is ``n (mean^T A + const)^2 + A^T C A``."""
    n, mean, C = acc
    if n == 0:
        return np.full(len(W), np.nan)
    mx, sx, my, sy = scaling
    A = np.concatenate(
        [W / sx[:, None], np.broadcast_to(-np.diag(1 / sy), (len(W),) + (len(sy),) * 2)], 1
    )
    const = b - np.einsum("d,ldk->lk", mx / sx, W) + my / sy
    m = np.einsum("e,lek->lk", mean, A) + const
    ss = n * m**2 + np.einsum("lek,ef,lfk->lk", A, C, A)
    return (ss * sy**2).sum(1) / (n * len(sy))


def _merged(parts: list[Scatter], leave_out: int | None) -> Scatter:
    acc: Scatter = (0, np.zeros_like(parts[0][1]), np.zeros_like(parts[0][2]))
    for g, p in enumerate(parts):
        if g != leave_out:
            acc = merge(acc, p)
    return acc


def streamed_records(
    parts: list[Scatter],
    d: int,
    strengths: Sequence[float],
    *,
    standardize: bool = True,
    fit_intercept: bool = True,
) -> list[Record]:
    """:func:`sweep_records` from each validation part's count, mean and scatter matrix
    of ``[x, y]`` (:func:`~torchpenalty.sweep.stream.part_scatter`): fold ``f`` trains on
    every part but ``f``. The data is never in memory; ``G = Z^T Z`` replaces the SVD of
    ``Z`` (:func:`gram_solutions`)."""
    records = []
    for f in range(len(parts)):
        train = _merged(parts, f)
        scaling = _scaling(train, d, standardize)
        k = len(train[1]) - d
        W, b = _solve(train, d, [s * train[0] * k / 2 for s in strengths], scaling,
                      fit_intercept)  # fmt: skip
        tr_loss, va_loss = (_moment_mse(acc, d, W, b, scaling) for acc in (train, parts[f]))
        for i, s in enumerate(strengths):
            records.append(Record(i=i, fold=f, strength=float(s), val_loss=float(va_loss[i]),
                                  train_loss=float(tr_loss[i]),
                                  param_norm=float(np.sqrt(np.sum(W[i] ** 2))),
                                  zero_fraction=float(np.mean(W[i] == 0)), best_epoch=0,
                                  history={"train": [float(tr_loss[i])],
                                           "val": [float(va_loss[i])]}))  # fmt: skip
    return sorted(records, key=lambda r: (r.i, r.fold))


def _fit_from(model: nn.Module, W: np.ndarray, b: np.ndarray, scaling: tuple):
    """``model``'s linear layer set to ``W`` (d, k), ``b`` (k,), wrapped like the trained
    sweep's refit: a :class:`StandardizedModel` taking raw inputs."""
    lin = linear_of(model)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(W.T))
        if lin.bias is not None:
            lin.bias.copy_(torch.as_tensor(b))
    f64 = torch.float64  # standardization statistics at full precision (#18)
    return StandardizedModel(model, *(torch.tensor(t, dtype=f64) for t in scaling)).eval()


def fit_streamed(
    make_model: Callable[[], nn.Module],
    parts: list[Scatter],
    d: int,
    strength: float,
    *,
    standardize: bool = True,
) -> StandardizedModel:
    """:func:`fit_linear` on all rows from the parts' counts, means and scatter matrices."""
    model = make_model()
    lin = linear_of(model)
    acc = _merged(parts, None)
    k = len(acc[1]) - d
    if lin is None or (lin.in_features, lin.out_features) != (d, k):
        raise ValueError(f"make_model must return nn.Linear({d}, {k}) for this data, got {model!r}")
    scaling = _scaling(acc, d, standardize)
    W, b = _solve(acc, d, [strength * acc[0] * k / 2], scaling, lin.bias is not None)
    return _fit_from(model, W[0], b[0], scaling)


# ---------------------------------------------------------------------------- tp.sweep
def not_applicable(make_model: Callable[[], nn.Module], v: Validated) -> str | None:
    """Why ``solver="closed_form"`` cannot serve this sweep, or None when it can: the model
    must be one trainable ``nn.Linear`` (or an ``nn.Sequential`` of one), the penalty L2
    and the loss mean-squared."""
    if v.loss != "mse":
        return f"loss='mse' (got {v.loss!r})"
    if type(v.penalty) is not L2:  # exactly L2: a subclass may change the term
        return f"penalty='l2' (got {v.penalty.name!r})"
    if not is_linear_model(v.probe(make_model)):
        return "a model that is one trainable nn.Linear (or nn.Sequential of one)"
    return None


def chooses_closed_form(make_model: Callable[[], nn.Module], v: Validated) -> bool:
    """``solver="auto"``: the closed form when it applies and training would aim at the
    same solution (L2 as a gradient term, no early stopping, no resume); ``"closed_form"``
    insists (``ValueError`` saying what is missing); ``"train"`` never."""
    return solver_chosen("closed_form", lambda: not_applicable(make_model, v), v, ("grad",))


def solver_chosen(
    name: str, why: Callable[[], str | None], v: Validated, modes: tuple[str, ...]
) -> bool:
    """The rule every exact solver follows: ``solver=name`` insists (``ValueError`` with
    ``why()``, what is missing); ``"auto"`` takes it when ``why()`` is None and training
    would aim at the same minimizer (``v.mode`` in ``modes``, no early stopping, no
    resume); any other solver never."""
    solver = v.options.get("solver", "auto")
    if solver not in (name, "auto"):
        return False
    reason = why()
    if solver == name:
        if reason is not None:
            raise ValueError(f"solver={name!r} needs {reason}")
        return True
    o = v.options
    return reason is None and v.mode in modes and o["early_stopping"] is None and not o["resume"]


def sweep_closed_form(
    make_model: Callable[[], nn.Module],
    v: Validated,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    _given: tuple[list[dict], list[Record]] | None = None,
) -> SweepResult:
    """The sweep's result computed exactly on the training path's ``splits`` (train, val):
    the same table and selection rules, ``best_epoch`` 0, one-point learning curves, and
    the refit solved exactly. A streamed Dataset (``v.X`` a
    :class:`~torchpenalty.sweep.stream.StreamedData`) is read once for each validation
    part's count, mean and scatter matrix of ``[x, y]`` (:func:`streamed_records`)."""
    o = v.options
    n = len(v.X)
    groups = getattr(v, "groups", None)
    streamed = isinstance(v.X, StreamedData)
    per_target = _given is not None  # rows and records of sweep_per_target
    if per_target:
        records = _given[1]
    elif streamed:
        part = np.empty(n, dtype=np.int64)
        for f, (_, va) in enumerate(splits):
            part[va] = f
        y2 = np.asarray(v.y, dtype=np.float64).reshape(n, -1)
        parts = part_scatter(v.X, part, len(splits), y2)
        d = int(v.X.shape[1])
        records = streamed_records(parts, d, v.grid, standardize=o["standardize"],
                                   fit_intercept=_has_bias(v.probe(make_model)))  # fmt: skip
    else:
        records = sweep_records(v.X, v.y, splits, v.grid, standardize=o["standardize"],
                                fit_intercept=_has_bias(v.probe(make_model)))  # fmt: skip
    data = {"data": "streamed", "data_mb": round(v.X.mb, 3)} if streamed else {}
    settings = solved_settings(v, "closed_form", data=data)
    if groups is not None:
        settings["groups"] = len(np.unique(groups))
    name = describe_model(v.probe(make_model))
    if per_target:
        settings["per_target"] = True
    result = SweepResult(v.grid, o["folds"], records, settings, model_name=name,
                         given_table=_given[0] if per_target else None)  # fmt: skip
    if not hasattr(type(result), "loss"):
        result.loss = v.loss
    result.path_fit = _all_rows_fit(make_model, v, parts if streamed else None, per_target)
    if o["refit"] and result.chosen_strength is not None:
        result.refit_at = o["refit"]
        result.model = result.refit(result.chosen_strength)
    return result


def _all_rows_fit(make_model, v: Validated, parts: list | None, per_target: bool) -> dict:
    """Every grid strength's all-rows solution (:func:`stored_fit`), from the streamed
    parts' scatter matrices or from the rows in memory."""
    bias, standardize = _has_bias(v.probe(make_model)), v.options["standardize"]
    if parts is not None:
        acc, d = _merged(parts, None), int(v.X.shape[1])
        scaling = _scaling(acc, d, standardize)
        k = len(acc[1]) - d
        W, b = _solve(acc, d, [s * acc[0] * k / 2 for s in v.grid], scaling, bias)
    else:
        W, b, scaling = all_rows(v.X, v.y, v.grid, standardize=standardize,
                                 fit_intercept=bias, per_target=per_target)  # fmt: skip
    return stored_fit(W, b, scaling, make_model, per_target)


def all_rows(
    X: np.ndarray, Y: np.ndarray, strengths: Sequence[float], *, standardize: bool = True,
    fit_intercept: bool = True, per_target: bool = False,
) -> tuple[np.ndarray, np.ndarray, tuple]:  # fmt: skip
    """The all-rows ridge solutions ``W`` (L, d, k), ``b`` (L, k) at every strength
    (``lam = s * n * k / 2``, standardized units; ``s * n / 2`` with ``per_target``) and
    the scaling ``(x_mean, x_std, y_mean, y_std)`` of all rows: what :func:`fit_linear`
    computes for one strength."""
    Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
    n, k = Y.shape
    sx, sy, Z, T = _scaled(np.asarray(X, dtype=np.float64), Y, np.arange(n), standardize)
    k = 1 if per_target else k
    W, b = ridge_solutions(Z, T, [s * n * k / 2 for s in strengths], fit_intercept=fit_intercept)
    return W, b, (sx.mean, sx.std, sy.mean, sy.std)


def stored_fit(
    W: np.ndarray, b: np.ndarray, scaling: tuple, make_model, per_target: bool = False
) -> dict:
    """Every strength's all-rows solution as ``SweepResult.path_fit`` holds it (the path
    solver's layout: ``weight`` (L, k, d), ``bias`` (L, k), the scaling), from which
    :meth:`SweepResult.refit` builds a model at any grid strength without solving again
    (``model_at``: :func:`path_model`, or :func:`per_target_model` with one strength per
    output)."""
    mx, sx, my, sy = (torch.as_tensor(np.asarray(t, dtype=np.float64)) for t in scaling)
    return {"weight": torch.as_tensor(W.transpose(0, 2, 1)), "bias": torch.as_tensor(b),
            "x_mean": mx, "x_std": sx, "y_mean": my, "y_std": sy, "make_model": make_model,
            "model_at": per_target_model if per_target else path_model}  # fmt: skip


def path_model(result, strength: float):
    """The all-rows solution of a path sweep at ``strength`` (one of its grid) as the
    trained sweep's refit: a :class:`StandardizedModel` taking raw inputs, around the
    model ``make_model`` returns; its outputs are in the target's raw units."""
    pf = result.path_fit
    i = result.strengths.index(strength)
    with torch.random.fork_rng(devices=[]):
        model = pf["make_model"]()
    lin = linear_of(model)
    with torch.no_grad():
        lin.weight.copy_(pf["weight"][i].to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.copy_(pf["bias"][i].to(lin.bias.dtype))
    f64 = torch.float64  # statistics kept in float64: cast only at the model's input
    y = [pf[key].to(f64) if key in pf else None for key in ("y_mean", "y_std")]  # ridge
    return StandardizedModel(model, pf["x_mean"].to(f64), pf["x_std"].to(f64), *y).eval()


def loo_not_applicable(make_model: Callable[[], nn.Module], v: Validated) -> str | None:
    """Why ``folds="loo"`` (or ``per_target=True``) cannot serve this sweep (None when it
    can): exact leave-one-out and per-target strengths are the ridge closed form's (:func:`not_applicable`) on 2-D features held in memory,
    with ``solver`` ``"auto"`` or ``"closed_form"``."""
    if v.options["solver"] not in ("auto", "closed_form"):
        return f"solver 'auto' or 'closed_form' (got solver={v.options['solver']!r})"
    if not v.tabular or isinstance(v.X, StreamedData):
        return "2-D float features X held in memory (rows, features)"
    for key in ("halving", "executor", "resume"):
        if v.options[key] not in (None, False):
            return f"{key} unset (got {key}={v.options[key]!r})"
    return not_applicable(make_model, v)


def loo_table(
    X: np.ndarray, Y: np.ndarray, strengths: Sequence[float], *, standardize: bool = True,
    per_target: bool = False,
) -> tuple[list[dict], list[Record], tuple]:  # fmt: skip
    """The sweep table of exact leave-one-out on ``n`` rows, one :class:`Record` per
    strength and the all-rows solutions (``W``, ``b``, scaling: :func:`all_rows`). ``X`` is standardized with all rows' statistics (per-fold statistics would
    give each of the ``n`` fits its own penalty scale); each leave-one-out fit minimizes its
    ``n - 1`` rows' mean squared error plus ``s/2 ||W||^2``: ``lam = s * (n - 1) * k / 2``
    in :func:`ridge_loo` (``k`` outputs), scikit-learn's ``RidgeCV(alphas=s * (n - 1) / 2)``
    on the standardized ``X`` (one output; the target's own units: L2 does not depend on
    them). The validation loss of a strength is the mean over rows (and outputs) of the
    squared leave-one-out residuals, its standard error ``std(ddof=1) / sqrt(n)`` over the
    rows; train loss, weight norm and zeros are the all-rows fit's (``lam = s * n * k / 2``):
    the ``n`` leave-one-out fits are never formed.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 2)); y = X[:, 0] + rng.normal(size=30)
    >>> rows, _, _ = loo_table(X, y, [0.1, 1.0])
    >>> e = ridge_loo((X - X.mean(0)) / X.std(0), y, [0.1 * 29 / 2])  # lam = s (n - 1) / 2
    >>> [r["folds_done"] for r in rows], bool(np.isclose(rows[0]["val_loss_mean"], np.mean(e**2)))
    ([30, 30], True)
    """
    Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
    n, k = Y.shape
    sx, sy, Z, T = _scaled(np.asarray(X, dtype=np.float64), Y, np.arange(n), standardize)
    kk = 1 if per_target else k  # per target: each output's lam is its own s * (n - 1) / 2
    loo = ridge_loo(Z, T, [s * (n - 1) * kk / 2 for s in strengths]) * sy.std
    err = np.mean(loo**2, axis=2)  # (L, n) in the data's units
    W, b = ridge_solutions(Z, T, [s * n * kk / 2 for s in strengths])
    train = _losses(Z, T, W, b, sy.std)
    stats = np.stack([err.mean(1), train, np.sqrt(np.sum(W**2, axis=(1, 2))) ,
                      np.mean(W == 0, axis=(1, 2))])[None]  # fmt: skip
    records = records_of(stats, strengths)
    se = (err.std(axis=1, ddof=1) / np.sqrt(n)).tolist()
    bad = np.sum(~np.isfinite(err), axis=1).tolist()
    rows = [{"strength": r.strength, "val_loss_mean": r.val_loss, "val_loss_se": e,
             "train_loss_mean": r.train_loss, "param_norm_mean": r.param_norm,
             "zero_fraction_mean": r.zero_fraction, "folds_done": n,
             "diverged": not math.isfinite(r.val_loss), "folds_diverged": nb}
            for r, e, nb in zip(records, se, bad, strict=True)]  # fmt: skip
    if per_target:
        per = loo**2  # (L, n, k)
        _add_per_target(rows, per.mean(1), per.std(1, ddof=1) / np.sqrt(n))
    return rows, records, (W, b, (sx.mean, sx.std, sy.mean, sy.std))


def _add_per_target(rows: list[dict], mean: np.ndarray, se: np.ndarray) -> None:
    """Each row (strength) gets ``val_loss_mean_per_target`` and ``val_loss_se_per_target``
    (one entry per output) from arrays of shape ``(L, k)``."""
    for row, m, e in zip(rows, mean.tolist(), se.tolist(), strict=True):
        row["val_loss_mean_per_target"], row["val_loss_se_per_target"] = m, e


def per_target_kfold(
    X: np.ndarray, Y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]],
    strengths: Sequence[float], *, standardize: bool = True, fit_intercept: bool = True,
) -> tuple[list[dict], list[Record]]:  # fmt: skip
    """K-fold table and records with one strength per output (``per_target=True``): each
    output ``j`` is the single-output problem of its column, ``lam = s * n_train / 2``
    (what ``tp.sweep`` on ``(X, Y[:, j])`` solves: ridge's outputs share ``X`` and nothing
    else), all outputs from one decomposition per fold. Rows hold the mean over outputs
    and ``val_loss_{mean,se}_per_target``; records the mean over outputs."""
    Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
    X = np.asarray(X, dtype=np.float64)
    per, stats = [], []
    for tr, va in splits:
        _, sy, Z, T = _scaled(X, Y, tr, standardize)
        W, b = ridge_solutions(Z[tr], T[tr], [s * len(tr) / 2 for s in strengths],
                               fit_intercept=fit_intercept)  # fmt: skip
        per.append(_target_losses(Z[va], T[va], W, b, sy.std))  # (L, k)
        stats.append([per[-1].mean(1), _losses(Z[tr], T[tr], W, b, sy.std),
                      np.sqrt(np.sum(W**2, axis=(1, 2))), np.mean(W == 0, axis=(1, 2))])  # fmt: skip
    records = records_of(np.asarray(stats), strengths)
    rows = SweepResult(list(strengths), len(splits), records).table
    p = np.stack(per)  # (F, L, k)
    _add_per_target(rows, p.mean(0), p.std(0, ddof=1) / np.sqrt(len(splits)))
    return rows, records


def per_target_model(result: SweepResult, strengths: Sequence[float]) -> nn.Module:
    """The all-rows model whose output ``j`` is solved at ``strengths[j]`` (grid values),
    read from ``result.path_fit`` (a ``per_target=True`` sweep)."""
    pf = result.path_fit
    bad = [s for s in strengths if s not in result.strengths]
    if bad or len(strengths) != pf["weight"].shape[1]:
        raise ValueError(f"which must be 'best', '1se', a strength of the grid or one per "
                         f"output ({pf['weight'].shape[1]}), got {list(strengths)!r}")  # fmt: skip
    idx = [result.strengths.index(s) for s in strengths]
    cols = range(len(idx))
    W = torch.stack([pf["weight"][i, j] for i, j in zip(idx, cols, strict=True)])
    b = torch.stack([pf["bias"][i, j] for i, j in zip(idx, cols, strict=True)])
    with torch.random.fork_rng(devices=[]):
        model = pf["make_model"]()
    scaling = tuple(pf[key].numpy() for key in ("x_mean", "x_std", "y_mean", "y_std"))
    return _fit_from(model, W.T.numpy(), b.numpy(), scaling)


def sweep_per_target(make_model, v: Validated, splits) -> SweepResult:
    """``tp.sweep(..., per_target=True)`` with K folds (:func:`per_target_kfold`)."""
    why = loo_not_applicable(make_model, v)
    if why is not None:
        raise ValueError(f"per_target=True needs {why}; got per_target=True")
    o = v.options
    bias = _has_bias(v.probe(make_model))
    rows, records = per_target_kfold(v.X, v.y, splits, v.grid, standardize=o["standardize"],
                                     fit_intercept=bias)  # fmt: skip
    return sweep_closed_form(make_model, v, splits, _given=(rows, records))


def solved_settings(v: Validated, solver: str, *, data: dict | None = None, **extra) -> dict:
    """``result.settings`` of a sweep solved exactly (closed form, leave-one-out, path):
    the sweep's options as a trained sweep records them, the data's shape and fingerprint
    (``data``: what is said of streamed data), ``solver`` and the solver's ``extra``."""
    o = v.options
    return {
        "penalty": v.penalty.get_config() | {"strength": None},
        "loss": v.loss,
        **{k: o[k] for k in ("folds", "epochs", "batch_size", "optimizer", "lr")},
        "mode": v.mode,
        **{k: o[k] for k in ("seed", "early_stopping", "standardize")},
        "n_rows": len(v.X),
        "n_features": int(v.X.shape[1]),
        **(data or {}),
        "data_sha256": v.fingerprint,
        "solver": solver,
        **extra,
    }


def sweep_loo(make_model: Callable[[], nn.Module], v: Validated) -> SweepResult:
    """``tp.sweep(..., folds="loo")``: exact leave-one-out for ridge (:func:`loo_table`);
    ``ValueError`` naming ``folds`` when it cannot apply (:func:`loo_not_applicable`)."""
    why = loo_not_applicable(make_model, v)
    if why is not None:
        raise ValueError(f"folds='loo' needs {why}; got folds='loo'")
    o = v.options
    model = v.probe(make_model)  # its bias and its name
    if linear_of(model).bias is None:
        raise ValueError("folds='loo' needs a model with a bias; got folds='loo'")
    rows, records, (W, b, scaling) = loo_table(v.X, v.y, v.grid, standardize=o["standardize"],
                                               per_target=o["per_target"])  # fmt: skip
    n = len(v.X)
    settings = solved_settings(
        v, "closed_form", **({"per_target": True} if o["per_target"] else {})
    )
    result = SweepResult(v.grid, n, records, settings, model_name=describe_model(model),
                         given_table=rows)  # fmt: skip
    result.path_fit = stored_fit(W, b, scaling, make_model, o["per_target"])
    if o["refit"] and result.chosen_strength is not None:
        result.refit_at = o["refit"]
        result.model = result.refit(result.chosen_strength)
    return result


def _has_bias(model: nn.Module) -> bool:
    lin = linear_of(model)
    return lin is not None and lin.bias is not None
