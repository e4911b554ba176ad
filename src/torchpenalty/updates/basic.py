"""The basic rules: coupled gradient, decoupled (AdamW-style), lr-independent, loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..penalties import Penalty

from .base import Batch, UpdateRule


class Grad(UpdateRule):
    """Coupled: add the penalty's gradient to ``.grad`` before the step (= loss mode)."""

    name = "grad"
    sweepable = True

    def pre(self, b: Batch) -> None:
        if b.grad_scale is None:
            b.penalty.grad_(b.grads, b.params, step=b.step, names=b.names, strength=b.strength)
            return
        tmp = [torch.zeros_like(x) for x in b.grads]
        b.penalty.grad_(tmp, b.params, step=b.step, names=b.names, strength=b.strength)
        torch._foreach_mul_(tmp, b.grad_scale.to(tmp[0].device))
        torch._foreach_add_(b.grads, tmp)


class Decoupled(UpdateRule):
    """``w <- w - rate * grad P(w)`` before the step, ``rate`` = the group's lr
    (AdamW-style; ``L2`` is exactly ``w * (1 - lr * s)``). Subclasses change :meth:`rate`."""

    name = "decoupled"
    sweepable = True
    writes_weights = True

    def rate(self, b: Batch) -> float:
        return b.lr

    def rates(self, b: Batch) -> list[float]:
        """The decay factor of each tensor of the batch (a subclass may vary it per tensor)."""
        return [self.rate(b)] * len(b.params)

    def pre(self, b: Batch) -> None:
        b.penalty.decay_(b.params, self.rate(b), step=b.step, names=b.names, strength=b.strength)


class Independent(Decoupled):
    """lr-independent decay: ``rate = lr / initial_lr`` (the schedule's shape only)."""

    name = "independent"
    sweepable = False  # the sweep has no lr schedule: it would equal "decoupled"

    def rate(self, b: Batch) -> float:
        return b.lr / b.lr0 if b.lr0 else 0.0


class Loss(UpdateRule):
    """``reg()`` is in the loss: the hooks only advance strength schedules."""

    name = "loss"
    applies_penalty = False

    def check(self, penalty: Penalty) -> None:
        pass
