"""The one rule that decides which parameters are regularized, and ``explain()``.

Default rule: a parameter is regularized when it is trainable (``requires_grad``),
floating point (or complex), and a *weight*: ``ndim >= 2``, not owned by a normalization
module (BatchNorm, LayerNorm, GroupNorm, RMSNorm, InstanceNorm, LocalResponseNorm, or any
class whose name ends in ``Norm``/``Norm1d``/``Norm2d``/``Norm3d``), not named ``*.bias``,
and not listed by a ``no_weight_decay()`` method of the model or a submodule (timm's
convention: names or fnmatch patterns relative to that module). Tied parameters count once
(by tensor identity, under their first name). Parametrized weights are matched by the
name users see (``layer.weight``, not ``layer.parametrizations.weight.original``).

``include=`` replaces the default rule (``include="*"`` takes every trainable floating
parameter); ``exclude=`` always removes. Both take an fnmatch pattern on the parameter
name, a module class (matches parameters owned by an instance), a predicate
``(name, param, module) -> bool``, or a list of those. A pattern or class that matches no
parameter of the model raises ``ValueError``.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
>>> [name for name, _ in select(net)]
['0.weight', '2.weight']
>>> print(explain(net))
name      shape   regularized  reason
0.weight  (8, 4)  yes          weight (ndim >= 2)
0.bias    (8,)    no           bias
1.weight  (8,)    no           normalization module (LayerNorm)
1.bias    (8,)    no           normalization module (LayerNorm)
2.weight  (1, 8)  yes          weight (ndim >= 2)
2.bias    (1,)    no           bias
"""

from __future__ import annotations

import fnmatch
import re
import sys as _sys
import types as _types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from torch import nn
from torch.nn.parameter import UninitializedParameter

from ._validation import type_error

__all__ = ["ExplainRow", "Explanation", "Matcher", "explain", "matches", "select", "visible_name"]

Predicate = Callable[[str, nn.Parameter, nn.Module], bool]
Matcher = str | type | Predicate | Iterable[Any]

_NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = (*_NORM_TYPES, nn.RMSNorm)
_NORM_NAME = re.compile(r"Norm([123]d)?$")
_PARAMETRIZED = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original(\d*)$")


def visible_name(name: str) -> str:
    """The name users see for a parameter: a parametrization's ``original`` maps to the
    parametrized attribute; a parametrization with several originals (``weight_norm``'s
    magnitude and direction) keeps them apart as ``attr.original0``, ``attr.original1``.

    >>> visible_name("fc.parametrizations.weight.original")
    'fc.weight'
    >>> visible_name("fc.parametrizations.weight.original1")
    'fc.weight.original1'
    """
    m = _PARAMETRIZED.search(name)
    if m is None:
        return name
    head = name[: m.start()] + m.group(1) + m.group(2)
    return head + (f".original{m.group(3)}" if m.group(3) else "")


def _owner_path(raw_name: str) -> str:
    """Path of the module that owns a parameter (the parametrized module for an original)."""
    m = _PARAMETRIZED.search(raw_name)
    return raw_name[: m.start()] if m else raw_name.rpartition(".")[0]


def is_norm_module(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


class _Entry(NamedTuple):
    name: str
    param: nn.Parameter
    module: nn.Module
    tied_to: str | None


def _entries(model: nn.Module) -> list[_Entry]:
    """Every parameter of ``model`` under its visible name, with its owning module; tied
    aliases are kept with ``tied_to`` set to the first name."""
    if not isinstance(model, nn.Module):
        raise type_error("model", "a torch.nn.Module", model)
    modules = dict(model.named_modules(remove_duplicate=False))
    seen: dict[int, str] = {}
    out = []
    for mname, mod in modules.items():
        for pname, p in mod.named_parameters(prefix=mname, recurse=False):
            name = visible_name(pname)
            owner = modules.get(_owner_path(pname), model)
            first = seen.setdefault(id(p), name)
            out.append(_Entry(name, p, owner, None if first == name else first))
    return out


def _as_list(matcher: Matcher | None) -> list[Any]:
    if matcher is None:
        return []
    if isinstance(matcher, (str, type)) or callable(matcher):
        return [matcher]
    if isinstance(matcher, Iterable):
        return list(matcher)
    raise type_error("include/exclude", "a pattern, a module class, a predicate or a list", matcher)


def matches(m: Any, name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """Whether one matcher (pattern, module class or predicate) takes this parameter."""
    if isinstance(m, str):
        return fnmatch.fnmatchcase(name, m)
    if isinstance(m, type):
        return isinstance(module, m)
    if callable(m):
        return bool(m(name, param, module))
    raise type_error("include/exclude", "a pattern, a module class or a predicate", m)


def check_matchers(arg: str, matchers: list[Any], entries: list[_Entry]) -> None:
    """Raise if a pattern or class in ``matchers`` matches no parameter of the model."""
    for m in matchers:
        if isinstance(m, (str, type)):
            if not any(matches(m, e.name, e.param, e.module) for e in entries):
                shown = m if isinstance(m, str) else m.__name__
                example = ", ".join(repr(e.name) for e in entries[:3]) or "none"
                raise ValueError(
                    f"{arg} must match at least one parameter of the model, got {shown!r} "
                    f"(parameter names look like {example})"
                )
        elif not callable(m):
            raise type_error(arg, "a pattern, a module class, a predicate or a list", m)


def _describe(m: Any) -> str:
    if isinstance(m, str):
        return repr(m)
    if isinstance(m, type):
        return m.__name__
    return getattr(m, "__name__", repr(m))


def _no_weight_decay(model: nn.Module) -> list[str]:
    patterns = []
    for mname, mod in model.named_modules():
        fn = getattr(mod, "no_weight_decay", None)
        if callable(fn):
            for n in fn():
                patterns.append(f"{mname}.{n}" if mname else str(n))
    return patterns


class ExplainRow(NamedTuple):
    """One parameter: its name, shape, whether it is regularized, and why."""

    name: str
    shape: tuple[int, ...]
    regularized: bool
    reason: str


class Explanation(list):
    """A list of :class:`ExplainRow` that prints as an aligned table."""

    def __str__(self) -> str:
        header = ("name", "shape", "regularized", "reason")
        rows = [(r.name, str(r.shape), "yes" if r.regularized else "no", r.reason) for r in self]
        widths = [max(len(x[i]) for x in [header, *rows]) for i in range(4)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip()
            for x in [header, *rows]
        ]
        return "\n".join(lines)


def _decide(
    e: _Entry, include: list[Any], exclude: list[Any], no_wd: list[str]
) -> tuple[bool, str]:
    p = e.param
    if isinstance(p, UninitializedParameter):
        return False, "uninitialized (lazy module): run one forward pass first"
    if e.tied_to is not None:
        return False, f"tied to {e.tied_to!r} (counted once)"
    if not p.requires_grad:
        return False, "frozen (requires_grad=False)"
    if not (p.is_floating_point() or p.is_complex()):
        return False, f"not floating point ({p.dtype})"
    for m in exclude:
        if matches(m, e.name, p, e.module):
            return False, f"excluded by exclude={_describe(m)}"
    if include:
        for m in include:
            if matches(m, e.name, p, e.module):
                return True, f"included by include={_describe(m)}"
        return False, "not matched by include="
    if any(fnmatch.fnmatchcase(e.name, pat) for pat in no_wd):
        return False, "listed by no_weight_decay()"
    if is_norm_module(e.module):
        return False, f"normalization module ({type(e.module).__name__})"
    if e.name == "bias" or e.name.endswith(".bias"):
        return False, "bias"
    if p.ndim < 2:
        return False, f"ndim {p.ndim} < 2 (bias or scale)"
    return True, "weight (ndim >= 2)"


def _rule(
    model: nn.Module, include: Matcher | None, exclude: Matcher | None
) -> Iterator[tuple[_Entry, bool, str]]:
    entries = _entries(model)
    inc, exc = _as_list(include), _as_list(exclude)
    check_matchers("include", inc, entries)
    check_matchers("exclude", exc, entries)
    no_wd = _no_weight_decay(model)
    for e in entries:
        yield (e, *_decide(e, inc, exc, no_wd))


def explain(
    model: nn.Module, *, include: Matcher | None = None, exclude: Matcher | None = None
) -> Explanation:
    """Every parameter of ``model`` (tied aliases included) with whether the rule
    regularizes it and why. ``print()`` it for a table.

    >>> from torch import nn
    >>> rows = explain(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    >>> [(r.name, r.regularized, r.reason) for r in rows][:3]
    [('0.weight', True, 'weight (ndim >= 2)'), ('0.bias', False, 'bias'), ('1.weight', False, 'normalization module (BatchNorm1d)')]
    """
    return Explanation(
        ExplainRow(e.name, tuple(e.param.shape), ok, why)
        for e, ok, why in _rule(model, include, exclude)
    )


def select_entries(
    model: nn.Module, *, include: Matcher | None = None, exclude: Matcher | None = None
) -> list[tuple[str, nn.Parameter, nn.Module]]:
    """Like :func:`select`, with each parameter's owning module."""
    out = []
    for e, ok, _ in _rule(model, include, exclude):
        if isinstance(e.param, UninitializedParameter):
            raise ValueError(
                f"model must have initialized parameters, got uninitialized {e.name!r} "
                "(a lazy module): run one forward pass before selecting parameters"
            )
        if ok:
            out.append((e.name, e.param, e.module))
    return out


def select(
    model: nn.Module, *, include: Matcher | None = None, exclude: Matcher | None = None
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs the rule regularizes, in model order, each once.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> [n for n, _ in select(net)], [n for n, _ in select(net, include="*", exclude="2.*")]
    (['0.weight', '2.weight'], ['0.weight', '0.bias'])
    """
    return [(n, p) for n, p, _ in select_entries(model, include=include, exclude=exclude)]


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every trainable floating parameter, each once (tied aliases dropped)."""
    return [
        (e.name, e.param)
        for e in _entries(model)
        if e.tied_to is None
        and not isinstance(e.param, UninitializedParameter)
        and e.param.requires_grad
        and (e.param.is_floating_point() or e.param.is_complex())
    ]


class _CallableModule(_types.ModuleType):
    """``torchpenalty.select`` is both this module and the function ``tp.select``; with
    lazy imports Python may bind either to the name, so calling the module selects."""

    def __call__(self, model: nn.Module, **kwargs: Any) -> list[tuple[str, nn.Parameter]]:
        return select(model, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
