"""Choosing how a sweep trains its models: stacked (vectorized) or one at a time.

Stacking M models turns M small matrix products into one batched product and M optimizer
steps into one: a large gain for small models and mini-batches, where a step is bound by
per-call overhead, and none (or a loss) for wide models, whose products already keep the
CPU busy while the stacked copies of activations cost memory traffic. Neither is faster
everywhere, so ``tp.sweep(vectorize="auto")`` times a few steps of both on the sweep's own
model and data (:func:`probe`) and keeps the faster.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .engine import Engine, Task

__all__ = ["PROBE_STACK_S", "ROUNDS", "STACK_MARGIN", "VectorizePlan", "balanced", "probe"]

PROBE_STACK_S = 0.05
"""Seconds of one-model steps that the probe stacks at most (at least 2 models)."""

ROUNDS = 2
"""Blocks of steps the probe times for each path, in turn."""

STACK_MARGIN = 0.9
"""Stacking is chosen when its time per model-step is below this fraction of one model's:
a near tie goes to one at a time, which holds one model's activations, not a chunk's."""


@dataclass(frozen=True)
class VectorizePlan:
    """The probe's decision and what it measured.

    ``stacked_s`` and ``single_s`` are seconds per model per training step (the fastest of
    the timed steps): ``chunk_size`` models stacked, and one model at a time. ``chunk_size`` is
    at most the memory budget's chunk, or fewer models for a model whose one step takes
    more than :data:`PROBE_STACK_S` / that many seconds, balanced so that the tasks split
    into chunks of about equal size; stacked chunks are then that size, as timed.
    ``vectorize`` is ``stacked_s < STACK_MARGIN * single_s``; ``probe_s`` is what probing
    cost."""

    vectorize: bool
    chunk_size: int
    stacked_s: float
    single_s: float
    probe_s: float
    steps: int

    @property
    def choice(self) -> str:
        return "stacked" if self.vectorize else "one at a time"

    @property
    def speedup(self) -> float:
        """How much faster the chosen path is than the other (>= 1; NaN if not timed)."""
        if not (self.stacked_s > 0 and self.single_s > 0):
            return math.nan
        return max(self.stacked_s, self.single_s) / min(self.stacked_s, self.single_s)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "choice": self.choice}

    def __str__(self) -> str:
        return (
            f"{self.choice}: {self.stacked_s * 1e3:.3g} ms per model-step stacked "
            f"({self.chunk_size} models), {self.single_s * 1e3:.3g} ms one at a time"
        )


def probe(engine: Engine, tasks: list[Task], chunk_size: int, *, steps: int = 3) -> VectorizePlan:
    """Time ``steps`` training steps of the first ``chunk_size`` of ``tasks`` stacked, and
    of one model alone, in :data:`ROUNDS` blocks each, in turn, each block after a warm-up
    step; keep the faster per model-step by the fastest steps (stacked only by the margin
    :data:`STACK_MARGIN`).

    The probe trains copies and restores the random state: the sweep's numbers do not
    depend on it. With one task or a chunk of one model there is nothing to compare and
    the plan is one at a time (timings NaN).

    >>> import torch
    >>> from torchpenalty.sweep.engine import Engine, Problem, Task
    >>> import numpy as np, torchpenalty as tp
    >>> X = torch.randn(1, 40, 3); Y = torch.randn(1, 40, 1)
    >>> pb = Problem(X, Y, torch.ones(1, 1), [np.arange(40)], [np.arange(0)], "mse")
    >>> eng = Engine(lambda: torch.nn.Linear(3, 1), pb, tp.L2(1.0), epochs=1, batch_size=8,
    ...              optimizer="adam", lr=0.01, mode="grad", seed=0, early_stopping=None)
    >>> plan = probe(eng, [Task(i, 0, s) for i, s in enumerate([0.1, 1.0, 10.0])], 3)
    >>> plan.chunk_size, plan.stacked_s > 0, plan.single_s > 0
    (3, True, True)
    """
    # the largest group of tasks the sweep may stack together (see Engine.chunk_keys)
    keys = engine.chunk_keys(tasks)
    common = max(dict.fromkeys(keys), key=keys.count)
    tasks = [t for t, k in zip(tasks, keys, strict=True) if k == common]
    size = min(chunk_size, len(tasks))
    if size <= 1:
        return VectorizePlan(False, 1, math.nan, math.nan, 0.0, 0)
    # torch imports its compiler stack when the first optimizer is built (seconds, once
    # per process, paid by any training): not the probe's cost
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    t0 = time.perf_counter()
    single, stacked = [], []
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(engine.timed_stepper(tasks[:1]))
        # a model whose step takes milliseconds is bound by arithmetic, not by per-call
        # overhead: stacking a few copies is all the probe spends on it, and all that the
        # sweep then stacks (more copies of wide activations can be slower per model)
        one()  # warm-up: the first step pays one-time costs
        m = balanced(len(tasks), min(size, max(2, int(PROBE_STACK_S / one()))))
        many = stack.enter_context(engine.timed_stepper(tasks[:m]))
        # blocks in turn (a load that comes and goes on a shared machine falls on both),
        # each after a step that brings its weights back into the caches (one step right
        # after a stacked one takes up to twice its time); the fastest step of each path
        for _ in range(ROUNDS):
            one()
            single += [one() for _ in range(steps)]
            many()
            stacked += [many() / m for _ in range(steps)]
    single_s, stacked_s = min(single), min(stacked)
    return VectorizePlan(
        vectorize=stacked_s < STACK_MARGIN * single_s,
        chunk_size=m,
        stacked_s=stacked_s,
        single_s=single_s,
        probe_s=time.perf_counter() - t0,
        steps=steps,
    )


def balanced(n: int, limit: int) -> int:
    """The chunk size that splits ``n`` tasks into as few chunks of at most ``limit`` as
    possible, all about equal (65 tasks, limit 56: two chunks of 33 and 32, not 56 and 9).

    >>> balanced(65, 56), balanced(65, 65), balanced(65, 7), balanced(3, 2)
    (33, 65, 7, 2)
    """
    return math.ceil(n / math.ceil(n / limit))
