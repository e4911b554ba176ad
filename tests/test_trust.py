"""What the tool runs, writes and deletes (issue #18): no code imported from a run
folder or the working directory unless the user names it; nothing written or deleted
that the run does not own; every run can finish; full precision; one line per bad input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torchpenalty import cli
from torchpenalty.sweep.engine import Engine

SRC = str(Path(__file__).resolve().parents[1] / "src")
QUICK = [
    "--quiet",
    "--epochs",
    "20",
    "--strengths",
    "1e-3,1e-1",
    "--folds",
    "2",
    "--model",
    "mlp:4",
    "--no-vectorize",
]

#: A user penalty module: the legitimate one, and one that must never run.
GOOD = """
import torchpenalty as tp

class Quartic(tp.Penalty):
    name = "trust_quartic"
    stackable = True

    def term(self, w):
        return (w ** 4).sum()
"""
EVIL = "open({marker!r}, 'w').close()\nraise SystemExit('evil')\n"


def run(args, capsys):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _data(folder: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=n)
    path = folder / "d.csv"
    rows = "".join(f"{a!r},{b!r},{c!r},{t!r}\n" for (a, b, c), t in zip(X.tolist(), y.tolist()))
    path.write_text("a,b,c,y\n" + rows)
    return path


def _interrupted(capsys, monkeypatch, args, out):
    """A run stopped by Ctrl-C after a few training steps (resumable)."""
    real, count = Engine._penalty_step, {"n": 0}

    def flaky(self, *a):
        count["n"] += 1
        if count["n"] == 30:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(Engine, "_penalty_step", flaky)
    code, _, err = run(["sweep", *args, "--out", out], capsys)
    monkeypatch.undo()
    assert code == 130, err
    return out


# ---------------------------------------------------------------------------- 1. imports
def test_resume_never_imports_a_saved_user_penalty_from_the_folders(tmp_path, capsys, monkeypatch):
    """A saved ``--penalty module:Class`` is imported only when the user names it again:
    a ``mymod.py`` in the working directory or beside the run folder never runs."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "trust_usermod.py").write_text(GOOD)
    data = _data(tmp_path)
    monkeypatch.chdir(home)
    sys.modules.pop("trust_usermod", None)
    args = [*QUICK, "--data", data, "--penalty", "trust_usermod:Quartic"]
    out = _interrupted(capsys, monkeypatch, args, tmp_path / "shared" / "run")
    # someone else's folder: the run, and a module of that name beside it and in the cwd
    marker = tmp_path / "evil.ran"
    for where in (tmp_path / "shared", tmp_path / "shared" / "run", tmp_path / "elsewhere"):
        where.mkdir(exist_ok=True)
        (where / "trust_usermod.py").write_text(EVIL.format(marker=str(marker)))
    for cwd in (tmp_path / "shared", tmp_path / "elsewhere"):
        monkeypatch.chdir(cwd)
        sys.modules.pop("trust_usermod", None)
        code, _, err = run(["sweep", "--quiet", "--resume", out], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and len(lines[0]) < 200, err
        assert "add --penalty trust_usermod:Quartic" in lines[0]
        assert not marker.exists()
    # named again on the command line: imported (from the working directory, last)
    monkeypatch.chdir(home)
    sys.modules.pop("trust_usermod", None)
    code, _, err = run(
        ["sweep", "--quiet", "--resume", out, "--penalty", "trust_usermod:Quartic"], capsys
    )
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["complete"] is True
    assert not marker.exists()
    sys.modules.pop("trust_usermod", None)


def test_a_saved_penalty_that_is_installed_resumes_without_naming_it(tmp_path, capsys, monkeypatch):
    data = _data(tmp_path)
    args = [*QUICK, "--data", data, "--penalty", "torchpenalty.penalties:L1"]
    out = _interrupted(capsys, monkeypatch, args, tmp_path / "run")
    (tmp_path / "torchpenalty_evil.py").write_text("raise SystemExit('evil')\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["sweep", "--quiet", "--resume", out], capsys)
    assert code == 0, err


@pytest.mark.parametrize("name", ["typing_extensions", "tqdm", "mymod"])
def test_python_m_takes_the_working_directory_off_sys_path(tmp_path, name):
    """``python -m torchpenalty`` in a folder holding a run and files named like modules
    (an optional dependency, the saved user penalty) runs none of them."""
    marker = tmp_path / f"{name}.ran"
    (tmp_path / f"{name}.py").write_text(EVIL.format(marker=str(marker)))
    data = _data(tmp_path)
    env = {**os.environ, "PYTHONPATH": SRC}
    loud = [a for a in QUICK if a != "--quiet"]  # the progress bar imports tqdm if it can
    cmd = [sys.executable, "-m", "torchpenalty", "sweep", *loud, "--data", str(data),
           "--out", "run", "--penalty", "l2"]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "torchpenalty", "predict", "run", "--data", str(data)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------- 2. files
def _finished(tmp_path, capsys, name="run", extra=()):
    data = tmp_path / "d.csv" if (tmp_path / "d.csv").exists() else _data(tmp_path)
    out = tmp_path / name
    code, _, err = run(["sweep", *QUICK, "--data", data, "--out", out, *extra], capsys)
    assert code == 0, err
    return out, data


def _listing(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def test_only_our_temporary_files_of_dead_processes_are_removed(tmp_path, capsys):
    """A user's ``.tmp-*`` files survive a run and a refused run; a leftover under our
    temporary name of a process that is gone is removed; one of a live process stays."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    from torchpenalty import report

    mine = {".tmp-notes": b"user", ".tmp-abc123": b"user", f"{report.TMP_PREFIX}x": b"user",
            f"{report.TMP_PREFIX}1-0123456789abcdef": b"pid 1 is alive"}  # fmt: skip
    for name, content in mine.items():
        (out / name).write_bytes(content)
    (out / f"{report.TMP_PREFIX}{dead.pid}-0123456789abcdef").write_bytes(b"leftover")
    _finished(tmp_path, capsys)
    assert {n: (out / n).read_bytes() for n in mine} == mine
    assert not (out / f"{report.TMP_PREFIX}{dead.pid}-0123456789abcdef").exists()
    data = tmp_path / "d.csv"
    code, _, err = run(["sweep", *QUICK, "--data", data, "--out", out], capsys)  # refused
    assert code == 2 and "holds a run already" in err
    assert {n: (out / n).read_bytes() for n in mine} == mine


def test_overwrite_removes_only_files_the_manifest_vouches_for(tmp_path, capsys):
    out, data = _finished(tmp_path, capsys)
    from torchpenalty import report

    manifest = report.read_manifest(str(out))
    assert set(manifest) == set(report.RUN_FILES) - {report.CHECKPOINT} | {report.CHECKPOINT}
    assert report.foreign_files(str(out)) == []
    (out / "notes.txt").write_text("mine")
    # a run file replaced by the user's own: --overwrite refuses and removes nothing
    (out / "model.pt").write_bytes(b"my own model")
    before = _listing(out)
    code, _, err = run(["sweep", *QUICK, "--data", data, "--out", out, "--overwrite"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "its model.pt was not written by" in lines[0], err
    assert _listing(out) == before
    (out / "model.pt").unlink()
    code, _, err = run(["sweep", *QUICK, "--data", data, "--out", out, "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "report.json").read_text())["complete"] is True


@pytest.mark.parametrize("name", ["report.json", "sweep.csv", "model.pt"])
def test_a_folder_with_someone_elses_run_file_is_never_written_over(tmp_path, capsys, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("not a torchpenalty file")
    data = _data(tmp_path)
    for extra in ([], ["--overwrite"]):
        code, _, err = run(["sweep", *QUICK, "--data", data, "--out", out, *extra], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and name in lines[0], err
        assert (out / name).read_text() == "not a torchpenalty file"
        assert sorted(os.listdir(out)) == [name]


def test_predict_out_never_replaces_data_run_files_or_existing_files(tmp_path, capsys):
    out, data = _finished(tmp_path, capsys)
    other, _ = _finished(tmp_path, capsys, "other")
    before = {p: p.read_bytes() for p in [data, *out.iterdir(), *other.iterdir()]}
    existing = tmp_path / "old.csv"
    existing.write_text("keep")
    cases = [
        (data, "is the --data file"),
        (out / "report.json", "is in a run folder"),
        (out / "new.csv", "is in a run folder"),
        (other / "model.pt", "is in a run folder"),
        (other / "new.csv", "is in a run folder"),
        (tmp_path, "is a folder"),
        (existing, "exists: add --overwrite"),
    ]
    for target, message in cases:
        for extra in ([], ["--overwrite"]):
            if message.startswith("exists") and extra:
                continue
            code, _, err = run(["predict", out, "--data", data, "--out", target, *extra], capsys)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and message in lines[0], (target, err)
    assert {p: p.read_bytes() for p in before} == before and existing.read_text() == "keep"
    code, _, err = run(["predict", out, "--data", data, "--out", existing, "--overwrite"], capsys)
    assert code == 0, err
    assert existing.read_text().startswith("prediction\n")
    fresh = tmp_path / "fresh.csv"
    assert run(["predict", out, "--data", data, "--out", fresh], capsys)[0] == 0
    assert fresh.read_text() == existing.read_text()


# ---------------------------------------------------------------------------- 3. finish
def _diverging(n=40):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    return X, X @ np.array([1.0, -2.0, 0.5])


def test_every_strength_diverged_with_a_test_set_still_finishes():
    """tp.sweep(test=...) with every strength diverged: a complete result, the test score
    marked missing, warnings saying both (it raised "test needs a refit model")."""
    import torch

    import torchpenalty as tp

    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    X, y = _diverging()
    r = tp.sweep(mlp, (X, y), strengths=[1e-3, 1e-1], folds=2, epochs=3, lr=1e12,
                 optimizer="sgd", test=(X[:10], y[:10]), progress=False)  # fmt: skip
    assert r.complete and r.best_strength is None and r.model is None
    assert r.test == {"rows": 10, "loss": None,
                      "missing": "not scored: every strength diverged, no refit model"}  # fmt: skip
    assert any("every strength diverged" in w for w in r.warnings)
    assert any("held-out test set was not scored" in w for w in r.warnings)


def test_cli_every_strength_diverged_with_test_then_resume(tmp_path, capsys, monkeypatch):
    """The command line with --test: a complete report with the test marked missing; the
    same through an interrupted run and --resume."""
    data = _data(tmp_path)
    args = [*QUICK, "--data", data, "--test", data, "--lr", "1e12", "--optimizer", "sgd"]
    for how in ("straight", "resumed"):
        out = tmp_path / how
        if how == "straight":
            code, stdout, err = run(["sweep", *args, "--out", out], capsys)
        else:
            _interrupted(capsys, monkeypatch, args, out)
            code, stdout, err = run(["sweep", "--quiet", "--resume", out], capsys)
        assert code == 0, err
        rep = json.loads((out / "report.json").read_text())
        assert rep["complete"] is True and rep["best_strength"] is None
        assert rep["test"]["loss"] is None and "every strength diverged" in rep["test"]["missing"]
        assert any("held-out test set was not scored" in w for w in rep["warnings"])
        assert "held-out test (40 rows): not scored" in stdout
        assert not (out / "model.pt").exists()


def test_test_with_refit_false_is_refused_before_training():
    import torch

    import torchpenalty as tp

    X, y = _diverging()
    with pytest.raises(ValueError, match=r"^test must be None with refit=False"):
        tp.sweep(lambda: torch.nn.Linear(3, 1), (X, y), refit=False, test=(X, y), epochs=1)


# ---------------------------------------------------------------------------- 4. precision
@pytest.mark.parametrize(
    ("scale", "match"),
    [
        (
            1e20,
            r"^y must have a standard deviation in \[1e-15, 1e\+15\] .*got 2.\d+e\+20; divide it by 1e\+20$",
        ),
        (
            1e-25,
            r"^y must have a standard deviation in \[1e-15, 1e\+15\] .*got 2.\d+e-25; divide it by 1e-25$",
        ),
    ],
)
def test_the_python_api_checks_the_targets_scale_like_the_cli(scale, match):
    """y * 1e20 was reported as "every strength diverged", y * 1e-25 gave every loss 0.0
    and an arbitrary best strength; the CLI refused both, now tp.sweep does too."""
    import torch

    import torchpenalty as tp

    X, y = _diverging()
    with pytest.raises(ValueError, match=match):
        tp.sweep(lambda: torch.nn.Linear(3, 1), (X, y * scale), epochs=1)


def test_prediction_standardizes_in_float64():
    """A Unix-timestamp feature (about 1.7e9, spread 1e3): raw X cast to float32 before
    standardizing loses about 64 s per value; predictions must equal the float64
    reference (standardize in float64, cast at the model's input) to float32 rounding."""
    import torch

    import torchpenalty as tp

    rng = np.random.default_rng(0)
    t = 1.7e9 + rng.uniform(0, 3600, size=200)
    X = np.column_stack([t, rng.normal(size=200)])
    y = (t - 1.7e9) / 360 + X[:, 1]
    r = tp.sweep(lambda: torch.nn.Linear(2, 1), (X, y), strengths=[1e-6], folds=2,
                 solver="train", epochs=30, lr=0.05, progress=False)  # fmt: skip
    m = r.model
    z = ((torch.as_tensor(X) - m.x_mean) / m.x_std).float()
    want = (m.model(z).double() * m.y_std + m.y_mean).detach().numpy().ravel()
    got = r.predict(X)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    z32 = (torch.as_tensor(X).float() - m.x_mean.float()) / m.x_std.float()  # the old way
    old = (m.model(z32).double() * m.y_std + m.y_mean).detach().numpy().ravel()
    assert np.abs(old - want).max() > 100 * np.abs(got - want).max() + 1e-3
    mse = float(np.mean((got - y) ** 2))
    assert mse < 2 * min(row["val_loss_mean"] for row in r.table)


def test_cli_predict_names_the_column_a_float32_input_cannot_hold(tmp_path, capsys):
    out, _ = _finished(tmp_path, capsys)
    new = tmp_path / "new.csv"
    new.write_text("a,b,c\n1,2,3\n1,1e300,3\n")
    code, _, err = run(["predict", out, "--data", new], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and len(lines[0]) < 200, err
    assert "column 'b': row 1 lies" in lines[0] and "beyond float32" in lines[0]


def test_cli_predict_refuses_nan_in_an_npz_like_a_csv(tmp_path, capsys):
    out, _ = _finished(tmp_path, capsys)
    X = np.ones((3, 3))
    X[1, 2] = np.nan
    np.savez(tmp_path / "new.npz", X=X)
    code, _, err = run(["predict", out, "--data", tmp_path / "new.npz"], capsys)
    assert code == 2 and "row 1, column 2: nan is not a finite number" in err, err


# ---------------------------------------------------------------------------- 5. one line
def _user_penalty_class(what):
    import torch

    import torchpenalty as tp

    results = {
        "detached": lambda w: (w.detach() ** 2).sum(),
        "integer": lambda w: torch.tensor(3),
        "complex": lambda w: (w**2).sum() * (1 + 1j),
        "vector": lambda w: w**2,
        "float": lambda w: 1.5,
        "nan": lambda w: (w**2).sum() * float("nan"),
    }

    class Wrong(tp.Penalty):  # not registered: no name
        def term(self, w):
            return results[what](w)

    Wrong.__name__ = f"Wrong{what.capitalize()}"
    return Wrong


@pytest.mark.parametrize("mode", ["loss", "grad", "decoupled"])
@pytest.mark.parametrize(
    ("what", "error", "match"),
    [
        ("detached", ValueError, r"a tensor computed from w with autograd, got one without a grad"),
        ("integer", TypeError, r"a real floating tensor, got dtype torch.int64"),
        ("complex", TypeError, r"a real floating tensor, got dtype torch.complex64"),
        ("vector", ValueError, r"a 0-d tensor \(the sum over w\), got shape \(1, 3\)"),
        ("float", TypeError, r"a 0-d tensor computed from w, got float"),
        ("nan", ValueError, r"a finite value for finite weights, got nan"),
    ],
)
def test_a_user_penalty_whose_term_is_wrong_is_refused_on_first_use(mode, what, error, match):
    """Before: detached and integer terms regularized nothing, NaN poisoned the weights,
    the others raised torch's internal errors."""
    import torch

    import torchpenalty as tp

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    before = model.weight.detach().clone()
    reg = tp.Regularizer(model, _user_penalty_class(what)(0.1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    name = f"Wrong{what.capitalize()}"
    with pytest.raises(error, match=rf"^{name}\.term\(w\) must return {match}"):
        if mode == "loss":
            (model(torch.randn(4, 3)).sum() + reg()).backward()
        else:
            reg.attach(opt, mode=mode)
            model(torch.randn(4, 3)).sum().backward()
            opt.step()
    assert torch.equal(model.weight.detach(), before)  # nothing applied


@pytest.mark.parametrize("mode", ["value", "grad", "decoupled", "proximal"])
@pytest.mark.parametrize(
    "penalty", ["GroupLasso(0.1)", "GroupLasso(0.1, dim=1)", "Orthogonal(0.1)", "L1(0.1)"]
)
def test_zero_size_parameters_add_nothing(mode, penalty):
    """A parameter without elements (nn.Linear(0, 4).weight) adds nothing: the same value
    and steps as the model without it (GroupLasso/Orthogonal raised torch's errors)."""
    import torch

    import torchpenalty as tp

    name, _, args = penalty.partition("(")
    pen = getattr(tp, name)(0.1, **({"dim": 1} if "dim=1" in args else {}))
    if mode == "proximal" and not pen.has_prox:
        return
    torch.manual_seed(0)
    full = torch.nn.Linear(3, 4)
    empty = torch.nn.Linear(0, 4)
    for m in (full, empty):
        torch.nn.init.constant_(m.bias, 0.5)
    with torch.no_grad():
        full.weight.copy_(torch.randn(4, 3))
    params = [full.weight, empty.weight]
    if mode == "value":
        assert pen.value(params).item() == pytest.approx(pen.value([full.weight]).item())
        return
    ref = full.weight.detach().clone()
    getattr(pen, {"grad": "grad_", "decoupled": "decay_", "proximal": "prox_"}[mode])(
        *(([torch.zeros_like(p) for p in params],) if mode == "grad" else ()), params,
        *((0.1,) if mode != "grad" else ()),
    )  # fmt: skip
    one = [ref.clone()]
    getattr(pen, {"grad": "grad_", "decoupled": "decay_", "proximal": "prox_"}[mode])(
        *(([torch.zeros_like(one[0])],) if mode == "grad" else ()), one,
        *((0.1,) if mode != "grad" else ()),
    )  # fmt: skip
    assert torch.equal(full.weight.detach(), one[0])
    assert empty.weight.shape == (4, 0)


# ---------------------------------------------------------------------------- 6. frictions
def test_report_records_run_time_and_only_the_settings_that_apply(tmp_path, capsys):
    out, data = _finished(tmp_path, capsys, extra=["--penalty", "l1"])
    rep = json.loads((out / "report.json").read_text())
    assert "l1_ratio" not in rep["inputs"] and "dataset" not in rep["inputs"]
    assert rep["inputs"]["penalty"] == "l1" and rep["inputs"]["data"] == str(data)
    t = rep["time"]
    assert t["run_s"] > 0 and t["started"] <= t["finished"] and t["started"].endswith("+00:00")
    enet, _ = _finished(tmp_path, capsys, "enet", extra=["--penalty", "elastic_net"])
    assert json.loads((enet / "report.json").read_text())["inputs"]["l1_ratio"] == 0.5
    code, _, err = run(
        ["sweep", *QUICK, "--model", "linear", "--out", tmp_path / "bundled"], capsys
    )
    assert code == 0, err
    inputs = json.loads((tmp_path / "bundled" / "report.json").read_text())["inputs"]
    assert inputs["dataset"] == "diabetes" and "l1_ratio" not in inputs


def test_a_resumed_run_adds_up_its_run_time(tmp_path, capsys, monkeypatch):
    data = _data(tmp_path)
    out = _interrupted(capsys, monkeypatch, [*QUICK, "--data", data], tmp_path / "run")
    partial = json.loads((out / "report.json").read_text())["time"]
    assert partial["run_s"] > 0 and "finished" not in partial
    assert run(["sweep", "--quiet", "--resume", out], capsys)[0] == 0
    done = json.loads((out / "report.json").read_text())["time"]
    assert done["started"] == partial["started"] and done["run_s"] > partial["run_s"]


def test_pandas_text_labels_are_class_labels():
    """``df["species"].to_numpy()`` is an object array of str: classes, like str arrays."""
    import torch

    import torchpenalty as tp

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)
    y = names[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)]
    assert y.dtype == object

    def make():
        return torch.nn.Linear(3, 3)

    kw = {"strengths": [1e-3], "folds": 2, "epochs": 5, "progress": False, "solver": "train"}
    r = tp.sweep(make, (X, y), **kw)
    ref = tp.sweep(make, (X, y.astype(str)), **kw)
    assert r.loss == "cross_entropy" and list(r.classes) == sorted(set(y))
    assert r.table == ref.table and r.predict(X[:5]).tolist() == ref.predict(X[:5]).tolist()
    bad = np.array(["a", 1, None] * 20, dtype=object)
    with pytest.raises(
        ValueError, match=r"^y must be a numeric array, got an array of dtype object$"
    ):
        tp.sweep(make, (X, bad), **kw)


def test_fit_evidence_infers_the_task_like_sweep():
    """A classifier without loss= failed with a reshape error; now it is cross-entropy, as
    tp.sweep infers it (and loss="cross_entropy" given gives the same result)."""
    import torch

    import torchpenalty as tp

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    r = tp.fit_evidence(make, (X, y), epochs=4, every=2)
    given = tp.fit_evidence(make, (X, y), loss="cross_entropy", epochs=4, every=2)
    assert r.loss == "cross_entropy" and r.strengths == given.strengths
    with pytest.raises(
        ValueError, match=r"one output per target column \(1\), got output of shape \(2, 3\)"
    ):
        tp.fit_evidence(make, (X, X[:, 0] * 1.5), epochs=2, every=1)  # 3 outputs, 1 target

    def one():
        return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    assert tp.fit_evidence(one, (X, X[:, 0] * 1.5), epochs=2, every=1).loss == "mse"


def test_print_stats_is_a_readable_table():
    import torch

    import torchpenalty as tp

    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    reg = tp.Regularizer(model, tp.L2(1e-2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    h = reg.attach(opt, mode="decoupled")
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    st = reg.stats(h)
    lines = str(st).splitlines()
    assert len(lines) == 1 + len(st.tensors) + len(st.groups) and max(map(len, lines)) < 120
    assert lines[0].split()[:3] == ["name", "group", "penalty"]
    assert lines[1].split()[0] == "0.weight" and lines[1].split()[-1] == "0.0%"
    assert float(lines[1].split()[4]) == pytest.approx(st.tensors[0].weight_norm, rel=1e-3)


def test_the_progress_bar_is_off_when_stderr_is_not_a_terminal(monkeypatch):
    """tqdm's disable=None: no bar (and no lines flooding a log) without a terminal."""
    import types

    from torchpenalty.sweep import run as run_mod

    seen = {}
    fake = types.ModuleType("tqdm.auto")
    fake.tqdm = lambda **kw: seen.update(kw)
    monkeypatch.setitem(sys.modules, "tqdm", types.ModuleType("tqdm"))
    monkeypatch.setitem(sys.modules, "tqdm.auto", fake)
    run_mod._progress(True, 10, 0)
    assert seen["disable"] is None and seen["total"] == 10
