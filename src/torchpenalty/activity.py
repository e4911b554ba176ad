"""Activity (output) penalties, as Keras's ``activity_regularizer``: forward hooks take
the penalty of chosen modules' outputs, and ``reg()`` adds it to the loss.

Reduction (``activity_reduction=``), following the Keras version in use:

* ``"batch_mean"`` (the default): the penalty of each output divided by its batch size
  ``output.shape[0]`` (a 0-d output is not divided). Keras >= 3.14 does this
  (keras-team/keras#22021, fixing #22018: ``Layer.__call__`` divides
  ``activity_regularizer(output)`` by the batch size, as its documentation had always
  said), and so did tf.keras 2.
* ``"sum"``: the penalty of the whole output, not divided: Keras 3.0 to 3.13, where
  ``L1(l1)`` on an output is ``l1 * sum |y|`` over the whole batch, so the strength
  scales with the batch size.

The hooks keep only the penalty value (a 0-d tensor with its graph), never the
activation itself, only while autograd is recording, and ``reg()`` takes (and clears)
what the forward passes since the last call left. Under gradient accumulation over
``N`` micro-batches, ``reg(accumulation_steps=N)`` after each micro-batch gives the
full batch's gradient: with ``"sum"`` the micro-batch sums add up to the batch's sum
(not divided by ``N``); with ``"batch_mean"`` they are divided by ``N``. Strengths are
read from 0-d tensors (refreshed in place when a schedule advances), so the hooks work
inside ``torch.compile`` and CUDA-graph capture.

>>> import torch, torchpenalty as tp
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
>>> reg = tp.Regularizer(net, tp.L2(0.0), activity={"1": tp.L1(0.5)})
>>> out = net(torch.ones(4, 2))
>>> with torch.no_grad():   # no_grad: evaluation passes are not recorded
...     h = net[1](net[0](torch.ones(4, 2)))
>>> torch.isclose(reg(), 0.5 * h.abs().sum() / 4)   # Keras >= 3.14: / batch size 4
tensor(True)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import check_choice, type_error
from .penalties import Penalty

__all__ = ["REDUCTIONS", "ActivityHooks"]

#: ``activity_reduction`` choices: Keras >= 3.14 and tf.keras 2 (default); Keras 3.0-3.13.
REDUCTIONS = ("batch_mean", "sum")


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _match(key: Any, name: str, module: nn.Module) -> bool:
    if isinstance(key, str):
        return fnmatch.fnmatchcase(name, key)
    return isinstance(module, key)


class ActivityHooks:
    """Forward hooks that take ``penalty(output)`` of the modules matched by each key of
    ``spec`` (module names or fnmatch patterns of ``model.named_modules()``, or module
    classes; the first matching key wins). ``remove()`` detaches them. ``strengths`` holds
    each penalty's strength as a 0-d tensor (by ``id`` of the penalty), refreshed by
    :meth:`refresh` when a schedule advances."""

    def __init__(
        self,
        model: nn.Module,
        spec: Mapping[Any, Penalty],
        *,
        reduction: str = "batch_mean",
        step: Callable[[], int] = lambda: 0,
    ) -> None:
        if not isinstance(spec, Mapping) or not spec:
            raise type_error(
                "activity", "a non-empty dict of module names/classes to penalties", spec
            )
        self.reduction = check_choice("activity_reduction", reduction, REDUCTIONS)
        self._pending: list[Tensor] = []
        self.modules: dict[str, Penalty] = {}
        self._handles = []
        named = list(model.named_modules())
        for key, pen in spec.items():
            if not isinstance(key, (str, type)):
                raise type_error("activity keys", "module names, fnmatch patterns or classes", key)
            if not isinstance(pen, Penalty) or pen.is_constraint:
                raise type_error(f"activity[{key!r}]", "a penalty (not a constraint)", pen)
            if not any(_match(key, n, m) for n, m in named):
                example = ", ".join(repr(n) for n, _ in named[1:4]) or "none"
                shown = key if isinstance(key, str) else key.__name__
                raise ValueError(
                    f"activity key {shown!r} must match at least one module of the model, "
                    f"got none (module names look like {example})"
                )
        for name, module in named:
            pen = next((p for k, p in spec.items() if _match(k, name, module)), None)
            if pen is not None:
                self.modules[name] = pen
                self._handles.append(module.register_forward_hook(self._hook(pen)))
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.strengths = {
            id(p): torch.zeros((), dtype=torch.float32, device=device) for p in spec.values()
        }
        self._penalties = {id(p): p for p in spec.values()}
        self.refresh(step())

    @torch.no_grad()
    def refresh(self, step: int | None = None, step_tensor: Tensor | None = None) -> None:
        """Write each penalty's strength at ``step`` (host) or at ``step_tensor`` (a 0-d
        tensor: schedules in their tensor form, for compiled and captured steps) into
        :attr:`strengths`, in place."""
        from ._capture import live_strength

        for key, pen in self._penalties.items():
            if step_tensor is None:
                self.strengths[key].fill_(pen.strength_at(step or 0))
            elif callable(pen.strength):
                live = live_strength(pen.strength, step_tensor, f"activity penalty {pen!r}")
                self.strengths[key].copy_(live)

    def _hook(self, pen: Penalty):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if not torch.is_grad_enabled():
                return
            strength = self.strengths[id(pen)]
            for t in _tensors(out):
                if t.is_floating_point() or t.is_complex():
                    v = pen.value([t], strength=strength)
                    if self.reduction == "batch_mean" and t.ndim:
                        v = v / t.shape[0]
                    self._pending.append(v)

        return hook

    @property
    def pending(self) -> int:
        """Penalty values taken by forward passes and not yet collected by ``take()``."""
        return len(self._pending)

    def take(self) -> Tensor | None:
        """The sum of the pending values (then cleared), or ``None``."""
        if not self._pending:
            return None
        # cleared in place: under torch.compile a list left holding values would make
        # them outputs of the graph (leaked, after backward consumed them)
        vals = list(self._pending)
        self._pending.clear()
        total = vals[0]
        for v in vals[1:]:
            total = total + v.to(total.device)
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pending = []

    def __repr__(self) -> str:
        return f"ActivityHooks({self.modules!r}, reduction={self.reduction!r})"
