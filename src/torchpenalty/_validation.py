"""Argument checks with one message template.

Every check raises ``ValueError`` (bad value) or ``TypeError`` (bad type) with the
message ``"{name} must be {requirement}, got {value!r}"`` so that users see which
argument was wrong and what they passed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch


def _message(name: str, requirement: str, value: Any) -> str:
    shown = repr(value)
    if len(shown) > 80:  # one short line: a long value is cut (#18)
        shown = shown[:70] + "..." + shown[-7:]
    return f"{name} must be {requirement}, got {shown}"


def type_error(name: str, requirement: str, value: Any) -> TypeError:
    return TypeError(_message(name, requirement, value))


def value_error(name: str, requirement: str, value: Any) -> ValueError:
    return ValueError(_message(name, requirement, value))


def described_error(name: str, requirement: str, description: str) -> ValueError:
    """Like :func:`value_error` for a value too large to repeat: ``description`` says
    what was received (``"shape (3,)"``, ``"non-finite values"``)."""
    return ValueError(f"{name} must be {requirement}, got {description}")


def check_real(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise if it is not a real number (bools refused)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise type_error(name, "a real number", value)
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise type_error(name, "a real number", value)
    return float(value)


def check_strength(name: str, value: Any) -> float:
    """A finite, non-negative real number."""
    v = check_real(name, value)
    if not math.isfinite(v) or v < 0:
        raise value_error(name, "a finite number >= 0", value)
    return v


def check_positive(name: str, value: Any) -> float:
    v = check_real(name, value)
    if not math.isfinite(v) or v <= 0:
        raise value_error(name, "a finite number > 0", value)
    return v


def check_unit_interval(name: str, value: Any) -> float:
    v = check_real(name, value)
    if not (0.0 <= v <= 1.0):  # also refuses NaN
        raise value_error(name, "a number in [0, 1]", value)
    return v


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise type_error(name, "an integer", value)
    v = int(value)
    if minimum is not None and v < minimum:
        raise value_error(name, f"an integer >= {minimum}", value)
    return v


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        if len(listed) > 100:  # many choices (registered names, aliases): the first ones
            listed = listed[: listed.rfind(", ", 0, 90)] + f", ... ({len(choices)} in all)"
        raise value_error(name, "one of " + listed, value)
    return value


def check_config(name: str, cfg: Any, allowed: Iterable[str], required: Iterable[str]) -> dict:
    """A config dict with only ``allowed`` keys and all ``required`` keys."""
    if not isinstance(cfg, dict):
        raise type_error(name, "a dict", cfg)
    allowed = set(allowed)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise value_error(
            name, f"a dict with keys from {sorted(allowed)} (unknown: {unknown})", cfg
        )
    missing = sorted(set(required) - set(cfg))
    if missing:
        raise value_error(
            name, f"a dict with keys {sorted(set(required))} (missing: {missing})", cfg
        )
    return cfg
