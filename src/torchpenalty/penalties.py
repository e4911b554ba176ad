"""Penalty classes: validation, config and schedules on top of :mod:`torchpenalty.functional`.

Every penalty is called on a list of tensors and returns a 0-d tensor accumulated in
float32 (float64 if a tensor is wider) on the tensors' device. ``strength`` is a finite
number >= 0 or a schedule (a callable of the optimizer step, see
:mod:`torchpenalty.schedules`).

Strength conventions and conversions from other libraries:

* ``torch.optim.SGD(weight_decay=wd)`` adds ``wd * w`` to the gradient: ``L2(wd)``.
* Keras ``L2(l2)`` is ``l2 * sum w**2``: ``L2(from_keras_l2(l2))`` = ``L2(2 * l2)``.
  Keras ``L1(l1)`` is ``l1 * sum |w|``: ``L1(l1)``.
* scikit-learn ``Ridge(alpha)`` minimizes ``||y - Xw||**2 + alpha * ||w||**2``: on a
  mean-squared loss use ``L2(from_sklearn_ridge(alpha, n))`` = ``L2(2 * alpha / n)``.
* scikit-learn ``Lasso(alpha)`` minimizes ``||y - Xw||**2 / (2n) + alpha * |w|_1``: on a
  mean-squared loss use ``L1(from_sklearn_lasso(alpha))`` = ``L1(2 * alpha)``.
* scikit-learn ``ElasticNet(alpha, l1_ratio=r)`` scales its data term the same way:
  ``ElasticNet(from_sklearn_elasticnet(alpha), l1_ratio=r)`` = ``ElasticNet(2 * alpha, r)``.

>>> import torch, torchpenalty as tp
>>> w = [torch.tensor([[1.0, -2.0], [0.0, 2.0]])]
>>> tp.L2(0.1)(w)          # 0.1/2 * 9
tensor(0.4500)
>>> tp.get("lasso", 0.1)(w)  # 0.1 * 5
tensor(0.5000)
>>> tp.L2.from_config(tp.L2(0.1).get_config())
L2(strength=0.1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import functional as F
from ._validation import (
    check_choice,
    check_config,
    check_int,
    check_positive,
    check_strength,
    check_unit_interval,
    type_error,
)
from .schedules import Schedule, evaluate, schedule_from_config

__all__ = [
    "L1",
    "L2",
    "L2SP",
    "ElasticNet",
    "GroupLasso",
    "Orthogonal",
    "Penalty",
    "from_keras_l1",
    "from_keras_l2",
    "from_sklearn_elasticnet",
    "from_sklearn_lasso",
    "from_sklearn_ridge",
    "get",
    "to_sklearn_elasticnet",
    "to_sklearn_lasso",
    "to_sklearn_ridge",
]

StrengthLike = float | Callable[[int], float]


def _check_strength_like(value: Any) -> StrengthLike:
    if callable(value) and not isinstance(value, Tensor):
        return value
    return check_strength("strength", value)


class Penalty:
    """Base class. Subclasses implement ``_value``, ``_grad_`` and optionally ``_prox_``
    with the strength already evaluated, and list their extra config keys in ``_keys``."""

    name: ClassVar[str] = ""
    _keys: ClassVar[tuple[str, ...]] = ()
    has_prox: ClassVar[bool] = True
    #: True when the penalty needs whole tensors (rows or matrices), not shards.
    needs_full_tensors: ClassVar[bool] = False

    def __init__(self, strength: StrengthLike) -> None:
        self.strength = _check_strength_like(strength)

    # ----------------------------------------------------------------- strength
    def strength_at(self, step: int = 0) -> float:
        """The strength at optimizer step ``step`` (schedules are called, floats returned)."""
        return evaluate(self.strength, step)

    # ----------------------------------------------------------------- math
    def __call__(
        self, params: Sequence[Tensor], *, step: int = 0, names: Sequence[str] | None = None
    ) -> Tensor:
        return self.value(params, step=step, names=names)

    def value(
        self,
        params: Sequence[Tensor],
        *,
        step: int = 0,
        names: Sequence[str] | None = None,
        strength: float | Tensor | None = None,
    ) -> Tensor:
        """The penalty of ``params`` (0-d tensor with autograd) at ``step``."""
        s = self.strength_at(step) if strength is None else strength
        return self._value(list(params), s, names)

    def grad_(
        self,
        grads: Sequence[Tensor],
        params: Sequence[Tensor],
        *,
        step: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        """Add the penalty's gradient to ``grads`` in place."""
        s = self.strength_at(step)
        if s and params:
            self._grad_(list(grads), list(params), s, names)

    @torch.no_grad()
    def decay_(
        self,
        params: Sequence[Tensor],
        lr: float,
        *,
        step: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        """Decoupled step ``w <- w - lr * grad P(w)`` (AdamW-style for L2)."""
        s = self.strength_at(step)
        if s and lr and params:
            self._decay_(list(params), lr, s, names)

    def _decay_(self, params: list[Tensor], lr: float, s: float, names) -> None:
        tmp = [torch.zeros_like(p) for p in params]
        self._grad_(tmp, params, s, names)
        torch._foreach_add_(params, tmp, alpha=-lr)

    @torch.no_grad()
    def prox_(
        self,
        params: Sequence[Tensor],
        lr: float,
        *,
        step: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        """Proximal step ``w <- prox_{lr * P}(w)`` (threshold ``lr * strength``)."""
        if not self.has_prox:
            raise ValueError(
                f"mode must be one of 'grad', 'decoupled', 'independent' for "
                f"{type(self).__name__}, which has no proximal operator, got 'proximal'"
            )
        s = self.strength_at(step)
        if s and lr and params:
            self._prox_(list(params), lr * s, names)

    def _value(self, params, s, names) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _grad_(self, grads, params, s, names) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prox_(self, params, t, names) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict[str, Any]:
        """A JSON-able dict; ``type(p).from_config(p.get_config())`` rebuilds ``p``."""
        if isinstance(self.strength, Schedule):
            strength: Any = self.strength.get_config()
        elif callable(self.strength):
            raise TypeError(
                "strength must be a number or a torchpenalty.schedules.Schedule to be "
                f"saved in a config, got {self.strength!r}"
            )
        else:
            strength = self.strength
        return {
            "name": self.name,
            "strength": strength,
            **{k: getattr(self, k) for k in self._keys},
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **kwargs: Any) -> Penalty:
        """Rebuild from :meth:`get_config` (extra keyword arguments such as L2SP's
        ``reference`` are passed through)."""
        check_config("cfg", cfg, ("name", "strength", *cls._keys), ("strength",))
        cfg = dict(cfg)
        name = cfg.pop("name", cls.name)
        if name != cls.name:
            raise ValueError(f"cfg['name'] must be {cls.name!r} for {cls.__name__}, got {name!r}")
        if isinstance(cfg["strength"], dict):
            cfg["strength"] = schedule_from_config(cfg["strength"])
        return cls(**cfg, **kwargs)

    def __repr__(self) -> str:
        args = [f"strength={self.strength!r}"] + [f"{k}={getattr(self, k)!r}" for k in self._keys]
        return f"{type(self).__name__}({', '.join(args)})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and repr(other) == repr(self)

    def __hash__(self) -> int:
        return hash(repr(self))


class L2(Penalty):
    """Ridge / weight decay: ``strength/2 * sum |w|**2``, gradient ``strength * w``.

    ``L2(s)`` with SGD equals ``torch.optim.SGD(weight_decay=s)``; with
    ``attach(opt, mode="decoupled")`` on Adam it equals ``torch.optim.AdamW(weight_decay=s)``.
    Keras ``L2(l2)`` is ``L2(2 * l2)``.

    >>> import torch
    >>> L2(0.5)([torch.tensor([3.0, 4.0])])   # 0.5/2 * 25
    tensor(6.2500)
    """

    name = "l2"

    def _value(self, params, s, names):
        return F.l2(params, s)

    def _grad_(self, grads, params, s, names):
        F.l2_grad_(grads, params, s)

    def _decay_(self, params, lr, s, names):
        # The exact operation torch.optim.AdamW performs.
        torch._foreach_mul_(params, 1.0 - lr * s)

    def _prox_(self, params, t, names):
        F.l2_prox_(params, t)


class L1(Penalty):
    """Lasso: ``strength * sum |w|``, subgradient ``strength * sgn(w)``.

    Use ``attach(opt, mode="proximal")`` to get exact zeros (soft-thresholding at
    ``lr * strength`` after each step); the plain subgradient only oscillates around 0.

    >>> import torch
    >>> L1(0.5)([torch.tensor([3.0, -4.0])])   # 0.5 * 7
    tensor(3.5000)
    """

    name = "l1"

    def _value(self, params, s, names):
        return F.l1(params, s)

    def _grad_(self, grads, params, s, names):
        F.l1_grad_(grads, params, s)

    def _prox_(self, params, t, names):
        F.l1_prox_(params, t)


class ElasticNet(Penalty):
    """``strength * (l1_ratio * sum |w| + (1 - l1_ratio)/2 * sum |w|**2)`` (scikit-learn /
    glmnet parametrization; ``l1_ratio=1`` is L1, ``0`` is L2).

    >>> import torch
    >>> ElasticNet(1.0, l1_ratio=0.5)([torch.tensor([3.0, -4.0])])  # 0.5*7 + 0.25*25
    tensor(9.7500)
    """

    name = "elastic_net"
    _keys = ("l1_ratio",)

    def __init__(self, strength: StrengthLike, l1_ratio: float = 0.5) -> None:
        super().__init__(strength)
        self.l1_ratio = check_unit_interval("l1_ratio", l1_ratio)

    def _value(self, params, s, names):
        return F.elastic_net(params, s, self.l1_ratio)

    def _grad_(self, grads, params, s, names):
        F.elastic_net_grad_(grads, params, s, self.l1_ratio)

    def _prox_(self, params, t, names):
        F.elastic_net_prox_(params, t, self.l1_ratio)


class GroupLasso(Penalty):
    """Structured sparsity: ``strength * sum_g ||w_g||_2`` with one group per slice along
    ``dim`` (``dim=0``: a Linear's output unit or a Conv's filter). With
    ``mode="proximal"`` whole groups become exact zeros.

    >>> import torch
    >>> GroupLasso(1.0)([torch.tensor([[3.0, 4.0], [0.0, 1.0]])])  # 5 + 1
    tensor(6.)
    """

    name = "group_lasso"
    _keys = ("dim",)
    needs_full_tensors = True

    def __init__(self, strength: StrengthLike, dim: int = 0) -> None:
        super().__init__(strength)
        self.dim = check_int("dim", dim)

    def _value(self, params, s, names):
        return F.group_lasso(params, s, self.dim)

    def _grad_(self, grads, params, s, names):
        F.group_lasso_grad_(grads, params, s, self.dim)

    def _prox_(self, params, t, names):
        F.group_lasso_prox_(params, t, self.dim)


def _visible(name: str) -> str:
    from .select import visible_name

    return visible_name(name)


class L2SP(Penalty):
    """Fine-tuning prior: ``strength/2 * sum |w - w0|**2``, pulling each weight toward its
    pretrained value ``w0`` (Li et al., 2018). ``reference`` is a model or a state dict;
    tensors are matched by parameter name and copied at construction.

    >>> import torch
    >>> from torch import nn
    >>> pre = nn.Linear(2, 1); net = nn.Linear(2, 1)
    >>> pen = L2SP(0.1, reference=pre)
    >>> float(pen([pre.weight.detach()], names=["weight"]))
    0.0
    """

    name = "l2sp"

    def __init__(
        self, strength: StrengthLike, reference: nn.Module | Mapping[str, Tensor] | None = None
    ) -> None:
        super().__init__(strength)
        if isinstance(reference, nn.Module):
            items = reference.named_parameters()
        elif isinstance(reference, Mapping):
            items = reference.items()
        else:
            raise type_error("reference", "an nn.Module or a state dict", reference)
        self.reference: dict[str, Tensor] = {}
        for k, v in items:
            if not isinstance(v, Tensor):
                raise type_error(f"reference[{k!r}]", "a tensor", v)
            self.reference[_visible(k)] = v.detach().clone()
        self._cache: dict[tuple, Tensor] = {}

    def refs(self, params: Sequence[Tensor], names: Sequence[str] | None) -> list[Tensor]:
        """Reference tensors for ``params`` (by ``names``), on their device and dtype."""
        if names is None:
            raise ValueError("names must be given for L2SP (reference tensors are matched by name)")
        out = []
        for n, p in zip(names, params, strict=True):
            key = (n, p.device, p.dtype, tuple(p.shape))
            ref = self._cache.get(key)
            if ref is None:
                if n not in self.reference:
                    raise ValueError(f"reference must hold a tensor for parameter {n!r}, got none")
                r = self.reference[n]
                if tuple(r.shape) != tuple(p.shape):
                    raise ValueError(
                        f"reference[{n!r}] must have shape {tuple(p.shape)}, got {tuple(r.shape)}"
                    )
                ref = self._cache[key] = r.to(device=p.device, dtype=p.dtype)
            out.append(ref)
        return out

    def _value(self, params, s, names):
        return F.l2sp(params, self.refs(params, names), s)

    def _grad_(self, grads, params, s, names):
        F.l2sp_grad_(grads, params, self.refs(params, names), s)

    def _decay_(self, params, lr, s, names):
        torch._foreach_lerp_(params, self.refs(params, names), lr * s)

    def _prox_(self, params, t, names):
        F.l2sp_prox_(params, self.refs(params, names), t)

    def __repr__(self) -> str:
        return f"L2SP(strength={self.strength!r}, reference=<{len(self.reference)} tensors>)"

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)


class Orthogonal(Penalty):
    """Soft orthogonality: ``strength * ||M M^H - I||_F**2`` with ``M`` each weight
    flattened to ``(out, -1)`` (transposed when taller than wide). Has no proximal step.

    >>> import torch
    >>> Orthogonal(1.0)([torch.eye(3)])
    tensor(0.)
    >>> float(Orthogonal(1.0)([2 * torch.eye(2)]))   # ||4I - I||^2 = 2 * 9
    18.0
    """

    name = "orthogonal"
    has_prox = False
    needs_full_tensors = True

    def _value(self, params, s, names):
        return F.orthogonal(params, s)

    def _grad_(self, grads, params, s, names):
        F.orthogonal_grad_(grads, params, s)


_CLASSES: dict[str, type[Penalty]] = {
    c.name: c for c in (L2, L1, ElasticNet, GroupLasso, L2SP, Orthogonal)
}
_ALIASES = {
    "l2": "l2",
    "ridge": "l2",
    "weight_decay": "l2",
    "l1": "l1",
    "lasso": "l1",
    "elastic_net": "elastic_net",
    "elasticnet": "elastic_net",
    "enet": "elastic_net",
    "group_lasso": "group_lasso",
    "grouplasso": "group_lasso",
    "l2sp": "l2sp",
    "l2_sp": "l2sp",
    "orthogonal": "orthogonal",
    "orth": "orthogonal",
}


def get(
    name: str | Mapping[str, Any] | Penalty, strength: StrengthLike | None = None, **kwargs: Any
) -> Penalty:
    """A penalty by name (``"l2"``/``"ridge"``/``"weight_decay"``, ``"l1"``/``"lasso"``,
    ``"elastic_net"``, ``"group_lasso"``, ``"l2sp"``, ``"orthogonal"``), by config dict,
    or a penalty passed through.

    >>> get("ridge", 1e-4)
    L2(strength=0.0001)
    >>> get({"name": "elastic_net", "strength": 0.1, "l1_ratio": 0.3})
    ElasticNet(strength=0.1, l1_ratio=0.3)
    """
    if isinstance(name, Penalty):
        return name
    if isinstance(name, Mapping):
        key = _ALIASES.get(str(name.get("name", "")).lower())
        if key is None:
            raise ValueError(
                f"cfg['name'] must be one of {sorted(_CLASSES)}, got {name.get('name')!r}"
            )
        return _CLASSES[key].from_config(name, **kwargs)
    if not isinstance(name, str):
        raise type_error("name", "a penalty name, a config dict or a Penalty", name)
    key = _ALIASES.get(name.lower().replace("-", "_"))
    if key is None:
        check_choice("name", name, sorted(_ALIASES))
    if strength is None:
        raise TypeError(f"strength must be given with a penalty name, got {strength!r}")
    return _CLASSES[key](strength, **kwargs)


# --------------------------------------------------------------------------- conversions
def from_keras_l2(l2: float) -> float:
    """Keras ``L2(l2)`` is ``l2 * sum w**2``; the same penalty is ``L2(2 * l2)``.

    >>> from_keras_l2(0.01)
    0.02
    """
    return 2.0 * check_strength("l2", l2)


def from_keras_l1(l1: float) -> float:
    """Keras ``L1(l1)`` is ``l1 * sum |w|`` = ``L1(l1)``."""
    return check_strength("l1", l1)


def from_sklearn_ridge(alpha: float, n_samples: int) -> float:
    """``Ridge(alpha)`` minimizes ``||y - Xw||**2 + alpha ||w||**2``; on a mean-squared loss
    the same minimizer comes from ``L2(2 * alpha / n_samples)``.

    >>> from_sklearn_ridge(1.0, 100)
    0.02
    """
    return 2.0 * check_strength("alpha", alpha) / check_positive("n_samples", n_samples)


def to_sklearn_ridge(strength: float, n_samples: int) -> float:
    """Inverse of :func:`from_sklearn_ridge`: ``alpha = strength * n_samples / 2``."""
    return check_strength("strength", strength) * check_positive("n_samples", n_samples) / 2.0


def from_sklearn_lasso(alpha: float) -> float:
    """``Lasso(alpha)`` minimizes ``||y - Xw||**2 / (2n) + alpha |w|_1``; on a mean-squared
    loss the same minimizer comes from ``L1(2 * alpha)``."""
    return 2.0 * check_strength("alpha", alpha)


def to_sklearn_lasso(strength: float) -> float:
    """Inverse of :func:`from_sklearn_lasso`: ``alpha = strength / 2``."""
    return check_strength("strength", strength) / 2.0


def from_sklearn_elasticnet(alpha: float) -> float:
    """``ElasticNet(alpha, l1_ratio=r)`` on a mean-squared loss is
    ``ElasticNet(2 * alpha, l1_ratio=r)`` here (same ``l1_ratio``)."""
    return 2.0 * check_strength("alpha", alpha)


def to_sklearn_elasticnet(strength: float) -> float:
    """Inverse of :func:`from_sklearn_elasticnet`: ``alpha = strength / 2``."""
    return check_strength("strength", strength) / 2.0
