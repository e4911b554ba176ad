"""Update rules: how a penalty reaches the weights around an optimizer step.

One small object per rule, one interface (:class:`UpdateRule`), used by both
``Regularizer.attach`` (through optimizer step hooks) and the sweep engine (around its
own ``opt.step()``). A rule sees one :class:`Batch` at a time (one penalty, the
parameters of one optimizer group that have a gradient) and acts before the step
(:meth:`UpdateRule.pre`, the gradients are final), after it (:meth:`UpdateRule.post`), or
both (a rule may keep state between the two, e.g. a snapshot of the weights).

============== ======================================================= ==========
rule           what it does                                            when
============== ======================================================= ==========
``grad``       ``g <- g + grad P(w)`` (coupled; = the penalty in the    before
               loss)
``decoupled``  ``w <- w - lr * grad P(w)`` (AdamW-style, any optimizer) before
``independent````w <- w - (lr / initial_lr) * grad P(w)``              before
``proximal``   ``w <- prox_{lr * c * P}(w)`` in the optimizer's metric after
``corrected``  decoupled with ``lr**2 / lr_max`` for normalized layers  before
``loss``       nothing (``reg()`` is in the loss)                      -
============== ======================================================= ==========

Low-precision writes are a wrapper, not a flag: :class:`Rounded` runs any rule that
writes weights on float32 copies of float16/bfloat16 weights and writes them back by
stochastic rounding, with a float32 residual ("compensated") or to nearest. Rules are
chosen by name with :func:`make_rule`; a new rule is one subclass with a ``name``.
``Cautious`` wraps a decoupled-family rule (``attach(..., cautious=True)``).

Modules: ``base`` (interface, registry, batch), ``basic``, ``proximal`` (with the
optimizer metrics), ``rounding`` (:class:`Rounded`, :func:`make_rule`), ``corrected``,
``cautious``.

The proximal step follows the optimizer's metric (:func:`step_metric`): a proximal
gradient step ``w <- prox(w - lr * c * g / d)`` must threshold at ``lr * c * s / d``
for its fixed points to solve ``min f(w) + P(w)``. ``c`` and ``d`` are read from each
optimizer's own state and conventions (SGD momentum/dampening; Adam, AdamW, Adamax,
NAdam, RAdam, RMSprop, Adagrad bias corrections and eps). Constraints are projections
and stay Euclidean.

>>> import torch
>>> from torchpenalty import L1
>>> w = torch.nn.Parameter(torch.tensor([0.5, -2.0])); w.grad = torch.zeros(2)
>>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
>>> opt.step()
>>> rule = make_rule("proximal")
>>> rule.post(Batch(L1(1.0), [w.data], [w.grad], ["w"], [w], opt, opt.param_groups[0]))
>>> w.data   # threshold lr * s / (1 - momentum) = 1.0
tensor([ 0., -1.])
"""

from __future__ import annotations

from .base import ROUNDINGS, RULES, Batch, UpdateRule, bind_rule, modes
from .basic import Decoupled, Grad, Independent, Loss
from .cautious import Cautious, cautious_decay_, cautious_rule
from .corrected import Corrected, normalized_weights
from .proximal import SUPPORTED, Proximal, step_metric
from .rounding import Rounded, make_rule

__all__ = [
    "ROUNDINGS",
    "RULES",
    "SUPPORTED",
    "Batch",
    "Cautious",
    "Corrected",
    "Decoupled",
    "Grad",
    "Independent",
    "Loss",
    "Proximal",
    "Rounded",
    "UpdateRule",
    "bind_rule",
    "cautious_decay_",
    "cautious_rule",
    "make_rule",
    "modes",
    "normalized_weights",
    "step_metric",
]
