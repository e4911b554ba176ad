"""Optimizer step hooks behind ``Regularizer.attach``: they run an update rule
(:mod:`torchpenalty.updates`) on every (optimizer group, penalty) batch before and after
``optimizer.step()``, and advance the Regularizer's strength schedules.

This module knows a Regularizer only through its public read-only view
(``reg.bindings``, ``reg.names``, ``reg.step_count``, ``reg.step()``): no import of
:mod:`torchpenalty.regularizer`, so there is no import circle.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Protocol

import torch
from torch.optim import optimizer as _opt

from . import _fuse
from ._attached import ATTACHED as _ATTACHED
from ._attached import handles_on
from ._validation import check_choice, type_error
from .distributed import local
from .updates import RULES, Batch, UpdateRule, bind_rule, cautious_rule, make_rule

__all__ = ["AttachHandle", "attach", "handles_on"]


class _Reg(Protocol):  # what the hooks need from a Regularizer
    bindings: Any
    names: list[str]
    step_count: int

    def step(self) -> None: ...

    def batch_strength(self, index: int) -> Any: ...


def _lr(group: dict[str, Any]) -> float:
    lr = group.get("lr", 0.0)
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


class AttachHandle:
    """Returned by ``Regularizer.attach``; ``remove()`` detaches every hook (idempotent).
    Also a context manager that removes on exit. ``rule`` is the update rule it runs."""

    def __init__(
        self,
        reg: _Reg,
        optimizer: torch.optim.Optimizer,
        rule: UpdateRule,
        advance: bool,
    ):
        self.rule = rule
        self.mode = rule.name
        self.optimizer = optimizer
        self._reg = reg
        self._advance = advance
        self._plan_key: tuple = ()
        self._plan: list = []
        self._initial_lr: dict[int, float] = {}
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]
        for g in optimizer.param_groups:
            self._lr0(g)
        if rule.applies_penalty and not any(items for _, items in self._groups()):
            self.remove()
            raise ValueError(
                "optimizer must hold at least one regularized parameter, got none of "
                f"{reg.names[:3]}{'...' if len(reg.names) > 3 else ''}"
            )
        self._warn_double_decay()

    @property
    def rounding(self) -> str:
        return getattr(self.rule, "rounding", "nearest")

    @property
    def residuals(self) -> dict[int, torch.Tensor]:
        """float32 rounding residuals of float16/bfloat16 weights (``"compensated"``)."""
        return getattr(self.rule, "residuals", {})

    @property
    def active(self) -> bool:
        return bool(self._handles)

    @property
    def regularizer(self) -> _Reg:
        return self._reg

    def _lr0(self, group: dict[str, Any]) -> float:
        """The group's initial lr: ``initial_lr`` (set by LR schedulers) or its lr when
        first seen."""
        key = id(group)
        if key not in self._initial_lr:  # read once, in eager code (attach, first step)
            self._initial_lr[key] = float(group.get("initial_lr", _lr(group)))
        return self._initial_lr[key]

    # ------------------------------------------------------------------ planning
    def _groups(self) -> list[tuple[dict[str, Any], list[tuple[int, list[int]]]]]:
        """Per optimizer group: (group, [(binding index, [positions in binding])])."""
        groups = self.optimizer.param_groups
        key = tuple((id(g), len(g["params"])) for g in groups)
        if key != self._plan_key:
            where = {
                id(p): (bi, i)
                for bi, b in enumerate(self._reg.bindings)
                for i, p in enumerate(b.params)
            }
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

    def param_ids(self) -> set[int]:
        """``id()`` of the parameters this handle penalizes through its optimizer (those
        under constraints only are left out)."""
        out = set()
        bindings = self._reg.bindings
        for _, items in self._groups():
            for b, positions in items:
                if not bindings[b].penalty.is_constraint:
                    out.update(id(bindings[b].params[i]) for i in positions)
        return out

    @property
    def fused(self) -> bool:
        """True when the optimizer's own ``weight_decay`` applies the penalty (``fuse=True``)."""
        return isinstance(self.rule, _fuse.Fused)

    def _warn_double_decay(self) -> None:
        if self.fused:
            return
        for g, items in self._groups():
            if items and g.get("weight_decay", 0):
                warnings.warn(
                    f"optimizer group has weight_decay={g['weight_decay']} on parameters the "
                    f"Regularizer also penalizes (mode={self.mode!r}): they are decayed twice "
                    "(note torch.optim.AdamW's default is weight_decay=0.01). Build the "
                    "optimizer with weight_decay=0, or use tp.param_groups() alone.",
                    stacklevel=5,
                )
                return

    def batches(self, scale: torch.Tensor | None = None) -> list[Batch]:
        """One :class:`~torchpenalty.updates.Batch` per optimizer group and penalty, with
        the regularized parameters that have a gradient (as torch.optim: no grad, no
        update), as local shards for DTensors (no communication)."""
        bindings = self._reg.bindings
        step = self._reg._step  # host count: only Sum's parts read it (eager)
        out = []
        for g, items in self._groups():
            for b, positions in items:
                binding = bindings[b]
                live = [i for i in positions if binding.params[i].grad is not None]
                if not live:
                    continue
                originals = [binding.params[i] for i in live]
                out.append(
                    Batch(
                        penalty=binding.penalty,
                        params=[local(p) for p in originals],
                        grads=[local(p.grad) for p in originals],
                        names=[binding.names[i] for i in live],
                        originals=originals,
                        optimizer=self.optimizer,
                        group=g,
                        step=step,
                        strength=self._reg.batch_strength(b),
                        lr0=self._lr0(g),
                        grad_scale=scale,
                    )
                )
        return out

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def _skipped(optimizer) -> bool:
        """True when GradScaler found inf/NaN and a fused optimizer will skip this step."""
        found = getattr(optimizer, "found_inf", None)
        return found is not None and bool(found.item())

    def _runs(self, phase: str) -> bool:
        """Whether the rule (unwrapped from Rounded) overrides ``pre`` / ``post``."""
        runs = self.__dict__.get("_phases")
        if runs is None:
            rule = type(getattr(self.rule, "inner", self.rule))
            runs = self._phases = {
                p: getattr(rule, p) is not getattr(UpdateRule, p) for p in ("pre", "post")
            }
        return runs[phase]

    def _pre(self, optimizer, args, kwargs) -> tuple[tuple, dict] | None:
        """Step pre-hook. With ``step(closure)`` the gradients do not exist yet (the step
        calls the closure first): hand the step a closure that runs the rule's ``pre``
        right after the user's closure returns, once per step."""
        self._closure_pending = False
        if not self._runs("pre"):
            return None
        # args[0] is the optimizer; a closure comes next or as a keyword
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._pre_now(optimizer)
            return None
        wrapped = self._after(closure, optimizer)
        if "closure" in kwargs:
            return args, {**kwargs, "closure": wrapped}
        return (args[0], wrapped, *args[2:]), kwargs

    def _after(self, closure: Any, optimizer) -> Any:
        """``closure`` followed, on its first call, by the rule's ``pre`` (an optimizer
        that calls the closure again gets the gradients of those calls unchanged)."""
        self._closure_pending = True

        def closure_then_penalty() -> Any:
            result = closure()
            if self._closure_pending:
                self._closure_pending = False
                self._pre_now(optimizer)
            return result

        return closure_then_penalty

    @torch.no_grad()
    def _pre_now(self, optimizer) -> None:
        if self._skipped(optimizer):
            return
        scale = getattr(optimizer, "grad_scale", None)  # GradScaler deferring unscale
        for b in self.batches(scale):
            self.rule.pre(b)

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        if self.__dict__.pop("_closure_pending", False):
            warnings.warn(
                f"{type(optimizer).__name__}.step(closure) never called its closure: the "
                f"Regularizer (mode={self.mode!r}) did not apply its penalty this step",
                stacklevel=3,
            )
        if self._skipped(optimizer):
            return
        if self._runs("post"):
            for b in self.batches():
                self.rule.post(b)
        if self._advance:
            self._reg.step()

    # ------------------------------------------------------------------ handle
    def remove(self) -> None:
        if self._handles and self.fused:
            self.rule.undo()  # type: ignore[attr-defined]
        for h in self._handles:
            h.remove()
        self._handles = []
        live = _ATTACHED.get(self.optimizer)
        if live is not None and self in live:
            live.remove(self)

    def __enter__(self) -> AttachHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self._handles else "removed"
        how = ", fused into weight_decay" if self.fused else ""
        return f"AttachHandle(mode={self.mode!r}{how}, {state})"


def _prepare(rule: Any, optimizer: Any) -> None:
    """Call ``prepare(optimizer)`` on ``rule`` and the rules it wraps, where defined
    (device state a compiled or captured step updates in place)."""
    while rule is not None:
        fn = getattr(type(rule), "prepare", None)
        if fn is not None:
            fn(rule, optimizer)
        rule = getattr(rule, "inner", None)


def _check_same(reg: _Reg, optimizer: torch.optim.Optimizer) -> None:
    """The same Regularizer twice on one optimizer would apply its penalty twice."""
    for h in _ATTACHED.get(optimizer, []):
        if h.active and h.regularizer is reg:
            raise RuntimeError(
                f"optimizer already has this Regularizer attached (mode={h.mode!r}): "
                "attaching it again would apply the penalty and advance its schedule twice "
                "per step; call handle.remove() first"
            )


def _warn_overlap(optimizer: torch.optim.Optimizer, handle: AttachHandle) -> None:
    """Two Regularizers penalizing the same parameter through one optimizer add up."""
    if not handle.rule.applies_penalty:
        return
    mine = handle.param_ids()
    for h in _ATTACHED.get(optimizer, []):
        if h.active and h.rule.applies_penalty and mine & h.param_ids():
            warnings.warn(
                "two Regularizers penalize the same parameters through this optimizer "
                f"(modes {h.mode!r} and {handle.mode!r}): their penalties add up. Use one "
                "Regularizer with a dict of penalties, or `+` to combine penalties.",
                stacklevel=4,
            )
            return


def attach(
    reg: _Reg,
    optimizer: Any,
    mode: str | UpdateRule,
    *,
    advance_schedule: bool = True,
    rounding: str = "stochastic",
    **options: Any,
) -> AttachHandle:
    """Attach ``reg`` to ``optimizer`` with the update rule ``mode`` (a name in
    :data:`torchpenalty.updates.RULES` or an :class:`~torchpenalty.updates.UpdateRule`)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise type_error("optimizer", "a torch.optim.Optimizer", optimizer)
    if not isinstance(mode, UpdateRule):
        check_choice("mode", mode, list(RULES))
    fuse = options.pop("fuse", False)
    mode, options = cautious_rule(mode, options.pop("cautious", False), options)
    if not isinstance(fuse, bool):
        raise type_error("fuse", "a bool", fuse)
    rule = make_rule(mode, rounding=rounding, **options)
    bind_rule(rule, reg)
    _prepare(rule, optimizer)
    if isinstance(optimizer, torch.optim.LBFGS) and rule.name != "loss":
        raise ValueError(
            "mode must be 'loss' for torch.optim.LBFGS, whose closure recomputes the gradients "
            f"inside step(): add reg() to the closure's loss instead, got {rule.name!r}"
        )
    for b in reg.bindings:
        rule.check(b.penalty)
    _check_same(reg, optimizer)
    if fuse:
        rule = _fuse.fuse(reg, optimizer, rule, rounding)
    handle = AttachHandle(reg, optimizer, rule, advance_schedule)
    _warn_overlap(optimizer, handle)
    _ATTACHED.setdefault(optimizer, []).append(handle)
    return handle


# ---------------------------------------------------------------------- one graph
def one_graph_step(optimizer: torch.optim.Optimizer) -> Any:
    """``optimizer.step`` as a function that ``torch.compile`` traces in one graph with
    the step hooks (the Regularizer's among them), so that inductor fuses the penalty's
    update into the optimizer's own kernel.

    torch.optim's ``step()`` breaks the graph twice on purpose (``_use_grad``,
    pytorch#104053), so hooks registered by ``attach()`` compile as graphs of their own:
    one more pass over every parameter. The returned ``step(closure=None)`` runs exactly
    what ``Optimizer.step`` runs -- global and per-optimizer pre hooks, the optimizer's
    unwrapped ``step`` with gradients off (``defaults["differentiable"]``), post hooks --
    without those two breaks when traced, and calls ``optimizer.step`` itself when not
    (eager: identical, profiler and LR-scheduler bookkeeping included). The parameters
    equal those of ``optimizer.step()`` (tested for every mode, ``tests/test_compile.py``).

    >>> import torch, torchpenalty as tp
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=torch.tensor(0.1))
    >>> _ = tp.Regularizer(net, tp.L2(1e-2)).attach(opt, mode="decoupled")
    >>> step = tp.one_graph_step(opt)
    >>> @torch.compile(backend="eager")
    ... def train(x, y):
    ...     opt.zero_grad()
    ...     torch.nn.functional.mse_loss(net(x), y).backward()
    ...     step()
    >>> train(torch.randn(8, 3), torch.randn(8, 1))
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise type_error("optimizer", optimizer, "a torch.optim.Optimizer")
    body = inspect.unwrap(type(optimizer).step)

    def step(closure: Any = None) -> Any:
        if not torch.compiler.is_compiling():
            return optimizer.step() if closure is None else optimizer.step(closure)
        return _traced_step(optimizer, body, closure)

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


def _traced_step(optimizer: torch.optim.Optimizer, body: Any, closure: Any) -> Any:
    """``Optimizer.step``'s wrapper, inlined: hooks, the body, hooks (no graph break)."""
    args: tuple = (optimizer,) if closure is None else (optimizer, closure)
    kwargs: dict[str, Any] = {}
    pre = (
        *_opt._global_optimizer_pre_hooks.values(),
        *optimizer._optimizer_step_pre_hooks.values(),
    )
    for hook in pre:
        result = hook(optimizer, args, kwargs)
        if result is not None:
            args, kwargs = result
    if getattr(optimizer.step, "_wrapped_by_lr_sched", False):
        optimizer._opt_called = True  # type: ignore[attr-defined]  # what the LR scheduler checks
    prev = torch.is_grad_enabled()
    torch.set_grad_enabled(bool(optimizer.defaults.get("differentiable", False)))
    try:
        out = body(*args, **kwargs)
    finally:
        torch.set_grad_enabled(prev)
    post = (
        *optimizer._optimizer_step_post_hooks.values(),
        *_opt._global_optimizer_post_hooks.values(),
    )
    for hook in post:
        hook(optimizer, args, kwargs)
    return out
