"""Displays for sweep results. matplotlib is imported only when plotting.

Compute first, plot second: ``SweepDisplay.from_result(result)`` holds arrays, and
``.plot(ax=None, kind=...)`` draws them and returns the display (``.figure_``, ``.ax_``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ._validation import check_choice

__all__ = ["SweepDisplay"]


@dataclass
class SweepDisplay:
    strengths: list[float]
    val_mean: list[float]
    val_se: list[float]
    train_mean: list[float]
    param_norm: list[float]
    zero_fraction: list[float]
    best_strength: float
    strength_1se: float
    penalty: str = "l2"
    loss: str = "mse"
    curves: dict[str, list[float]] = field(default_factory=dict)
    chosen_strength: float | None = None
    figure_: Any = None
    ax_: Any = None

    @classmethod
    def from_result(cls, result: Any) -> SweepDisplay:
        rows = result.table
        return cls(
            strengths=[r["strength"] for r in rows],
            val_mean=[r["val_loss_mean"] for r in rows],
            val_se=[0.0 if math.isnan(r["val_loss_se"]) else r["val_loss_se"] for r in rows],
            train_mean=[r["train_loss_mean"] for r in rows],
            param_norm=[r["param_norm_mean"] for r in rows],
            zero_fraction=[r["zero_fraction_mean"] for r in rows],
            best_strength=result.best_strength,
            strength_1se=result.strength_1se,
            penalty=str(result.settings.get("penalty", {}).get("name", "l2")),
            loss=str(result.settings.get("loss", "mse")),
            curves=result.learning_curves() if result.complete else {},
            chosen_strength=result.chosen_strength,
        )

    def plot(self, ax: Any = None, kind: str = "validation") -> SweepDisplay:
        """Draw ``kind``: ``"validation"`` (mean +- SE across folds vs strength, best and
        1-SE marked), ``"norm"`` (parameter norm and fraction of zeros vs strength) or
        ``"learning"`` (train and validation loss per epoch at the chosen strength)."""
        kind = check_choice("kind", kind, ("validation", "norm", "learning"))
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4))
        else:
            fig = ax.figure
        getattr(self, "_" + kind)(ax)
        self.figure_, self.ax_ = fig, ax
        return self

    def _xscale(self, ax: Any) -> None:
        if all(s > 0 for s in self.strengths):
            ax.set_xscale("log")
        else:  # a strength of 0 has no place on a log axis
            ax.set_xscale("symlog", linthresh=min([s for s in self.strengths if s > 0] or [1e-6]))
        ax.set_xlabel(f"strength ({self.penalty})")

    def _validation(self, ax: Any) -> None:
        lo = [m - s for m, s in zip(self.val_mean, self.val_se, strict=True)]
        hi = [m + s for m, s in zip(self.val_mean, self.val_se, strict=True)]
        ax.fill_between(self.strengths, lo, hi, alpha=0.25, color="C0", label="validation ± 1 SE")
        ax.plot(self.strengths, self.val_mean, "o-", color="C0", label="validation (mean of folds)")
        ax.plot(self.strengths, self.train_mean, "s--", color="C1", alpha=0.8, label="train")
        if self.best_strength == self.strength_1se:
            label = f"best = 1-SE = {self.best_strength:.3g}"
            ax.axvline(self.best_strength, color="C3", ls="-.", label=label)
        else:
            ax.axvline(
                self.best_strength, color="C2", ls=":", label=f"best = {self.best_strength:.3g}"
            )
            ax.axvline(
                self.strength_1se, color="C3", ls="-.", label=f"1-SE = {self.strength_1se:.3g}"
            )
        self._xscale(ax)
        ax.set_ylabel(self._loss_label())
        ax.set_title("Validation curve")
        ax.legend(fontsize="small")

    def _loss_label(self) -> str:
        return {"mse": "mean squared error", "cross_entropy": "cross-entropy"}.get(
            self.loss, "loss"
        )

    def _norm(self, ax: Any) -> None:
        ax.plot(self.strengths, self.param_norm, "o-", color="C0", label="||regularized weights||")
        self._xscale(ax)
        ax.set_ylabel("parameter norm")
        ax.set_title("Shrinkage")
        if any(z > 0 for z in self.zero_fraction):
            ax2 = ax.twinx()
            ax2.plot(
                self.strengths,
                self.zero_fraction,
                "s--",
                color="C3",
                label="fraction of exact zeros",
            )
            ax2.set_ylabel("fraction of exact zeros")
            ax2.set_ylim(0, 1)
            ax2.legend(loc="center right", fontsize="small")
        ax.legend(loc="upper right", fontsize="small")

    def _learning(self, ax: Any) -> None:
        if not self.curves:
            ax.text(
                0.5,
                0.5,
                "no learning curves (incomplete sweep)",
                ha="center",
                transform=ax.transAxes,
            )
            return
        epochs = range(1, len(self.curves["val"]) + 1)
        ax.plot(epochs, self.curves["train"], color="C1", label="train")
        ax.plot(epochs, self.curves["val"], color="C0", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{self._loss_label()} (mean of folds)")
        ax.set_yscale("log")
        ax.set_title(f"Learning curves at strength {self.chosen_strength:.3g}")
        ax.legend(fontsize="small")
