"""The checked arguments of one sweep (:class:`Validated`), shared by the sweep's steps
and its closed-form solver."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..penalties import Penalty

__all__ = ["Validated"]


@dataclass
class Validated:
    """Checked arguments of one sweep: the data as arrays, the loss (inferred when it was
    None), the strength grid, the penalty object and its mode, and every other option."""

    X: np.ndarray
    y: np.ndarray
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    grid: list[float]
    penalty: Penalty
    mode: str
    options: dict[str, Any]
    n_out: int = 0
    fingerprint: str = ""
    groups: np.ndarray | None = None
    test: tuple[np.ndarray, np.ndarray] | None = None
    x_dtype: torch.dtype = torch.float32
    probe_model: Any = None

    def probe(self, make_model: Callable[[], Any]) -> Any:
        """The model ``validate`` built and ran on two rows (never trained), for the
        solvers' questions about its shape, bias and name; one ``make_model()`` call
        (torch's random state untouched) when there is none."""
        if self.probe_model is None:
            with torch.random.fork_rng(devices=[]):
                self.probe_model = make_model()
        return self.probe_model

    @property
    def tabular(self) -> bool:
        """2-D features the model takes as floats: the inputs ``standardize`` scales."""
        return self.X.ndim == 2 and self.x_dtype == torch.float32
