"""``tp.sweep``: cross-validated strength selection, all models trained at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from ..penalties import Penalty, get
from .engine import STACKABLE, Engine, Problem, Record, Task
from .folds import Standardizer, kfold, stratified_kfold
from .result import StandardizedModel, SweepResult

__all__ = ["SweepInterrupted", "default_strengths", "sweep"]


def default_strengths() -> list[float]:
    """13 strengths log-spaced from 1e-5 to 10 (two per decade): on standardized data
    with a mean-squared or cross-entropy loss this spans "no visible effect" to "weights
    shrunk to nothing" for L2, L1 and group lasso, so the curve shows both ends."""
    return [float(f"{v:.3g}") for v in np.logspace(-5, 1, 13)]


class SweepInterrupted(KeyboardInterrupt):
    """Raised when a sweep is interrupted (Ctrl-C). ``state`` holds the completed records
    and a snapshot of the chunk in progress; pass it back as ``tp.sweep(..., resume=state)``
    to continue without redoing finished work. ``result`` is a ``SweepResult`` of what
    finished."""

    def __init__(self, state: dict[str, Any], result: SweepResult) -> None:
        super().__init__("sweep interrupted")
        self.state = state
        self.result = result


def _as_array(name: str, v: Any, labels: bool = False) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    try:
        a = np.asarray(v)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise type_error(name, "an array", v) from e
    if labels and a.dtype.kind in "USb":  # class labels may be text
        return a
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got an array of dtype {a.dtype}")
    return a


def _prepare(
    X: np.ndarray,
    y: np.ndarray,
    loss: str,
    folds: int,
    seed: int,
    standardize: bool,
) -> tuple[Problem, dict[str, Any]]:
    n = len(X)
    if loss == "cross_entropy":
        classes, y_codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"y must have at least 2 classes for cross_entropy, got {classes.tolist()}"
            )
        splits = stratified_kfold(y_codes, folds, seed)
    else:
        classes = None
        splits = kfold(n, folds, seed)
    splits = [*splits, (np.arange(n), np.array([], dtype=np.int64))]  # the refit "fold"
    xs, ys, scales, stats = [], [], [], []
    Y2 = None if loss == "cross_entropy" else (y.reshape(n, -1).astype(np.float64))
    for tr, _ in splits:
        sx = Standardizer(X[tr] if standardize else np.zeros((1, X.shape[1])))
        xs.append(sx.transform(X))
        if Y2 is not None:
            sy = Standardizer(Y2[tr]) if standardize else Standardizer(np.zeros((1, Y2.shape[1])))
            ys.append(sy.transform(Y2))
            scales.append(sy.std)
            stats.append((sx, sy))
        else:
            scales.append(np.ones(1))
            stats.append((sx, None))
    if Y2 is not None:
        Y = torch.tensor(np.stack(ys), dtype=torch.float32)
    else:
        Y = torch.tensor(y_codes, dtype=torch.long)
    problem = Problem(
        X=torch.tensor(np.stack(xs), dtype=torch.float32),
        Y=Y,
        y_scale=torch.tensor(np.stack(scales), dtype=torch.float32),
        train_idx=[s[0] for s in splits],
        val_idx=[s[1] for s in splits],
        loss=loss,
    )
    return problem, {"classes": classes, "stats": stats}


def _chunk_size(engine: Engine, budget_mb: float, batch: int, n_rows: int) -> int:
    """Models per chunk so that parameters, gradients, optimizer state, copies and
    activations of a chunk fit in ``budget_mb``."""
    n_params = sum(p.numel() for p in engine.base.parameters())
    acts = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: acts.append(o.numel()))
        for m in engine.base.modules()
    ]
    try:
        with torch.no_grad(), engine._mode(False):
            engine.base(engine.problem.X[0, :2])
    except Exception:  # a model that cannot run one row: assume activations ~ parameters
        acts = [n_params]
    finally:
        for h in hooks:
            h.remove()
    per_model = 4 * (8 * n_params + 3 * max(batch, n_rows) * sum(acts))
    return max(1, int(budget_mb * 2**20 // per_model))


def sweep(
    make_model: Callable[[], nn.Module],
    data: tuple[Any, Any],
    *,
    strengths: Sequence[float] | None = None,
    penalty: str | Penalty | dict = "l2",
    loss: str = "mse",
    folds: int = 5,
    epochs: int = 100,
    batch_size: int | None = 64,
    optimizer: str = "adam",
    lr: float = 1e-2,
    mode: str | None = None,
    vectorize: bool = True,
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
) -> SweepResult:
    """Cross-validate the penalty strength: train one model per (strength, fold), all at
    once, and pick the strength.

    Args:
        make_model: returns a fresh ``nn.Module``. Each fold's models start from the same
            initialization (seeded by ``seed`` and the fold) whatever the strength, so
            strengths are compared on equal terms.
        data: ``(X, y)``: ``X`` of shape ``(n, d)``; ``y`` of shape ``(n,)`` or ``(n, k)``
            (regression) or integer class labels (``loss="cross_entropy"``).
        strengths: the grid (default :func:`default_strengths`: 1e-5 .. 10, 13 values).
        penalty: ``"l2"``, ``"l1"``, ``"elastic_net"``, ``"group_lasso"`` or such a
            penalty object (its strength is ignored) applied by the default parameter rule.
        loss: ``"mse"`` or ``"cross_entropy"`` (folds are then stratified).
        folds: K of K-fold cross-validation (shuffled with ``seed``).
        epochs, batch_size, optimizer, lr: training (``batch_size=None``: full batch;
            ``optimizer`` ``"adam"`` or ``"sgd"`` with momentum 0.9). Mini-batches are where
            vectorizing pays most: the sequential loop is bound by per-step overhead.
        mode: how the penalty is applied: ``"grad"``, ``"decoupled"`` or ``"proximal"``;
            default ``"proximal"`` for L1, elastic net and group lasso (exact zeros) and
            ``"grad"`` for L2.
        vectorize: train all models as one batched computation (``False``: one model at a
            time through the same code; same numbers up to float rounding).
        early_stopping: patience in epochs; each model keeps its parameters from its best
            validation epoch. ``None`` trains every model for ``epochs``.
        standardize: standardize ``X`` (and regression targets) with statistics of each
            training fold only; losses are reported in the data's units.
        refit: ``"best"``, ``"1se"`` or ``False``: retrain on all the data at
            ``best_strength`` / ``strength_1se``; ``result.model`` then takes raw ``X``.
        max_memory_mb: models are trained in chunks that fit this budget.
        resume: the ``state`` of a :class:`SweepInterrupted` to continue from.
        device: where the models train (``"cuda"`` on a GPU); ``result.model`` comes back
            on the CPU.
        forward: ``"bmm"`` (hand-batched ``baddbmm``, for ``nn.Sequential`` of ``nn.Linear``
            and elementwise activations), ``"vmap"`` (``torch.func.vmap`` of
            ``functional_call``, any module) or ``"auto"`` (``bmm`` where it applies).
        on_chunk: called with the sweep's ``state`` after each finished chunk.

    Returns:
        :class:`SweepResult` with ``table``, ``best_strength``, ``strength_1se``, ``model``.

    >>> import torch, torchpenalty as tp
    >>> X = torch.randn(60, 3); y = X @ torch.tensor([1.0, 0.0, -2.0]) + 0.1 * torch.randn(60)
    >>> r = tp.sweep(lambda: torch.nn.Linear(3, 1), (X, y), strengths=[1e-3, 1e-1, 10.0],
    ...              folds=3, epochs=50, lr=0.1, progress=False)
    >>> r.best_strength < 10.0
    True
    """
    if not callable(make_model) or isinstance(make_model, nn.Module):
        raise type_error(
            "make_model", "a callable returning a fresh nn.Module (e.g. lambda: Net())", make_model
        )
    loss = check_choice("loss", loss, ("mse", "cross_entropy"))
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise type_error("data", "a pair (X, y)", data)
    X, y = _as_array("X", data[0]), _as_array("y", data[1], labels=loss == "cross_entropy")
    if X.ndim != 2:
        raise described_error("X", "a 2-D array (rows, features)", f"shape {X.shape}")
    if len(y) != len(X):
        raise described_error("y", f"of the same length as X ({len(X)} rows)", f"{len(y)} rows")
    if not np.isfinite(X).all():
        raise described_error("X", "finite (no NaN or inf)", "non-finite values")
    if loss == "mse" and not np.isfinite(y.astype(np.float64)).all():
        raise described_error("y", "finite (no NaN or inf)", "non-finite values")
    if loss == "mse" and np.all(np.ptp(y.reshape(len(y), -1), axis=0) == 0):
        raise described_error("y", "not constant", f"every value {y.reshape(-1)[0].item()!r}")
    folds = check_int("folds", folds, minimum=2)
    if folds > len(X):
        raise value_error("folds", f"at most the number of rows ({len(X)})", folds)
    epochs = check_int("epochs", epochs, minimum=1)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    optimizer = check_choice("optimizer", optimizer, ("adam", "sgd"))
    lr = check_positive("lr", lr)
    seed = check_int("seed", seed)
    if early_stopping is not None:
        early_stopping = check_int("early_stopping", early_stopping, minimum=1)
    if refit not in ("best", "1se", False, None):
        raise value_error("refit", "'best', '1se' or False", refit)
    check_positive("max_memory_mb", max_memory_mb)
    grid = (
        default_strengths()
        if strengths is None
        else [check_strength("strengths", s) for s in strengths]
    )
    if not grid:
        raise value_error("strengths", "a non-empty list", list(strengths or []))
    pen = (
        penalty
        if isinstance(penalty, Penalty)
        else get(penalty, 1.0)
        if isinstance(penalty, str)
        else get(penalty)
    )
    if pen.name not in STACKABLE:
        raise value_error("penalty", "one of " + ", ".join(repr(p) for p in STACKABLE), pen.name)
    if mode is None:
        mode = pen.sweep_mode
    mode = check_choice("mode", mode, ("grad", "decoupled", "proximal"))

    dev = check_device(device)
    problem, meta = _prepare(X, y, loss, folds, seed, standardize)
    problem.X, problem.Y, problem.y_scale = (
        t.to(dev) for t in (problem.X, problem.Y, problem.y_scale)
    )
    engine = Engine(
        make_model,
        problem,
        pen,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        mode=mode,
        seed=seed,
        early_stopping=early_stopping,
        forward=forward,
        device=dev,
    )
    tasks = [Task(i, k, s) for i, s in enumerate(grid) for k in range(folds)]
    settings = {
        "penalty": pen.get_config() | {"strength": None},
        "loss": loss,
        "folds": folds,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "mode": mode,
        "seed": seed,
        "early_stopping": early_stopping,
        "standardize": standardize,
        "n_rows": len(X),
        "n_features": int(X.shape[1]),
        "forward": engine.forward_kind,
    }
    size = _chunk_size(engine, max_memory_mb, engine.batch_size, X.shape[0]) if vectorize else 1
    rank, world_size = world()
    if world_size > 1:  # under torchrun: every rank gets a share of the grid
        size = min(size, -(-len(tasks) // world_size))
    records: list[Record] = []
    start_chunk, snap = 0, None
    if resume is not None and world_size > 1:
        raise ValueError("resume is not supported under torch.distributed; resume in one process")
    if resume is not None:
        if (
            _comparable(resume.get("settings", {})) != _comparable(settings)
            or resume.get("strengths") != grid
        ):
            raise ValueError("resume must come from a sweep with the same data and settings")
        size = resume["chunk_size"]
        records = [Record(**r) for r in resume["records"]]
        start_chunk, snap = resume["chunk"], resume.get("snapshot")
    chunks = [tasks[j : j + size] for j in range(0, len(tasks), size)]
    settings["chunk_size"] = size
    settings["chunks"] = len(chunks)

    mine = [c for c in range(start_chunk, len(chunks)) if c % world_size == rank]
    bar = _progress(
        progress and rank == 0,
        total=(len(mine) + start_chunk) * epochs,
        initial=start_chunk * epochs,
    )
    if bar is not None and snap is not None:
        bar.update(snap["epoch"])
    last: dict[str, Any] = {"snapshot": snap}

    def state(chunk: int, snapshot: Any) -> dict[str, Any]:
        return {
            "settings": _comparable(settings),
            "strengths": grid,
            "chunk_size": size,
            "chunk": chunk,
            "snapshot": snapshot,
            "records": [r.to_dict() for r in records],
        }

    def on_epoch(epoch: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        last["snapshot"] = snapshot()
        if bar is not None:
            bar.update(1)

    c = start_chunk
    try:
        for c in mine:
            recs, _ = engine.run(chunks[c], state=snap, on_epoch=on_epoch)
            if bar is not None and engine.early_stopping:
                bar.update(epochs - len(recs[0].history["val"]) if recs else 0)
            records.extend(recs)
            snap = last["snapshot"] = None
            if on_chunk is not None:
                on_chunk(state(c + 1, None))
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        partial = SweepResult(grid, folds, sorted(records, key=lambda r: (r.i, r.fold)), settings)
        raise SweepInterrupted(state(c, last["snapshot"]), partial) from None
    if bar is not None:
        bar.close()
    if world_size > 1:  # gather the table on every rank
        gathered = all_gather_objects([r.to_dict() for r in records])
        records = [Record(**d) for part in gathered for d in part]
        settings["world_size"] = world_size

    records.sort(key=lambda r: (r.i, r.fold))
    result = SweepResult(grid, folds, records, settings)
    if refit:
        result.refit = refit
        try:
            result.model = _refit(engine, result, meta)
        except KeyboardInterrupt:  # every fold is done: a resume only redoes the refit
            raise SweepInterrupted(state(len(chunks), None), result) from None
    return result


def check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that this machine has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise value_error("device", "a torch device such as 'cpu' or 'cuda'", device) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise value_error("device", "available (this torch build or machine has no CUDA)", device)
    return dev


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings that must match for a resume (not the chunking or the forward kind)."""
    return {k: v for k, v in settings.items() if k not in ("chunk_size", "chunks", "forward")}


def _refit(engine: Engine, result: SweepResult, meta: dict[str, Any]) -> nn.Module:
    """Train one model on all rows at the chosen strength (for the median best epoch count
    of its folds when early stopping was on); return it on the CPU, taking raw inputs."""
    s = result.chosen_strength
    k = result.folds  # the all-rows "fold"
    i = result.strengths.index(s)
    epochs = engine.epochs
    if engine.early_stopping:
        best = [r.best_epoch for r in result.records if r.i == i]
        epochs = int(np.median(best)) + 1
    _, params = engine.run([Task(i, k, s)], epochs=epochs, early_stopping=False)
    model = engine._module(k)  # on the CPU
    model.load_state_dict({n: p[0].cpu() for n, p in params.items()}, strict=False)
    sx, sy = meta["stats"][k]
    f32 = torch.float32
    return StandardizedModel(
        model,
        torch.tensor(sx.mean, dtype=f32),
        torch.tensor(sx.std, dtype=f32),
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
