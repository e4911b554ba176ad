"""Cautious decay (``attach(..., cautious=True)``).

Cautious decay (Chen et al. 2025, arXiv 2510.12402) decays a coordinate only where the
optimizer's update ``u`` and the decay direction agree in sign:
``w <- w - lr * (u + 1[u * D >= 0] * D)`` with ``D = grad P(w)`` (``s * w`` for ``L2(s)``,
the paper's ``s * 1[u * w >= 0] * w``). The update's sign is read from the step itself,
for any optimizer: before the step the regularized weights are copied (``w_old``), after
it ``delta = w_new - w_old = -lr * u`` gives ``u * D >= 0  <=>  delta * D <= 0``, and the
decay ``lr * mask * D(w_old)`` is subtracted, so the result is exactly the formula above
evaluated at the pre-step weights. Cost: one copy of the regularized weights (their size
in memory, kept between the two hooks of a step) and five foreach passes per step for
``L2`` (about seven for other penalties, whose ``D`` needs a buffer).
Where the decay opposes the update it is skipped: the optimizer then converges to a
minimizer of the unpenalized loss, the decay choosing among minimizers (a smaller-norm one)
instead of trading loss for norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import type_error, value_error
from ..penalties import L2
from .base import RULES, Batch, UpdateRule, bind_rule
from .basic import Decoupled


@torch.no_grad()
def cautious_decay_(
    params: Sequence[Tensor],
    before: Sequence[Tensor],
    directions: Sequence[Tensor],
    lr: float | Sequence[float],
) -> None:
    """``w <- w - lr * 1[delta * D <= 0] * D`` in place, with ``delta = w - before`` the
    optimizer's step (``-lr * u``) and ``D`` the decay direction at the pre-step weights
    (``s * before`` for L2): the decay applies where ``u * D >= 0``. ``lr`` may be one
    value per tensor. ``directions`` is overwritten (with the masked, scaled decay).

    >>> w0 = [torch.tensor([1.0, 1.0, -1.0, 0.0])]
    >>> w = [torch.tensor([0.9, 1.1, -0.9, 0.1])]      # the optimizer moved these ways
    >>> cautious_decay_(w, w0, [0.5 * w0[0]], lr=0.1)   # D = s * w0, s = 0.5
    >>> w[0]        # decayed where the step went towards zero (or D = 0), kept where not
    tensor([ 0.8500,  1.1000, -0.8500,  0.1000])
    """
    params, before, directions = list(params), list(before), list(directions)
    if not params:
        return
    delta = torch._foreach_sub(params, before)
    torch._foreach_mul_(delta, directions)
    masks = [d <= 0 for d in delta]
    del delta
    torch._foreach_mul_(directions, masks)
    if isinstance(lr, (int, float)):
        torch._foreach_add_(params, directions, alpha=-lr)
    elif isinstance(lr, Tensor) or any(isinstance(x, Tensor) for x in lr):  # live rates
        rates = [lr] * len(params) if isinstance(lr, Tensor) else list(lr)
        for p, d, r in zip(params, directions, rates, strict=True):
            p.sub_(d * r)
    else:
        torch._foreach_mul_(directions, [-float(x) for x in lr])
        torch._foreach_add_(params, directions)


def _cautious_l2_(params: list[Tensor], before: list[Tensor], scales: list[float]) -> None:
    """:func:`cautious_decay_` for ``D = s * before`` (``s > 0`` leaves the sign test
    ``delta * before <= 0``), consuming ``before`` as the buffer of the masked decay."""
    delta = torch._foreach_sub(params, before)
    torch._foreach_mul_(delta, before)
    masks = [d <= 0 for d in delta]
    del delta
    torch._foreach_mul_(before, masks)
    if any(isinstance(x, Tensor) for x in scales):  # live rates: one product per tensor
        for p, d, x in zip(params, before, scales, strict=True):
            p.sub_(d * x)
        return
    torch._foreach_mul_(before, [-x for x in scales])
    torch._foreach_add_(params, before)


class Cautious(UpdateRule):
    """``cautious=True`` on a decoupled-family rule (``"decoupled"``, ``"independent"``,
    ``"corrected"``; Chen et al. 2025): ``w <- w - rate * 1[u * D >= 0] * D`` with
    ``D = grad P(w_old)`` and the update ``u`` read from the step. ``pre`` copies the
    weights, ``post`` applies :func:`cautious_decay_` with each tensor's rate (the inner
    rule's). Memory: the copy lives during ``opt.step()``, plus two temporaries of the
    same size in ``post``."""

    writes_weights = True

    def __init__(self, inner: UpdateRule) -> None:
        if not isinstance(inner, Decoupled):
            raise value_error(
                "cautious",
                "False unless mode is 'decoupled', 'independent', 'corrected' (or another "
                f"decoupled rule); mode is {inner.name!r}",
                True,
            )
        self.inner = inner
        self._before: dict[tuple[int, ...], list[Tensor]] = {}

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @classmethod
    def around(cls, mode: str | UpdateRule, **options: Any) -> Cautious:
        """The cautious form of ``mode`` built with ``options``."""
        if isinstance(mode, UpdateRule):
            if options:
                raise TypeError(f"options must be empty for a rule instance, got {options}")
            return cls(mode)
        if mode not in RULES:
            raise value_error("mode", "one of " + ", ".join(map(repr, RULES)), mode)
        return cls(RULES[mode].from_options(**options))

    def bind(self, reg: Any) -> None:
        bind_rule(self.inner, reg)

    def check(self, penalty: Any) -> None:
        self.inner.check(penalty)

    def pre(self, b: Batch) -> None:
        self._before[tuple(b.keys)] = [p.detach().clone() for p in b.params]

    def post(self, b: Batch) -> None:
        before = self._before.pop(tuple(b.keys), None)
        if before is None:  # the pre hook did not run (a skipped step)
            return
        rates = self.inner.rates(b)  # type: ignore[attr-defined]
        stacked = isinstance(b.strength, Tensor) and b.strength.ndim == 1
        if type(b.penalty) is L2 and not stacked:  # D = s * w_old: no D buffer
            s = b.penalty.strength_at(b.step) if b.strength is None else b.strength
            _cautious_l2_(b.params, before, [r * s for r in rates])
            return
        directions = [torch.zeros_like(w) for w in before]
        b.penalty.grad_(directions, before, step=b.step, names=b.names, strength=b.strength)
        cautious_decay_(b.params, before, directions, rates[0] if len(set(rates)) == 1 else rates)

    def __repr__(self) -> str:
        return f"Cautious({self.inner!r})"


def cautious_rule(mode: str | UpdateRule, cautious: Any, options: dict[str, Any]):
    """``(mode, options)`` for ``attach``: with ``cautious=True`` the cautious form of
    ``mode`` (its options consumed), else unchanged."""
    if not isinstance(cautious, bool):
        raise type_error("cautious", "a bool", cautious)
    if not cautious:
        return mode, options
    return Cautious.around(mode, **options), {}
