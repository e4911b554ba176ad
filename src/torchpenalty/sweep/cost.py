"""The cost model of a sweep's training step: what one model-step does (:class:`Work`,
counted by :func:`work_of` from the model's shapes) and the seconds it is predicted to
take (:func:`step_seconds`) for a device's constants. The constants are measured by
:mod:`torchpenalty.sweep.calibration`; :mod:`torchpenalty.sweep.plan` chooses from the
predictions. Both import this module, and it imports neither.

>>> w = Work(layers=2, params=100, linear_flops=1e6, conv_flops=0, batch=8)
>>> w.bytes, w.working_set
(3200.0, 1600.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .engine import Engine

__all__ = ["Work", "memory_seconds", "seconds_per_flop", "step_seconds", "work_of"]


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
    y = _interpolated([[x, math.log(v)] for x, v in curve], m * work.working_set)
    return round(work.bytes * math.exp(y), 15)


def seconds_per_flop(f: float | list[list[float]], flops: float) -> float:
    """The constant ``f`` of a calibration at ``flops`` per model-step: a number, or a
    curve ``[[flops, s/flop], ...]`` measured on models of several sizes (a large product
    spreads over a device's cores, a small one does not), interpolated linearly in
    log(flops) and flat beyond its ends.

    >>> seconds_per_flop(2e-11, 1e9)
    2e-11
    >>> seconds_per_flop([[1e6, 2e-11], [1e8, 1e-11]], 1e7)
    1.5e-11
    """
    if isinstance(f, (int, float)):
        return float(f)
    return round(_interpolated(f, flops), 20)


def _interpolated(curve: list[list[float]], x: float) -> float:
    """``curve``'s value at ``x``, linear in log(x) between its points, flat beyond."""
    xs = [math.log(max(p[0], 1.0)) for p in curve]
    ys = [p[1] for p in curve]
    u = math.log(max(x, 1.0))
    if u <= xs[0]:
        return ys[0]
    if u >= xs[-1]:
        return ys[-1]
    j = next(j for j in range(1, len(xs)) if xs[j] >= u)
    t = (u - xs[j - 1]) / (xs[j] - xs[j - 1])
    return ys[j - 1] + t * (ys[j] - ys[j - 1])


def step_seconds(work: Work, cal: dict[str, Any], kind: str, m: int = 1) -> float:
    """Predicted seconds of one training step of ``m`` models stacked (``m = 1``: one
    model alone, with the ``"single"`` constants of ``cal[kind]``, else ``"stacked"``):
    ``a + b * layers + m * (f * linear_flops + c * conv_flops + memory)``, ``f`` from
    :func:`seconds_per_flop` at the model's ``linear_flops``, the memory term from
    :func:`memory_seconds` at the chunk's working set. A stacked step's overhead
    ``a + b * layers`` is at least a one-model step's.

    >>> cal = {"bandwidth": [[1.0, 1e-30], [2.0, 1e-30]],
    ...        "bmm": {"stacked": dict(a=1e-4, b=1e-5, f=1e-10, c=0)}}
    >>> step_seconds(Work(2, 100, 1e6, 0, 8), cal, "bmm", m=4)
    0.00052
    """
    k = cal[kind]["single" if m == 1 else "stacked"]
    per_model = seconds_per_flop(k["f"], work.linear_flops) * work.linear_flops
    per_model += k["c"] * work.conv_flops
    per_model += memory_seconds(work, cal["bandwidth"], m)
    overhead = k["a"] + k["b"] * work.layers
    if m > 1 and "single" in cal[kind]:  # a stacked step does all a one-model step does
        one = cal[kind]["single"]
        overhead = max(overhead, one["a"] + one["b"] * work.layers)
    return round(overhead + m * per_model, 12)
