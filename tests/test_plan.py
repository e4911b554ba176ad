"""The sweep's plan: a cost model of the work and a cached per-device calibration, so the
plan does not depend on the moment's load (torchpenalty.sweep.plan, .calibration)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import calibration as cal_mod
from torchpenalty.sweep import plan as P
from torchpenalty.sweep.engine import Engine, Problem, Task


def _curve(slow_after: float) -> list[list[float]]:
    """A memory curve: 1e-11 s/byte in the caches, 6e-11 beyond ``slow_after`` bytes."""
    return [[1e5, 1e-11], [slow_after, 1e-11], [4 * slow_after, 6e-11], [1e10, 6e-11]]


CALIBRATIONS = {
    "cpu-like": {
        "bandwidth": _curve(3e7),
        "bmm": {
            "single": dict(a=2e-4, b=8e-5, f=1e-11, c=0.0),
            "stacked": dict(a=2.2e-4, b=7e-5, f=7e-12, c=0.0),
        },
        "vmap": {
            "single": dict(a=4e-4, b=1.4e-4, f=1e-11, c=4e-11),
            "stacked": dict(a=4e-4, b=1.5e-4, f=9e-12, c=9e-11),
        },
    },
    "gpu-like": {
        "bandwidth": _curve(5e7),
        "bmm": {
            "single": dict(a=1e-3, b=1e-4, f=1e-14, c=0.0),
            "stacked": dict(a=1e-3, b=1e-4, f=1e-14, c=0.0),
        },
        "vmap": {
            "single": dict(a=2e-3, b=2e-4, f=1e-14, c=1e-14),
            "stacked": dict(a=2e-3, b=2e-4, f=1e-14, c=1e-14),
        },
    },
    "flops-bound": {
        "bandwidth": _curve(1e6),
        "bmm": {
            "single": dict(a=1e-6, b=0.0, f=1e-11, c=0.0),
            "stacked": dict(a=1e-6, b=0.0, f=2e-11, c=0.0),
        },
        "vmap": {
            "single": dict(a=1e-6, b=0.0, f=1e-11, c=1e-11),
            "stacked": dict(a=1e-6, b=0.0, f=2e-11, c=2e-11),
        },
    },
}


def mlp(width: int, d: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 1))  # fmt: skip


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 10))  # fmt: skip


def engine(make, x_shape=(10,), n=60, batch=16, loss="mse") -> Engine:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, n, *x_shape, generator=g)
    Y = torch.randn(3, n, 1, generator=g) if loss == "mse" else torch.randint(0, 10, (n,))
    idx = np.arange(n)
    pb = Problem(X, Y, torch.ones(3, 1), [idx[: n // 2], idx[n // 2 :], idx],
                 [idx[n // 2 :], idx[: n // 2], idx[:0]], loss)  # fmt: skip
    return Engine(make, pb, tp.L2(1.0), epochs=1, batch_size=batch, optimizer="adam", lr=0.01,
                  mode="grad", seed=0, early_stopping=None)  # fmt: skip


WORKS = {
    "mlp32": P.Work(3, 1441, 3 * 64 * 2752.0, 0, 64, 67),
    "mlp256": P.Work(3, 68865, 3 * 64 * 136_704.0, 0, 64, 523),
    "mlp1024": P.Work(3, 1_061_889, 3 * 64 * 2_119_680.0, 0, 64, 2059),
    "cnn": P.Work(2, 1370, 3 * 64 * 2560.0, 3 * 64 * 9216.0, 64, 1000),
}


# ---------------------------------------------------------------------------- the work
def test_work_counts_flops_from_shapes():
    w = P.work_of(engine(lambda: mlp(32)))
    # 2 x multiply-adds of every Linear per row, forward + backward = 3 x forward
    assert w.linear_flops == 3 * 16 * 2 * (10 * 32 + 32 * 32 + 32 * 1)
    assert w.params == 10 * 32 + 32 + 32 * 32 + 32 + 33 and w.layers == 3 and w.batch == 16
    assert w.acts == 32 + 32 + 32 + 32 + 1  # every module's output elements, one row
    c = P.work_of(engine(cnn, x_shape=(1, 8, 8), loss="cross_entropy"))
    assert c.conv_flops == 3 * 16 * 2 * (8 * 8 * 8) * (1 * 9)
    assert c.linear_flops == 3 * 16 * 2 * 10 * 128


def test_frozen_parameters_are_not_counted():
    def make():
        m = mlp(8)
        m[0].weight.requires_grad_(False)
        return m

    assert P.work_of(engine(make)).params == P.work_of(engine(lambda: mlp(8))).params - 80


# ---------------------------------------------------------------------------- pure math
@pytest.mark.parametrize("cal", sorted(CALIBRATIONS))
@pytest.mark.parametrize("work", sorted(WORKS))
def test_more_tasks_never_cost_more_per_model(cal, work):
    """Per-model predicted seconds are non-increasing in the task count up to the chunk
    the plan stacks; beyond it they never exceed those of the plan's smallest chunk alone
    (or of one model alone), and the total never falls when tasks are added."""
    c, w, kind = CALIBRATIONS[cal], WORKS[work], "vmap" if work == "cnn" else "bmm"
    limit = 400
    totals = [P.sweep_seconds(w, c, kind, n, limit) for n in range(1, 301)]
    per_model = [t / n for n, t in enumerate(totals, 1)]
    assert all(b >= a - 1e-15 for a, b in itertools.pairwise(totals))
    best = P.best_chunk(w, c, kind, limit)
    head = per_model[:best]
    assert all(b <= a + 1e-15 for a, b in itertools.pairwise(head)), (best, head)
    for n in range(best, 301):
        plan = P.plan_chunks(w, c, kind, n, limit)
        smallest = n // math.ceil(n / plan.chunk_size)
        alone = P.step_seconds(w, c, kind, smallest) / smallest
        assert per_model[n - 1] <= alone * (1 + 1e-12) or not plan.vectorize
        assert per_model[n - 1] <= per_model[0] * (1 + 1e-12)  # never worse than one at a time


@pytest.mark.parametrize("work", sorted(WORKS))
def test_the_chunk_limit_does_not_depend_on_the_task_count(work):
    c, w = CALIBRATIONS["cpu-like"], WORKS[work]
    kind = "vmap" if work == "cnn" else "bmm"
    best = P.best_chunk(w, c, kind, 1000)
    for n in (best, best + 1, 2 * best + 3, 650):
        plan = P.plan_chunks(w, c, kind, n, 1000)
        assert plan.chunk_size <= best or not plan.vectorize


def test_plans_that_the_calibration_decides():
    c = CALIBRATIONS["cpu-like"]
    small = P.plan_chunks(WORKS["mlp32"], c, "bmm", 65, 1000)
    assert small.vectorize and small.chunk_size == 65  # overhead-bound: stack everything
    wide = P.plan_chunks(WORKS["mlp1024"], c, "bmm", 65, 1000)
    assert wide.chunk_size < 10  # copies beyond the caches cost more than they save
    flops = P.plan_chunks(WORKS["mlp256"], CALIBRATIONS["flops-bound"], "bmm", 65, 1000)
    assert not flops.vectorize and flops.choice == "one at a time"
    one = P.plan_chunks(WORKS["mlp32"], c, "bmm", 1, 1000)
    assert not one.vectorize and one.chunk_size == 1 and one.reasons == ("one task",)
    assert P.plan_chunks(WORKS["mlp32"], c, "bmm", 65, 1).chunk_size == 1


def test_the_plan_is_deterministic_for_a_given_calibration():
    c = json.loads(json.dumps(CALIBRATIONS["cpu-like"]))
    eng = engine(lambda: mlp(64))
    tasks = [Task(i, k, s) for i, s in enumerate([0.01, 0.1, 1.0]) for k in range(2)]
    plans = [P.choose(eng, tasks, 100, calibration=c).to_dict() for _ in range(5)]
    assert all(p == plans[0] for p in plans)
    assert plans[0]["source"] == "cost model" and plans[0]["probe_s"] == 0.0
    assert plans[0]["vectorize"] == (plans[0]["stacked_s"] < P.STACK_MARGIN * plans[0]["single_s"])
    assert len(plans[0]["reasons"]) == 3 and json.dumps(plans[0])


# ---------------------------------------------------------------------------- calibration
@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHPENALTY_CACHE_DIR", str(tmp_path))
    return tmp_path / "calibration.json"


FAKE = {"bandwidth": [[1e6, 1e-11], [1e9, 5e-11]], "seconds": 0.5, "stack": 8,
        **{k: {p: dict(a=1e-4, b=1e-5, f=1e-11, c=1e-11) for p in ("single", "stacked")}
           for k in ("bmm", "vmap")}}  # fmt: skip


def test_calibration_is_measured_once_and_cached(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(cal_mod, "measure", lambda dev: calls.append(dev) or dict(FAKE))
    first = cal_mod.calibrate("cpu")
    again = cal_mod.calibrate("cpu")
    assert len(calls) == 1 and not first["cached"] and again["cached"]
    assert first["key"] == again["key"] == cal_mod.cache_key(torch.device("cpu"))
    stored = json.loads(cache.read_text())
    assert list(stored) == [first["key"]] and f"threads {torch.get_num_threads()}" in first["key"]
    cal_mod.calibrate("cpu", refresh=True)
    assert len(calls) == 2


@pytest.mark.parametrize(("provisional", "age_s", "measured_again"),
                         [(False, 10 * 3600, False), (True, 60, False), (True, 2 * 3600, True)])  # fmt: skip
def test_a_provisional_calibration_is_measured_again_after_an_hour(
    cache, monkeypatch, provisional, age_s, measured_again
):
    """An entry measured on a busy machine (``provisional``) is reused for an hour (plans
    of that hour agree), then measured again; a quiet machine's entry is kept for good."""
    calls = []
    entry = {**FAKE, "provisional": provisional, "measured_at": time.time() - age_s}
    monkeypatch.setattr(cal_mod, "measure", lambda dev: calls.append(dev) or dict(entry))
    cal_mod.calibrate("cpu")
    got = cal_mod.calibrate("cpu")
    assert len(calls) == 1 + measured_again and got["cached"] is not measured_again


@pytest.mark.parametrize(("others", "first_stacked", "provisional", "timed"),
                         [(0.0, 1.0, False, 2), (0.0, 100.0, False, 4), (5.0, 1.0, True, 2)])  # fmt: skip
def test_measure_times_a_disturbed_configuration_again_and_flags_a_busy_machine(
    monkeypatch, others, first_stacked, provisional, timed
):
    """A stacked step slower than 1.5 x 8 one-model steps is timed again (and, once it
    looks sane, the fit uses the new time); a machine whose other processes keep more
    cores busy than this process leaves free gives a provisional calibration."""
    seen: dict[tuple[str, int], int] = {}

    def fastest(eng, copies):
        key = (eng.forward_kind, repr(eng.base), copies)
        seen[key] = seen.get(key, 0) + 1
        return 1e-3 * (first_stacked if copies > 1 and seen[key] == 1 else 1.0 + copies / 8)

    monkeypatch.setattr(cal_mod, "_fastest", fastest)
    monkeypatch.setattr(cal_mod, "others_load", lambda: others)
    got = cal_mod.measure("cpu")
    assert got["provisional"] is provisional and got["disturbed"] == []
    assert max(seen.values()) == timed // 2 and len(seen) == 18  # 9 configurations x 2
    assert got["bmm"]["stacked"]["a"] < 1e-2  # the fit never saw the disturbed 100 ms


def test_measure_recovers_the_constants_that_made_its_timings(monkeypatch):
    """Round trip: steps timed as the cost model predicts them for known constants, with
    a wide model's products cheaper per FLOP than a narrow one's (they spread over the
    cores), give back those constants: ``a``, ``b``, ``c`` and ``f`` as a curve over the
    two wide widths (a single ``f`` fitted on width 192 overstated a lone width-1024
    model's step at two threads by 45%, and the plan stacked where one at a time won)."""
    curve = cal_mod.bandwidth(torch.device("cpu"), (0.25, 1))
    f = {"single": [2e-11, 8e-12], "stacked": [1e-11, 6e-12]}
    true = {p: dict(a=1e-4, b=2e-5, c=3e-11) for p in f}
    wide = [P.work_of(cal_mod._engine(*cal_mod._configs("bmm")[n], "bmm", "cpu")).linear_flops
            for n in cal_mod.WIDE]  # fmt: skip

    def fastest(eng, copies):
        w, path = P.work_of(eng), "single" if copies == 1 else "stacked"
        points = [[flops, v] for flops, v in zip(wide, f[path])]
        cal = {"bandwidth": curve, "bmm": {path: {**true[path], "f": points}}}
        return P.step_seconds(w, cal, "bmm", copies)

    monkeypatch.setattr(cal_mod, "_fastest", fastest)
    monkeypatch.setattr(cal_mod, "bandwidth", lambda dev: curve)
    got = cal_mod.measure("cpu")
    for path in f:
        fit = got["vmap"][path]
        assert [y for _, y in fit["f"]] == pytest.approx(f[path], rel=1e-6)
        assert fit["c"] == pytest.approx(true[path]["c"], rel=1e-6)
        # the tiny models' own arithmetic is counted as overhead: a and b to 1%
        assert (fit["a"], fit["b"]) == pytest.approx((true[path]["a"], true[path]["b"]), rel=1e-2)
    assert cal_mod._valid({**got, "key": "k"})
    broken = {**got, "bmm": {**got["bmm"], "single": {**got["bmm"]["single"], "f": [[1e6, -1]]}}}
    assert not cal_mod._valid(broken)


@pytest.mark.parametrize(("f", "flops", "expected"), [
    (3e-11, 1e3, 3e-11),  # a number: the same at any size
    ([[1e6, 2e-11], [1e8, 1e-11]], 1e3, 2e-11),  # flat below the curve
    ([[1e6, 2e-11], [1e8, 1e-11]], 1e10, 1e-11),  # and above it
    ([[1e6, 2e-11], [1e8, 1e-11]], 1e7, 1.5e-11),  # linear in log(flops)
    ([[1e6, 2e-11], [1e8, 1e-11]], 1e6 * 10**0.5, 1.75e-11),
])  # fmt: skip
def test_seconds_per_flop_interpolates_its_curve(f, flops, expected):
    assert P.seconds_per_flop(f, flops) == pytest.approx(expected, rel=1e-9)


def test_measure_gives_up_on_a_configuration_that_stays_disturbed(monkeypatch):
    monkeypatch.setattr(cal_mod, "_fastest", lambda eng, copies: 1e-3 * (100 if copies > 1 else 1))
    monkeypatch.setattr(cal_mod, "others_load", lambda: 0.0)
    got = cal_mod.measure("cpu")
    assert got["provisional"] and len(got["disturbed"]) == 9
    plan = P.choose(engine(lambda: mlp(8)), [Task(0, 0, 0.1), Task(0, 1, 0.1)], 8, calibration=got)
    assert "provisional" in plan.reasons[-1]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"v1|cpu|x": {"bmm": 3}}', ""])
def test_a_corrupt_cache_is_ignored_and_rewritten(cache, monkeypatch, content):
    cache.write_text(content)
    monkeypatch.setattr(cal_mod, "measure", lambda dev: dict(FAKE))
    got = cal_mod.calibrate("cpu")
    assert not got["cached"]
    stored = json.loads(cache.read_text())
    assert list(stored) == [got["key"]]  # the bad entries are gone
    assert cal_mod.calibrate("cpu")["cached"]


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHPENALTY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cal_mod.cache_dir() == str(tmp_path / "torchpenalty")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cal_mod.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "torchpenalty")


def test_a_measured_calibration_is_valid_and_positive():
    got = cal_mod.calibrate("cpu")  # the session's cache folder (conftest.py)
    assert cal_mod._valid(got) and got["seconds"] > 0
    xs = [x for x, _ in got["bandwidth"]]
    assert xs == sorted(xs)


def _busy(seconds: float) -> subprocess.Popen:
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def test_the_plan_is_the_same_under_background_load():
    """Two busy processes: the plan of a sweep is identical 5 times out of 5 (and equal
    to the quiet plan), for MLPs of widths 32, 256 and 1024 and a CNN."""
    cases = [*((engine(lambda w=w: mlp(w)), f"mlp{w}") for w in (32, 256, 1024)),
             (engine(cnn, x_shape=(1, 8, 8), loss="cross_entropy"), "cnn")]  # fmt: skip
    tasks = [Task(i, k, s) for i, s in enumerate([1e-3, 1e-2, 0.1, 1.0]) for k in range(2)]
    cal_mod.calibrate("cpu")  # measured once (the session's cache folder, conftest.py)
    quiet = {name: P.choose(eng, tasks, 100).to_dict() for eng, name in cases}
    procs = [_busy(60) for _ in range(2)]
    try:
        time.sleep(0.2)
        for _ in range(5):
            for eng, name in cases:
                assert P.choose(eng, tasks, 100).to_dict() == quiet[name]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert all(math.isfinite(q["single_s"]) for q in quiet.values())
