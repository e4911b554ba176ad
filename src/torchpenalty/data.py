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
from typing import IO, Any

import numpy as np

__all__ = [
    "BUNDLED",
    "MISSING",
    "TARGET_STD_RANGE",
    "DataError",
    "Dataset",
    "check_scale",
    "decode_csv",
    "group_ids",
    "infer_task",
    "load",
    "read_csv",
    "read_features",
    "read_npz",
    "shown",
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
    #: one integer id per row (``load(groups=...)``), or None
    groups: np.ndarray | None = None

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


def shown(text: Any, limit: int = 32) -> str:
    """``repr(text)``, cut to about ``limit`` characters (a cell or a column name in a
    one-line message).

    >>> shown("x" * 100)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxx...'"
    """
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 4] + "..." + r[0]


def _number(cell: str, row: int, col: str) -> float:
    text = cell.strip()
    if text == "":
        raise DataError(f"row {row}, column {shown(col)}: empty cell")
    try:
        v = float(text)
    except ValueError:
        raise DataError(f"row {row}, column {shown(col)}: {shown(cell)} is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"row {row}, column {shown(col)}: {shown(cell)} is not a finite number")
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
    groups: str | None = None,
) -> tuple:
    """Read a CSV with a header row. Every column but ``target`` (and ``groups``) must be
    numeric; the target may hold class labels. ``target=None`` takes the last column. A
    path is read as bytes and decoded by :func:`decode_csv` (``encoding``). Returns
    ``(X, y, feature_names, task)``, and the :func:`group_ids` of the ``groups`` column
    (left out of ``X``) as a fifth item when ``groups`` is given."""
    if isinstance(f, str):
        text = decode_csv(_read_bytes(f), f, encoding)
        return read_csv(io.StringIO(text, newline=""), target, task, groups=groups)
    header, reader = _csv_header(f)
    target = header[-1] if target is None else target
    if target not in header:
        raise DataError(f"no column {shown(target)} in the CSV; columns are {shown(header, 80)}")
    t = header.index(target)
    g = _groups_column(header, groups, t)
    feats = [h for i, h in enumerate(header) if i not in (t, g)]
    rows, ys, gs = [], [], []
    try:
        for lineno, rec in enumerate(reader, start=2):
            if not rec or all(c.strip() == "" for c in rec):
                continue
            if len(rec) != len(header):
                raise DataError(f"row {lineno}: {len(rec)} cells, the header has {len(header)}")
            rows.append(
                [_number(c, lineno, header[i]) for i, c in enumerate(rec) if i not in (t, g)]
            )
            ys.append((rec[t].strip(), lineno))
            if g is not None:
                gs.append((rec[g], lineno))
    except csv.Error as e:
        raise DataError(f"the CSV file cannot be parsed: {e}") from None
    if not rows:
        raise DataError("the CSV has a header but no data rows")
    y = _csv_target(ys, target, task)
    out = (np.array(rows, dtype=np.float64), y, feats, task or infer_task(y))
    if g is None:
        return out
    ids = group_ids([v for v, _ in gs], f"groups column {groups!r}", [ln for _, ln in gs])
    return (*out, ids)


def _csv_header(f: IO[str], min_columns: int = 2) -> tuple[list[str], Any]:
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the CSV file is empty") from None
    except csv.Error as e:
        raise DataError(f"the CSV file cannot be parsed: {e}") from None
    header = [h.strip() for h in header]
    if len(header) < min_columns:
        raise DataError(f"the CSV needs a header and at least {min_columns} columns, got "
                        f"{shown(header, 60)}")  # fmt: skip
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"duplicate column names in the header: {shown(dup, 60)}")
    return header, reader


def _groups_column(header: list[str], groups: str | None, t: int) -> int | None:
    if groups is None:
        return None
    others = [h for i, h in enumerate(header) if i != t]
    if groups not in others:
        raise DataError(
            f"groups must name a column of the CSV other than the target {header[t]!r}, "
            f"one of {others}, got {groups!r}"
        )
    return header.index(groups)


def group_ids(labels: Any, what: str, rows: Any = None) -> np.ndarray:
    """Group labels (numbers or text; ``"1"`` and ``"1.0"`` are one group) as integer
    ids ``0..G-1`` in the order of the sorted labels. A missing label (an empty cell,
    ``NA``, NaN: :data:`MISSING`) is refused, naming ``what`` and its row (``rows[i]``,
    default ``i``).

    >>> group_ids(["b", "a", " b", "c"], "groups").tolist()
    [1, 0, 1, 2]
    >>> group_ids(["2", "1.0", "1"], "groups").tolist()
    [1, 0, 0]
    >>> group_ids(["a", "NA"], "groups column 's'", [2, 3])
    Traceback (most recent call last):
    ...
    torchpenalty.data.DataError: groups column 's' must have a label in every row, got 'NA' (reads as missing) in row 3
    """
    arr = np.asarray(labels)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8", errors="replace")
    if arr.dtype.kind == "U":
        arr = np.char.strip(arr)
        if all(_is_number(v) for v in arr.tolist()) and not np.isin(arr, list(MISSING)).any():
            arr = arr.astype(np.float64)
    if arr.dtype.kind not in "biufU":
        raise DataError(f"{what} must hold numbers or text labels, got dtype {arr.dtype}")
    missing = np.isin(arr, list(MISSING)) if arr.dtype.kind == "U" else np.zeros(arr.shape, bool)
    if arr.dtype.kind == "f":
        missing = np.isnan(arr)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        v = arr[i].item()
        got = "an empty cell" if v == "" else f"{v!r} (reads as missing)"
        row = i if rows is None else rows[i]
        raise DataError(f"{what} must have a label in every row, got {got} in row {row}")
    return np.unique(arr, return_inverse=True)[1].reshape(-1).astype(np.int64)


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


def _npz_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, loaded with ``allow_pickle=False``; one line for a file
    that is not one (a .npy, not a ZIP, a corrupt member, object arrays)."""
    head = _read_bytes(path)[:4]
    if head != b"PK\x03\x04":
        what = "a .npy array" if head == b"\x93NUM" else "not a ZIP archive"
        raise DataError(f"{path} is not a readable .npz file ({what}); save it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" not in str(e):
            raise DataError(f"{path} is not a readable .npz file (a corrupt array)") from None
        raise DataError(
            f"{path} cannot be read without unpickling objects (refused: no code runs "
            "from a data file); save numeric or text arrays"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or 'a corrupt archive'}") from None
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__})") from None


def _npz_features(X: np.ndarray) -> np.ndarray:
    """The array ``X`` of an ``.npz``: 2-D, real numbers, finite; as float64."""
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
    return X


def read_npz(
    path: str, target: str | None, task: str | None = None, *, groups: str | None = None
) -> tuple:
    """Read an ``.npz`` with arrays ``X`` (rows, features) and ``y`` (or ``target``).
    Loaded with ``allow_pickle=False``: no code runs from the file. With ``groups``, the
    :func:`group_ids` of that array come as a fifth item."""
    arrays = _npz_arrays(path)
    key = target or "y"
    if "X" not in arrays or key not in arrays:
        raise DataError(f"the .npz must hold arrays 'X' and {key!r}; it holds {sorted(arrays)}")
    X = _npz_features(arrays["X"])
    y = _npz_target(arrays[key], key, len(X), task)
    names = [f"x{i}" for i in range(X.shape[1])]
    out = (X, y, names, task or infer_task(y))
    if groups is None:
        return out
    others = sorted(k for k in arrays if k not in ("X", key))
    if groups not in others:
        raise DataError(
            f"groups must name an array of the .npz other than 'X' and {key!r}, one of "
            f"{others}, got {groups!r}"
        )
    g = arrays[groups]
    if g.shape != (len(X),):
        raise DataError(
            f"groups array {groups!r} must hold one label per row of X ({len(X)}), "
            f"got shape {g.shape}"
        )
    return (*out, group_ids(g, f"groups array {groups!r}"))


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
            f"column {shown(names[j])}: values as large as {big:.3g} overflow its variance in "
            f"float64; rescale the column (divide it by {_power(big):.0e}, say)"
        )
    if task != "regression" or y.dtype.kind not in "biuf":
        return
    yf = y.astype(np.float64).reshape(len(y), -1)
    with np.errstate(over="ignore", invalid="ignore"):
        ystd = yf.std(axis=0)
    lo, hi = TARGET_STD_RANGE
    for s in ystd:
        if s == 0 or lo <= s <= hi:
            continue
        if np.isfinite(s):
            spread, scale = f"standard deviation {s:.3g} is outside [{lo:g}, {hi:g}]", _power(s)
        else:
            big = float(np.abs(yf).max())
            spread, scale = f"values up to {big:.3g} overflow its variance", _power(big)
        raise DataError(
            f"the target column {shown(target)}: {spread} (its losses would overflow or vanish "
            f"in float32); divide it by {scale:.0e}, say"
        )


def _power(v: float) -> float:
    """The power of ten at or below ``v``."""
    return 10.0 ** math.floor(math.log10(v))


def read_features(path: str, names: list[str]) -> np.ndarray:
    r"""New rows for a trained model, as float64: the columns ``names`` of a CSV (``.csv``,
    ``.csv.gz``; other columns, such as the target, are ignored) or the array ``X`` of an
    ``.npz`` (``names`` gives its width), checked as :func:`load` checks training data:
    every problem raises :class:`DataError` with one line (row and column for a cell).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "new.csv")
    >>> _ = open(path, "w").write("b,a\n2,1\n4,3\n")
    >>> read_features(path, ["a", "b"]).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    lower = str(path).lower()
    if lower.endswith(".npz"):
        arrays = _npz_arrays(path)
        if "X" not in arrays:
            raise DataError(
                f"the .npz must hold an array 'X'; it holds {shown(sorted(arrays), 60)}"
            )
        X = _npz_features(arrays["X"])
        if X.shape[1] != len(names):
            raise DataError(f"X must have {len(names)} columns (the training features), "
                            f"got shape {X.shape}")  # fmt: skip
        return X
    if not lower.endswith((".csv", ".csv.gz")):
        raise DataError(
            f"the data file must end in .csv or .npz (or .csv.gz), got {shown(path, 60)}"
        )
    text = decode_csv(_read_bytes(path), path)
    header, reader = _csv_header(io.StringIO(text, newline=""), min_columns=1)
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(
            f"missing feature columns {shown(missing, 80)} ({len(missing)} of {len(names)})"
        )
    cols = [header.index(n) for n in names]
    rows = []
    try:
        for lineno, rec in enumerate(reader, start=2):
            if not rec or all(c.strip() == "" for c in rec):
                continue
            if len(rec) != len(header):
                raise DataError(f"row {lineno}: {len(rec)} cells, the header has {len(header)}")
            rows.append([_number(rec[c], lineno, header[c]) for c in cols])
    except csv.Error as e:
        raise DataError(f"the CSV file cannot be parsed: {e}") from None
    if not rows:
        raise DataError("the CSV has a header but no data rows")
    return np.array(rows, dtype=np.float64)


def load(
    path: str | None = None,
    *,
    target: str | None = None,
    task: str | None = None,
    dataset: str = "diabetes",
    encoding: str | None = None,
    groups: str | None = None,
) -> Dataset:
    """Load ``path`` (``.csv``, gzip-compressed ``.csv.gz`` or ``.npz``), or the bundled
    ``dataset`` when ``path`` is None (scikit-learn ships these files: no download).
    ``encoding`` is the CSV's text encoding (default: UTF-8, see :func:`decode_csv`).
    ``groups`` names a CSV column (left out of the features) or an NPZ array of group
    labels, numbers or text, kept as integer ids in ``Dataset.groups`` (see
    :func:`group_ids`; a missing label is refused). Every problem raises
    :class:`DataError` with a one-line message."""
    if task not in (None, "regression", "classification"):
        raise DataError(f"task must be 'regression' or 'classification', got {task!r}")
    if path is None:
        if dataset not in BUNDLED:
            raise DataError(f"dataset must be one of {sorted(BUNDLED)}, got {dataset!r}")
        from sklearn import datasets

        if groups is not None:
            raise DataError(f"groups applies to a data file, got groups={groups!r} without one")
        bunch = getattr(datasets, f"load_{dataset}")()
        X, y = bunch.data.astype(np.float64), bunch.target
        names = [str(n) for n in bunch.feature_names]
        return Dataset(X, y, names, task or BUNDLED[dataset], f"sklearn:{dataset}", "target")
    lower = str(path).lower()
    name = target or "y"
    if lower.endswith((".csv", ".csv.gz")):
        text = decode_csv(_read_bytes(path), path, encoding)
        name = target or _csv_header(io.StringIO(text, newline=""))[0][-1]
        f = io.StringIO(text, newline="")
        X, y, names, inferred, *ids = read_csv(f, target, task, groups=groups)
    elif lower.endswith(".npz"):
        X, y, names, inferred, *ids = read_npz(path, target, task, groups=groups)
    else:
        raise DataError(f"the data file must end in .csv or .npz (or .csv.gz), got {path!r}")
    if X.shape[1] == 0:
        raise DataError("no feature columns besides the target")
    if inferred == "regression" and y.dtype.kind not in "biuf":
        raise DataError(f"task 'regression' needs a numeric target, got labels like {y[0]!r}")
    check_scale(X, y, names, name, inferred)
    return Dataset(X, y, names, inferred, path, name, ids[0] if ids else None)
