"""Tabular data for the sweep: CSV and NPZ files, bundled data sets, validation.

Every problem with a file raises :class:`DataError` with one line that says what is wrong
and where (row and column for a bad cell), so the command line can print it as is.

>>> import io
>>> X, y, names, task = read_csv(io.StringIO("a,b,y\\n1,2,0.5\\n3,4,1.5\\n5,6,2.5\\n"), "y")
>>> X.shape, y.tolist(), names, task
((3, 2), [0.5, 1.5, 2.5], ['a', 'b'], 'regression')
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from typing import IO

import numpy as np

__all__ = ["BUNDLED", "DataError", "Dataset", "infer_task", "load", "read_csv", "read_npz"]

#: Data sets that ship inside scikit-learn (no download), with their task.
BUNDLED = {
    "diabetes": "regression",
    "breast_cancer": "classification",
    "iris": "classification",
    "wine": "classification",
}


class DataError(ValueError):
    """Bad input data; the message is one line meant for the user."""


@dataclass
class Dataset:
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    task: str  # "regression" or "classification"
    source: str
    target: str

    def check_folds(self, folds: int) -> None:
        n = len(self.X)
        if n < 2 * folds:
            raise DataError(f"too few rows ({n}) for {folds} folds: need at least {2 * folds}")
        if self.task == "classification":
            _, counts = np.unique(self.y, return_counts=True)
            if counts.min() < 2:
                raise DataError("every class needs at least 2 rows for cross-validation")
        elif np.ptp(self.y) == 0:
            raise DataError(f"the target column {self.target!r} is constant ({self.y[0]!r})")


def infer_task(y: np.ndarray) -> str:
    """``classification`` for text, boolean, or integer targets with at most 10 distinct
    values; ``regression`` otherwise."""
    if y.dtype.kind in "OUSb":
        return "classification"
    if np.all(np.mod(y, 1) == 0) and len(np.unique(y)) <= 10:
        return "classification"
    return "regression"


def _number(cell: str, row: int, col: str) -> float:
    text = cell.strip()
    if text == "":
        raise DataError(f"row {row}, column {col!r}: empty cell")
    try:
        v = float(text)
    except ValueError:
        raise DataError(f"row {row}, column {col!r}: {cell!r} is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"row {row}, column {col!r}: {cell!r} is not a finite number")
    return v


def read_csv(f: IO[str] | str, target: str | None, task: str | None = None) -> tuple:
    """Read a CSV with a header row. Every column but ``target`` must be numeric; the
    target may hold class labels. ``target=None`` takes the last column."""
    if isinstance(f, str):
        if not os.path.exists(f):
            raise DataError(f"no such file: {f}")
        with open(f, newline="", encoding="utf-8-sig") as fh:
            return read_csv(fh, target, task)
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the CSV file is empty") from None
    except csv.Error as e:
        raise DataError(f"the CSV file cannot be parsed: {e}") from None
    header = [h.strip() for h in header]
    if len(header) < 2:
        raise DataError(f"the CSV needs a header and at least 2 columns, got {header!r}")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"duplicate column names in the header: {dup}")
    target = header[-1] if target is None else target
    if target not in header:
        raise DataError(f"no column {target!r} in the CSV; columns are {header}")
    t = header.index(target)
    feats = [h for i, h in enumerate(header) if i != t]
    rows, ys = [], []
    try:
        for lineno, rec in enumerate(reader, start=2):
            if not rec or all(c.strip() == "" for c in rec):
                continue
            if len(rec) != len(header):
                raise DataError(f"row {lineno}: {len(rec)} cells, the header has {len(header)}")
            rows.append([_number(c, lineno, header[i]) for i, c in enumerate(rec) if i != t])
            ys.append((rec[t].strip(), lineno))
    except csv.Error as e:
        raise DataError(f"the CSV file cannot be parsed: {e}") from None
    if not rows:
        raise DataError("the CSV has a header but no data rows")
    labels = np.array([v for v, _ in ys])
    numeric = True
    for v, _ in ys:
        try:
            float(v)
        except ValueError:
            numeric = False
            break
    if task == "regression" or (task is None and numeric):
        y = np.array([_number(v, ln, target) for v, ln in ys])
    else:
        if any(v == "" for v in labels):
            ln = next(ln for v, ln in ys if v == "")
            raise DataError(f"row {ln}, column {target!r}: empty cell")
        y = (
            labels.astype(float)
            if numeric and np.all(np.mod(labels.astype(float), 1) == 0)
            else labels
        )
    return np.array(rows, dtype=np.float64), y, feats, task or infer_task(y)


def read_npz(path: str, target: str | None, task: str | None = None) -> tuple:
    """Read an ``.npz`` with arrays ``X`` (rows, features) and ``y`` (or ``target``).
    Loaded with ``allow_pickle=False``: no code runs from the file."""
    if not os.path.exists(path):
        raise DataError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise DataError(f"{path} cannot be read without unpickling objects: {e}") from None
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file: {e}") from None
    key = target or "y"
    if "X" not in arrays or key not in arrays:
        raise DataError(f"the .npz must hold arrays 'X' and {key!r}; it holds {sorted(arrays)}")
    X, y = arrays["X"], arrays[key]
    if X.ndim != 2:
        raise DataError(f"X must be 2-D (rows, features), got shape {X.shape}")
    if len(y) != len(X):
        raise DataError(f"{key!r} has {len(y)} rows but X has {len(X)}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64)
    bad = np.argwhere(~np.isfinite(X))
    if len(bad):
        r, c = bad[0]
        raise DataError(f"row {r}, column {c}: {X[r, c]} is not a finite number")
    if y.dtype.kind in "fc" and not np.isfinite(y).all():
        r = int(np.argwhere(~np.isfinite(y))[0][0])
        raise DataError(f"row {r} of {key!r}: {y[r]} is not a finite number")
    names = [f"x{i}" for i in range(X.shape[1])]
    return X, y, names, task or infer_task(y)


def load(
    path: str | None = None,
    *,
    target: str | None = None,
    task: str | None = None,
    dataset: str = "diabetes",
) -> Dataset:
    """Load ``path`` (``.csv`` or ``.npz``), or the bundled ``dataset`` when ``path`` is
    None (scikit-learn ships these files: no download)."""
    if task not in (None, "regression", "classification"):
        raise DataError(f"task must be 'regression' or 'classification', got {task!r}")
    if path is None:
        if dataset not in BUNDLED:
            raise DataError(f"dataset must be one of {sorted(BUNDLED)}, got {dataset!r}")
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{dataset}")()
        X, y = bunch.data.astype(np.float64), bunch.target
        names = [str(n) for n in bunch.feature_names]
        return Dataset(X, y, names, task or BUNDLED[dataset], f"sklearn:{dataset}", "target")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        X, y, names, inferred = read_csv(path, target, task)
    elif ext == ".npz":
        X, y, names, inferred = read_npz(path, target, task)
    else:
        raise DataError(f"the data file must end in .csv or .npz, got {path!r}")
    if X.shape[1] == 0:
        raise DataError("no feature columns besides the target")
    if inferred == "regression" and y.dtype.kind not in "biuf":
        raise DataError(f"task 'regression' needs a numeric target, got labels like {y[0]!r}")
    return Dataset(X, y, names, inferred, path, target or ("y" if ext == ".npz" else "last column"))
