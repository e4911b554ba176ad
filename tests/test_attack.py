"""An attack on every entry point, written from the README and the user guide.

Every case feeds one entry point (library: ``tp.sweep``, ``SweepResult.predict``,
``tp.load_sweep``, ``tp.Regularizer``, the penalties, ``tp.Evidence``,
``torchpenalty.data.load``; command line: ``sweep``, ``predict``, ``explain`` and their
flags) one input and says what a user must get: a correct result (``ok``) or one clean
error (``err``). Handled means:

- library: the result passes the case's check, or the call raises ``ValueError`` /
  ``TypeError`` / ``OSError`` (and subclasses) whose message is one line under 200
  characters that never suggests ``weights_only=False``;
- command line: exit status 0 and the case's check for ``ok``; for ``err`` exit status 2
  and stderr of short lines (< 200 characters), no traceback; ``any`` takes either.

Open-ended inputs (file bytes, argument strings) come from hypothesis. With
``TP_ATTACK_TALLY=1`` set, pytest prints tried / handled per entry point at exit.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchpenalty as tp
from torchpenalty import cli
from torchpenalty.report import ReportError

#: What a library call may raise for bad input (``tp.load_sweep`` documents ReportError).
CLEAN = (ValueError, TypeError, OSError, ReportError)
TALLY: dict[str, list[int]] = {}


def _count(entry: str, handled: bool) -> None:
    t = TALLY.setdefault(entry, [0, 0])
    t[0] += 1
    t[1] += int(handled)


def _short(text: str) -> bool:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (
        bool(lines)
        and all(len(ln) < 200 for ln in lines)
        and "Traceback" not in text
        and "weights_only=False" not in text
    )


def lib_outcome(fn, expect, check=None) -> tuple[bool, str]:
    """Run ``fn``; say whether it was handled as ``expect`` wants, and why not."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            out = fn()
    except CLEAN as e:
        msg = str(e)
        if expect == "ok":  # "any": a correct result or one clean error
            return False, f"raised {type(e).__name__}: {msg[:300]}"
        one = "\n" not in msg.strip() and 0 < len(msg) < 200 and "weights_only=False" not in msg
        return one, f"{type(e).__name__}: {msg[:300]}"
    except Exception as e:
        return False, f"unclean {type(e).__name__}: {str(e)[:300]}"
    if expect == "err":
        return False, f"accepted, returned {type(out).__name__}"
    if check is not None:
        why = check(out)
        if why:
            return False, why
    return True, "ok"


def cli_outcome(argv, expect, check=None, cwd=None) -> tuple[bool, str]:
    """Run ``torchpenalty ARGV`` in this process; judge its exit status and stderr."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main([str(a) for a in argv])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 2
            except Exception as e:
                return False, f"unclean {type(e).__name__}: {str(e)[:300]}"
    finally:
        os.chdir(old)
    text = err.getvalue()
    if expect == "err" or (expect == "any" and rc != 0):
        ok = rc == 2 and _short(text)
        return ok, f"rc={rc} stderr={text[-400:]!r}"
    if rc != 0:
        return False, f"rc={rc} stderr={text[-400:]!r}"
    if check is not None:
        why = check(out.getvalue(), text)
        if why:
            return False, why
    return True, "ok"


# ---------------------------------------------------------------- fixtures


def _rows(n=40, seed=0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, 3))
    y = X @ np.array([1.0, 2.0, 3.0]) + 0.1 * r.normal(size=n)
    return X, y


def _csv(path, X, y, names=("a", "b", "c", "y")):
    lines = [",".join(names)] + [",".join(repr(float(v)) for v in [*x, t]) for x, t in zip(X, y)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


QUICK = ["--epochs", "1", "--strengths", "1e-3,1e-1", "--folds", "2", "--quiet"]


@pytest.fixture(scope="module")
def world():
    """A folder with good data files and one finished run (read-only for the cases)."""
    root = tempfile.mkdtemp(prefix="tp-attack-")
    X, y = _rows()
    _csv(os.path.join(root, "d.csv"), X, y)
    np.savez(os.path.join(root, "d.npz"), X=X, y=y)
    rc = cli.main(
        ["sweep", "--data", os.path.join(root, "d.csv"), *QUICK, "--out", os.path.join(root, "run")]
    )
    assert rc == 0
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _copy_run(world, tmp):
    dst = os.path.join(tmp, "run")
    shutil.copytree(os.path.join(world, "run"), dst)
    return dst


# ---------------------------------------------------------------- library cases


def _model():
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))


def _sweep(X=None, y=None, **kw):
    if X is None:
        X, y = _rows()
    kw = {"strengths": [1e-3, 1e-1], "folds": 2, "epochs": 1, **kw}
    return tp.sweep(_model, (X, y), **kw)


def _X():
    return _rows()[0]


def _y():
    return _rows()[1]


def _with(a, i, v):
    a = np.array(a, dtype=float)
    a.flat[i] = v
    return a


class _Bad(tp.Penalty):
    """A user penalty whose term returns what ``mode`` says (registered once)."""

    name = "attack_bad"

    def __init__(self, strength, *, what="ok"):
        super().__init__(strength)
        self.what = what

    def term(self, w):
        what = self.what
        if what == "detached":
            return (w.detach() ** 2).sum()
        if what == "integer":
            return torch.tensor(3)
        if what == "complex":
            return (w**2).sum() * (1 + 1j)
        if what == "vector":
            return w**2
        if what == "float":
            return 1.5
        if what == "nan":
            return (w**2).sum() * float("nan")
        return (w**2).sum()


def _user_penalty(what, mode):
    def run():
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        reg = tp.Regularizer(model, _Bad(0.1, what=what))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if mode == "loss":
            loss = model(torch.randn(4, 3)).sum() + reg()
            loss.backward()
        else:
            reg.attach(opt, mode=mode)
            model(torch.randn(4, 3)).sum().backward()
        opt.step()
        return model

    return run


def _zero_size(pen):
    def run():
        model = nn.Linear(0, 4)
        return tp.Regularizer(model, pen, include="*").value()

    return run


def _evidence_update(data):
    def run():
        from torchpenalty.evidence import per_layer

        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        reg = per_layer(model, 1e-3)
        ev = tp.Evidence(reg, loss="mse", n_data=40)
        return ev.update(data() if callable(data) else data)

    return run


def _diverged_check(r):
    if not r.warnings or not any("diverg" in w for w in r.warnings):
        return "no divergence warning"
    return None


def _all_diverged(**kw):
    X, y = _rows()
    return lambda: _sweep(X, y, lr=1e12, optimizer="sgd", **kw)


def _stats_str():
    model = _model()
    reg = tp.Regularizer(model, tp.L2(1e-2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    h = reg.attach(opt, mode="decoupled")
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return str(reg.stats(h))


def _classifier():
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3))


def _text_labels():
    X, _ = _rows(60)
    y = np.array(["setosa", "versicolor", "virginica"] * 20, dtype=object)
    return tp.sweep(_classifier, (X, y), strengths=[1e-3], folds=2, epochs=1)


def _fit_evidence_classifier():
    X, _ = _rows(60)
    y = np.array([0, 1, 2] * 20)
    return tp.fit_evidence(_classifier, (X, y), epochs=2)


def _predict_of(X_new):
    def run():
        r = _sweep()
        return r.predict(X_new() if callable(X_new) else X_new)

    return run


LIB = [
    # tp.sweep: arguments
    ("sweep", "factory not callable", lambda: tp.sweep(3, (_X(), _y())), "err", None),
    ("sweep", "data not a pair", lambda: tp.sweep(_model, _X()), "err", None),
    ("sweep", "rows mismatch", lambda: _sweep(_X(), _y()[:-3]), "err", None),
    ("sweep", "X NaN", lambda: _sweep(_with(_X(), 4, np.nan), _y()), "err", None),
    ("sweep", "X inf", lambda: _sweep(_with(_X(), 4, np.inf), _y()), "err", None),
    ("sweep", "y NaN", lambda: _sweep(_X(), _with(_y(), 2, np.nan)), "err", None),
    ("sweep", "y inf", lambda: _sweep(_X(), _with(_y(), 2, np.inf)), "err", None),
    ("sweep", "y * 1e20", lambda: _sweep(_X(), _y() * 1e20), "err", None),
    ("sweep", "y * 1e-25", lambda: _sweep(_X(), _y() * 1e-25), "err", None),
    ("sweep", "X > float32 max", lambda: _sweep(_X() * 1e300, _y()), "err", None),
    ("sweep", "strengths empty", lambda: _sweep(strengths=[]), "err", None),
    ("sweep", "strength negative", lambda: _sweep(strengths=[-1.0, 1.0]), "err", None),
    ("sweep", "strength NaN", lambda: _sweep(strengths=[float("nan")]), "err", None),
    ("sweep", "strength text", lambda: _sweep(strengths=["a"]), "err", None),
    ("sweep", "folds 1", lambda: _sweep(folds=1), "err", None),
    ("sweep", "folds > rows", lambda: _sweep(folds=100), "err", None),
    ("sweep", "epochs 0", lambda: _sweep(epochs=0), "err", None),
    ("sweep", "epochs float", lambda: _sweep(epochs=1.5), "err", None),
    ("sweep", "penalty unknown", lambda: _sweep(penalty="nonexistent"), "err", None),
    ("sweep", "loss unknown", lambda: _sweep(loss="bogus"), "err", None),
    ("sweep", "lr negative", lambda: _sweep(lr=-1.0), "err", None),
    ("sweep", "lr NaN", lambda: _sweep(lr=float("nan")), "err", None),
    ("sweep", "batch_size 0.5", lambda: _sweep(batch_size=0.5), "err", None),
    ("sweep", "device bogus", lambda: _sweep(device="quantum"), "err", None),
    ("sweep", "groups wrong length", lambda: _sweep(groups=np.arange(5)), "err", None),
    ("sweep", "test wrong width", lambda: _sweep(test=(np.ones((5, 4)), np.ones(5))), "err", None),
    (
        "sweep",
        "test NaN",
        lambda: _sweep(test=(_with(np.ones((5, 3)), 0, np.nan), np.ones(5))),
        "err",
        None,
    ),
    ("sweep", "X object (numbers)", lambda: _sweep(_X().astype(object), _y()), "any", None),
    ("sweep", "X empty", lambda: _sweep(np.zeros((0, 3)), np.zeros(0)), "err", None),
    ("sweep", "X strings", lambda: _sweep(np.full((40, 3), "a"), _y()), "err", None),
    ("sweep", "y 2 columns wrong rows", lambda: _sweep(_X(), np.ones((39, 2))), "err", None),
    ("sweep", "text labels (object)", _text_labels, "ok", None),
    ("sweep", "refit bogus", lambda: _sweep(refit="worst"), "err", None),
    ("sweep", "all diverged", _all_diverged(), "ok", _diverged_check),
    ("sweep", "all diverged + test", _all_diverged(test=_rows(10, 1)), "ok", _diverged_check),
    ("sweep", "float16 X", lambda: _sweep(_X().astype(np.float16), _y()), "ok", None),
    ("sweep", "max_memory_mb 0", lambda: _sweep(max_memory_mb=0), "err", None),
    # result.predict
    ("predict", "wrong width", _predict_of(np.ones((5, 4))), "err", None),
    ("predict", "NaN", _predict_of(_with(np.ones((5, 3)), 1, np.nan)), "err", None),
    ("predict", "1-D", _predict_of(np.ones(3)), "err", None),
    ("predict", "strings", _predict_of(np.full((5, 3), "x")), "err", None),
    ("predict", "list", _predict_of([[1.0, 2.0, 3.0]]), "ok", None),
    ("predict", "> float32 max", _predict_of(np.full((2, 3), 1e300)), "err", None),
    # penalties
    ("penalty", "L2(-1)", lambda: tp.L2(-1.0), "err", None),
    ("penalty", "L2(nan)", lambda: tp.L2(float("nan")), "err", None),
    ("penalty", "L2('a')", lambda: tp.L2("a"), "err", None),
    ("penalty", "L2(inf)", lambda: tp.L2(float("inf")), "err", None),
    ("penalty", "ElasticNet ratio 2", lambda: tp.ElasticNet(1.0, l1_ratio=2.0), "err", None),
    ("penalty", "BerHu delta 0", lambda: tp.BerHu(1.0, delta=0.0), "err", None),
    ("penalty", "MaxNorm -1", lambda: tp.MaxNorm(-1.0), "err", None),
    ("penalty", "MinMaxNorm 2,1", lambda: tp.MinMaxNorm(2.0, 1.0), "err", None),
    ("penalty", "GroupLasso zero-size", _zero_size(tp.GroupLasso(0.1)), "ok", None),
    ("penalty", "Orthogonal zero-size", _zero_size(tp.Orthogonal(0.1)), "ok", None),
    ("penalty", "get unknown", lambda: tp.get("nonexistent", 0.1), "err", None),
    (
        "penalty",
        "GroupLasso dim 5",
        lambda: tp.Regularizer(nn.Linear(3, 2), tp.GroupLasso(0.1, dim=5)).value(),
        "err",
        None,
    ),
    # user penalties
    *[
        ("user penalty", f"{what} in {mode}", _user_penalty(what, mode), "err", None)
        for what in ("detached", "integer", "complex", "vector", "float", "nan")
        for mode in ("loss", "grad", "decoupled")
    ],
    ("user penalty", "ok in grad", _user_penalty("ok", "grad"), "ok", None),
    # Regularizer
    ("Regularizer", "model not a module", lambda: tp.Regularizer("model", tp.L2(0.1)), "err", None),
    ("Regularizer", "penalty a number", lambda: tp.Regularizer(_model(), 0.1), "err", None),
    (
        "Regularizer",
        "include matches nothing",
        lambda: tp.Regularizer(_model(), tp.L2(0.1), include="zzz*"),
        "err",
        None,
    ),
    (
        "Regularizer",
        "mode bogus",
        lambda: tp.Regularizer(_model(), tp.L2(0.1)).attach(
            torch.optim.SGD(_model().parameters(), lr=0.1), mode="bogus"
        ),
        "err",
        None,
    ),
    (
        "Regularizer",
        "stats str multi-line",
        _stats_str,
        "ok",
        lambda s: (
            None
            if s.count("\n") >= 2 and max(map(len, s.splitlines())) < 200
            else "stats() not a readable table"
        ),
    ),
    # Evidence
    (
        "Evidence",
        "loss bogus",
        lambda: tp.Evidence(tp.Regularizer(_model(), tp.L2(0.1)), loss="bogus", n_data=10),
        "err",
        None,
    ),
    (
        "Evidence",
        "n_data 0",
        lambda: tp.Evidence(tp.Regularizer(_model(), tp.L2(0.1)), loss="mse", n_data=0),
        "err",
        None,
    ),
    ("Evidence", "update with a string", _evidence_update("data"), "err", None),
    (
        "Evidence",
        "update with wrong width",
        _evidence_update(lambda: (torch.randn(8, 5), torch.randn(8, 1))),
        "err",
        None,
    ),
    (
        "Evidence",
        "update with NaN",
        _evidence_update(lambda: (torch.full((8, 3), float("nan")), torch.randn(8, 1))),
        "err",
        None,
    ),
    (
        "Evidence",
        "update with rows mismatch",
        _evidence_update(lambda: (torch.randn(8, 3), torch.randn(7, 1))),
        "err",
        None,
    ),
    (
        "Evidence",
        "update with a triple",
        _evidence_update(lambda: (torch.randn(8, 3), torch.randn(8, 1), 3)),
        "err",
        None,
    ),
    (
        "Evidence",
        "update ok",
        _evidence_update(lambda: (torch.randn(8, 3), torch.randn(8, 1))),
        "ok",
        None,
    ),
    ("Evidence", "fit_evidence classifier, no loss", _fit_evidence_classifier, "ok", None),
]


def _lib_ids():
    return [f"{e}: {d}" for e, d, *_ in LIB]


@pytest.mark.parametrize("entry,desc,fn,expect,check", LIB, ids=_lib_ids())
def test_library(entry, desc, fn, expect, check):
    ok, why = lib_outcome(fn, expect, check)
    _count(entry, ok)
    assert ok, why


# ---------------------------------------------------------------- files for the CLI


def _write(path, data):
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)
    return path


def _file_cases(d):
    """(name, maker(dir) -> path) for bad --data files."""
    X, y = _rows()

    def csv_with(cell_row, cell_col, value):
        def make(d):
            rows = [["a", "b", "c", "y"]] + [
                [repr(float(v)) for v in [*x, t]] for x, t in zip(X, y)
            ]
            rows[cell_row][cell_col] = value
            return _write(os.path.join(d, "x.csv"), "\n".join(",".join(r) for r in rows) + "\n")

        return make

    def npz(**arrays):
        def make(d):
            p = os.path.join(d, "x.npz")
            np.savez(p, **arrays)
            return p

        return make

    def raw(name, data):
        return lambda d: _write(os.path.join(d, name), data)

    def csv_rows(Xv, yv, names=("a", "b", "c", "y")):
        return lambda d: _csv(os.path.join(d, "x.csv"), Xv, yv, names)

    corrupt_zip = io.BytesIO()
    with zipfile.ZipFile(corrupt_zip, "w") as z:
        z.writestr("X.npy", b"\x93NUMPY garbage")
    return [
        ("missing file", lambda d: os.path.join(d, "none.csv")),
        ("a folder", lambda d: d),
        ("empty csv", raw("x.csv", "")),
        ("header only", raw("x.csv", "a,b,c,y\n")),
        ("one row", raw("x.csv", "a,b,c,y\n1,2,3,4\n")),
        ("binary csv", raw("x.csv", bytes(range(256)) * 4)),
        ("wrong extension", raw("x.txt", "a,b,c,y\n1,2,3,4\n")),
        ("NaN cell", csv_with(3, 1, "nan")),
        ("inf cell", csv_with(3, 1, "inf")),
        ("empty cell", csv_with(3, 1, "")),
        ("text feature", csv_with(3, 1, "hello")),
        ("NaN label", csv_with(3, 3, "NaN")),
        ("ragged row", lambda d: _write(os.path.join(d, "x.csv"), "a,b,c,y\n1,2,3,4\n1,2\n" * 20)),
        ("very long field", csv_with(3, 1, "9" * 1_000_000)),
        ("duplicate columns", lambda d: _csv(os.path.join(d, "x.csv"), X, y, ("a", "a", "c", "y"))),
        ("constant target", csv_rows(X, np.ones_like(y))),
        ("target * 1e20", csv_rows(X, y * 1e20)),
        ("target * 1e-25", csv_rows(X, y * 1e-25)),
        ("target overflow", csv_rows(X, y * 1e300)),
        ("feature > float32 max", csv_rows(X * 1e300, y)),
        ("npz not a zip", raw("x.npz", b"not a zip at all")),
        ("npz corrupt member", raw("x.npz", corrupt_zip.getvalue())),
        ("npz no X", npz(A=X, y=y)),
        ("npz object X", npz(X=X.astype(object), y=y)),
        ("npz 1-D X", npz(X=X[:, 0], y=y)),
        ("npz NaN X", npz(X=_with(X, 5, np.nan), y=y)),
        ("npz NaN y", npz(X=X, y=_with(y, 5, np.nan))),
        ("npz rows mismatch", npz(X=X, y=y[:-1])),
        ("npz complex X", npz(X=X.astype(complex), y=y)),
        ("npz huge y", npz(X=X, y=y * 1e300)),
    ]


FILES = _file_cases(None)


def _good_csv(d, body_of, header=("a", "b", "c", "y"), prefix=b"", newline="\n"):
    X, y = _rows()
    lines = [",".join(header)] + [body_of(x, t) for x, t in zip(X.tolist(), y.tolist())]
    return _write(os.path.join(d, "x.csv"), prefix + (newline.join(lines) + newline).encode())


GOOD_FILES = [  # unusual but valid: the run must succeed
    (
        "long header name",
        lambda d: _good_csv(
            d, lambda x, t: ",".join(map(repr, [*x, t])), ("a" * 5000, "b", "c", "y")
        ),
    ),
    (
        "BOM and CRLF",
        lambda d: _good_csv(
            d, lambda x, t: ",".join(map(repr, [*x, t])), prefix=b"\xef\xbb\xbf", newline="\r\n"
        ),
    ),
    (
        "text labels",
        lambda d: _good_csv(
            d, lambda x, t: ",".join(map(repr, x)) + ("," + ("cat" if x[0] > 0 else "dog"))
        ),
    ),
]


@pytest.mark.parametrize("name,make", GOOD_FILES, ids=[n for n, _ in GOOD_FILES])
def test_cli_sweep_unusual_good_data(world, tmp_path, name, make):
    path = make(str(tmp_path))
    ok, why = cli_outcome(["sweep", "--data", path, *QUICK, "--out", tmp_path / "out"], "ok")
    _count("cli sweep --data", ok)
    assert ok, why


@pytest.mark.parametrize("name,make", FILES, ids=[n for n, _ in FILES])
def test_cli_sweep_bad_data(world, tmp_path, name, make):
    path = make(str(tmp_path))
    ok, why = cli_outcome(["sweep", "--data", path, *QUICK, "--out", tmp_path / "out"], "err")
    _count("cli sweep --data", ok)
    assert ok, why


PREDICT_FILES = [
    (n, m)
    for n, m in FILES
    if n
    not in (
        "constant target",
        "target * 1e20",
        "target * 1e-25",
        "target overflow",
        "NaN label",
        "npz NaN y",
        "npz rows mismatch",
        "npz huge y",
        "one row",
    )
]


@pytest.mark.parametrize("name,make", PREDICT_FILES, ids=[n for n, _ in PREDICT_FILES])
def test_cli_predict_bad_data(world, tmp_path, name, make):
    path = make(str(tmp_path))
    ok, why = cli_outcome(["predict", os.path.join(world, "run"), "--data", path], "err")
    _count("cli predict --data", ok)
    assert ok, why


BAD_FLAGS = [
    ["--epochs", "0"],
    ["--epochs", "-1"],
    ["--epochs", "abc"],
    ["--epochs", "1e9"],
    ["--folds", "1"],
    ["--folds", "0"],
    ["--folds", "1000"],
    ["--strengths", ""],
    ["--strengths", "a:b:c"],
    ["--strengths", "-1,2"],
    ["--strengths", "nan"],
    ["--strengths", "inf"],
    ["--strengths", "1e-3:1:0"],
    ["--strengths", "1e-3:1:-2"],
    ["--strengths", ",,"],
    ["--strengths", "1e400"],
    ["--strengths", "1:1e-3:99999999999"],
    ["--batch-size", "-1"],
    ["--lr", "0"],
    ["--lr", "-1"],
    ["--lr", "nan"],
    ["--lr", "inf"],
    ["--seed", "-1"],
    ["--seed", str(2**32)],
    ["--penalty", "elastic_net", "--l1-ratio", "2"],
    ["--penalty", "elastic_net", "--l1-ratio", "nan"],
    ["--penalty", "nonexistent"],
    ["--penalty", "json:loads"],
    ["--penalty", "nonexistent_mod_xyz:Thing"],
    ["--penalty", ":"],
    ["--penalty", "a:b:c"],
    ["--penalty", "torch.nn:Linear"],
    ["--model", "mlp:"],
    ["--model", "mlp:0"],
    ["--model", "mlp:-3"],
    ["--model", "mlp:a,b"],
    ["--model", "mlp:32:weird"],
    ["--model", "cnn"],
    ["--model", ""],
    ["--model", "mlp:99999999999999"],
    ["--device", "quantum"],
    ["--device", "cuda:99"],
    ["--early-stopping", "0"],
    ["--early-stopping", "-1"],
    ["--dataset", "bogus"],
    ["--target", "nonexistent"],
    ["--groups", "nonexistent"],
    ["--groups", "y"],
    ["--task", "classification"],
    ["--mode", "proximal", "--penalty", "l2", "--strengths", "x"],
    ["--test", "/nonexistent/test.csv"],
    ["--resume", "/nonexistent/run"],
    ["--out", "/proc/nope/run"],
]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=[" ".join(f) for f in BAD_FLAGS])
def test_cli_sweep_bad_flags(world, tmp_path, flags):
    argv = [
        "sweep",
        "--data",
        os.path.join(world, "d.csv"),
        *QUICK,
        "--out",
        tmp_path / "out",
        *flags,
    ]
    ok, why = cli_outcome(argv, "err")
    _count("cli sweep flags", ok)
    assert ok, why


def _run_folder_cases():
    """(name, prepare(run_dir, tmp) -> argv tail) for broken run folders and --out."""

    def report(data):
        return lambda r, t: (
            _write(os.path.join(r, "report.json"), data),
            ["predict", r, "--data", "DATA"],
        )[1]

    def lock(kind):
        def prep(r, t):
            os.remove(os.path.join(r, "report.json"))
            p = os.path.join(r, ".lock")
            if kind == "folder":
                os.mkdir(p)
            else:
                _write(p, kind)
            return ["sweep", "--data", "DATA", *QUICK, "--out", r, "--overwrite"]

        return prep

    def tampered(**fields):
        def prep(r, t):
            with open(os.path.join(r, "report.json")) as fh:
                rep = json.load(fh)
            for k, v in fields.items():
                node = rep
                *path, last = k.split(".")
                for p in path:
                    node = node[p]
                node[last] = v
            _write(os.path.join(r, "report.json"), json.dumps(rep))
            return ["predict", r, "--data", "DATA"]

        return prep

    return [
        ("report garbage", report(b"\x00\xffgarbage"), "err"),
        ("report a list", report("[1, 2]"), "err"),
        ("report empty", report(""), "err"),
        (
            "model.pt garbage",
            lambda r, t: (
                _write(os.path.join(r, "model.pt"), b"garbage"),
                ["predict", r, "--data", "DATA"],
            )[1],
            "err",
        ),
        (
            "model.pt missing",
            lambda r, t: (os.remove(os.path.join(r, "model.pt")), ["predict", r, "--data", "DATA"])[
                1
            ],
            "err",
        ),
        (
            "model.pt pickle",
            lambda r, t: (
                torch.save({"x": object}, os.path.join(r, "model.pt")),
                ["predict", r, "--data", "DATA"],
            )[1],
            "err",
        ),
        ("tampered inputs.model", tampered(**{"inputs.model": "mlp:abc"}), "any"),  # unread
        ("tampered model.model", tampered(**{"model.model": "mlp:abc"}), "err"),
        ("tampered model.n_features", tampered(**{"model.n_features": -3}), "err"),
        ("tampered model.n_outputs", tampered(**{"model.n_outputs": 10**12}), "err"),
        ("tampered records", tampered(records=[{"i": "x"}]), "err"),
        ("tampered strengths", tampered(strengths="abc"), "err"),
        ("tampered complete", tampered(complete="yes"), "err"),
        ("tampered data.features", tampered(**{"data.features": 7}), "err"),
        ("tampered settings.loss", tampered(**{"settings.loss": "weird"}), "err"),
        # fields predict does not read: a correct prediction or one clean line
        ("tampered data.task", tampered(**{"data.task": ["x"]}), "any"),
        ("tampered best strength", tampered(**{"best_strength": "x"}), "any"),
        ("tampered inputs", tampered(inputs=None), "err"),
        ("lock garbage", lock(b"\xff\xfe garbage"), "ok"),
        ("lock empty", lock(b""), "ok"),
        ("lock a folder", lock("folder"), "err"),
        ("lock huge pid", lock(b"99999999999999999999"), "ok"),
        (
            "predict --out existing file",
            lambda r, t: [
                "predict",
                r,
                "--data",
                "DATA",
                "--out",
                _write(os.path.join(t, "p.csv"), "keep"),
            ],
            "err",
        ),
        (
            "predict --out the data",
            lambda r, t: ["predict", r, "--data", "DATA", "--out", "DATA"],
            "err",
        ),
        (
            "predict --out report.json",
            lambda r, t: ["predict", r, "--data", "DATA", "--out", os.path.join(r, "report.json")],
            "err",
        ),
        (
            "predict --out new file in run",
            lambda r, t: ["predict", r, "--data", "DATA", "--out", os.path.join(r, "p.csv")],
            "err",
        ),
        (
            "predict --out a folder",
            lambda r, t: ["predict", r, "--data", "DATA", "--out", t],
            "err",
        ),
        ("predict not a run", lambda r, t: ["predict", t, "--data", "DATA"], "err"),
        (
            "sweep --out holds a run",
            lambda r, t: ["sweep", "--data", "DATA", *QUICK, "--out", r],
            "err",
        ),
        (
            "sweep --out is a file",
            lambda r, t: [
                "sweep",
                "--data",
                "DATA",
                *QUICK,
                "--out",
                os.path.join(r, "report.json"),
            ],
            "err",
        ),
        ("resume a finished run", lambda r, t: ["sweep", "--resume", r, "--quiet"], "err"),
        ("resume a non-run folder", lambda r, t: ["sweep", "--resume", t, "--quiet"], "err"),
        (
            "resume and overwrite",
            lambda r, t: ["sweep", "--resume", r, "--overwrite", "--quiet"],
            "err",
        ),
        ("explain missing module", lambda r, t: ["explain", "nonexistent_mod_xyz:f"], "err"),
        ("explain no colon", lambda r, t: ["explain", "json"], "err"),
        ("explain not a model", lambda r, t: ["explain", "os:getcwd"], "err"),
        ("explain needs args", lambda r, t: ["explain", "torch.nn:Linear"], "err"),
        ("explain empty", lambda r, t: ["explain", ":"], "err"),
        (
            "explain include nomatch",
            lambda r, t: ["explain", "torchpenalty.attack_fixture_missing:f", "--include", "zzz"],
            "err",
        ),
        ("predict good", lambda r, t: ["predict", r, "--data", "DATA"], "ok"),
        ("predict good npz", lambda r, t: ["predict", r, "--data", "NPZ"], "ok"),
    ]


RUNS = _run_folder_cases()


@pytest.mark.parametrize("name,prep,expect", RUNS, ids=[n for n, *_ in RUNS])
def test_cli_run_folders(world, tmp_path, name, prep, expect):
    run = _copy_run(world, str(tmp_path / "w"))
    t = str(tmp_path / "t")
    os.mkdir(t)
    data = os.path.join(world, "d.csv")
    argv = [{"DATA": data, "NPZ": os.path.join(world, "d.npz")}.get(a, a) for a in prep(run, t)]
    before = _snapshot(world)
    ok, why = cli_outcome(argv, expect)
    ok = ok and _snapshot(world) == before  # nothing of the user's changed
    _count("cli run folders", ok)
    assert ok, why


def _snapshot(folder):
    out = {}
    for base, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(base, f)
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


# ---------------------------------------------------------------- hypothesis

#: Failures of the hypothesis cases, by test: recorded rather than raised, so that every
#: example runs (a raised failure would make hypothesis shrink it, and counts would vary);
#: ``test_fuzz_found_nothing`` (last in this file) asserts there are none.
FUZZ_FAILURES: dict[str, list[str]] = {}


def _fuzz(entry: str, ok: bool, why: str) -> None:
    _count(entry, ok)
    if not ok:
        FUZZ_FAILURES.setdefault(entry, []).append(why[:300])


FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_csv_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        p = _write(os.path.join(d, "f.csv"), data)
        ok, why = lib_outcome(lambda: tp.data.load(p) if hasattr(tp, "data") else _load(p), "err")
        ok = ok or why == "accepted, returned Dataset"
        _fuzz("data.load bytes", ok, why)


def _load(p):
    import torchpenalty.data

    return torchpenalty.data.load(p)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_npz_bytes_predict(data):
    world = _fuzz_world()
    with tempfile.TemporaryDirectory() as d:
        p = _write(os.path.join(d, "f.npz"), data)
        ok, why = cli_outcome(["predict", os.path.join(world, "run"), "--data", p], "err")
        _fuzz("cli predict npz bytes", ok, why)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_report_bytes(data):
    world = _fuzz_world()
    with tempfile.TemporaryDirectory() as d:
        run = os.path.join(d, "run")
        shutil.copytree(os.path.join(world, "run"), run)
        _write(os.path.join(run, "report.json"), data)
        ok, why = lib_outcome(lambda: tp.load_sweep(run), "err")
        _fuzz("load_sweep report bytes", ok, why)


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_lock_bytes(data):
    world = _fuzz_world()
    with tempfile.TemporaryDirectory() as d:
        run = os.path.join(d, "run")
        os.mkdir(run)
        _write(os.path.join(run, ".lock"), data)
        argv = [
            "sweep",
            "--data",
            os.path.join(world, "d.csv"),
            *QUICK,
            "--strengths",
            "1e-2",
            "--out",
            run,
        ]
        # a garbage lock is not a live process's: the run goes on, or one clean line
        okr, why = cli_outcome(argv, "ok")
        if not okr:
            okr, why = cli_outcome(argv, "err")
        _fuzz("cli lock bytes", okr, why)


ARG_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)


@FUZZ
@given(
    st.sampled_from(
        [
            "--strengths",
            "--model",
            "--penalty",
            "--epochs",
            "--folds",
            "--lr",
            "--seed",
            "--batch-size",
            "--target",
            "--device",
            "--groups",
            "--l1-ratio",
        ]
    ),
    ARG_TEXT,
)
def test_fuzz_cli_args(flag, value):
    world = _fuzz_world()
    with tempfile.TemporaryDirectory() as d:
        argv = [
            "sweep",
            "--data",
            os.path.join(world, "d.csv"),
            *QUICK,
            "--out",
            os.path.join(d, "o"),
            flag,
            value,
        ]
        okr, why = cli_outcome(argv, "err")
        if not okr:  # some strings are valid values: then the run must succeed
            okr, why2 = cli_outcome([*argv[:-4], "--out", os.path.join(d, "o2"), flag, value], "ok")
            why = why if okr else f"{why} / {why2}"
        _fuzz("cli random args", okr, why)


_WORLD_CACHE: list[str] = []


def _fuzz_world():
    if not _WORLD_CACHE:
        root = tempfile.mkdtemp(prefix="tp-attack-fuzz-")
        X, y = _rows()
        _csv(os.path.join(root, "d.csv"), X, y)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert (
                cli.main(
                    [
                        "sweep",
                        "--data",
                        os.path.join(root, "d.csv"),
                        *QUICK,
                        "--out",
                        os.path.join(root, "run"),
                    ]
                )
                == 0
            )
        _WORLD_CACHE.append(root)
    return _WORLD_CACHE[0]


def test_fuzz_found_nothing():
    """Every hypothesis example above was handled (runs after them: pytest keeps file order)."""
    assert not FUZZ_FAILURES, {k: v[:3] for k, v in FUZZ_FAILURES.items()}


def _print_tally() -> None:
    print("\ntried / handled per entry point:")
    total = [0, 0]
    for entry, (n, k) in sorted(TALLY.items()):
        print(f"  {entry:28s} {n:4d} / {k:4d}")
        total[0] += n
        total[1] += k
    print(f"  {'total':28s} {total[0]:4d} / {total[1]:4d}")


if os.environ.get("TP_ATTACK_TALLY"):
    import atexit

    atexit.register(_print_tally)
