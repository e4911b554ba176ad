"""``reg.attach(opt, mode, fuse=True)``: hand the penalty to the optimizer's own
``weight_decay`` where that option is exactly the mode, so the step runs no hook work
(zero overhead; fused and foreach kernels apply the decay).

Exact, and so accepted, only for ``L2`` penalties:

* ``mode="grad"`` with ``torch.optim.SGD`` or ``torch.optim.Adam`` (coupled
  ``weight_decay``: ``g + s * w`` before the step, what grad mode adds to ``.grad``);
* ``mode="decoupled"`` with ``torch.optim.AdamW`` or ``Adam(decoupled_weight_decay=True)``
  (``w * (1 - lr * s)`` before the Adam update, what decoupled mode does), with
  ``rounding="nearest"`` when weights are float16/bfloat16 (torch rounds to nearest).

Anything else raises ``ValueError`` saying why. Groups mixing regularized and other
parameters (or two penalties) are split into one group per penalty, copying the group's
options; this must happen before an LR scheduler records the groups. A strength schedule
is written into the group's ``weight_decay`` before each step (eager steps only:
``check_capturable`` refuses it for captured steps). ``remove()`` sets the fused groups'
``weight_decay`` back to 0.
"""

from __future__ import annotations

from typing import Any

import torch

from ._capture import tracing
from .updates import Batch, Decoupled, Grad, UpdateRule

__all__ = ["Fused", "fuse"]

_LOW = (torch.float16, torch.bfloat16)


def _exact_for(mode: str, optimizer: torch.optim.Optimizer) -> bool:
    decoupled = bool(optimizer.defaults.get("decoupled_weight_decay", False))
    if mode == "grad":
        return type(optimizer) is torch.optim.SGD or (
            type(optimizer) is torch.optim.Adam and not decoupled
        )
    return isinstance(optimizer, torch.optim.Adam) and decoupled


def _problems(reg: Any, optimizer: Any, rule: UpdateRule, rounding: str) -> list[str]:
    from .penalties import L2

    core = getattr(rule, "inner", rule)
    mode = rule.name
    out = []
    if type(core) not in (Grad, Decoupled):
        out.append(f"mode must be 'grad' or 'decoupled' (without cautious), got {core!r}")
    elif not _exact_for(mode, optimizer):
        want = "SGD or Adam" if mode == "grad" else "AdamW or Adam(decoupled_weight_decay=True)"
        out.append(
            f"mode={mode!r} is the weight_decay of {want}, not of {type(optimizer).__name__}"
        )
    for b in reg.bindings:
        if type(b.penalty) is not L2:
            out.append(f"every penalty must be tp.L2 (weight_decay is L2), got {b.penalty!r}")
    if optimizer.defaults.get("maximize"):
        out.append("maximize=True negates the gradient before torch adds weight_decay")
    low = any(p.dtype in _LOW for p in reg.parameters())
    if mode == "decoupled" and low and rounding != "nearest":
        out.append(
            f"rounding must be 'nearest' (what torch.optim does) for float16/bfloat16 "
            f"weights, got {rounding!r}"
        )
    return out


def _names(group: dict[str, Any]) -> tuple[str | None, dict[int, str]]:
    key = "names" if "names" in group else "param_names" if "param_names" in group else None
    if key is None:
        return None, {}
    return key, {id(p): n for p, n in zip(group["params"], group[key], strict=True)}


def _split(optimizer: Any, index: int, parts: dict[int, list], rest: list) -> list[tuple]:
    """Give each binding's parameters of group ``index`` a group of their own."""
    g = optimizer.param_groups[index]
    if "initial_lr" in g:
        raise ValueError(
            f"optimizer.param_groups[{index}] must be split to fuse (it mixes regularized "
            "parameters with others), but an LR scheduler already holds the groups "
            "(initial_lr is set): attach(fuse=True) before creating the scheduler, or "
            "build the groups with tp.param_groups()"
        )
    key, names = _names(g)
    items = list(parts.items())
    if not rest:  # the group keeps the first binding's parameters
        (first, rest), items = items[0], items[1:]
        out = [(g, first)]
    else:
        out = []
    g["params"] = rest
    if key:
        g[key] = [names[id(p)] for p in rest]
    for bi, ps in items:
        new = {k: v for k, v in g.items() if k not in ("params", "names", "param_names")}
        new["params"] = ps
        if key:
            new[key] = [names[id(p)] for p in ps]
        optimizer.add_param_group(new)
        out.append((optimizer.param_groups[-1], bi))
    return out


def _fused_groups(reg: Any, optimizer: Any) -> list[tuple[dict, int]]:
    """(group, binding index) for every group holding regularized parameters, splitting
    groups so that each holds one binding's parameters only."""
    where = {id(p): bi for bi, b in enumerate(reg.bindings) for p in b.params}
    out = []
    for index in range(len(optimizer.param_groups)):
        g = optimizer.param_groups[index]
        parts: dict[int, list] = {}
        rest = []
        for p in g["params"]:
            bi = where.get(id(p))
            (parts.setdefault(bi, []) if bi is not None else rest).append(p)
        if not parts:
            continue
        if g.get("weight_decay", 0):
            raise ValueError(
                f"optimizer.param_groups[{index}]['weight_decay'] must be 0 to fuse the "
                f"penalty into it, got {g['weight_decay']!r}"
            )
        if not rest and len(parts) == 1:
            out.append((g, next(iter(parts))))
        else:
            out += _split(optimizer, index, parts, rest)
    return out


class Fused(UpdateRule):
    """Writes each regularized group's ``weight_decay`` (the penalty's strength) before the
    step; the optimizer applies it. ``mode`` is the rule it replaces exactly."""

    def __init__(self, mode: UpdateRule, groups: list[tuple[dict, int]], reg: Any) -> None:
        self.mode = mode
        self.groups = groups
        self._reg = reg

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.mode.name

    def write(self) -> None:
        """Each fused group's ``weight_decay`` = its penalty's current strength (host)."""
        for g, bi in self.groups:
            g["weight_decay"] = self._reg._floats[bi]

    def pre(self, b: Batch) -> None:
        if not tracing():
            self.write()
        elif callable(b.penalty.strength):
            raise TypeError(
                "attach(fuse=True) with a scheduled strength writes it into weight_decay as a "
                "Python float on the host: it cannot advance inside a compiled or captured "
                "step; attach without fuse=True (the hooks read it live)"
            )

    def undo(self) -> None:
        for g, _ in self.groups:
            g["weight_decay"] = 0.0

    def __repr__(self) -> str:
        return f"Fused({self.mode!r}, {len(self.groups)} groups)"


def fuse(reg: Any, optimizer: Any, rule: UpdateRule, rounding: str) -> Fused:
    """The fused form of ``rule`` on ``optimizer`` (groups split as needed), or
    ``ValueError`` naming what makes the optimizer's option inexact."""
    found = _problems(reg, optimizer, rule, rounding)
    if found:
        raise ValueError(
            "fuse=True needs the optimizer's own option to be exact: " + "; ".join(found)
        )
    fused = Fused(rule, _fused_groups(reg, optimizer), reg)
    fused.write()
    return fused
