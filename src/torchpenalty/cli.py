"""The ``torchpenalty`` command line (also ``python -m torchpenalty``).

``torchpenalty sweep`` cross-validates a penalty strength on a CSV/NPZ file or a bundled
data set and writes a report; ``torchpenalty explain MODULE:FACTORY`` shows which
parameters of your model the default rule regularizes. Only argument wiring lives here:
the work is done by :mod:`torchpenalty.data`, :func:`torchpenalty.sweep` and
:mod:`torchpenalty.plotting`. torch is imported only once a command runs, so ``--help``
is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import importlib
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "parse_strengths"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


# ---------------------------------------------------------------------------- parsing
def parse_strengths(text: str) -> list[float]:
    """``LO:HI:N`` (N values log-spaced from LO to HI) or a comma-separated list.

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
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise bad
    return values


def build_model_factory(spec: str, n_in: int, n_out: int) -> Callable[[], Any]:
    """``linear`` or ``mlp:W1,W2,...[:activation]`` (activation relu, tanh, gelu, silu)."""
    from torch import nn

    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}
    parts = spec.split(":")
    bad = CLIError(
        f"--model must be 'linear' or 'mlp:W1,W2[,...][:{'|'.join(acts)}]', got {spec!r}"
    )
    if parts == ["linear"]:
        return lambda: nn.Linear(n_in, n_out)
    if parts[0] != "mlp" or len(parts) not in (2, 3):
        raise bad
    try:
        widths = [int(w) for w in parts[1].split(",")]
    except ValueError:
        raise bad from None
    act = acts.get(parts[2] if len(parts) == 3 else "relu")
    if act is None or not widths or any(w < 1 for w in widths):
        raise bad

    def make():
        layers, d = [], n_in
        for w in widths:
            layers += [nn.Linear(d, w), act()]
            d = w
        return nn.Sequential(*layers, nn.Linear(d, n_out))

    return make


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchpenalty",
        description="Regularization for PyTorch: choose a penalty strength by cross-validation.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser(
        "sweep",
        help="cross-validate a penalty strength and write a report",
        description="Train one model per (strength, fold), all at once, and report the best "
        "and the one-standard-error strength. With no arguments: scikit-learn's diabetes "
        "data, an MLP 10-32-32-1 and L2.",
    )
    d = s.add_argument_group("data")
    d.add_argument("--data", metavar="FILE", help="a .csv (header row) or .npz (arrays X, y) file")
    d.add_argument("--dataset", default="diabetes", help="bundled data set when --data is not given: "
                   "diabetes, breast_cancer, iris, wine (default: diabetes)")  # fmt: skip
    d.add_argument(
        "--target",
        metavar="COLUMN",
        help="target column (CSV; default: the last) or array name (NPZ; default: y)",
    )
    d.add_argument(
        "--task", choices=["regression", "classification"], help="default: inferred from the target"
    )
    m = s.add_argument_group("model and penalty")
    m.add_argument(
        "--model",
        default="mlp:32,32",
        help="'linear' or 'mlp:W1,W2,...[:relu|tanh|gelu|silu]' (default: mlp:32,32)",
    )
    m.add_argument(
        "--penalty", default="l2", help="l2, l1, elastic_net or group_lasso (default: l2)"
    )
    m.add_argument("--l1-ratio", type=float, default=0.5, help="elastic net mixing (default: 0.5)")
    m.add_argument(
        "--strengths",
        default="1e-5:10:13",
        help="LO:HI:N log grid or a comma list (default: 1e-5:10:13)",
    )
    m.add_argument(
        "--mode",
        choices=["grad", "decoupled", "proximal"],
        help="default: proximal for sparse penalties, else grad",
    )
    t = s.add_argument_group("training")
    t.add_argument("--folds", type=int, default=5, help="K-fold cross-validation (default: 5)")
    t.add_argument("--epochs", type=int, default=100, help="default: 100")
    t.add_argument("--batch-size", type=int, default=64, help="0 for full batch (default: 64)")
    t.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default: 0.01)")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    t.add_argument(
        "--early-stopping",
        type=int,
        metavar="PATIENCE",
        help="keep each model's best epoch, stop after PATIENCE epochs without improvement",
    )
    t.add_argument(
        "--select",
        choices=["best", "1se"],
        default="best",
        help="strength to refit on all the data (default: best)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--no-vectorize",
        action="store_true",
        help="train one model at a time (same numbers, slower)",
    )
    t.add_argument(
        "--device", default="cpu", help="where to train: cpu (default), cuda, cuda:1, ..."
    )
    o = s.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="report folder (default: runs/<timestamp>/)")
    o.add_argument(
        "--resume", metavar="DIR", help="continue an interrupted sweep in DIR with its settings"
    )
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser(
        "explain",
        help="show which parameters of a model are regularized, and why",
        description="Import MODULE (from the current folder or sys.path), call FACTORY() and "
        "print tp.explain() of the model it returns.",
    )
    e.add_argument("target", metavar="MODULE:FACTORY")
    e.add_argument(
        "--include", action="append", help="fnmatch pattern (repeatable): replaces the default rule"
    )
    e.add_argument(
        "--exclude", action="append", help="fnmatch pattern (repeatable): always removed"
    )
    return p


# ---------------------------------------------------------------------------- files
def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``: an
    interrupted write never leaves a truncated file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def _versions() -> dict[str, str]:
    import numpy
    import torch

    from . import __version__

    return {
        "torchpenalty": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
    }


# ---------------------------------------------------------------------------- sweep
_SAVED_ARGS = (
    "data", "dataset", "target", "task", "model", "penalty", "l1_ratio", "strengths", "mode",
    "folds", "epochs", "batch_size", "lr", "optimizer", "early_stopping", "select", "seed",
    "no_vectorize", "device",
)  # fmt: skip


def _write_report(
    out: str, args: dict[str, Any], result: Any, ds: Any, extra: dict[str, Any]
) -> None:
    report = {
        "inputs": args,
        "data": {
            "source": ds.source,
            "rows": len(ds.X),
            "features": ds.feature_names,
            "target": ds.target,
            "task": ds.task,
        },
        **json.loads(result.to_json()),
        "versions": _versions(),
        **extra,
    }
    write_atomic(os.path.join(out, "sweep.csv"), _csv_text(result.table))
    if result.records:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for kind, name in (
            ("validation", "validation.png"),
            ("norm", "norm.png"),
            ("learning", "learning.png"),
        ):
            disp = result.plot(kind=kind)
            buf = io.BytesIO()
            disp.figure_.tight_layout()
            disp.figure_.savefig(buf, format="png", dpi=110)
            plt.close(disp.figure_)
            write_atomic(os.path.join(out, name), buf.getvalue())
    write_atomic(os.path.join(out, "report.json"), json.dumps(report, indent=2) + "\n")


def _print_table(result: Any, stream: Any) -> None:
    rows = result.table
    if not rows:
        return
    acc = "val_accuracy_mean" in rows[0]
    head = f"{'strength':>10} {'val loss':>12} {'± SE':>10} {'train loss':>12} {'||w||':>9} {'zeros':>6}"
    print(head + (f" {'val acc':>8}" if acc else ""), file=stream)
    best, one = result.best_strength, result.strength_1se
    for r in rows:
        mark = " <- best" if r["strength"] == best else ""
        mark += " <- 1se" if r["strength"] == one else ""
        line = (
            f"{r['strength']:>10.3g} {r['val_loss_mean']:>12.5g} {r['val_loss_se']:>10.3g} "
            f"{r['train_loss_mean']:>12.5g} {r['param_norm_mean']:>9.3g} {r['zero_fraction_mean']:>6.1%}"
        )
        if acc:
            line += f" {r['val_accuracy_mean']:>8.3f}"
        print(line + mark, file=stream)


def _new_out_dir() -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", stamp)
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


def cmd_sweep(ns: argparse.Namespace) -> int:
    resume_state = None
    if ns.resume:
        out = ns.resume
        report_path = os.path.join(out, "report.json")
        ckpt_path = os.path.join(out, "checkpoint.pt")
        if not os.path.exists(report_path):
            raise CLIError(f"--resume {out}: no report.json there (not a torchpenalty run folder)")
        with open(report_path) as f:
            try:
                previous = json.load(f)
            except json.JSONDecodeError as e:
                raise CLIError(f"--resume {out}: report.json is not valid JSON ({e})") from None
        if previous.get("complete"):
            raise CLIError(f"--resume {out}: that sweep already finished")
        args = dict(previous.get("inputs", {}))
        if os.path.exists(ckpt_path):
            import torch

            resume_state = torch.load(ckpt_path, weights_only=True)
    else:
        args = {k: getattr(ns, k) for k in _SAVED_ARGS}
        out = ns.out or _new_out_dir()

    from . import data as data_mod

    try:
        ds = data_mod.load(
            args["data"], target=args["target"], task=args["task"], dataset=args["dataset"]
        )
        ds.check_folds(args["folds"])
    except data_mod.DataError as e:
        raise CLIError(str(e)) from None

    strengths = parse_strengths(args["strengths"])
    for name in ("folds", "epochs"):
        if args[name] < (2 if name == "folds" else 1):
            raise CLIError(f"--{name} must be >= {2 if name == 'folds' else 1}, got {args[name]}")
    if args["batch_size"] < 0:
        raise CLIError(f"--batch-size must be >= 0 (0: full batch), got {args['batch_size']}")
    if not (args["lr"] > 0 and math.isfinite(args["lr"])):
        raise CLIError(f"--lr must be a finite number > 0, got {args['lr']}")
    import numpy as np

    import torchpenalty as tp
    from torchpenalty.sweep.core import check_device

    try:
        check_device(args.get("device", "cpu"))
    except ValueError as e:
        raise CLIError(f"--device: {e}") from None

    y = ds.y
    if ds.task == "classification":
        classes = np.unique(y)
        n_out, loss = len(classes), "cross_entropy"
    else:
        y = y.astype(np.float64)
        n_out, loss = (1 if y.ndim == 1 else y.shape[1]), "mse"
    make = build_model_factory(args["model"], ds.X.shape[1], n_out)
    penalty_name = args["penalty"].lower().replace("-", "_")
    try:
        penalty = tp.get(
            penalty_name,
            1.0,
            **(
                {"l1_ratio": args["l1_ratio"]}
                if penalty_name in ("elastic_net", "elasticnet", "enet")
                else {}
            ),
        )
    except (ValueError, TypeError) as e:
        raise CLIError(f"--penalty: {e}") from None
    from torchpenalty.sweep.engine import STACKABLE

    if penalty.name not in STACKABLE:
        choices = ", ".join(repr(p) for p in STACKABLE)
        raise CLIError(f"--penalty must be one of {choices} for a sweep, got {args['penalty']!r}")

    os.makedirs(out, exist_ok=True)
    stream = sys.stdout
    print(f"torchpenalty sweep: {ds.source} ({len(ds.X)} rows, {ds.X.shape[1]} features, {ds.task}), "
          f"{args['model']}, {penalty.name}, {len(strengths)} strengths x {args['folds']} folds -> {out}",
          file=stream)  # fmt: skip

    def save_checkpoint(state: dict[str, Any]) -> None:
        write_atomic(os.path.join(out, "checkpoint.pt"), _torch_bytes(state))

    def partial_report(result: Any) -> None:
        _write_report(out, args, result, ds, {"complete": False})

    try:
        result = tp.sweep(
            make,
            (ds.X, y),
            strengths=strengths,
            penalty=penalty,
            loss=loss,
            folds=args["folds"],
            epochs=args["epochs"],
            batch_size=args["batch_size"] or None,
            optimizer=args["optimizer"],
            lr=args["lr"],
            mode=args["mode"],
            vectorize=not args["no_vectorize"],
            seed=args["seed"],
            progress=not ns.quiet,
            early_stopping=args["early_stopping"],
            refit=args["select"],
            device=args.get("device", "cpu"),
            resume=resume_state,
            on_chunk=save_checkpoint,
        )
    except tp.SweepInterrupted as e:
        save_checkpoint(e.state)
        partial_report(e.result)
        done = len(e.result.records)
        total = len(strengths) * args["folds"]
        print(f"\ninterrupted: {done} of {total} models finished and saved in {out}; "
              f"continue with: torchpenalty sweep --resume {out}", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except ValueError as e:
        raise CLIError(str(e)) from None

    model_path = os.path.join(out, "model.pt")
    write_atomic(model_path, _torch_bytes(result.model.state_dict()))
    model_info = {
        "model": args["model"],
        "n_features": int(ds.X.shape[1]),
        "n_outputs": int(n_out),
        "classes": np.unique(ds.y).tolist() if ds.task == "classification" else None,
        "strength": result.chosen_strength,
        "state_dict": "model.pt (torch.load(path, weights_only=True); keys model.*, x_mean, x_std, y_mean, y_std)",
    }
    _write_report(out, args, result, ds, {"model": model_info})
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(out, "checkpoint.pt"))
    print(file=stream)
    _print_table(result, stream)
    print(f"\nbest strength: {result.best_strength:.4g}   1-SE strength: {result.strength_1se:.4g}   "
          f"refit at: {result.chosen_strength:.4g} ({args['select']})", file=stream)  # fmt: skip
    print(f"report: {os.path.join(out, 'report.json')}", file=stream)
    return 0


# ---------------------------------------------------------------------------- explain
def cmd_explain(ns: argparse.Namespace) -> int:
    if ":" not in ns.target:
        raise CLIError(f"explain needs MODULE:FACTORY, got {ns.target!r}")
    mod_name, _, fn_name = ns.target.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise CLIError(f"cannot import {mod_name!r}: {e}") from None
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise CLIError(f"{mod_name!r} has no callable {fn_name!r}")
    model = factory()
    import torchpenalty as tp

    try:
        rows = tp.explain(model, include=ns.include, exclude=ns.exclude)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    print(rows)
    n = sum(r.regularized for r in rows)
    print(f"\n{n} of {len(rows)} parameters regularized")
    return 0


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return {"sweep": cmd_sweep, "explain": cmd_explain}[ns.command](ns)
    except CLIError as e:
        print(f"torchpenalty: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
