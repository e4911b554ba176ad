"""Data files and values: every bad input gets one DataError line (and, through the
command line, one line on stderr and exit 2); files decoded on purpose read right.
Fuzzed with hypothesis over raw CSV bytes."""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from torchpenalty import cli
from torchpenalty import data as data_mod
from torchpenalty.data import DataError

CSV = "a,b,y\n" + "".join(f"{i},{(i * 7) % 5},{i * 0.5 + (i % 3)}\n" for i in range(12))
LABELS = "a,b,y\n" + "".join(f"{i},{i % 4},{'cat' if i % 2 else 'dog'}\n" for i in range(12))
RNG = np.random.default_rng(0)
X12 = RNG.normal(size=(12, 2))


def _csv_bytes(raw: bytes):
    return lambda p: p.write_bytes(raw)


def _npz(**arrays):
    return lambda p: np.savez(p, **arrays)


def _npy(p):
    with open(p, "wb") as fh:
        np.save(fh, X12)


def _mkdir(p):
    p.mkdir()


def _big_feature(p):
    X = X12.copy()
    X[:, 1] *= 1e155
    np.savez(p, X=X, y=np.arange(12.0))


# (id, file name, how to write it, load() keyword arguments, expected message (regex))
BAD = [
    ("latin-1", "d.csv", _csv_bytes("café,b,y\n1,2,3\n".encode("latin-1")), {},
     r"d.csv is not UTF-8 text: byte 0xe9 at line 1, column 4 cannot be decoded; save it as UTF-8"),
    ("latin-1 in a label", "d.csv", _csv_bytes("a,y\n1,Zürich\n".encode("latin-1")), {},
     r"byte 0xfc at line 2, column 4"),
    ("utf-16 without BOM", "d.csv", _csv_bytes(CSV.encode("utf-16-le")), {},
     r"not a CSV text file: a NUL byte at offset 1 \(binary, or UTF-16 without a byte-order mark\)"),
    ("binary", "d.csv", _csv_bytes(bytes(range(256))), {}, r"not a CSV text file: a NUL byte at offset 0"),
    ("png", "d.csv", _csv_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40)), {}, r"a NUL byte at offset 8"),
    ("zip/xlsx", "d.csv", _csv_bytes(b"PK\x03\x04" + bytes(30)), {}, r"is a ZIP archive \(an Excel workbook\?\)"),
    ("broken gzip", "d.csv", _csv_bytes(b"\x1f\x8b\x08\x00garbage"), {}, r"gzip-compressed but cannot be decompressed"),
    ("gzip of binary", "d.csv.gz", _csv_bytes(gzip.compress(bytes(range(256)))), {}, r"a NUL byte at offset 0"),
    ("bad utf-8 after BOM", "d.csv", _csv_bytes(codecs.BOM_UTF8 + b"a,y\n\xff,1\n"), {}, r"is not UTF-8 text: byte 0xff at line 2, column 1"),
    ("odd utf-16", "d.csv", _csv_bytes(codecs.BOM_UTF16_LE + b"a\x00,"), {}, r"is not UTF-16 text"),
    ("unknown encoding", "d.csv", _csv_bytes(b"a,y\n1,2\n"), {"encoding": "klingon"}, r"unknown encoding 'klingon'"),
    ("directory csv", "d.csv", _mkdir, {}, r"d.csv is a directory, not a data file"),
    ("directory npz", "d.npz", _mkdir, {}, r"d.npz is a directory, not a data file"),
    ("missing npz", "nothere.npz", None, {}, r"no such file: .*nothere.npz"),
    ("npz not a zip", "d.npz", _csv_bytes(b"hello"), {}, r"d.npz is not a readable .npz file \(not a ZIP archive\); save it with np.savez"),
    ("npy named npz", "d.npz", _npy, {}, r"\(a .npy array\)"),
    ("npz of objects", "d.npz", _npz(X=np.array([{"a": 1}] * 12, dtype=object), y=np.arange(12.0)), {},
     r"cannot be read without unpickling objects \(refused: no code runs from a data file\)"),
    ("y 0-d", "d.npz", _npz(X=X12, y=np.array(1.0)), {}, r"'y' must be 1-D \(n,\) or 2-D \(n, outputs\), got shape \(\)"),
    ("y 3-D", "d.npz", _npz(X=X12, y=np.ones((12, 2, 2))), {}, r"got shape \(12, 2, 2\)"),
    ("y 2-D integer", "d.npz", _npz(X=X12, y=np.eye(3, dtype=int)[np.arange(12) % 3]), {},
     r"'y' is 2-D int64 \(shape \(12, 3\)\): class labels must be 1-D \(one-hot\? store y.argmax\(1\)\)"),
    ("y 2-D float as classes", "d.npz", _npz(X=X12, y=np.ones((12, 2))), {"task": "classification"},
     r"class labels 'y' must be 1-D, got shape \(12, 2\)"),
    ("y complex", "d.npz", _npz(X=X12, y=np.arange(12) + 1j), {}, r"'y' must hold real numbers or labels, got dtype complex128"),
    ("y datetime", "d.npz", _npz(X=X12, y=np.arange(12).astype("datetime64[D]")), {}, r"must hold numbers or text labels, got dtype datetime64"),
    ("y wrong length", "d.npz", _npz(X=X12, y=np.arange(11.0)), {}, r"'y' has 11 rows but X has 12"),
    ("y NaN label", "d.npz", _npz(X=X12, y=np.where(np.arange(12) == 5, np.nan, np.arange(12) % 2)), {}, r"row 5 of 'y': nan is not a finite number"),
    ("y 'nan' text label", "d.npz", _npz(X=X12, y=np.array(["a", "b", "nan"] * 4)), {}, r"row 2 of 'y': 'nan' reads as a missing label"),
    ("y non-utf8 bytes", "d.npz", _npz(X=X12, y=np.array([b"\xff", b"a"] * 6)), {}, r"'y' holds bytes labels that are not UTF-8 text"),
    ("X complex", "d.npz", _npz(X=X12 + 1j, y=np.arange(12.0)), {}, r"X must hold real numbers, got complex values \(dtype complex128\)"),
    ("X text", "d.npz", _npz(X=X12.astype(str), y=np.arange(12.0)), {}, r"X must be numeric, got dtype <U"),
    ("X huge (variance overflows)", "d.npz", _big_feature, {},
     r"column 'x1': values as large as .*e\+155 overflow its variance in float64; rescale the column \(divide it by 1e\+155, say\)"),
    ("CSV feature 1e154", "d.csv", _csv_bytes(b"a,b,y\n1,2e154,1\n2,-2e154,2\n3,1,2.5\n"), {},
     r"column 'b': values as large as 2e\+154 overflow its variance"),
    ("target near 1e300", "d.csv", _csv_bytes(("a,y\n" + "".join(f"{i},{(i % 7) * 1.3e299}\n" for i in range(12))).encode()), {},
     r"the target column 'y': values up to 7.8e\+299 overflow its variance"),
    ("target 1e20", "d.npz", _npz(X=X12, y=np.arange(12.0) * 1e20), {},
     r"the target column 'y': standard deviation 3.45e\+20 is outside \[1e-15, 1e\+15\]"),
    ("target 1e-20", "d.npz", _npz(X=X12, y=np.arange(12.0) * 1e-20), {},
     r"standard deviation 3.45e-20 is outside \[1e-15, 1e\+15\]"),
    ("integer target 1e300 not classes", "d.npz", _npz(X=X12, y=np.array([0.0, 1e300] * 6)), {}, r"the target column 'y'"),
    ("CSV NaN label", "d.csv", _csv_bytes(b"a,y\n1,cat\n2,NaN\n3,dog\n"), {}, r"row 3, column 'y': 'NaN' reads as a missing label"),
    ("CSV NA label", "d.csv", _csv_bytes(b"a,y\n1,cat\n2,NA\n3,dog\n"), {}, r"row 3, column 'y': 'NA' reads as a missing label"),
    ("CSV nan numeric label", "d.csv", _csv_bytes(b"a,y\n1,0\n2,nan\n3,1\n"), {"task": "classification"}, r"row 3, column 'y': 'nan' reads as a missing label"),
    ("CSV inf numeric label", "d.csv", _csv_bytes(b"a,y\n1,0\n2,inf\n3,1\n"), {"task": "classification"}, r"row 3, column 'y': 'inf' is not a finite number"),
    ("CSV complex X", "d.csv", _csv_bytes(b"a,y\n1+2j,0\n2,1\n"), {}, r"row 2, column 'a': '1\+2j' is not a number"),
    ("CSV with NUL in UTF-8", "d.csv", _csv_bytes(b"a,y\n1,\x002\n"), {}, r"a NUL byte at offset 6"),
    ("wrong extension", "d.xlsx", _csv_bytes(b"a,y\n1,2\n"), {}, r"must end in .csv or .npz \(or .csv.gz\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "writer", "kwargs", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_input_is_one_data_error_line(tmp_path, name, writer, kwargs, match):
    path = tmp_path / name
    if writer is not None:
        writer(path)
    with pytest.raises(DataError) as info:
        data_mod.load(str(path), **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and re.search(match, msg), msg


CLI_BAD = [b for b in BAD if "encoding" not in b[3]]


@pytest.mark.parametrize(
    ("name", "writer", "kwargs", "match"), [b[1:] for b in CLI_BAD], ids=[b[0] for b in CLI_BAD]
)
def test_bad_input_through_the_cli_is_one_line_and_exit_2(
    tmp_path, capsys, name, writer, kwargs, match
):
    path = tmp_path / name
    if writer is not None:
        writer(path)
    args = ["sweep", "--data", str(path), "--out", str(tmp_path / "run"), "--quiet"]
    if "task" in kwargs:
        args += ["--task", kwargs["task"]]
    code = cli.main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(match, lines[0]), lines[0]


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    path.write_text(CSV)
    if os.geteuid() == 0:  # root reads a mode-000 file: make the open fail as it would
        import builtins

        real_open = builtins.open

        def deny(file, *a, **k):
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *a, **k)

        monkeypatch.setattr(builtins, "open", deny)
    else:
        path.chmod(0)
    with pytest.raises(DataError, match=r"^cannot read .*d.csv: Permission denied$"):
        data_mod.load(str(path))


def _same_as_plain(ds):
    plain = data_mod.read_csv(__import__("io").StringIO(CSV), None)
    np.testing.assert_array_equal(ds.X, plain[0])
    np.testing.assert_array_equal(ds.y, plain[1])
    assert ds.feature_names == ["a", "b"] and ds.task == "regression"


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("utf-8 BOM", codecs.BOM_UTF8 + CSV.encode()),
        ("utf-16 LE BOM", CSV.encode("utf-16")),
        ("utf-16 BE BOM", codecs.BOM_UTF16_BE + CSV.encode("utf-16-be")),
        ("utf-32 BOM", CSV.encode("utf-32")),
        ("gzip", gzip.compress(CSV.encode())),
        ("gzip + BOM", gzip.compress(codecs.BOM_UTF8 + CSV.encode())),
        ("CRLF", CSV.replace("\n", "\r\n").encode()),
    ],
)
def test_encodings_decoded_on_purpose(tmp_path, name, raw):
    path = tmp_path / "d.csv"
    path.write_bytes(raw)
    _same_as_plain(data_mod.load(str(path)))


def test_csv_gz_extension_and_explicit_encoding(tmp_path):
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(CSV.encode()))
    _same_as_plain(data_mod.load(str(tmp_path / "d.csv.gz")))
    text = "café,b,y\n" + CSV.split("\n", 1)[1]
    (tmp_path / "l.csv").write_bytes(text.encode("latin-1"))
    ds = data_mod.load(str(tmp_path / "l.csv"), encoding="latin-1")
    assert ds.feature_names == ["café", "b"]


def test_bytes_labels_become_str_and_serialize(tmp_path):
    y = np.array([b"cat", b"dog", "caf\u00e9".encode()] * 4)
    np.savez(tmp_path / "d.npz", X=X12, y=y)
    ds = data_mod.load(str(tmp_path / "d.npz"))
    assert ds.y.dtype.kind == "U" and ds.task == "classification"
    assert sorted(set(ds.y.tolist())) == ["caf\u00e9", "cat", "dog"]
    json.dumps(np.unique(ds.y).tolist())  # the report writes the classes


def test_targets_that_are_accepted(tmp_path):
    np.savez(tmp_path / "col.npz", X=X12, y=np.arange(12.0)[:, None] ** 1.5)
    ds = data_mod.load(str(tmp_path / "col.npz"))  # (n, 1) is one target
    assert ds.y.shape == (12,) and ds.task == "regression"
    Y = RNG.normal(size=(12, 2))
    np.savez(tmp_path / "multi.npz", X=X12, y=Y)
    ds = data_mod.load(str(tmp_path / "multi.npz"))
    assert ds.y.shape == (12, 2) and ds.task == "regression"
    np.savez(tmp_path / "int2.npz", X=X12, y=(Y * 10).astype(int))
    ds = data_mod.load(str(tmp_path / "int2.npz"), task="regression")  # on purpose
    assert ds.y.dtype == np.float64 and ds.y.shape == (12, 2)
    # large but representable: a target in the millions, features near 1e150
    X = X12 * np.array([1.0, 1e150])
    np.savez(tmp_path / "big.npz", X=X, y=RNG.normal(size=12) * 1e9)
    ds = data_mod.load(str(tmp_path / "big.npz"))
    assert np.isfinite(ds.X.std(0)).all()
    # numeric class labels given as non-integers stay numbers when the task says so
    raw = b"a,y\n1,0.5\n2,1.5\n3,0.5\n4,1.5\n"
    (tmp_path / "f.csv").write_bytes(raw)
    ds = data_mod.load(str(tmp_path / "f.csv"), task="classification")
    assert ds.y.tolist() == [0.5, 1.5, 0.5, 1.5] and ds.task == "classification"


def test_infer_task_does_not_take_huge_integers_for_classes():
    assert data_mod.infer_task(np.array([0.0, 1e300, 0.0])) == "regression"
    assert data_mod.infer_task(np.array([0, 3, 2**31])) == "classification"
    assert data_mod.infer_task(np.ones((4, 2), dtype=int)) == "regression"


# ---------------------------------------------------------------------------- fuzzing
TEMPLATES = [
    CSV.encode(),
    LABELS.encode(),
    codecs.BOM_UTF8 + CSV.encode(),
    CSV.encode("utf-16"),
    gzip.compress(CSV.encode()),
]


@st.composite
def mangled(draw):
    """A valid CSV's bytes with random bytes overwritten, inserted or cut, or pure noise."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    raw = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["set", "insert", "cut"]))
        b = draw(st.binary(min_size=1, max_size=4))
        if op == "set":
            raw[i : i + len(b)] = b
        elif op == "insert":
            raw[i:i] = b
        else:
            del raw[i : i + len(b)]
    return bytes(raw)


FUZZ = {"tried": 0, "clean": 0}


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=mangled(),
    ext=st.sampled_from([".csv", ".csv.gz"]),
    task=st.sampled_from([None, "classification"]),
)
def test_fuzzed_csv_bytes_never_crash_the_loader(tmp_path, raw, ext, task):
    path = tmp_path / f"f{ext}"
    path.write_bytes(raw)
    FUZZ["tried"] += 1
    try:
        ds = data_mod.load(str(path), task=task)
    except DataError as e:
        assert "\n" not in str(e).strip()
        FUZZ["clean"] += 1
        return
    assert ds.X.ndim == 2 and len(ds.X) == len(ds.y) and np.isfinite(ds.X).all()
    assert np.isfinite(ds.X.std(0)).all()
    assert ds.task in ("regression", "classification")
    if ds.task == "regression":
        assert np.isfinite(ds.y.astype(float)).all()


@pytest.mark.parametrize(
    ("column", "scale", "match"),
    [
        (1, 1e155, r"column 1: values as large as .*e\+155 overflow its variance in float64"),
        (
            "y",
            1e300,
            r"^y must have a standard deviation in \[1e-15, 1e\+15\] .*got an overflow \(values up to .*e\+300\)",
        ),
    ],
)
def test_the_python_api_refuses_columns_whose_variance_overflows(column, scale, match):
    import torch

    import torchpenalty as tp

    X = RNG.normal(size=(30, 2))
    y = X[:, 0].copy()
    if column == "y":
        y *= scale
    else:
        X[:, column] *= scale
    with pytest.raises(ValueError, match=match):
        tp.sweep(
            lambda: torch.nn.Linear(2, 1),
            (X, y),
            strengths=[1e-3],
            folds=2,
            epochs=1,
            progress=False,
        )


DTYPES = ["f8", "f4", "f2", "i8", "u1", "?", "c16", "U3", "S3", "M8[D]"]


@st.composite
def npz_arrays(draw):
    """X and y of random dtypes and shapes (some right, most wrong), values included."""
    from hypothesis.extra import numpy as hnp

    n = draw(st.integers(1, 12))

    def array(shapes):
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = draw(st.sampled_from(shapes))
        return draw(hnp.arrays(dtype, shape))

    X = array([(n, 2), (n, 1), (n,), (n, 0), (n, 2, 2), ()])
    y = array([(n,), (n, 1), (n, 2), (n + 1,), (), (n, 2, 1)])
    return X, y


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(arrays=npz_arrays(), task=st.sampled_from([None, "regression", "classification"]))
def test_fuzzed_npz_arrays_never_crash_the_loader(tmp_path, arrays, task):
    X, y = arrays
    path = tmp_path / "f.npz"
    np.savez(path, X=X, y=y)
    try:
        ds = data_mod.load(str(path), task=task)
    except DataError as e:
        assert "\n" not in str(e).strip()
        event("one-line DataError")
        return
    event(f"loaded ({ds.task})")
    assert ds.X.dtype == np.float64 and ds.X.ndim == 2 and len(ds.X) == len(ds.y)
    assert np.isfinite(ds.X).all() and np.isfinite(ds.X.std(0)).all()
    assert ds.y.dtype.kind in "biufU" and ds.y.ndim in (1, 2)
    if ds.task == "classification":
        assert ds.y.ndim == 1
        json.dumps(np.unique(ds.y).tolist())  # the report can write the classes
    else:
        assert np.isfinite(ds.y.astype(np.float64)).all()
