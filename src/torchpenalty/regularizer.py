"""``Regularizer``: binds penalties to the selected parameters of a model.

Four ways to apply it, one result (tested against torch.optim):

* loss mode: ``loss = criterion(out, y) + reg()`` (autograd through the penalty);
* ``reg.attach(opt, mode="grad")``: adds the penalty's gradient to ``.grad`` in place
  before each ``opt.step()`` (no graph, no extra memory; equals loss mode);
* ``mode="decoupled"``: ``w <- w - lr * grad P(w)`` before the update, with each group's
  current ``lr`` (AdamW-style; ``L2`` on Adam equals ``torch.optim.AdamW``);
* ``mode="independent"``: fully decoupled, lr-independent decay
  ``w <- w - (lr / initial_lr) * grad P(w)`` (the strength is the per-step decay at the
  peak lr and follows the lr schedule's shape, not its size; as in Composer's
  ``DecoupledAdamW`` and optimi);
* ``mode="proximal"``: after the update, ``w <- prox_{lr * P}(w)``: exact zeros for L1,
  elastic net and group lasso.

>>> import torch, torchpenalty as tp
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 5))
>>> reg = tp.Regularizer(model, tp.L2(1e-2))
>>> reg.names
['0.weight', '2.weight']
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> x, y = torch.randn(8, 5), torch.randn(8, 5)
>>> loss = nn.functional.mse_loss(model(x), y) + reg()     # loss mode
>>> loss.backward(); opt.step()
>>> handle = reg.attach(opt, mode="grad")                  # or: no graph at all
>>> handle.remove()
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ._capture import live_strength, tracing
from ._capture import problems as capture_problems
from ._validation import check_config, check_int, check_strength, type_error, value_error
from .activity import ActivityHooks
from .distributed import check_sharding, is_ddp_find_unused, local, plain
from .functional import accumulation_dtype
from .hooks import AttachHandle, attach
from .penalties import Penalty
from .select import Matcher, _entries, check_matchers, explain, matches, select_entries
from .stats import DecayStats
from .stats import stats as decay_stats

__all__ = ["Binding", "Regularizer"]


class Binding(NamedTuple):
    """One penalty and the parameters it applies to (read-only view: tuples)."""

    penalty: Penalty
    names: tuple[str, ...]
    params: tuple[nn.Parameter, ...]


class Regularizer:
    """Apply ``penalty`` to the parameters of ``model`` chosen by the selection rule.

    Args:
        model: the module to regularize.
        penalty: a :class:`~torchpenalty.penalties.Penalty`, or a dict mapping fnmatch
            patterns or module classes to penalties (Keras-style per-layer; the first
            matching key wins, parameters matching no key are not regularized).
        include, exclude: override the default rule (see :mod:`torchpenalty.select`).
        activity: Keras-style activity penalties: a dict mapping module names, fnmatch
            patterns of module names, or module classes to penalties of their outputs,
            taken by forward hooks and added by ``reg()`` (see
            :mod:`torchpenalty.activity`); ``reg.activity_hooks.remove()`` detaches them.
        activity_reduction: ``"batch_mean"`` (default: each output's penalty divided by
            its batch size, as Keras >= 3.14 and tf.keras 2 do) or ``"sum"`` (the penalty
            of the whole output, as Keras 3.0 to 3.13 did).

    ``reg()`` returns the penalty as a 0-d tensor (float32 accumulation) for the loss;
    ``reg.value()`` a detached float for logging. Strength schedules advance once per
    optimizer step when attached (any mode, ``mode="loss"`` only advances), or by
    ``reg.step()``. Strengths are kept in 0-d tensors updated in place and the step also
    in a device counter, so a compiled or CUDA-graph-captured step reads them live
    (:meth:`check_capturable` names any setting that cannot be read that way).

    >>> import torch, torchpenalty as tp
    >>> from torch import nn
    >>> net = nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[3.0, 4.0]]))
    >>> reg = tp.Regularizer(net, tp.L2(0.1))
    >>> reg.value()   # 0.1/2 * (9 + 16); the bias is not regularized
    1.25
    >>> sgd = torch.optim.SGD(net.parameters(), lr=1.0)
    >>> handle = reg.attach(sgd, mode="decoupled")
    >>> net.weight.grad = torch.zeros_like(net.weight); net.bias.grad = torch.zeros_like(net.bias)
    >>> sgd.step(); net.weight.data   # w * (1 - lr * s)
    tensor([[2.7000, 3.6000]])
    """

    def __init__(
        self,
        model: nn.Module,
        penalty: Penalty | Mapping[Any, Penalty],
        *,
        include: Matcher | None = None,
        exclude: Matcher | None = None,
        activity: Mapping[Any, Penalty] | None = None,
        activity_reduction: str = "batch_mean",
    ) -> None:
        entries = select_entries(model, include=include, exclude=exclude)
        if isinstance(penalty, Penalty):
            rules = [("*", penalty)]
        elif isinstance(penalty, Mapping):
            rules = list(penalty.items())
            if not rules:
                raise ValueError(f"penalty must map at least one key to a penalty, got {penalty!r}")
            all_entries = _entries(model)
            for key, pen in rules:
                if not isinstance(key, (str, type)):
                    raise type_error("penalty keys", "fnmatch patterns or module classes", key)
                if not isinstance(pen, Penalty):
                    raise type_error(f"penalty[{key!r}]", "a Penalty", pen)
                check_matchers(f"penalty key {key!r}", [key], all_entries)
        else:
            raise type_error("penalty", "a Penalty or a dict of patterns to penalties", penalty)

        found: dict[int, tuple[Penalty, list[str], list[nn.Parameter]]] = {}
        for name, p, module in entries:
            for key, pen in rules:
                if matches(key, name, p, module):
                    b = found.setdefault(id(pen), (pen, [], []))
                    b[1].append(name)
                    b[2].append(p)
                    break
        if isinstance(penalty, Mapping):
            _check_keys_selected(model, rules, found, include, exclude)
        self.model = model
        self.penalty = penalty
        self._bindings = [Binding(pen, tuple(ns), tuple(ps)) for pen, ns, ps in found.values()]
        self._handles: list[AttachHandle] = []
        self._warned_double = False
        #: forward hooks of the activity penalties (``None`` without ``activity=``)
        self.activity_hooks = (
            None
            if activity is None
            else ActivityHooks(model, activity, reduction=activity_reduction)
        )
        for b in self._bindings:
            check_sharding(b.penalty, b.names, b.params)
        self._ddp_find_unused = is_ddp_find_unused(model)
        self._step = 0
        self._device = next((p.device for _, p, _ in entries), None)
        if self._device is None:
            self._device = next((p.device for p in model.parameters()), torch.device("cpu"))
        # Strengths as 0-d tensors, refreshed in place when the step advances: a compiled
        # loss or step reads them as inputs, so a schedule never triggers a recompilation
        # and a captured graph reads the current value. ``_floats``: the same values on the
        # host, for the eager hooks. ``_step_t``: the step on the device, advanced by
        # compiled and captured steps (``_device_steps``: the host count lags behind it).
        self._strengths = [
            torch.zeros((), dtype=accumulation_dtype(b.params), device=b.params[0].device)
            for b in self._bindings
        ]
        self._floats = [0.0] * len(self._bindings)
        self._step_t = torch.zeros((), dtype=torch.int64, device=self._device)
        self._device_steps = False
        self._refresh()

    # ------------------------------------------------------------------ introspection
    @property
    def names(self) -> list[str]:
        """Names of the regularized parameters."""
        return [n for b in self._bindings for n in b.names]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for b in self._bindings for n, p in zip(b.names, b.params, strict=True)]

    def parameters(self) -> list[nn.Parameter]:
        return [p for b in self._bindings for p in b.params]

    @property
    def bindings(self) -> tuple[Binding, ...]:
        """Read-only view: one :class:`Binding` (penalty, names, params) per penalty."""
        return tuple(self._bindings)

    # ------------------------------------------------------------------ values
    def __call__(self, *, accumulation_steps: int = 1) -> Tensor:
        """The total penalty at the current step, a 0-d tensor with autograd.

        With gradient accumulation over ``N`` micro-batches in loss mode, add
        ``reg(accumulation_steps=N)`` (the penalty divided by ``N``) to each micro-batch's
        loss, so that one optimizer step sees the penalty once.
        """
        n = check_int("accumulation_steps", accumulation_steps, minimum=1)
        if self._ddp_find_unused and torch.is_grad_enabled():
            raise RuntimeError(
                "reg() in the loss cannot be used with DistributedDataParallel("
                "find_unused_parameters=True): a penalized parameter that the forward pass "
                "did not use would get its gradient after DDP marked it ready, and backward "
                "fails. Use reg.attach(optimizer, mode='grad') instead (the same update, no "
                "autograd), or build DDP with find_unused_parameters=False."
            )
        if torch.is_grad_enabled() and not self._warned_double:
            self._warn_if_attached()
        total: Tensor | None = None
        for b, s in zip(self._bindings, self._strengths, strict=True):
            v = plain(b.penalty.value(b.params, names=b.names, strength=s))
            total = v if total is None else total + v.to(total.device)
        if total is not None and n != 1:
            total = total / n
        act = self.activity_loss(accumulation_steps=n) if self.activity_hooks else None
        if act is not None:
            total = act if total is None else total + act.to(total.device)
        return torch.zeros((), device=self._device) if total is None else total

    def activity_loss(self, *, accumulation_steps: int = 1) -> Tensor | None:
        """The activity penalties of the forward passes since the last call (``reg()``
        includes them), or ``None`` when there are none; clears them. Use it in the loss
        when the weight penalty is applied by ``attach()``. With ``"batch_mean"``
        reduction it is divided by ``accumulation_steps``; sums are not (the
        micro-batches' sums add up to the batch's).

        >>> import torch, torchpenalty as tp
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.eye(2))
        >>> reg = tp.Regularizer(net, tp.L2(1e-4), activity={"0": tp.L1(0.5)})
        >>> _ = net(torch.tensor([[1.0, -2.0]]))
        >>> reg.activity_loss().item()  # 0.5 * (|1| + |-2|), summed over the output (Keras 3)
        1.5
        >>> reg.activity_loss() is None  # taken: nothing is kept
        True
        """
        if self.activity_hooks is None:
            return None
        v = self.activity_hooks.take()
        if v is not None and self.activity_hooks.reduction == "batch_mean":
            v = v / accumulation_steps
        return v

    def _warn_if_attached(self) -> None:
        live = [h for h in self._handles if h.active and h.rule.applies_penalty]
        if live:
            self._warned_double = True
            warnings.warn(
                f"reg() is in the loss while this Regularizer is attached with "
                f"mode={live[0].mode!r}: the penalty is applied twice per step. Attach with "
                "mode='loss' (schedules only), or drop reg() from the loss (use "
                "reg.activity_loss() for activity penalties).",
                stacklevel=3,
            )

    def value(self) -> float:
        """The penalty as a detached Python float (for logging).

        >>> import torch, torchpenalty as tp
        >>> net = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(2.0)
        >>> round(tp.Regularizer(net, tp.L2(0.1)).value(), 6)  # 0.1/2 * (4 + 4); no bias
        0.4
        """
        with torch.no_grad():
            return float(self())

    def stats(self, optimizer: Any = None, **kwargs: Any) -> DecayStats:
        """What the decay is doing: :func:`torchpenalty.stats.stats` of this Regularizer
        (per regularized tensor and per group: weight and gradient norms, update-to-weight
        ratio against its steady state, decay per step, zero fraction).

        >>> import torch, torchpenalty as tp
        >>> net = torch.nn.Linear(3, 2)
        >>> reg = tp.Regularizer(net, tp.L2(0.1))
        >>> [row.name for row in reg.stats().tensors]
        ['weight']
        """
        return decay_stats(self, optimizer, **kwargs)

    @torch.no_grad()
    def add_grad_(self) -> None:
        """Add the penalty's gradient to each regularized parameter's ``.grad`` (those
        with a gradient), as ``attach(mode="grad")`` does before each step."""
        for b in self._bindings:
            live = [(n, p) for n, p in zip(b.names, b.params, strict=True) if p.grad is not None]
            if live:
                b.penalty.grad_(
                    [local(p.grad) for _, p in live],
                    [local(p) for _, p in live],
                    step=self._step,
                    names=[n for n, _ in live],
                )

    # ------------------------------------------------------------------ optimizer
    def attach(
        self,
        optimizer: torch.optim.Optimizer,
        mode: str = "grad",
        *,
        advance_schedule: bool = True,
        rounding: str = "stochastic",
        **options: Any,
    ) -> AttachHandle:
        """Apply the penalty through ``optimizer``'s step hooks; returns a handle with
        ``.remove()``. ``mode`` is ``"grad"``, ``"decoupled"``, ``"independent"``,
        ``"proximal"`` or ``"loss"`` (only advances the schedule; add ``reg()`` to the
        loss yourself). Parameters without a ``.grad`` are left alone, as torch.optim does.

        ``rounding`` decides how decoupled and proximal steps write float16/bfloat16
        weights, where a decay like ``lr * s = 1e-5`` is far below half a unit in the last
        place and rounds away entirely (``torch.optim.AdamW`` on bf16 weights of 1.0 leaves
        them at 1.0 forever): ``"stochastic"`` (default) rounds the float32 result up or
        down at random so the decay survives in expectation, with no extra memory;
        ``"compensated"`` keeps a float32 residual per weight (2 extra bytes per bf16 weight)
        and is exact and deterministic; ``"nearest"`` does what torch.optim does. Float32
        and float64 weights are unaffected.

        ``mode="proximal"`` follows the optimizer's metric (see
        :func:`torchpenalty.updates.step_metric`): with SGD, Adam, AdamW, Adamax, NAdam,
        RAdam, RMSprop and Adagrad its fixed points are the penalized problem's solutions
        (``L1(s)`` = scikit-learn ``Lasso(alpha=s/2)`` on a mean-squared loss). ``mode``
        may also be an :class:`~torchpenalty.updates.UpdateRule`; ``options`` go to the
        rule. Attaching the same Regularizer twice to one optimizer is an error.

        ``mode="corrected"`` (``normalized=``, ``lr_max=``) and ``cautious=True`` (with
        ``"decoupled"``, ``"independent"``, ``"corrected"``): see
        :mod:`torchpenalty.decay_rules`.

        One SGD step in grad mode equals ``torch.optim.SGD(weight_decay=s)``:

        >>> import torch, torchpenalty as tp
        >>> net = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(1.0)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> handle = tp.Regularizer(net, tp.L2(0.5)).attach(opt, mode="grad")
        >>> net.weight.grad = torch.zeros_like(net.weight)  # a zero data gradient
        >>> opt.step(); net.weight  # 1 - 0.1 * 0.5 * 1
        Parameter containing:
        tensor([[0.9500, 0.9500]], requires_grad=True)
        >>> handle.remove()
        """
        handle = attach(
            self,
            optimizer,
            mode,
            advance_schedule=advance_schedule,
            rounding=rounding,
            **options,
        )
        self._handles = [h for h in self._handles if h.active] + [handle]
        return handle

    # ------------------------------------------------------------------ schedule state
    @property
    def step_count(self) -> int:
        """Optimizer steps seen (the argument passed to strength schedules). After compiled
        or captured steps it reads the device counter (one host synchronization)."""
        self._sync_step()
        return self._step

    def _sync_step(self) -> None:
        if self._device_steps:
            self._step = int(self._step_t)
            self._device_steps = False

    def step(self) -> None:
        """Advance strength schedules by one optimizer step. Inside ``torch.compile`` or a
        CUDA-graph capture the step advances on the device and schedules are evaluated in
        their tensor form (no host read)."""
        if tracing():
            self._step_t.add_(1)
            self._device_steps = True
            self._refresh_live()
            return
        self._sync_step()
        self._step += 1
        self._step_t.add_(1)
        self._refresh()

    @torch.no_grad()
    def _refresh(self) -> None:
        for i, (b, s) in enumerate(zip(self._bindings, self._strengths, strict=True)):
            if callable(b.penalty.strength) or self._step == 0:  # schedules, or the first fill
                self._floats[i] = b.penalty.strength_at(self._step)
                s.fill_(self._floats[i])
        if self.activity_hooks is not None:
            self.activity_hooks.refresh(self._step)

    @torch.no_grad()
    def _refresh_live(self) -> None:
        """Strengths at the device step, written in place by tensor operations only."""
        for b, s in zip(self._bindings, self._strengths, strict=True):
            if callable(b.penalty.strength):
                s.copy_(live_strength(b.penalty.strength, self._step_t, repr(b.penalty)))
        if self.activity_hooks is not None:
            self.activity_hooks.refresh(step_tensor=self._step_t)

    def batch_strength(self, index: int) -> float | Tensor:
        """The strength of binding ``index`` for the update rules: the 0-d tensor inside a
        compiled or captured step (read live), the host float otherwise."""
        return self._strengths[index] if tracing() else self._floats[index]

    def check_capturable(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Raise ``ValueError`` naming every setting that a compiled (``torch.compile``) or
        CUDA-graph-captured training step could not read live: a strength schedule without
        a tensor form, a Python-float ``lr`` where the mode reads it, a mode or optimizer
        that needs a host read (``"proximal"`` with RAdam), ``rounding="compensated"`` on
        float16/bfloat16 weights, ``fuse=True`` with a schedule. With ``optimizer``, the
        hooks attached to it are checked too.

        >>> import torch, torchpenalty as tp
        >>> net = torch.nn.Linear(3, 2)
        >>> reg = tp.Regularizer(net, tp.L2(tp.schedules.Linear(0.0, 1e-3, steps=10)))
        >>> opt = torch.optim.SGD(net.parameters(), lr=torch.tensor(0.1))
        >>> _ = reg.attach(opt, mode="decoupled")
        >>> reg.check_capturable(opt)       # nothing to report
        >>> opt.param_groups[0]["lr"] = 0.1
        >>> reg.check_capturable(opt)       # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: this step cannot be compiled or captured with live values: optimizer.param_groups[0]['lr'] must be a tensor...
        """
        found = capture_problems(self, optimizer)
        if found:
            raise ValueError(
                "this step cannot be compiled or captured with live values: " + "; ".join(found)
            )

    def set_strengths(self, strengths: Mapping[str | type, float]) -> None:
        """Set penalty strengths, in effect at once in every mode (``reg()``, ``attach``).

        A key is a regularized parameter's name (it sets the strength of the penalty that
        covers it) or a key of the ``penalty`` dict (fnmatch pattern or module class;
        ``"*"`` when ``penalty`` is a single one). A name is looked up first. Values are
        finite numbers >= 0; a schedule is replaced by the number (it no longer follows the
        step). Names covered by one penalty share its strength, so keys that reach one
        penalty must get equal values. The penalties are updated in place (they are the
        ones in ``reg.penalty`` and ``reg.bindings``).

        >>> import torch, torchpenalty as tp
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(1.0); _ = net[1].weight.fill_(2.0)
        >>> reg = tp.Regularizer(net, {"0.*": tp.L2(0.0), torch.nn.Linear: tp.L2(lambda k: k)})
        >>> reg.set_strengths({"0.weight": 0.5, torch.nn.Linear: 0.1})
        >>> round(reg.value(), 6)   # 0.5/2 * 4 + 0.1/2 * 8
        1.4
        >>> reg.bindings[1].penalty
        L2(strength=0.1)
        """
        if not isinstance(strengths, Mapping):
            raise type_error(
                "strengths", "a dict of parameter names or penalty keys to strengths", strengths
            )
        chosen = self._strength_targets(strengths)
        for pen, value in chosen.values():
            pen.strength = value
        with torch.no_grad():
            for i, (b, t) in enumerate(zip(self._bindings, self._strengths, strict=True)):
                if id(b.penalty) in chosen:
                    self._floats[i] = b.penalty.strength_at(self._step)
                    t.fill_(self._floats[i])

    def _strength_targets(self, strengths: Mapping[Any, Any]) -> dict[int, tuple[Penalty, float]]:
        """``id(penalty) -> (penalty, strength)`` for :meth:`set_strengths`, validated."""
        by_name = {n: b.penalty for b in self._bindings for n in b.names}
        keys = {"*": self.penalty} if isinstance(self.penalty, Penalty) else dict(self.penalty)
        chosen: dict[int, tuple[Penalty, float]] = {}
        first: dict[int, Any] = {}
        for key, value in strengths.items():
            pen = by_name.get(key) if isinstance(key, str) else None
            if pen is None and isinstance(key, (str, type)):
                pen = keys.get(key)
            if pen is None:
                raise value_error(
                    "strengths keys",
                    f"regularized parameter names {sorted(by_name)} or penalty keys "
                    f"{[k if isinstance(k, str) else k.__name__ for k in keys]}",
                    key,
                )
            s = check_strength(f"strengths[{key!r}]", value)
            if not type(pen)._has_strength():
                raise value_error(
                    f"strengths[{key!r}]", "set on a penalty that takes a strength", pen
                )
            old = chosen.setdefault(id(pen), (pen, s))[1]
            if old != s:
                raise ValueError(
                    f"strengths must be equal for keys that share one penalty ({pen!r}: "
                    f"{first[id(pen)]!r} and {key!r}), got {old!r} and {s!r}"
                )
            first.setdefault(id(pen), key)
        return chosen

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_config(
            "state", dict(state) if isinstance(state, Mapping) else state, ("step",), ("step",)
        )
        self._step = check_int("state['step']", state["step"], minimum=0)
        self._device_steps = False
        self._step_t.fill_(self._step)
        self._refresh()

    def __repr__(self) -> str:
        parts = ", ".join(f"{b.penalty!r}: {len(b.params)} tensors" for b in self._bindings)
        return f"Regularizer({parts or 'no parameters'})"


def _check_keys_selected(model, rules, found, include, exclude) -> None:
    """A dict key that matches parameters, all of which the rule left out, is an error
    that says which and why (a silent no-op otherwise)."""
    used = set(found)
    bound = {n for _, ns, _ in found.values() for n in ns}
    rows = None
    entries = _entries(model)
    for key, pen in rules:
        if id(pen) in used:
            continue
        hit = [e.name for e in entries if matches(key, e.name, e.param, e.module)]
        if not hit or any(n in bound for n in hit):
            continue  # matched nothing (already an error) or lost to an earlier key
        if rows is None:
            rows = {r.name: r for r in explain(model, include=include, exclude=exclude)}
        why = "; ".join(f"{n}: {rows[n].reason}" for n in hit[:4] if n in rows)
        more = f" (and {len(hit) - 4} more)" if len(hit) > 4 else ""
        shown = key if isinstance(key, str) else key.__name__
        raise ValueError(
            f"penalty key {shown!r} must match at least one parameter the rule selects, but "
            f"every parameter it matches was excluded: {why}{more}. Pass include= (e.g. "
            f"include={shown!r} or include='*') to bring them in."
        )
