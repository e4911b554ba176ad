"""The penalty base class, its registry (filled by subclassing) and the name look-ups.

A penalty is one class; everything else reads it (see :class:`Penalty`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import functional as F
from .._validation import (
    check_choice,
    check_config,
    check_strength,
    type_error,
)
from ..functional import accumulation_dtype
from ..schedules import Schedule, evaluate, schedule_from_config

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
    * ``is_constraint``: a projection with no value or gradient (see :class:`Constraint`);
    * ``gaussian_prior``: exactly ``strength/2 * sum w**2`` (a zero-mean Gaussian prior:
      what the evidence, :mod:`torchpenalty.evidence`, can tune).

    And one method: :meth:`shrink_rate` (the rate of the multiplicative shrink the penalty
    applies, read by :mod:`torchpenalty.timescale`).

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
    gaussian_prior: ClassVar[bool] = False
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

    def shrink_rate(self, step: int = 0) -> float | None:
        """The rate ``r`` of the shrink ``w <- w - lr * r * w`` that decoupled decay with this
        penalty applies at ``step``, or ``None`` when its decay is not a multiplicative
        shrink (L1, group lasso, orthogonality: no timescale)."""
        return None

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
            (g,) = torch.autograd.grad(self._term(x), x)
        return g

    def _term(self, w: Tensor) -> Tensor:
        """:meth:`term`, its result checked (:func:`check_term`: on the class's first use,
        and for a gradient whenever ``w`` requires one)."""
        out = self.term(w)
        cls = type(self)
        if cls not in _TERMS_CHECKED and not torch.compiler.is_compiling():
            check_term(cls.__name__, out, w)
            _TERMS_CHECKED.add(cls)
        elif (
            w.requires_grad and torch.is_grad_enabled() and not getattr(out, "requires_grad", True)
        ):
            check_term(cls.__name__, out, w)
        return out

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
        given ``strength``). Tensors without elements add nothing."""
        params, names = _nonempty(params, names)
        if not params:
            return torch.zeros(())
        return self._value(params, self._s(step, strength), names)

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
        (params, grads), names = _nonempty(params, names, grads)
        if _active(s) and params:
            self._grad_(grads, params, s, names)

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
        params, names = _nonempty(params, names)
        if _active(s) and _active(lr) and params:
            self._decay_(params, lr, s, names)

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
        (params, metric), names = _nonempty(params, names, metric)
        if _active(s) and _active(lr) and params:
            self._prox_(params, s * lr, names, metric)

    # ----------------------------------------------------------------- batched defaults
    def _value(self, params: list[Tensor], s, names) -> Tensor:
        acc = accumulation_dtype(params)
        total = torch.zeros((), dtype=acc, device=params[0].device if params else None)
        for p in params:
            w = p.float() if p.dtype in _LOW else p
            total = total + self._term(w).to(device=total.device, dtype=acc)
        return total * s

    def _grad_(self, grads: list[Tensor], params: list[Tensor], s, names) -> None:
        for g, p in zip(grads, params, strict=True):
            w = p.float() if p.dtype in _LOW else p
            if isinstance(s, Tensor) and s.ndim == 1:  # stacked: one strength per model
                for m in range(p.shape[0]):
                    g[m].add_((self.term_grad(w[m]) * s[m].to(w.dtype)).to(g.dtype))
            else:
                g.add_((self.term_grad(w) * s).to(g.dtype))

    def _decay_(self, params: list[Tensor], lr: float, s, names) -> None:
        tmp = [torch.zeros_like(p) for p in params]
        self._grad_(tmp, params, s, names)
        if isinstance(lr, Tensor):  # a live lr (compiled or captured step)
            for p, d in zip(params, tmp, strict=True):
                p.sub_(d * lr.to(p.device))
        else:
            torch._foreach_add_(params, tmp, alpha=-lr)

    def _prox_(self, params: list[Tensor], t, names, metric: Metric = None) -> None:
        ts = F.thresholds(params, t, metric) if metric is not None else None
        for i, p in enumerate(params):
            if ts is not None:
                p.copy_(self.term_prox(p, ts[i]))
            elif isinstance(t, Tensor) and t.ndim == 1:  # stacked models
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


#: Penalty classes whose ``term`` passed :func:`check_term` once.
_TERMS_CHECKED: set[type] = set()


def check_term(name: str, out: Any, w: Tensor) -> None:
    """What a user's ``term(w)`` must return: a real floating 0-d tensor, finite for finite
    ``w``, and computed from ``w`` with autograd when ``w`` requires a gradient (loss mode,
    and the default ``term_grad``). ``TypeError``/``ValueError`` naming the class otherwise:
    a detached, integer, complex or vector result regularized nothing, or the wrong thing;
    a NaN one poisoned the weights.

    >>> check_term("Bad", torch.ones(3), torch.ones(3))
    Traceback (most recent call last):
    ...
    ValueError: Bad.term(w) must return a 0-d tensor (the sum over w), got shape (3,)
    """
    head = f"{name}.term(w) must return"
    if not isinstance(out, Tensor):
        raise TypeError(f"{head} a 0-d tensor computed from w, got {type(out).__name__}")
    if out.ndim != 0:
        raise ValueError(f"{head} a 0-d tensor (the sum over w), got shape {tuple(out.shape)}")
    if not out.is_floating_point():
        raise TypeError(f"{head} a real floating tensor, got dtype {out.dtype}")
    if w.requires_grad and torch.is_grad_enabled() and not out.requires_grad:
        raise ValueError(f"{head} a tensor computed from w with autograd, got one without a "
                         "gradient (detached, or built from numbers)")  # fmt: skip
    if bool(torch.isfinite(w).all()) and not bool(torch.isfinite(out.detach())):
        raise ValueError(f"{head} a finite value for finite weights, got {out.item()}")


def _nonempty(params: Sequence[Tensor], names: Sequence[str] | None, *others: Any) -> tuple:
    """``params`` without tensors of no elements (nothing to penalize), with ``names`` and
    each sequence of ``others`` (per-parameter lists, or None) filtered alike."""
    params = list(params)
    keep = [i for i, p in enumerate(params) if p.numel() > 0]
    if len(keep) == len(params):
        kept = [params, *(None if o is None else list(o) for o in others)]
    else:
        kept = [
            [params[i] for i in keep],
            *(None if o is None else [o[i] for i in keep] for o in others),
        ]
        names = None if names is None else [names[i] for i in keep]
    return (kept[0] if not others else tuple(kept)), names


def _active(s: float | Tensor) -> bool:
    return isinstance(s, Tensor) or s != 0


class Sum(Penalty):
    """Penalties added: ``L2(1e-4) + MaxNorm(3.0)``. Values and gradients add; proximal
    steps apply in turn (in the order written), so one Regularizer can decay and
    constrain the same weights. Each part keeps its own strength (and schedule).

    >>> import torch, torchpenalty as tp
    >>> pen = tp.L2(1.0) + tp.L1(1.0)
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

    def shrink_rate(self, step: int = 0) -> float | None:
        rates = [r for r in (p.shrink_rate(step) for p in self.parts) if r is not None]
        return sum(rates) if rates else None

    def __hash__(self) -> int:
        return hash(self.parts)


Sum.stackable = False  # type: ignore[misc]


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
