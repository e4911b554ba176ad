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
