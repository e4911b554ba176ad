"""PyTorch Lightning: ``Regularize``, a callback that regularizes a ``LightningModule``.

``Regularize(penalty, mode="grad")`` builds a :class:`~torchpenalty.Regularizer` on the
module when ``fit`` starts (after Lightning has built the optimizers, and after a checkpoint
was restored) and attaches it to every optimizer that holds a regularized parameter, with
the optimizer step hooks of ``Regularizer.attach``. The update is then exactly the one of
the same training written by hand with ``reg.attach(optimizer, mode=...)``:

* Lightning's automatic optimization passes a closure (forward and backward) to
  ``optimizer.step(closure)``; ``attach``'s step hook runs the penalty right after that
  closure returns, so it acts on this step's gradients and weights;

* gradient accumulation (``Trainer(accumulate_grad_batches=N)``): Lightning calls
  ``optimizer.step()`` once per ``N`` micro-batches, so the penalty's gradient (or decay,
  or proximal step) is applied once per optimizer step, not once per micro-batch;
* precision plugins: with ``"16-mixed"`` Lightning unscales the gradients before
  ``GradScaler.step``, which skips ``optimizer.step()`` (and so the penalty) when it found
  inf/NaN; ``"bf16-mixed"`` keeps float32 weights; ``"bf16-true"`` / ``"16-true"`` weights
  get decoupled and proximal updates with stochastic rounding (``rounding=``). On CPU,
  Lightning itself turns ``precision="16-mixed"`` into ``"bf16-mixed"``; a float16
  ``MixedPrecision`` plugin with a CPU ``GradScaler`` works (it is what the tests run);
* manual optimization: ``self.optimizers().step()`` calls the wrapped optimizer's
  ``step()``, so the hooks run there too, once per step you take;
* gradient clipping happens before ``optimizer.step()``, so the penalty's gradient is not
  clipped (as ``weight_decay`` inside a torch optimizer is not).

``mode`` is one of ``"grad"``, ``"decoupled"``, ``"independent"``, ``"proximal"`` or
``"loss"``; with ``"loss"`` the callback only advances strength schedules and you add
``callback.regularizer()`` to the loss in ``training_step`` yourself. Strength schedules
advance once per step of the first optimizer that holds regularized parameters.

The penalty's value is logged with ``pl_module.log(name, reg.value())`` after every
training batch (``log=False`` turns that off), and the schedule position is saved in the
checkpoint (``state_dict`` / ``load_state_dict``) under a key built from ``name``; give two
``Regularize`` callbacks of one Trainer different names.

Needs ``lightning`` (or the older ``pytorch_lightning`` package):
``pip install torchpenalty[lightning]``.

>>> import torch, torchpenalty as tp
>>> from torchpenalty.integrations.lightning import Regularize
>>> cb = Regularize(tp.L2(1e-4), mode="decoupled")
>>> cb
Regularize(L2(strength=0.0001), mode='decoupled', name='reg')
>>> # trainer = lightning.Trainer(callbacks=[cb]); trainer.fit(module)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._validation import check_choice, check_config, type_error
from ..optim import ROUNDINGS, AttachHandle
from ..penalties import Penalty
from ..regularizer import Regularizer
from ..select import Matcher
from ..updates import UpdateRule, modes
from . import require

__all__ = ["Regularize"]

_pl = require("lightning.pytorch", "lightning", fallback="pytorch_lightning")


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a ``LightningOptimizer`` (or the optimizer itself)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, torch.optim.Optimizer):
        raise type_error("trainer.optimizers[i]", "a torch.optim.Optimizer", optimizer)
    return inner


class Regularize(_pl.Callback):
    """Regularize the ``LightningModule`` being fit with ``penalty`` through its optimizers.

    Args:
        penalty: a :class:`~torchpenalty.Penalty`, or a dict of patterns / module classes to
            penalties (as :class:`~torchpenalty.Regularizer` takes).
        mode: how the penalty reaches the weights (see ``Regularizer.attach``).
        include, exclude: override the default parameter rule (see ``tp.select``).
        log: log ``reg.value()`` with ``pl_module.log`` after every training batch.
        name: the logged metric's name and the checkpoint state's key.
        rounding: how float16/bfloat16 weights are written (see ``Regularizer.attach``).

    ``callback.regularizer`` is the :class:`~torchpenalty.Regularizer` (``None`` before
    ``fit`` starts) and ``callback.handles`` the attach handles, one per optimizer.
    """

    def __init__(
        self,
        penalty: Penalty | Mapping[Any, Penalty],
        mode: str = "grad",
        *,
        include: Matcher | None = None,
        exclude: Matcher | None = None,
        log: bool = True,
        name: str = "reg",
        rounding: str = "stochastic",
    ) -> None:
        super().__init__()
        if not isinstance(penalty, (Penalty, Mapping)):
            raise type_error("penalty", "a Penalty or a dict of patterns to penalties", penalty)
        if not isinstance(name, str) or not name:
            raise type_error("name", "a non-empty string", name)
        if not isinstance(log, bool):
            raise type_error("log", "a bool", log)
        self.penalty = penalty
        self.mode = mode if isinstance(mode, UpdateRule) else check_choice("mode", mode, modes())
        self.rounding = check_choice("rounding", rounding, ROUNDINGS)
        self.include, self.exclude = include, exclude
        self._log, self.name = log, name
        self.regularizer: Regularizer | None = None
        self.handles: list[AttachHandle] = []
        self._pending: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return f"Regularize[{self.name}]"

    # ------------------------------------------------------------------ fit lifecycle
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._detach()
        state = self._pending
        if state is None and self.regularizer is not None:  # a later fit goes on counting
            state = self.regularizer.state_dict()
        reg = Regularizer(pl_module, self.penalty, include=self.include, exclude=self.exclude)
        if state is not None:
            reg.load_state_dict(state)
            self._pending = None
        ids = {id(p) for p in reg.parameters()}
        optimizers = [_unwrap(o) for o in trainer.optimizers]
        holding = [
            o for o in optimizers if any(id(p) in ids for g in o.param_groups for p in g["params"])
        ]
        if reg.parameters() and not holding:
            raise ValueError(
                "trainer.optimizers must hold at least one regularized parameter, got none "
                f"of {reg.names[:3]} in {len(optimizers)} optimizer(s)"
            )
        for i, opt in enumerate(holding):
            self.handles.append(
                reg.attach(opt, self.mode, advance_schedule=i == 0, rounding=self.rounding)
            )
        self.regularizer = reg

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._log and self.regularizer is not None:
            pl_module.log(self.name, self.regularizer.value(), on_step=True, on_epoch=False)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._detach()

    def _detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        if self.regularizer is not None:
            return {"regularizer": self.regularizer.state_dict()}
        return {"regularizer": dict(self._pending or {"step": 0})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = check_config("state_dict", state_dict, ("regularizer",), ("regularizer",))
        # Restored before fit starts: applied when on_fit_start builds the Regularizer.
        self._pending = dict(state["regularizer"])
        if self.regularizer is not None:
            self.regularizer.load_state_dict(self._pending)

    def __repr__(self) -> str:
        return f"Regularize({self.penalty!r}, mode={self.mode!r}, name={self.name!r})"
