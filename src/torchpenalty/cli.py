"""The ``torchpenalty`` command line (also ``python -m torchpenalty``).

``torchpenalty sweep`` cross-validates a penalty strength on a CSV/NPZ file or a bundled
data set and writes a report; ``torchpenalty explain MODULE:FACTORY`` shows which
parameters of your model the default rule regularizes. Only parsing and wiring live here:
:func:`torchpenalty.sweep` validates the arguments (its errors are printed with the
option's name), :mod:`torchpenalty.data` reads the data and :mod:`torchpenalty.report`
writes the run folder. torch is imported only once a command runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import itertools
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["main", "parse_strengths"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


# ---------------------------------------------------------------------------- parsing
def parse_strengths(text: str) -> list[float]:
    """``LO:HI:N`` (N values log-spaced from LO to HI) or a comma-separated list (the
    values are checked by the sweep).

    >>> parse_strengths("1e-4:1:5")
    [0.0001, 0.001, 0.01, 0.1, 1.0]
    >>> parse_strengths("0, 0.1,1")
    [0.0, 0.1, 1.0]
    """
    bad = CLIError(
        "--strengths must be LO:HI:N (0 < LO < HI, N >= 2) or a comma-separated list of "
        f"numbers >= 0, got {text!r}"
    )
    try:
        if ":" in text:
            lo_s, hi_s, n_s = text.split(":")
            lo, hi, n = float(lo_s), float(hi_s), int(n_s)
            if not (0 < lo < hi and n >= 2 and math.isfinite(hi)):
                raise bad
            step = (math.log10(hi) - math.log10(lo)) / (n - 1)
            return [float(f"{10 ** (math.log10(lo) + i * step):.6g}") for i in range(n)]
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad from None
    if not values:
        raise bad
    return values


def build_model_factory(spec: str, n_in: int, n_out: int) -> Callable[[], Any]:
    """``linear`` or ``mlp:W1,W2,...[:activation]`` (activation relu, tanh, gelu, silu)."""
    from .report import model_from_spec

    try:
        return model_from_spec(spec, n_in, n_out)
    except ValueError as e:
        raise CLIError(f"--{e}") from None


#: The run's settings as saved in report.json ("inputs") and their defaults. The parser's
#: defaults are None so that options given together with ``--resume`` can be told apart.
DEFAULTS: dict[str, Any] = {
    "data": None, "dataset": "diabetes", "target": None, "task": None, "model": "mlp:32,32",
    "penalty": "l2", "l1_ratio": 0.5, "strengths": "1e-5:10:13", "mode": None, "folds": 5,
    "epochs": 100, "batch_size": 64, "lr": 1e-2, "optimizer": "adam", "early_stopping": None,
    "select": "best", "seed": 0, "no_vectorize": False, "device": "cpu", "test": None,
    "groups": None, "halving": False,
}  # fmt: skip


#: ``torchpenalty.penalties.names(sweepable=True)`` of the built-in penalties, written out
#: so that ``--help`` does not import torch (tests/test_cli.py checks the two agree).
SWEEPABLE_PENALTIES = ("l2", "l1", "elastic_net", "group_lasso", "berhu")
#: ``torchpenalty.updates.modes(sweepable=True)``, written out for the same reason (tested).
SWEEP_MODES = ("grad", "decoupled", "proximal")


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line on stderr (exit 2) like every other error."""

    def error(self, message: str) -> Any:
        if "expected one argument" in message:
            message += " (for a value that starts with '-', write --option=VALUE)"
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog="torchpenalty",
        description="Regularization for PyTorch: choose a penalty strength by cross-validation.",
    )
    p.add_argument("--version", action="version", version=f"torchpenalty {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _sweep_parser(sub)
    pr = sub.add_parser(
        "predict",
        help="predict new data with the refit model of a finished sweep",
        description="Load FOLDER (a finished torchpenalty sweep) and write the refit "
        "model's predictions for the rows of --data, in the data's units (class labels "
        "for classification).",
    )
    pr.add_argument("folder", metavar="FOLDER")
    pr.add_argument("--data", metavar="FILE", required=True,
                    help="a .csv or .csv.gz with the training data's feature columns, or a .npz with X")  # fmt: skip
    pr.add_argument("--out", metavar="FILE", help="write the predictions (CSV) to this new "
                    "file (default: stdout); never a file of a run folder or the data")  # fmt: skip
    pr.add_argument("--overwrite", action="store_true",
                    help="replace --out if it exists (still never a run's file or the data)")  # fmt: skip
    e = sub.add_parser(
        "explain",
        help="show which parameters of a model are regularized, and why",
        description="Import MODULE (from sys.path, then the current folder), call FACTORY() "
        "and print tp.explain() of the model it returns.",
    )
    e.add_argument("target", metavar="MODULE:FACTORY")
    e.add_argument(
        "--include", action="append", help="fnmatch pattern (repeatable): replaces the default rule"
    )
    e.add_argument(
        "--exclude", action="append", help="fnmatch pattern (repeatable): always removed"
    )
    return p


def _sweep_parser(sub: Any) -> None:
    D = DEFAULTS
    s = sub.add_parser(
        "sweep",
        help="cross-validate a penalty strength and write a report",
        description="Train one model per (strength, fold), stacked into one computation or "
        "one at a time, whichever is faster, and report the best and the one-standard-error "
        "strength. With no arguments: scikit-learn's diabetes "
        "data, an MLP 10-32-32-1 and L2.",
    )
    d = s.add_argument_group("data")
    d.add_argument("--data", metavar="FILE",
                   help="a .csv or .csv.gz (header row) or .npz (arrays X, y) file")  # fmt: skip
    d.add_argument("--dataset", help="bundled data set when --data is not given: "
                   f"diabetes, breast_cancer, iris, wine (default: {D['dataset']})")  # fmt: skip
    d.add_argument("--target", metavar="COLUMN",
                   help="target column (CSV; default: the last) or array name (NPZ; default: y)")  # fmt: skip
    d.add_argument("--task", choices=["regression", "classification"],
                   help="default: inferred from the target")  # fmt: skip
    d.add_argument("--test", metavar="FILE", help="held-out data (same columns as --data), "
                   "scored with the refit model and reported beside the CV figures")  # fmt: skip
    d.add_argument("--groups", metavar="COLUMN", help="group column (CSV; numbers or text) or "
                   "array (NPZ): each group's rows stay in one fold (repeated measures)")  # fmt: skip
    m = s.add_argument_group("model and penalty")
    m.add_argument("--model", help="'linear' or 'mlp:W1,W2,...[:relu|tanh|gelu|silu]' "
                   f"(default: {D['model']})")  # fmt: skip
    m.add_argument("--penalty", help=f"{', '.join(SWEEPABLE_PENALTIES)} (or an alias) or "
                   "package.module:Class (a tp.Penalty subclass; default: l2)")  # fmt: skip
    m.add_argument("--l1-ratio", type=float, help="elastic net mixing (default: 0.5)")
    m.add_argument("--strengths", help="LO:HI:N log grid or a comma list (default: "
                   f"{D['strengths']})")  # fmt: skip
    m.add_argument("--mode", choices=SWEEP_MODES,
                   help="default: proximal for sparse penalties, else grad")  # fmt: skip
    t = s.add_argument_group("training")
    t.add_argument("--folds", type=lambda v: v if v == "loo" else int(v),
                   help=f"K-fold cross-validation, or loo: exact leave-one-out for ridge "
                   f"(default: {D['folds']})")  # fmt: skip
    t.add_argument("--epochs", type=int, help=f"default: {D['epochs']}")
    t.add_argument("--batch-size", type=int, help="0 for full batch (default: 64)")
    t.add_argument("--lr", type=float, help="learning rate (default: 0.01)")
    t.add_argument("--optimizer", choices=["adam", "sgd"], help="default: adam")
    t.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="keep each model's best epoch, stop after PATIENCE epochs without "
                   "improvement")  # fmt: skip
    t.add_argument("--select", choices=["best", "1se"],
                   help="strength to refit on all the data (default: best)")  # fmt: skip
    t.add_argument("--seed", type=int, help="0 .. 2**32-1 (default: 0)")
    t.add_argument("--no-vectorize", action="store_true", default=None,
                   help="train one model at a time (default: stacked or one at a time, "
                   "as a cost model calibrated for this device predicts faster)")  # fmt: skip
    t.add_argument("--device", help="where to train: cpu (default), cuda, cuda:1, ...")
    _executor_options(t)
    o = s.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="report folder (default: runs/<timestamp>/)")
    o.add_argument("--resume", metavar="DIR",
                   help="continue an interrupted sweep in DIR with its saved settings")  # fmt: skip
    o.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out")  # fmt: skip
    o.add_argument("--quiet", action="store_true", help="no progress bar")


def _executor_options(group: Any) -> None:
    """Issue #17: successive halving (saved with the run: it changes the result) and chunks
    of stacked models on other processes (not saved with the run)."""
    group.add_argument("--halving", action="store_true", default=None,
                       help="stop strengths clearly worse than the best (3 standard errors) "
                       "at 10%%, 20%%, 40%%, ... of the epochs (default: all train to the end)")  # fmt: skip
    group.add_argument("--workers", type=int, metavar="N",
                       help="train chunks in N local processes (default: this process)")  # fmt: skip
    group.add_argument("--executor", metavar="MODULE:FACTORY",
                       help="train chunks on FACTORY(), a concurrent.futures-style executor "
                       "(e.g. Dask's client.get_executor()); MODULE is imported only then")  # fmt: skip


# ---------------------------------------------------------------------------- settings
def _settings(ns: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: the options given over the defaults, or for ``--resume`` the
    saved ones (an option given with ``--resume`` must agree with them)."""
    given = {k: getattr(ns, k) for k in DEFAULTS if getattr(ns, k) is not None}
    if "data" in given:
        given["data"] = os.path.abspath(given["data"])  # a resume may run from elsewhere
    if "test" in given:
        given["test"] = os.path.abspath(given["test"])
    if saved is None:
        for flag in ("target", "groups"):
            if flag in given and "data" not in given:
                raise CLIError(f"--{flag} applies to a --data file; a bundled --dataset has "
                               "its own target and no groups")  # fmt: skip
        if "dataset" in given and "data" in given:
            raise CLIError("--dataset names bundled data, used when --data is not given: "
                           "give one of them")  # fmt: skip
        return {**DEFAULTS, **given}
    if ns.out is not None and os.path.abspath(ns.out) != os.path.abspath(ns.resume):
        raise CLIError(f"--out {ns.out} conflicts with --resume {ns.resume}: give one folder")
    if ns.overwrite:
        raise CLIError("--overwrite conflicts with --resume: resume continues the run")
    settings = {**DEFAULTS, **saved}
    for k, v in given.items():
        if v != settings[k]:
            flag = "--" + k.replace("_", "-")
            raise CLIError(f"{flag} {v} conflicts with the run being resumed ({flag} "
                           f"{settings[k]}); --resume takes its settings from report.json")  # fmt: skip
    return settings


#: Argument of ``tp.sweep`` (or of the data) -> the option that sets it.
_FLAGS = {
    "strengths": "--strengths", "penalty": "--penalty", "name": "--penalty",
    "l1_ratio": "--l1-ratio", "folds": "--folds", "epochs": "--epochs",
    "batch_size": "--batch-size", "optimizer": "--optimizer", "lr": "--lr", "mode": "--mode",
    "seed": "--seed", "early_stopping": "--early-stopping", "refit": "--select",
    "device": "--device", "make_model": "--model", "model": "--model",
    "groups": "--groups", "test": "--test", "X": "the data's features", "y": "the target",
}  # fmt: skip


def _translate(e: Exception) -> CLIError:
    """A sweep argument error as a command line error: the argument's name becomes the
    option's (``epochs must be ...`` -> ``--epochs must be ...``)."""
    text = (str(e).splitlines() or [type(e).__name__])[0]
    m = re.match(r"(\w+)(?= must| has| is)", text)
    if m and m.group(1) in _FLAGS:
        text = _FLAGS[m.group(1)] + text[m.end() :]
    if m and m.group(1) == "batch_size":
        text += " (0: full batch)"
    return CLIError(text)


def _load_data(args: dict[str, Any]) -> Any:
    """The data set; with ``--groups`` its group ids (the column left out of the features)."""
    from . import data as data_mod

    try:
        ds = data_mod.load(
            args["data"], target=args["target"], task=args["task"], dataset=args["dataset"],
            groups=args["groups"],
        )  # fmt: skip
    except data_mod.DataError as e:
        raise CLIError(("--" if str(e).startswith("groups ") else "") + _for_cli(e)) from None
    if ds.task == "classification":  # e.g. --task classification on a continuous target
        import numpy as np

        labels, counts = np.unique(ds.y, return_counts=True)
        if counts.min() < 2:
            raise CLIError(
                f"the target column {data_mod.shown(ds.target)}: every class needs 2 rows or "
                f"more for cross-validation, got {int((counts < 2).sum())} of {len(labels)} "
                "classes with one row (a continuous target? --task regression)"
            )
    return ds


def _for_cli(e: Exception) -> str:
    """A data error's message without its Python-only hint (the CLI has no encoding=)."""
    return str(e).replace(" (or pass encoding=, e.g. 'latin-1')", "")


def _test_data(args: dict[str, Any], ds: Any) -> tuple | None:
    """``--test FILE`` read like ``--data`` (same target, task and feature columns)."""
    if args["test"] is None:
        return None
    test = _load_data({**args, "data": args["test"], "task": ds.task})
    if test.feature_names != ds.feature_names:
        raise CLIError(f"--test {args['test']} must have the feature columns of --data "
                       f"{ds.feature_names}, got {test.feature_names}")  # fmt: skip
    return test.X, test.y


def _penalty(args: dict[str, Any]) -> Any:
    """``--penalty`` as a penalty object: a name or alias, or ``package.module:Class``
    (through ``penalties.resolve``, helper "arch"'s branch; ``tp.get`` names only until it
    is merged). ``--l1-ratio`` goes to penalties that have one."""
    from . import penalties

    by_name = getattr(penalties, "resolve", None) or penalties.get
    try:
        pen = by_name(args["penalty"], 1.0)
        cfg = pen.get_config()
        if "l1_ratio" in cfg:
            pen = type(pen).from_config({**cfg, "l1_ratio": args["l1_ratio"]})
    except (ValueError, TypeError) as e:
        if isinstance(e, TypeError) and isinstance(args["penalty"], str):
            return args["penalty"]  # needs more than a strength: the sweep says what it takes
        raise _translate(e) from None
    return pen


def _import_penalty_module(spec: Any, named: bool, run: str | None) -> None:
    """Import the module of a user penalty ``module:Class`` before the sweep looks it up.
    Typed on this command line (``named``): with the working directory last on
    ``sys.path``. Read from the settings of a run being resumed: never from the working
    directory, the run folder or the folder holding it (a file there may be anyone's),
    only from installed packages; else the user must name it again with ``--penalty``."""
    if not isinstance(spec, str) or ":" not in spec:
        return
    mod_name = spec.partition(":")[0]
    if not _MODULE.fullmatch(mod_name):
        return  # the sweep's own check says what is wrong with it
    if named or run is None:
        with _cwd_last():
            _import_named(mod_name, "--penalty: ")
        return
    import importlib.machinery

    top = mod_name.split(".")[0]
    path = _path_without(os.getcwd(), run, os.path.dirname(os.path.abspath(run)))
    known = top in sys.modules or top in sys.builtin_module_names
    if not known and importlib.machinery.PathFinder.find_spec(top, path) is None:
        raise CLIError(
            f"--resume {_shown(run)}: its penalty {spec} is imported only when installed or "
            f"named (never from a run or working folder): add --penalty {spec}"
        )
    with _search_path(path):
        _import_named(mod_name, "--penalty: ")


def _sweep_call(args: dict[str, Any], ds: Any, quiet: bool) -> tuple[Any, tuple, dict]:
    """The arguments of ``tp.sweep`` for these settings and data."""
    import numpy as np

    classification = ds.task == "classification"
    n_out = len(np.unique(ds.y)) if classification else (1 if ds.y.ndim == 1 else ds.y.shape[1])
    make = build_model_factory(args["model"], ds.X.shape[1], n_out)
    options = {
        "strengths": parse_strengths(args["strengths"]),
        "penalty": _penalty(args),
        "loss": "cross_entropy" if classification else "mse",
        **{k: args[k] for k in ("folds", "epochs", "optimizer", "lr", "mode", "seed")},
        "batch_size": None if args["batch_size"] == 0 else args["batch_size"],
        "vectorize": False if args["no_vectorize"] else "auto",
        "halving": bool(args["halving"]),
        "progress": not quiet,
        "early_stopping": args["early_stopping"],
        "refit": args["select"],
        "device": args["device"],
        "groups": ds.groups,
        "test": _test_data(args, ds),
    }
    return make, (ds.X, ds.y), options


def _header(args: dict[str, Any], ds: Any) -> dict[str, Any]:
    """What report.json says about the run besides the result: the settings, the data
    and its fingerprint (a resume checks it)."""
    from . import report

    sha = report.file_sha256(args["data"]) if args["data"] else None
    return {
        "inputs": _applicable(args),
        "data": {
            "source": ds.source,
            "rows": len(ds.X),
            "features": ds.feature_names,
            "target": ds.target,
            "task": ds.task,
        },
        "fingerprint": {"data": args["data"] or ds.source, "data_sha256": sha},
    }


def _applicable(args: dict[str, Any]) -> dict[str, Any]:
    """The settings that apply to this run (report.json's "inputs"): no ``dataset`` with
    ``--data``, no ``l1_ratio`` for a penalty without one (a resume reads the rest as the
    defaults)."""
    out = dict(args)
    if out["data"] is not None:
        out.pop("dataset")
    if not _takes_l1_ratio(out["penalty"]):
        out.pop("l1_ratio")
    return out


def _takes_l1_ratio(penalty: str) -> bool:
    from . import penalties

    try:
        return "l1_ratio" in penalties.resolve(penalty, 1.0).get_config()
    except (ValueError, TypeError):
        return True  # the sweep refuses it, or needs more than a strength: keep the value


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- run folder
def _new_out_dir() -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", stamp)
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


def _resumed(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved header (settings, data, fingerprint) and state of an unfinished run in
    ``folder``. The checkpoint alone is enough: a report.json that is missing or broken
    (a stop between the two writes) is rewritten, with a notice."""
    from . import report

    if os.path.isdir(os.path.join(folder, report.REPORT)):  # could never be rewritten
        raise CLIError(f"--resume {folder}: cannot be resumed: {report.REPORT} is a folder")
    try:
        saved = report.load_report(folder)
    except report.ReportError as e:
        saved, problem = None, e
    if saved is not None and saved.get("complete"):
        raise CLIError(f"--resume {folder}: that sweep already finished")
    try:
        state = report.load_checkpoint(folder)
    except report.ReportError as e:
        no_ckpt = not os.path.lexists(os.path.join(folder, report.CHECKPOINT))
        cause = problem if saved is None and no_ckpt else e
        raise CLIError(f"--resume {folder}: cannot be resumed: {cause}") from None
    if saved is None:
        print(f"torchpenalty: {problem}; resuming from {report.CHECKPOINT}", file=sys.stderr)
    return state["header"], state


def _check_fingerprint(folder: str, saved: dict[str, Any], header: dict[str, Any]) -> None:
    then = (saved.get("fingerprint") or {}).get("data_sha256")
    now = header["fingerprint"]["data_sha256"]
    if then != now:
        raise CLIError(f"--resume {folder}: the data {header['fingerprint']['data']} changed "
                       "since the run started (its sha256 differs); start a new run")  # fmt: skip


@contextlib.contextmanager
def _run_folder(out: str, resume: bool, overwrite: bool) -> Iterator[None]:
    """Create ``out`` (refusing a file, a path under a file, an unwritable place), lock it,
    and refuse a folder holding a run unless resuming or overwriting."""
    from . import report

    if os.path.lexists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {_shown(out)} is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise CLIError(
            f"--out {_shown(out)}: cannot create the folder ({e.strerror or e})"
        ) from None
    try:
        with report.RunLock(out):
            report.remove_temporaries(out)  # left by a process killed mid-write
            if not resume:
                _clear_for_new_run(out, overwrite)
            yield
    except report.ReportError as e:
        text = str(e)
        raise CLIError(
            f"--out {_shown(out)}: {text}" if text.startswith("its ") else text
        ) from None


def _clear_for_new_run(out: str, overwrite: bool) -> None:
    """A new run in ``out``: refuse a folder holding a run unless ``overwrite``, which
    removes the run's own files only (as its manifest vouches); refuse a file under a
    run file's name that no run wrote (it would be overwritten)."""
    from . import report

    shown = _shown(out)
    foreign = report.foreign_files(out)
    if foreign:  # someone else's file (or a run's file changed since): never written over
        raise CLIError(f"--out {shown}: its {foreign[0]} was not written by a torchpenalty "
                       "run (or changed since): move it away or choose another --out")  # fmt: skip
    if report.holds_run(out):
        if not overwrite:
            raise CLIError(f"--out {shown} holds a run already: continue it with --resume, "
                           "or replace it with --overwrite")  # fmt: skip
        try:
            report.remove_run(out)
        except report.ReportError as e:
            raise CLIError(f"--out {shown}: {e}") from None


# ---------------------------------------------------------------------------- sweep
def cmd_sweep(ns: argparse.Namespace) -> int:
    saved, state = _resumed(ns.resume) if ns.resume else (None, None)
    args = _settings(ns, None if saved is None else saved["inputs"])
    _import_penalty_module(args["penalty"], ns.penalty is not None, ns.resume)
    ds = _load_data(args)
    make, data, options = _sweep_call(args, ds, ns.quiet)
    from .sweep.validate import validate

    try:  # the sweep's own checks, before any folder is created
        validate(make, data, **options)
    except (ValueError, TypeError) as e:
        raise _translate(e) from None
    except (RuntimeError, MemoryError) as e:  # e.g. a model too large to allocate
        raise CLIError(f"--model {_shown(args['model'], 40)}: cannot build or run it "
                       f"({_first_line(e, 90)})") from None  # fmt: skip
    header = _header(args, ds)
    earlier = (saved or {}).get("time") or {}  # a resumed run keeps its start and run time
    header["time"] = {"started": earlier.get("started") or _now(),
                      "run_s": float(earlier.get("run_s") or 0.0)}  # fmt: skip
    out = ns.resume or ns.out or _new_out_dir()
    if saved is not None:
        _check_fingerprint(out, saved, header)
    with _executor(ns) as ex, \
            _run_folder(out, resume=saved is not None, overwrite=ns.overwrite):  # fmt: skip
        if ex is not None:
            options["executor"] = ex
        print(f"torchpenalty sweep: {ds.source} ({len(ds.X)} rows, {ds.X.shape[1]} features, "
              f"{ds.task}), {args['model']}, {args['penalty']}, {len(options['strengths'])} "
              f"strengths x {args['folds']} folds -> {out}")  # fmt: skip
        return _run(out, make, data, {**options, "resume": state}, header, args)


def _partial(state: dict[str, Any]) -> Any:
    """A ``SweepResult`` of the records in a sweep state (for report.json)."""
    from .sweep.engine import Record
    from .sweep.result import SweepResult

    records = [Record(**r) for r in state["records"]]
    settings = state["settings"]
    return SweepResult(state["strengths"], settings["folds"], records, settings)


def _run(out: str, make: Any, data: tuple, options: dict, header: dict, args: dict) -> int:
    """Train with the run folder saved before the first model and after every chunk;
    SIGINT/SIGTERM/SIGHUP save and exit with a resumable folder."""
    import torchpenalty as tp

    from . import report
    from .sweep.executors import SweepIncomplete

    first = (options["resume"] or {}).get("seq", -1) + 1
    seq = itertools.count(first)
    clock, t0 = header["time"], time.perf_counter()
    before_s = clock["run_s"]  # earlier sessions of a resumed run

    def save(state: dict[str, Any], result: Any = None) -> None:
        clock["run_s"] = round(before_s + time.perf_counter() - t0, 3)
        n = next(seq)
        report.write_checkpoint(out, state, n, header)
        result = result or _partial(state)
        result.data_name = header["data"]["source"]
        report.write_report(out, result, header, complete=False, seq=n)

    def on_chunk(state: dict[str, Any]) -> None:
        with report.shielded():  # a signal during the save acts once it is written
            save(state)

    try:
        with report.stop_signals() as received:
            try:
                result = tp.sweep(make, data, **options, on_chunk=on_chunk)
            except SweepIncomplete as e:  # chunks failed twice on the executor (#17)
                with report.shielded(interrupt_after=False):
                    save(e.state, e.result)
                raise CLIError(f"{e}; continue with: torchpenalty sweep --resume {out}") from None
            except tp.SweepInterrupted as e:
                with report.shielded(interrupt_after=False):
                    save(e.state, e.result)
                done, total = len(e.result.records), len(e.result.strengths) * e.result.folds
                print(f"\ninterrupted: {done} of {total} models finished and saved in {out}; "
                      f"continue with: torchpenalty sweep --resume {out}", file=sys.stderr)  # fmt: skip
                return 128 + received[0] if received else EXIT_INTERRUPTED
            result.data_name = header["data"]["source"]
            clock["run_s"] = round(before_s + time.perf_counter() - t0, 3)
            clock["finished"] = _now()
            result.feature_names = header["data"]["features"]  # issue #16: result.selected
            extra = {"test": getattr(result, "test", None)}
            with report.shielded(interrupt_after=False):
                report.write_outputs(out, result, {**header, **extra},
                                     _model_info(args, data, result))  # fmt: skip
    except report.ReportError as e:
        raise CLIError(f"{e}; what was saved before stays resumable") from None
    except ValueError as e:  # a resume state that does not fit these settings
        raise _translate(e) from None
    _print_summary(result, args["select"], out)
    return 0


def _model_info(args: dict[str, Any], data: tuple, result: Any) -> dict[str, Any] | None:
    import numpy as np

    X, y = data
    classification = result.settings["loss"] == "cross_entropy"
    classes = np.unique(y).tolist() if classification else None
    if result.model is None:
        return None
    return {
        "model": args["model"],
        "n_features": int(X.shape[1]),
        "n_outputs": len(classes) if classes else (1 if y.ndim == 1 else int(y.shape[1])),
        "classes": classes,
        "strength": result.chosen_strength,
        "state_dict": "model.pt (torch.load(path, weights_only=True); keys model.*, x_mean, "
        "x_std, y_mean, y_std)",
    }


def _print_summary(result: Any, select: str, out: str) -> None:
    """The table with the chosen strengths marked, the warnings, the held-out score."""
    print()
    print(result)

    def fmt(v: float | None) -> str:
        return "none (every strength diverged)" if v is None else f"{v:.4g}"

    print(f"\nbest strength: {fmt(result.best_strength)}   1-SE strength: "
          f"{fmt(result.strength_1se)}   refit at: {fmt(result.chosen_strength)} ({select})")  # fmt: skip
    selected = result.selected  # issue #16: features an L1-type linear model keeps
    if selected is not None and result.settings["penalty"]["name"] != "l2":
        for rule, names in selected.items():
            if names is not None:
                print(f"kept at the {rule} strength ({len(names)}): {', '.join(names)}")
    test = getattr(result, "test", None)
    if test and test.get("loss") is None:
        print(f"held-out test ({test['rows']} rows): {test.get('missing', 'not scored')}")
    elif test:
        acc = f", accuracy {test['accuracy']:.4g}" if "accuracy" in test else ""
        print(f"held-out test ({test['rows']} rows): loss {test['loss']:.5g}{acc}")
    print(f"report: {os.path.join(out, 'report.json')}")


# ---------------------------------------------------------------------------- predict
def _features(path: str, names: list[str]) -> Any:
    """The columns ``names`` of a CSV (other columns, such as the target, are ignored)
    or the array X of an NPZ file, as float64 (:func:`torchpenalty.data.read_features`)."""
    from . import data as data_mod

    try:
        return data_mod.read_features(path, names)
    except data_mod.DataError as e:
        text = _for_cli(e)
        raise CLIError(text if path in text else f"--data {_shown(path)}: {text}") from None


def _check_predict_out(ns: argparse.Namespace) -> None:
    """``predict --out``: a new file, or an existing one with ``--overwrite``; never a
    folder, the ``--data`` file, or any file in a run folder (``FOLDER`` or another)."""
    from . import report

    out, shown = ns.out, _shown(ns.out)
    if os.path.isdir(out):
        raise CLIError(f"--out {shown} is a folder: give a file name")
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.lexists(ns.data) and os.path.lexists(out) and os.path.samefile(out, ns.data):
        raise CLIError(f"--out {shown} is the --data file: write the predictions elsewhere")
    in_run = os.path.realpath(parent) == os.path.realpath(ns.folder) or report.holds_run(parent)
    if in_run or os.path.lexists(os.path.join(parent, report.MANIFEST)):
        raise CLIError(f"--out {shown} is in a run folder: write the predictions elsewhere")
    if os.path.lexists(out) and not ns.overwrite:
        raise CLIError(f"--out {shown} exists: add --overwrite to replace it")


def cmd_predict(ns: argparse.Namespace) -> int:
    from . import report

    if ns.out:
        _check_predict_out(ns)
    try:
        result = report.load_sweep(ns.folder)
        saved = report.load_report(ns.folder)
    except report.ReportError as e:
        raise CLIError(f"{_shown(ns.folder)}: {e}") from None
    if result.model is None:
        raise CLIError(f"{_shown(ns.folder)}: the run has no refit model (every strength diverged)")
    names = (
        (saved.get("data") or {}).get("features") if isinstance(saved.get("data"), dict) else None
    )
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise CLIError(f"{_shown(ns.folder)}: report.json has no feature names (data.features)")
    X = _features(ns.data, names)
    try:
        pred = result.predict(X)
    except ValueError as e:  # a value the model's dtype cannot take: named by its column
        m = re.match(r"X column (\d+): (.*)", str(e))
        if not m or int(m.group(1)) >= len(names):
            raise CLIError(f"--data {_shown(ns.data)}: {e}") from None
        raise CLIError(f"--data {_shown(ns.data)}: column {names[int(m.group(1))]!r}: "
                       f"{m.group(2)}") from None  # fmt: skip
    wide = pred.ndim == 2
    names = [f"prediction_{j}" for j in range(pred.shape[1])] if wide else ["prediction"]
    lines = [",".join(names)]
    lines += [",".join(map(str, row)) for row in pred.reshape(len(pred), -1).tolist()]
    text = "\n".join(lines) + "\n"
    if ns.out:
        try:
            report.write_atomic(ns.out, text)
        except report.ReportError as e:
            raise CLIError(str(e)) from None
        print(f"{len(pred)} predictions -> {ns.out}")
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------------------- explain
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _shown(path: Any, limit: int = 100) -> str:
    """``path`` as the user typed it, or its last parts when that is long (messages stay
    one short line)."""
    text = str(path)
    if len(text) <= limit:
        return text
    parts = text.rstrip(os.sep).split(os.sep)
    return "..." + os.sep + os.sep.join(parts[-2:])[-(limit - 4) :]


def _one_line(text: str, limit: int = 178) -> str:
    """The first line of ``text``; past ``limit`` characters its middle gives way to
    ``...`` (the start says what is wrong, the end what was given)."""
    line = (text.strip().splitlines() or [""])[0]
    if len(line) > limit:  # long paths first give way to their last two parts
        line = re.sub(r"/[^\s:'\"]{40,}", lambda m: _shown(m.group(0), 40), line)
    return line if len(line) <= limit else line[: limit - 60] + " ... " + line[-55:]


def _path_without(*folders: str) -> list[str]:
    """``sys.path`` less every entry that is one of ``folders`` (``""`` is the working
    directory)."""
    drop = {os.path.realpath(f) for f in folders}
    return [p for p in sys.path if os.path.realpath(p or ".") not in drop]


@contextlib.contextmanager
def _search_path(path: list[str]) -> Iterator[None]:
    """``sys.path`` replaced by ``path`` (restored after)."""
    saved = list(sys.path)
    sys.path[:] = path
    try:
        yield
    finally:
        sys.path[:] = saved


def _cwd_last() -> contextlib.AbstractContextManager[None]:
    """The working directory last on ``sys.path``: for a module the user names on the
    command line (``explain MODULE:FACTORY``, ``--penalty module:Class``) and nothing else;
    a file there such as ``torch.py`` never shadows an installed package."""
    cwd = os.getcwd()
    return _search_path([*_path_without(cwd), cwd])


def _import_named(mod_name: str, prefix: str = "") -> Any:
    """Import ``mod_name``, a module the user named; one line if it fails."""
    try:
        return importlib.import_module(mod_name)
    except ImportError as e:
        text = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise CLIError(f"{prefix}cannot import {mod_name!r}: {text}") from None
    except (Exception, SystemExit) as e:
        raise CLIError(
            f"{prefix}cannot import {mod_name!r}: it raised {_first_line(e, 120)}"
        ) from None


def _first_line(e: BaseException, limit: int = 150) -> str:
    text = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _import_factory(target: str, what: str = "explain") -> Callable[[], Any]:
    mod_name, sep, fn_name = target.partition(":")
    if not sep or not _MODULE.fullmatch(mod_name) or not fn_name.isidentifier():
        raise CLIError(f"{what} needs MODULE:FACTORY (a dotted module name and a function "
                       f"name, e.g. mymodels:make), got {target!r}")  # fmt: skip
    with _cwd_last():
        module = _import_named(mod_name)
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise CLIError(f"{mod_name!r} has no callable {fn_name!r}")
    return factory


@contextlib.contextmanager
def _executor(ns: argparse.Namespace) -> Iterator[Any]:
    """``--workers N``: a pool of N local processes (started by forkserver: a forked child
    deadlocks in torch's thread pool); ``--executor MODULE:FACTORY``: ``FACTORY()``,
    imported only because this command line names it. Shut down after the sweep."""
    if ns.workers is not None and ns.executor is not None:
        raise CLIError("--workers conflicts with --executor: give one")
    if ns.workers is not None and ns.workers < 1:
        raise CLIError(f"--workers must be an integer >= 1, got {ns.workers}")
    if ns.workers is None and ns.executor is None:
        yield None
        return
    if ns.workers is not None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(ns.workers, mp_context=multiprocessing.get_context("forkserver"))
    else:
        factory = _import_factory(ns.executor, "--executor")
        try:
            ex = factory()
        except Exception as e:
            raise CLIError(f"--executor {ns.executor}() failed: {_first_line(e)}") from None
        if not callable(getattr(ex, "submit", None)):
            raise CLIError(f"--executor {ns.executor}() must return an executor with submit(), "
                           f"got {type(ex).__name__}")  # fmt: skip
    try:
        yield ex
    finally:
        shutdown = getattr(ex, "shutdown", None)
        if callable(shutdown):
            shutdown()


def cmd_explain(ns: argparse.Namespace) -> int:
    factory = _import_factory(ns.target)
    try:
        model = factory()
    except Exception as e:
        raise CLIError(f"{ns.target}() failed: {_first_line(e)} (explain calls FACTORY with "
                       "no arguments)") from None  # fmt: skip
    import torch

    import torchpenalty as tp

    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"{ns.target}() must return an nn.Module, got {type(model).__name__}")
    try:
        rows = tp.explain(model, include=ns.include, exclude=ns.exclude)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    print(rows)
    n = sum(r.regularized for r in rows)
    print(f"\n{n} of {len(rows)} parameters regularized")
    return 0


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings as one line each (``torchpenalty: warning: ...``), every message once."""
    import warnings

    seen: set[str] = set()

    def show(message: Any, category: Any, filename: str, lineno: int, *a: Any) -> None:
        if str(message) not in seen:
            seen.add(str(message))
            print(f"torchpenalty: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():  # the filters stay as they are; only the display changes
        warnings.showwarning = show
        yield


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        # nothing is imported from the working directory unless the user names it
        with _search_path(_path_without(os.getcwd())), _one_line_warnings():
            commands = {"sweep": cmd_sweep, "predict": cmd_predict, "explain": cmd_explain}
            return commands[ns.command](ns)
    except CLIError as e:
        print(f"torchpenalty: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # a file that could not be read or written
        name = f" {_shown(e.filename)}" if e.filename else ""
        print(f"torchpenalty: error:{name} {_one_line(str(e.strerror or e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def exit_with(code: int) -> None:
    """``sys.exit(code)``, with the exit status kept ``code``.

    CPython 3.11 marks a ``KeyboardInterrupt`` that leaves code run by ``exec`` of a string
    (dataclasses and namedtuples are made that way: torch's lazy imports run hundreds) as
    unhandled even when it is caught later, and a ``python -m`` process so marked kills
    itself with SIGINT at exit whatever ``sys.exit`` said: a stop signal arriving there
    turned the resumable exit status 128 + signal into -2. Any later ``exec`` of a string
    clears the mark; ``main`` has handled every interrupt by now."""
    exec("pass", {})
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    exit_with(main())
