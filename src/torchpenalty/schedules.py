"""Strength schedules: callables of the optimizer step that return a strength.

Any callable ``step -> float`` is accepted wherever a strength is; the classes here add
validation and a JSON config (``get_config`` / ``schedule_from_config``), so a penalty
with a schedule round-trips through its config.

>>> sched = Linear(0.0, 1e-2, steps=100)   # warm the strength up over 100 steps
>>> sched(0), sched(50), sched(100), sched(1000)
(0.0, 0.005, 0.01, 0.01)
>>> schedule_from_config(sched.get_config())(50)
0.005

Each schedule here is also a function of a step *tensor* (:meth:`Schedule.tensor`), so a
compiled or CUDA-graph-captured training step advances it on the device, with no host
read and no recompilation (see docs/compiled.md):

>>> import torch
>>> sched.tensor(torch.tensor(50)).item()
0.005
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._validation import check_config, check_int, check_real, check_strength, type_error

__all__ = ["Cosine", "Exponential", "Linear", "Piecewise", "Schedule", "schedule_from_config"]


class Schedule:
    """Base class: subclasses define ``__call__(step) -> float`` and ``_params`` (those in
    ``_optional`` may be missing from a config)."""

    name: str = ""
    _params: tuple[str, ...] = ()
    _optional: tuple[str, ...] = ()

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def tensor(self, step: Tensor) -> Tensor:
        """The value at a step held in a 0-d integer tensor, as a 0-d float64 tensor on its
        device, computed with tensor operations only (no host read: usable inside
        ``torch.compile`` and CUDA-graph capture). Equals ``self(int(step))``. A subclass
        without it can only be evaluated on the host (``Regularizer.check_capturable``
        says so)."""
        raise NotImplementedError(f"{type(self).__name__} has no tensor(step) form")

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"schedule": self.name}
        for k in self._params:
            v = getattr(self, k)
            cfg[k] = list(v) if isinstance(v, tuple) else v
        return cfg

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._params)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))


class _Ramp(Schedule):
    """From ``start`` to ``end`` over ``steps`` steps, then flat."""

    _params = ("start", "end", "steps")

    def __init__(self, start: float, end: float, steps: int) -> None:
        self.start = check_strength("start", start)
        self.end = check_strength("end", end)
        self.steps = check_int("steps", steps, minimum=1)

    def _frac(self, step: int) -> float:
        return min(max(step, 0), self.steps) / self.steps

    def _tfrac(self, step: Tensor) -> Tensor:
        return step.clamp(0, self.steps).to(torch.float64) / self.steps


class Linear(_Ramp):
    """``start + (end - start) * min(step, steps) / steps``: linear ramp, then flat."""

    name = "linear"

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * self._frac(step)

    def tensor(self, step: Tensor) -> Tensor:
        return self.start + (self.end - self.start) * self._tfrac(step)


class Cosine(_Ramp):
    """``end + (start - end) * (1 + cos(pi * min(step, steps) / steps)) / 2``."""

    name = "cosine"

    def __call__(self, step: int) -> float:
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * self._frac(step))) / 2

    def tensor(self, step: Tensor) -> Tensor:
        return self.end + (self.start - self.end) * (1 + torch.cos(math.pi * self._tfrac(step))) / 2


class Exponential(Schedule):
    """``min(start * gamma ** step, limit)``.

    A decaying schedule (``gamma <= 1``) needs no ``limit``. A growing one (``gamma > 1``)
    must be given a ``limit``: ``start * gamma ** step`` would otherwise overflow to inf
    partway through training (``1e-4 * 1.5 ** step`` does at step 1751), so it is refused
    at construction rather than failing mid-run. Past the overflow point the value is
    ``limit`` exactly.

    >>> Exponential(1.0, 0.5)(3)
    0.125
    >>> Exponential(1e-4, 1.5, limit=1e-2)(10_000)
    0.01
    """

    name = "exponential"
    _params = ("start", "gamma", "limit")
    _optional = ("limit",)

    def __init__(self, start: float, gamma: float, *, limit: float | None = None) -> None:
        self.start = check_strength("start", start)
        self.gamma = check_strength("gamma", gamma)
        if limit is None and self.gamma > 1:
            raise ValueError(
                f"limit must be given when gamma > 1 (the strength grows without bound and "
                f"overflows), got None (gamma={gamma!r})"
            )
        self.limit = None if limit is None else check_strength("limit", limit)

    def __call__(self, step: int) -> float:
        try:
            v = self.start * self.gamma ** max(step, 0)
        except OverflowError:  # float ** raises past ~1.8e308
            v = math.inf
        return v if self.limit is None else min(v, self.limit)

    def tensor(self, step: Tensor) -> Tensor:
        k = step.clamp(min=0).to(torch.float64)
        power = torch.pow(torch.full_like(k, self.gamma), k)
        # past the overflow point the float form is inf whatever ``start`` (even 0)
        v = torch.where(torch.isinf(power), power, self.start * power)
        return v if self.limit is None else v.clamp(max=self.limit)


class Piecewise(Schedule):
    """``values[i]`` for ``boundaries[i-1] <= step < boundaries[i]`` (``len(values) ==
    len(boundaries) + 1``, boundaries increasing)."""

    name = "piecewise"
    _params = ("boundaries", "values")

    def __init__(self, boundaries: list[int], values: list[float]) -> None:
        if not isinstance(boundaries, (list, tuple)):
            raise type_error("boundaries", "a list of integers", boundaries)
        if not isinstance(values, (list, tuple)):
            raise type_error("values", "a list of strengths", values)
        b = tuple(check_int("boundaries", x, minimum=0) for x in boundaries)
        if list(b) != sorted(set(b)):
            raise ValueError(f"boundaries must be strictly increasing, got {list(boundaries)!r}")
        if len(values) != len(b) + 1:
            raise ValueError(
                f"values must have len(boundaries) + 1 = {len(b) + 1} entries, got {list(values)!r}"
            )
        self.boundaries = b
        self.values = tuple(check_strength("values", v) for v in values)

    def __call__(self, step: int) -> float:
        i = sum(1 for b in self.boundaries if step >= b)
        return self.values[i]

    def tensor(self, step: Tensor) -> Tensor:
        # values[0] plus each jump once its boundary is reached: constants only (no
        # host-to-device copy of a table, which a CUDA-graph capture forbids)
        v = torch.full_like(step, self.values[0], dtype=torch.float64)
        for b, lo, hi in zip(self.boundaries, self.values, self.values[1:], strict=False):
            v = torch.where(step >= b, torch.full_like(v, hi), v) if hi != lo else v
        return v


_SCHEDULES = {cls.name: cls for cls in (Linear, Cosine, Exponential, Piecewise)}


def schedule_from_config(cfg: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from ``Schedule.get_config()``."""
    if not isinstance(cfg, dict) or cfg.get("schedule") not in _SCHEDULES:
        raise ValueError(
            f"cfg must be a schedule config with 'schedule' in {sorted(_SCHEDULES)}, got {cfg!r}"
        )
    cls = _SCHEDULES[cfg["schedule"]]
    required = [k for k in cls._params if k not in cls._optional]
    check_config("cfg", cfg, ("schedule", *cls._params), ("schedule", *required))
    return cls(**{k: cfg[k] for k in cls._params if k in cfg})


def tensor_form(strength: Any) -> Any:
    """The ``tensor(step)`` function of a schedule, or ``None`` when ``strength`` is a
    callable without one (it can only be evaluated on the host)."""
    fn = getattr(strength, "tensor", None)
    if fn is None or getattr(type(strength), "tensor", None) is Schedule.tensor:
        return None
    return fn


def evaluate(strength: Any, step: int, name: str = "strength") -> float:
    """The strength at ``step``: a float as is, a schedule called and checked."""
    if callable(strength):
        return check_strength(f"{name}({step})", strength(step))
    return check_real(name, strength)
