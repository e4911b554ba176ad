"""Successive halving inside the stack: strengths that are clearly worse stop training.

``tp.sweep(..., halving=True)`` trains every (strength, fold) model to the first *rung*
(:func:`rungs`: :data:`WARMUP` of the epochs, then twice as many, and so on, then all
epochs). At each rung every strength's mean validation loss over its folds is compared
with the best strength's (:func:`to_stop`): a strength whose mean is above the best mean
by more than :data:`N_SE` standard errors of the best mean (the standard error the 1-SE
rule uses), or whose mean is not finite (a fold diverged), stops there, except the
neighbours of the best in the grid (:data:`GUARD`); the others are
repacked into (smaller) stacks and go on to the next rung. A stopped strength keeps the
records of its last rung, marked by ``stopped_epoch`` (the epochs it trained), and is
never chosen as ``best_strength`` or ``strength_1se``.

Why 3 standard errors: the 1-SE rule picks strengths within 1 SE of the best at the end;
a margin three times as wide leaves room for the curves to cross between a rung and the
end. The benchmark ``benchmarks/sweep_speed.py --halving`` checks that the choices equal
the full sweep's on four problems and counts the model-epochs saved.

>>> rungs(100)
[10, 20, 40, 80, 100]
>>> import numpy as np
>>> val = np.array([[1.0, 1.2, 1.1], [0.5, 0.6, 0.55], [0.52, 0.61, 0.56], [np.nan, 1, 1]])
>>> to_stop(val).tolist()  # the best's SE is 0.029: 1.1 is 19 SE above, 0.563 within 3
[True, False, False, True]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["GUARD", "N_SE", "WARMUP", "run", "rungs", "to_stop", "train_rung"]

N_SE = 3.0
"""A strength stops when its mean validation loss is more than this many standard errors
(of the best strength's mean) above the best mean."""

WARMUP = 0.1
"""The first rung, as a fraction of the epochs (at least one epoch)."""

GUARD = (1, 2)
"""Never stopped while they train stably: the next weaker and the two next stronger
strengths than the best (by value, among those still training). The best strength drifts
towards stronger penalties as training goes on (weak penalties overfit more with every
epoch): on digits, 1e-3 was 3 SE worse than 3.16e-4 after 40 of 100 epochs and the best
after 100."""


def rungs(epochs: int, warmup: float = WARMUP) -> list[int]:
    """The epochs after which strengths may stop: ``max(1, round(warmup * epochs))``, then
    doubling, then ``epochs``.

    >>> rungs(10), rungs(1), rungs(30, warmup=0.2)
    ([1, 2, 4, 8, 10], [1], [6, 12, 24, 30])
    """
    out = [max(1, round(warmup * epochs))]
    while out[-1] * 2 < epochs:
        out.append(out[-1] * 2)
    if out[-1] < epochs:
        out.append(epochs)
    return out


def to_stop(
    val: np.ndarray, n_se: float = N_SE, strengths: Any = None, guard: tuple[int, int] = GUARD
) -> np.ndarray:
    """Which strengths stop: ``val[i, k]`` is strength ``i``'s validation loss on fold ``k``.
    Stop ``i`` when its mean is not finite (diverged) or exceeds ``best + n_se * se_best``,
    ``best`` the smallest finite mean and ``se_best`` its standard error over the folds
    (``std(ddof=1) / sqrt(folds)``) -- unless, with ``strengths`` given, it is among the
    ``guard[0]`` next weaker or ``guard[1]`` next stronger strengths than the best (by
    value). When no mean is finite, every strength stops."""
    val = np.asarray(val, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mean = val.mean(1)
    finite = np.isfinite(mean)
    if not finite.any():
        return np.ones(len(val), dtype=bool)
    b = int(np.argmin(np.where(finite, mean, np.inf)))
    se = val[b].std(ddof=1) / math.sqrt(val.shape[1]) if val.shape[1] > 1 else 0.0
    stop = ~finite | (mean > mean[b] + n_se * se)
    if strengths is not None:
        order = list(np.argsort(np.asarray(strengths, dtype=np.float64), kind="stable"))
        at = order.index(b)
        near = order[max(0, at - guard[0]) : at + guard[1] + 1]
        stop[near] &= ~finite[near]  # a neighbour of the best stops only if it diverged
    return stop


Trained = tuple[list[Any], list[Any], list[dict[str, Any] | None]]
"""A chunk trained to a rung: its tasks, their records, their states after the rung."""


def train_rung(
    engine: Any,
    chunk: list[Any],
    states: list[dict[str, Any] | None],
    end: int,
    on_epoch: Callable[[int, Any], None] | None = None,
) -> tuple[list[Any], list[dict[str, Any] | None]]:
    """Train the stack of ``chunk`` to epoch ``end``, each task from its one-model state
    in ``states`` (repacked with :func:`~torchpenalty.sweep.engine.join_states`; None for
    all: from the start); return the records and each task's state after ``end`` (split
    with :func:`~torchpenalty.sweep.engine.split_state`). ``on_epoch`` is called too."""
    from .engine import join_states, split_state

    state = None if states[0] is None else join_states(states)
    last: list[Callable[[], dict[str, Any]]] = []

    def keep(epoch: int, snap: Callable[[], dict[str, Any]]) -> None:
        last.append(snap)
        if on_epoch is not None:
            on_epoch(epoch, snap)

    out, _ = engine.run(chunk, epochs=end, state=state, on_epoch=keep)
    if not last:  # no epoch ran (every model had stopped early): the states stand
        return out, list(states)
    return out, split_state(last[-1](), len(chunk))


def _in_turn(engine: Any) -> Callable[[list[Any], int], list[Trained]]:
    """The rung trainer of one process: every job ``(chunk, states)`` in turn."""

    def train(jobs: list[Any], end: int) -> list[Trained]:
        return [(c, *train_rung(engine, c, st, end)) for c, st in jobs]

    return train


def run(
    engine: Any,
    tasks: list[Any],
    chunks: Callable[[list[Any]], list[list[Any]]],
    *,
    on_rung: Callable[[dict[tuple[int, int], Any]], None] | None = None,
    n_se: float = N_SE,
    train: Callable[[list[Any], int], list[Trained]] | None = None,
) -> dict[tuple[int, int], Any]:
    """Train ``tasks`` with successive halving; return their records keyed by (strength
    index, fold). ``chunks(live_tasks)`` cuts the live tasks into stacks; every stack
    trains to the next rung from its tasks' saved states (repacked: states are kept per
    task). ``train(jobs, end)`` trains the jobs ``(chunk, states)`` of a rung to epoch
    ``end`` and returns ``(chunk, records, states)`` for each (default: in this process,
    in turn, :func:`train_rung`; the sweep's executor sends each job to a worker).
    ``on_rung(finished)`` is called after each rung with the records of the strengths that
    stopped so far (the checkpoint of the command line)."""
    train = _in_turn(engine) if train is None else train
    states: dict[tuple[int, int], dict[str, Any] | None] = {}
    done: dict[tuple[int, int], Any] = {}
    live = list(tasks)
    ends = rungs(engine.epochs)
    for end in ends:
        recs = {}
        jobs = [(c, [states.get((t.i, t.fold)) for t in c]) for c in chunks(live)]
        for chunk, out, new in train(jobs, end):
            states.update(((t.i, t.fold), st) for t, st in zip(chunk, new, strict=True))
            recs.update(((r.i, r.fold), r) for r in out)
        stop = _decide(recs, n_se) if end < ends[-1] else {i for i, _ in recs}
        for key, r in recs.items():
            if key[0] in stop:
                r.stopped_epoch = None if end == ends[-1] else len(r.history["val"])
                done[key] = r
                states.pop(key, None)
        live = [t for t in live if (t.i, t.fold) not in done]
        if on_rung is not None:
            on_rung(done)
        if not live:
            break
    return done


def _decide(recs: dict[tuple[int, int], Any], n_se: float) -> set[int]:
    """Strength indices to stop, from the records of every live (strength, fold)."""
    idx = sorted({i for i, _ in recs})
    folds = sorted({k for _, k in recs})
    val = np.array([[recs[(i, k)].val_loss for k in folds] for i in idx])
    values = [recs[(i, folds[0])].strength for i in idx]
    return {i for i, s in zip(idx, to_stop(val, n_se, values), strict=True) if s}
