"""Strength schedules: an exponential schedule never overflows mid-training."""

from __future__ import annotations

import math

import pytest

from torchpenalty import schedules


def test_growing_exponential_needs_a_limit():
    with pytest.raises(ValueError, match=r"limit must be given when gamma > 1 .*gamma=1.5"):
        schedules.Exponential(1e-4, 1.5)
    s = schedules.Exponential(1e-4, 1.5, limit=1e-2)
    for step in (0, 5, 11, 12, 1750, 1751, 10**6, 10**12):
        v = s(step)
        assert math.isfinite(v) and 0 < v <= 1e-2
        assert v == min(1e-4 * 1.5**step, 1e-2) if step < 1751 else v == 1e-2
    with pytest.raises(OverflowError):  # what an unlimited schedule would hit
        1e-4 * 1.5**1751


def test_decaying_exponential_and_configs():
    s = schedules.Exponential(1.0, 0.5)
    assert s(3) == 0.125 and s(10**6) == 0.0 and s.limit is None
    assert (
        schedules.schedule_from_config({"schedule": "exponential", "start": 1, "gamma": 0.5})(1)
        == 0.5
    )
    grown = schedules.Exponential(1e-3, 2.0, limit=0.5)
    again = schedules.schedule_from_config(grown.get_config())
    assert again == grown and again(100) == 0.5
    with pytest.raises(ValueError, match=r"limit must be a finite number >= 0, got -1"):
        schedules.Exponential(1.0, 2.0, limit=-1)
