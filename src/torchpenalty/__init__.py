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
    "one_graph_step": "optim",
    "Evidence": "evidence",
    "fit_evidence": "evidence",
    "L1": "penalties",
    "L2": "penalties",
    "L2SP": "penalties",
    "ElasticNet": "penalties",
    "GroupLasso": "penalties",
    "BerHu": "penalties",
    "Orthogonal": "penalties",
    "Penalty": "penalties",
    "updates": None,
    "activity": None,
    "resolve": "penalties",
    "Sum": "penalties",
    "UnitNorm": "penalties",
    "NonNeg": "penalties",
    "MinMaxNorm": "penalties",
    "MaxNorm": "penalties",
    "Constraint": "penalties",
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
    "compact": "compact",
    "load_sweep": "report",
    "ExplainRow": "select",
    "explain": "select",
    "select": "select",
    "muon_param_groups": "muon",
    "normalized_weights": "updates",
    "Timescale": "timescale",
    "timescale": "timescale",
    "transfer_strength": "timescale",
    "DecayStats": "stats",
    "stats": "stats",
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
    "BerHu",
    "Constraint",
    "DecayStats",
    "ElasticNet",
    "Evidence",
    "ExplainRow",
    "GroupLasso",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "Orthogonal",
    "Penalty",
    "Regularizer",
    "Sum",
    "SweepInterrupted",
    "SweepResult",
    "Timescale",
    "UnitNorm",
    "__version__",
    "activity",
    "compact",
    "default_strengths",
    "explain",
    "fit_evidence",
    "from_keras_l1",
    "from_keras_l2",
    "from_sklearn_elasticnet",
    "from_sklearn_lasso",
    "from_sklearn_ridge",
    "functional",
    "get",
    "load_sweep",
    "muon_param_groups",
    "normalized_weights",
    "one_graph_step",
    "param_groups",
    "resolve",
    "schedules",
    "select",
    "stats",
    "sweep",
    "timescale",
    "to_sklearn_elasticnet",
    "to_sklearn_lasso",
    "to_sklearn_ridge",
    "transfer_strength",
    "updates",
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
    from . import activity, functional, schedules, updates
    from .compact import compact
    from .evidence import Evidence, fit_evidence
    from .muon import muon_param_groups
    from .optim import MODES, AttachHandle, one_graph_step, param_groups
    from .penalties import (
        L1,
        L2,
        L2SP,
        BerHu,
        Constraint,
        ElasticNet,
        GroupLasso,
        MaxNorm,
        MinMaxNorm,
        NonNeg,
        Orthogonal,
        Penalty,
        Sum,
        UnitNorm,
        from_keras_l1,
        from_keras_l2,
        from_sklearn_elasticnet,
        from_sklearn_lasso,
        from_sklearn_ridge,
        get,
        resolve,
        to_sklearn_elasticnet,
        to_sklearn_lasso,
        to_sklearn_ridge,
    )
    from .regularizer import Regularizer
    from .report import load_sweep
    from .select import ExplainRow, explain, select
    from .stats import DecayStats, stats
    from .sweep import SweepInterrupted, SweepResult, default_strengths, sweep
    from .timescale import Timescale, timescale, transfer_strength
    from .updates import normalized_weights
