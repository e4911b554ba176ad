"""Optimizer integration: ``param_groups()`` and the step hooks behind ``Regularizer.attach``.

``param_groups(model, wd)`` splits the trainable parameters by the selection rule into a
decayed and a non-decayed group, for any torch optimizer (fused and foreach ones too):

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
>>> groups = param_groups(net, 1e-2)
>>> [(g["names"], g["weight_decay"]) for g in groups]
[(['0.weight', '2.weight'], 0.01), (['0.bias', '1.weight', '1.bias', '2.bias'], 0.0)]
>>> opt = torch.optim.AdamW(groups, lr=1e-3)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from ._validation import check_choice, check_strength, type_error
from .distributed import local
from .functional import stochastic_round
from .select import Matcher, select, trainable

if TYPE_CHECKING:  # pragma: no cover
    from .regularizer import Regularizer

__all__ = ["MODES", "ROUNDINGS", "AttachHandle", "param_groups"]

#: Modes of ``Regularizer.attach``.
MODES = ("grad", "decoupled", "independent", "proximal", "loss")
#: How decoupled and proximal steps write float16 / bfloat16 weights.
ROUNDINGS = ("stochastic", "compensated", "nearest")
_LOW = (torch.float16, torch.bfloat16)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    include: Matcher | None = None,
    exclude: Matcher | None = None,
    **group_opts: Any,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: ``{"params", "names", "weight_decay": weight_decay}`` for
    the parameters the rule selects and ``weight_decay=0.0`` for every other trainable
    parameter. Groups are disjoint, frozen parameters are skipped, tied parameters appear
    once, empty groups are dropped, and ``group_opts`` (``lr=`` ...) go into both groups.

    With ``torch.optim.SGD`` this equals ``L2(weight_decay)``; with ``AdamW`` it is
    decoupled decay. Use it with fused optimizers for zero-overhead weight decay.
    """
    wd = check_strength("weight_decay", weight_decay)
    if "params" in group_opts or "names" in group_opts:
        raise TypeError(f"group_opts must not set 'params' or 'names', got {sorted(group_opts)}")
    chosen = select(model, include=include, exclude=exclude)
    ids = {id(p) for _, p in chosen}
    rest = [(n, p) for n, p in trainable(model) if id(p) not in ids]
    groups = []
    for pairs, decay in ((chosen, wd), (rest, 0.0)):
        if pairs:
            groups.append(
                {
                    "params": [p for _, p in pairs],
                    "names": [n for n, _ in pairs],
                    **group_opts,
                    "weight_decay": decay,
                }
            )
    return groups


def _lr(group: dict[str, Any]) -> float:
    lr = group.get("lr", 0.0)
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


class _Batch(NamedTuple):
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    names: list[str]
    keys: list[int]  # id() of the parameters (stable across local views)


class AttachHandle:
    """Returned by ``Regularizer.attach``; ``remove()`` detaches every hook (idempotent).
    Also a context manager that removes on exit."""

    def __init__(
        self,
        reg: Regularizer,
        optimizer: torch.optim.Optimizer,
        mode: str,
        advance: bool,
        rounding: str = "stochastic",
    ):
        self.mode = mode
        self.rounding = rounding
        #: float32 rounding residuals of float16/bfloat16 weights (``rounding="compensated"``)
        self.residuals: dict[int, torch.Tensor] = {}
        self.optimizer = optimizer
        self._reg = reg
        self._advance = advance
        self._plan_key: tuple = ()
        self._plan: list = []
        self._initial_lr: dict[int, float] = {}
        self._handles = []
        if mode in ("grad", "decoupled", "independent"):
            self._handles.append(optimizer.register_step_pre_hook(self._pre))
        self._handles.append(optimizer.register_step_post_hook(self._post))
        for g in optimizer.param_groups:
            self._lr0(g)
        if mode != "loss" and not any(items for _, items in self._groups()):
            self.remove()
            raise ValueError(
                "optimizer must hold at least one regularized parameter, got none of "
                f"{reg.names[:3]}{'...' if len(reg.names) > 3 else ''}"
            )
        self._warn_double_decay()

    def _lr0(self, group: dict[str, Any]) -> float:
        """The group's initial lr: ``initial_lr`` (set by LR schedulers) or its lr when
        first seen."""
        return self._initial_lr.setdefault(id(group), float(group.get("initial_lr", _lr(group))))

    # ------------------------------------------------------------------ planning
    def _groups(self) -> list[tuple[dict[str, Any], list[tuple[int, list[int]]]]]:
        """Per optimizer group: (group, [(binding index, [positions in binding])])."""
        groups = self.optimizer.param_groups
        key = tuple((id(g), len(g["params"])) for g in groups)
        if key != self._plan_key:
            where = self._reg._positions()
            plan = []
            for g in groups:
                by_binding: dict[int, list[int]] = {}
                for p in g["params"]:
                    loc = where.get(id(p))
                    if loc is not None:
                        by_binding.setdefault(loc[0], []).append(loc[1])
                plan.append((g, sorted(by_binding.items())))
            self._plan_key, self._plan = key, plan
        return self._plan

    def _warn_double_decay(self) -> None:
        for g, items in self._groups():
            if items and g.get("weight_decay", 0):
                warnings.warn(
                    f"optimizer group has weight_decay={g['weight_decay']} on parameters the "
                    f"Regularizer also penalizes (mode={self.mode!r}): they are decayed twice "
                    "(note torch.optim.AdamW's default is weight_decay=0.01). Build the "
                    "optimizer with weight_decay=0, or use tp.param_groups() alone.",
                    stacklevel=4,
                )
                return

    def _each(self, fn: Callable[[dict, Any, _Batch], None]) -> None:
        """Call ``fn(group, penalty, batch)`` for every optimizer group and penalty with
        the regularized parameters that have a gradient (as torch.optim: no grad, no
        update), as local shards for DTensors (no communication)."""
        bindings = self._reg._bindings
        for g, items in self._groups():
            for b, positions in items:
                binding = bindings[b]
                batch = _Batch([], [], [], [])
                for i in positions:
                    p = binding.params[i]
                    if p.grad is not None:
                        batch.params.append(local(p))
                        batch.grads.append(local(p.grad))
                        batch.names.append(binding.names[i])
                        batch.keys.append(id(p))
                if batch.params:
                    fn(g, binding.penalty, batch)

    def _write(self, batch: _Batch, op: Callable[[list, list], None]) -> None:
        """Run the in-place ``op(params, names)`` on the batch; float16/bfloat16 weights
        are updated in float32 and written back by ``self.rounding``, so that a decay
        smaller than half a unit in the last place is not rounded away."""
        params, names = batch.params, batch.names
        low = [i for i, p in enumerate(params) if p.dtype in _LOW]
        if self.rounding == "nearest" or not low:
            op(params, names)
            return
        high = [i for i in range(len(params)) if params[i].dtype not in _LOW]
        if high:
            op([params[i] for i in high], [names[i] for i in high])
        wide = []
        for i in low:
            w = params[i].float()
            if self.rounding == "compensated":
                res = self.residuals.get(batch.keys[i])
                if res is not None:
                    w += res
            wide.append(w)
        op(wide, [names[i] for i in low])
        for i, w in zip(low, wide, strict=True):
            p = params[i]
            if self.rounding == "stochastic":
                p.copy_(stochastic_round(w, p.dtype))
            else:
                p.copy_(w)
                self.residuals[batch.keys[i]] = w - p.float()

    def _update(self, step: int) -> None:
        """The decoupled / independent decay or the proximal step, with each group's lr."""

        def run(g, pen, batch):
            lr = _lr(g)
            if self.mode == "independent":
                lr0 = self._lr0(g)
                lr = lr / lr0 if lr0 else 0.0
            fn = pen.prox_ if self.mode == "proximal" else pen.decay_
            self._write(batch, lambda ps, ns: fn(ps, lr, step=step, names=ns))

        self._each(run)

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def _skipped(optimizer) -> bool:
        """True when GradScaler found inf/NaN and a fused optimizer will skip this step."""
        found = getattr(optimizer, "found_inf", None)
        return found is not None and bool(found.item())

    @torch.no_grad()
    def _pre(self, optimizer, args, kwargs) -> None:
        if self._skipped(optimizer):
            return
        step = self._reg.step_count
        if self.mode == "grad":
            scale = getattr(optimizer, "grad_scale", None)  # GradScaler deferring unscale

            def add_grad(g, pen, batch):
                params, grads, names = batch.params, batch.grads, batch.names
                if scale is None:
                    pen.grad_(grads, params, step=step, names=names)
                else:
                    tmp = [torch.zeros_like(x) for x in grads]
                    pen.grad_(tmp, params, step=step, names=names)
                    torch._foreach_mul_(tmp, scale.to(tmp[0].device))
                    torch._foreach_add_(grads, tmp)

            self._each(add_grad)
        else:  # decoupled or independent: w <- w - lr_eff * grad P(w) before the update
            self._update(step)

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        if self._skipped(optimizer):
            return
        if self.mode == "proximal":
            self._update(self._reg.step_count)
        if self._advance:
            self._reg.step()

    # ------------------------------------------------------------------ handle
    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> AttachHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self._handles else "removed"
        return f"AttachHandle(mode={self.mode!r}, {state})"


def attach(
    reg: Regularizer,
    optimizer: Any,
    mode: str,
    *,
    advance_schedule: bool = True,
    rounding: str = "stochastic",
) -> AttachHandle:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise type_error("optimizer", "a torch.optim.Optimizer", optimizer)
    check_choice("mode", mode, MODES)
    check_choice("rounding", rounding, ROUNDINGS)
    if isinstance(optimizer, torch.optim.LBFGS) and mode != "loss":
        raise ValueError(
            "mode must be 'loss' for torch.optim.LBFGS, whose closure recomputes the gradients "
            f"inside step(): add reg() to the closure's loss instead, got {mode!r}"
        )
    if mode == "proximal":
        for b in reg._bindings:
            if not b.penalty.has_prox:
                raise ValueError(
                    f"mode must be one of 'grad', 'decoupled', 'independent' for "
                    f"{type(b.penalty).__name__}, which has no proximal operator, got 'proximal'"
                )
    return AttachHandle(reg, optimizer, mode, advance_schedule, rounding)
