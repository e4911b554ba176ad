"""torchpenalty: regularization for PyTorch done right.

Names are imported on first use, so ``import torchpenalty`` (and the command line's
``--help``) do not import torch until a name needs it. ``tp.select`` and ``tp.sweep`` share
their names with submodules; both modules are callable, so either binding works.

>>> import torch, torchpenalty as tp
>>> model = torch.nn.Linear(3, 1)
>>> reg = tp.Regularizer(model, tp.L2(1e-4))
>>> reg.names
['weight']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "functional": None,
    "schedules": None,
    "MODES": "optim",
    "AttachHandle": "optim",
    "param_groups": "optim",
    "L1": "penalties",
    "L2": "penalties",
    "L2SP": "penalties",
    "ElasticNet": "penalties",
    "GroupLasso": "penalties",
    "Orthogonal": "penalties",
    "Penalty": "penalties",
    "from_keras_l1": "penalties",
    "from_keras_l2": "penalties",
    "from_sklearn_elasticnet": "penalties",
    "from_sklearn_lasso": "penalties",
    "from_sklearn_ridge": "penalties",
    "get": "penalties",
    "to_sklearn_elasticnet": "penalties",
    "to_sklearn_lasso": "penalties",
    "to_sklearn_ridge": "penalties",
    "Regularizer": "regularizer",
    "load_sweep": "report",
    "ExplainRow": "select",
    "explain": "select",
    "select": "select",
    "SweepInterrupted": "sweep",
    "SweepResult": "sweep",
    "default_strengths": "sweep",
    "sweep": "sweep",
}

__all__ = [
    "L1",
    "L2",
    "L2SP",
    "MODES",
    "AttachHandle",
    "ElasticNet",
    "ExplainRow",
    "GroupLasso",
    "Orthogonal",
    "Penalty",
    "Regularizer",
    "SweepInterrupted",
    "SweepResult",
    "__version__",
    "default_strengths",
    "explain",
    "from_keras_l1",
    "from_keras_l2",
    "from_sklearn_elasticnet",
    "from_sklearn_lasso",
    "from_sklearn_ridge",
    "functional",
    "get",
    "load_sweep",
    "param_groups",
    "schedules",
    "select",
    "sweep",
    "to_sklearn_elasticnet",
    "to_sklearn_lasso",
    "to_sklearn_ridge",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'torchpenalty' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    from . import functional, schedules
    from .optim import MODES, AttachHandle, param_groups
    from .penalties import (
        L1,
        L2,
        L2SP,
        ElasticNet,
        GroupLasso,
        Orthogonal,
        Penalty,
        from_keras_l1,
        from_keras_l2,
        from_sklearn_elasticnet,
        from_sklearn_lasso,
        from_sklearn_ridge,
        get,
        to_sklearn_elasticnet,
        to_sklearn_lasso,
        to_sklearn_ridge,
    )
    from .regularizer import Regularizer
    from .report import load_sweep
    from .select import ExplainRow, explain, select
    from .sweep import SweepInterrupted, SweepResult, default_strengths, sweep
