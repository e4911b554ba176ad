"""Choosing how a sweep trains its models: stacked (vectorized) or one at a time.

Stacking M models turns M small matrix products into one batched product and M optimizer
steps into one: a large gain for small models and mini-batches, where a step is bound by
per-call overhead, and none (or a loss) for wide models, whose products already keep the
device busy. ``tp.sweep(vectorize="auto")`` decides from a cost model of the work, not from
timing the moment's steps: :func:`work_of` counts the model's layers, parameters and FLOPs
per model-step from its shapes and the batch size, the device's calibration
(:mod:`torchpenalty.sweep.calibration`, measured once and cached) turns them into predicted
seconds, and :func:`plan_chunks` keeps the cheaper path. For a given calibration the plan
is a pure function of the work, the number of tasks and the memory budget's chunk: the
same on a quiet machine and under load.

>>> cal = {"bandwidth": [[1e6, 1e-11], [1e9, 1e-10]],
...        "bmm": {"single": dict(a=1e-4, b=5e-5, f=2e-11, c=0.0),
...                "stacked": dict(a=2e-4, b=8e-5, f=2e-11, c=0.0)}}
>>> w = Work(layers=3, params=1441, linear_flops=528_384, conv_flops=0, batch=64, acts=67)
>>> plan = plan_chunks(w, cal, "bmm", n_tasks=65, limit=1000)
>>> plan.choice, plan.chunk_size
('stacked', 65)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .calibration import PROVISIONAL_S, calibrate
from .cost import Work, memory_seconds, seconds_per_flop, step_seconds, work_of
from .engine import Engine, Task

__all__ = [
    "STACK_MARGIN",
    "VectorizePlan",
    "Work",
    "balanced",
    "best_chunk",
    "choose",
    "memory_seconds",
    "plan_chunks",
    "seconds_per_flop",
    "step_seconds",
    "sweep_seconds",
    "work_of",
]

STACK_MARGIN = 0.9
"""Stacking is chosen when its time per model-step is below this fraction of one model's:
a near tie goes to one at a time, which holds one model's activations, not a chunk's."""


def sweep_seconds(work: Work, cal: dict[str, Any], kind: str, n_tasks: int, limit: int) -> float:
    """Predicted seconds of one training step of all ``n_tasks`` models under the plan
    :func:`plan_chunks` chooses."""
    plan = plan_chunks(work, cal, kind, n_tasks, limit)
    if not plan.vectorize:
        return n_tasks * step_seconds(work, cal, kind, 1)
    return _chunked_seconds(work, cal, kind, n_tasks, plan.chunk_size)


def _chunked_seconds(work: Work, cal: dict[str, Any], kind: str, n: int, size: int) -> float:
    """Seconds of one step of ``n`` models in chunks of about equal size, at most ``size``."""
    chunks = math.ceil(n / size)
    sizes = [n // chunks + (j < n % chunks) for j in range(chunks)]
    return sum(step_seconds(work, cal, kind, s) for s in sizes)


def best_chunk(work: Work, cal: dict[str, Any], kind: str, limit: int) -> int:
    """The number of stacked models (2 .. ``limit``) with the fewest predicted seconds per
    model-step, the smallest on ties: overhead shared by more models against memory
    traffic that costs more once a chunk's copies outgrow the caches."""
    sizes = range(2, max(2, min(limit, 4096)) + 1)
    return min(sizes, key=lambda m: (step_seconds(work, cal, kind, m) / m, m))


def plan_chunks(
    work: Work, cal: dict[str, Any], kind: str, n_tasks: int, limit: int
) -> VectorizePlan:
    """Stacked in chunks of about equal size, at most :func:`best_chunk` models, or one at
    a time: stacked when the predicted seconds per model-step (:func:`step_seconds`, the
    chunks' total over ``n_tasks``) are below :data:`STACK_MARGIN` times one model's
    alone. A pure function: the same arguments give the same plan."""
    single = step_seconds(work, cal, kind, 1)
    if n_tasks <= 1 or limit <= 1:
        why = "one task" if n_tasks <= 1 else "the memory budget holds one model"
        return VectorizePlan(False, 1, math.nan, single, reasons=(why,), work=asdict(work))
    best = best_chunk(work, cal, kind, min(limit, n_tasks))
    size = balanced(n_tasks, best)
    stacked = _chunked_seconds(work, cal, kind, n_tasks, size) / n_tasks
    vectorize = stacked < STACK_MARGIN * single
    verdict = "below" if vectorize else "not below"
    mflop = (work.linear_flops + work.conv_flops) / 1e6
    reasons = (
        f"{kind} forward, {work.layers} layers, {work.params} parameters, {mflop:.3g} MFLOP "
        f"and {work.bytes / 1e6:.3g} MB of memory traffic per model-step (batch {work.batch})",
        f"fewest seconds per model-step at {best} stacked models (memory budget: {limit})",
        f"predicted {stacked * 1e3:.3g} ms per model-step stacked ({size} per chunk) vs "
        f"{single * 1e3:.3g} ms one at a time: {verdict} {STACK_MARGIN:g}x",
    )
    return VectorizePlan(vectorize, size, stacked, single, reasons=reasons, work=asdict(work))


@dataclass(frozen=True)
class VectorizePlan:
    """The plan and why.

    ``stacked_s`` and ``single_s`` are seconds per model per training step: in chunks of
    at most ``chunk_size`` models stacked, and one model at a time, as the cost model
    predicts them (:func:`plan_chunks`). ``vectorize`` is ``stacked_s < STACK_MARGIN *
    single_s``; ``probe_s`` is what deciding cost (the calibration, when it was measured
    for this sweep; 0 when it came from the cache); ``reasons`` say what the decision
    rests on; ``calibration`` names the cache entry; ``work`` is the :class:`Work`."""

    vectorize: bool
    chunk_size: int
    stacked_s: float
    single_s: float
    probe_s: float = 0.0
    steps: int = 0
    source: str = "cost model"
    reasons: tuple[str, ...] = ()
    calibration: str | None = None
    work: dict[str, Any] = field(default_factory=dict)

    @property
    def choice(self) -> str:
        return "stacked" if self.vectorize else "one at a time"

    @property
    def speedup(self) -> float:
        """How much faster the chosen path is than the other (>= 1; NaN if not known)."""
        if not (self.stacked_s > 0 and self.single_s > 0):
            return math.nan
        return max(self.stacked_s, self.single_s) / min(self.stacked_s, self.single_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return {**d, "choice": self.choice}

    def __str__(self) -> str:
        return (
            f"{self.choice}: {self.stacked_s * 1e3:.3g} ms per model-step stacked "
            f"({self.chunk_size} models), {self.single_s * 1e3:.3g} ms one at a time"
            f" ({self.source})"
        )


def choose(
    engine: Engine, tasks: list[Task], limit: int, calibration: dict[str, Any] | None = None
) -> VectorizePlan:
    """The sweep's plan for ``tasks`` with at most ``limit`` models per chunk (the memory
    budget's): :func:`plan_chunks` on the largest group of tasks the sweep may stack
    together (:meth:`Engine.chunk_keys`), with the work of ``engine``'s model
    (:func:`work_of`) and ``calibration`` (default: the device's, from
    :func:`torchpenalty.sweep.calibration.calibrate`, measured once and cached)."""
    t0 = time.perf_counter()
    cal = calibrate(engine.device) if calibration is None else calibration
    spent = 0.0 if cal.get("cached", True) else time.perf_counter() - t0
    keys = engine.chunk_keys(tasks)
    common = max(dict.fromkeys(keys), key=keys.count)
    n = sum(1 for k in keys if k == common)
    plan = plan_chunks(work_of(engine), cal, engine.forward_kind, n, limit)
    if cal.get("provisional"):
        why = (f"the calibration is provisional (measured while other processes kept about "
               f"{cal.get('load') or 0:.1f} cores busy, or with disturbed timings: "
               f"{', '.join(cal.get('disturbed') or []) or 'none'}); it is measured again "
               f"after {PROVISIONAL_S / 3600:g} hour")  # fmt: skip
        plan = replace(plan, reasons=(*plan.reasons, why))
    return replace(plan, probe_s=spent, calibration=cal.get("key"))


def balanced(n: int, limit: int) -> int:
    """The chunk size that splits ``n`` tasks into as few chunks of at most ``limit`` as
    possible, all about equal (65 tasks, limit 56: two chunks of 33 and 32, not 56 and 9).

    >>> balanced(65, 56), balanced(65, 65), balanced(65, 7), balanced(3, 2)
    (33, 65, 7, 2)
    """
    return math.ceil(n / math.ceil(n / limit))
