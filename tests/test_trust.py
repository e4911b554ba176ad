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
