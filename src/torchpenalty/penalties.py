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

import inspect
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
from .functional import accumulation_dtype
from .schedules import Schedule, evaluate, schedule_from_config

__all__ = [
    "L1",
    "L2",
    "L2SP",
    "BerHu",
    "Constraint",
    "ElasticNet",
    "GroupLasso",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "Orthogonal",
    "Penalty",
    "Sum",
    "UnitNorm",
    "from_keras_l1",
    "from_keras_l2",
    "from_sklearn_elasticnet",
    "from_sklearn_lasso",
    "from_sklearn_ridge",
    "get",
    "lookup",
    "names",
    "resolve",
    "to_sklearn_elasticnet",
    "to_sklearn_lasso",
    "to_sklearn_ridge",
]

StrengthLike = float | Callable[[int], float]
Metric = Sequence[Tensor] | None

_REGISTRY: dict[str, type[Penalty]] = {}  # name or alias -> class, filled by subclassing
_LOW = (torch.float16, torch.bfloat16)


def _check_strength_like(value: Any) -> StrengthLike:
    if callable(value) and not isinstance(value, Tensor):
        return value
    return check_strength("strength", value)


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def _register(cls: type[Penalty]) -> None:
    """Register ``cls.name`` and ``cls.aliases``; a name already taken by another class
    is an error (re-defining the same class, e.g. on reload, replaces it)."""
    keys = [_key(cls.name), *(_key(a) for a in cls.aliases)]
    for k in keys:
        old = _REGISTRY.get(k)
        same = old is not None and (old.__module__, old.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if old is not None and not same:
            raise ValueError(
                f"name must be unique among penalties: {k!r} of {cls.__module__}."
                f"{cls.__qualname__} is already taken by {old.__module__}.{old.__qualname__}"
            )
    for k in keys:
        _REGISTRY[k] = cls


def _overrides(cls: type, attr: str) -> bool:
    return getattr(cls, attr) is not getattr(Penalty, attr)


class Penalty:
    """Base class of every penalty: one class per penalty, everything else reads it.

    A subclass sets ``name`` (and optional ``aliases``), takes ``strength`` first and its
    options as keyword arguments stored under the same attribute names (they are its
    config keys), and implements :meth:`term`, the unscaled penalty of one tensor. Then
    ``value = strength * sum(term(w))`` (accumulated in float32 for float16/bfloat16
    weights), the gradient comes from autograd, and the penalty works in every mode but
    ``"proximal"``, in configs, in :func:`get` and in the sweep. Optional methods:
    :meth:`term_grad` (a closed-form gradient) and :meth:`term_prox` (a proximal
    operator; then ``mode="proximal"`` works). Built-in penalties also override the
    batched ``_value`` / ``_grad_`` / ``_prox_`` with foreach kernels.

    Class attributes the rest of the package reads (no code branches on a name):

    * ``needs_full_tensors``: works on whole tensors only (sharding check, see
      :meth:`shard_ok`);
    * ``stackable``: the sweep can train it on stacked models (its batched methods
      accept a 1-D strength, one value per model along dim 0; the default ones do);
    * ``sweep_mode``: the sweep's default mode for it;
    * ``has_prox``: has a proximal operator (computed from the methods if not set);
    * ``is_constraint``: a projection with no value or gradient (see :class:`Constraint`).

    >>> import torch
    >>> class Cubic(Penalty):
    ...     name = "doc_cubic"
    ...     def term(self, w):
    ...         return w.abs().pow(3).sum()
    >>> p = get("doc_cubic", 0.5)
    >>> p([torch.tensor([1.0, -2.0])])   # 0.5 * (1 + 8)
    tensor(4.5000)
    >>> g = [torch.zeros(2)]; p.grad_(g, [torch.tensor([1.0, -2.0])]); g   # 0.5 * 3 w|w|
    [tensor([ 1.5000, -6.0000])]
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    needs_full_tensors: ClassVar[bool] = False
    stackable: ClassVar[bool] = True
    sweep_mode: ClassVar[str] = "grad"
    has_prox: ClassVar[bool] = False
    is_constraint: ClassVar[bool] = False
    #: constructor arguments not stored in configs (L2SP's ``reference``)
    config_exclude: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "has_prox" not in cls.__dict__:
            cls.has_prox = _overrides(cls, "_prox_") or _overrides(cls, "term_prox")
        if cls.__dict__.get("name"):
            _register(cls)

    def __init__(self, strength: StrengthLike) -> None:
        self.strength = _check_strength_like(strength)

    # ----------------------------------------------------------------- strength
    def strength_at(self, step: int = 0) -> float:
        """The strength at optimizer step ``step`` (schedules are called, floats returned)."""
        return evaluate(self.strength, step)

    def _s(self, step: int, strength: float | Tensor | None) -> float | Tensor:
        return self.strength_at(step) if strength is None else strength

    # ----------------------------------------------------------------- extension points
    def term(self, w: Tensor) -> Tensor:
        """The unscaled penalty of one tensor (a 0-d tensor with autograd); float16 and
        bfloat16 weights arrive as float32."""
        raise NotImplementedError(f"{type(self).__name__} must implement term(w)")

    def term_grad(self, w: Tensor) -> Tensor:
        """The gradient of :meth:`term` at ``w`` (default: autograd)."""
        with torch.enable_grad():
            x = w.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.term(x), x)
        return g

    def term_prox(self, w: Tensor, t: float | Tensor) -> Tensor:
        """The proximal point of ``t * term`` at ``w`` (``t`` a float or a tensor
        broadcastable to ``w``: per-coordinate thresholds). Optional."""
        raise NotImplementedError(f"{type(self).__name__} has no proximal operator")

    def shard_ok(self, dim: int, ndim: int) -> bool:
        """Whether a tensor of ``ndim`` dims sharded along ``dim`` can be penalized shard by
        shard (the FSDP2 check)."""
        return not self.needs_full_tensors

    def sharding_error(self, name: str, dim: int) -> str:
        """The message when parameter ``name`` is sharded along ``dim`` and
        :meth:`shard_ok` refuses it."""
        what = getattr(self, "whole_what", "whole tensors")
        hint = self._sharding_hint(dim)
        return (
            f"{type(self).__name__} needs {what}, but parameter {name!r} is sharded along dim "
            f"{dim} (FSDP2/DTensor): {hint + ', or ' if hint else ''}keep this parameter out "
            f"of the sharded module, got {self!r}"
        )

    def _sharding_hint(self, dim: int) -> str:
        return ""

    # ----------------------------------------------------------------- public math
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
        """The penalty of ``params`` (0-d tensor with autograd) at ``step`` (or at the
        given ``strength``)."""
        return self._value(list(params), self._s(step, strength), names)

    @torch.no_grad()
    def grad_(
        self,
        grads: Sequence[Tensor],
        params: Sequence[Tensor],
        *,
        step: int = 0,
        names: Sequence[str] | None = None,
        strength: float | Tensor | None = None,
    ) -> None:
        """Add the penalty's gradient to ``grads`` in place. ``strength`` may be a 1-D
        tensor: then each tensor stacks one model per strength along dim 0."""
        s = self._s(step, strength)
        if _active(s) and params:
            self._grad_(list(grads), list(params), s, names)

    @torch.no_grad()
    def decay_(
        self,
        params: Sequence[Tensor],
        lr: float,
        *,
        step: int = 0,
        names: Sequence[str] | None = None,
        strength: float | Tensor | None = None,
    ) -> None:
        """Decoupled step ``w <- w - lr * grad P(w)`` (AdamW-style for L2)."""
        s = self._s(step, strength)
        if _active(s) and lr and params:
            self._decay_(list(params), lr, s, names)

    @torch.no_grad()
    def prox_(
        self,
        params: Sequence[Tensor],
        lr: float,
        *,
        step: int = 0,
        names: Sequence[str] | None = None,
        strength: float | Tensor | None = None,
        metric: Metric = None,
    ) -> None:
        """Proximal step ``w <- prox_{lr * P}(w)`` (threshold ``lr * strength``). With
        ``metric`` (one tensor ``d`` per parameter, the diagonal of a preconditioned
        step ``lr * g / d``) the prox is taken in that metric: elementwise penalties
        threshold at ``lr * strength / d``."""
        if not self.has_prox:
            raise ValueError(
                f"mode must be one of 'grad', 'decoupled', 'independent' for "
                f"{type(self).__name__}, which has no proximal operator, got 'proximal'"
            )
        s = self._s(step, strength)
        if _active(s) and lr and params:
            self._prox_(list(params), s * lr, names, metric)

    # ----------------------------------------------------------------- batched defaults
    def _value(self, params: list[Tensor], s, names) -> Tensor:
        acc = accumulation_dtype(params)
        total = torch.zeros((), dtype=acc, device=params[0].device if params else None)
        for p in params:
            w = p.float() if p.dtype in _LOW else p
            total = total + self.term(w).to(device=total.device, dtype=acc)
        return total * s

    def _grad_(self, grads: list[Tensor], params: list[Tensor], s, names) -> None:
        for g, p in zip(grads, params, strict=True):
            w = p.float() if p.dtype in _LOW else p
            if isinstance(s, Tensor):  # stacked models: one strength per slice of dim 0
                for m in range(p.shape[0]):
                    g[m].add_((self.term_grad(w[m]) * s[m].to(w.dtype)).to(g.dtype))
            else:
                g.add_((self.term_grad(w) * s).to(g.dtype))

    def _decay_(self, params: list[Tensor], lr: float, s, names) -> None:
        tmp = [torch.zeros_like(p) for p in params]
        self._grad_(tmp, params, s, names)
        torch._foreach_add_(params, tmp, alpha=-lr)

    def _prox_(self, params: list[Tensor], t, names, metric: Metric = None) -> None:
        ts = F.thresholds(params, t, metric) if metric is not None else None
        for i, p in enumerate(params):
            if ts is not None:
                p.copy_(self.term_prox(p, ts[i]))
            elif isinstance(t, Tensor):
                for m in range(p.shape[0]):
                    p[m].copy_(self.term_prox(p[m], t[m].to(p.real.dtype)))
            else:
                p.copy_(self.term_prox(p, t))

    # ----------------------------------------------------------------- composition
    def __add__(self, other: Penalty) -> Penalty:
        if not isinstance(other, Penalty):
            return NotImplemented
        return Sum(self, other)

    # ----------------------------------------------------------------- config
    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The constructor's arguments stored in configs (all but ``strength`` and
        ``config_exclude``), read from its signature."""
        sig = inspect.signature(cls.__init__)
        return tuple(
            k
            for k, v in sig.parameters.items()
            if k not in ("self", "strength", *cls.config_exclude)
            and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
        )

    @classmethod
    def _has_strength(cls) -> bool:
        return "strength" in inspect.signature(cls.__init__).parameters

    def get_config(self) -> dict[str, Any]:
        """A JSON-able dict; ``type(p).from_config(p.get_config())`` rebuilds ``p``."""
        cfg: dict[str, Any] = {"name": self.name}
        if self._has_strength():
            if isinstance(self.strength, Schedule):
                cfg["strength"] = self.strength.get_config()
            elif callable(self.strength):
                raise TypeError(
                    "strength must be a number or a torchpenalty.schedules.Schedule to be "
                    f"saved in a config, got {self.strength!r}"
                )
            else:
                cfg["strength"] = self.strength
        return cfg | {k: getattr(self, k) for k in self.config_keys()}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **kwargs: Any) -> Penalty:
        """Rebuild from :meth:`get_config` (extra keyword arguments such as L2SP's
        ``reference`` are passed through)."""
        strength = ("strength",) if cls._has_strength() else ()
        check_config("cfg", cfg, ("name", *strength, *cls.config_keys()), strength)
        cfg = dict(cfg)
        name = cfg.pop("name", cls.name)
        if name != cls.name:
            raise ValueError(f"cfg['name'] must be {cls.name!r} for {cls.__name__}, got {name!r}")
        if isinstance(cfg.get("strength"), dict):
            cfg["strength"] = schedule_from_config(cfg["strength"])
        return cls(**cfg, **kwargs)

    def __repr__(self) -> str:
        args = [f"strength={self.strength!r}"] if self._has_strength() else []
        args += [f"{k}={getattr(self, k)!r}" for k in self.config_keys()]
        return f"{type(self).__name__}({', '.join(args)})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and repr(other) == repr(self)

    def __hash__(self) -> int:
        return hash(repr(self))


def _active(s: float | Tensor) -> bool:
    return isinstance(s, Tensor) or s != 0


class Sum(Penalty):
    """Penalties added: ``L2(1e-4) + MaxNorm(3.0)``. Values and gradients add; proximal
    steps apply in turn (in the order written), so one Regularizer can decay and
    constrain the same weights. Each part keeps its own strength (and schedule).

    >>> import torch
    >>> pen = L2(1.0) + L1(1.0)
    >>> pen([torch.tensor([3.0, -4.0])])   # 12.5 + 7
    tensor(19.5000)
    """

    name = "sum"

    def __init__(self, *parts: Penalty) -> None:
        flat: list[Penalty] = []
        for p in parts:
            if not isinstance(p, Penalty):
                raise type_error("parts", "penalties", p)
            flat.extend(p.parts if isinstance(p, Sum) else [p])
        self.parts = tuple(flat)
        self.strength = 1.0

    @property
    def has_prox(self) -> bool:  # type: ignore[override]
        return all(p.has_prox for p in self.parts)

    @property
    def needs_full_tensors(self) -> bool:  # type: ignore[override]
        return any(p.needs_full_tensors for p in self.parts)

    @property
    def is_constraint(self) -> bool:  # type: ignore[override]
        return all(p.is_constraint for p in self.parts)

    @property
    def has_constraint(self) -> bool:
        return any(p.is_constraint for p in self.parts)

    def shard_ok(self, dim: int, ndim: int) -> bool:
        return all(p.shard_ok(dim, ndim) for p in self.parts)

    def value(self, params, *, step=0, names=None, strength=None) -> Tensor:
        vals = [p.value(params, step=step, names=names) for p in self.parts]
        return torch.stack([v.to(vals[0].device) for v in vals]).sum()

    def grad_(self, grads, params, *, step=0, names=None, strength=None) -> None:
        for p in self.parts:
            p.grad_(grads, params, step=step, names=names)

    def decay_(self, params, lr, *, step=0, names=None, strength=None) -> None:
        for p in self.parts:
            p.decay_(params, lr, step=step, names=names)

    def prox_(self, params, lr, *, step=0, names=None, strength=None, metric=None) -> None:
        for p in self.parts:
            p.prox_(params, lr, step=step, names=names, metric=metric)

    def get_config(self) -> dict[str, Any]:
        return {"name": "sum", "parts": [p.get_config() for p in self.parts]}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **kwargs: Any) -> Penalty:
        check_config("cfg", cfg, ("name", "parts"), ("parts",))
        return cls(*(get(c, **kwargs) for c in cfg["parts"]))

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sum) and other.parts == self.parts

    def __hash__(self) -> int:
        return hash(self.parts)


Sum.stackable = False  # type: ignore[misc]


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
    aliases = ("ridge", "weight_decay")

    def term(self, w):
        return 0.5 * w.abs().square().sum()

    def _value(self, params, s, names):
        return F.l2(params, s)

    def _grad_(self, grads, params, s, names):
        F.l2_grad_(grads, params, s)

    def _decay_(self, params, lr, s, names):
        if isinstance(s, Tensor):
            super()._decay_(params, lr, s, names)
        else:  # the exact operation torch.optim.AdamW performs
            torch._foreach_mul_(params, 1.0 - lr * s)

    def _prox_(self, params, t, names, metric=None):
        F.l2_prox_(params, t if metric is None else F.thresholds(params, t, metric))


class L1(Penalty):
    """Lasso: ``strength * sum |w|``, subgradient ``strength * sgn(w)``.

    Use ``attach(opt, mode="proximal")`` to get exact zeros (soft-thresholding at
    ``lr * strength`` after each step); the plain subgradient only oscillates around 0.

    >>> import torch
    >>> L1(0.5)([torch.tensor([3.0, -4.0])])   # 0.5 * 7
    tensor(3.5000)
    """

    name = "l1"
    aliases = ("lasso",)
    sweep_mode = "proximal"

    def term(self, w):
        return w.abs().sum()

    def _value(self, params, s, names):
        return F.l1(params, s)

    def _grad_(self, grads, params, s, names):
        F.l1_grad_(grads, params, s)

    def _prox_(self, params, t, names, metric=None):
        F.l1_prox_(params, t if metric is None else F.thresholds(params, t, metric))


class ElasticNet(Penalty):
    """``strength * (l1_ratio * sum |w| + (1 - l1_ratio)/2 * sum |w|**2)`` (scikit-learn /
    glmnet parametrization; ``l1_ratio=1`` is L1, ``0`` is L2).

    >>> import torch
    >>> ElasticNet(1.0, l1_ratio=0.5)([torch.tensor([3.0, -4.0])])  # 0.5*7 + 0.25*25
    tensor(9.7500)
    """

    name = "elastic_net"
    aliases = ("elasticnet", "enet")
    sweep_mode = "proximal"

    def __init__(self, strength: StrengthLike, l1_ratio: float = 0.5) -> None:
        super().__init__(strength)
        self.l1_ratio = check_unit_interval("l1_ratio", l1_ratio)

    def _value(self, params, s, names):
        return F.elastic_net(params, s, self.l1_ratio)

    def _grad_(self, grads, params, s, names):
        F.elastic_net_grad_(grads, params, s, self.l1_ratio)

    def term(self, w):
        a = w.abs()
        return self.l1_ratio * a.sum() + (1 - self.l1_ratio) / 2 * a.square().sum()

    def _prox_(self, params, t, names, metric=None):
        tt = t if metric is None else F.thresholds(params, t, metric)
        F.elastic_net_prox_(params, tt, self.l1_ratio)


class GroupLasso(Penalty):
    """Structured sparsity: ``strength * sum_g ||w_g||_2`` with one group per slice along
    ``dim`` (``dim=0``: a Linear's output unit or a Conv's filter). With
    ``mode="proximal"`` whole groups become exact zeros.

    >>> import torch
    >>> GroupLasso(1.0)([torch.tensor([[3.0, 4.0], [0.0, 1.0]])])  # 5 + 1
    tensor(6.)
    """

    name = "group_lasso"
    aliases = ("grouplasso",)
    sweep_mode = "proximal"
    needs_full_tensors = True

    def __init__(self, strength: StrengthLike, dim: int = 0) -> None:
        super().__init__(strength)
        self.dim = check_int("dim", dim)

    def _value(self, params, s, names):
        return F.group_lasso(params, s, self.dim)

    def _grad_(self, grads, params, s, names):
        F.group_lasso_grad_(grads, params, s, self.dim)

    def term(self, w):
        return F.group_lasso([w], 1.0, self.dim)

    @property
    def whole_what(self) -> str:
        return f"whole slices along dim {self.dim}"

    def _sharding_hint(self, dim: int) -> str:
        return f"use GroupLasso(dim={dim})"

    def shard_ok(self, dim: int, ndim: int) -> bool:
        """Groups are slices along ``self.dim``: sharding along that dim keeps them whole."""
        return dim == self.dim % max(ndim, 1)

    def _prox_(self, params, t, names, metric=None):
        """Euclidean group shrinkage; with a ``metric`` (a preconditioned step), the exact
        prox in that metric (:func:`~torchpenalty.functional.group_lasso_prox_metric_`),
        whose fixed points satisfy the group lasso's KKT conditions."""
        if metric is None:
            F.group_lasso_prox_(params, t, self.dim)
        else:
            F.group_lasso_prox_metric_(params, t, metric, self.dim)


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
    aliases = ("l2_sp",)
    stackable = False
    needs_full_tensors = True
    whole_what = "whole tensors (its reference tensors are not sharded)"
    config_exclude = ("reference",)

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

    def _prox_(self, params, t, names, metric=None):
        tt = t if metric is None else F.thresholds(params, t, metric)
        F.l2sp_prox_(params, self.refs(params, names), tt)

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
    aliases = ("orth",)
    stackable = False
    needs_full_tensors = True
    whole_what = "whole matrices"

    def _value(self, params, s, names):
        return F.orthogonal(params, s)

    def _grad_(self, grads, params, s, names):
        F.orthogonal_grad_(grads, params, s)


class BerHu(Penalty):
    """Reverse Huber ("BerHu", Owen 2007) penalty: ``strength * sum(berhu(w))`` with,
    elementwise, ``berhu(x) = |x|`` for ``|x| <= delta`` and ``(|x|**2 + delta**2) /
    (2 * delta)`` otherwise: the lasso near zero (exact zeros), ridge in the tails (large
    weights shrink in proportion, correlated ones are kept together, as with elastic net).
    Gradient ``strength * sign(w)`` for ``|w| <= delta``, else ``strength * w / delta``
    (``0`` at ``w = 0``); proximal step
    (threshold ``t``): ``0`` where ``|w| <= t``, ``w - t * sign(w)`` where
    ``|w| <= delta + t``, else ``w * delta / (delta + t)``. Complex weights use ``|w|``.

    >>> import torch
    >>> w = torch.tensor([0.5, -3.0])
    >>> BerHu(2.0, delta=1.0)([w])   # 2 * (0.5 + (3**2 + 1) / 2)
    tensor(11.)
    >>> g = [torch.zeros(2)]; BerHu(2.0).grad_(g, [w]); g   # 2 * [sign(0.5), -3 / 1]
    [tensor([ 2., -6.])]
    >>> BerHu(1.0, delta=0)
    Traceback (most recent call last):
    ...
    ValueError: delta must be a finite number > 0, got 0
    """

    name = "berhu"
    aliases = ("reverse_huber",)
    sweep_mode = "proximal"

    def __init__(self, strength: StrengthLike, *, delta: float = 1.0) -> None:
        super().__init__(strength)
        self.delta = check_positive("delta", delta)

    def term(self, w: Tensor) -> Tensor:
        a, d = w.abs(), self.delta
        return torch.where(a <= d, a, (a * a + d * d) / (2 * d)).sum()

    def term_grad(self, w: Tensor) -> Tensor:  # w / min(|w|, delta), 0 at w = 0
        a = w.abs()
        return w / a.clamp(max=self.delta).clamp_min(torch.finfo(a.dtype).tiny)

    def term_prox(self, w: Tensor, t: float | Tensor) -> Tensor:
        x = w.float() if w.dtype in _LOW else w
        a, d = x.abs(), self.delta
        shrink = (1 - t / a.clamp_min(torch.finfo(a.dtype).tiny)).clamp_min(0)
        return x * torch.where(a <= d + t, shrink, d / (d + t))


def names(*, sweepable: bool = False) -> list[str]:
    """Registered penalty names (without aliases) in registration order; ``sweepable=True``:
    only those :func:`torchpenalty.sweep` can train (``stackable``, not constraints).

    >>> [n for n in names(sweepable=True) if n in ("l1", "l2", "l2sp", "orthogonal")]
    ['l2', 'l1']
    """
    out: dict[str, None] = {}
    for cls in _REGISTRY.values():
        if sweepable and not (cls.stackable is True and cls.is_constraint is not True):
            continue
        out[cls.name] = None
    return list(out)


def lookup(name: str) -> type[Penalty]:
    """The penalty class registered under ``name`` or one of its aliases (case and
    ``-``/``_`` ignored), or ``"package.module:ClassName"`` (the module is imported by
    name: that is how user-defined penalties reach the command line)."""
    if not isinstance(name, str):
        raise type_error("name", "a penalty name, a config dict or a Penalty", name)
    if ":" in name:
        return _import_class(name)
    cls = _REGISTRY.get(_key(name))
    if cls is None:
        check_choice("name", name, sorted(_REGISTRY))
    return cls  # type: ignore[return-value]


def _import_class(spec: str) -> type[Penalty]:
    import importlib

    module, _, qual = spec.partition(":")
    if not module or not qual or not all(x.isidentifier() for x in (*module.split("."), qual)):
        raise ValueError(f"name must look like 'package.module:ClassName', got {spec!r}")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"name must name an importable module, got {spec!r} ({e})") from None
    cls = getattr(mod, qual, None)
    if not (isinstance(cls, type) and issubclass(cls, Penalty)):
        raise type_error("name", "a 'module:Class' naming a tp.Penalty subclass", spec)
    return cls


def get(
    name: str | Mapping[str, Any] | Penalty, strength: StrengthLike | None = None, **kwargs: Any
) -> Penalty:
    """A penalty by name or alias (``"l2"``/``"ridge"``/``"weight_decay"``,
    ``"l1"``/``"lasso"``, ``"elastic_net"``, ``"group_lasso"``, ``"l2sp"``,
    ``"orthogonal"``, any registered subclass, or ``"module:Class"``), by config dict,
    or a penalty passed through.

    >>> get("ridge", 1e-4)
    L2(strength=0.0001)
    >>> get({"name": "elastic_net", "strength": 0.1, "l1_ratio": 0.3})
    ElasticNet(strength=0.1, l1_ratio=0.3)
    """
    if isinstance(name, Penalty):
        return name
    if isinstance(name, Mapping):
        cls = _REGISTRY.get(_key(str(name.get("name", ""))))
        if cls is None:
            raise ValueError(f"cfg['name'] must be one of {names()}, got {name.get('name')!r}")
        return cls.from_config(name, **kwargs)
    cls = lookup(name)
    if not cls._has_strength():
        return cls(**kwargs)
    if strength is None:
        raise TypeError(f"strength must be given with a penalty name, got {strength!r}")
    return cls(strength, **kwargs)


def resolve(spec: str | Penalty | type, strength: StrengthLike | None = None) -> Penalty:
    """What the command line's ``--penalty`` gives: a penalty from a registered name or
    alias, ``"package.module:ClassName"``, a Penalty subclass, or a Penalty (passed
    through; ``strength`` then ignored). Raises ``ValueError`` / ``TypeError`` naming
    the argument.

    >>> resolve("lasso", 1.0)
    L1(strength=1.0)
    >>> resolve("torchpenalty.penalties:L2", 0.5)
    L2(strength=0.5)
    """
    if isinstance(spec, Penalty):
        return spec
    if isinstance(spec, type):
        if not issubclass(spec, Penalty):
            raise type_error("penalty", "a tp.Penalty subclass", spec)
        cls = spec
    elif isinstance(spec, str):
        cls = lookup(spec)
    else:
        raise type_error("penalty", "a penalty name, 'module:Class' or a Penalty", spec)
    if not cls._has_strength():
        return cls()
    return cls(1.0 if strength is None else strength)


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


# --------------------------------------------------------------------------- constraints
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
