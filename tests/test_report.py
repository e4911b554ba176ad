"""Putting a run folder to work: tp.load_sweep, `torchpenalty predict`, held-out test
data (--test / test=), grouped folds (--groups / groups=), a run where everything
diverges, and report.py's writer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, load_iris
from torch import nn

import torchpenalty as tp
from torchpenalty import cli, report

QUICK = ["--quiet", "--epochs", "6", "--strengths", "1e-3:1:3", "--folds", "3"]


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _csv(path, X, y, names=None, target="target"):
    names = names or [f"x{j}" for j in range(X.shape[1])]
    with open(path, "w") as f:
        f.write(",".join([*names, target]) + "\n")
        for row, label in zip(X, y):
            f.write(",".join(f"{v:.6g}" for v in row) + f",{label}\n")


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("iris")
    X, y = load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    rng = np.random.default_rng(0)
    test = rng.permutation(150)[:30]
    train = np.setdiff1d(np.arange(150), test)
    _csv(d / "train.csv", X[train], labels[train])
    _csv(d / "test.csv", X[test], labels[test])
    out = d / "run"
    code = cli.main(["sweep", *QUICK, "--data", str(d / "train.csv"), "--test",
                     str(d / "test.csv"), "--model", "linear", "--out", str(out)])  # fmt: skip
    assert code == 0
    return d, out, X[test], labels[test]


def test_load_sweep_rebuilds_result_and_model(iris_run, capsys):
    _d, out, X_test, y_test = iris_run
    saved = json.loads((out / "report.json").read_text())
    r = tp.load_sweep(str(out))
    assert r.loss == "cross_entropy" and r.classes == ["setosa", "versicolor", "virginica"]
    assert [row["val_loss_mean"] for row in r.table] == pytest.approx(
        [row["val_loss_mean"] for row in saved["table"]]
    )
    assert r.best_strength == saved["best_strength"] and r.refit_at == "best"
    pred = r.predict(X_test)
    assert set(pred.tolist()) <= set(r.classes)
    assert np.mean(pred == y_test) == pytest.approx(saved["test"]["accuracy"])
    assert "warning" in str(r) or "strength" in str(r)


def test_test_file_is_scored_and_reported(iris_run, capsys):
    _d, out, _X, _y = iris_run
    saved = json.loads((out / "report.json").read_text())
    assert saved["test"]["rows"] == 30 and 0 <= saved["test"]["accuracy"] <= 1
    assert saved["test"]["loss"] > 0


def test_predict_command(iris_run, capsys, tmp_path):
    d, out, X_test, _y = iris_run
    r = tp.load_sweep(str(out))
    code, stdout, err = run(["predict", str(out), "--data", str(d / "test.csv")], capsys)
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert lines[0] == "prediction" and lines[1:] == r.predict(X_test).tolist()
    dest = tmp_path / "pred.csv"
    code, stdout, _ = run(["predict", str(out), "--data", str(d / "test.csv"), "--out",
                           str(dest)], capsys)  # fmt: skip
    assert code == 0 and "30 predictions" in stdout
    assert dest.read_text().splitlines() == lines
    # one line for every problem
    (tmp_path / "bad.csv").write_text("x0,x1\n1,2\n")
    for args, match in [
        (["predict", str(tmp_path), "--data", str(d / "test.csv")], "no report.json there"),
        (["predict", str(out), "--data", str(tmp_path / "bad.csv")], "missing feature columns ['x2', 'x3']"),
        (["predict", str(out), "--data", str(tmp_path / "none.csv")], "no such file"),
    ]:  # fmt: skip
        code, _, err = run(args, capsys)
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_load_sweep_regression_equals_the_sweeps_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["sweep", *QUICK, "--out", str(out)], capsys)[0] == 0
    r = tp.load_sweep(str(out))
    X, _ = load_diabetes(return_X_y=True)
    state = torch.load(out / "model.pt", weights_only=True)
    ref = cli.build_model_factory("mlp:32,32", 10, 1)()
    ref.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    assert state["x_mean"].dtype == state["y_std"].dtype == torch.float64  # full precision
    x = torch.tensor(X[:5], dtype=torch.float64)  # standardized in float64, then cast
    z = ((x - state["x_mean"]) / state["x_std"]).float()
    want = ref(z).double() * state["y_std"] + state["y_mean"]
    np.testing.assert_allclose(r.predict(X[:5]), want.detach().numpy().ravel(), rtol=1e-12)
    with pytest.raises(report.ReportError, match="unfinished"):
        (out / "report.json").write_text(json.dumps({"inputs": {}, "complete": False}))
        tp.load_sweep(str(out))


def test_groups_column_keeps_groups_in_one_fold(tmp_path, capsys, monkeypatch):
    import torchpenalty.sweep.run as core

    rng = np.random.default_rng(0)
    subject = np.repeat(np.arange(12), 5)
    X = rng.normal(size=(60, 3)) + subject[:, None] * 0.1
    y = X @ np.array([1.0, -1.0, 0.5]) + rng.normal(size=60) * 0.1
    path = tmp_path / "d.csv"
    _csv(path, np.column_stack([subject, X]), y, names=["subject", "a", "b", "c"])
    seen = {}
    real = core.group_kfold

    def spy(groups, k, seed):
        splits = real(groups, k, seed)
        seen["splits"] = [(set(groups[tr]), set(groups[va])) for tr, va in splits]
        return splits

    monkeypatch.setattr(core, "group_kfold", spy)
    out = tmp_path / "run"
    code, _, err = run(["sweep", *QUICK, "--data", str(path), "--target", "target",
                        "--groups", "subject", "--model", "linear", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert len(seen["splits"]) == 3
    for train_groups, val_groups in seen["splits"]:
        assert not train_groups & val_groups  # no subject on both sides
    saved = json.loads((out / "report.json").read_text())
    assert saved["data"]["features"] == ["a", "b", "c"] and saved["settings"]["groups"] == 12
    code, _, err = run(["sweep", *QUICK, "--data", str(path), "--groups", "nope", "--out",
                        str(tmp_path / "r2")], capsys)  # fmt: skip
    assert code == 2 and "--groups must name a column of the CSV" in err and "got 'nope'" in err
    code, _, err = run(
        ["sweep", *QUICK, "--groups", "subject", "--out", str(tmp_path / "r3")], capsys
    )
    assert code == 2 and "--groups applies to a --data file" in err


def test_every_strength_diverging_still_writes_a_report(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(["sweep", *QUICK, "--optimizer", "sgd", "--lr", "50", "--out",
                             str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert "none (every strength diverged)" in stdout and "diverged" in stdout
    saved = json.loads((out / "report.json").read_text())
    assert saved["complete"] is True and saved["best_strength"] is None
    assert saved["model"] is None and not (out / "model.pt").exists()
    assert any("diverged" in w for w in saved["warnings"])


def test_test_and_groups_in_the_python_api():
    X, y = load_diabetes(return_X_y=True)
    kw = dict(strengths=[1e-3, 1.0], folds=3, epochs=30, lr=0.1, batch_size=None, progress=False)
    r = tp.sweep(lambda: nn.Linear(10, 1), (X[:300], y[:300]), test=(X[300:], y[300:]), **kw)
    mse = float(np.mean((r.predict(X[300:]).ravel() - y[300:]) ** 2))
    assert r.test["rows"] == 142 and r.test["loss"] == pytest.approx(mse, rel=1e-4)
    groups = np.arange(300) // 10
    g = tp.sweep(lambda: nn.Linear(10, 1), (X[:300], y[:300]), groups=groups, **kw)
    assert g.settings["groups"] == 30
    for bad, error, match in [
        ({"groups": groups[:10]}, ValueError, r"groups must be one label per row of X \(300\), got shape \(10,\)"),
        ({"groups": np.zeros(300)}, ValueError, r"folds must be at most the number of groups \(1\), got 3"),
        ({"test": X[300:]}, TypeError, r"test must be a pair \(X_test, y_test\), got 'ndarray'"),
        ({"test": (X[300:, :4], y[300:])}, ValueError, r"test must be \(X_test, y_test\) with X_test of shape \(rows, 10\), got X_test of shape \(142, 4\)"),
        ({"test": (X[300:], y[300:], 1)}, TypeError, r"test must be a pair"),
    ]:  # fmt: skip
        with pytest.raises(error, match=match):
            tp.sweep(lambda: nn.Linear(10, 1), (X[:300], y[:300]), **{**kw, **bad})
    with pytest.raises(ValueError, match=r"test must be labels that appear in y, got \[9\]"):
        Xi, yi = load_iris(return_X_y=True)
        tp.sweep(lambda: nn.Linear(4, 3), (Xi, yi), test=(Xi[:2], np.array([0, 9])), **kw)


def test_write_atomic_keeps_old_file_and_names_the_file_on_error(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")
    monkeypatch.setattr(
        os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    )
    with pytest.raises(report.ReportError, match=f"cannot write {target}: No space left on device"):
        report.write_atomic(str(target), "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]
