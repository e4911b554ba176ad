"""Plots from hand-made results (no training): titles, the refit marker, legends that
hide nothing, accuracy for classification, readable loss axes, diverged strengths and
the warnings drawn under the axes."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from torchpenalty.plotting import LOG_SPAN
from torchpenalty.sweep.engine import Record
from torchpenalty.sweep.result import SweepResult

GRID = [1e-3, 1e-2, 1e-1, 1.0, 10.0]


def result(val, *, acc=None, loss="mse", train_curve=None, names=True, refit="best"):
    """A 2-fold result whose fold losses are ``val[i] * (1 -+ 5%)``."""
    recs = []
    curve = train_curve or [2.0, 1.0] + [0.9] * 18
    for i, v in enumerate(val):
        for k, f in enumerate((0.95, 1.05)):
            recs.append(
                Record(i, k, GRID[i], v * f, v * 0.8, 1.0 / (i + 1), 0.1 * i, 19,
                       None if acc is None else acc[i], {"train": curve, "val": curve})
            )  # fmt: skip
    r = SweepResult(
        GRID[: len(val)], 2, recs, {"loss": loss, "penalty": {"name": "l2"}}, refit_at=refit
    )
    if names:
        r.data_name, r.model_name = "toy.csv", "mlp:8"
    return r


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _draw(disp):
    disp.figure_.canvas.draw()
    return disp.figure_.canvas.get_renderer()


@pytest.mark.parametrize("kind", ["validation", "norm", "learning"])
def test_title_names_data_and_model_and_legend_is_outside(kind):
    disp = result([1.0, 0.5, 0.6, 0.9, 1.5]).plot(kind=kind)
    ax = disp.ax_
    assert ax.get_title().startswith("data: toy.csv\nmodel: mlp:8\n")
    renderer = _draw(disp)
    leg = ax.get_legend().get_window_extent(renderer)
    assert leg.x0 >= ax.get_window_extent(renderer).x1  # right of the axes: hides nothing
    assert leg.x1 <= disp.figure_.bbox.x1 + 1  # and inside the saved figure


def test_refit_strength_is_marked_on_the_curve():
    r = result([1.0, 0.5, 0.52, 0.9, 1.5], refit="1se")  # 1-SE: 0.52 <= 0.5 + 0.025
    disp = r.plot()
    (star,) = [ln for ln in disp.ax_.get_lines() if ln.get_label().startswith("refit at")]
    assert star.get_label() == f"refit at {r.chosen_strength:.3g}"
    j = GRID.index(r.chosen_strength)
    assert star.get_xdata()[0] == r.chosen_strength
    assert star.get_ydata()[0] == pytest.approx(r.table[j]["val_loss_mean"])
    labels = [ln.get_label() for ln in disp.ax_.get_lines()]
    assert f"best = {r.best_strength:.3g}" in labels and f"1-SE = {r.strength_1se:.3g}" in labels


def test_classification_shows_accuracy_on_a_twin_axis_in_the_same_legend():
    acc = [0.6, 0.8, 0.85, 0.7, 0.5]
    disp = result([1.0, 0.5, 0.45, 0.9, 1.5], acc=acc, loss="cross_entropy").plot()
    twins = [a for a in disp.figure_.axes if a is not disp.ax_]
    assert len(twins) == 1 and twins[0].get_ylabel() == "validation accuracy"
    (line,) = twins[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), acc)
    texts = [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    assert "validation accuracy" in texts
    renderer = _draw(disp)
    leg = disp.ax_.get_legend().get_window_extent(renderer)
    assert leg.x0 >= twins[0].get_tightbbox(renderer).x1 - 1  # clear of the twin's ticks


@pytest.mark.parametrize(
    ("val", "scale"),
    [
        ([1.0, 0.9, 0.95, 1.2, 1.5], "linear"),
        ([2e6, 1.8e6, 1.9e6, 5e6, 4e7], "log"),  # a longley-like curve: 20x
    ],
)
def test_loss_axis_spanning_orders_of_magnitude_is_log(val, scale):
    assert result(val).plot().ax_.get_yscale() == scale


def test_exploding_strengths_are_cut_off_and_marked_so_the_minimum_shows():
    val = [1.4, 1.3, 1.35, 3.0, 1e19]
    disp = result(val).plot()
    ax = disp.ax_
    lo, hi = ax.get_ylim()
    assert ax.get_yscale() == "log" and hi == pytest.approx(1.3 * 0.8 * LOG_SPAN**3)
    assert lo < 1.3 * 0.8  # the smallest value (the train loss at 0.1) is inside
    (off,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("off scale")]
    assert off.get_label() == "off scale (up to 1e+19)" and list(off.get_xdata()) == [10.0]


def test_diverged_strengths_are_marked_and_the_warnings_drawn():
    r = result([1.0, 0.5, 0.6, math.nan, math.inf])
    disp = r.plot()
    (mark,) = [ln for ln in disp.ax_.get_lines() if ln.get_label().startswith("diverged")]
    assert list(mark.get_xdata()) == [1.0, 10.0]
    texts = [c.get_text() for c in disp.ax_.texts]
    assert any(t.startswith("warning: strengths 1, 10 diverged") for t in texts)
    renderer = _draw(disp)
    (note,) = [c for c in disp.ax_.texts if c.get_text().startswith("warning")]
    box = note.get_window_extent(renderer)
    assert box.y1 <= disp.ax_.xaxis.label.get_window_extent(renderer).y0 + 1  # under the label
    assert box.x1 <= disp.figure_.bbox.x1 + 1 and box.y0 >= -1  # inside the figure


@pytest.mark.parametrize("kind", ["validation", "norm", "learning"])
def test_all_diverged_still_plots(kind):
    r = result([math.nan, math.inf, math.nan])
    disp = r.plot(kind=kind)
    assert disp.ax_.get_title()
    if kind == "learning":
        assert "all strengths diverged" in disp.ax_.texts[0].get_text()
    if kind == "validation":
        assert list(disp.ax_.get_yticks()) == []
        (mark,) = [ln for ln in disp.ax_.get_lines() if ln.get_label().startswith("diverged")]
        assert list(mark.get_xdata()) == GRID[:3]


def test_untitled_data_falls_back_to_its_shape_and_user_axes_are_used(tmp_path):
    r = result([1.0, 0.5, 0.6], names=False)
    r.settings.update(n_rows=40, n_features=3)
    fig, ax = plt.subplots()
    disp = r.plot(ax=ax)
    assert disp.ax_ is ax and disp.figure_ is fig
    assert ax.get_title() == "data: 40 rows x 3 features\nValidation curve"
    fig.savefig(tmp_path / "v.png", bbox_inches="tight")
    assert (tmp_path / "v.png").stat().st_size > 0
