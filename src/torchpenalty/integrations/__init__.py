"""Integrations with training frameworks; each submodule imports its framework lazily.

* :mod:`torchpenalty.integrations.lightning`: ``Regularize``, a PyTorch Lightning callback
  (``pip install torchpenalty[lightning]``);
* :mod:`torchpenalty.integrations.transformers`: Hugging Face ``Trainer`` support
  (``pip install torchpenalty[transformers]``).

Importing this package imports neither framework.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

__all__: list[str] = []


def require(module: str, extra: str, *, fallback: str | None = None) -> ModuleType:
    """Import ``module`` (or ``fallback``), or raise an ``ImportError`` that names the
    extra to install.

    >>> require("math", "none").sqrt(4.0)
    2.0
    >>> require("no_such_framework_xyz", "lightning")
    Traceback (most recent call last):
    ...
    ImportError: torchpenalty's lightning integration needs no_such_framework_xyz: pip install torchpenalty[lightning]
    """
    try:
        return importlib.import_module(module)
    except ImportError as first:
        if fallback is not None:
            try:
                return importlib.import_module(fallback)
            except ImportError:
                pass
        raise ImportError(
            f"torchpenalty's {extra} integration needs {module}: pip install torchpenalty[{extra}]"
        ) from first


def closure_first(optimizer: Any, args: tuple, kwargs: dict) -> Any:
    """Optimizer step pre-hook: run the closure passed to ``optimizer.step(closure)`` now
    and hand ``step()`` a closure that returns the cached result, so that the step
    pre-hooks registered after this one (``Regularizer.attach``'s) see this step's
    gradients. A no-op when no closure is passed.

    Lightning's automatic optimization and accelerate pass such a closure (forward and
    backward run inside it, after the pre-hooks): without this hook, ``mode="grad"`` would
    add the penalty's gradient before the gradients exist, and ``"decoupled"`` would decay
    the weights before the gradient is taken.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> seen = []
    >>> _ = opt.register_step_pre_hook(closure_first)
    >>> _ = opt.register_step_pre_hook(lambda o, a, k: seen.append(w.grad.tolist()))
    >>> def closure():
    ...     opt.zero_grad(); loss = (w ** 2).sum(); loss.backward(); return loss
    >>> float(opt.step(closure)), seen   # the second hook saw the closure's gradients
    (2.0, [[2.0, 2.0]])
    """
    # args[0] is the optimizer itself; a closure comes next or as a keyword
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if closure is None:
        return None
    with torch.enable_grad():
        result = closure()

    def cached() -> Any:
        return result

    if "closure" in kwargs:
        return args, {**kwargs, "closure": cached}
    return (args[0], cached, *args[2:]), kwargs
