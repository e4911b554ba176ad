"""Which step-hook handles are live on each optimizer: the record that
:func:`torchpenalty.hooks.attach` writes and that :mod:`torchpenalty.hooks` (its
double-attach guards) and :mod:`torchpenalty._capture` (the capture checks) read.

It imports nothing of the package, so both can read it without importing each other.

>>> import torch
>>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
>>> handles_on(opt)
[]
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["ATTACHED", "handles_on"]

ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""optimizer -> the :class:`~torchpenalty.hooks.AttachHandle` objects attached to it, in
attach order (a removed handle takes itself out)."""


def handles_on(optimizer: Any, reg: Any = None) -> list[Any]:
    """The live handles (:class:`~torchpenalty.hooks.AttachHandle`) attached to
    ``optimizer`` (those of ``reg`` only, if given)."""
    return [
        h for h in ATTACHED.get(optimizer, []) if h.active and (reg is None or h.regularizer is reg)
    ]
