"""Cross-validation folds and standardization fitted on training rows only (NumPy only).

>>> import numpy as np
>>> folds = kfold(10, 3, seed=0)
>>> [len(val) for _, val in folds]
[4, 3, 3]
>>> sorted(np.concatenate([val for _, val in folds]).tolist()) == list(range(10))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Standardizer", "group_kfold", "kfold", "stratified_kfold"]


def kfold(n: int, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled K-fold split of ``range(n)``: ``k`` (train, val) index pairs, the first
    ``n % k`` validation folds one row larger."""
    if k < 2:
        raise ValueError(f"folds must be an integer >= 2, got {k}")
    if n < k:
        raise ValueError(f"folds must be at most the number of rows ({n}), got {k}")
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(perm, k)
    return [
        (np.sort(np.concatenate(parts[:i] + parts[i + 1 :])), np.sort(parts[i])) for i in range(k)
    ]


def stratified_kfold(y: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold split that keeps class proportions: each class's rows are shuffled and dealt
    to the folds in turn (continuing where the previous class stopped)."""
    y = np.asarray(y)
    n = len(y)
    if k < 2:
        raise ValueError(f"folds must be an integer >= 2, got {k}")
    if n < k:
        raise ValueError(f"folds must be at most the number of rows ({n}), got {k}")
    rng = np.random.default_rng(seed)
    assign = np.empty(n, dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        assign[rows] = (offset + np.arange(len(rows))) % k
        offset += len(rows)
    return [(np.flatnonzero(assign != i), np.flatnonzero(assign == i)) for i in range(k)]


def group_kfold(groups: Any, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold split that keeps each group whole (repeated measures: all rows of one
    subject in the same fold), balancing the rows per fold like scikit-learn's
    ``GroupKFold``: groups are taken largest first and each goes to the fold with the
    fewest rows so far. ``seed`` shuffles the groups first, which only breaks ties between
    groups of the same size. ``groups`` holds one label (number or text) per row.

    >>> g = np.array(["a", "a", "a", "b", "b", "c", "d"])
    >>> folds = group_kfold(g, 2)
    >>> [len(val) for _, val in folds], [sorted(set(g[val].tolist())) for _, val in folds]
    ([4, 3], [['a', 'd'], ['b', 'c']])
    """
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D (one label per row), got shape {g.shape}")
    if g.dtype.kind in "fc" and not np.isfinite(g).all():
        raise ValueError("groups must not contain NaN or infinite labels")
    if g.dtype.kind not in "biufUS":
        raise TypeError(f"groups must hold numbers or text labels, got dtype {g.dtype}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"folds must be an integer >= 2, got {k!r}")
    labels, codes = np.unique(g, return_inverse=True)
    if k > len(labels):
        raise ValueError(f"folds must be at most the number of groups ({len(labels)}), got {k}")
    sizes = np.bincount(codes)
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load = np.zeros(k, dtype=np.int64)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for gi in order:
        f = int(np.argmin(load))
        fold_of[gi] = f
        load[f] += sizes[gi]
    assign = fold_of[codes]
    return [(np.flatnonzero(assign != i), np.flatnonzero(assign == i)) for i in range(k)]


class Standardizer:
    """Column means and standard deviations of the training rows (std 0 -> 1). A column
    whose variance overflows float64 (values around 1e154 and up) raises ``ValueError``
    naming it (``"{name} column {j}"``) instead of being silently standardized to zeros.

    >>> Standardizer(np.array([[1.0, 2e160], [2.0, -2e160]]), name="X")
    Traceback (most recent call last):
    ...
    ValueError: X column 1: values as large as 2e+160 overflow its variance in float64; rescale it
    """

    def __init__(self, x: np.ndarray, name: str | None = None) -> None:
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            self.mean = x.mean(axis=0)
            std = x.std(axis=0)
        bad = np.flatnonzero(~np.isfinite(np.atleast_1d(std)))
        if len(bad):
            big = float(np.abs(x.reshape(len(x), -1)[:, bad[0]]).max())
            raise ValueError(
                f"{name + ' ' if name else ''}column {bad[0]}: values as large as {big:.3g} "
                "overflow its variance "
                "in float64; rescale it"
            )
        self.std = np.where(std > 0, std, 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x) * self.std + self.mean


def strength_factors(penalty: Any, loss: Any, stats: list) -> tuple[list[float], str]:
    """Per-fold factors turning a strength in the raw target's units into the strength a
    model trained on the fold's standardized target ``t = (y - mean) / sd`` needs, and the
    units the reported strengths are in (``"raw target"`` or ``"standardized target"``).

    With weights ``w = sd * u`` of a linear model, ``mean((Zw + b - y)**2) + s * P(w)`` is
    ``sd**2 * (mean((Zu + c - t)**2) + s * sd**(p - 2) * P(u))`` for a penalty homogeneous of
    degree ``p`` (``P(a w) = a**p P(w)``): the factor is ``sd**(p - 2)``, ``1/sd`` for L1 and
    group lasso, ``1`` for L2 (scale-free). Several targets use ``sd = sqrt(mean(sd_k**2))``
    (exact when their spreads are equal). Elastic net (degrees 1 and 2 mixed), BerHu and user
    penalties have no such factor: their strengths stay in standardized-target units. A
    cross-entropy or callable loss has no target scale: factors 1, ``"raw target"``.

    >>> from torchpenalty.penalties import L1, L2
    >>> st = [(None, Standardizer(np.array([[0.0], [4.0]])))]  # sd 2
    >>> strength_factors(L1(1.0), "mse", st), strength_factors(L2(1.0), "mse", st)
    (([0.5], 'raw target'), ([1.0], 'raw target'))
    """
    from ..penalties import L1, L2, GroupLasso

    ones = [1.0] * len(stats)
    if loss != "mse" or any(sy is None for _, sy in stats):
        return ones, "raw target"
    degree = {L1: 1, GroupLasso: 1, L2: 2}.get(type(penalty))
    if degree is None:
        return ones, "standardized target"
    return [float(np.sqrt(np.mean(np.square(sy.std)))) ** (degree - 2) for _, sy in stats], (
        "raw target"
    )
