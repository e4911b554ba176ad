"""Tabular data for the sweep: CSV and NPZ files, bundled data sets, validation.

Every problem with a file raises :class:`DataError` with one line that says what is wrong
and where (row and column for a bad cell), so the command line can print it as is.

>>> import io
>>> X, y, names, task = read_csv(io.StringIO("a,b,y\\n1,2,0.5\\n3,4,1.5\\n5,6,2.5\\n"), "y")
>>> X.shape, y.tolist(), names, task
((3, 2), [0.5, 1.5, 2.5], ['a', 'b'], 'regression')
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import math
import os
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np

__all__ = [
    "BUNDLED",
    "MISSING",
    "TARGET_STD_RANGE",
    "DataError",
    "Dataset",
    "check_scale",
    "decode_csv",
    "infer_task",
    "load",
    "read_csv",
    "read_npz",
]

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
    """``classification`` for 1-D text, boolean, or integer targets with at most 10
    distinct values (each of magnitude at most 2**31); ``regression`` otherwise (and for
    2-D targets, which are multi-output regressions).

    >>> infer_task(np.array([0, 1, 1, 2])), infer_task(np.array([0.5, 1.0, 2.0]))
    ('classification', 'regression')
    """
    if y.ndim != 1:
        return "regression"
    if y.dtype.kind in "OUSb":
        return "classification"
    v = y.astype(np.float64)
    integral = np.all(np.mod(v, 1) == 0) and np.all(np.abs(v) <= 2**31)
    if integral and len(np.unique(y)) <= 10:
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


#: Label cells read as a missing value (pandas' default ``na_values``, plus the empty cell).
MISSING = frozenset((
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "?",
))  # fmt: skip

_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _check_file(path: str) -> None:
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a data file")
    if not os.path.exists(path):
        raise DataError(f"no such file: {path}")


def _read_bytes(path: str) -> bytes:
    _check_file(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def decode_csv(raw: bytes, source: str, encoding: str | None = None) -> str:
    r"""The text of a CSV file's bytes. ``encoding=None`` reads UTF-8 (a byte-order mark
    is accepted), UTF-16 and UTF-32 with a byte-order mark, and gzip-compressed files;
    anything else (latin-1, UTF-16 without a mark, binary, a ZIP or Excel workbook) raises
    :class:`DataError` saying so. Pass ``encoding="latin-1"`` (any Python codec) to decode
    such a file on purpose.

    >>> decode_csv(b"\xef\xbb\xbfa,y\n1,2\n", "f.csv")
    'a,y\n1,2\n'
    >>> decode_csv("é,y\n".encode("latin-1"), "f.csv")
    Traceback (most recent call last):
    ...
    torchpenalty.data.DataError: f.csv is not UTF-8 text: byte 0xe9 at line 1, column 1 cannot be decoded; save it as UTF-8 (or pass encoding=, e.g. 'latin-1')
    """
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{source} is gzip-compressed but cannot be decompressed: {e}"
            ) from None
    if raw[:4] == b"PK\x03\x04":
        raise DataError(f"{source} is a ZIP archive (an Excel workbook?), not a CSV text file")
    if encoding is None:
        encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), None)
        if encoding is None and b"\x00" in raw:
            at = raw.index(b"\x00")
            raise DataError(
                f"{source} is not a CSV text file: a NUL byte at offset {at} "
                "(binary, or UTF-16 without a byte-order mark)"
            )
    try:
        return raw.decode(encoding or "utf-8")
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as e:
        seen = e.object  # what the decoder saw (without a byte-order mark)
        line = seen.count(b"\n", 0, e.start) + 1
        col = e.start - (seen.rfind(b"\n", 0, e.start) + 1) + 1
        shown = _CODEC_NAMES.get(encoding or "utf-8", encoding)
        hint = "" if encoding else " (or pass encoding=, e.g. 'latin-1')"
        raise DataError(
            f"{source} is not {shown} text: byte 0x{seen[e.start]:02x} at line {line}, "
            f"column {col} cannot be decoded; save it as UTF-8{hint}"
        ) from None


_CODEC_NAMES = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16", "utf-32": "UTF-32"}


def read_csv(
    f: IO[str] | str,
    target: str | None,
    task: str | None = None,
    *,
    encoding: str | None = None,
) -> tuple:
    """Read a CSV with a header row. Every column but ``target`` must be numeric; the
    target may hold class labels. ``target=None`` takes the last column. A path is read
    as bytes and decoded by :func:`decode_csv` (``encoding``)."""
    if isinstance(f, str):
        text = decode_csv(_read_bytes(f), f, encoding)
        return read_csv(io.StringIO(text, newline=""), target, task)
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
    y = _csv_target(ys, target, task)
    return np.array(rows, dtype=np.float64), y, feats, task or infer_task(y)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_target(ys: list[tuple[str, int]], target: str, task: str | None) -> np.ndarray:
    """The target column: numbers (finite; required for regression) or class labels
    (text; a cell that reads as a missing value is refused, naming its row)."""
    numeric = all(_is_number(v) and v.lower() not in ("nan", "-nan") for v, _ in ys)
    if task == "regression" or numeric:
        return np.array([_number(v, ln, target) for v, ln in ys])
    for v, ln in ys:
        if v in MISSING:
            what = "empty cell" if v == "" else f"{v!r} reads as a missing label"
            raise DataError(f"row {ln}, column {target!r}: {what}")
    return np.array([v for v, _ in ys])


def _npz_target(y: np.ndarray, key: str, n: int, task: str | None) -> np.ndarray:
    """``y`` of an .npz checked: one value (or one row of values) per row of X, real
    numbers or text labels; bytes labels are decoded to str; (n, 1) becomes (n,)."""
    if y.ndim == 0 or y.ndim > 2:
        raise DataError(f"{key!r} must be 1-D (n,) or 2-D (n, outputs), got shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{key!r} has {len(y)} rows but X has {n}")
    if y.dtype.kind == "c":
        raise DataError(f"{key!r} must hold real numbers or labels, got dtype {y.dtype}")
    if y.dtype.kind not in "biufSU":
        raise DataError(f"{key!r} must hold numbers or text labels, got dtype {y.dtype}")
    if y.dtype.kind == "S":
        try:
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{key!r} holds bytes labels that are not UTF-8 text") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and (y.dtype.kind in "bSU" or (y.dtype.kind in "iu" and task != "regression")):
        raise DataError(
            f"{key!r} is 2-D {y.dtype} (shape {y.shape}): class labels must be 1-D (one-hot? "
            "store y.argmax(1)); for a multi-output regression store floats or set the task "
            "to regression"
        )
    if y.ndim == 2 and task == "classification":
        raise DataError(f"class labels {key!r} must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        r = int(np.argwhere(~np.isfinite(y))[0][0])
        raise DataError(f"row {r} of {key!r}: {y[r]} is not a finite number")
    if y.dtype.kind == "U":
        bad = [i for i, v in enumerate(y.tolist()) if v.strip() in MISSING]
        if bad:
            raise DataError(
                f"row {bad[0]} of {key!r}: {y.tolist()[bad[0]]!r} reads as a missing label"
            )
    return y.astype(np.float64) if y.ndim == 2 else y


def read_npz(path: str, target: str | None, task: str | None = None) -> tuple:
    """Read an ``.npz`` with arrays ``X`` (rows, features) and ``y`` (or ``target``).
    Loaded with ``allow_pickle=False``: no code runs from the file."""
    head = _read_bytes(path)[:4]
    if head != b"PK\x03\x04":
        what = "a .npy array" if head == b"\x93NUM" else "not a ZIP archive"
        raise DataError(f"{path} is not a readable .npz file ({what}); save it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError:
        raise DataError(
            f"{path} cannot be read without unpickling objects (refused: no code runs "
            "from a data file); save numeric or text arrays"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file: {e}") from None
    key = target or "y"
    if "X" not in arrays or key not in arrays:
        raise DataError(f"the .npz must hold arrays 'X' and {key!r}; it holds {sorted(arrays)}")
    X = arrays["X"]
    if X.ndim != 2:
        raise DataError(f"X must be 2-D (rows, features), got shape {X.shape}")
    if X.dtype.kind == "c":
        raise DataError(f"X must hold real numbers, got complex values (dtype {X.dtype})")
    if X.dtype.kind not in "biuf":
        raise DataError(f"X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64)
    bad = np.argwhere(~np.isfinite(X))
    if len(bad):
        r, c = bad[0]
        raise DataError(f"row {r}, column {c}: {X[r, c]} is not a finite number")
    y = _npz_target(arrays[key], key, len(X), task)
    names = [f"x{i}" for i in range(X.shape[1])]
    return X, y, names, task or infer_task(y)


#: A regression target's standard deviation must lie in this range: the sweep reports
#: losses in the data's units in float32, where squared errors of a target with a larger
#: (smaller) spread overflow to inf (underflow to 0) and every strength would look alike.
TARGET_STD_RANGE = (1e-15, 1e15)


def check_scale(X: np.ndarray, y: np.ndarray, names: list[str], target: str, task: str) -> None:
    """Refuse columns whose spread the sweep cannot represent, naming the column: a
    feature whose variance overflows float64 (values around 1e154 and up: standardizing
    would silently zero it), or a regression target whose standard deviation is outside
    :data:`TARGET_STD_RANGE`.

    >>> check_scale(np.array([[1.0], [2e160]]), np.array([0.0, 1.0]), ["a"], "y", "regression")
    Traceback (most recent call last):
    ...
    torchpenalty.data.DataError: column 'a': values as large as 2e+160 overflow its variance in float64; rescale the column (divide it by 1e+160, say)
    """
    with np.errstate(over="ignore", invalid="ignore"):
        std = X.std(axis=0)
    for j in np.flatnonzero(~np.isfinite(std)):
        big = float(np.abs(X[:, j]).max())
        raise DataError(
            f"column {names[j]!r}: values as large as {big:.3g} overflow its variance in "
            f"float64; rescale the column (divide it by {_power(big):.0e}, say)"
        )
    if task != "regression" or y.dtype.kind not in "biuf":
        return
    yf = y.astype(np.float64).reshape(len(y), -1)
    with np.errstate(over="ignore", invalid="ignore"):
        ystd = yf.std(axis=0)
    lo, hi = TARGET_STD_RANGE
    for s in ystd:
        if s == 0:
            continue
        if not (lo <= s <= hi):
            big = float(np.abs(yf).max())
            spread = "overflows float64" if not np.isfinite(s) else f"is {s:.3g}"
            scale = _power(s if np.isfinite(s) else big)
            raise DataError(
                f"the target column {target!r}: values up to {big:.3g}, its standard deviation "
                f"{spread}, outside [{lo:g}, {hi:g}] where losses in its units stay finite "
                f"and nonzero in float32; rescale it (divide it by {scale:.0e}, say)"
            )


def _power(v: float) -> float:
    """The power of ten at or below ``v``."""
    return 10.0 ** math.floor(math.log10(v))


def load(
    path: str | None = None,
    *,
    target: str | None = None,
    task: str | None = None,
    dataset: str = "diabetes",
    encoding: str | None = None,
) -> Dataset:
    """Load ``path`` (``.csv``, gzip-compressed ``.csv.gz`` or ``.npz``), or the bundled
    ``dataset`` when ``path`` is None (scikit-learn ships these files: no download).
    ``encoding`` is the CSV's text encoding (default: UTF-8, see :func:`decode_csv`).
    Every problem raises :class:`DataError` with a one-line message."""
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
    lower = str(path).lower()
    if lower.endswith((".csv", ".csv.gz")):
        X, y, names, inferred = read_csv(path, target, task, encoding=encoding)
    elif lower.endswith(".npz"):
        X, y, names, inferred = read_npz(path, target, task)
    else:
        raise DataError(f"the data file must end in .csv or .npz (or .csv.gz), got {path!r}")
    if X.shape[1] == 0:
        raise DataError("no feature columns besides the target")
    if inferred == "regression" and y.dtype.kind not in "biuf":
        raise DataError(f"task 'regression' needs a numeric target, got labels like {y[0]!r}")
    name = target or ("y" if lower.endswith(".npz") else "last column")
    check_scale(X, y, names, name, inferred)
    return Dataset(X, y, names, inferred, path, name)
