"""The command line end to end: default run, CSV/NPZ fixtures good and bad, resume,
explain, --help without torch; and the data loader under hypothesis-generated CSVs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchpenalty as tp
from torchpenalty import cli, report
from torchpenalty import data as data_mod
from torchpenalty.sweep.engine import Engine

QUICK = ["--quiet", "--epochs", "4", "--strengths", "1e-3:1:4", "--folds", "3"]


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_does_not_import_torch():
    code = "import sys; from torchpenalty.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().endswith("False")
    assert "sweep" in res.stdout and "explain" in res.stdout


def test_sweep_help_lists_every_sweepable_penalty_without_torch():
    # built-ins are the classes the penalties module defines (a doctest's class is not one)
    builtin = [
        n
        for n in tp.penalties.names(sweepable=True)
        if getattr(tp.penalties, tp.penalties.lookup(n).__name__, None) is tp.penalties.lookup(n)
    ]
    assert list(cli.SWEEPABLE_PENALTIES) == builtin
    code = "import sys; from torchpenalty.cli import main\ntry:\n    main(['sweep', '--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().endswith("False")
    assert ", ".join(builtin) in " ".join(res.stdout.split())
    assert ", ".join(data_mod.BUNDLED) in " ".join(res.stdout.split())  # --dataset


def test_default_sweep_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(["sweep", "--out", str(out), *QUICK], capsys)
    assert code == 0
    assert f"report: {out / 'report.json'}" in stdout and "best strength:" in stdout
    names = sorted(os.listdir(out))
    assert names == [
        ".torchpenalty-manifest.json",  # the run's own files, with their sha256
        "learning.png",
        "model.pt",
        "norm.png",
        "report.json",
        "sweep.csv",
        "validation.png",
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is True
    assert report["data"]["source"] == "sklearn:diabetes" and report["data"]["rows"] == 442
    assert report["inputs"]["strengths"] == "1e-3:1:4"
    assert len(report["table"]) == 4 and report["best_strength"] in [
        r["strength"] for r in report["table"]
    ]
    assert set(report["versions"]) >= {"torch", "torchpenalty", "numpy", "python"}
    csv_rows = (out / "sweep.csv").read_text().splitlines()
    assert csv_rows[0].startswith("strength,val_loss_mean,val_loss_se") and len(csv_rows) == 5
    # the model loads without unpickling code and predicts in the data's units
    from torchpenalty.cli import build_model_factory
    from torchpenalty.sweep import StandardizedModel

    state = torch.load(out / "model.pt", weights_only=True)
    model = StandardizedModel(build_model_factory("mlp:32,32", 10, 1)(), state["x_mean"], state["x_std"],
                              state["y_mean"], state["y_std"])  # fmt: skip
    model.load_state_dict(state)
    from sklearn.datasets import load_diabetes

    X, _y = load_diabetes(return_X_y=True)
    pred = model(torch.tensor(X, dtype=torch.float32)).detach().numpy().ravel()
    assert 50 < pred.mean() < 250  # target units, not standardized ones


def test_csv_classification_inferred(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    labels = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    path = tmp_path / "d.csv"
    with open(path, "w") as f:
        f.write("a,b,c,label\n")
        for row, lab in zip(X, labels):
            f.write(",".join(f"{v:.4f}" for v in row) + f",{lab}\n")
    out = tmp_path / "run"
    code, _stdout, err = run(["sweep", "--data", str(path), "--target", "label", "--model", "linear",
                             "--out", str(out), *QUICK], capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["task"] == "classification"
    assert report["model"]["classes"] == ["no", "yes"]
    assert "val_accuracy_mean" in report["table"][0]


def test_npz_regression(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 4))
    np.savez(tmp_path / "d.npz", X=X, y=X @ np.arange(4.0) + rng.normal(size=50) * 0.1)
    code, _, err = run(
        ["sweep", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "r"), *QUICK], capsys
    )
    assert code == 0, err


BAD_CSV = [
    ("missing.csv", None, "y", r"no such file: .*missing.csv"),
    ("d.csv", "a,b,y\n1,2,3\n4,5,6\n" * 1, "target", r"no column 'target' in the CSV; columns are \['a', 'b', 'y'\]"),
    ("d.csv", "a,b,y\n1,2,3\n4,x5,6\n", "y", r"row 3, column 'b': 'x5' is not a number"),
    ("d.csv", "a,b,y\n1,2,3\n4,nan,6\n", "y", r"row 3, column 'b': 'nan' is not a finite number"),
    ("d.csv", "a,b,y\n1,2,3\n4,inf,6\n", "y", r"row 3, column 'b': 'inf' is not a finite number"),
    ("d.csv", "a,b,y\n1,,3\n", "y", r"row 2, column 'b': empty cell"),
    ("d.csv", "a,b,y\n1,2\n", "y", r"row 2: 2 cells, the header has 3"),
    ("d.csv", "", "y", r"the CSV file is empty"),
    ("d.csv", "a,b,y\n", "y", r"the CSV has a header but no data rows"),
    ("d.csv", "a,a,y\n1,2,3\n", "y", r"duplicate column names in the header: \['a'\]"),
    ("d.csv", "a,b,y\n" + "".join(f"{i},{i * 2},7.5\n" for i in range(20)), "y", r"the target must be non-constant, got every value 7.5"),
    ("d.csv", "a,b,y\n" + "".join(f"{i},{i % 3},{i * 0.5}\n" for i in range(4)), "y", r"--folds must be at most the number of rows \(4\), got 5"),
    ("d.txt", "a,b\n1,2\n", "y", r"the data file must end in .csv or .npz"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "target", "match"), BAD_CSV)
def test_bad_files_get_one_line_and_exit_2(tmp_path, capsys, name, content, target, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    code, _stdout, err = run(
        ["sweep", "--data", str(path), "--target", target, "--out", str(tmp_path / "r"), "--quiet"],
        capsys,
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torchpenalty: error: ")
    import re

    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in err


def test_bad_npz(tmp_path, capsys):
    np.savez(tmp_path / "obj.npz", X=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    code, _, err = run(["sweep", "--data", str(tmp_path / "obj.npz"), "--quiet"], capsys)
    assert code == 2 and "cannot be read without unpickling" in err
    np.savez(tmp_path / "nan.npz", X=np.array([[1.0, np.nan]] * 12), y=np.arange(12.0))
    code, _, err = run(["sweep", "--data", str(tmp_path / "nan.npz"), "--quiet"], capsys)
    assert code == 2 and "row 0, column 1: nan is not a finite number" in err
    np.savez(tmp_path / "noy.npz", X=np.zeros((12, 2)))
    code, _, err = run(["sweep", "--data", str(tmp_path / "noy.npz"), "--quiet"], capsys)
    assert code == 2 and "must hold arrays 'X' and 'y'" in err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--strengths", "1:0.1:5"], r"--strengths must be LO:HI:N"),
        (["--strengths", "a,b"], r"--strengths must be LO:HI:N .*got 'a,b'"),
        (["--model", "mlp:"], r"--model must be 'linear' or 'mlp:W1,W2"),
        (["--model", "resnet"], r"--model must be"),
        (["--penalty", "l3"], r"--penalty must be one of"),
        (
            ["--penalty", "orthogonal"],
            r"penalty must be one of 'l2', 'l1', 'elastic_net', 'group_lasso'",
        ),
        (["--folds", "1"], r"--folds must be an integer >= 2, got 1"),
        (["--lr", "-1"], r"--lr must be a finite number > 0, got -1.0"),
        (["--strengths=-1,2"], r"--strengths must be a finite number >= 0, got -1.0"),
        (["--dataset", "mnist"], r"dataset must be one of"),
        (["--device", "gpu0"], r"--device must be a torch device"),
        (
            ["--device", "meta"],
            r"--device must be 'cpu' or 'cuda' \(a sweep trains on one of these\), got 'meta'",
        ),
        (["--device", "mps"], r"--device must be 'cpu' or 'cuda' .*got 'mps'"),
        (
            ["--seed", "99999999999"],
            r"--seed must be an integer in \[0, 4294967295\], got 99999999999",
        ),
        (["--seed", "-1"], r"--seed must be an integer >= 0, got -1"),
        (["--target", "y"], r"--target applies to a --data file; a bundled --dataset has its own"),
        (
            ["--penalty", "l2sp"],
            # (then the registered user penalties: penalties.py's doctest adds one)
            r"--penalty must be one of 'l2', 'l1', 'elastic_net', 'group_lasso'.* \(the penalties a sweep stacks\), got 'l2sp'",
        ),
        (
            ["--penalty", "elastic_net", "--l1-ratio", "2"],
            r"--l1-ratio must be a number in \[0, 1\], got 2.0",
        ),
        (["--epochs", "0"], r"--epochs must be an integer >= 1, got 0"),
        (["--batch-size", "-3"], r"--batch-size must be an integer >= 1, got -3 \(0: full batch\)"),
        (["--early-stopping", "0"], r"--early-stopping must be an integer >= 1, got 0"),
        (["--strengths", "0,0.1,nan"], r"--strengths must be a finite number >= 0, got nan"),
    ],
)
def test_bad_options(capsys, tmp_path, args, match):
    import re

    code, _, err = run(["sweep", "--quiet", "--out", str(tmp_path / "r"), *args], capsys)
    assert code == 2 and re.search(match, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written for a run that never started


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["sweep", "--colour", "red"], "unrecognized arguments: --colour red"),
        (["sweep", "--strengths", "-1,2"], "argument --strengths: expected one argument (for a value that starts with '-', write --option=VALUE)"),
        (["sweep", "--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
        (["fit"], "argument COMMAND: invalid choice: 'fit'"),
    ],
)  # fmt: skip
def test_argparse_errors_are_one_line(capsys, args, match):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("torchpenalty")
    assert match in err, err


def test_version(capsys):
    from torchpenalty import __version__

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"torchpenalty {__version__}\n"


def test_out_must_be_a_writable_folder(tmp_path, capsys, monkeypatch):
    """Checked before anything trains: a file, a path under a file, a folder that cannot
    be created or written."""
    trained = []
    monkeypatch.setattr(Engine, "run", lambda *a, **k: trained.append(1))
    (tmp_path / "f").write_text("x")
    code, _, err = run(["sweep", *QUICK, "--out", str(tmp_path / "f")], capsys)
    assert code == 2 and f"--out {tmp_path / 'f'} is a file, not a folder" in err
    code, _, err = run(["sweep", *QUICK, "--out", str(tmp_path / "f" / "r")], capsys)
    assert code == 2 and "cannot create the folder (Not a directory)" in err
    real_open = os.open

    def denied(path, *a, **k):  # what a read-only folder does (root ignores chmod)
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", denied)
    code, _, err = run(["sweep", *QUICK, "--out", str(tmp_path / "ro")], capsys)
    assert code == 2 and f"{tmp_path / 'ro'} is not writable (cannot create" in err, err
    monkeypatch.setattr(os, "makedirs", lambda *a, **k: denied(str(tmp_path / "ro")))
    code, _, err = run(["sweep", *QUICK, "--out", str(tmp_path / "ro" / "new")], capsys)
    assert code == 2 and "cannot create the folder (Permission denied)" in err, err
    assert not trained
    for e in err.strip().splitlines():
        assert e.startswith("torchpenalty: error: ")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_follow_the_umask(tmp_path, capsys, umask):
    old = os.umask(umask)
    try:
        code, _, err = run(["sweep", *QUICK, "--epochs", "1", "--model", "linear", "--out",
                            str(tmp_path / "r")], capsys)  # fmt: skip
    finally:
        os.umask(old)
    assert code == 0, err
    for name in os.listdir(tmp_path / "r"):
        assert (os.stat(tmp_path / "r" / name).st_mode & 0o777) == 0o666 & ~umask, name


def test_interrupt_then_resume(tmp_path, capsys, monkeypatch):
    args = ["sweep", "--quiet", "--epochs", "6", "--strengths", "1e-3:1:3", "--folds", "3"]
    ref = tmp_path / "ref"
    assert run([*args, "--out", str(ref)], capsys)[0] == 0

    real = Engine._penalty_step
    count = {"n": 0}

    def flaky(self, *a):
        count["n"] += 1
        if count["n"] == 20:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(Engine, "_penalty_step", flaky)
    out = tmp_path / "run"
    code, _, err = run([*args, "--out", str(out)], capsys)
    assert code == 130
    assert f"torchpenalty sweep --resume {out}" in err
    partial = json.loads((out / "report.json").read_text())
    assert partial["complete"] is False
    assert (out / "checkpoint.pt").exists()
    assert not [
        n for n in os.listdir(out) if n.startswith(report.TMP_PREFIX)
    ]  # nothing half-written
    monkeypatch.undo()

    code, _stdout, err = run(["sweep", "--quiet", "--resume", str(out)], capsys)
    assert code == 0, err
    done = json.loads((out / "report.json").read_text())
    want = json.loads((ref / "report.json").read_text())
    assert done["complete"] is True and not (out / "checkpoint.pt").exists()
    np.testing.assert_allclose([r["val_loss_mean"] for r in done["table"]],
                               [r["val_loss_mean"] for r in want["table"]], rtol=1e-6)  # fmt: skip
    code, _, err = run(["sweep", "--resume", str(out)], capsys)
    assert code == 2 and "already finished" in err
    code, _, err = run(["sweep", "--resume", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no report.json there" in err


def test_explain_command(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    """)
    )
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run(["explain", "mymodels:make"], capsys)
    assert code == 0
    assert "1.weight  (8,)    no           normalization module (LayerNorm)" in stdout
    assert "2 of 6 parameters regularized" in stdout
    code, _, err = run(["explain", "mymodels:nope"], capsys)
    assert code == 2 and "has no callable 'nope'" in err
    code, _, err = run(["explain", "nomodule:make"], capsys)
    assert code == 2 and "cannot import 'nomodule'" in err
    code, _, err = run(["explain", "mymodels:make", "--include", "enc.*"], capsys)
    assert code == 2 and "include must match at least one parameter" in err


EXPLAIN_ERRORS = [
    (":make", r"explain needs MODULE:FACTORY \(a dotted module name and a function name, e.g. mymodels:make\), got ':make'"),
    (".m:make", r"explain needs MODULE:FACTORY .*got '.m:make'"),
    ("mymodels", r"explain needs MODULE:FACTORY .*got 'mymodels'"),
    ("mymodels:", r"explain needs MODULE:FACTORY .*got 'mymodels:'"),
    ("mymodels:needs_args", r"mymodels:needs_args\(\) failed: TypeError: needs_args\(\) missing 1 required positional argument: 'width' \(explain calls FACTORY with no arguments\)"),
    ("mymodels:not_a_model", r"mymodels:not_a_model\(\) must return an nn.Module, got int"),
    ("mymodels:crashes", r"mymodels:crashes\(\) failed: ZeroDivisionError: division by zero"),
    ("broken:make", r"cannot import 'broken': it raised RuntimeError: cannot build this"),
    ("badsyntax:make", r"cannot import 'badsyntax': it raised SyntaxError: "),
    ("exits:make", r"cannot import 'exits': it raised SystemExit: 3"),
    ("nomodule:make", r"cannot import 'nomodule': No module named 'nomodule'"),
]  # fmt: skip


@pytest.mark.parametrize(("target", "match"), EXPLAIN_ERRORS)
def test_explain_errors_are_one_line(tmp_path, capsys, monkeypatch, target, match):
    import re

    (tmp_path / "mymodels.py").write_text(
        textwrap.dedent("""
        from torch import nn
        def needs_args(width):
            return nn.Linear(width, 1)
        def not_a_model():
            return 3
        def crashes():
            return 1 / 0
    """)
    )
    (tmp_path / "broken.py").write_text("raise RuntimeError('cannot build this')\n")
    (tmp_path / "badsyntax.py").write_text("def make(:\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    for name in ("mymodels", "broken", "badsyntax", "exits"):
        sys.modules.pop(name, None)
    code, _, err = run(["explain", target], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize("how", ["-m", "-c"])
def test_explain_is_not_shadowed_by_files_in_the_working_directory(tmp_path, how):
    """A torch.py (or numpy.py) in the working directory must not run: the working
    directory goes last on sys.path, so installed packages win."""
    for name in ("torch", "numpy"):
        (tmp_path / f"{name}.py").write_text(
            f"open({str(tmp_path / (name + '.ran'))!r}, 'w').close()\nraise SystemExit('shadowed')\n"
        )
    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\ndef make():\n    return nn.Linear(2, 1)\n"
    )
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = {**os.environ, "PYTHONPATH": src}
    cmd = (
        ["-m", "torchpenalty"]
        if how == "-m"
        else ["-c", "import sys; from torchpenalty.cli import main; sys.exit(main())"]
    )
    res = subprocess.run([sys.executable, *cmd, "explain", "mymodels:make"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "1 of 2 parameters regularized" in res.stdout
    assert not list(tmp_path.glob("*.ran"))


def test_write_atomic_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)  # Ctrl-C in the middle of the write
    with pytest.raises(KeyboardInterrupt):
        report.write_atomic(str(target), "new and longer")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]  # the temporary file is gone
    monkeypatch.undo()
    report.write_atomic(str(target), "new")
    assert target.read_text() == "new"


# ---------------------------------------------------------------------------- fuzzing
cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 5).map(str),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6),
    st.just(""),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(cells, min_size=0, max_size=5), min_size=0, max_size=8),
    st.sampled_from([None, "y", "c0", "missing"]),
    st.sampled_from([None, "regression", "classification"]),
)
def test_generated_csvs_never_crash_the_loader(rows, target, task):
    text = "\n".join(",".join(r) for r in rows)
    try:
        X, y, _names, t = data_mod.read_csv(io.StringIO(text), target, task)
    except data_mod.DataError as e:
        assert "\n" not in str(e).strip()
        return
    assert X.ndim == 2 and len(X) == len(y) and np.isfinite(X).all()
    assert t in ("regression", "classification")


def test_warnings_are_one_line_and_said_once(tmp_path, capsys):
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    path = tmp_path / "iris.csv"
    with open(path, "w") as f:
        f.write("a,b,c,d,species\n")
        for row, label in zip(X, y):
            f.write(",".join(f"{v:.2f}" for v in row) + f",{label}\n")
    code, _, err = run(["sweep", *QUICK, "--data", str(path), "--task", "regression",
                        "--model", "linear", "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "distinct integer values" in ln]
    assert len(lines) == 1 and lines[0].startswith("torchpenalty: warning: y holds 3 distinct")
    assert "UserWarning" not in err
