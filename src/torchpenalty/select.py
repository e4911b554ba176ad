"""The one rule that decides which parameters are regularized, and ``explain()``.

Default rule: a parameter is regularized when it is trainable (``requires_grad``),
floating point (or complex), and a *weight*, that is, none of:

1. listed by a ``no_weight_decay()`` method of the model or a submodule (timm's
   convention: names or fnmatch patterns relative to that module; a submodule's name
   covers its parameters), or containing a
   keyword returned by a ``no_weight_decay_keywords()`` method (the official Swin
   Transformer's convention: substrings of the name relative to that module);
2. marked with a ``_no_weight_decay = True`` attribute (mamba_ssm's convention, used for
   Mamba's ``A_log`` and ``D``);
3. owned by a normalization module (BatchNorm, LayerNorm, GroupNorm, RMSNorm,
   InstanceNorm, LocalResponseNorm, or any class whose name ends in
   ``Norm``/``Norm1d``/``Norm2d``/``Norm3d``);
4. a bias by its name, whatever its shape: its own name is ``bias``, ends in ``bias``,
   ``biases`` or ``bias_table``, or starts with ``bias_`` (``relative_position_bias_table``
   of Swin/BEiT/MaxViT, LeViT's ``attention_biases``, ``nn.MultiheadAttention``'s
   ``bias_k``), or it belongs to a module whose own name says so (T5's
   ``relative_attention_bias`` embedding);
5. of dimension below 2 (biases, scales, layer-scale gammas, ``logit_scale``).

A tensor reachable under several names (tied weights, a tensor shared by two modules)
is decided once, from all its names and owners together, so the answer does not depend
on which registers first: a tensor owned by a normalization module anywhere is a
normalization scale, and ``exclude=`` / ``include=`` act on it through any of its names.
It is listed once, under its first name. Parametrized weights are matched by the name
users see (``layer.weight``, not ``layer.parametrizations.weight.original``); a
parametrization with several originals (``weight_norm``) keeps them apart as
``layer.weight.original0``/``original1`` and a pattern matching ``layer.weight`` matches
both. Parametrizations are recognised with ``torch.nn.utils.parametrize.is_parametrized``,
never from a module path that happens to contain ``parametrizations``.

``include=`` replaces the default rule (``include="*"`` takes every trainable floating
parameter, ``include=[]`` takes none); ``exclude=`` always removes. Both take an fnmatch
pattern on the parameter name, a module class (matches parameters owned by an instance),
a predicate ``(name, param, module) -> bool``, or a list of those. A pattern or class
that matches no parameter of the model raises ``ValueError``; a module instance where a
class is meant raises ``TypeError``.

A lazy module's parameters before its first forward pass are listed by ``explain()``;
those the rule cannot decide without their shape are shown as uninitialized, and
``select()`` raises for them.

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
from torch.nn.utils import parametrize

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
_ORIGINAL = re.compile(r"original(\d*)")
_BIAS_NAME = re.compile(r"(bias|biases|bias_table)$|^bias_", re.IGNORECASE)
_LAZY = "uninitialized (lazy module): run one forward pass first"
_MATCHER_KINDS = "a pattern, a module class, a predicate or a list"


def visible_name(name: str, model: nn.Module | None = None) -> str:
    """The name users see for a parameter: a parametrization's ``original`` maps to the
    parametrized attribute; a parametrization with several originals (``weight_norm``'s
    magnitude and direction) keeps them apart as ``attr.original0``, ``attr.original1``.

    Without ``model`` (a state dict's keys) the name alone decides; with ``model`` the
    module structure does (``parametrize.is_parametrized``), so a user module that is
    merely named ``parametrizations`` keeps its raw name.

    >>> visible_name("fc.parametrizations.weight.original")
    'fc.weight'
    >>> visible_name("fc.parametrizations.weight.original1")
    'fc.weight.original1'
    """
    if model is not None:
        return _raw_names(model).get(name, name)
    m = _PARAMETRIZED.search(name)
    if m is None:
        return name
    head = name[: m.start()] + m.group(1) + m.group(2)
    return head + (f".original{m.group(3)}" if m.group(3) else "")


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (by type, or by a class name ending
    in ``Norm``, ``Norm1d``, ``Norm2d`` or ``Norm3d``)."""
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


class _Entry(NamedTuple):
    name: str  # visible name
    param: nn.Parameter
    module: nn.Module  # owner: the parametrized module for a parametrization's original
    tied_to: str | None  # first visible name of the same tensor, if not this one
    attr: str = ""  # the attribute under which the owner exposes it ("weight")
    path: str = ""  # the owner's path in the model
    raw: str = ""  # the name in model.named_parameters()


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _parametrization_lists(modules: dict[str, nn.Module]) -> dict[str, tuple[str, str, nn.Module]]:
    """Path of every ParametrizationList -> (owner path, attribute, owner module)."""
    out = {}
    for path, mod in modules.items():
        if parametrize.is_parametrized(mod):
            for attr, plist in mod.parametrizations.items():
                if isinstance(plist, parametrize.ParametrizationList):
                    out[_join(path, "parametrizations", attr)] = (path, attr, mod)
    return out


def _entries(model: nn.Module) -> list[_Entry]:
    """Every parameter of ``model`` under its visible name, with its owning module; tied
    aliases are kept with ``tied_to`` set to the first name."""
    if not isinstance(model, nn.Module):
        raise type_error("model", "a torch.nn.Module", model)
    modules = dict(model.named_modules(remove_duplicate=False))
    plists = _parametrization_lists(modules)
    seen: dict[int, str] = {}
    out = []
    for mname, mod in modules.items():
        for local, p in mod.named_parameters(recurse=False, remove_duplicate=False):
            orig = _ORIGINAL.fullmatch(local)
            if mname in plists and orig is not None:
                path, attr, owner = plists[mname]
                name = _join(path, attr, f"original{orig.group(1)}" if orig.group(1) else "")
            else:
                path, attr, owner, name = mname, local, mod, _join(mname, local)
            first = seen.setdefault(id(p), name)
            tied = None if first == name else first
            out.append(_Entry(name, p, owner, tied, attr, path, _join(mname, local)))
    return out


def _raw_names(model: nn.Module) -> dict[str, str]:
    return {e.raw: e.name for e in _entries(model)}


def _original_alias(name: str, module: nn.Module) -> str | None:
    """``layer.weight`` for ``layer.weight.original0`` of a parametrized ``layer``."""
    head, _, last = name.rpartition(".")
    if not head or _ORIGINAL.fullmatch(last) is None:
        return None
    attr = head.rpartition(".")[2]
    if not parametrize.is_parametrized(module, attr):
        return None
    return (
        head if isinstance(module.parametrizations[attr], parametrize.ParametrizationList) else None
    )


def _instance_error(arg: str, m: nn.Module) -> TypeError:
    cls = type(m).__name__
    return TypeError(
        f"{arg} must be {_MATCHER_KINDS}; got an instance of {cls}, not a class: "
        f"pass the class itself ({arg}={cls}) to match the parameters every {cls} owns"
    )


def _as_list(matcher: Matcher | None, arg: str = "include/exclude") -> list[Any]:
    if matcher is None:
        return []
    if isinstance(matcher, nn.Module):
        raise _instance_error(arg, matcher)
    if isinstance(matcher, (str, type)) or callable(matcher):
        return [matcher]
    if isinstance(matcher, Iterable):
        return list(matcher)
    raise type_error(arg, _MATCHER_KINDS, matcher)


def matches(m: Any, name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """Whether one matcher (pattern, module class or predicate) takes this parameter.
    A pattern matches the parameter's name; for one of several originals of a
    parametrization (``layer.weight.original0``) it may match ``layer.weight`` instead.

    >>> from torch import nn
    >>> lin = nn.utils.parametrizations.weight_norm(nn.Linear(2, 2))
    >>> g = lin.parametrizations.weight.original0
    >>> matches("weight", "weight.original0", g, lin), matches(nn.Linear, "weight.original0", g, lin)
    (True, True)
    """
    if isinstance(m, str):
        if fnmatch.fnmatchcase(name, m):
            return True
        alias = _original_alias(name, module)
        return alias is not None and fnmatch.fnmatchcase(alias, m)
    if isinstance(m, type):
        return isinstance(module, m)
    if isinstance(m, nn.Module):
        raise _instance_error("include/exclude", m)
    if callable(m):
        return bool(m(name, param, module))
    raise type_error("include/exclude", "a pattern, a module class or a predicate", m)


def check_matchers(arg: str, matchers: list[Any], entries: list[_Entry]) -> None:
    """Raise if a pattern or class in ``matchers`` matches no parameter of the model, or
    if an item is not a matcher (a module instance included)."""
    for m in matchers:
        if isinstance(m, nn.Module):
            raise _instance_error(arg, m)
        if isinstance(m, (str, type)):
            if not any(matches(m, e.name, e.param, e.module) for e in entries):
                shown = m if isinstance(m, str) else m.__name__
                example = ", ".join(repr(e.name) for e in entries[:3]) or "none"
                raise ValueError(
                    f"{arg} must match at least one parameter of the model, got {shown!r} "
                    f"(parameter names look like {example})"
                )
        elif not callable(m):
            raise type_error(arg, _MATCHER_KINDS, m)


def _describe(m: Any) -> str:
    if isinstance(m, str):
        return repr(m)
    if isinstance(m, type):
        return m.__name__
    return getattr(m, "__name__", repr(m))


def _no_weight_decay(model: nn.Module) -> list[tuple[str, str]]:
    """``(fnmatch pattern, source)`` for every entry of a ``no_weight_decay()`` method
    (names or patterns relative to its module, timm's convention; a submodule's name
    covers its parameters, as timm's Swin V2 lists ``cpb_mlp``) and every keyword of a
    ``no_weight_decay_keywords()`` method (substrings of the names relative to its
    module, the convention of the official Swin Transformer code)."""
    out = []
    for mname, mod in model.named_modules():
        prefix = f"{mname}." if mname else ""
        fn = getattr(mod, "no_weight_decay", None)
        if callable(fn):  # an entry naming a submodule covers its parameters
            for n in fn():
                out += [
                    (prefix + str(n), "no_weight_decay()"),
                    (f"{prefix}{n}.*", "no_weight_decay()"),
                ]
        fn = getattr(mod, "no_weight_decay_keywords", None)
        if callable(fn):
            out += [
                (f"{prefix}*{_glob_escape(str(k))}*", "no_weight_decay_keywords()") for k in fn()
            ]
    return out


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


class ExplainRow(NamedTuple):
    """One parameter: its name, shape (``None`` while a lazy module is uninitialized),
    whether it is regularized, and why."""

    name: str
    shape: tuple[int, ...] | None
    regularized: bool
    reason: str


class Explanation(list):
    """A list of :class:`ExplainRow` that prints as an aligned table."""

    def __str__(self) -> str:
        header = ("name", "shape", "regularized", "reason")
        rows = [
            (r.name, "uninitialized" if r.shape is None else str(r.shape), "yes" if r.regularized else "no", r.reason)
            for r in self
        ]  # fmt: skip
        widths = [max(len(x[i]) for x in [header, *rows]) for i in range(4)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip()
            for x in [header, *rows]
        ]
        return "\n".join(lines)


_UNKNOWN = object()  # a predicate that cannot be asked about an uninitialized parameter


def _first_match(matchers: list[Any], group: list[_Entry]) -> tuple[Any, _Entry | None]:
    """The first matcher taking any name of the tensor, and the alias it took."""
    lazy = isinstance(group[0].param, UninitializedParameter)
    unknown = False
    for m in matchers:
        if lazy and not isinstance(m, (str, type)):
            unknown = True
            continue
        for e in group:
            if matches(m, e.name, e.param, e.module):
                return m, e
    return (_UNKNOWN if unknown else None), None


def _via(e: _Entry | None, group: list[_Entry]) -> str:
    return f" (through its tied name {e.name!r})" if e is not None and e is not group[0] else ""


def _bias_reason(group: list[_Entry]) -> str | None:
    for e in group:
        if e.attr == "bias":
            return "bias"
    for e in group:
        if _BIAS_NAME.search(e.attr):
            return f"bias by its name ({e.attr!r}), whatever its shape"
    for e in group:
        own = e.path.rpartition(".")[2]
        if _BIAS_NAME.search(own):
            return f"bias by its module's name ({own!r}), whatever its shape"
    return None


def _default_rule(group: list[_Entry], no_wd: list[tuple[str, str]]) -> tuple[bool, str]:
    p = group[0].param
    for e in group:
        for pattern, source in no_wd:
            if fnmatch.fnmatchcase(e.name, pattern):
                return False, f"listed by {source}" + _via(e, group)
    if getattr(p, "_no_weight_decay", False) is True:
        return False, "marked _no_weight_decay=True (mamba_ssm convention)"
    for e in group:
        if is_norm_module(e.module):
            return False, f"normalization module ({type(e.module).__name__})" + _via(e, group)
    bias = _bias_reason(group)
    if bias is not None:
        return False, bias
    if isinstance(p, UninitializedParameter):
        return False, _LAZY
    if p.ndim < 2:
        return False, f"ndim {p.ndim} < 2 (bias or scale)"
    return True, "weight (ndim >= 2)"


def _decide(
    group: list[_Entry],
    include: list[Any] | None,
    exclude: list[Any],
    no_wd: list[tuple[str, str]],
) -> tuple[bool, str]:
    """The decision for one tensor, from all its names (``group[0]`` is the first)."""
    p = group[0].param
    lazy = isinstance(p, UninitializedParameter)
    if not p.requires_grad:
        return False, "frozen (requires_grad=False)"
    if not lazy and not (p.is_floating_point() or p.is_complex()):
        return False, f"not floating point ({p.dtype})"
    m, e = _first_match(exclude, group)
    if m is _UNKNOWN:
        return False, _LAZY
    if m is not None:
        return False, f"excluded by exclude={_describe(m)}" + _via(e, group)
    if include is None:
        return _default_rule(group, no_wd)
    m, e = _first_match(include, group)
    if lazy and m is not None:
        return False, _LAZY
    if m is not None:
        return True, f"included by include={_describe(m)}" + _via(e, group)
    return False, "not matched by include=" + ("" if include else " (include=[] selects nothing)")


def _rule(
    model: nn.Module, include: Matcher | None, exclude: Matcher | None
) -> Iterator[tuple[_Entry, bool, str]]:
    entries = _entries(model)
    inc = None if include is None else _as_list(include, "include")
    exc = _as_list(exclude, "exclude")
    check_matchers("include", inc or [], entries)
    check_matchers("exclude", exc, entries)
    no_wd = _no_weight_decay(model)
    groups: dict[int, list[_Entry]] = {}
    for e in entries:
        groups.setdefault(id(e.param), []).append(e)
    decided = {k: _decide(g, inc, exc, no_wd) for k, g in groups.items()}
    for e in entries:
        if e.tied_to is not None:
            yield e, False, f"tied to {e.tied_to!r} (counted once)"
        else:
            yield (e, *decided[id(e.param)])


def explain(
    model: nn.Module, *, include: Matcher | None = None, exclude: Matcher | None = None
) -> Explanation:
    """Every parameter of ``model`` (tied aliases included) with whether the rule
    regularizes it and why. ``print()`` it for a table. A lazy module's parameter the
    rule cannot decide before the first forward pass has shape ``None`` and the reason
    ``"uninitialized (lazy module): ..."``; :func:`select` raises for exactly those.

    >>> from torch import nn
    >>> rows = explain(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    >>> [(r.name, r.regularized, r.reason) for r in rows][:3]
    [('0.weight', True, 'weight (ndim >= 2)'), ('0.bias', False, 'bias'), ('1.weight', False, 'normalization module (BatchNorm1d)')]
    >>> print(explain(nn.Sequential(nn.LazyLinear(3))))
    name      shape          regularized  reason
    0.weight  uninitialized  no           uninitialized (lazy module): run one forward pass first
    0.bias    uninitialized  no           bias
    """
    return Explanation(
        ExplainRow(e.name, _shape(e.param), ok, why)
        for e, ok, why in _rule(model, include, exclude)
    )


def _shape(p: nn.Parameter) -> tuple[int, ...] | None:
    return None if isinstance(p, UninitializedParameter) else tuple(p.shape)


def select_entries(
    model: nn.Module, *, include: Matcher | None = None, exclude: Matcher | None = None
) -> list[tuple[str, nn.Parameter, nn.Module]]:
    """Like :func:`select`, with each parameter's owning module."""
    out = []
    for e, ok, why in _rule(model, include, exclude):
        if why == _LAZY:
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
    ``include=None`` applies the default rule (module docstring); ``include=[]`` selects
    nothing. Raises ``ValueError`` for a lazy module's parameter the rule cannot decide
    before the first forward pass (``explain()`` shows which).

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> [n for n, _ in select(net)], [n for n, _ in select(net, include="*", exclude="2.*")]
    (['0.weight', '2.weight'], ['0.weight', '0.bias'])
    >>> select(net, include=[])
    []
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
