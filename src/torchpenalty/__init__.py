"""torchpenalty: regularization for PyTorch done right.

>>> import torch, torchpenalty as tp
>>> model = torch.nn.Linear(3, 1)
>>> reg = tp.Regularizer(model, tp.L2(1e-4))
>>> reg.names
['weight']
"""

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
from .select import ExplainRow, explain, select

__version__ = "0.1.0"

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
    "__version__",
    "explain",
    "from_keras_l1",
    "from_keras_l2",
    "from_sklearn_elasticnet",
    "from_sklearn_lasso",
    "from_sklearn_ridge",
    "functional",
    "get",
    "param_groups",
    "schedules",
    "select",
    "to_sklearn_elasticnet",
    "to_sklearn_lasso",
    "to_sklearn_ridge",
]
