"""Sweep results: per-strength statistics across folds, the selection rules, the
diagnostics (:func:`diagnose`) and predictions in the data's units.

>>> rows = [  # a hand-made table: mean validation loss and its standard error
...     {"strength": 0.01, "val_loss_mean": 1.00, "val_loss_se": 0.10},
...     {"strength": 0.1, "val_loss_mean": 0.90, "val_loss_se": 0.05},
...     {"strength": 1.0, "val_loss_mean": 0.93, "val_loss_se": 0.04},
...     {"strength": 10.0, "val_loss_mean": 1.20, "val_loss_se": 0.10},
... ]
>>> best_index(rows), one_se_index(rows)   # 1.0 is within 0.90 + 0.05 of the minimum
(1, 2)
>>> rows[1]["val_loss_mean"] = float("nan")   # that strength diverged: never chosen
>>> best_index(rows), one_se_index(rows)
(2, 2)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .engine import Record
from .losses import LOSSES

__all__ = [
    "StandardizedModel",
    "SweepResult",
    "best_index",
    "describe_model",
    "diagnose",
    "format_table",
    "one_se_index",
]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def describe_model(model: nn.Module) -> str:
    """A short name for plot titles: ``MLP in-hidden-out (activation)`` for an
    ``nn.Sequential`` of ``nn.Linear`` layers and activations, else the class name; then
    the number of parameters.

    >>> describe_model(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)))
    'MLP 3-8-1 (ReLU), 41 parameters'
    >>> describe_model(nn.Linear(3, 2))
    'Linear 3-2, 8 parameters'
    """
    n = sum(p.numel() for p in model.parameters())
    mods = list(model) if isinstance(model, nn.Sequential) else [model]
    linears = [m for m in mods if isinstance(m, nn.Linear)]
    others = [m for m in mods if not isinstance(m, nn.Linear)]
    if linears and all(len(list(m.parameters())) == 0 for m in others):
        dims = "-".join(
            str(d) for d in [linears[0].in_features] + [m.out_features for m in linears]
        )
        acts = sorted({type(m).__name__ for m in others})
        kind = "MLP" if len(linears) > 1 else "Linear"
        return f"{kind} {dims}" + (f" ({', '.join(acts)})" if acts else "") + f", {n} parameters"
    return f"{type(model).__name__}, {n} parameters"


def best_index(rows: list[dict[str, Any]]) -> int | None:
    """Row with the smallest finite mean validation loss (first on ties); rows whose
    loss is NaN or infinite (diverged training) are skipped; None if every row is."""
    ok = [i for i, r in enumerate(rows) if _finite(r["val_loss_mean"]) and _trained(r)]
    if not ok:
        return None
    return min(ok, key=lambda i: rows[i]["val_loss_mean"])


def _trained(row: dict[str, Any]) -> bool:
    """Not stopped early by successive halving (``stopped_epoch`` set): never chosen."""
    return row.get("stopped_epoch") is None


def one_se_index(rows: list[dict[str, Any]]) -> int | None:
    """glmnet's lambda.1se: the row with the largest strength whose finite mean
    validation loss is within one standard error of the minimum's (an SE that is NaN,
    from one fold, counts as 0); None if every row diverged. Rows stopped by successive
    halving are never chosen."""
    b = best_index(rows)
    if b is None:
        return None
    se = rows[b]["val_loss_se"]
    limit = rows[b]["val_loss_mean"] + (se if _finite(se) else 0.0)
    ok = [i for i, r in enumerate(rows)
          if _finite(r["val_loss_mean"]) and r["val_loss_mean"] <= limit and _trained(r)]  # fmt: skip
    return max(ok, key=lambda i: rows[i]["strength"])


def diagnose(
    rows: list[dict[str, Any]],
    curves: dict[str, list[float]] | None = None,
    *,
    falling: float = 0.01,
) -> list[str]:
    """Warnings about a sweep, from its ``table`` rows and the learning curves (mean
    train and validation loss per epoch) at the chosen strength:

    * every strength diverged (no finite mean validation loss), or some did (named);
    * the best strength is at an edge of the grid (the smallest, unless it is 0: no
      regularization; or the largest): the optimum may lie outside it;
    * the training loss is still falling at the last epoch: its mean over the last
      ``w = max(1, epochs // 10)`` epochs is more than ``falling`` (1%) below its mean
      over the ``w`` epochs before, and the validation loss (when the curves have it)
      fell too: the models are likely underfit (a falling training loss with a
      rising validation loss is overfitting, which the strength, not more epochs, fixes).

    >>> rows = [{"strength": s, "val_loss_mean": v, "val_loss_se": 0.01}
    ...         for s, v in [(0.01, 0.5), (0.1, 0.6), (1.0, float("inf"))]]
    >>> for w in diagnose(rows, {"train": [4.0, 2.0, 1.0, 0.5], "val": []}): print(w)
    strength 1 diverged (non-finite validation loss): marked, never chosen
    the best strength 0.01 is the smallest of the grid: the best may lie below it; extend the grid down
    training loss still falling at the last epoch (the last epoch 50.0% below the one before, validation loss falling too): the models look underfit; train longer (more epochs) or with a larger learning rate
    """
    out: list[str] = []
    bad = [r["strength"] for r in rows if not _finite(r["val_loss_mean"])]
    b = best_index(rows)
    if rows and b is None:
        return [
            f"every strength diverged (non-finite losses at all {len(rows)} strengths): "
            "no strength chosen; lower the learning rate or use the Adam optimizer"
        ]
    if bad:
        names = ", ".join(f"{s:.3g}" for s in bad)
        plural = "strengths" if len(bad) > 1 else "strength"
        out.append(f"{plural} {names} diverged (non-finite validation loss): marked, never chosen")
    if b is not None and len(rows) > 1:
        s = rows[b]["strength"]
        if b == 0 and s > 0:
            out.append(
                f"the best strength {s:.3g} is the smallest of the grid: the best may lie "
                "below it; extend the grid down"
            )
        elif b == len(rows) - 1:
            out.append(
                f"the best strength {s:.3g} is the largest of the grid: the best may lie "
                "above it; extend the grid up"
            )
    drop = _still_falling((curves or {}).get("train", []), (curves or {}).get("val", []))
    if drop is not None and drop[0] > falling:
        out.append(
            f"training loss still falling at the last epoch ({_window(drop[1])} "
            f"{drop[0]:.1%} below the {'one' if drop[1] == 1 else drop[1]} before, validation "
            "loss falling too): the models look underfit; train "
            "longer (more epochs) or with a larger learning rate"
        )
    return out


def _window(w: int) -> str:
    return "the last epoch" if w == 1 else f"mean of the last {w} epochs"


def _still_falling(train: list[float], val: list[float]) -> tuple[float, int] | None:
    """Relative drop of the mean training loss of the last ``w = max(1, epochs // 10)``
    epochs below the mean of the ``w`` epochs before them (window means: mini-batch noise
    does not count), and ``w``; None when it cannot be told or when the validation loss
    (if recorded) did not fall in the same way (then longer training overfits)."""
    w = max(1, len(train) // 10)
    if len(train) < 2 * w or len(train) < 2:
        return None

    def drop(c: list[float]) -> float | None:
        before, last = float(np.mean(c[-2 * w : -w])), float(np.mean(c[-w:]))
        ok = _finite(before) and _finite(last) and before > 0
        return (before - last) / before if ok else None

    d = drop(train)
    if d is None:
        return None
    if len(val) == len(train) and not ((drop(val) or 0.0) > 0):
        return None
    return d, w


def format_table(
    rows: list[dict[str, Any]],
    *,
    best: float | None = None,
    one_se: float | None = None,
    chosen: float | None = None,
) -> str:
    """The sweep table as text, one line per strength: mean validation loss, its standard
    error, train loss, parameter norm, fraction of zeros (and validation accuracy for
    classification), with the best, 1-SE, refit and diverged strengths marked.

    >>> print(format_table([{"strength": 0.1, "val_loss_mean": 1.5, "val_loss_se": 0.1,
    ...     "train_loss_mean": 1.2, "param_norm_mean": 3.0, "zero_fraction_mean": 0.0,
    ...     "folds_done": 5}], best=0.1, one_se=0.1))
      strength     val loss       ± SE   train loss     ||w||  zeros folds
           0.1          1.5        0.1          1.2         3   0.0%     5  <- best, 1se
    """
    acc = any("val_accuracy_mean" in r for r in rows)
    head = (
        f"{'strength':>10} {'val loss':>12} {'± SE':>10} {'train loss':>12} {'||w||':>9} "
        f"{'zeros':>6} {'folds':>5}" + (f" {'val acc':>8}" if acc else "")
    )
    lines = [head]
    for r in rows:
        marks = [
            m
            for m, s in (("best", best), ("1se", one_se), ("refit", chosen))
            if s is not None and r["strength"] == s
        ]
        if not _finite(r["val_loss_mean"]):
            marks.append("DIVERGED")
        line = (
            f"{r['strength']:>10.3g} {r['val_loss_mean']:>12.5g} {r['val_loss_se']:>10.3g} "
            f"{r['train_loss_mean']:>12.5g} {r['param_norm_mean']:>9.3g} "
            f"{r['zero_fraction_mean']:>6.1%} {r.get('folds_done', 0):>5}"
        )
        if acc:
            line += f" {r.get('val_accuracy_mean', math.nan):>8.3f}"
        lines.append(line + ("  <- " + ", ".join(marks) if marks else ""))
    return "\n".join(lines)


class StandardizedModel(nn.Module):
    """A model trained on standardized data, wrapped to take and return raw units:
    ``model((x - x_mean) / x_std) * y_std + y_mean`` (no target scaling for classifiers).
    ``x`` may be a NumPy array or a tensor of any real dtype: it is converted to the
    model's dtype and device (for predictions as NumPy arrays, class labels included,
    use :meth:`SweepResult.predict`). With ``x_mean=None`` (images, token ids: inputs a
    sweep does not standardize) ``x`` goes to the model as it is.

    >>> m = StandardizedModel(nn.Identity(), None, None, torch.tensor([10.0]),
    ...                       torch.tensor([2.0]))
    >>> m(torch.tensor([[1.0], [0.5]])).flatten().tolist()
    [12.0, 11.0]
    """

    def __init__(
        self,
        model: nn.Module,
        x_mean: Tensor | None,
        x_std: Tensor | None,
        y_mean: Tensor | None = None,
        y_std: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        for name, t in (("x_mean", x_mean), ("x_std", x_std), ("y_mean", y_mean), ("y_std", y_std)):
            wide = t is not None and t.is_floating_point() and t.device.type != "mps"
            self.register_buffer(name, t.to(torch.float64) if wide else t)

    def forward(self, x: Tensor | np.ndarray) -> Tensor:
        """Standardize in the statistics' dtype (float64), cast to the model's dtype only
        at its input, and return to the target's units in float64 again."""
        if self.x_mean is None:
            out = self.model(torch.as_tensor(x))
        else:
            x = torch.as_tensor(x).to(device=self.x_mean.device, dtype=self.x_mean.dtype)
            z = (x - self.x_mean) / self.x_std
            out = self.model(_model_input(z, self.model))
        if self.y_mean is not None and (out.ndim == 1 or self.y_mean.numel() == out.shape[-1]):
            out = out.to(self.y_std.dtype) * self.y_std + self.y_mean
        return out


def _model_input(z: Tensor, model: nn.Module) -> Tensor:
    """Standardized rows ``z`` in the dtype of ``model``'s parameters; a value that this
    cast would turn infinite raises ``ValueError`` naming its column."""
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    zin = z.to(dtype)
    if not torch.isfinite(zin).all() and torch.isfinite(z).all():
        r, c = (~torch.isfinite(zin)).nonzero()[0].tolist()
        raise ValueError(
            f"X column {c}: row {r} lies {abs(float(z[r, c])):.3g} standard deviations from "
            f"the training mean, beyond {str(dtype).removeprefix('torch.')} (the model's input)"
        )
    return zin


@dataclass
class SweepResult:
    """What ``tp.sweep`` found. ``table`` has one row per strength (mean and standard error
    of the validation loss across folds, train loss, parameter norm, fraction of exact
    zeros among the regularized parameters, ``diverged``); ``records`` one per (strength,
    fold).

    A strength whose mean validation loss is NaN or infinite diverged: it is marked in
    the table and never chosen; if every strength diverged, ``best_strength``,
    ``strength_1se`` and ``chosen_strength`` are None and :attr:`warnings` says so.

    Fields filled by the caller of the constructor (``tp.sweep``, the command line or
    ``tp.load_sweep``): ``classes`` (the sorted class labels, classification only: the
    model's output ``j`` is ``classes[j]``), ``data_name`` and ``model_name`` (for plot
    titles), ``curves`` (learning curves at the chosen strength, used when the records
    carry no per-epoch history, as after loading a report), ``given_table`` (the table as
    the solver computed it, used as is: exact leave-one-out, ``folds="loo"``, has one fold
    per row and keeps one record per strength, not ``n`` of them)."""

    strengths: list[float]
    folds: int
    records: list[Record]
    settings: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    refit_at: str | None = None
    classes: list[Any] | None = None
    data_name: str | None = None
    model_name: str | None = None
    curves: dict[str, list[float]] | None = None
    feature_names: list[str] | None = None
    given_table: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------------ table
    @property
    def complete(self) -> bool:
        if self.given_table is not None:
            return len(self.given_table) == len(self.strengths)
        return len(self.records) == len(self.strengths) * self.folds

    @property
    def loss(self) -> str:
        """The loss the sweep minimized: ``"mse"``, ``"cross_entropy"`` or, for a callable
        loss, its ``module.qualname`` (see :func:`torchpenalty.sweep.core.loss_name`)."""
        return str(self.settings.get("loss", "mse"))

    @property
    def task(self) -> str:
        """``"classification"`` (cross-entropy loss) or ``"regression"``."""
        kind = LOSSES.get(str(self.settings.get("loss", "mse")))
        return "classification" if kind is not None and kind.labels else "regression"

    @property
    def table(self) -> list[dict[str, Any]]:
        """One row per strength (a fresh copy: editing it changes nothing here)."""
        return [dict(r) for r in self._rows()]

    def _rows(self) -> list[dict[str, Any]]:
        """The table, computed once per state of ``records`` (its identity, length and the
        identity of its last record) and of the grid, then reused: ``best_strength`` and
        the other readers do not rebuild it."""
        if self.given_table is not None:  # leave-one-out: no record per (strength, row)
            return self.given_table
        recs = self.records
        key = (id(recs), len(recs), id(recs[-1]) if recs else None, tuple(self.strengths),
               bool(self.settings.get("halving")))  # fmt: skip
        cache = self.__dict__.get("_table_cache")
        if cache is not None and cache[0] == key:
            return cache[1]
        by_i: dict[int, list[Record]] = {}
        for r in recs:
            by_i.setdefault(r.i, []).append(r)
        rows = []
        for i, s in enumerate(self.strengths):
            if by_i.get(i):
                rows.append(_row(s, by_i[i]))
                if self.settings.get("halving"):  # None: trained to the end
                    rows[-1]["stopped_epoch"] = by_i[i][0].stopped_epoch
        self.__dict__["_table_cache"] = (key, rows)
        return rows

    @property
    def best_strength(self) -> Any:
        """Strength with the smallest finite mean validation loss (None if all diverged);
        with ``per_target=True``, a list: each output's own."""
        return self._choose(best_index)

    @property
    def strength_1se(self) -> Any:
        """Largest strength whose mean validation loss is within one standard error of
        the minimum (glmnet's lambda.1se): the simplest model as good as the best; with
        ``per_target=True``, a list: each output's own."""
        return self._choose(one_se_index)

    def _choose(self, rule: Any) -> Any:
        rows = self._rows()
        if rows and "val_loss_mean_per_target" in rows[0]:  # one choice per output
            out = []
            for j in range(len(rows[0]["val_loss_mean_per_target"])):
                col = [{"strength": r["strength"], "val_loss_mean": r["val_loss_mean_per_target"][j],
                        "val_loss_se": r["val_loss_se_per_target"][j]} for r in rows]  # fmt: skip
                b = rule(col)
                out.append(None if b is None else col[b]["strength"])
            return out
        b = rule(rows)
        return None if b is None else rows[b]["strength"]

    @property
    def chosen_strength(self) -> float | None:
        """The strength ``model`` was refit at (``refit_at`` ``"1se"`` or ``"best"``)."""
        return self.strength_1se if self.refit_at == "1se" else self.best_strength

    def refit(self, which: str | float = "best") -> nn.Module:
        """A model fit on all rows at ``which`` -- ``"best"`` (``best_strength``), ``"1se"``
        (``strength_1se``), a strength, or with ``per_target=True`` one per output -- without a second sweep, taking raw ``X`` and
        returning the data's units like ``model``. The closed form, leave-one-out and the
        path solver keep every grid strength's all-rows solution (``path_fit``): the model
        is read from it (``which`` a strength of the grid). A trained sweep trains the one
        all-rows model at that strength as its own refit did (``tp.sweep`` keeps what it
        needs; a result loaded by ``tp.load_sweep`` has no data: ``ValueError``).

        >>> import numpy as np, torch, torchpenalty as tp
        >>> X = np.random.default_rng(0).normal(size=(60, 3)); y = X[:, 0] + 1.0
        >>> r = tp.sweep(lambda: torch.nn.Linear(3, 1), (X, y), strengths=[0.01, 1.0],
        ...              folds=3, progress=False)
        >>> m = r.refit("1se"); bool(abs(r.refit("best")(X[:2]) - r.model(X[:2])).max() < 1e-5)
        True
        """
        s = self._strength_of(which)
        if self.settings.get("per_target"):  # one strength per output
            k = self.path_fit["weight"].shape[1]
            return self.path_fit["model_at"](self, s if isinstance(s, list) else [s] * k)
        if getattr(self, "path_fit", None) is not None:
            if s not in self.strengths:
                raise ValueError(f"which must be 'best', '1se' or a strength of the grid "
                                 f"{self.strengths} (solved, not trained), got {which!r}")  # fmt: skip
            return self.path_fit["model_at"](self, s)  # the solver's builder
        train = getattr(self, "refit_with", None)
        if train is None:
            raise ValueError("refit needs the sweep's data, which this result does not hold "
                             f"(loaded from a report?); got which={which!r}")  # fmt: skip
        with torch.enable_grad():  # it trains, even when called under torch.no_grad()
            return train(s)

    def _strength_of(self, which: Any) -> Any:
        rules = {"best": self.best_strength, "1se": self.strength_1se}
        if isinstance(which, str) and which in rules:
            if rules[which] is None or (isinstance(rules[which], list) and None in rules[which]):
                raise ValueError(f"which={which!r} names no strength: every strength diverged")
            return rules[which]
        if isinstance(which, (list, tuple)) and self.settings.get("per_target"):
            return [self._strength_of(w) for w in which]  # one per output
        ok = isinstance(which, (int, float)) and not isinstance(which, bool)
        if not ok or not math.isfinite(which) or which < 0:
            raise ValueError(f"which must be 'best', '1se' or a strength >= 0, got {which!r}")
        return float(which)

    def learning_curves(self, strength: float | None = None) -> dict[str, list[float]]:
        """Mean train and validation loss per epoch across folds at ``strength`` (default:
        the chosen one); ``{}`` when there is none (all diverged, or no history kept)."""
        s = self.chosen_strength if strength is None else strength
        if s is None or isinstance(s, list) or not self.records:
            return {}
        i = min(range(len(self.strengths)), key=lambda j: abs(self.strengths[j] - s))
        recs = [r for r in self.records if r.i == i]
        if not recs or not all(r.history.get("train") for r in recs):
            return dict(self.curves) if self.curves and strength is None else {}
        out = {}
        for key in ("train", "val"):
            n = min(len(r.history.get(key, [])) for r in recs)
            out[key] = [float(np.mean([r.history[key][e] for r in recs])) for e in range(n)]
        return out

    @property
    def selected(self) -> dict[str, list[str] | None] | None:
        """The input features a linear model keeps (a nonzero weight for some output) on
        all rows, at the best and at the 1-SE strength: ``{"best": [...], "1se": [...]}``,
        named by ``feature_names`` (the CSV header on the command line), else ``"x0"``,
        ``"x1"``, ... A solved sweep (``settings["solver"]`` ``"path"`` or
        ``"closed_form"``) holds every strength's all-rows solution (``path_fit``);
        otherwise only the refit model's strength is known
        (the other rule is None). None when there is no such linear model.

        >>> import numpy as np, torch, torchpenalty as tp
        >>> X = np.random.default_rng(0).normal(size=(80, 3)); y = 3 * X[:, 0]
        >>> r = tp.sweep(lambda: torch.nn.Linear(3, 1), (X, y), penalty="l1",
        ...              strengths=[1.0, 0.01], folds=2, progress=False)
        >>> r.selected["best"]
        ['x0']
        """
        weights = {}
        fit = getattr(self, "path_fit", None)
        if self.settings.get("per_target"):
            return None
        for rule, s in (("best", self.best_strength), ("1se", self.strength_1se)):
            if s is not None and fit is not None:
                weights[rule] = fit["weight"][self.strengths.index(s)]
            elif s is not None and s == self.chosen_strength and self.model is not None:
                lin = getattr(self.model, "model", self.model)
                lin = lin[0] if isinstance(lin, nn.Sequential) and len(lin) == 1 else lin
                if isinstance(lin, nn.Linear):
                    weights[rule] = lin.weight.detach()
        if not weights:
            return None
        d = next(iter(weights.values())).shape[-1]
        names = self.feature_names or [f"x{j}" for j in range(d)]
        out: dict[str, list[str] | None] = {"best": None, "1se": None}
        for rule, W in weights.items():
            keep = (torch.as_tensor(W) != 0).any(0).tolist()
            out[rule] = [str(n) for n, k in zip(names, keep, strict=True) if k]
        return out

    @property
    def warnings(self) -> list[str]:
        """What to look at before trusting the choice (see :func:`diagnose`): diverged
        strengths, the best strength at an edge of the grid, underfit training."""
        out = diagnose(self._rows(), self.learning_curves())
        test = getattr(self, "test", None)
        if isinstance(test, dict) and test.get("loss") is None and test.get("missing"):
            out.append(f"the held-out test set was {test['missing']}")
        return out

    # ------------------------------------------------------------------ predictions
    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the refit model in the data's units, as a NumPy array: for a
        regression, values (shape ``(n,)`` for one target, ``(n, k)`` for ``k``); for a
        classification, the original class labels (``classes[argmax]``); for a callable
        loss, the model's raw outputs (``(n, 1)`` squeezed to ``(n,)``). ``X`` is what
        ``tp.sweep`` took: a NumPy array or tensor of shape ``(n, features)`` in raw
        (unstandardized) units, or rows of the data's shape ``(n, ...)`` (images, token ids:
        converted to the dtype the sweep used, float32 or int64, nothing standardized).

        >>> import torch, torchpenalty as tp
        >>> X = torch.randn(40, 2, dtype=torch.float64); y = 3 * X[:, 0] + 100
        >>> r = tp.sweep(lambda: torch.nn.Linear(2, 1), (X, y), strengths=[1e-4], folds=2,
        ...              epochs=200, lr=0.1, batch_size=None, progress=False)
        >>> p = r.predict(X.numpy()); p.shape, bool(abs(p - y.numpy()).max() < 0.5)
        ((40,), True)
        """
        out = self._forward(X).numpy().astype(np.float64)
        if self.task == "classification":
            return self._labels(out.argmax(-1))
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``softmax(logits)`` of the refit model, shape ``(n, classes)``;
        column ``j`` is the class ``classes[j]``. Classification only."""
        if self.task != "classification":
            raise ValueError("predict_proba needs a classification sweep (loss='cross_entropy')")
        return torch.softmax(self._forward(X).double(), dim=-1).numpy()

    def _forward(self, X: Any) -> Tensor:
        if self.model is None:
            raise ValueError("this result has no refit model (the sweep ran with refit=False)")
        if isinstance(X, Tensor):
            X = X.detach().cpu()
        x = np.asarray(X)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"X must be a real numeric array, got an array of dtype {x.dtype}")
        shape = self.settings.get("x_shape")  # inputs of any row shape (not standardized)
        if shape is not None:
            if list(x.shape[1:]) != list(shape):
                want = ", ".join(["rows", *map(str, shape)])
                raise ValueError(f"X must be an array of shape ({want}), got shape {x.shape}")
        else:
            width = self.settings.get("n_features")
            if x.ndim != 2 or (width is not None and x.shape[1] != width):
                want = f"(rows, {width})" if width is not None else "(rows, features)"
                raise ValueError(f"X must be a 2-D array of shape {want}, got shape {x.shape}")
        dtype = getattr(torch, self.settings.get("x_dtype", "float32"))
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            r, *c = np.argwhere(~np.isfinite(x))[0].tolist()
            where = f"row {r}, column {c[0]}" if len(c) == 1 else f"row {r}"
            raise ValueError(f"X must be finite, got {x[(r, *c)]} at {where}")
        self.model.eval()
        param = next(self.model.parameters(), None)
        dev = param.device if param is not None else torch.device("cpu")
        x_mean = getattr(self.model, "x_mean", None)
        if isinstance(self.model, StandardizedModel) and x_mean is not None:
            dtype = x_mean.dtype  # standardized in float64: cast only at the model's input
        with torch.no_grad():
            out = self.model(torch.as_tensor(np.ascontiguousarray(x), device=dev).to(dtype))
        return out.detach().cpu()

    def _labels(self, codes: np.ndarray) -> np.ndarray:
        if self.classes is None:
            return codes
        return np.asarray(self.classes)[codes]

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
            out["refit"] = self.refit_at
            out["learning_curves"] = self.learning_curves() if self.complete else None
            out["warnings"] = self.warnings
            selected = self.selected
            if selected is not None:
                out["selected"] = selected
        if self.classes is not None:
            out["classes"] = np.asarray(self.classes).tolist()
        for key in ("data_name", "model_name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def to_json(self, **kwargs: Any) -> str:
        """The result as JSON (NaN and infinities written as null)."""
        return json.dumps(_nan_to_none(self.to_dict()), **kwargs)

    def plot(self, ax: Any = None, kind: str = "validation") -> Any:
        """Plot the validation curve (``kind="validation"``), the parameter norm
        (``"norm"``) or the learning curves (``"learning"``); returns the display."""
        from ..plotting import SweepDisplay

        return SweepDisplay.from_result(self).plot(ax=ax, kind=kind)

    def __str__(self) -> str:
        if not self.records:
            return "SweepResult(no completed models)"
        best, one, chosen = self.best_strength, self.strength_1se, self.chosen_strength

        def fmt(v: Any) -> str:
            if isinstance(v, list):  # per_target=True: one per output
                return "[" + ", ".join(map(fmt, v)) + "]"
            return "None" if v is None else f"{v:.3g}"

        done, total = len(self.records), len(self.strengths) * self.folds
        head = (
            f"SweepResult({len(self.strengths)} strengths x {self.folds} folds"
            + ("" if self.complete else f" ({done} of {total} models finished)")
            + f", best_strength={fmt(best)}, strength_1se={fmt(one)}"
            + (
                f", refit={self.refit_at!r} at {fmt(chosen)}"
                if self.refit_at and chosen is not None
                else ""
            )
            + ")"
        )
        table = format_table(
            self.table, best=best, one_se=one, chosen=chosen if self.refit_at else None
        )
        warn = "".join(f"\nwarning: {w}" for w in self.warnings)
        return f"{head}\n{table}{warn}"

    __repr__ = __str__


def _row(strength: float, recs: Sequence[Record]) -> dict[str, Any]:
    """One table row: statistics across the folds of one strength."""
    val = np.array([r.val_loss for r in recs], dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(val.mean())
        row = {
            "strength": strength,
            "val_loss_mean": mean,
            "val_loss_se": float(val.std(ddof=1) / math.sqrt(len(val)))
            if len(val) > 1
            else math.nan,
            "train_loss_mean": float(np.mean([r.train_loss for r in recs])),
            "param_norm_mean": float(np.mean([r.param_norm for r in recs])),
            "zero_fraction_mean": float(np.mean([r.zero_fraction for r in recs])),
            "folds_done": len(recs),
            "diverged": not math.isfinite(mean),
            "folds_diverged": int(sum(not math.isfinite(r.val_loss) for r in recs)),
        }
    if recs[0].val_accuracy is not None:
        row["val_accuracy_mean"] = float(np.mean([r.val_accuracy for r in recs]))
    return row


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    return v
