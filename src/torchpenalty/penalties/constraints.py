"""Constraints: indicator penalties whose proximal step is the Euclidean projection."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .._validation import (
    check_strength,
    check_unit_interval,
    type_error,
)
from ..functional import accumulation_dtype
from .base import Penalty


def _check_dims(dim: Any) -> int | tuple[int, ...] | None:
    if dim is None or (isinstance(dim, int) and not isinstance(dim, bool)):
        return dim
    if (
        isinstance(dim, (list, tuple))
        and dim
        and all(isinstance(d, int) and not isinstance(d, bool) for d in dim)
    ):
        return tuple(dim)
    raise type_error("dim", "an integer, a non-empty tuple of integers or None", dim)


class Constraint(Penalty):
    """A constraint set ``C``: the penalty is its indicator (0 inside, so no value and no
    gradient), its proximal operator the Euclidean projection onto ``C``, applied after
    each optimizer step by ``attach(opt, mode="proximal")`` whatever the optimizer (not
    preconditioned). Add it to a penalty to decay and constrain the same weights:
    ``tp.L2(1e-4) + tp.MaxNorm(3.0)``.

    ``dim`` (norm constraints) is the dimension or tuple of dimensions the norm runs over,
    Keras's ``axis`` on torch's layout: a torch ``nn.Linear`` weight is ``(out, in)``, the
    transpose of a Keras ``Dense`` kernel ``(in, out)``, so Keras ``axis=0`` (the weights
    into each unit) is ``dim=1`` here; a Keras ``Conv2D`` kernel ``(h, w, in, out)`` with
    ``axis=[0, 1, 2]`` is ``dim=(1, 2, 3)`` on torch's ``(out, in, h, w)``. ``dim=None``
    (the default) is every dimension but the first: per output unit of a Linear or a Conv.
    """

    is_constraint = True
    stackable = False
    has_prox = True
    whole_what = "whole slices along the dims its norm runs over"

    def __init__(self) -> None:
        self.strength = 1.0

    def project_(self, params: list[Tensor]) -> None:  # pragma: no cover - abstract
        """Replace each tensor by its projection onto the set, in place."""
        raise NotImplementedError

    def _value(self, params, s, names) -> Tensor:
        return torch.zeros((), dtype=accumulation_dtype(params), device=params[0].device)

    def _grad_(self, grads, params, s, names) -> None:
        pass

    def _decay_(self, params, lr, s, names) -> None:
        pass

    @torch.no_grad()
    def prox_(self, params, lr=0.0, *, step=0, names=None, strength=None, metric=None) -> None:
        """The Euclidean projection (``lr``, ``strength`` and ``metric`` do not apply)."""
        if params:
            self.project_(list(params))

    def _prox_(self, params, t, names, metric=None) -> None:
        self.project_(params)

    def shard_ok(self, dim: int, ndim: int) -> bool:
        d = getattr(self, "dim", "none")
        if d == "none":
            return True
        dims = tuple(range(1, ndim)) if d is None else (d,) if isinstance(d, int) else d
        return dim % max(ndim, 1) not in {x % max(ndim, 1) for x in dims}


class MaxNorm(Constraint):
    """``||w_u|| <= max_value`` for every slice ``w_u`` (norm over ``dim``): Keras
    ``MaxNorm``, ``w * clip(n, 0, max_value) / (eps + n)`` with ``eps = 1e-7``; the
    max-norm of dropout nets (Srivastava et al., 2014).

    >>> import torch
    >>> w = [torch.tensor([[3.0, 4.0], [0.3, 0.4]])]
    >>> MaxNorm(1.0, dim=1).prox_(w); w[0]   # row norms 5 -> 1, 0.5 stays
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """

    name = "max_norm"
    aliases = ("maxnorm",)

    def __init__(self, max_value: float = 2.0, *, dim: int | tuple[int, ...] | None = None):
        super().__init__()
        self.max_value = check_strength("max_value", max_value)
        self.dim = _check_dims(dim)

    def project_(self, params):
        F.min_max_norm_(params, 0.0, self.max_value, 1.0, self.dim)


class MinMaxNorm(Constraint):
    """``min_value <= ||w_u|| <= max_value`` approached at ``rate`` (Keras ``MinMaxNorm``):
    ``w * (rate * clip(n, min, max) + (1 - rate) * n) / (eps + n)``.

    >>> import torch
    >>> w = [torch.tensor([[3.0, 4.0], [0.3, 0.4]])]
    >>> MinMaxNorm(1.0, 2.0, rate=0.5, dim=1).prox_(w); w[0]  # norms 5 -> 3.5, 0.5 -> 0.75
    tensor([[2.1000, 2.8000],
            [0.4500, 0.6000]])
    """

    name = "min_max_norm"
    aliases = ("minmaxnorm",)

    def __init__(
        self,
        min_value: float = 0.0,
        max_value: float = 1.0,
        rate: float = 1.0,
        *,
        dim: int | tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.min_value = check_strength("min_value", min_value)
        self.max_value = check_strength("max_value", max_value)
        if self.max_value < self.min_value:
            raise ValueError(f"max_value must be >= min_value ({min_value}), got {max_value}")
        self.rate = check_unit_interval("rate", rate)
        self.dim = _check_dims(dim)

    def project_(self, params):
        F.min_max_norm_(params, self.min_value, self.max_value, self.rate, self.dim)


class UnitNorm(Constraint):
    """``||w_u|| = 1`` (Keras ``UnitNorm``): ``w / (eps + n)``.

    >>> import torch
    >>> w = [torch.tensor([[3.0, 4.0], [0.3, 0.4]])]
    >>> UnitNorm(dim=1).prox_(w); w[0]
    tensor([[0.6000, 0.8000],
            [0.6000, 0.8000]])
    """

    name = "unit_norm"
    aliases = ("unitnorm",)

    def __init__(self, *, dim: int | tuple[int, ...] | None = None):
        super().__init__()
        self.dim = _check_dims(dim)

    def project_(self, params):
        F.unit_norm_(params, self.dim)


class NonNeg(Constraint):
    """``w >= 0`` (Keras ``NonNeg``): ``w * (w >= 0)``.

    >>> import torch
    >>> w = [torch.tensor([1.5, -2.0])]
    >>> NonNeg().prox_(w); w[0]
    tensor([1.5000, 0.0000])
    """

    name = "non_neg"
    aliases = ("nonneg",)

    def project_(self, params):
        F.non_neg_(params)
