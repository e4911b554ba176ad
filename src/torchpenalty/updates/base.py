"""The update-rule interface (:class:`UpdateRule`), its registry :data:`RULES` (filled by
subclassing) and the :class:`Batch` a rule sees."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .._capture import tracing

if TYPE_CHECKING:  # pragma: no cover
    from ..penalties import Penalty


#: How float16/bfloat16 weights are written by rules that write weights.
ROUNDINGS = ("stochastic", "compensated", "nearest")
_LOW = (torch.float16, torch.bfloat16)

#: name -> rule class, filled by subclassing (a subclass with a ``name`` registers).
RULES: dict[str, type[UpdateRule]] = {}


@dataclasses.dataclass
class Batch:
    """What a rule sees: one penalty and the parameters of one optimizer group.

    ``params`` / ``grads`` are the tensors to update in place (local shards of DTensors);
    ``originals`` the parameters as the optimizer holds them (``optimizer.state`` keys).
    ``strength``: ``None`` takes ``penalty.strength_at(step)``; a 1-D tensor holds one
    strength per stacked model (the sweep). ``lr0``: the group's initial (peak) lr.
    ``grad_scale``: GradScaler's pending scale of ``grads`` (``None`` when unscaled).
    """

    penalty: Penalty
    params: list[Tensor]
    grads: list[Tensor]
    names: list[str]
    originals: list[Tensor]
    optimizer: torch.optim.Optimizer
    group: dict[str, Any]
    step: int = 0
    strength: float | Tensor | None = None
    lr0: float | None = None
    grad_scale: Tensor | None = None

    @property
    def lr(self) -> float | Tensor:
        """The group's current learning rate: a float, or the group's own tensor inside a
        compiled or captured step (read live, no host synchronization)."""
        lr = self.group.get("lr", 0.0)
        if isinstance(lr, Tensor):
            return lr if tracing() else float(lr.item())
        return float(lr)

    @property
    def keys(self) -> list[int]:
        """``id()`` of each parameter (stable across local views)."""
        return [id(p) for p in self.originals]

    def replace(self, **changes: Any) -> Batch:
        return dataclasses.replace(self, **changes)


class UpdateRule:
    """Base class. Override :meth:`pre` and/or :meth:`post`; set ``name`` to register.

    Class attributes: ``writes_weights`` (changes weights in place: :class:`Rounded`
    wraps it for float16/bfloat16), ``applies_penalty`` (False only for ``"loss"``: the
    penalty is then expected in the loss), ``needs_prox`` (the penalty must have a
    proximal operator), ``sweepable`` (:func:`torchpenalty.sweep` can train with it:
    a rule that needs nothing but the batch and the optimizer's group).
    """

    name: ClassVar[str] = ""
    sweepable: ClassVar[bool] = False
    writes_weights: ClassVar[bool] = False
    applies_penalty: ClassVar[bool] = True
    needs_prox: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if isinstance(name, str) and name:
            RULES[name] = cls

    @classmethod
    def from_options(cls, **options: Any) -> UpdateRule:
        """Build the rule from ``attach(..., **options)`` (a subclass may return a variant)."""
        return cls(**options)

    def check(self, penalty: Penalty) -> None:
        """Raise ``ValueError`` if this rule cannot apply ``penalty``."""
        if self.needs_prox and not penalty.has_prox:
            raise ValueError(
                f"mode must be one of 'grad', 'decoupled', 'independent' for "
                f"{type(penalty).__name__}, which has no proximal operator, got {self.name!r}"
            )
        if not self.needs_prox and getattr(penalty, "has_constraint", penalty.is_constraint):
            raise ValueError(
                f"mode must be 'proximal' for {penalty!r}, which holds a constraint (a "
                f"projection, applied only by proximal steps), got {self.name!r}"
            )

    def pre(self, batch: Batch) -> None:
        """Before ``optimizer.step()`` (gradients are final)."""

    def post(self, batch: Batch) -> None:
        """After ``optimizer.step()``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def modes(*, sweepable: bool = False) -> list[str]:
    """The registered rules' names (``Regularizer.attach``'s modes), in registration order;
    ``sweepable=True``: only those the sweep trains with. Read from :data:`RULES` at each
    call, so a rule registered by subclassing is listed at once.

    >>> sweepable = modes(sweepable=True)
    >>> {"grad", "decoupled", "proximal"} <= set(sweepable), "independent" in sweepable
    (True, False)
    """
    return [n for n, cls in RULES.items() if cls.sweepable or not sweepable]


def bind_rule(rule: UpdateRule, reg: Any) -> None:
    """Call ``bind(reg)`` on ``rule`` or on the rule it wraps (``Rounded``), if any."""
    while rule is not None:
        bind = getattr(type(rule), "bind", None)
        if bind is not None:
            bind(rule, reg)
            return
        rule = getattr(rule, "inner", None)
