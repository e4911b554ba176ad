"""Cross-validation folds and standardization fitted on training rows only (NumPy only).

>>> import numpy as np
>>> folds = kfold(10, 3, seed=0)
>>> [len(val) for _, val in folds]
[4, 3, 3]
>>> sorted(np.concatenate([val for _, val in folds]).tolist()) == list(range(10))
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["Standardizer", "kfold", "stratified_kfold"]


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


class Standardizer:
    """Column means and standard deviations of the training rows (std 0 -> 1)."""

    def __init__(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x) * self.std + self.mean
