"""Hugging Face transformers: torchpenalty's parameter rule and any penalty in ``Trainer``.

The recipe: turn Trainer's own weight decay off and add the callback::

    args = TrainingArguments(..., weight_decay=0.0)        # Trainer's default, kept at 0
    trainer = Trainer(model, args, train_dataset=...,
                      callbacks=[Regularize(tp.L2(0.01), mode="decoupled")])

With ``optim="adamw_torch"`` this is ``torch.optim.AdamW(weight_decay=0.01)`` on exactly the
parameters ``tp.select(model)`` returns, instead of those of
``Trainer.get_decay_parameter_names`` (which keeps 1-D parameters such as layer-scale
gammas, CLIP's ``logit_scale`` or Mamba's ``D``, and the scales of norm modules whose name
does not contain "norm"). Any penalty and mode work the same way: ``tp.L1`` with
``mode="proximal"``, ``tp.L2SP`` toward the pretrained weights, a strength schedule.

Why a ``TrainerCallback`` and not an ``optimizer_cls_and_kwargs`` / ``create_optimizer``
recipe: Trainer builds its parameter groups from ``get_decay_parameter_names`` whatever
optimizer class it is given, so changing the rule there means subclassing ``Trainer``;
and a weight-decay group only expresses decoupled L2 with the optimizer's own formula. The
callback attaches a :class:`~torchpenalty.Regularizer` to the optimizer Trainer built (any
``optim=``, unwrapped from accelerate's ``AcceleratedOptimizer``) with the optimizer step
hooks, so it needs no subclass, works with every penalty and mode, and inherits Trainer's
handling of gradient accumulation (accelerate calls ``optimizer.step()`` once per
accumulated batch), gradient clipping (done before the step: the penalty's gradient is not
clipped, as ``weight_decay`` is not) and fp16 (``GradScaler`` skips the step, and the
penalty, on inf/NaN).

The strength schedule's position follows ``state.global_step`` (restored by Trainer when it
resumes from a checkpoint). :func:`compare_decay_rule` prints where our rule and Trainer's
differ. Needs ``transformers`` and ``accelerate``: ``pip install torchpenalty[transformers]``.

>>> import torch, torchpenalty as tp
>>> from torchpenalty.integrations.transformers import Regularize, compare_decay_rule
>>> Regularize(tp.L2(0.01))
Regularize(L2(strength=0.01), mode='decoupled')
>>> class Block(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.proj = torch.nn.Linear(4, 4)
...         self.gamma = torch.nn.Parameter(torch.ones(4))   # layer scale
>>> diff = compare_decay_rule(Block())
name   torchpenalty                  Trainer
gamma  no: ndim 1 < 2 (bias or scale)  yes
>>> diff.only_trainer
['gamma']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import nn

from .._validation import check_choice, type_error
from ..optim import ROUNDINGS, AttachHandle
from ..penalties import Penalty
from ..regularizer import Regularizer
from ..select import Matcher, explain
from ..updates import UpdateRule, modes
from . import require

__all__ = ["DecayDiff", "Regularize", "compare_decay_rule", "trainer_decay_names"]

_tf = require("transformers", "transformers")


class Regularize(_tf.TrainerCallback):
    """A ``TrainerCallback`` that regularizes the model Trainer trains with ``penalty``.

    Args:
        penalty: a :class:`~torchpenalty.Penalty`, or a dict of patterns / module classes to
            penalties (as :class:`~torchpenalty.Regularizer` takes).
        mode: ``"decoupled"`` (default: AdamW-style, as Trainer's ``weight_decay``),
            ``"grad"``, ``"independent"``, ``"proximal"`` or ``"loss"``.
        include, exclude: override the default parameter rule (see ``tp.select``).
        rounding: how float16/bfloat16 weights are written (see ``Regularizer.attach``).

    ``TrainingArguments.weight_decay`` must be 0 (else the weights are decayed twice).
    ``callback.regularizer`` is the :class:`~torchpenalty.Regularizer` once training began;
    ``callback.regularizer.value()`` is the penalty for logging.
    """

    def __init__(
        self,
        penalty: Penalty | Mapping[Any, Penalty],
        mode: str = "decoupled",
        *,
        include: Matcher | None = None,
        exclude: Matcher | None = None,
        rounding: str = "stochastic",
    ) -> None:
        if not isinstance(penalty, (Penalty, Mapping)):
            raise type_error("penalty", "a Penalty or a dict of patterns to penalties", penalty)
        self.penalty = penalty
        self.mode = mode if isinstance(mode, UpdateRule) else check_choice("mode", mode, modes())
        self.rounding = check_choice("rounding", rounding, ROUNDINGS)
        self.include, self.exclude = include, exclude
        self.regularizer: Regularizer | None = None
        self.handle: AttachHandle | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.weight_decay and self.mode != "loss":
            raise ValueError(
                "args.weight_decay must be 0 with torchpenalty's Regularize callback (Trainer "
                f"would decay its own parameter set on top of the penalty), got {args.weight_decay}"
            )
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if not isinstance(model, nn.Module) or optimizer is None:
            raise RuntimeError("Trainer called on_train_begin without its model and optimizer")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
        self._detach()
        reg = Regularizer(model, self.penalty, include=self.include, exclude=self.exclude)
        reg.load_state_dict({"step": int(state.global_step)})
        self.handle = reg.attach(optimizer, self.mode, rounding=self.rounding)
        self.regularizer = reg

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._detach()

    def _detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle = None

    def __repr__(self) -> str:
        return f"Regularize({self.penalty!r}, mode={self.mode!r})"


def trainer_decay_names(model: nn.Module, trainer: Any = None) -> list[str]:
    """The parameters ``Trainer.create_optimizer`` puts in its weight-decay group: names from
    ``trainer.get_decay_parameter_names(model)`` (Trainer's rule when ``trainer`` is None)
    that ``model.named_parameters()`` yields with ``requires_grad``, in model order."""
    if trainer is not None:
        names = set(trainer.get_decay_parameter_names(model))
    else:  # the method does not read the trainer; call it unbound
        names = set(_tf.Trainer.get_decay_parameter_names(None, model))
    return [n for n, p in model.named_parameters() if n in names and p.requires_grad]


class DecayDiff(NamedTuple):
    """Where the rules differ: parameters only torchpenalty or only Trainer decays, and
    torchpenalty's reason for each."""

    only_torchpenalty: list[str]
    only_trainer: list[str]
    reasons: dict[str, str]

    def __str__(self) -> str:
        rows = [(n, f"yes: {self.reasons[n]}", "no") for n in self.only_torchpenalty]
        rows += [(n, f"no: {self.reasons[n]}", "yes") for n in self.only_trainer]
        if not rows:
            return "torchpenalty and Trainer decay the same parameters"
        header = ("name", "torchpenalty", "Trainer")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in [header, *rows]]  # fmt: skip
        return "\n".join(lines)


def compare_decay_rule(
    model: nn.Module,
    trainer: Any = None,
    *,
    include: Matcher | None = None,
    exclude: Matcher | None = None,
    quiet: bool = False,
) -> DecayDiff:
    """Compare ``tp.select(model, include=, exclude=)`` with the parameters Trainer decays
    (:func:`trainer_decay_names`), print the differences (unless ``quiet``) and return them.
    Tied parameters count once, under their first name, in both."""
    rows = explain(model, include=include, exclude=exclude)
    ours = {r.name for r in rows if r.regularized}
    theirs = set(trainer_decay_names(model, trainer))
    order = [r.name for r in rows]
    diff = DecayDiff(
        [n for n in order if n in ours and n not in theirs],
        [n for n in order if n in theirs and n not in ours],
        {r.name: r.reason for r in rows if (r.name in ours) != (r.name in theirs)},
    )
    if not quiet:
        print(diff)
    return diff
