"""Running a sweep's chunks on any ``concurrent.futures``-style executor.

``tp.sweep(..., executor=ex)`` sends every chunk of stacked models to ``ex.submit(fn,
*args)`` and collects ``future.result()``: a ``concurrent.futures.ProcessPoolExecutor``,
Dask's ``client.get_executor()``, submitit's ``AutoExecutor`` (SLURM), or anything with a
``submit`` whose futures have ``result()`` and ``done()`` (Ray: see :class:`RayExecutor`
in docs/scale.md). The function sent is :func:`train_chunk`, a top-level function of
this module, with plain data: the pickled training spec (``make_model``, the prepared data,
the penalty and the training settings) and the chunk's ``(strength index, fold,
strength)`` triples. So ``make_model`` (and a callable loss) must be picklable: a function
defined at the top level of an importable module, not a lambda or a local function.

Fault model: records land in the sweep's records keyed by (strength index, fold) as
chunks finish, and ``on_chunk`` (the command line's checkpoint) is called after each. A
chunk whose future raises (its worker died, or the executor broke) is submitted once
more; if that fails too, the sweep raises :class:`SweepIncomplete` with the state of
everything that finished, which ``resume=`` (``--resume``) continues.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "RungFailed",
    "SweepIncomplete",
    "spec_bytes",
    "submit_chunks",
    "submit_rung",
    "train_chunk",
    "train_rung_chunk",
    "workers",
]

_ENGINES = threading.local()
"""The engine last built in this thread of this (worker) process, keyed by its spec's
hash: every thread has its own (an engine switches its model between training and
evaluation mode, which threads sharing it would see)."""

DIE_ENV = "TORCHPENALTY_TEST_WORKER_DIES"
"""Test hook: a file path; the first :func:`train_chunk` that finds no file there creates
it and ends its process (``os._exit``) in the middle of its chunk, after one epoch."""


class SweepIncomplete(RuntimeError):
    """Chunks failed twice on the executor. ``state`` holds the finished records (pass it
    as ``resume=``; the command line's checkpoint has them too); ``result`` is a
    ``SweepResult`` of what finished; ``errors`` the last exception of each failed chunk."""

    def __init__(self, state: dict[str, Any], result: Any, errors: list[BaseException]) -> None:
        super().__init__(
            f"{len(errors)} chunk(s) failed twice on the executor (last error: {errors[-1]!r}); "
            "the finished models are kept: resume to train the rest"
        )
        self.state, self.result, self.errors = state, result, errors


class RungFailed(RuntimeError):
    """A chunk of a successive-halving rung failed twice on the executor; ``errors`` the
    last exception of each failed chunk (the sweep turns it into
    :class:`SweepIncomplete`)."""

    def __init__(self, errors: list[BaseException]) -> None:
        super().__init__(f"{len(errors)} chunk(s) of a rung failed twice: {errors[-1]!r}")
        self.errors = errors


def spec_bytes(engine: Any) -> bytes:
    """What a worker needs to rebuild ``engine``, pickled: ``make_model``, the prepared
    data (on the CPU), the penalty and the training settings. Raises ``TypeError`` naming
    the part that cannot be pickled (``make_model`` first)."""
    from .engine import Problem

    pb = engine.problem
    if not isinstance(pb.X, torch.Tensor):
        raise TypeError("executor needs the data in memory: a streamed Dataset is not sent "
                        "to workers (raise max_memory_mb, or run without an executor)")  # fmt: skip
    problem = Problem(pb.X.cpu(), pb.Y.cpu(), pb.y_scale.cpu(), pb.train_idx, pb.val_idx,
                      pb.loss, eval_rows=pb.eval_rows)  # fmt: skip
    parts = {
        "make_model": engine.make_model,
        "loss": pb.loss,
        "penalty": engine.penalty,
    }
    for name, obj in parts.items():
        try:
            pickle.dumps(obj)
        except Exception as e:
            raise TypeError(
                f"{name} must be picklable to run on an executor (a function defined at the "
                f"top level of an importable module, not a lambda or a local function), got "
                f"{obj!r}: {e}"
            ) from None
    settings = {k: getattr(engine, k) for k in ("epochs", "batch_size", "optimizer", "lr",
                                                "mode", "seed", "early_stopping")}  # fmt: skip
    settings["forward"] = engine.forward_kind
    settings["device"] = str(engine.device)
    return pickle.dumps({"make_model": engine.make_model, "problem": problem,
                         "penalty": engine.penalty, "settings": settings})  # fmt: skip


def _engine(spec: bytes) -> Any:
    from .engine import Engine

    key = hashlib.sha256(spec).hexdigest()
    if getattr(_ENGINES, "key", None) != key:
        d = pickle.loads(spec)
        dev = torch.device(d["settings"]["device"])
        pb = d["problem"]
        pb.X, pb.Y, pb.y_scale = pb.X.to(dev), pb.Y.to(dev), pb.y_scale.to(dev)
        _ENGINES.engine = Engine(d["make_model"], pb, d["penalty"], **d["settings"])
        _ENGINES.key = key
    return _ENGINES.engine


def _die_hook() -> Callable[[int, Any], None] | None:
    """The :data:`DIE_ENV` test hook's ``on_epoch``, or None when it is not armed."""
    marker = os.environ.get(DIE_ENV)
    if not marker or os.path.exists(marker):
        return None

    def on_epoch(epoch: int, snapshot: Any) -> None:
        with open(marker, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        os._exit(3)

    return on_epoch


def train_chunk(spec: bytes, tasks: list[tuple[int, int, float]]) -> list[dict[str, Any]]:
    """Train one chunk of stacked models in this process: ``spec`` from :func:`spec_bytes`,
    ``tasks`` as ``(strength index, fold, strength)``; returns the records as dicts."""
    from .engine import Task

    engine = _engine(spec)
    recs, _ = engine.run([Task(i, k, s) for i, k, s in tasks], on_epoch=_die_hook())
    return [r.to_dict() for r in recs]


def _moved(v: Any, device: torch.device) -> Any:
    """``v`` (tensors in dicts and lists) with every tensor on ``device``."""
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, dict):
        return {k: _moved(x, device) for k, x in v.items()}
    if isinstance(v, list):
        return [_moved(x, device) for x in v]
    return v


def train_rung_chunk(
    spec: bytes, tasks: list[tuple[int, int, float]], end: int, states: list[Any]
) -> tuple[list[dict[str, Any]], list[Any]]:
    """One chunk of successive halving (:func:`torchpenalty.sweep.halving.train_rung`) in
    this process: train ``tasks`` from their one-model ``states`` (None: from the start)
    to epoch ``end``; return the records as dicts and the states after ``end``, on the
    CPU (they travel back to the sweep, and to the next rung's worker)."""
    from .engine import Task
    from .halving import train_rung

    engine = _engine(spec)
    chunk = [Task(i, k, s) for i, k, s in tasks]
    recs, new = train_rung(engine, chunk, _moved(states, engine.device), end, _die_hook())
    return [r.to_dict() for r in recs], _moved(new, torch.device("cpu"))


def workers(executor: Any) -> int | None:
    """How many chunks ``executor`` runs at once, where it says (a ``concurrent.futures``
    pool's ``_max_workers``, a Dask executor's client threads); None when it does not.

    >>> from concurrent.futures import ThreadPoolExecutor
    >>> with ThreadPoolExecutor(3) as ex:
    ...     workers(ex), workers(object())
    (3, None)
    """
    n = getattr(executor, "_max_workers", None)
    if isinstance(n, int):
        return n
    client = getattr(executor, "_client", None)
    if client is not None and hasattr(client, "nthreads"):
        try:
            return sum(client.nthreads().values()) or None
        except Exception:
            return None
    return None


def _finished(futures: list[Any]) -> Iterator[Any]:
    """The futures as they finish: ``concurrent.futures.as_completed`` for its own futures,
    else polling ``done()`` (submitit jobs)."""
    if all(isinstance(f, cf.Future) for f in futures):
        yield from cf.as_completed(futures)
        return
    pending = list(futures)
    while pending:
        ready = [f for f in pending if f.done()]
        for f in ready:
            pending.remove(f)
            yield f
        if not ready:
            time.sleep(0.05)


def _triples(chunk: list[Any]) -> list[tuple[int, int, float]]:
    return [(t.i, t.fold, t.strength) for t in chunk]


def submit_chunks(
    executor: Any,
    spec: bytes,
    chunks: list[list[Any]],
    on_records: Callable[[list[dict[str, Any]]], None],
) -> list[BaseException]:
    """Submit every chunk, hand each finished chunk's records to ``on_records`` (in the
    order chunks finish), submit a failed chunk once more; return the errors of chunks
    that failed twice."""
    jobs = [(train_chunk, spec, _triples(c)) for c in chunks]
    return _submit_all(executor, jobs, lambda j, recs: on_records(recs))


def submit_rung(
    executor: Any, spec: bytes, jobs: list[tuple[list[Any], list[Any]]], end: int
) -> tuple[list[tuple[list[Any], list[dict[str, Any]], list[Any]]], list[BaseException]]:
    """One rung of successive halving on ``executor``: every job ``(chunk, states)`` sent
    to :func:`train_rung_chunk` (a failed one once more); return ``(chunk, record dicts,
    states)`` of the jobs that finished, in the order of ``jobs``, and the errors of
    those that failed twice."""
    calls = [(train_rung_chunk, spec, _triples(c), end, st) for c, st in jobs]
    out: dict[int, Any] = {}
    errors = _submit_all(executor, calls, lambda j, res: out.__setitem__(j, res))
    return [(jobs[j][0], *out[j]) for j in sorted(out)], errors


def _submit_all(
    executor: Any, calls: list[tuple[Any, ...]], on_result: Callable[[int, Any], None]
) -> list[BaseException]:
    """Submit every call ``(fn, *args)``, hand each result to ``on_result(j, result)`` as
    it finishes, submit a failed call once more; return the errors of calls that failed
    twice."""
    tries: dict[int, int] = {}
    owner: dict[Any, int] = {}

    def submit(j: int) -> Any:
        tries[j] = tries.get(j, 0) + 1
        fut = executor.submit(*calls[j])
        owner[fut] = j
        return fut

    errors: list[BaseException] = []
    batch = [submit(j) for j in range(len(calls))]
    while batch:
        again = []
        for fut in _finished(batch):
            j = owner[fut]
            try:
                res = fut.result()
            except Exception as e:  # the worker died, or the executor broke
                if tries[j] >= 2:
                    errors.append(e)
                    continue
                try:
                    again.append(submit(j))
                except Exception as e2:  # a broken pool refuses new work
                    errors.append(e2)
                continue
            on_result(j, res)
        batch = again
    return errors
