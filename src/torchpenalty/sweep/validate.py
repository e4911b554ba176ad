"""Every argument of :func:`~torchpenalty.sweep.sweep` checked once (:data:`PARAMETER_CONSTRAINTS`),
and the data against them (:func:`validate`), before any training."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
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
from ..penalties import Penalty, get, names, resolve
from ..updates import modes
from .losses import LOSSES, UserLoss, get_loss
from .stream import (
    READ_ROWS,
    StreamedData,
    read_items,
    scan,
)
from .validated import Validated

__all__ = [
    "MAX_SEED",
    "PARAMETER_CONSTRAINTS",
    "check_device",
    "default_strengths",
    "loss_name",
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


def _folds_rule(name: str, v: Any) -> int | str:
    """K of K-fold (an integer >= 2) or ``"loo"`` (exact leave-one-out, ridge only)."""
    if isinstance(v, str):
        if v != "loo":
            raise value_error(name, "an integer >= 2 or 'loo'", v)
        return v
    return _int(2)(name, v)


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


def _executor(name: str, v: Any) -> Any:
    """Anything with ``submit(fn, *args) -> future`` (see :mod:`torchpenalty.sweep.executors`);
    a process pool that forks is refused: a forked child deadlocks in torch's thread pool."""
    if not callable(getattr(v, "submit", None)):
        raise type_error(name, "a concurrent.futures-style executor (with submit(fn, *args))", v)
    ctx = getattr(v, "_mp_context", None)
    if ctx is not None and ctx.get_start_method() == "fork":
        raise value_error(name, "a process pool that does not fork (ProcessPoolExecutor(n, "
                          "mp_context=multiprocessing.get_context('forkserver')): a forked "
                          "worker deadlocks in torch's thread pool", v)  # fmt: skip
    return v


def _callable(name: str, v: Any) -> Any:
    if not callable(v):
        raise type_error(name, "a callable", v)
    return v


def _loss(name: str, v: Any) -> str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if isinstance(v, str):
        return check_choice(name, v, list(LOSSES))
    if not callable(v):
        names = ", ".join(repr(n) for n in LOSSES)
        raise type_error(name, f"{names} or a callable (output, target) -> mean loss", v)
    return v


def loss_name(loss: str | Callable[..., Any]) -> str:
    """How a sweep records its loss: the name, or a callable's ``module.qualname`` (its
    ``repr`` when it has none, e.g. an ``nn.Module`` loss), never equal to a built-in name.

    >>> loss_name("mse"), loss_name(torch.nn.functional.huber_loss)
    ('mse', 'torch.nn.functional.huber_loss')
    >>> loss_name(torch.nn.L1Loss())
    'L1Loss()'
    """
    return loss if isinstance(loss, str) else get_loss(loss).name


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
    "folds": _folds_rule,
    "epochs": _int(1),
    "batch_size": _optional(_int(1)),
    "optimizer": _choice("adam", "sgd"),
    "lr": check_positive,
    "mode": _optional(lambda name, v: check_choice(name, v, modes(sweepable=True))),
    "vectorize": _vectorize,
    "solver": _choice("auto", "closed_form", "path", "train"),
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
    "halving": _bool,
    "per_target": _bool,
    "executor": _optional(_executor),
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
    if opts["folds"] == "loo" and opts["groups"] is not None:
        raise value_error("folds", "an integer when groups are given (not 'loo')", "loo")
    if opts["folds"] == "loo" and len(X) < 3:
        raise value_error("folds", f"an integer, or 'loo' with at least 3 rows ({len(X)})", "loo")
    if opts["folds"] != "loo" and opts["folds"] > len(X):
        raise value_error("folds", f"at most the number of rows ({len(X)})", opts["folds"])
    pen = opts["penalty"]
    mode = opts["mode"] or pen.sweep_mode
    grid = default_strengths() if opts["strengths"] is None else opts["strengths"]
    head = X.head if isinstance(X, StreamedData) else X  # a streamed X: its first two rows
    n_out, x_dtype, probe = _check_model(make_model, head, y, loss)
    groups = _check_groups(opts["groups"], len(X), opts["folds"])
    test = None if opts["test"] is None else _check_test(opts["test"], X, y, loss)
    if test is not None and opts["refit"] is False:
        raise described_error("test", "None with refit=False (it scores the refit model)", "a pair")
    arrays = (X, y) if groups is None else (X, y, groups)
    fingerprint = _fingerprint(*arrays)
    return Validated(X, y, loss, grid, pen, mode, opts, n_out, fingerprint, groups, test, x_dtype,
                     probe)  # fmt: skip


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
    objective = get_loss(loss)
    yt = _as_array("test y", test[1], labels=objective.labels)
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
    if isinstance(objective, UserLoss):
        return Xt, yt
    if objective.labels:
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
    if a.dtype == object and a.size:  # pandas' .to_numpy() of text or mixed columns
        a = _from_objects(name, a, labels)
    if labels and a.dtype.kind in "USb":  # class labels may be text
        return a
    if a.dtype.kind == "c":
        raise described_error(name, "real (not complex)", f"dtype {a.dtype}")
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise described_error(name, "a numeric array", f"an array of dtype {a.dtype}")
    return a


def _from_objects(name: str, a: np.ndarray, labels: bool) -> np.ndarray:
    """An object array as text labels (every item a str; ``labels`` only) or as numbers
    (every item a real number); anything else keeps dtype object and is refused."""
    items = a.ravel().tolist()
    if labels and all(isinstance(v, str) for v in items):
        return a.astype(str)
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, complex) for v in items):
        return np.array(items).reshape(a.shape)
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
    y = _as_array("y", data[1], labels=loss is None or get_loss(loss).labels)
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
    elif get_loss(loss).standardized and looks_like_classes and y.dtype.kind in "biuf":
        warnings.warn(
            f"y holds {len(np.unique(y))} distinct integer values: if these are classes, use "
            "loss='cross_entropy' (loss=None infers it)",
            UserWarning,
            stacklevel=4,
        )
    if get_loss(loss).labels:
        return X, _check_labels(y), loss
    if y.dtype.kind not in "biuf":
        raise described_error("y", "numeric for loss='mse'", f"dtype {y.dtype}")
    y64 = y.astype(np.float64)
    if not np.isfinite(y64).all():
        raise described_error("y", "finite (no NaN or inf)", "non-finite values")
    if np.all(np.ptp(y64.reshape(len(y), -1), axis=0) == 0):
        raise described_error("y", "not constant in every column", "constant columns")
    _check_target_scale(y64)
    return X, y64, loss


def _check_target_scale(y: np.ndarray) -> None:
    """A regression target's spread must keep its losses finite and nonzero in float32, as
    the command line checks it (:data:`torchpenalty.data.TARGET_STD_RANGE`): ``y * 1e20``
    made every strength diverge and ``y * 1e-25`` every loss 0.0."""
    from ..data import TARGET_STD_RANGE

    lo, hi = TARGET_STD_RANGE
    with np.errstate(over="ignore", invalid="ignore"):
        std = y.reshape(len(y), -1).std(axis=0)
    for j, sd in enumerate(std.tolist()):
        if sd == 0 or lo <= sd <= hi:
            continue
        name = "y" if y.ndim == 1 else f"y column {j}"
        big = float(np.abs(y.reshape(len(y), -1)[:, j]).max())
        got = f"{sd:.3g}" if np.isfinite(sd) else f"an overflow (values up to {big:.3g})"
        scale = 10.0 ** np.floor(np.log10(sd if np.isfinite(sd) else big))
        raise ValueError(
            f"{name} must have a standard deviation in [{lo:g}, {hi:g}] (its losses would "
            f"overflow or vanish in float32), got {got}; divide it by {scale:.0e}"
        )


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
) -> tuple[int, torch.dtype, nn.Module]:
    """Build one model and run it on two rows: it must be an ``nn.Module`` with trainable
    parameters taking X's rows and giving one output per class (or target column); a
    callable loss must turn that output and two rows of y into one number. Returns the
    output width, the input dtype and the model."""
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
    elif get_loss(loss).labels:
        k = len(np.unique(y))
        if width < k:
            raise described_error("make_model", f"a model with one output per class ({k})",
                                  f"{width} outputs")  # fmt: skip
    elif width != (1 if y.ndim == 1 else y.shape[1]):
        want = 1 if y.ndim == 1 else y.shape[1]
        raise described_error("make_model", f"a model with {want} outputs (y's columns)",
                              f"{width} outputs")  # fmt: skip
    return width, x_dtype, model


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
    "halving": False,
    "per_target": False,
    "executor": None,
}
