"""Running a sweep: the plan (folds, engine, tasks, chunks), chunk after chunk with finished
models kept by (strength, fold), resume state, the result and its refit."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import (
    described_error,
)
from ..distributed import all_gather_objects, world
from . import executors, halving
from .engine import Engine, Problem, Record, Task
from .folds import Standardizer, group_kfold, kfold, stratified_kfold, strength_factors
from .losses import UserLoss, get_loss
from .plan import balanced as _balanced
from .plan import choose
from .result import StandardizedModel, SweepResult, describe_model
from .stream import (
    Moments,
    StreamedData,
    StreamedRows,
    fold_moments,
)
from .validate import _as_array, _tensor, loss_name
from .validated import Validated


class SweepInterrupted(KeyboardInterrupt):
    """Raised when a sweep is interrupted (Ctrl-C). ``state`` holds the finished records
    (keyed by strength and fold) and a snapshot of the chunk in progress; pass it back as
    ``tp.sweep(..., resume=state)`` to continue without redoing finished work. ``result``
    is a ``SweepResult`` of what finished."""

    def __init__(self, state: dict[str, Any], result: SweepResult) -> None:
        super().__init__("sweep interrupted")
        self.state = state
        self.result = result


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
    halving: bool = False
    executor: Any = None


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
    n, objective = len(X), get_loss(loss)
    splits, classes, y_codes = _folds(y, loss, folds, seed, groups)
    if isinstance(X, StreamedData):
        return _prepare_streamed(X, y, loss, splits, standardize, x_dtype, classes, y_codes)
    if X.ndim != 2 or x_dtype != torch.float32 or not (objective.labels or objective.standardized):
        return _prepare_passthrough(X, y, loss, splits, standardize, x_dtype, classes, y_codes)
    Y2 = None if objective.labels else y.reshape(n, -1)
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
    n, labels = len(y), get_loss(loss).labels
    classes, y_codes = np.unique(y, return_inverse=True) if labels else (None, None)
    if groups is not None:
        splits = group_kfold(groups, folds, seed)
    elif labels:
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
    k1, objective = len(splits), get_loss(loss)
    if objective.labels:
        return torch.tensor(y_codes), torch.ones(k1, 1), [None] * k1
    if not objective.standardized:  # a user's loss sees y as given
        return _tensor(y), torch.ones(k1, 1), [None] * k1
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
    elif tabular and not isinstance(get_loss(loss), UserLoss):  # as in memory: zeros
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
    activations of a chunk fit in ``budget_mb``, with ``row_bytes`` per input row a model
    reads (an epoch's or an evaluation's rows are gathered at once)."""
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


def _rows_read(engine: Engine, budget_mb: float, streamed: bool) -> tuple[int, int]:
    """Rows one model reads at once and the bytes of one row: for a tensor, all rows
    (an epoch's and an evaluation's rows are gathered at once, as ``(M, rows, ...)``);
    for streamed data, :func:`_streamed_rows`."""
    if streamed:
        return _streamed_rows(engine, budget_mb)
    X = engine.problem.X
    return int(X.shape[1]), X.element_size() * int(np.prod(X.shape[2:]))


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
    # the engine trains on standardized targets: strengths converted per fold (issue #16)
    factors, units = strength_factors(v.penalty, v.loss, meta["stats"])
    meta["factors"] = factors
    tasks = [Task(i, k, s * factors[k]) for i, s in enumerate(v.grid) for k in range(o["folds"])]
    rows, row_bytes = _rows_read(engine, o["max_memory_mb"], streamed)
    if streamed:  # fold-major: the models of a chunk mostly share their rows
        tasks.sort(key=lambda t: (t.fold, t.i))
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
    if v.loss == "mse":
        settings["strength_units"] = units
    if v.groups is not None:
        settings["groups"] = len(np.unique(v.groups))
    size = 1
    if o["vectorize"]:
        size = _chunk_size(engine, o["max_memory_mb"], engine.batch_size, rows, row_bytes)
    if o["halving"]:
        settings["halving"] = {"n_se": halving.N_SE, "rungs": halving.rungs(o["epochs"])}
    # a resume keeps its chunking; under torchrun every rank must chunk alike, and ranks
    # on different machines may hold different calibrations: the budget's chunks
    if o["vectorize"] == "auto" and o["resume"] is None and world()[1] == 1:
        choice = choose(engine, tasks, size)
        size = choice.chunk_size if choice.vectorize else 1
        settings["vectorize_plan"] = choice.to_dict()
    _, world_size = world()
    shares = world_size if world_size > 1 else executors.workers(o["executor"]) or 1
    if shares > 1:  # under torchrun or on an executor: every worker gets a share of the grid
        size = min(size, -(-len(tasks) // shares))
    return _Plan(engine, tasks, size, settings, meta, v.grid, o["folds"], o["halving"],
                 o["executor"])  # fmt: skip


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
    skip = ("chunk_size", "chunks", "forward", "world_size", "vectorize_plan", "model_epochs")
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
    :class:`SweepInterrupted` with the state so far. With halving, or on an executor,
    :func:`_run_halving` / :func:`_run_on_executor` do it."""
    if plan.halving:
        return _run_halving(plan, done, on_chunk)
    if plan.executor is not None:
        return _run_on_executor(plan, done, on_chunk)
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
            _in_grid_units(plan, recs)  # the engine ran at per-fold converted strengths
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


def _in_grid_units(plan: _Plan, recs: Any) -> Any:
    """``recs`` with each record's strength the user's grid value (the engine trains at
    strengths converted per fold for standardized targets: ``plan.meta["factors"]``)."""
    for r in recs:
        r.strength = plan.grid[r.i]
    return recs


def _run_halving(plan: _Plan, done: dict, on_chunk: Callable | None) -> None:
    """Successive halving (:func:`torchpenalty.sweep.halving.run`) over the tasks not in
    ``done``, in this process or, with ``plan.executor``, every rung's chunks on the
    executor (:func:`_rung_on_executor`); the records of stopped strengths join ``done``
    rung by rung (a resume repeats the rungs of the strengths still training: same data,
    same decisions). Chunks that failed twice on the executor raise
    :class:`~torchpenalty.sweep.executors.SweepIncomplete` with the state."""

    def on_rung(finished: dict[tuple[int, int], Record]) -> None:
        done.update(zip(finished, _in_grid_units(plan, finished.values()), strict=True))
        if on_chunk is not None:
            on_chunk(_state(plan, done, None))

    todo = [t for t in plan.tasks if (t.i, t.fold) not in done]
    size, train = plan.chunk_size, None
    shares = executors.workers(plan.executor) or 1
    if plan.executor is not None:
        train = _rung_on_executor(plan)
    try:
        if on_chunk is not None:
            on_chunk(_state(plan, done, None))

        def cut(live: list[Task]) -> list[list[Task]]:  # every worker gets a share
            return _chunks(plan.engine, live, min(size, -(-len(live) // shares)))

        halving.run(plan.engine, todo, cut, on_rung=on_rung, train=train)
    except KeyboardInterrupt:
        raise SweepInterrupted(_state(plan, done, None), _result(plan, done)) from None
    except executors.RungFailed as e:
        raise executors.SweepIncomplete(
            _state(plan, done, None), _result(plan, done), e.errors
        ) from None


def _rung_on_executor(plan: _Plan) -> Callable[[list[Any], int], list[Any]]:
    """The rung trainer of :func:`torchpenalty.sweep.halving.run` that sends every
    ``(chunk, states)`` job to ``plan.executor``
    (:func:`~torchpenalty.sweep.executors.submit_rung`); a job that failed twice raises
    :class:`~torchpenalty.sweep.executors.RungFailed` (the rung cannot be decided)."""
    spec = executors.spec_bytes(plan.engine)

    def train(jobs: list[Any], end: int) -> list[Any]:
        out, errors = executors.submit_rung(plan.executor, spec, jobs, end)
        if errors:
            raise executors.RungFailed(errors)
        return [(c, [Record(**d) for d in recs], st) for c, recs, st in out]

    return train


def _run_on_executor(plan: _Plan, done: dict, on_chunk: Callable | None) -> None:
    """The chunks of the tasks not in ``done`` on ``plan.executor``
    (:func:`torchpenalty.sweep.executors.submit_chunks`); each finished chunk's records
    join ``done`` and the checkpoint. Chunks that failed twice raise
    :class:`~torchpenalty.sweep.executors.SweepIncomplete` with the state."""
    spec = executors.spec_bytes(plan.engine)
    todo = [t for t in plan.tasks if (t.i, t.fold) not in done]

    def on_records(recs: list[dict[str, Any]]) -> None:
        done.update(((r.i, r.fold), r) for r in _in_grid_units(plan, [Record(**d) for d in recs]))
        if on_chunk is not None:
            on_chunk(_state(plan, done, None))

    try:
        if on_chunk is not None:
            on_chunk(_state(plan, done, None))
        chunks = _chunks(plan.engine, todo, plan.chunk_size)
        errors = executors.submit_chunks(plan.executor, spec, chunks, on_records)
    except KeyboardInterrupt:
        raise SweepInterrupted(_state(plan, done, None), _result(plan, done)) from None
    if errors:
        raise executors.SweepIncomplete(_state(plan, done, None), _result(plan, done), errors)


def _result(plan: _Plan, done: dict[tuple[int, int], Record]) -> SweepResult:
    settings = {**plan.settings, "chunk_size": plan.chunk_size}
    settings["chunks"] = len(_chunks(plan.engine, plan.tasks, plan.chunk_size))
    settings["model_epochs"] = sum(len(r.history.get("val", ())) for r in done.values())
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
    result.refit_with = lambda s: _refit(plan, result, s)  # result.refit(which)
    if refit:
        result.refit_at = refit
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
    Xt = _as_array("X_test", X_test)
    with torch.no_grad():
        out = result._forward(Xt)  # standardized in float64, cast at the model's input (#18)
        if callable(loss):
            return {"rows": len(Xt), "loss": float(loss(out, _tensor(np.asarray(y_test))))}
        objective = get_loss(result.settings["loss"])
        if objective.labels:
            y = torch.as_tensor(np.searchsorted(np.asarray(result.classes), y_test))
        else:  # a numeric target, in float64
            y = torch.as_tensor(np.asarray(y_test, dtype=np.float64)).reshape(len(Xt), -1)
            out = out.double().reshape(len(Xt), -1)
        scores = {"rows": len(Xt), "loss": objective.rows(out[None], y[None]).mean().item()}
        hits = objective.hits(out, y)
    if hits is not None:
        scores["accuracy"] = hits.double().mean().item()
    return scores


def _refit(plan: _Plan, result: SweepResult, s: float | None = None) -> nn.Module:
    """Train one model on all rows at strength ``s`` (default the chosen one; for the
    median best epoch count of the folds of the nearest grid strength when early stopping
    was on); return it on the CPU, taking raw inputs."""
    engine = plan.engine
    s = result.chosen_strength if s is None else s
    k = result.folds  # the all-rows "fold"
    i = min(range(len(result.strengths)), key=lambda j: abs(result.strengths[j] - s))
    epochs = engine.epochs
    if engine.early_stopping:
        epochs = int(np.median([r.best_epoch for r in result.records if r.i == i])) + 1
    factor = plan.meta.get("factors", [1.0] * (k + 1))[k]
    _, params = engine.run([Task(i, k, s * factor)], epochs=epochs, early_stopping=False)
    model = engine.build_model(k)  # on the CPU
    model.load_state_dict({n: p[0].cpu() for n, p in params.items()}, strict=False)
    sx, sy = plan.meta["stats"][k]
    f64 = torch.float64  # standardization statistics at full precision (#18)
    if sx is None and sy is None:  # nothing was standardized: the model itself
        return model.eval()
    return StandardizedModel(
        model,
        None if sx is None else torch.tensor(sx.mean, dtype=f64),
        None if sx is None else torch.tensor(sx.std, dtype=f64),
        None if sy is None else torch.tensor(sy.mean, dtype=f64),
        None if sy is None else torch.tensor(sy.std, dtype=f64),
    ).eval()


def _progress(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar without it
        return None
    # disable=None: no bar when stderr is not a terminal (a log file got one line per update)
    return tqdm(total=total, initial=initial, desc="sweep", unit="epoch", leave=False, disable=None)
