"""``tp.sweep``: cross-validated strength selection, all models trained at once.

The sweep runs in four steps, each a function: :func:`validate` (every argument checked
once, from :data:`PARAMETER_CONSTRAINTS` and the data), ``_plan`` (folds, the engine, the
(strength, fold) tasks and their chunks), ``_run_chunks`` (train chunk after chunk, keeping
finished models keyed by (strength, fold)) and ``_finish`` (the result and its refit).
"""

from __future__ import annotations

import hashlib
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import (
    check_choice,
    check_int,
    check_positive,
    check_strength,
    described_error,
    type_error,
    value_error,
)
from ..distributed import all_gather_objects, world
from ..penalties import Penalty, get, names, resolve
from . import closed_form
from .engine import Engine, Problem, Record, Task
from .folds import Standardizer, group_kfold, kfold, stratified_kfold
from .plan import balanced as _balanced
from .plan import probe
from .result import StandardizedModel, SweepResult, describe_model
from .stream import (
    READ_ROWS,
    Moments,
    StreamedData,
    StreamedRows,
    fold_moments,
    read_items,
    scan,
)
from .validated import Validated

__all__ = [
    "PARAMETER_CONSTRAINTS",
    "SweepInterrupted",
    "check_device",
    "default_strengths",
    "held_out_scores",
    "sweep",
    "validate",
]

#: Largest ``seed``: NumPy's generators need a non-negative seed and each fold's torch seed
#: (``seed * 1_000_003 + fold``) must stay below 2**64.
MAX_SEED = 2**32 - 1
_CE, _MSE = "cross_entropy", "mse"


def default_strengths() -> list[float]:
    """13 strengths log-spaced from 1e-5 to 10 (two per decade): on standardized data
    with a mean-squared or cross-entropy loss this spans "no visible effect" to "weights
    shrunk to nothing" for L2, L1 and group lasso, so the curve shows both ends.

    >>> default_strengths()[:3], len(default_strengths())
    ([1e-05, 3.16e-05, 0.0001], 13)
    """
    return [float(f"{v:.3g}") for v in np.logspace(-5, 1, 13)]


class SweepInterrupted(KeyboardInterrupt):
    """Raised when a sweep is interrupted (Ctrl-C). ``state`` holds the finished records
    (keyed by strength and fold) and a snapshot of the chunk in progress; pass it back as
    ``tp.sweep(..., resume=state)`` to continue without redoing finished work. ``result``
    is a ``SweepResult`` of what finished."""

    def __init__(self, state: dict[str, Any], result: SweepResult) -> None:
        super().__init__("sweep interrupted")
        self.state = state
        self.result = result


# ---------------------------------------------------------------------------- constraints
def _choice(*choices: str) -> Callable[[str, Any], str]:
    return lambda name, v: check_choice(name, v, choices)


def _int(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        v = check_int(name, v, minimum=minimum)
        if maximum is not None and v > maximum:
            raise value_error(name, f"an integer in [{minimum}, {maximum}]", v)
        return v

    return check


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, v: None if v is None else check(name, v)


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise type_error(name, "True or False", v)
    return bool(v)


def _vectorize(name: str, v: Any) -> bool | str:
    if isinstance(v, str) and v == "auto":
        return v
    if not isinstance(v, (bool, np.bool_)):
        raise type_error(name, "True, False or 'auto'", v)
    return bool(v)


def _callable(name: str, v: Any) -> Any:
    if not callable(v):
        raise type_error(name, "a callable", v)
    return v


def _loss(name: str, v: Any) -> str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if isinstance(v, str):
        return check_choice(name, v, (_MSE, _CE))
    if not callable(v):
        raise type_error(
            name, "'mse', 'cross_entropy' or a callable (output, target) -> mean loss", v
        )
    return v


def loss_name(loss: str | Callable[..., Any]) -> str:
    """How a sweep records its loss: the name, or a callable's ``module.qualname`` (its
    ``repr`` when it has none, e.g. an ``nn.Module`` loss), never equal to a built-in name.

    >>> loss_name("mse"), loss_name(torch.nn.functional.huber_loss)
    ('mse', 'torch.nn.functional.huber_loss')
    >>> loss_name(torch.nn.L1Loss())
    'L1Loss()'
    """
    if isinstance(loss, str):
        return loss
    qual, mod = getattr(loss, "__qualname__", None), getattr(loss, "__module__", None)
    return f"{mod}.{qual}" if qual and mod else repr(loss)


def _strengths(name: str, v: Any) -> list[float]:
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, (Sequence, np.ndarray)):
        raise type_error(name, "a sequence of numbers >= 0 (e.g. [1e-3, 1e-2, 0.1])", v)
    grid = [check_strength(name, s) for s in v]
    if not grid:
        raise value_error(name, "a non-empty list", list(v))
    return grid


def _penalty(name: str, v: Any) -> Penalty:
    supported = (
        "one of "
        + ", ".join(repr(p) for p in names(sweepable=True))
        + " (the penalties a sweep stacks)"
    )
    try:  # resolve: registered names, aliases and "module:Class"
        pen = v if isinstance(v, Penalty) else resolve(v, 1.0) if isinstance(v, str) else get(v)
    except TypeError:  # a penalty that needs more than a strength (l2sp's reference)
        if isinstance(v, (str, Mapping)):
            raise value_error(name, supported, v) from None
        raise
    if pen.name not in names(sweepable=True):
        raise value_error(name, supported, pen.name)
    return pen


def _refit_rule(name: str, v: Any) -> str | bool:
    if v is None or v is False:
        return False
    if isinstance(v, str) and v in ("best", "1se"):
        return v
    raise value_error(name, "'best', '1se' or False", v)


def _pair(name: str, v: Any) -> tuple[Any, Any]:
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise type_error(name, "a pair (X_test, y_test)", type(v).__name__)
    return tuple(v)


def _resume(name: str, v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise type_error(name, "the state of a SweepInterrupted (a dict) or None", v)
    missing = [k for k in ("settings", "strengths", "chunk_size", "records") if k not in v]
    if missing:
        raise described_error(name, "the state of a SweepInterrupted", f"a dict missing {missing}")
    return dict(v)


def check_device(name: str | Any, device: Any = None) -> torch.device:
    """``device`` as a ``torch.device`` that this machine can train on (``check_device(dev)``
    or ``check_device(name, dev)``)."""
    if device is None:
        name, device = "device", name
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise value_error(name, "a torch device such as 'cpu' or 'cuda'", device) from None
    usable = {"cpu": True, "cuda": torch.cuda.is_available()}
    if dev.type not in usable:
        raise value_error(name, "'cpu' or 'cuda' (a sweep trains on one of these)", device)
    if not usable[dev.type]:
        raise value_error(name, "available (this torch build or machine has no CUDA)", device)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise value_error(name, f"one of {torch.cuda.device_count()} CUDA devices", device)
    return dev


#: One checker per argument of :func:`sweep`, in the spirit of scikit-learn's
#: ``_parameter_constraints``: ``check(name, value)`` returns the value to use or raises
#: ``TypeError`` / ``ValueError`` naming the argument and repeating the value.
PARAMETER_CONSTRAINTS: dict[str, Callable[[str, Any], Any]] = {
    "strengths": _optional(_strengths),
    "penalty": _penalty,
    "loss": _optional(_loss),
    "folds": _int(2),
    "epochs": _int(1),
    "batch_size": _optional(_int(1)),
    "optimizer": _choice("adam", "sgd"),
    "lr": check_positive,
    "mode": _optional(_choice("grad", "decoupled", "proximal")),
    "vectorize": _vectorize,
    "solver": _choice("auto", "closed_form", "train"),
    "seed": _int(0, MAX_SEED),
    "progress": _bool,
    "early_stopping": _optional(_int(1)),
    "standardize": _bool,
    "refit": _refit_rule,
    "max_memory_mb": check_positive,
    "resume": _resume,
    "forward": _choice("auto", "bmm", "vmap"),
    "device": check_device,
    "on_chunk": _optional(_callable),
    "groups": _optional(lambda name, v: _as_array(name, v, labels=True)),
    "test": _optional(_pair),
    "read_threads": _int(0),
}


# ---------------------------------------------------------------------------- validate
def validate(make_model: Any, data: Any, **options: Any) -> Validated:
    """Check every argument of :func:`sweep` (same keywords and defaults) once, and the
    data against them; return the values to use. The command line calls this before it
    creates its output folder, so a bad argument never leaves a folder behind.

    >>> import numpy as np
    >>> v = validate(lambda: torch.nn.Linear(2, 1), (np.ones((4, 2)), [0.5, 1.5, 2.5, 3.5]),
    ...              folds=2)
    >>> v.loss, v.mode, len(v.grid)
    ('mse', 'grad', 13)
    >>> validate(lambda: torch.nn.Linear(2, 1), (np.ones((4, 2)), [1.0, 2, 3, 4]), epochs=0)
    Traceback (most recent call last):
    ValueError: epochs must be an integer >= 1, got 0
    """
    if not callable(make_model) or isinstance(make_model, nn.Module):
        raise type_error(
            "make_model", "a callable returning a fresh nn.Module (e.g. lambda: Net())", make_model
        )
    unknown = sorted(set(options) - set(PARAMETER_CONSTRAINTS))
    if unknown:
        raise TypeError(f"sweep() got unexpected keyword arguments {unknown}")
    opts = {**_DEFAULTS, **options}
    opts = {k: PARAMETER_CONSTRAINTS[k](k, v) for k, v in opts.items()}
    X, y, loss = _check_data(data, opts["loss"], opts["max_memory_mb"], opts["read_threads"])
    if isinstance(X, StreamedData) and opts["batch_size"] is None:
        raise value_error("batch_size", f"an integer for a Dataset streamed by batch (about "
                          f"{X.mb:.3g} MB > max_memory_mb: a full batch reads every row)", None)  # fmt: skip
    if opts["folds"] > len(X):
        raise value_error("folds", f"at most the number of rows ({len(X)})", opts["folds"])
    pen = opts["penalty"]
    mode = opts["mode"] or pen.sweep_mode
    grid = default_strengths() if opts["strengths"] is None else opts["strengths"]
    head = X.head if isinstance(X, StreamedData) else X  # a streamed X: its first two rows
    n_out, x_dtype = _check_model(make_model, head, y, loss)
    groups = _check_groups(opts["groups"], len(X), opts["folds"])
    test = None if opts["test"] is None else _check_test(opts["test"], X, y, loss)
    arrays = (X, y) if groups is None else (X, y, groups)
    fingerprint = _fingerprint(*arrays)
    return Validated(X, y, loss, grid, pen, mode, opts, n_out, fingerprint, groups, test, x_dtype)


def _check_groups(groups: np.ndarray | None, n: int, folds: int) -> np.ndarray | None:
    """One group label per row, at least ``folds`` distinct groups."""
    if groups is None:
        return None
    if groups.ndim != 1 or len(groups) != n:
        raise described_error("groups", f"one label per row of X ({n})", f"shape {groups.shape}")
    if groups.dtype.kind == "f" and not np.isfinite(groups).all():
        raise described_error("groups", "labels without NaN or inf", "non-finite values")
    k = len(np.unique(groups))
    if folds > k:
        raise value_error("folds", f"at most the number of groups ({k})", folds)
    return groups


def _check_test(test: tuple[Any, Any], X: np.ndarray, y: np.ndarray, loss: str) -> tuple:
    """A held-out ``(X_test, y_test)`` like the data: same width, labels it has seen."""
    Xt = _as_array("test X", test[0])
    yt = _as_array("test y", test[1], labels=loss == _CE)
    if Xt.ndim != X.ndim or Xt.shape[1:] != X.shape[1:] or len(Xt) == 0:
        want = ", ".join(str(d) for d in X.shape[1:])
        raise described_error("test", f"(X_test, y_test) with X_test of shape (rows, {want})",
                              f"X_test of shape {Xt.shape}")  # fmt: skip
    if len(yt) != len(Xt) or yt.shape[1:] != y.shape[1:]:
        raise described_error(
            "test", f"y_test of shape ({len(Xt)}, ...) like y", f"shape {yt.shape}"
        )
    if not np.isfinite(Xt).all():
        raise described_error("test", "finite X_test (no NaN or inf)", "non-finite values")
    if callable(loss):
        return Xt, yt
    if loss == _CE:
        unseen = np.setdiff1d(yt, np.unique(y))
        if len(unseen):
            raise described_error("test", "labels that appear in y", f"{unseen[:5].tolist()!r}")
        return Xt, yt
    yt = yt.astype(np.float64)
    if not np.isfinite(yt).all():
        raise described_error("test", "finite y_test (no NaN or inf)", "non-finite values")
    return Xt, yt


def _as_array(name: str, v: Any, labels: bool = False) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().resolve_conj().numpy()
    try:
        a = np.asarray(v)
    except Exception as e:  # ragged lists and other exotic inputs
        raise type_error(name, "an array", type(v).__name__) from e
    if labels and a.dtype.kind in "USb":  # class labels may be text
        return a
    if a.dtype.kind == "c":
        raise described_error(name, "real (not complex)", f"dtype {a.dtype}")
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise described_error(name, "a numeric array", f"an array of dtype {a.dtype}")
    return a


def _dataset(ds: Any, budget_mb: float, threads: int = 0) -> tuple[Any, torch.Tensor]:
    """A map-style ``Dataset`` of ``(x, y)`` pairs as ``(X, y)``: two stacked tensors when
    they fit ``max_memory_mb``, else ``(StreamedData, y)``: ``X`` is then read from the
    Dataset batch by batch while training (:mod:`torchpenalty.sweep.stream`). The estimate
    is ``len(ds)`` times the bytes of the first item's ``x`` and ``y`` as tensors (what the
    stacked copy holds)."""
    if isinstance(ds, torch.utils.data.IterableDataset) or not hasattr(ds, "__len__"):
        raise type_error("data", "a map-style Dataset (with __len__ and __getitem__)", ds)
    n = len(ds)
    if n == 0:
        raise described_error("data", "a non-empty Dataset", "0 items")
    first = read_items(ds, [0])[0]
    per_item = sum(t.element_size() * t.numel() for t in first)
    need_mb = n * per_item / 2**20
    if need_mb > budget_mb:
        return scan(ds, mb=need_mb, block=_read_rows(budget_mb, per_item), threads=threads)
    pairs = [first]
    for start in range(1, n, READ_ROWS):  # torch's batched fetch, a block at a time
        pairs += read_items(ds, range(start, min(n, start + READ_ROWS)), threads)
    try:
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    except RuntimeError as e:
        got = str(e).splitlines()[0]
        raise described_error("data", "a Dataset whose items all have one shape", got) from None


def _read_rows(budget_mb: float, row_bytes: int) -> int:
    """Items per request in the passes over a streamed Dataset: at most
    :data:`~torchpenalty.sweep.stream.READ_ROWS`, holding at most a quarter of the budget."""
    return int(max(1, min(READ_ROWS, budget_mb * 2**20 / 4 // max(1, row_bytes))))


def _check_data(
    data: Any, loss: str | Callable[..., Any] | None, budget_mb: float = 2048.0, threads: int = 0
) -> tuple[np.ndarray, np.ndarray, str | Callable[..., Any]]:
    """``(X, y)`` as arrays, and the loss: ``None`` infers it as the command line does
    (text, boolean or at most 10 distinct integer values: classification). ``X`` has rows
    of any shape ``(n, ...)``. A map-style ``Dataset`` is stacked first, or when it does
    not fit ``budget_mb`` scanned (:func:`~torchpenalty.sweep.stream.scan`): ``X`` is then
    a :class:`~torchpenalty.sweep.stream.StreamedData`, checked item by item."""
    from ..data import infer_task

    if isinstance(data, torch.utils.data.Dataset):
        data = _dataset(data, budget_mb, threads)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise type_error("data", "a pair (X, y) or a Dataset of (x, y) pairs", type(data).__name__)
    streamed = isinstance(data[0], StreamedData)
    X = data[0] if streamed else _as_array("X", data[0])
    if streamed:
        _as_array("X", X.head)  # real numbers (finite: checked by the scan)
    y = _as_array("y", data[1], labels=loss is None or loss == _CE)
    if X.ndim < 2:
        raise described_error("X", "a 2-D array (rows, features) or rows of any shape (rows, ...)",
                              f"shape {X.shape}")  # fmt: skip
    if y.ndim == 0 or len(y) != len(X):
        got = f"{len(y)} rows" if y.ndim else f"shape {y.shape}"
        raise described_error("y", f"of the same length as X ({len(X)} rows)", got)
    if not streamed and not np.isfinite(X).all():
        raise described_error("X", "finite (no NaN or inf)", "non-finite values")
    if y.dtype.kind in "biuf" and y.size and np.all(y.reshape(len(y), -1) == y.reshape(-1)[0]):
        raise described_error("y", "non-constant", f"every value {y.reshape(-1)[0].item()!r}")
    if callable(loss):  # the user's loss sees y as given (not standardized)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise described_error("y", "finite (no NaN or inf)", "non-finite values")
        return X, y, loss
    looks_like_classes = y.ndim == 1 and infer_task(y) == "classification"
    if loss is None:
        loss = _CE if looks_like_classes else _MSE
    elif loss == _MSE and looks_like_classes and y.dtype.kind in "biuf":
        warnings.warn(
            f"y holds {len(np.unique(y))} distinct integer values: if these are classes, use "
            "loss='cross_entropy' (loss=None infers it)",
            UserWarning,
            stacklevel=4,
        )
    if loss == _CE:
        return X, _check_labels(y), loss
    if y.dtype.kind not in "biuf":
        raise described_error("y", "numeric for loss='mse'", f"dtype {y.dtype}")
    y64 = y.astype(np.float64)
    if not np.isfinite(y64).all():
        raise described_error("y", "finite (no NaN or inf)", "non-finite values")
    if np.all(np.ptp(y64.reshape(len(y), -1), axis=0) == 0):
        raise described_error("y", "not constant in every column", "constant columns")
    return X, y64, loss


def _check_labels(y: np.ndarray) -> np.ndarray:
    if y.ndim != 1:
        raise described_error("y", "1-D class labels for loss='cross_entropy'", f"shape {y.shape}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise described_error("y", "class labels (no NaN or inf)", "non-finite values")
    classes = np.unique(y)
    if len(classes) < 2:
        raise described_error(
            "y", "labels of at least 2 classes for cross_entropy", f"only {classes.tolist()!r}"
        )
    return y


def _tensor(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``a`` as the tensor a model or a loss sees: floats and booleans as float32, integers
    as int64 (token ids, class labels), or ``dtype``."""
    t = torch.as_tensor(np.ascontiguousarray(a))
    if dtype is None:
        dtype = torch.int64 if a.dtype.kind in "iu" else torch.float32
    return t.to(dtype)


def _run_model(model: nn.Module, X: np.ndarray) -> tuple[Any, torch.dtype]:
    """The model's output on two rows of X, and the input dtype it takes: float32 for float
    and boolean X; for integer X float32 when the model accepts it (tabular counts), else
    int64 (token ids for ``nn.Embedding``/``nn.EmbeddingBag``)."""
    dtypes = [torch.float32] + ([torch.int64] if X.dtype.kind in "iu" else [])
    errors = []
    for dtype in dtypes:
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                return model.eval()(_tensor(X[:2], dtype)), dtype
        except Exception as e:
            errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if X.ndim == 2:
        raise described_error("X", "of a width the model accepts",
                              f"{X.shape[1]} columns ({errors[-1]})")  # fmt: skip
    raise described_error("X", "of a row shape the model accepts",
                          f"rows of shape {X.shape[1:]} ({errors[-1]})")  # fmt: skip


def _check_model(
    make_model: Callable[[], Any], X: np.ndarray, y: np.ndarray, loss: Any
) -> tuple[int, torch.dtype]:
    """Build one model and run it on two rows: it must be an ``nn.Module`` with trainable
    parameters taking X's rows and giving one output per class (or target column); a
    callable loss must turn that output and two rows of y into one number. Returns the
    output width and the input dtype."""
    with torch.random.fork_rng(devices=[]):
        model = make_model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"make_model must return an nn.Module, got {model!r}")
    if not any(p.requires_grad for p in model.parameters()):
        raise described_error("make_model", "a model with trainable parameters", repr(model))
    out, x_dtype = _run_model(model, X)
    shaped = isinstance(out, torch.Tensor) and out.ndim >= 1 and out.shape[0] == 2
    if not shaped or (not callable(loss) and out.ndim > 2):
        raise described_error("make_model", "a model whose output is (rows, outputs)",
                              f"output {getattr(out, 'shape', type(out).__name__)}")  # fmt: skip
    width = 1 if out.ndim == 1 else out.shape[1]
    if callable(loss):
        _check_loss(loss, out, _tensor(y[:2]))
    elif loss == _CE:
        k = len(np.unique(y))
        if width < k:
            raise described_error("make_model", f"a model with one output per class ({k})",
                                  f"{width} outputs")  # fmt: skip
    elif width != (1 if y.ndim == 1 else y.shape[1]):
        want = 1 if y.ndim == 1 else y.shape[1]
        raise described_error("make_model", f"a model with {want} outputs (y's columns)",
                              f"{width} outputs")  # fmt: skip
    return width, x_dtype


def _check_loss(loss: Callable[..., Any], out: torch.Tensor, target: torch.Tensor) -> None:
    """A callable loss must take (output, target) of two rows and return one number."""
    want = "a callable (output, target) -> mean loss (a tensor with one element)"
    try:
        value = loss(out, target)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise described_error("loss", want, f"{loss_name(loss)} failing on the model's output "
                              f"{tuple(out.shape)} and y {tuple(target.shape)}: {msg}") from None  # fmt: skip
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = getattr(value, "shape", type(value).__name__)
        raise described_error("loss", want, f"{loss_name(loss)} returning {got}")


def _fingerprint(*arrays: np.ndarray) -> str:
    """sha256 of the data's values, shapes and dtypes: a resume must see the same data."""
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, StreamedData):  # X, hashed row by row by the scan: the same digest
            h = a.x_hash.copy()
            continue
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- plan
@dataclass
class _Plan:
    engine: Engine
    tasks: list[Task]
    chunk_size: int
    settings: dict[str, Any]
    meta: dict[str, Any]
    grid: list[float]
    folds: int


def _prepare(
    X: np.ndarray,
    y: np.ndarray,
    loss: str | Callable[..., Any],
    folds: int,
    seed: int,
    standardize: bool,
    groups: np.ndarray | None = None,
    x_dtype: torch.dtype = torch.float32,
) -> tuple[Problem, dict[str, Any]]:
    """Folds (grouped with ``groups``, else stratified for ``loss="cross_entropy"``) plus
    the all-rows refit "fold", each with its own standardization statistics fitted on its
    training rows only. Only tabular float features (2-D X taken as float32) and ``"mse"``
    targets are standardized; other inputs (images, token ids) and the targets of a
    callable loss pass through, one view shared by every fold (no copies)."""
    n = len(X)
    splits, classes, y_codes = _folds(y, loss, folds, seed, groups)
    if isinstance(X, StreamedData):
        return _prepare_streamed(X, y, loss, splits, standardize, x_dtype, classes, y_codes)
    if X.ndim != 2 or x_dtype != torch.float32 or callable(loss):
        return _prepare_passthrough(X, y, loss, splits, standardize, x_dtype, classes, y_codes)
    Y2 = None if loss == _CE else y.reshape(n, -1)
    xs, ys, scales, stats = [], [], [], []
    for tr, _ in splits:
        sx = Standardizer(X[tr] if standardize else np.zeros((1, X.shape[1])), name="X")
        xs.append(sx.transform(X))
        sy = None
        if Y2 is not None:
            sy = Standardizer(Y2[tr] if standardize else np.zeros((1, Y2.shape[1])), name="y")
            ys.append(sy.transform(Y2))
        scales.append(np.ones(1) if sy is None else sy.std)
        stats.append((sx, sy))
    f32 = torch.float32
    problem = Problem(
        X=torch.tensor(np.stack(xs), dtype=f32),
        Y=torch.tensor(y_codes) if Y2 is None else torch.tensor(np.stack(ys), dtype=f32),
        y_scale=torch.tensor(np.stack(scales), dtype=f32),
        train_idx=[s[0] for s in splits],
        val_idx=[s[1] for s in splits],
        loss=loss,
    )
    return problem, {"classes": classes, "stats": stats}


def _folds(
    y: np.ndarray,
    loss: str | Callable[..., Any],
    folds: int,
    seed: int,
    groups: np.ndarray | None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray | None, np.ndarray | None]:
    """The (train, val) splits (grouped with ``groups``, else stratified for
    ``loss="cross_entropy"``) plus the all-rows refit split, the classes and the class
    codes of ``y`` (None unless cross-entropy)."""
    n = len(y)
    classes, y_codes = np.unique(y, return_inverse=True) if loss == _CE else (None, None)
    if groups is not None:
        splits = group_kfold(groups, folds, seed)
    elif loss == _CE:
        splits = stratified_kfold(y_codes, folds, seed)
    else:
        splits = kfold(n, folds, seed)
    return [*splits, (np.arange(n), np.array([], dtype=np.int64))], classes, y_codes


def _prepare_passthrough(
    X: np.ndarray,
    y: np.ndarray,
    loss: str | Callable[..., Any],
    splits: list[tuple[np.ndarray, np.ndarray]],
    standardize: bool,
    x_dtype: torch.dtype,
    classes: np.ndarray | None,
    y_codes: np.ndarray | None,
) -> tuple[Problem, dict[str, Any]]:
    """``_prepare`` for inputs that are not standardized: X as ``x_dtype``, one copy for
    all folds; "mse" targets standardized per fold (as for tabular data), cross-entropy
    targets as class codes, a callable loss's targets as given."""
    k1 = len(splits)
    Xt = _tensor(X, x_dtype)
    tabular = X.ndim == 2 and x_dtype == torch.float32  # only for a callable loss
    if tabular and standardize:
        sxs = [Standardizer(X[tr], name="X") for tr, _ in splits]
        Xs = torch.tensor(np.stack([sx.transform(X) for sx in sxs]), dtype=torch.float32)
    else:
        sxs, Xs = [None] * k1, Xt.unsqueeze(0).expand(k1, *Xt.shape)
    Y, scales, sys_ = _targets(y, loss, splits, standardize, y_codes)
    stats = list(zip(sxs, sys_, strict=True))
    problem = Problem(X=Xs, Y=Y, y_scale=scales, train_idx=[s[0] for s in splits],
                      val_idx=[s[1] for s in splits], loss=loss)  # fmt: skip
    return problem, {"classes": classes, "stats": stats}


def _targets(
    y: np.ndarray,
    loss: str | Callable[..., Any],
    splits: list[tuple[np.ndarray, np.ndarray]],
    standardize: bool,
    y_codes: np.ndarray | None,
) -> tuple[torch.Tensor, torch.Tensor, list[Standardizer | None]]:
    """Targets as the engine reads them, their per-fold scales back to the data's units
    and their per-fold standardizers: "mse" targets standardized per fold,
    cross-entropy targets as class codes, a callable loss's targets as given."""
    k1 = len(splits)
    if callable(loss):
        return _tensor(y), torch.ones(k1, 1), [None] * k1
    if loss == _CE:
        return torch.tensor(y_codes), torch.ones(k1, 1), [None] * k1
    Y2 = y.reshape(len(y), -1)
    sys_ = [Standardizer(Y2[tr] if standardize else np.zeros((1, Y2.shape[1])), name="y")
            for tr, _ in splits]  # fmt: skip
    Y = torch.tensor(np.stack([sy.transform(Y2) for sy in sys_]), dtype=torch.float32)
    return Y, torch.tensor(np.stack([sy.std for sy in sys_]), dtype=torch.float32), sys_


def _prepare_streamed(
    X: StreamedData,
    y: np.ndarray,
    loss: str | Callable[..., Any],
    splits: list[tuple[np.ndarray, np.ndarray]],
    standardize: bool,
    x_dtype: torch.dtype,
    classes: np.ndarray | None,
    y_codes: np.ndarray | None,
) -> tuple[Problem, dict[str, Any]]:
    """``_prepare`` for a streamed Dataset: the same folds, targets (in memory) and
    statistics, but ``X`` a :class:`~torchpenalty.sweep.stream.StreamedRows` that reads
    rows when asked. Tabular features are standardized as in memory: per-fold means and
    population stds from one more pass over the Dataset (``fold_moments``), applied to
    each batch (``standardize=False``: mean 0 and std 1, as in memory)."""
    k1, d = len(splits), int(np.prod(X.row_shape))
    tabular = X.ndim == 2 and x_dtype == torch.float32
    moments: list[Any] = [None] * k1
    if tabular and standardize:
        part = np.empty(len(X), dtype=np.int64)
        for f, (_, va) in enumerate(splits[:-1]):
            part[va] = f
        moments = fold_moments(X, part, k1 - 1)
    elif tabular and not callable(loss):  # as in memory: Standardizer of zeros
        moments = [Moments(np.zeros(d), np.ones(d))] * k1
    Y, scales, sys_ = _targets(y, loss, splits, standardize, y_codes)
    rows = StreamedRows(X, k1, x_dtype, moments if tabular and standardize else None)
    problem = Problem(X=rows, Y=Y, y_scale=scales, train_idx=[s[0] for s in splits],
                      val_idx=[s[1] for s in splits], loss=loss)  # fmt: skip
    return problem, {"classes": classes, "stats": list(zip(moments, sys_, strict=True))}


def _to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """``t`` on ``dev``; a fold-expanded view (stride 0) stays one copy there."""
    if t.ndim and t.shape[0] > 1 and t.stride(0) == 0:
        return t[0].to(dev).unsqueeze(0).expand(t.shape)
    return t.to(dev)


def _activations(engine: Engine) -> tuple[int, int]:
    """The model's parameter count and the elements of all module outputs on two rows."""
    n_params = sum(p.numel() for p in engine.base.parameters())
    acts: list[int] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: acts.append(o.numel()))
        for m in engine.base.modules()
    ]
    try:
        fold = torch.zeros(1, dtype=torch.long, device=engine.device)
        rows = torch.arange(2, device=engine.device).view(1, 2)
        with torch.no_grad(), engine.train_mode(False):
            engine.base(engine.problem.inputs(fold, rows)[0])
    except Exception:  # a model that cannot run one row: assume activations ~ parameters
        acts = [n_params]
    finally:
        for h in hooks:
            h.remove()
    return n_params, sum(acts)


def _chunk_size(
    engine: Engine, budget_mb: float, batch: int, n_rows: int, row_bytes: int = 0
) -> int:
    """Models per chunk so that parameters, gradients, optimizer state, copies and
    activations of a chunk fit in ``budget_mb`` (and, for streamed data, ``row_bytes``
    per input row read for one model)."""
    n_params, acts = _activations(engine)
    rows = max(batch, n_rows)
    per_model = 4 * (8 * n_params + 3 * rows * acts) + rows * row_bytes
    return max(1, int(budget_mb * 2**20 // per_model))


def _streamed_rows(engine: Engine, budget_mb: float) -> tuple[int, int]:
    """For streamed data: rows per model in one evaluation batch (at least a training
    batch, at most 4096, and a quarter of the budget for one model) and the bytes one
    input row costs once read (raw and standardized, float64 at most)."""
    row_bytes = 16 * int(np.prod(engine.problem.X.shape[2:]))
    _, acts = _activations(engine)
    fit = budget_mb * 2**20 / 4 // (12 * acts + row_bytes)
    return int(max(engine.batch_size, min(4096, fit))), row_bytes


def _plan(make_model: Callable[[], nn.Module], v: Validated) -> _Plan:
    """Folds, the engine, one task per (strength, fold) and the chunk size."""
    o = v.options
    problem, meta = _prepare(v.X, v.y, v.loss, o["folds"], o["seed"], o["standardize"],
                             v.groups, v.x_dtype)  # fmt: skip
    dev = o["device"]
    streamed = isinstance(v.X, StreamedData)
    if streamed:  # rows are read to the device batch by batch
        problem.X = problem.X.to(dev)
    else:
        problem.X = _to_device(problem.X, dev)
    problem.Y, problem.y_scale = (_to_device(t, dev) for t in (problem.Y, problem.y_scale))
    engine = Engine(make_model, problem, v.penalty, epochs=o["epochs"],
                    batch_size=o["batch_size"], optimizer=o["optimizer"], lr=o["lr"],
                    mode=v.mode, seed=o["seed"], early_stopping=o["early_stopping"],
                    forward=o["forward"], device=dev)  # fmt: skip
    tasks = [Task(i, k, s) for i, s in enumerate(v.grid) for k in range(o["folds"])]
    rows, row_bytes = len(v.X), 0
    if streamed:  # fold-major: the models of a chunk mostly share their rows
        tasks.sort(key=lambda t: (t.fold, t.i))
        rows, row_bytes = _streamed_rows(engine, o["max_memory_mb"])
        problem.eval_rows = rows
    settings = {
        "penalty": v.penalty.get_config() | {"strength": None},
        "loss": loss_name(v.loss),
        **{k: o[k] for k in ("folds", "epochs", "batch_size", "optimizer", "lr")},
        "mode": v.mode,
        **{k: o[k] for k in ("seed", "early_stopping", "standardize")},
        "n_rows": len(v.X),
        **_input_settings(v),
        "data_sha256": v.fingerprint,
        "forward": engine.forward_kind,
    }
    if v.groups is not None:
        settings["groups"] = len(np.unique(v.groups))
    size = 1
    if o["vectorize"]:
        size = _chunk_size(engine, o["max_memory_mb"], engine.batch_size, rows, row_bytes)
    # a resume keeps its chunking; under torchrun every rank must chunk alike: no probe
    if o["vectorize"] == "auto" and o["resume"] is None and world()[1] == 1:
        choice = probe(engine, tasks, size)
        size = choice.chunk_size if choice.vectorize else 1
        settings["vectorize_plan"] = choice.to_dict()
    _, world_size = world()
    if world_size > 1:  # under torchrun: every rank gets a share of the grid
        size = min(size, -(-len(tasks) // world_size))
    return _Plan(engine, tasks, size, settings, meta, v.grid, o["folds"])


def _input_settings(v: Validated) -> dict[str, Any]:
    """What ``result.predict`` needs to take new inputs like the data: tabular data keeps
    ``n_features``; other inputs record their row shape and dtype (not standardized)."""
    data = {}
    if isinstance(v.X, StreamedData):  # how much the budget refused
        data = {"data": "streamed", "data_mb": round(v.X.mb, 3)}
    if v.tabular:
        return {"n_features": int(v.X.shape[1]), **data}
    return {
        **data,
        "x_shape": [int(d) for d in v.X.shape[1:]],
        "x_dtype": str(v.x_dtype).split(".")[-1],
    }


# ---------------------------------------------------------------------------- resume
def _comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings that must match for a resume (not the chunking or the forward kind)."""
    skip = ("chunk_size", "chunks", "forward", "world_size", "vectorize_plan")
    return {k: v for k, v in settings.items() if k not in skip}


def _state(plan: _Plan, done: dict[tuple[int, int], Record], snapshot: Any) -> dict[str, Any]:
    """What ``resume=`` takes: settings, grid, chunk size, finished records keyed by
    (strength index, fold), and the snapshot of the chunk in progress (tagged with its
    tasks, so it can only ever continue that chunk)."""
    return {
        "settings": _comparable(plan.settings),
        "strengths": plan.grid,
        "chunk_size": plan.chunk_size,
        "records": [done[k].to_dict() for k in sorted(done)],
        "snapshot": snapshot,
    }


def _restore(plan: _Plan, resume: dict[str, Any]) -> tuple[dict, Any]:
    """Records and snapshot of ``resume`` after checking it belongs to this sweep."""
    if world()[1] > 1:
        raise ValueError("resume is not supported under torch.distributed; resume in one process")
    if _comparable(resume["settings"]) != _comparable(plan.settings) or list(
        resume["strengths"]
    ) != list(plan.grid):
        raise ValueError("resume must come from a sweep with the same data and settings")
    size = resume["chunk_size"]
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise described_error("resume", "a sweep state", f"chunk_size {size!r}")
    plan.chunk_size = int(size)
    done: dict[tuple[int, int], Record] = {}
    try:
        for r in resume["records"]:
            rec = Record(**r)
            if not (0 <= rec.i < len(plan.grid) and 0 <= rec.fold < plan.folds):
                raise ValueError(f"record for strength index {rec.i}, fold {rec.fold}")
            done[(rec.i, rec.fold)] = rec  # keyed: a duplicate replaces, never adds
    except (TypeError, ValueError) as e:
        raise described_error("resume", "a sweep state", f"bad records ({e})") from None
    return done, resume.get("snapshot")


# ---------------------------------------------------------------------------- run
def _keys(tasks: list[Task]) -> list[list[int]]:
    return [[t.i, t.fold] for t in tasks]


def _chunks(engine: Engine, tasks: list[Task], size: int) -> list[list[Task]]:
    """``tasks`` in chunks of at most ``size``, in order, never mixing models that would
    not train there as they do alone (:meth:`Engine.chunk_keys`: different numbers of
    mini-batches per epoch; for batch norm, different first batches), each group cut into
    chunks of about equal size."""
    keys = engine.chunk_keys(tasks)
    out: list[list[Task]] = []
    for key in dict.fromkeys(keys):  # in order of first appearance
        group = [t for t, k in zip(tasks, keys, strict=True) if k == key]
        step = _balanced(len(group), size)
        out += [group[j : j + step] for j in range(0, len(group), step)]
    return out


def _run_chunks(
    plan: _Plan,
    done: dict[tuple[int, int], Record],
    snap: Any,
    progress: bool,
    on_chunk: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Train the tasks not in ``done``, chunk after chunk, adding their records to
    ``done``; a snapshot continues only the chunk it was taken in. On Ctrl-C raise
    :class:`SweepInterrupted` with the state so far."""
    rank, world_size = world()
    todo = [t for t in plan.tasks if (t.i, t.fold) not in done]
    chunks = _chunks(plan.engine, todo, plan.chunk_size)
    mine = chunks[rank::world_size]
    epochs = plan.engine.epochs
    skipped = len(_chunks(plan.engine, plan.tasks, plan.chunk_size)) - len(chunks)
    bar = _progress(progress and rank == 0, total=(skipped + len(mine)) * epochs,
                    initial=skipped * epochs)  # fmt: skip
    current: dict[str, Any] = {"snapshot": None}

    def on_epoch(epoch: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        current["snapshot"] = {"tasks": current["tasks"], **snapshot()}
        if bar is not None:
            bar.update(1)

    try:
        if on_chunk is not None:  # the state before the first model (and after a resume)
            on_chunk(_state(plan, done, snap))
        for chunk in mine:
            current.update(tasks=_keys(chunk), snapshot=None)
            use = snap if snap is not None and snap.get("tasks") == current["tasks"] else None
            if use is not None and bar is not None:
                bar.update(use["epoch"])
            recs, _ = plan.engine.run(chunk, state=use, on_epoch=on_epoch)
            snap = current["snapshot"] = None
            if bar is not None and plan.engine.early_stopping and recs:
                bar.update(epochs - len(recs[0].history["val"]))
            done.update(((r.i, r.fold), r) for r in recs)
            if on_chunk is not None:
                on_chunk(_state(plan, done, None))
    except KeyboardInterrupt:
        raise SweepInterrupted(
            _state(plan, done, current["snapshot"]), _result(plan, done)
        ) from None
    finally:
        if bar is not None:
            bar.close()


def _result(plan: _Plan, done: dict[tuple[int, int], Record]) -> SweepResult:
    settings = {**plan.settings, "chunk_size": plan.chunk_size}
    settings["chunks"] = len(_chunks(plan.engine, plan.tasks, plan.chunk_size))
    classes = plan.meta["classes"]
    result = SweepResult(
        plan.grid,
        plan.folds,
        [done[k] for k in sorted(done)],
        settings,
        classes=None if classes is None else classes.tolist(),
        model_name=describe_model(plan.engine.base),
    )
    return result


def _gather(done: dict[tuple[int, int], Record]) -> None:
    """Under torchrun, every rank ends with every rank's records."""
    gathered = all_gather_objects([r.to_dict() for r in done.values()])
    done.update(((d["i"], d["fold"]), Record(**d)) for part in gathered for d in part)


def _finish(plan: _Plan, done: dict[tuple[int, int], Record], refit: str | bool) -> SweepResult:
    """The result; with ``refit``, one model trained on all rows at the chosen strength."""
    result = _result(plan, done)
    if world()[1] > 1:
        result.settings["world_size"] = world()[1]
    if refit:
        result.refit = refit
        if result.chosen_strength is None:  # every strength diverged: nothing to refit
            return result
        try:
            result.model = _refit(plan, result)
        except KeyboardInterrupt:  # every fold is done: a resume only redoes the refit
            raise SweepInterrupted(_state(plan, done, None), result) from None
    return result


def held_out_scores(
    result: SweepResult, X_test: Any, y_test: Any, loss: Callable[..., Any] | None = None
) -> dict[str, float]:
    """The refit model scored on held-out data, in the units of the CV table: ``loss``
    (mean squared error in the target's units, mean cross-entropy, or the value of the
    callable ``loss`` the sweep used) and, for classification, ``accuracy``; ``rows`` is
    the number of test rows."""
    if result.model is None:
        raise ValueError("test needs a refit model: refit was False or every strength diverged")
    x = _as_array("X_test", X_test)
    Xt = _tensor(x, getattr(torch, result.settings.get("x_dtype", "float32")))
    with torch.no_grad():
        out = result.model(Xt)
        if callable(loss):
            return {"rows": len(Xt), "loss": float(loss(out, _tensor(np.asarray(y_test))))}
    if result.settings["loss"] == _CE:
        codes = torch.as_tensor(np.searchsorted(np.asarray(result.classes), y_test))
        loss = nn.functional.cross_entropy(out, codes).item()
        acc = (out.argmax(-1) == codes).double().mean().item()
        return {"rows": len(Xt), "loss": loss, "accuracy": acc}
    yt = torch.as_tensor(np.asarray(y_test, dtype=np.float64)).reshape(len(Xt), -1)
    err = (out.double().reshape(len(Xt), -1) - yt).pow(2).mean().item()
    return {"rows": len(Xt), "loss": err}


def _refit(plan: _Plan, result: SweepResult) -> nn.Module:
    """Train one model on all rows at the chosen strength (for the median best epoch count
    of its folds when early stopping was on); return it on the CPU, taking raw inputs."""
    engine = plan.engine
    s = result.chosen_strength
    k = result.folds  # the all-rows "fold"
    i = result.strengths.index(s)
    epochs = engine.epochs
    if engine.early_stopping:
        epochs = int(np.median([r.best_epoch for r in result.records if r.i == i])) + 1
    _, params = engine.run([Task(i, k, s)], epochs=epochs, early_stopping=False)
    model = engine.build_model(k)  # on the CPU
    model.load_state_dict({n: p[0].cpu() for n, p in params.items()}, strict=False)
    sx, sy = plan.meta["stats"][k]
    f32 = torch.float32
    if sx is None and sy is None:  # nothing was standardized: the model itself
        return model.eval()
    return StandardizedModel(
        model,
        None if sx is None else torch.tensor(sx.mean, dtype=f32),
        None if sx is None else torch.tensor(sx.std, dtype=f32),
        None if sy is None else torch.tensor(sy.mean, dtype=f32),
        None if sy is None else torch.tensor(sy.std, dtype=f32),
    ).eval()


def _progress(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar without it
        return None
    return tqdm(total=total, initial=initial, desc="sweep", unit="epoch", leave=False)


# ---------------------------------------------------------------------------- sweep
_DEFAULTS: dict[str, Any] = {
    "strengths": None,
    "penalty": "l2",
    "loss": None,
    "folds": 5,
    "epochs": 100,
    "batch_size": 64,
    "optimizer": "adam",
    "lr": 1e-2,
    "mode": None,
    "vectorize": "auto",
    "solver": "auto",
    "seed": 0,
    "progress": True,
    "early_stopping": None,
    "standardize": True,
    "refit": "best",
    "max_memory_mb": 2048.0,
    "resume": None,
    "forward": "auto",
    "device": "cpu",
    "on_chunk": None,
    "groups": None,
    "test": None,
    "read_threads": 0,
}


def sweep(
    make_model: Callable[[], nn.Module],
    data: tuple[Any, Any],
    *,
    strengths: Sequence[float] | None = None,
    penalty: str | Penalty | dict = "l2",
    loss: str | None = None,
    folds: int = 5,
    epochs: int = 100,
    batch_size: int | None = 64,
    optimizer: str = "adam",
    lr: float = 1e-2,
    mode: str | None = None,
    vectorize: bool | str = "auto",
    solver: str = "auto",
    seed: int = 0,
    progress: bool = True,
    early_stopping: int | None = None,
    standardize: bool = True,
    refit: str | bool = "best",
    max_memory_mb: float = 2048.0,
    resume: dict[str, Any] | None = None,
    forward: str = "auto",
    device: str | torch.device = "cpu",
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    groups: Any = None,
    test: tuple[Any, Any] | None = None,
    read_threads: int = 0,
) -> SweepResult:
    """Cross-validate the penalty strength: train one model per (strength, fold), all at
    once, and pick the strength.

    Args:
        make_model: returns a fresh ``nn.Module``. Each fold's models start from the same
            initialization (seeded by ``seed`` and the fold) whatever the strength, so
            strengths are compared on equal terms. Parameters with ``requires_grad=False``
            stay frozen.
        data: ``(X, y)``: ``X`` of shape ``(n, d)`` (tabular) or rows of any shape
            ``(n, ...)`` (images ``(n, C, H, W)``, sequences, integer token ids); ``y`` of
            shape ``(n,)`` or ``(n, k)`` (regression) or class labels (numbers, text or
            booleans). Float X goes to the model as float32; integer X as float32 when the
            model accepts it, else as int64 (token ids for ``nn.Embedding``). Or a map-style
            ``torch.utils.data.Dataset`` of ``(x, y)`` pairs: stacked into ``(X, y)`` when
            ``len(dataset)`` times the bytes of its first item fits ``max_memory_mb``, else
            streamed: every model reads its rows from the Dataset batch by batch (its
            ``__getitems__`` when it has one, else ``dataset[i]``), never all of ``X``,
            with the same folds, statistics and numbers as stacked (up to float rounding);
            ``y`` is read once and kept. ``result.settings["data"]`` is then
            ``"streamed"`` (and ``"data_mb"`` the size it would have taken); the closed
            form reads it once for per-fold scatter matrices instead of an SVD. See
            :mod:`torchpenalty.sweep.stream`.
        strengths: the grid (default :func:`default_strengths`: 1e-5 .. 10, 13 values).
        penalty: ``"l2"``, ``"l1"``, ``"elastic_net"``, ``"group_lasso"`` or such a
            penalty object (its strength is ignored) applied by the default parameter rule.
        loss: ``"mse"``, ``"cross_entropy"`` (folds are then stratified) or ``None``
            (default): inferred as the command line does, classification for text,
            boolean or at most 10 distinct integer labels; recorded as ``result.loss``.
            ``loss="mse"`` on such labels warns. Or a callable ``(output, target) -> mean
            loss`` (e.g. ``torch.nn.functional.huber_loss``), applied to each row alone with
            ``torch.func.vmap``; it sees ``y`` as given (integers as int64, floats as
            float32, never standardized), folds are plain K-fold (stratified only for
            ``"cross_entropy"``), ``result.loss`` is its ``module.qualname`` and
            ``result.predict`` returns the model's raw outputs.
        folds: K of K-fold cross-validation (shuffled with ``seed``).
        epochs, batch_size, optimizer, lr: training (``batch_size=None``: full batch;
            ``optimizer`` ``"adam"`` or ``"sgd"`` with momentum 0.9). Mini-batches are where
            vectorizing pays most: the sequential loop is bound by per-step overhead.
        mode: how the penalty is applied: ``"grad"``, ``"decoupled"`` or ``"proximal"``;
            default ``"proximal"`` for L1, elastic net and group lasso (exact zeros) and
            ``"grad"`` for L2.
        vectorize: ``True``: train the models stacked, as one batched computation;
            ``False``: one model at a time through the same code (same numbers up to float
            rounding); ``"auto"`` (default): time a few steps of both and keep the faster
            (:func:`torchpenalty.sweep.plan.probe`; the choice and both timings are in
            ``result.settings["vectorize_plan"]``).
        solver: ``"auto"`` (default): exact where it can be -- a model that is one
            ``nn.Linear`` with ``penalty="l2"``, ``loss="mse"`` (``mode="grad"``, no early
            stopping) is solved in closed form per fold
            (:mod:`torchpenalty.sweep.closed_form`, equal to scikit-learn's ``Ridge`` with
            ``alpha = s * n_train / 2``), anything else is trained; ``"closed_form"``
            insists (``ValueError`` if it does not apply); ``"train"`` always trains.
        seed: an integer in [0, 2**32 - 1] for the folds, initializations and batches.
        early_stopping: patience in epochs; each model keeps its parameters from its best
            validation epoch. ``None`` trains every model for ``epochs``.
        standardize: standardize ``X`` (and ``"mse"`` targets) with statistics of each
            training fold only; losses are reported in the data's units. Only tabular
            features (2-D ``X`` taken as floats) are standardized: images and token ids
            pass through whatever this says.
        refit: ``"best"``, ``"1se"`` or ``False``: retrain on all the data at
            ``best_strength`` / ``strength_1se``; ``result.model`` then takes raw ``X``.
        max_memory_mb: models are trained in chunks that fit this budget; a Dataset larger
            than it is streamed (see ``data``).
        resume: the ``state`` of a :class:`SweepInterrupted` to continue from; it is
            checked against these arguments and the data (a content hash).
        device: where the models train (``"cpu"`` or ``"cuda"``); ``result.model`` comes
            back on the CPU.
        forward: ``"bmm"`` (hand-batched ``baddbmm``, for ``nn.Sequential`` of ``nn.Linear``
            and elementwise activations), ``"vmap"`` (``torch.func.vmap`` of
            ``functional_call``, any module) or ``"auto"`` (``bmm`` where it applies).
        on_chunk: called with the sweep's ``state`` before the first chunk and after each
            finished chunk (the command line saves its checkpoint there).
        groups: one group label per row (repeated measures): every group's rows stay in
            one fold (:func:`~torchpenalty.sweep.folds.group_kfold`).
        read_threads: threads reading a Dataset's items (``data`` a Dataset): ``0``
            (default) reads in the training thread; ``N > 1`` splits each request into N
            slices read at once (for a ``__getitem__`` that waits on files or decodes
            images; the Dataset must allow reads from several threads). The same items in
            the same order: the numbers do not change.
        test: a held-out ``(X_test, y_test)`` scored with the refit model after the sweep:
            ``result.test`` is ``{"rows", "loss"[, "accuracy"]}`` in the units of the CV
            table (see :func:`held_out_scores`).

    Every argument is checked first by :func:`validate`: a bad one raises ``TypeError`` or
    ``ValueError`` naming it, before any training.

    Returns:
        :class:`SweepResult` with ``table``, ``best_strength``, ``strength_1se``, ``model``.

    >>> import torch, torchpenalty as tp
    >>> X = torch.randn(60, 3); y = X @ torch.tensor([1.0, 0.0, -2.0]) + 0.1 * torch.randn(60)
    >>> r = tp.sweep(lambda: torch.nn.Linear(3, 1), (X, y), strengths=[1e-3, 1e-1, 10.0],
    ...              folds=3, epochs=50, lr=0.1, progress=False)
    >>> r.best_strength < 10.0, r.loss
    (True, 'mse')
    """
    options = {k: v for k, v in locals().items() if k in _DEFAULTS}
    v = validate(make_model, data, **options)
    if not v.tabular and v.options["solver"] == "closed_form":
        raise ValueError("solver='closed_form' needs 2-D float features X (rows, features)")
    if v.tabular and closed_form.chooses_closed_form(make_model, v):
        o = v.options
        splits, _, _ = _folds(v.y, v.loss, o["folds"], o["seed"], v.groups)
        result = closed_form.sweep_closed_form(make_model, v, splits[:-1])
    else:
        plan = _plan(make_model, v)
        done: dict[tuple[int, int], Record] = {}
        snap = None
        if v.options["resume"] is not None:
            done, snap = _restore(plan, v.options["resume"])
        _run_chunks(plan, done, snap, v.options["progress"], v.options["on_chunk"])
        if world()[1] > 1:
            _gather(done)
        result = _finish(plan, done, v.options["refit"])
    if v.test is not None:
        if result.model is None:
            raise ValueError("test needs a refit model: refit was False or every strength diverged")
        result.test = held_out_scores(result, *v.test, loss=v.loss if callable(v.loss) else None)
    return result
