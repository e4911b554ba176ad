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

import torch
from torch import nn

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
    "step_seconds",
    "sweep_seconds",
    "work_of",
]

STACK_MARGIN = 0.9
"""Stacking is chosen when its time per model-step is below this fraction of one model's:
a near tie goes to one at a time, which holds one model's activations, not a chunk's."""


@dataclass(frozen=True)
class Work:
    """What one training step of one model does: ``layers`` (modules with parameters of
    their own), trainable ``params``, ``linear_flops`` and ``conv_flops`` (multiply-adds
    times 2, forward and backward: 3 times the forward's, for ``batch`` rows); ``acts``:
    elements of all module outputs for one row."""

    layers: int
    params: int
    linear_flops: float
    conv_flops: float
    batch: int
    acts: int = 0

    @property
    def bytes(self) -> float:
        """Memory traffic of one model-step, estimated: 32 bytes per parameter (parameter,
        gradient and two optimizer moments, read and written) and 12 per activation
        element of the batch (written, read back by the backward pass, its gradient)."""
        return 32.0 * self.params + 12.0 * self.batch * self.acts

    @property
    def working_set(self) -> float:
        """Bytes one model keeps hot between steps: 16 per parameter (with gradient and
        moments) and 8 per activation element of the batch."""
        return 16.0 * self.params + 8.0 * self.batch * self.acts


def work_of(engine: Engine) -> Work:
    """The :class:`Work` of one training step of ``engine``'s model, from its shapes: one
    row is passed through the model with hooks on every ``nn.Linear`` (2 x output
    elements x ``in_features``) and convolution (2 x output elements x input channels per
    group x kernel size)."""
    base = engine.base
    flops: dict[str, float] = {"linear": 0.0, "conv": 0.0, "acts": 0}

    def hook(mod: nn.Module, inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            flops["acts"] += out.numel()
        if isinstance(mod, nn.Linear):
            flops["linear"] += 2.0 * out.numel() * mod.in_features
        elif isinstance(mod, nn.modules.conv._ConvNd):
            k = math.prod(mod.kernel_size)
            flops["conv"] += 2.0 * out.numel() * (mod.in_channels // mod.groups) * k

    hooks = [m.register_forward_hook(hook) for m in base.modules() if m is not base]
    try:
        fold = torch.zeros(1, dtype=torch.long, device=engine.device)
        row = torch.zeros(1, 1, dtype=torch.long, device=engine.device)
        with torch.no_grad(), engine.train_mode(False):
            base(engine.problem.inputs(fold, row)[0])
    except Exception:  # a model that cannot run one row: count its parameters only
        n = sum(p.numel() for p in base.parameters())
        flops = {"linear": 2.0 * n, "conv": 0.0, "acts": n}
    finally:
        for h in hooks:
            h.remove()
    layers = sum(1 for m in base.modules() if any(True for _ in m.parameters(recurse=False)))
    params = sum(p.numel() for p in base.parameters() if p.requires_grad)
    b = engine.batch_size
    lin, conv = 3 * b * flops["linear"], 3 * b * flops["conv"]
    return Work(max(1, layers), params, lin, conv, b, int(flops["acts"]))


def memory_seconds(work: Work, curve: list[list[float]], m: int = 1) -> float:
    """Seconds of one model-step's memory traffic when ``m`` models are kept hot together:
    ``work.bytes`` times the seconds per byte of ``curve`` (``[[bytes, s/byte], ...]``,
    interpolated log-log, flat beyond its ends) at ``m * work.working_set`` bytes.

    >>> memory_seconds(Work(1, 1000, 0, 0, 1), [[1e5, 1e-11], [1e6, 1e-10]], m=1)
    3.2e-07
    """
    xs = [math.log(x) for x, _ in curve]
    ys = [math.log(y) for _, y in curve]
    x = math.log(max(m * work.working_set, 1.0))
    if x <= xs[0]:
        y = ys[0]
    elif x >= xs[-1]:
        y = ys[-1]
    else:
        j = next(j for j in range(1, len(xs)) if xs[j] >= x)
        t = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
        y = ys[j - 1] + t * (ys[j] - ys[j - 1])
    return round(work.bytes * math.exp(y), 15)


def step_seconds(work: Work, cal: dict[str, Any], kind: str, m: int = 1) -> float:
    """Predicted seconds of one training step of ``m`` models stacked (``m = 1``: one
    model alone, with the ``"single"`` constants of ``cal[kind]``, else ``"stacked"``):
    ``a + b * layers + m * (f * linear_flops + c * conv_flops + memory)``, the memory term
    from :func:`memory_seconds` at the chunk's working set. A stacked step's overhead
    ``a + b * layers`` is at least a one-model step's.

    >>> cal = {"bandwidth": [[1.0, 1e-30], [2.0, 1e-30]],
    ...        "bmm": {"stacked": dict(a=1e-4, b=1e-5, f=1e-10, c=0)}}
    >>> step_seconds(Work(2, 100, 1e6, 0, 8), cal, "bmm", m=4)
    0.00052
    """
    k = cal[kind]["single" if m == 1 else "stacked"]
    per_model = k["f"] * work.linear_flops + k["c"] * work.conv_flops
    per_model += memory_seconds(work, cal["bandwidth"], m)
    overhead = k["a"] + k["b"] * work.layers
    if m > 1 and "single" in cal[kind]:  # a stacked step does all a one-model step does
        one = cal[kind]["single"]
        overhead = max(overhead, one["a"] + one["b"] * work.layers)
    return round(overhead + m * per_model, 12)


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
    from .calibration import calibrate

    t0 = time.perf_counter()
    cal = calibrate(engine.device) if calibration is None else calibration
    spent = 0.0 if cal.get("cached", True) else time.perf_counter() - t0
    keys = engine.chunk_keys(tasks)
    common = max(dict.fromkeys(keys), key=keys.count)
    n = sum(1 for k in keys if k == common)
    plan = plan_chunks(work_of(engine), cal, engine.forward_kind, n, limit)
    return replace(plan, probe_s=spent, calibration=cal.get("key"))


def balanced(n: int, limit: int) -> int:
    """The chunk size that splits ``n`` tasks into as few chunks of at most ``limit`` as
    possible, all about equal (65 tasks, limit 56: two chunks of 33 and 32, not 56 and 9).

    >>> balanced(65, 56), balanced(65, 65), balanced(65, 7), balanced(3, 2)
    (33, 65, 7, 2)
    """
    return math.ceil(n / math.ceil(n / limit))
