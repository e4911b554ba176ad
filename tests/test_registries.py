"""Each extension point's registry is the only list of its members: every other list is
derived from it, or (where ``--help`` must not import torch) written out and checked here."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import torchpenalty as tp
from torchpenalty import cli, optim, updates
from torchpenalty.sweep.validate import PARAMETER_CONSTRAINTS

ROOT = Path(__file__).resolve().parent.parent
timescale = importlib.import_module("torchpenalty.timescale")  # tp.timescale is the function


def test_package_exports_are_one_list():
    """``__all__`` and the type checkers' imports follow ``_EXPORTS``."""
    assert sorted(tp.__all__) == sorted([*tp._EXPORTS, "__version__"])
    tree = ast.parse((ROOT / "src/torchpenalty/__init__.py").read_text(encoding="utf-8"))
    guarded = next(n for n in tree.body if isinstance(n, ast.If))  # if TYPE_CHECKING:
    imported = {a.asname or a.name for n in guarded.body for a in n.names}
    assert imported == set(tp._EXPORTS)


def test_modes_follow_the_rule_registry():
    class Halved(updates.Decoupled):
        name = "test_halved"

        def rate(self, b):
            return b.lr / 2

    try:
        assert "test_halved" in optim.MODES
        assert "test_halved" in timescale.TIMESCALE_MODES  # a decoupled-family rule
        assert "test_halved" in updates.modes(sweepable=True)  # inherited from Decoupled
        assert PARAMETER_CONSTRAINTS["mode"]("mode", "test_halved") == "test_halved"
    finally:
        del updates.RULES["test_halved"]
    assert "test_halved" not in optim.MODES


def test_written_out_lists_match_their_registries():
    built_in = [m for m in updates.modes(sweepable=True)
                if updates.RULES[m].__module__.startswith("torchpenalty.")]  # fmt: skip
    assert list(cli.SWEEP_MODES) == built_in
    check = PARAMETER_CONSTRAINTS["mode"]
    for mode in updates.modes(sweepable=True):
        assert check("mode", mode) == mode


def test_callbacks_accept_a_rule_registered_by_subclassing():
    from torchpenalty.integrations.lightning import Regularize

    class Quarter(updates.Decoupled):
        name = "test_quarter"

        def rate(self, b):
            return b.lr / 4

    try:
        assert Regularize(tp.L2(0.1), mode="test_quarter").mode == "test_quarter"
    finally:
        del updates.RULES["test_quarter"]
