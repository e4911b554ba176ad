"""The fault model of a run folder (README "Fault model"): signals sent to a real
``python -m torchpenalty sweep`` at random points, a full disk at every write, a second
Ctrl-C while saving, two runs on one folder, stale locks, refused folders and resumes.

After every fault the folder must be resumable (or, when nothing had finished, restartable)
and the finished run must equal an uninterrupted one. ``TP_FAULT_TRIALS=N`` runs N signal
trials per signal instead of one.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from torchpenalty import cli, report
from torchpenalty.sweep.engine import Engine

SRC = str(Path(__file__).resolve().parents[1] / "src")
ARGS = ["--quiet", "--epochs", "5", "--strengths", "1e-3:1:3", "--folds", "3",
        "--no-vectorize", "--model", "mlp:16"]  # fmt: skip
TRIALS = int(os.environ.get("TP_FAULT_TRIALS", "1"))


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert cli.main(["sweep", *ARGS, "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


def assert_same_run(folder, reference, leftover_checkpoint=False):
    done = json.loads((Path(folder) / "report.json").read_text())
    assert done["complete"] is True, done.get("complete")
    keys = [(r["i"], r["fold"]) for r in done["records"]]
    assert len(keys) == len(set(keys)) == 9  # every (strength, fold) once
    assert all(row["folds_done"] == 3 for row in done["table"])
    np.testing.assert_allclose([r["val_loss_mean"] for r in done["table"]],
                               [r["val_loss_mean"] for r in reference["table"]], rtol=1e-5)  # fmt: skip
    assert done["best_strength"] == reference["best_strength"]
    assert leftover_checkpoint or not (Path(folder) / "checkpoint.pt").exists()
    assert not [n for n in os.listdir(folder) if n.startswith(report.TMP_PREFIX) or n == ".lock"]


def _complete(folder):
    path = Path(folder) / "report.json"
    return path.exists() and json.loads(path.read_text())["complete"]


def finish(folder, capsys):
    """Resume ``folder``; a folder where nothing was saved yet is started again."""
    if any((Path(folder) / n).exists() for n in ("report.json", "checkpoint.pt")):
        code, _, err = run(["sweep", "--quiet", "--resume", str(folder)], capsys)
    else:
        code, _, err = run(["sweep", *ARGS, "--out", str(folder)], capsys)
    assert code == 0, err
    return err


# ---------------------------------------------------------------------------- signals
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_at_a_random_point_then_resume(tmp_path, capsys, reference, sig):
    rng = random.Random(int(time.time() * 1000) ^ sig)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    outcomes = collections.Counter()
    for trial in range(TRIALS):
        out = tmp_path / f"run{trial}"
        proc = subprocess.Popen([sys.executable, "-m", "torchpenalty", "sweep", *ARGS,
                                 "--out", str(out)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        if rng.random() < 0.7:  # most signals land while models train
            deadline = time.monotonic() + 120
            while not (out / "report.json").exists() and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 2.5))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # it finished before the signal came
            outcomes["finished before the signal"] += 1
            assert_same_run(out, reference)
            continue
        outcomes[_outcome(proc.returncode, sig, out)] += 1
        # before the handlers are installed (interpreter start-up, imports) a signal
        # kills the process the default way; nothing had been saved then
        if (out / "report.json").exists() and proc.returncode != -sig:
            assert "Traceback" not in err, err
            assert proc.returncode == 128 + sig, (proc.returncode, err)
            assert "continue with: torchpenalty sweep --resume" in err, err
        if (out / "report.json").exists():
            partial = json.loads((out / "report.json").read_text())
            if partial["complete"]:  # stopped after the last save: nothing to resume
                assert_same_run(out, reference)
                continue
            assert (out / "checkpoint.pt").exists()  # the report never runs ahead of it
        had_lock = (out / ".lock").exists()
        msg = finish(out, capsys)
        if had_lock:  # only SIGKILL leaves a lock behind; the resume takes it over
            assert sig == signal.SIGKILL and "taking over the stale lock" in msg, msg
        assert_same_run(out, reference)
    print(f"\n{signal.Signals(sig).name}: {TRIALS} trials, all finished equal: {outcomes}")


def _outcome(code, sig, out):
    if code == 0:
        return "finished before the signal"
    if not (out / "report.json").exists():
        return "stopped before the first save"
    return "stopped with a saved run"


# ---------------------------------------------------------------------------- full disk
def _failing_fsync(monkeypatch, at):
    real, count = os.fsync, {"n": 0}

    def fsync(fd):
        count["n"] += 1
        if count["n"] == at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return count


def test_disk_full_at_every_write(tmp_path, capsys, monkeypatch, reference):
    """fsync is where a full disk shows up (delayed allocation): fail the Nth fsync of a
    run for every N; each time one line naming the file, exit 2, and the folder resumes."""
    count = _failing_fsync(monkeypatch, at=0)
    assert run(["sweep", *ARGS, "--out", str(tmp_path / "count")], capsys)[0] == 0
    total = count["n"]
    monkeypatch.undo()
    assert total > 20
    tried = 0
    for at in range(1, total + 1, 1 if TRIALS > 1 else 4):
        out = tmp_path / f"full{at}"
        _failing_fsync(monkeypatch, at)
        code, _, err = run(["sweep", *ARGS, "--out", str(out)], capsys)
        monkeypatch.undo()
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert "No space left on device" in lines[0] and f"cannot write {out}" in lines[0]
        assert not [n for n in os.listdir(out) if n.startswith(report.TMP_PREFIX) or n == ".lock"]
        if _complete(out):  # the last fsync (of the folder, after the final report) failed:
            code, _, err = run(["sweep", "--resume", str(out)], capsys)  # the data is there
            assert code == 2 and "that sweep already finished" in err
            assert_same_run(out, reference, leftover_checkpoint=True)
        else:
            finish(out, capsys)
            assert_same_run(out, reference)
        tried += 1
    print(f"disk full: {tried} of {total} write points tried, all resumed")


# ---------------------------------------------------------------------------- saving
def test_second_ctrl_c_while_saving_a_chunk(tmp_path, capsys, monkeypatch, reference):
    """Ctrl-C twice while a chunk's checkpoint is written: the save completes, the run
    stops resumable, and the resume does not train that chunk again."""
    real = report.write_checkpoint
    calls = {"n": 0}

    def interrupted_write(folder, state, seq, header):
        calls["n"] += 1
        if calls["n"] == 3:  # the save after the second chunk
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        real(folder, state, seq, header)

    monkeypatch.setattr(report, "write_checkpoint", interrupted_write)
    out = tmp_path / "run"
    code, _, err = run(["sweep", *ARGS, "--out", str(out)], capsys)
    monkeypatch.undo()
    assert code == 130 and "saving, please wait" in err, err
    partial = json.loads((out / "report.json").read_text())
    assert len(partial["records"]) == 2 and partial["complete"] is False
    trained = []
    real_run = Engine.run

    def counting(self, tasks, **kw):
        trained.extend((t.i, t.fold) for t in tasks)
        return real_run(self, tasks, **kw)

    monkeypatch.setattr(Engine, "run", counting)
    finish(out, capsys)
    done_before = {(r["i"], r["fold"]) for r in partial["records"]}
    assert not done_before & set(trained)  # nothing finished is trained again
    assert len(trained) == 9 - 2 + 1  # the rest, and the refit
    assert_same_run(out, reference)


# ---------------------------------------------------------------------------- locking
def test_two_runs_on_one_folder(tmp_path, capsys, reference):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "torchpenalty", "sweep", *ARGS, "--out",
                              str(out)], env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / ".lock").exists():
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.02)
    code, _, err = run(["sweep", *ARGS, "--out", str(out), "--overwrite"], capsys)
    assert code == 2 and f"is in use by another run (process {first.pid};" in err, err
    code, _, err = run(["sweep", "--quiet", "--resume", str(out)], capsys)
    assert code == 2, err  # resuming while it runs is refused too (lock or unfinished save)
    assert first.wait(timeout=300) == 0
    assert_same_run(out, reference)


def test_stale_lock_is_taken_over(tmp_path, capsys, reference):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{dead.pid}\n")
    (out / f"{report.TMP_PREFIX}{dead.pid}-0123456789abcdef").write_text("x")  # its leftover
    code, _, err = run(["sweep", *ARGS, "--out", str(out)], capsys)
    assert code == 0, err
    assert f"taking over the stale lock of process {dead.pid}" in err
    assert_same_run(out, reference)


# ---------------------------------------------------------------------------- folders
def test_out_holding_a_run_needs_resume_or_overwrite(tmp_path, capsys, reference):
    out = tmp_path / "run"
    assert run(["sweep", *ARGS, "--out", str(out)], capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    code, _, err = run(["sweep", *ARGS, "--out", str(out)], capsys)
    assert code == 2 and "holds a run already" in err and "--overwrite" in err
    code, _, err = run(["sweep", *ARGS, "--out", str(out), "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files go
    assert_same_run(out, reference)


def _interrupted_run(tmp_path, capsys, monkeypatch, args):
    real, count = Engine._penalty_step, {"n": 0}

    def flaky(self, *a):
        count["n"] += 1
        if count["n"] == 30:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(Engine, "_penalty_step", flaky)
    out = tmp_path / "run"
    assert run(["sweep", *args, "--out", str(out)], capsys)[0] == 130
    monkeypatch.undo()
    return out


def test_resume_checks_flags_data_and_works_from_another_folder(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    data = tmp_path / "d.csv"
    rows = "".join(f"{a:.5f},{b:.5f},{c:.5f},{a - 2 * c:.5f}\n" for a, b, c in X)
    data.write_text("a,b,c,y\n" + rows)
    monkeypatch.chdir(tmp_path)
    args = [*ARGS, "--data", "d.csv", "--model", "mlp:4"]  # trained (linear is exact now)
    out = _interrupted_run(tmp_path, capsys, monkeypatch, args)
    saved = json.loads((out / "report.json").read_text())
    assert saved["inputs"]["data"] == str(data)  # stored absolute
    code, _, err = run(["sweep", "--resume", str(out), "--epochs", "7"], capsys)
    assert code == 2 and "--epochs 7 conflicts with the run being resumed (--epochs 5)" in err
    code, _, err = run(["sweep", "--resume", str(out), "--out", "elsewhere"], capsys)
    assert code == 2 and "conflicts with --resume" in err
    code, _, err = run(["sweep", "--resume", str(out), "--overwrite"], capsys)
    assert code == 2 and "--overwrite conflicts with --resume" in err
    data.write_text("a,b,c,y\n" + rows.replace("1", "2", 1))  # one digit changed
    code, _, err = run(["sweep", "--quiet", "--resume", str(out)], capsys)
    assert code == 2 and "changed since the run started" in err, err
    data.write_text("a,b,c,y\n" + rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(["sweep", "--quiet", "--resume", str(out), "--epochs", "5"], capsys)
    assert code == 0, err  # the same value as saved is not a conflict
    assert json.loads((out / "report.json").read_text())["complete"] is True


BROKEN = [
    ("checkpoint.pt", b"", "checkpoint.pt is corrupt or truncated"),
    ("checkpoint.pt", b"\x80\x02garbage", "checkpoint.pt is corrupt or truncated"),
    ("checkpoint.pt", "truncate", "checkpoint.pt is corrupt or truncated"),
    ("checkpoint.pt", "pickle", "checkpoint.pt is corrupt or truncated"),
    ("checkpoint.pt", "object", "holds objects other than tensors"),
    ("checkpoint.pt", "wrong", "checkpoint.pt is not a sweep checkpoint"),
    ("checkpoint.pt", "no header", "checkpoint.pt has no run settings"),
    ("checkpoint.pt", "folder", "checkpoint.pt is a folder"),
    ("checkpoint.pt", "missing", "no checkpoint.pt there"),
    ("both", "missing", "no report.json there (not a torchpenalty run folder)"),
    ("report.json", b"", None),
    ("report.json", b'{"inputs": {"data": nu', None),
    ("report.json", b"[1, 2]", None),
    ("report.json", "folder", "report.json is a folder"),
    ("report.json", "missing", None),
]  # fmt: skip


def _break(path, content):
    import pickle

    import torch

    if content == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"settings": Path("x")}))
    elif content == "object":  # a torch.save file holding a class instance
        state = torch.load(path, weights_only=True)
        state["settings"]["penalty"] = Path("x")
        torch.save(state, path)
    elif content == "wrong":
        torch.save({"records": []}, path)
    elif content == "no header":
        state = torch.load(path, weights_only=True)
        del state["header"]
        torch.save(state, path)
    elif content == "missing":
        path.unlink()
    elif content == "folder":
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(content)


@pytest.mark.parametrize(("name", "content", "match"), BROKEN)
def test_broken_run_folder(tmp_path, capsys, monkeypatch, name, content, match):
    """A broken checkpoint: one line saying the folder cannot be resumed and why (never
    suggesting weights_only=False). A broken or missing report.json alone does not stop a
    resume: the checkpoint carries the settings, and the report is rewritten."""
    out = _interrupted_run(tmp_path, capsys, monkeypatch, ARGS)
    for n in ("report.json", "checkpoint.pt") if name == "both" else (name,):
        _break(out / n, content)
    code, _, err = run(["sweep", "--quiet", "--resume", str(out)], capsys)
    lines = err.strip().splitlines()
    if match is None:
        assert code == 0, err
        assert "; resuming from checkpoint.pt" in lines[0]
        assert json.loads((out / "report.json").read_text())["complete"] is True
        return
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("torchpenalty: error: --resume ") and len(lines[0]) < 200
    assert f"{out.parent.name}/{out.name}: cannot be resumed: " in lines[0]  # a long path cut
    assert match in lines[0], lines[0]
    assert "weights_only" not in err


@pytest.mark.parametrize("fix", [True, False], ids=["exit_with", "sys.exit"])
def test_an_interrupt_caught_inside_exec_keeps_the_exit_status(tmp_path, fix):
    """A stop signal handled inside code run by exec of a string (torch's lazy imports make
    dataclasses that way) marks the interrupt unhandled in CPython 3.11, and a ``python -m``
    process then exits by SIGINT (-2) whatever ``sys.exit`` says; ``exit_with`` (what
    ``python -m torchpenalty`` ends with) keeps the status."""
    exit_line = "exit_with(129)" if fix else "sys.exit(129)"
    (tmp_path / "stopper.py").write_text(
        "import os, signal, sys\n"
        "from torchpenalty.cli import exit_with\n"
        "def stop(signum, frame):\n"
        "    raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGHUP, stop)\n"
        "try:\n"
        "    exec('import os, signal\\nos.kill(os.getpid(), signal.SIGHUP)\\nx = 1')\n"
        "except KeyboardInterrupt:\n"
        "    pass\n"
        "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
        f"{exit_line}\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-m", "stopper"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    if fix:
        assert proc.returncode == 129, proc.stderr
    elif sys.version_info[:2] == (3, 11):  # the CPython behaviour the fix is for
        assert proc.returncode == -signal.SIGINT, proc.stderr
