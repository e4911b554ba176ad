"""The table that drives the common checks of update rules, as ``tests/cases.py`` does for
penalties: each ``RuleInfo`` names a registered mode (or a wrapped form of one) and gives
an independent NumPy reference for one plain-SGD step on ``L2(s)``: ``w`` the weight before
the step, ``g`` the loss gradient, ``lr`` the learning rate. A new rule is one class plus
one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RuleInfo:
    mode: str
    step: Callable[[np.ndarray, np.ndarray, float, float], np.ndarray]
    options: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    @property
    def name(self) -> str:
        return self.id or self.mode


def _cautious(w, g, lr, s):
    decay = s * w
    mask = (g * decay) >= 0  # the update u = g agrees with the decay direction
    return w - lr * g - lr * mask * decay


RULES = [
    RuleInfo("loss", lambda w, g, lr, s: w - lr * g),  # the penalty is in the loss, not here
    RuleInfo("grad", lambda w, g, lr, s: w - lr * (g + s * w)),
    RuleInfo("decoupled", lambda w, g, lr, s: w * (1 - lr * s) - lr * g),
    RuleInfo("independent", lambda w, g, lr, s: w * (1 - s) - lr * g),  # lr / initial_lr = 1
    RuleInfo("corrected", lambda w, g, lr, s: w * (1 - lr * s) - lr * g),  # no norm layer
    RuleInfo("proximal", lambda w, g, lr, s: (w - lr * g) / (1 + lr * s)),
    RuleInfo("decoupled", _cautious, {"cautious": True}, id="decoupled-cautious"),
]
