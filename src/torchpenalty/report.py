"""Run folders: ``report.json``, ``checkpoint.pt``, the table, plots and the refit model,
written so that a run survives any stop (the command line wires this to ``tp.sweep``).

Fault model: every file is written atomically (a temporary file in the same folder,
``fsync``, ``os.replace``, then ``fsync`` of the folder), so a reader sees the old file or
the new one, never a mix, even after power loss. The checkpoint (the sweep's resume
state) is written before ``report.json`` and both carry the same ``seq`` number: a stop
between the two leaves a checkpoint one step ahead of the report, and a resume continues
from the checkpoint. Records are keyed by (strength, fold), so nothing is trained twice
or counted twice. A lock file keeps two runs out of one folder. Signals that ask a
process to stop (SIGINT, SIGTERM, SIGHUP) are held back while a save is under way.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> write_atomic(os.path.join(d, "a.txt"), "hello")
>>> open(os.path.join(d, "a.txt")).read()
'hello'
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import os
import re
import secrets
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = [
    "CHECKPOINT",
    "MANIFEST",
    "REPORT",
    "RUN_FILES",
    "ReportError",
    "RunLock",
    "file_sha256",
    "foreign_files",
    "holds_run",
    "is_own",
    "load_checkpoint",
    "load_report",
    "load_sweep",
    "model_from_spec",
    "read_manifest",
    "remove_run",
    "remove_temporaries",
    "shielded",
    "stop_signals",
    "write_atomic",
    "write_checkpoint",
    "write_outputs",
    "write_report",
    "write_run_files",
]

REPORT, CHECKPOINT, MODEL, TABLE, LOCK, MANIFEST = (
    "report.json",
    "checkpoint.pt",
    "model.pt",
    "sweep.csv",
    ".lock",
    ".torchpenalty-manifest.json",
)
PLOTS = ("validation.png", "norm.png", "learning.png")
#: Files a run writes. ``--overwrite`` removes those the run's manifest vouches for
#: (listed with the sha256 of what the run wrote) and nothing else.
RUN_FILES = (REPORT, CHECKPOINT, MODEL, TABLE, *PLOTS)
#: Temporary files are ``TMP_PREFIX + "<pid>-<16 hex digits>"``: only this process makes
#: its names, and a leftover is removed only under that exact name, once its process is gone.
TMP_PREFIX = ".torchpenalty-tmp-"
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-[0-9a-f]{16}")


class ReportError(Exception):
    """A run folder that cannot be written or read: one line for the user."""


# ---------------------------------------------------------------------------- writing
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``path`` through a temporary file in the same folder, ``fsync`` it, rename
    it over ``path`` and ``fsync`` the folder: a stop at any instant leaves the old file
    or the new one. The file gets the permissions of ``open()`` (0666 less the umask).
    Any ``OSError`` becomes a :class:`ReportError` naming the file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        name = f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        fd = os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        tmp = os.path.join(folder, name)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(folder)
    except OSError as e:
        raise ReportError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _fsync_dir(folder: str) -> None:
    if os.name != "posix":  # pragma: no cover - Windows cannot open folders
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def versions() -> dict[str, str]:
    import numpy
    import torch

    from . import __version__

    return {
        "torchpenalty": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
    }


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (the data fingerprint a resume checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(folder: str) -> dict[str, list[str]]:
    """The run's manifest: file name -> the sha256 of each version the run wrote that may
    be on disk. Missing or unreadable: empty (no file is provably the run's)."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            m = json.load(f)
        files = m["files"]
        ok = isinstance(files, dict) and all(
            n in RUN_FILES and isinstance(v, list) and all(isinstance(h, str) for h in v)
            for n, v in files.items()
        )
        return dict(files) if ok else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def is_own(folder: str, name: str, manifest: dict[str, list[str]] | None = None) -> bool:
    """Whether ``folder/name`` is a regular file the run wrote, as its manifest says."""
    path = os.path.join(folder, name)
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    hashes = (read_manifest(folder) if manifest is None else manifest).get(name, [])
    return bool(hashes) and file_sha256(path) in hashes


def write_run_files(folder: str, files: dict[str, bytes]) -> None:
    """Write run files atomically, in order, each vouched for by the manifest first: the
    manifest lists the new content's sha256 (and the old one, which stays on disk if a
    write fails) before the file is written."""
    manifest = read_manifest(folder)
    for name, data in files.items():
        old = [h for h in manifest.get(name, []) if is_own(folder, name, {name: [h]})]
        manifest[name] = [*old[-1:], _sha256(data)]
    write_atomic(os.path.join(folder, MANIFEST), json.dumps({"files": manifest}, indent=1))
    for name, data in files.items():
        write_atomic(os.path.join(folder, name), data)


def foreign_files(folder: str) -> list[str]:
    """Files under a run file's name that the manifest does not vouch for (someone
    else's, or changed since the run wrote them)."""
    manifest = read_manifest(folder)
    names = [n for n in RUN_FILES if os.path.lexists(os.path.join(folder, n))]
    return [n for n in names if not is_own(folder, n, manifest)]


def remove_run(folder: str) -> list[str]:
    """``--overwrite``: remove the run's own files (those its manifest vouches for) and
    the manifest; nothing else. Refuses (:class:`ReportError`, nothing removed) when a
    file under a run file's name is not the run's. Returns the names removed."""
    foreign = foreign_files(folder)
    if foreign:
        raise ReportError(
            f"its {foreign[0]} was not written by a torchpenalty run (or changed since): "
            "move it away; nothing was removed"
        )
    gone = [n for n in RUN_FILES if os.path.lexists(os.path.join(folder, n))]
    for name in [*gone, MANIFEST]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, name))
    return gone


def write_checkpoint(folder: str, state: dict[str, Any], seq: int, header: dict) -> None:
    """The sweep's resume state, tagged with ``seq`` and carrying the report's ``header``
    (settings, data, fingerprint), so that it alone is enough to resume: it is written
    before the report, and a stop between the two must not strand it."""
    payload = {**state, "seq": seq, "header": header}
    write_run_files(folder, {CHECKPOINT: _torch_bytes(payload)})


def write_report(folder: str, result: Any, header: dict[str, Any], **extra: Any) -> None:
    """``sweep.csv`` and ``report.json``: ``header`` (inputs, data, fingerprint), the
    result's dict, the versions and ``extra`` (``complete``, ``seq``, ``model``...)."""
    write_run_files(folder, _report_files(result, header, **extra))


def _report_files(result: Any, header: dict[str, Any], **extra: Any) -> dict[str, bytes]:
    report = {**header, **json.loads(result.to_json()), "versions": versions(), **extra}
    return {
        TABLE: _csv_text(result.table).encode(),
        REPORT: (json.dumps(report, indent=2) + "\n").encode(),
    }


def write_plots(folder: str, result: Any) -> None:
    """The validation curve, the parameter norms and the learning curves as PNG files."""
    write_run_files(folder, _plot_files(result))


def _plot_files(result: Any) -> dict[str, bytes]:
    if not result.records:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    for name in PLOTS:
        disp = result.plot(kind=name.removesuffix(".png"))
        buf = io.BytesIO()
        disp.figure_.savefig(buf, format="png", dpi=110)  # constrained layout keeps legends
        plt.close(disp.figure_)
        files[name] = buf.getvalue()
    return files


def write_outputs(folder: str, result: Any, header: dict[str, Any], model_info: dict) -> None:
    """A finished run: the refit model's state dict (none when every strength diverged),
    the plots and the complete report; then the checkpoint is no longer needed."""
    files = {}
    if result.model is not None:
        files[MODEL] = _torch_bytes(result.model.state_dict())
    files.update(_plot_files(result))
    files.update(_report_files(result, header, model=model_info))
    write_run_files(folder, files)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, CHECKPOINT))


def remove_temporaries(folder: str) -> None:
    """Remove the temporary files of writes that never finished (a process killed in the
    middle of :func:`write_atomic`): only names this library makes
    (``TMP_PREFIX<pid>-<16 hex>``) whose process no longer runs; call it only while
    holding the folder's lock. Anything else (a user's ``.tmp-notes``) stays."""
    for name in os.listdir(folder):
        m = _TMP_NAME.fullmatch(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


# ---------------------------------------------------------------------------- reading
def holds_run(folder: str) -> bool:
    """Whether ``folder`` holds a run (finished or not)."""
    return any(os.path.lexists(os.path.join(folder, f)) for f in (REPORT, CHECKPOINT))


def load_report(folder: str) -> dict[str, Any]:
    """``report.json`` of a run folder, checked for the keys a resume needs."""
    path = os.path.join(folder, REPORT)
    if not os.path.lexists(path):
        raise ReportError(f"no {REPORT} there (not a torchpenalty run folder)")
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except IsADirectoryError:
        raise ReportError(f"{REPORT} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{REPORT} cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{REPORT} is not valid JSON ({e}): truncated or corrupt") from None
    if not isinstance(report, dict) or not isinstance(report.get("inputs"), dict):
        raise ReportError(f"{REPORT} has no 'inputs' section: not written by torchpenalty")
    return report


_STATE_KEYS = ("settings", "strengths", "chunk_size", "records")


def load_checkpoint(folder: str) -> dict[str, Any]:
    """The resume state in ``checkpoint.pt``, loaded with ``weights_only=True`` (tensors
    and plain containers only: no code from the file ever runs)."""
    import pickle

    import torch

    path = os.path.join(folder, CHECKPOINT)
    if not os.path.lexists(path):
        raise ReportError(f"no {CHECKPOINT} there")
    if os.path.isdir(path):
        raise ReportError(f"{CHECKPOINT} is a folder, not a file")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:  # torch's message would suggest weights_only=False
        if "Unsupported global" in str(e):
            raise ReportError(
                f"{CHECKPOINT} holds objects other than tensors and plain containers; "
                "it is not loaded, since loading them could run code"
            ) from None
        raise ReportError(
            f"{CHECKPOINT} is corrupt or truncated (not a sweep checkpoint)"
        ) from None
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        if "weights_only" in first:
            first = type(e).__name__
        raise ReportError(f"{CHECKPOINT} is corrupt or truncated ({first})") from None
    if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
        raise ReportError(f"{CHECKPOINT} is not a sweep checkpoint (missing keys)")
    header = state.get("header")
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), dict):
        raise ReportError(f"{CHECKPOINT} has no run settings (written by an older version?)")
    return state


# ---------------------------------------------------------------------------- loading
def model_from_spec(spec: str, n_in: int, n_out: int) -> Any:
    """A factory for the command line's models: ``linear`` or ``mlp:W1,W2,...[:act]``
    (activation relu, tanh, gelu or silu; default relu).

    >>> model_from_spec("mlp:8,4:tanh", 3, 1)()
    Sequential(
      (0): Linear(in_features=3, out_features=8, bias=True)
      (1): Tanh()
      (2): Linear(in_features=8, out_features=4, bias=True)
      (3): Tanh()
      (4): Linear(in_features=4, out_features=1, bias=True)
    )
    """
    from torch import nn

    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}
    parts = spec.split(":") if isinstance(spec, str) else []
    bad = ValueError(
        f"model must be 'linear' or 'mlp:W1,W2[,...][:{'|'.join(acts)}]', got {spec!r}"
    )
    if parts == ["linear"]:
        return functools.partial(_spec_model, (), "relu", n_in, n_out)
    if not parts or parts[0] != "mlp" or len(parts) not in (2, 3):
        raise bad
    try:
        widths = [int(w) for w in parts[1].split(",")]
    except ValueError:
        raise bad from None
    act = parts[2] if len(parts) == 3 else "relu"
    if act not in acts or not widths or any(w < 1 for w in widths):
        raise bad
    # a partial of a top-level function: picklable, for workers (--workers, --executor)
    return functools.partial(_spec_model, tuple(widths), act, n_in, n_out)


def _spec_model(widths: tuple[int, ...], act: str, n_in: int, n_out: int) -> Any:
    """The model of :func:`model_from_spec` (no widths: one ``nn.Linear``)."""
    from torch import nn

    if not widths:
        return nn.Linear(n_in, n_out)
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}
    layers, d = [], n_in
    for w in widths:
        layers += [nn.Linear(d, w), acts[act]()]
        d = w
    return nn.Sequential(*layers, nn.Linear(d, n_out))


_FLOAT_FIELDS = ("val_loss", "train_loss", "param_norm", "zero_fraction", "val_accuracy")


def load_sweep(folder: str) -> Any:
    """Rebuild the :class:`~torchpenalty.sweep.SweepResult` of a finished run folder (as
    ``torchpenalty sweep`` writes it) with its refit model: from ``report.json`` and
    ``model.pt`` only, loaded with ``weights_only=True`` (no pickle, no code from the
    folder runs). ``result.predict(X)`` then works as after ``tp.sweep``.

    Raises :class:`ReportError` with one line when the folder is not a finished run.

    >>> import contextlib, io, os, tempfile, torchpenalty as tp
    >>> from torchpenalty import cli
    >>> tmp = tempfile.TemporaryDirectory(); folder = os.path.join(tmp.name, "run")
    >>> with contextlib.redirect_stdout(io.StringIO()):  # linear + L2: the closed form
    ...     code = cli.main(["sweep", "--model", "linear", "--out", folder, "--quiet"])
    >>> code, tp.load_sweep(folder).best_strength
    (0, 0.00316228)
    >>> tmp.cleanup()
    """
    from .sweep.engine import Record
    from .sweep.result import SweepResult

    report = load_report(folder)
    if report.get("complete") is not True:
        raise ReportError("the run is unfinished: finish it with torchpenalty sweep --resume first")
    try:
        _check_shape(report)
        records = []
        for r in report["records"]:
            r = {**r, **{k: math.nan for k in _FLOAT_FIELDS if r.get(k, 0) is None}}
            if "val_accuracy" in r and report.get("classes") is None:
                r["val_accuracy"] = None
            records.append(Record(**r))
        result = SweepResult(report["strengths"], report["folds"], records,
                             report["settings"], refit_at=report.get("refit"),
                             classes=report.get("classes"), data_name=report.get("data_name"),
                             model_name=report.get("model_name"),
                             curves=report.get("learning_curves"))  # fmt: skip
        if report["settings"].get("folds") == "loo":  # exact leave-one-out: its own table
            result.given_table = [{**r, **{k: math.nan for k, v in r.items() if v is None}}
                                  for r in report["table"]]  # fmt: skip
        if report["settings"]["loss"] not in ("mse", "cross_entropy"):
            raise ReportError(f"{REPORT} has a bad entry (settings.loss "
                              f"{str(report['settings']['loss'])[:40]!r})")  # fmt: skip
        model = report.get("model")
        if model:
            result.model = _load_model(folder, model, report["settings"]["loss"])
        if report.get("test"):
            result.test = report["test"]
    except ReportError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError) as e:
        what = f"{type(e).__name__}: {str(e)[:60]}" if str(e) else type(e).__name__
        raise ReportError(f"{REPORT} is missing or has a bad entry ({what})") from None
    return result


def _check_shape(report: dict[str, Any]) -> None:
    """The entries a result is rebuilt from have the types torchpenalty writes."""
    strengths, folds, records = report["strengths"], report["folds"], report["records"]
    numbers = isinstance(strengths, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in strengths
    )
    if not numbers or not strengths:
        raise ReportError(f"{REPORT} has a bad entry (strengths: a list of numbers)")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ReportError(f"{REPORT} has a bad entry (folds: an integer >= 2)")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ReportError(f"{REPORT} has a bad entry (records: a list of objects)")
    if not isinstance(report["settings"], dict):
        raise ReportError(f"{REPORT} has a bad entry (settings: an object)")


def _load_model(folder: str, info: dict[str, Any], loss: str) -> Any:
    import torch

    from .sweep.result import StandardizedModel

    path = os.path.join(folder, MODEL)
    if not os.path.isfile(path):
        raise ReportError(f"no {MODEL} there")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        make = model_from_spec(info["model"], info["n_features"], info["n_outputs"])
        regression = loss != "cross_entropy"
        model = StandardizedModel(make(), state["x_mean"], state["x_std"],
                                  state["y_mean"] if regression else None,
                                  state["y_std"] if regression else None)  # fmt: skip
        model.load_state_dict(state)
    except ReportError:
        raise
    except Exception as e:  # never suggest weights_only=False: the message is ours
        raise ReportError(f"{MODEL} cannot be loaded ({type(e).__name__})") from None
    return model.eval()


# ---------------------------------------------------------------------------- locking
class RunLock:
    """``folder/.lock`` holding this process's id, taken with ``O_EXCL``: a second run on
    the folder is refused; the lock of a process that no longer runs is taken over (with a
    message on stderr)."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, LOCK)
        self.taken = False

    def __enter__(self) -> RunLock:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as e:
                folder = os.path.dirname(self.path)
                raise ReportError(
                    f"{folder} is not writable (cannot create its {LOCK}: {e.strerror or e})"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.taken = True
            return self
        raise ReportError(f"cannot take the lock {self.path}")

    def _take_over_if_stale(self) -> None:
        if os.path.isdir(self.path) or not (
            os.path.isfile(self.path) or not os.path.lexists(self.path)
        ):
            raise ReportError(
                f"its {LOCK} is not a lock file (a folder or a special file): remove it"
            )
        try:
            with open(self.path) as f:
                pid = int(f.read().strip() or "0")
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and pid != os.getpid() and _alive(pid):
            folder = os.path.dirname(self.path)
            raise ReportError(
                f"{folder} is in use by another run (process {pid}; if that process is not "
                f"a torchpenalty run, remove {self.path})"
            )
        print(f"torchpenalty: taking over the stale lock of process {pid or '?'} "
              "(no longer running)", file=sys.stderr)  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __exit__(self, *exc: Any) -> None:
        if self.taken:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.taken = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or no such pid at all
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# ---------------------------------------------------------------------------- signals
STOP_SIGNALS = tuple(
    getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)
)
_received: list[int] = []


def _raise_interrupt(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP (what schedulers and closed terminals send) raise
    ``KeyboardInterrupt`` as Ctrl-C does; yields the list of signals received."""
    _received.clear()
    if not _main_thread():
        yield _received
        return
    old = {s: signal.signal(s, _raise_interrupt) for s in STOP_SIGNALS}
    try:
        yield _received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def shielded(interrupt_after: bool = True) -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back while a save runs; a signal that came meanwhile
    raises ``KeyboardInterrupt`` once the save is done (with ``interrupt_after``)."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)
        print("\ntorchpenalty: saving, please wait", file=sys.stderr)

    old = {s: signal.signal(s, hold) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if pending:
        _received.extend(pending)
        if interrupt_after:
            raise KeyboardInterrupt
