"""Choosing the strength: vectorized cross-validated sweeps (see :func:`sweep`)."""

import sys as _sys
import types as _types

from .core import SweepInterrupted, default_strengths, sweep
from .folds import Standardizer, kfold, stratified_kfold
from .result import StandardizedModel, SweepResult, best_index, one_se_index

__all__ = [
    "StandardizedModel",
    "Standardizer",
    "SweepInterrupted",
    "SweepResult",
    "best_index",
    "default_strengths",
    "kfold",
    "one_se_index",
    "stratified_kfold",
    "sweep",
]


class _CallableModule(_types.ModuleType):
    """``torchpenalty.sweep`` is both this package and the function ``tp.sweep``; whichever
    of the two Python binds to the name, calling it runs the sweep."""

    def __call__(self, *args, **kwargs):
        return sweep(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
