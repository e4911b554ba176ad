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
