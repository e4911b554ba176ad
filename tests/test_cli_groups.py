"""``--groups COLUMN`` through the command line: text or numeric group labels (CSV
column or NPZ array), each group's rows in one fold; missing labels refused."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from torchpenalty import cli
from torchpenalty import data as data_mod

QUICK = ["--quiet", "--epochs", "4", "--strengths", "1e-3:1:3", "--folds", "3",
         "--model", "linear"]  # fmt: skip
NAMES = ["ana", "bo", "cy", "dee", "ed", "flo", "gus", "hal", "ivy", "jo"]


def rows(seed=0):
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(10), 5)
    X = rng.normal(size=(50, 2)) + subject[:, None] * 0.1
    y = X @ np.array([1.0, -0.5]) + rng.normal(size=50) * 0.1
    return subject, X, y


def write_csv(path, labels, X, y):
    with open(path, "w") as f:
        f.write("a,who,b,target\n")
        for g, (a, b), t in zip(labels, X, y, strict=True):
            f.write(f"{float(a)!r},{g},{float(b)!r},{float(t)!r}\n")


def sweep(args, tmp_path, name, capsys):
    out = tmp_path / name
    code = cli.main(["sweep", *QUICK, *args, "--out", str(out)])
    err = capsys.readouterr().err
    return code, err, (json.loads((out / "report.json").read_text()) if code == 0 else None)


@pytest.fixture
def spy(monkeypatch):
    import torchpenalty.sweep.run as core

    seen = []
    real = core.group_kfold

    def spying(groups, k, seed):
        splits = real(groups, k, seed)
        seen.append([(set(groups[tr].tolist()), set(groups[va].tolist())) for tr, va in splits])
        return splits

    monkeypatch.setattr(core, "group_kfold", spying)
    return seen


def test_text_labels_equal_the_same_groups_as_numbers(tmp_path, capsys, spy):
    subject, X, y = rows()
    write_csv(tmp_path / "text.csv", [NAMES[s] for s in subject], X, y)
    write_csv(tmp_path / "num.csv", subject, X, y)
    reports = []
    for name in ("text", "num"):
        code, err, rep = sweep(["--data", str(tmp_path / f"{name}.csv"), "--target", "target",
                                "--groups", "who"], tmp_path, name, capsys)  # fmt: skip
        assert code == 0, err
        reports.append(rep)
    text, num = reports
    assert text["data"]["features"] == ["a", "b"] and text["settings"]["groups"] == 10
    # the names sort as the numbers do: the same ids, the same folds, the same figures
    assert spy[0] == spy[1]
    for train, val in spy[0]:
        assert not train & val and len(train | val) == 10
    assert text["best_strength"] == num["best_strength"]
    assert text["table"] == num["table"] and text["records"] == num["records"]


def test_npz_text_array(tmp_path, capsys, spy):
    subject, X, y = rows(1)
    np.savez(tmp_path / "d.npz", X=X, y=y, who=np.array([NAMES[s] for s in subject]))
    code, err, rep = sweep(["--data", str(tmp_path / "d.npz"), "--groups", "who"], tmp_path,
                           "npz", capsys)  # fmt: skip
    assert code == 0, err
    assert rep["settings"]["groups"] == 10 and rep["data"]["features"] == ["x0", "x1"]
    for train, val in spy[0]:
        assert not train & val


@pytest.mark.parametrize(
    ("cell", "match"),
    [
        ("", r"--groups column 'who' must have a label in every row, got an empty cell in row 4"),
        ("NA", r"--groups column 'who' must have a label in every row, got 'NA' \(reads as missing\) in row 4"),
        ("nan", r"--groups column 'who' must have a label in every row, got 'nan' \(reads as missing\) in row 4"),
    ],
    ids=["empty", "NA", "nan"],
)  # fmt: skip
def test_missing_label_is_refused_naming_column_and_row(tmp_path, capsys, cell, match):
    subject, X, y = rows()
    labels = [NAMES[s] for s in subject]
    labels[2] = cell  # data row 3 is line 4
    write_csv(tmp_path / "d.csv", labels, X, y)
    code, err, _ = sweep(["--data", str(tmp_path / "d.csv"), "--groups", "who"], tmp_path, "r",
                         capsys)  # fmt: skip
    assert code == 2
    assert err.count("\n") == 1 and re.search(match, err), err


@pytest.mark.parametrize(
    ("arrays", "groups", "match"),
    [
        ({"who": np.arange(3)}, "who", r"--groups array 'who' must hold one label per row of X \(50\), got shape \(3,\)"),
        ({"who": np.where(np.arange(50) == 7, np.nan, 1.0)}, "who", r"--groups array 'who' must have a label in every row, got nan \(reads as missing\) in row 7"),
        ({}, "y", r"--groups must name an array of the .npz other than 'X' and 'y', one of \[\], got 'y'"),
    ],
    ids=["shape", "nan", "target"],
)  # fmt: skip
def test_bad_npz_groups(tmp_path, capsys, arrays, groups, match):
    _, X, y = rows()
    np.savez(tmp_path / "d.npz", X=X, y=y, **arrays)
    code, err, _ = sweep(["--data", str(tmp_path / "d.npz"), "--groups", groups], tmp_path,
                         "r", capsys)  # fmt: skip
    assert code == 2 and re.search(match, err), err


def test_load_keeps_ids_and_refuses_groups_without_a_file(tmp_path):
    subject, X, y = rows()
    write_csv(tmp_path / "d.csv", [f" {NAMES[s]}" for s in subject], X, y)
    ds = data_mod.load(str(tmp_path / "d.csv"), target="target", groups="who")
    np.testing.assert_array_equal(ds.groups, subject)
    np.testing.assert_array_equal(ds.X, X)
    with pytest.raises(data_mod.DataError, match="column 'who': ' ana' is not a number"):
        data_mod.load(str(tmp_path / "d.csv"), target="target")  # a feature without groups=
    write_csv(tmp_path / "n.csv", subject, X, y)
    assert data_mod.load(str(tmp_path / "n.csv"), target="target").groups is None
    with pytest.raises(data_mod.DataError, match="groups must name a column of the CSV other "
                       r"than the target 'target', one of \['a', 'who', 'b'\], got 'target'"):  # fmt: skip
        data_mod.load(str(tmp_path / "d.csv"), target="target", groups="target")
    with pytest.raises(data_mod.DataError, match="groups applies to a data file"):
        data_mod.load(None, groups="who")
