"""Sweep results: per-strength statistics across folds and the selection rules.

>>> rows = [  # a hand-made table: mean validation loss and its standard error
...     {"strength": 0.01, "val_loss_mean": 1.00, "val_loss_se": 0.10},
...     {"strength": 0.1, "val_loss_mean": 0.90, "val_loss_se": 0.05},
...     {"strength": 1.0, "val_loss_mean": 0.93, "val_loss_se": 0.04},
...     {"strength": 10.0, "val_loss_mean": 1.20, "val_loss_se": 0.10},
... ]
>>> best_index(rows), one_se_index(rows)   # 1.0 is within 0.90 + 0.05 of the minimum
(1, 2)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from .engine import Record

__all__ = ["StandardizedModel", "SweepResult", "best_index", "one_se_index"]


def best_index(rows: list[dict[str, Any]]) -> int:
    """Row with the smallest mean validation loss (first on ties)."""
    means = [r["val_loss_mean"] for r in rows]
    return int(np.nanargmin(means))


def one_se_index(rows: list[dict[str, Any]]) -> int:
    """glmnet's lambda.1se: the row with the largest strength whose mean validation loss
    is within one standard error of the minimum's."""
    b = best_index(rows)
    se = rows[b]["val_loss_se"]
    limit = rows[b]["val_loss_mean"] + (0.0 if math.isnan(se) else se)
    ok = [i for i, r in enumerate(rows) if r["val_loss_mean"] <= limit]
    return max(ok, key=lambda i: rows[i]["strength"])


class StandardizedModel(nn.Module):
    """A model trained on standardized data, wrapped to take and return raw units:
    ``model((x - x_mean) / x_std) * y_std + y_mean`` (no target scaling for classifiers)."""

    def __init__(
        self,
        model: nn.Module,
        x_mean: Tensor,
        x_std: Tensor,
        y_mean: Tensor | None = None,
        y_std: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("x_mean", x_mean)
        self.register_buffer("x_std", x_std)
        self.register_buffer("y_mean", y_mean)
        self.register_buffer("y_std", y_std)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model((x - self.x_mean) / self.x_std)
        if self.y_mean is not None and (out.ndim == 1 or self.y_mean.numel() == out.shape[-1]):
            out = out * self.y_std + self.y_mean
        return out


@dataclass
class SweepResult:
    """What ``tp.sweep`` found. ``table`` has one row per strength (mean and standard error
    of the validation loss across folds, train loss, parameter norm, fraction of exact
    zeros among the regularized parameters); ``records`` one per (strength, fold)."""

    strengths: list[float]
    folds: int
    records: list[Record]
    settings: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    refit: str | None = None

    # ------------------------------------------------------------------ table
    @property
    def complete(self) -> bool:
        return len(self.records) == len(self.strengths) * self.folds

    @property
    def table(self) -> list[dict[str, Any]]:
        rows = []
        for i, s in enumerate(self.strengths):
            recs = [r for r in self.records if r.i == i]
            if not recs:
                continue
            val = np.array([r.val_loss for r in recs])
            row = {
                "strength": s,
                "val_loss_mean": float(val.mean()),
                "val_loss_se": float(val.std(ddof=1) / math.sqrt(len(val)))
                if len(val) > 1
                else math.nan,
                "train_loss_mean": float(np.mean([r.train_loss for r in recs])),
                "param_norm_mean": float(np.mean([r.param_norm for r in recs])),
                "zero_fraction_mean": float(np.mean([r.zero_fraction for r in recs])),
                "folds_done": len(recs),
            }
            if recs[0].val_accuracy is not None:
                row["val_accuracy_mean"] = float(np.mean([r.val_accuracy for r in recs]))
            rows.append(row)
        return rows

    @property
    def best_strength(self) -> float:
        """Strength with the smallest mean validation loss."""
        rows = self.table
        return rows[best_index(rows)]["strength"]

    @property
    def strength_1se(self) -> float:
        """Largest strength whose mean validation loss is within one standard error of
        the minimum (glmnet's lambda.1se): the simplest model as good as the best."""
        rows = self.table
        return rows[one_se_index(rows)]["strength"]

    @property
    def chosen_strength(self) -> float:
        """The strength the refit used (``refit="1se"`` or ``"best"``)."""
        return self.strength_1se if self.refit == "1se" else self.best_strength

    def learning_curves(self, strength: float | None = None) -> dict[str, list[float]]:
        """Mean train and validation loss per epoch across folds at ``strength`` (default:
        the chosen one)."""
        s = self.chosen_strength if strength is None else strength
        i = min(range(len(self.strengths)), key=lambda j: abs(self.strengths[j] - s))
        recs = [r for r in self.records if r.i == i]
        out = {}
        for key in ("train", "val"):
            n = min(len(r.history.get(key, [])) for r in recs)
            out[key] = [float(np.mean([r.history[key][e] for r in recs])) for e in range(n)]
        return out

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "settings": self.settings,
            "strengths": list(self.strengths),
            "folds": self.folds,
            "complete": self.complete,
            "table": self.table,
            "records": [
                {k: v for k, v in r.to_dict().items() if k != "history"} for r in self.records
            ],
        }
        if self.records:
            out["best_strength"] = self.best_strength
            out["strength_1se"] = self.strength_1se
            out["refit"] = self.refit
            out["learning_curves"] = self.learning_curves() if self.complete else None
        return out

    def to_json(self, **kwargs: Any) -> str:
        """The result as JSON (NaN written as null)."""
        return json.dumps(_nan_to_none(self.to_dict()), **kwargs)

    def plot(self, ax: Any = None, kind: str = "validation") -> Any:
        """Plot the validation curve (``kind="validation"``), the parameter norm
        (``"norm"``) or the learning curves (``"learning"``); returns the display."""
        from ..plotting import SweepDisplay

        return SweepDisplay.from_result(self).plot(ax=ax, kind=kind)

    def __repr__(self) -> str:
        if not self.records:
            return "SweepResult(no completed models)"
        return (
            f"SweepResult({len(self.strengths)} strengths x {self.folds} folds, "
            f"best_strength={self.best_strength:.3g}, strength_1se={self.strength_1se:.3g})"
        )


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    return v
