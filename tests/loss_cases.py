"""The table of sweep losses (``torchpenalty.sweep.losses``): each row gives a NumPy
reference for the per-row loss and the kind of target it takes, so a new loss is one class
plus one row here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LossInfo:
    name: str
    rows: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (rows, k) outputs, targets -> (rows,)
    labels: bool = False


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _huber(out, y, delta=1.0):
    a = np.abs(out - y.reshape(out.shape))
    return np.where(a <= delta, 0.5 * a**2, delta * (a - 0.5 * delta)).mean(-1)


LOSSES = [
    LossInfo("mse", lambda out, y: ((out - y.reshape(out.shape)) ** 2).mean(-1)),
    LossInfo("cross_entropy", lambda out, y: -_log_softmax(out)[np.arange(len(y)), y], labels=True),
    LossInfo("huber", _huber),
]
