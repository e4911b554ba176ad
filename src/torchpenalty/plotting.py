"""Displays for sweep results. matplotlib is imported only when plotting.

Compute first, plot second: ``SweepDisplay.from_result(result)`` holds arrays, and
``.plot(ax=None, kind=...)`` draws them and returns the display (``.figure_``, ``.ax_``).

Every plot is titled with the data and the model, marks the strength the refit used,
keeps its legend outside the axes (so it never hides a curve or a marker), writes the
result's warnings under the axes, and puts a loss axis that spans more than a factor
:data:`LOG_SPAN` on a log scale (so the minimum of a curve is not flattened by its far
end). A figure made here uses matplotlib's constrained layout, which keeps the legend
and the warnings inside the saved image; on an ``ax`` of your own, save with
``bbox_inches="tight"``.

>>> disp = SweepDisplay(strengths=[0.1, 1.0], val_mean=[1.0, 2.0], val_se=[0.1, 0.1],
...     train_mean=[0.5, 1.9], param_norm=[3.0, 1.0], zero_fraction=[0.0, 0.0],
...     best_strength=0.1, strength_1se=0.1, chosen_strength=0.1)
>>> disp.plot().ax_.get_title()
'data: ?\\nValidation curve'
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

from ._validation import check_choice

__all__ = ["LOG_SPAN", "SweepDisplay"]

#: A loss axis whose positive values span more than this factor is drawn on a log scale.
LOG_SPAN = 10.0


def _clean(values: list[float]) -> list[float]:
    """Non-finite values (diverged training) become NaN: matplotlib leaves a gap."""
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


@dataclass
class SweepDisplay:
    strengths: list[float]
    val_mean: list[float]
    val_se: list[float]
    train_mean: list[float]
    param_norm: list[float]
    zero_fraction: list[float]
    best_strength: float | None
    strength_1se: float | None
    penalty: str = "l2"
    loss: str = "mse"
    curves: dict[str, list[float]] = field(default_factory=dict)
    chosen_strength: float | None = None
    val_accuracy: list[float] | None = None
    diverged: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data_name: str | None = None
    model_name: str | None = None
    figure_: Any = None
    ax_: Any = None

    @classmethod
    def from_result(cls, result: Any) -> SweepDisplay:
        rows = result.table
        settings = result.settings
        acc = [r.get("val_accuracy_mean", math.nan) for r in rows]
        data = getattr(result, "data_name", None)
        if data is None and "n_rows" in settings:
            data = f"{settings['n_rows']} rows x {settings.get('n_features', '?')} features"
        return cls(
            strengths=[r["strength"] for r in rows],
            val_mean=_clean([r["val_loss_mean"] for r in rows]),
            val_se=[0.0 if not math.isfinite(r["val_loss_se"]) else r["val_loss_se"] for r in rows],
            train_mean=_clean([r["train_loss_mean"] for r in rows]),
            param_norm=_clean([r["param_norm_mean"] for r in rows]),
            zero_fraction=[r["zero_fraction_mean"] for r in rows],
            best_strength=_one(result.best_strength),  # per_target: a list, not marked
            strength_1se=_one(result.strength_1se),
            penalty=str(settings.get("penalty", {}).get("name", "l2")),
            loss=str(settings.get("loss", "mse")),
            curves=result.learning_curves() if result.complete else {},
            chosen_strength=_one(result.chosen_strength) if result.refit_at else None,
            val_accuracy=acc if any(math.isfinite(a) for a in acc) else None,
            diverged=[r["strength"] for r in rows if not math.isfinite(r["val_loss_mean"])],
            warnings=list(result.warnings),
            data_name=data,
            model_name=getattr(result, "model_name", None),
        )

    def plot(self, ax: Any = None, kind: str = "validation") -> SweepDisplay:
        """Draw ``kind``: ``"validation"`` (mean +- SE across folds vs strength, best,
        1-SE and refit strengths marked, validation accuracy on a second axis for a
        classification, diverged strengths marked), ``"norm"`` (parameter norm and
        fraction of zeros vs strength) or ``"learning"`` (train and validation loss per
        epoch at the refit strength)."""
        kind = check_choice("kind", kind, ("validation", "norm", "learning"))
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
        else:
            fig = ax.figure
        title = {"validation": "Validation curve", "norm": "Shrinkage", "learning": ""}[kind]
        getattr(self, "_" + kind)(ax)
        if title:
            ax.set_title(f"{self._names()}\n{title}")
        self._warn(ax)
        self.figure_, self.ax_ = fig, ax
        return self

    # ------------------------------------------------------------------ pieces
    def _names(self) -> str:
        """``data: ...`` and ``model: ...``, each wrapped to fit the title's width."""
        parts = [f"data: {self.data_name or '?'}"]
        if self.model_name:
            parts.append(f"model: {self.model_name}")
        return "\n".join(textwrap.fill(p, 70) for p in parts)

    def _xscale(self, ax: Any) -> None:
        if all(s > 0 for s in self.strengths):
            ax.set_xscale("log")
        else:  # a strength of 0 has no place on a log axis
            ax.set_xscale("symlog", linthresh=min([s for s in self.strengths if s > 0] or [1e-6]))
        ax.set_xlabel(f"strength ({self.penalty})")

    def _yscale(self, ax: Any, *series: list[float]) -> float | None:
        """Log scale when the positive finite values span more than ``LOG_SPAN``; when
        they span more than ``LOG_SPAN ** 4``, the axis stops ``LOG_SPAN ** 3`` above the
        smallest value (so a few exploding strengths do not flatten the minimum) and the
        cut-off value is returned (points above it are marked at the top edge)."""
        vals = [v for s in series for v in s if math.isfinite(v)]
        if not vals or min(vals) <= 0 or max(vals) / min(vals) <= LOG_SPAN:
            return None
        ax.set_yscale("log")
        lo, hi = min(vals), max(vals)
        if hi / lo <= LOG_SPAN**4:
            return None
        cap = lo * LOG_SPAN**3
        ax.set_ylim(lo / LOG_SPAN**0.25, cap)
        return cap

    def _off_scale(self, ax: Any, cap: float | None, values: list[float]) -> None:
        """Mark the strengths whose value is above the axis (``cap``) at its top edge."""
        if cap is None:
            return
        off = [(s, v) for s, v in zip(self.strengths, values, strict=True) if v > cap]
        if off:
            ax.plot(
                [s for s, _ in off],
                [0.97] * len(off),
                "^",
                color="C0",
                ms=8,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                label=f"off scale (up to {max(v for _, v in off):.2g})",
            )

    def _legend(self, ax: Any, extra: Any = None) -> None:
        """One legend for ``ax`` (and a twin axis ``extra``), outside the axes on the
        right: it can hide no curve and no marker."""
        handles, labels = ax.get_legend_handles_labels()
        if extra is not None:
            h2, l2 = extra.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        x = 1.12 if extra is not None else 1.02  # clear of the twin axis' tick labels
        ax.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(x, 1.0),
            borderaxespad=0.0,
            fontsize="small",
        )

    def _warn(self, ax: Any) -> None:
        """The result's warnings, in red under the x axis label."""
        if not self.warnings:
            return
        text = "\n".join(
            textwrap.fill("warning: " + w, 95, subsequent_indent="    ") for w in self.warnings
        )
        ax.annotate(
            text,
            xy=(0.0, 0.0),
            xycoords=("axes fraction", ax.xaxis.label),
            xytext=(0, -4),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize="small",
            color="C3",
        )

    def _loss_label(self) -> str:
        return {"mse": "mean squared error", "cross_entropy": "cross-entropy"}.get(
            self.loss, "loss"
        )

    def _strength_lines(self, ax: Any) -> None:
        if self.best_strength is None:
            return
        if self.best_strength == self.strength_1se:
            label = f"best = 1-SE = {self.best_strength:.3g}"
            ax.axvline(self.best_strength, color="C3", ls="-.", label=label)
            return
        ax.axvline(self.best_strength, color="C2", ls=":", label=f"best = {self.best_strength:.3g}")
        ax.axvline(self.strength_1se, color="C3", ls="-.", label=f"1-SE = {self.strength_1se:.3g}")

    def _validation(self, ax: Any) -> None:
        lo = [m - s for m, s in zip(self.val_mean, self.val_se, strict=True)]
        hi = [m + s for m, s in zip(self.val_mean, self.val_se, strict=True)]
        ax.fill_between(self.strengths, lo, hi, alpha=0.25, color="C0", label="validation ± 1 SE")
        ax.plot(self.strengths, self.val_mean, "o-", color="C0", label="validation (mean of folds)")
        ax.plot(self.strengths, self.train_mean, "s--", color="C1", alpha=0.8, label="train")
        self._strength_lines(ax)
        if self.chosen_strength is not None:
            j = self.strengths.index(self.chosen_strength)
            ax.plot(
                [self.chosen_strength],
                [self.val_mean[j]],
                marker="*",
                ms=16,
                color="C3",
                mec="k",
                ls="none",
                zorder=5,
                label=f"refit at {self.chosen_strength:.3g}",
            )
        if self.diverged:  # at the top edge of the axes: they have no finite loss
            ax.plot(
                self.diverged,
                [0.97] * len(self.diverged),
                "x",
                color="k",
                ms=9,
                transform=ax.get_xaxis_transform(),
                label="diverged (non-finite loss)",
            )
        self._xscale(ax)
        cap = self._yscale(ax, lo, hi, self.train_mean)
        self._off_scale(ax, cap, self.val_mean)
        if not any(math.isfinite(v) for v in self.val_mean + self.train_mean):
            ax.set_yticks([])  # nothing finite to read off the axis
        ax.set_ylabel(self._loss_label())
        twin = None
        if self.val_accuracy is not None:
            twin = self._twin(ax, self.val_accuracy, "^:", "C4", "validation accuracy", 1.02)
        self._legend(ax, twin)

    def _norm(self, ax: Any) -> None:
        ax.plot(self.strengths, self.param_norm, "o-", color="C0", label="||regularized weights||")
        if self.chosen_strength is not None:
            ax.axvline(
                self.chosen_strength,
                color="C3",
                ls="-.",
                label=f"refit at {self.chosen_strength:.3g}",
            )
        self._xscale(ax)
        self._yscale(ax, self.param_norm)
        ax.set_ylabel("parameter norm")
        twin = None
        if any(z > 0 for z in self.zero_fraction):
            twin = self._twin(ax, self.zero_fraction, "s--", "C3", "fraction of exact zeros", 1)
        self._legend(ax, twin)

    def _twin(self, ax: Any, ys: list, style: str, color: str, label: str, top: float) -> Any:
        """A second y axis from 0 to ``top`` with one curve over the strengths."""
        twin = ax.twinx()
        twin.plot(self.strengths, ys, style, color=color, label=label)
        twin.set_ylabel(label)
        twin.set_ylim(0, top)
        return twin

    def _learning(self, ax: Any) -> None:
        s = self.best_strength if self.chosen_strength is None else self.chosen_strength
        at = "" if s is None else f" at strength {s:.3g}"
        ax.set_title(f"{self._names()}\nLearning curves{at}")
        if not self.curves:
            why = "all strengths diverged" if self.best_strength is None else "incomplete sweep"
            ax.text(0.5, 0.5, f"no learning curves ({why})", ha="center", transform=ax.transAxes)
            return
        epochs = range(1, len(self.curves["val"]) + 1)
        train, val = _clean(self.curves["train"]), _clean(self.curves["val"])
        ax.plot(range(1, len(train) + 1), train, color="C1", label="train")
        ax.plot(epochs, val, color="C0", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{self._loss_label()} (mean of folds)")
        self._yscale(ax, train, val)
        self._legend(ax)


def _one(strength: Any) -> float | None:
    """A strength to mark on the plot: None for ``per_target=True``'s list (one per output)."""
    return None if isinstance(strength, list) else strength
