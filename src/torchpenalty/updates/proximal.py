"""The proximal rule and the optimizer metrics it follows (:func:`step_metric`)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._capture import tracing

if TYPE_CHECKING:  # pragma: no cover
    pass

from .base import Batch, UpdateRule


class Proximal(UpdateRule):
    """After the step, ``w <- prox_{lr * c * P}(w)`` in the optimizer's metric ``d``
    (:func:`step_metric`): elementwise penalties threshold at ``lr * c * s / d``, group
    lasso takes the exact prox in that metric, constraints project (Euclidean)."""

    name = "proximal"
    sweepable = True
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


# --------------------------------------------------------------------------- metrics
_WARNED: set[type] = set()


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _states(opt: torch.optim.Optimizer, params: list[Tensor]) -> list[dict[str, Any] | None]:
    return [opt.state.get(p) or None for p in params]


def _num(x: Any) -> float | Tensor:
    """A float, or the tensor itself inside a compiled or captured step (no host read)."""
    if isinstance(x, Tensor):  # float64: 1 - b2**t cancels catastrophically in float32
        return x.to(torch.float64) if tracing() else float(x.item())
    return float(x)


def _sqrt(x: float | Tensor) -> float | Tensor:
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


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
        return _local(v).sqrt() / _sqrt(1 - b2 ** _num(st["step"])) + eps

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
