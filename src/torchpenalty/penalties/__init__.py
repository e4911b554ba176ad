"""Penalty classes: validation, config and schedules on top of :mod:`torchpenalty.functional`.

Every penalty is called on a list of tensors and returns a 0-d tensor accumulated in
float32 (float64 if a tensor is wider) on the tensors' device. ``strength`` is a finite
number >= 0 or a schedule (a callable of the optimizer step, see
:mod:`torchpenalty.schedules`).

Strength conventions and conversions from other libraries:

* ``torch.optim.SGD(weight_decay=wd)`` adds ``wd * w`` to the gradient: ``L2(wd)``.
* Keras ``L2(l2)`` is ``l2 * sum w**2``: ``L2(from_keras_l2(l2))`` = ``L2(2 * l2)``.
  Keras ``L1(l1)`` is ``l1 * sum |w|``: ``L1(l1)``.
* scikit-learn ``Ridge(alpha)`` minimizes ``||y - Xw||**2 + alpha * ||w||**2``: on a
  mean-squared loss use ``L2(from_sklearn_ridge(alpha, n))`` = ``L2(2 * alpha / n)``.
* scikit-learn ``Lasso(alpha)`` minimizes ``||y - Xw||**2 / (2n) + alpha * |w|_1``: on a
  mean-squared loss use ``L1(from_sklearn_lasso(alpha))`` = ``L1(2 * alpha)``.
* scikit-learn ``ElasticNet(alpha, l1_ratio=r)`` scales its data term the same way:
  ``ElasticNet(from_sklearn_elasticnet(alpha), l1_ratio=r)`` = ``ElasticNet(2 * alpha, r)``.

>>> import torch, torchpenalty as tp
>>> w = [torch.tensor([[1.0, -2.0], [0.0, 2.0]])]
>>> tp.L2(0.1)(w)          # 0.1/2 * 9
tensor(0.4500)
>>> tp.get("lasso", 0.1)(w)  # 0.1 * 5
tensor(0.5000)
>>> tp.L2.from_config(tp.L2(0.1).get_config())
L2(strength=0.1)
"""

from __future__ import annotations

__all__ = [
    "L1",
    "L2",
    "L2SP",
    "BerHu",
    "Constraint",
    "ElasticNet",
    "GroupLasso",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "Orthogonal",
    "Penalty",
    "Sum",
    "UnitNorm",
    "from_keras_l1",
    "from_keras_l2",
    "from_sklearn_elasticnet",
    "from_sklearn_lasso",
    "from_sklearn_ridge",
    "get",
    "lookup",
    "names",
    "resolve",
    "to_sklearn_elasticnet",
    "to_sklearn_lasso",
    "to_sklearn_ridge",
]

from . import builtin, constraints, conversions  # noqa: F401 (submodules)
from .base import Penalty, StrengthLike, Sum, get, lookup, names, resolve  # noqa: F401
from .builtin import L1, L2, L2SP, BerHu, ElasticNet, GroupLasso, Orthogonal
from .constraints import Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm
from .conversions import (
    from_keras_l1,
    from_keras_l2,
    from_sklearn_elasticnet,
    from_sklearn_lasso,
    from_sklearn_ridge,
    to_sklearn_elasticnet,
    to_sklearn_lasso,
    to_sklearn_ridge,
)
