"""Update rules: how a penalty reaches the weights around an optimizer step.

One small object per rule, one interface (:class:`UpdateRule`), used by both
``Regularizer.attach`` (through optimizer step hooks) and the sweep engine (around its
own ``opt.step()``). A rule sees one :class:`Batch` at a time (one penalty, the
parameters of one optimizer group that have a gradient) and acts before the step
(:meth:`UpdateRule.pre`, the gradients are final), after it (:meth:`UpdateRule.post`), or
both (a rule may keep state between the two, e.g. a snapshot of the weights).

============== ======================================================= ==========
rule           what it does                                            when
============== ======================================================= ==========
``grad``       ``g <- g + grad P(w)`` (coupled; = the penalty in the    before
               loss)
``decoupled``  ``w <- w - lr * grad P(w)`` (AdamW-style, any optimizer) before
``independent````w <- w - (lr / initial_lr) * grad P(w)``              before
``proximal``   ``w <- prox_{lr * c * P}(w)`` in the optimizer's metric after
``loss``       nothing (``reg()`` is in the loss)                      -
============== ======================================================= ==========

Low-precision writes are a wrapper, not a flag: :class:`Rounded` runs any rule that
writes weights on float32 copies of float16/bfloat16 weights and writes them back by
stochastic rounding, with a float32 residual ("compensated") or to nearest. Rules are
chosen by name with :func:`make_rule`; a new rule is one subclass with a ``name``.

The proximal step follows the optimizer's metric (:func:`step_metric`): a proximal
gradient step ``w <- prox(w - lr * c * g / d)`` must threshold at ``lr * c * s / d``
for its fixed points to solve ``min f(w) + P(w)``. ``c`` and ``d`` are read from each
optimizer's own state and conventions (SGD momentum/dampening; Adam, AdamW, Adamax,
NAdam, RAdam, RMSprop, Adagrad bias corrections and eps). Constraints are projections
and stay Euclidean.

>>> import torch
>>> from torchpenalty import L1
>>> w = torch.nn.Parameter(torch.tensor([0.5, -2.0])); w.grad = torch.zeros(2)
>>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
>>> opt.step()
>>> rule = make_rule("proximal")
>>> rule.post(Batch(L1(1.0), [w.data], [w.grad], ["w"], [w], opt, opt.param_groups[0]))
>>> w.data   # threshold lr * s / (1 - momentum) = 1.0
tensor([ 0., -1.])
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from ._validation import check_choice
from .functional import stochastic_round

if TYPE_CHECKING:  # pragma: no cover
    from .penalties import Penalty

__all__ = [
    "RULES",
    "Batch",
    "Decoupled",
    "Grad",
    "Independent",
    "Loss",
    "Proximal",
    "Rounded",
    "UpdateRule",
    "make_rule",
    "step_metric",
]

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
    def lr(self) -> float:
        """The group's current learning rate, as a float."""
        lr = self.group.get("lr", 0.0)
        return float(lr.item() if isinstance(lr, Tensor) else lr)

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
    proximal operator).
    """

    name: ClassVar[str] = ""
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


class Grad(UpdateRule):
    """Coupled: add the penalty's gradient to ``.grad`` before the step (= loss mode)."""

    name = "grad"

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
    writes_weights = True

    def rate(self, b: Batch) -> float:
        return b.lr

    def pre(self, b: Batch) -> None:
        b.penalty.decay_(b.params, self.rate(b), step=b.step, names=b.names, strength=b.strength)


class Independent(Decoupled):
    """lr-independent decay: ``rate = lr / initial_lr`` (the schedule's shape only)."""

    name = "independent"

    def rate(self, b: Batch) -> float:
        return b.lr / b.lr0 if b.lr0 else 0.0


class Proximal(UpdateRule):
    """After the step, ``w <- prox_{lr * c * P}(w)`` in the optimizer's metric ``d``
    (:func:`step_metric`): elementwise penalties threshold at ``lr * c * s / d``, group
    lasso takes the exact prox in that metric, constraints project (Euclidean)."""

    name = "proximal"
    writes_weights = True
    needs_prox = True

    def post(self, b: Batch) -> None:
        factor, metric = step_metric(b.optimizer, b.group, b.originals)
        b.penalty.prox_(
            b.params,
            b.lr * factor,
            step=b.step,
            names=b.names,
            strength=b.strength,
            metric=metric,
        )


class Loss(UpdateRule):
    """``reg()`` is in the loss: the hooks only advance strength schedules."""

    name = "loss"
    applies_penalty = False

    def check(self, penalty: Penalty) -> None:
        pass


class Rounded(UpdateRule):
    """Runs ``inner`` on float32 copies of float16/bfloat16 weights and writes them back
    by ``rounding``: ``"stochastic"`` (unbiased, no memory), ``"compensated"`` (a float32
    residual per weight, exact and deterministic; kept in ``residuals`` by ``id``) or
    ``"nearest"`` (what torch.optim does). Other dtypes pass through."""

    def __init__(self, inner: UpdateRule, rounding: str = "stochastic") -> None:
        self.inner = inner
        self.rounding = check_choice("rounding", rounding, ROUNDINGS)
        self.residuals: dict[int, Tensor] = {}

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def applies_penalty(self) -> bool:  # type: ignore[override]
        return self.inner.applies_penalty

    def check(self, penalty: Penalty) -> None:
        self.inner.check(penalty)

    def pre(self, b: Batch) -> None:
        self._run(b, self.inner.pre)

    def post(self, b: Batch) -> None:
        self._run(b, self.inner.post)

    def _run(self, b: Batch, fn) -> None:
        low = [i for i, p in enumerate(b.params) if p.dtype in _LOW]
        if self.rounding == "nearest" or not low:
            fn(b)
            return
        keys = b.keys
        wide = list(b.params)
        for i in low:
            w = b.params[i].float()
            res = self.residuals.get(keys[i]) if self.rounding == "compensated" else None
            wide[i] = w.add_(res) if res is not None else w
        fn(b.replace(params=wide))
        for i in low:
            p, w = b.params[i], wide[i]
            if self.rounding == "stochastic":
                p.copy_(stochastic_round(w, p.dtype))
            else:
                p.copy_(w)
                self.residuals[keys[i]] = w - p.float()

    def __repr__(self) -> str:
        return f"Rounded({self.inner!r}, {self.rounding!r})"


def make_rule(
    mode: str | UpdateRule, *, rounding: str = "stochastic", **options: Any
) -> UpdateRule:
    """The rule for ``mode`` (a registered name or a rule), wrapped in :class:`Rounded`
    when it writes weights. ``options`` go to the rule's :meth:`~UpdateRule.from_options`.

    >>> make_rule("decoupled", rounding="compensated")
    Rounded(Decoupled(), 'compensated')
    """
    check_choice("rounding", rounding, ROUNDINGS)
    if isinstance(mode, UpdateRule):
        rule = mode
    else:
        check_choice("mode", mode, list(RULES))
        rule = RULES[mode].from_options(**options)
    if rule.writes_weights and not isinstance(rule, Rounded):
        rule = Rounded(rule, rounding)
    return rule


# --------------------------------------------------------------------------- metrics
_WARNED: set[type] = set()


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _states(opt: torch.optim.Optimizer, params: list[Tensor]) -> list[dict[str, Any] | None]:
    return [opt.state.get(p) or None for p in params]


def _num(x: Any) -> float:
    return float(x.item() if isinstance(x, Tensor) else x)


def _per_param(params, states, fn) -> list[Tensor]:
    """``fn(state)`` for each parameter with optimizer state (else ones: parameter space)."""
    out = []
    for p, st in zip(params, states, strict=True):
        d = fn(st) if st is not None and not p.is_complex() else None
        out.append(torch.ones((), dtype=p.dtype, device=_local(p).device) if d is None else d)
    return out


def _adam(group, params, states):
    b2, eps = group["betas"][1], group["eps"]

    def d(st):
        v = st["max_exp_avg_sq"] if group.get("amsgrad") else st["exp_avg_sq"]
        return _local(v).sqrt() / math.sqrt(1 - b2 ** _num(st["step"])) + eps

    return 1.0, _per_param(params, states, d)


def _adamax(group, params, states):
    return 1.0, _per_param(params, states, lambda st: _local(st["exp_inf"]).clone())


def _nadam(group, params, states):
    b1, b2 = group["betas"]
    eps, decay = group["eps"], group["momentum_decay"]
    st = next((s for s in states if s is not None), None)
    factor = 1.0
    if st is not None:
        step, prod = _num(st["step"]), _num(st["mu_product"])
        mu = b1 * (1.0 - 0.5 * 0.96 ** (step * decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * decay))
        factor = (1 - mu) / (1 - prod) + mu_next / (1 - prod * mu_next)

    def d(st):
        return (_local(st["exp_avg_sq"]) / (1 - b2 ** _num(st["step"]))).sqrt() + eps

    return factor, _per_param(params, states, d)


def _radam(group, params, states):
    b2, eps = group["betas"][1], group["eps"]
    st = next((s for s in states if s is not None), None)
    if st is None:
        return 1.0, None
    step = _num(st["step"])
    bc2 = 1 - b2**step
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * step * b2**step / bc2
    if rho_t <= 5.0:  # un-adapted SGD-like step on the bias-corrected momentum
        return 1.0, None
    rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    return rect, _per_param(
        params, states, lambda s: (_local(s["exp_avg_sq"]).sqrt() + eps) / math.sqrt(bc2)
    )


def _rmsprop(group, params, states):
    eps, mom = group["eps"], group.get("momentum", 0.0)

    def d(st):
        sq = _local(st["square_avg"])
        if group.get("centered"):
            ga = _local(st["grad_avg"])
            return (sq - ga * ga).sqrt() + eps
        return sq.sqrt() + eps

    return (1.0 / (1.0 - mom) if mom else 1.0), _per_param(params, states, d)


def _adagrad(group, params, states):
    eps, decay = group["eps"], group.get("lr_decay", 0.0)
    st = next((s for s in states if s is not None), None)
    step = _num(st["step"]) if st is not None else 1.0
    return 1.0 / (1.0 + (step - 1) * decay), _per_param(
        params, states, lambda s: _local(s["sum"]).sqrt() + eps
    )


def _sgd(group, params, states):
    mom, damp = group.get("momentum", 0.0), group.get("dampening", 0.0)
    return ((1.0 - damp) / (1.0 - mom) if mom else 1.0), None


_METRICS = [
    (torch.optim.SGD, _sgd),
    (torch.optim.NAdam, _nadam),
    (torch.optim.RAdam, _radam),
    (torch.optim.Adamax, _adamax),
    (torch.optim.AdamW, _adam),
    (torch.optim.Adam, _adam),
    (torch.optim.RMSprop, _rmsprop),
    (torch.optim.Adagrad, _adagrad),
]
#: Optimizers whose proximal step follows their metric (the Lasso/ElasticNet guarantee).
SUPPORTED = tuple(cls for cls, _ in _METRICS)


def step_metric(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], params: list[Tensor]
) -> tuple[float, list[Tensor] | None]:
    """``(c, d)`` such that the optimizer's steady-state step is ``lr * c * g / d``:

    * SGD (momentum ``m``, dampening ``q``, Nesterov or not): ``c = (1-q)/(1-m)``, no ``d``;
    * Adam / AdamW (amsgrad: the max): ``d = sqrt(v) / sqrt(1 - b2**t) + eps``;
    * Adamax: ``d = u`` (its infinity norm, eps inside); NAdam: Adam's ``d`` and ``c`` its
      momentum-schedule factor ``(1-mu_t)/(1-prod) + mu_{t+1}/(1-prod*mu_{t+1})``;
    * RAdam: ``d = (sqrt(v) + eps) / sqrt(1 - b2**t)``, ``c`` = its rectification (no ``d``
      while ``rho_t <= 5``); RMSprop: ``d = sqrt(v [- mean**2]) + eps``,
      ``c = 1/(1-momentum)``; Adagrad: ``d = sqrt(sum) + eps``, ``c = 1/(1+(t-1)*lr_decay)``.

    ``d`` is one tensor per parameter (or ``None``: parameter space). Any other optimizer
    warns once and gets ``(1.0, None)``: the threshold is then nominal.
    """
    for cls, fn in _METRICS:
        if isinstance(optimizer, cls):
            return fn(group, params, _states(optimizer, params))
    if type(optimizer) not in _WARNED:
        _WARNED.add(type(optimizer))
        warnings.warn(
            f"proximal steps with {type(optimizer).__name__} threshold in parameter space "
            "(lr * strength): its metric is unknown, so the strength is nominal and the "
            "fixed points are not the penalized problem's solutions; supported: "
            + ", ".join(c.__name__ for c in SUPPORTED),
            stacklevel=3,
        )
    return 1.0, None
