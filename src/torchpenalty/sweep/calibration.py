"""What one training step costs on this device: measured once, cached as JSON.

The sweep's plan (:func:`torchpenalty.sweep.plan.plan_chunks`) predicts the seconds of a
model-step from the work it does (layers, parameters, FLOPs) and a few per-device
constants. This module measures those constants with tiny synthetic models trained by the
sweep's own engine -- one model alone and 8 stacked, each configuration timed in several
rounds taken in turn and kept by its fastest step (a background load only ever adds time)
-- and keeps them in the user's cache folder, keyed by device, torch version and thread
count, so that every later sweep on that machine plans from the same numbers.

A measurement taken while other processes keep the cores busy (the 1-minute load average,
less this process, above the cores this process leaves free, plus half a core), or one
whose stacked step stayed implausibly slow against the same models one at a time after
:data:`RETRIES` tries (a busy core stalls every parallel region of a multithreaded
step), is ``"provisional"``: kept for :data:`PROVISIONAL_S` seconds, then measured again;
a quiet measurement replaces it for good.

The cache folder is ``$TORCHPENALTY_CACHE_DIR``, else ``$XDG_CACHE_HOME/torchpenalty``, else
``~/.cache/torchpenalty``; the file is ``calibration.json``, written atomically; a file
that cannot be read or parsed is ignored and rewritten.

The model of one step of M models stacked (``path`` ``"single"``: one model alone, M = 1;
``"stacked"``: a chunk of M models)::

    seconds = a + b * layers + M * (f(linear_flops) * linear_flops + c * conv_flops
                                    + bytes * seconds_per_byte(M * working_set))

where ``bytes`` (memory traffic of one model-step) and ``working_set`` (what one model
keeps hot) are estimated from the parameters and activations
(:func:`torchpenalty.sweep.cost.step_seconds`), and ``seconds_per_byte`` is interpolated
(log-log) in a measured curve: an in-place add over arrays of 0.5 MB to 512 MB, each
kept by its fastest of several runs. Past the caches a byte costs several times more:
a stacked chunk of wide models whose copies no longer fit pays that, one model alone
does not. ``f`` is a curve too, of seconds per FLOP against a model-step's linear FLOPs,
measured on two widths (192 and 768, :data:`WIDE`): one wide model's products spread
over several threads, a narrow one's do not, so one constant would overstate what one
wide model costs with two or more threads. ``calibrate(device)`` returns ``{"key": ...,
"bandwidth": [[bytes, s/byte], ...], "bmm": {"single": {...}, "stacked": {...}},
"vmap": {...}, "seconds": ...}`` with ``a, b, f, c`` in each path (``f``: ``[[flops,
s/flop], ...]``; a number is accepted where a calibration is given by hand).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .cost import memory_seconds, seconds_per_flop, work_of

__all__ = [
    "CALIBRATION_VERSION",
    "PROVISIONAL_S",
    "STACK",
    "cache_dir",
    "cache_key",
    "calibrate",
    "measure",
    "others_load",
]

CALIBRATION_VERSION = 4
"""Bumped when what is measured changes: older cached entries are then not used."""

STACK = 8
"""Models stacked in the stacked calibration steps."""

ROUNDS, STEPS = 3, 3
"""Each configuration is timed in ``ROUNDS`` blocks (taken in turn) of ``STEPS`` steps."""

RETRIES = 3
"""Times a configuration whose stacked step looks disturbed (:func:`_disturbed`) is
measured at most."""


def cache_dir() -> str:
    """The folder of the calibration cache (see the module docstring)."""
    if os.environ.get("TORCHPENALTY_CACHE_DIR"):
        return os.environ["TORCHPENALTY_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "torchpenalty")


def device_name(device: torch.device) -> str:
    """The device's model name: the CUDA device's, or the CPU's (from ``/proc/cpuinfo``
    where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def cache_key(device: torch.device) -> str:
    """Device name, torch version and (on the CPU) thread count: what the costs depend on.

    >>> cache_key(torch.device("cpu")).startswith(f"v{CALIBRATION_VERSION}|cpu|")
    True
    """
    threads = f"|threads {torch.get_num_threads()}" if device.type == "cpu" else ""
    return (
        f"v{CALIBRATION_VERSION}|{device.type}|{device_name(device)}|torch {torch.__version__}"
        + threads
    )


def _read_cache(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: str, data: dict[str, Any]) -> None:
    """Through a temporary file renamed over ``path``; a folder that cannot be written
    leaves the cache unwritten (the sweep still runs, and calibrates again next time)."""
    folder = os.path.dirname(path)
    with contextlib.suppress(OSError):
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _valid(entry: Any) -> bool:
    """A cache entry with a bandwidth curve and finite constants >= 0 (``f`` a curve of
    ``[flops, s/flop]`` points)."""
    try:
        curve = [(float(x), float(y)) for x, y in entry["bandwidth"]]
        consts = [
            v
            for k in ("bmm", "vmap")
            for path in ("single", "stacked")
            for v in (*(float(entry[k][path][c]) for c in "abc"), *_numbers(entry[k][path]["f"]))
        ]
        return len(curve) >= 2 and all(np.isfinite(v) and v >= 0 for v in consts)
    except (KeyError, TypeError, ValueError):
        return False


def _numbers(f: Any) -> list[float]:
    """The numbers of ``f``: a number, or a curve of ``[flops, s/flop]`` points."""
    if isinstance(f, (int, float)):
        return [float(f)]
    return [float(v) for point in f for v in point] if len(f) else [float("nan")]


PROVISIONAL_S = 3600.0
"""A calibration measured while the machine was busy (``"provisional"``) is used for at
most this many seconds after it was measured; then it is measured again."""


def calibrate(device: torch.device | str = "cpu", *, refresh: bool = False) -> dict[str, Any]:
    """The calibration of ``device``: from the cache when it holds a valid entry for
    :func:`cache_key`, else measured (:func:`measure`, about a second) and cached.
    ``refresh=True`` measures again. An entry measured while other processes kept the
    cores busy, or whose timings are implausible (:func:`_disturbed`), is
    ``"provisional"``: it is kept for :data:`PROVISIONAL_S` seconds (the plans of that
    hour agree) and then measured again, and a later measurement on a quiet machine
    replaces it for good -- a busy moment does not decide every later plan."""
    device = torch.device(device)
    key = cache_key(device)
    path = os.path.join(cache_dir(), "calibration.json")
    data = _read_cache(path)
    old = data.get(key)
    if not refresh and _valid(old) and not _expired(old):
        return {**old, "key": key, "cached": True}
    entry = measure(device)
    data = {k: v for k, v in data.items() if _valid(v)}  # a corrupt file is rewritten
    data[key] = entry
    _write_cache(path, data)
    return {**entry, "key": key, "cached": False}


def _expired(entry: dict[str, Any]) -> bool:
    """A provisional entry older than :data:`PROVISIONAL_S` seconds."""
    if not entry.get("provisional"):
        return False
    try:
        return time.time() - float(entry.get("measured_at", 0.0)) > PROVISIONAL_S
    except (TypeError, ValueError):
        return True


def others_load() -> float | None:
    """About how many cores other processes kept busy over the last minute: the 1-minute
    load average less one (this process), at least 0; None where the system does not
    report a load average.

    >>> others_load() is None or others_load() >= 0.0
    True
    """
    if not hasattr(os, "getloadavg"):
        return None
    with contextlib.suppress(OSError):
        return max(0.0, os.getloadavg()[0] - 1.0)
    return None


def _disturbed(times: dict[str, dict[str, float]], stack: int) -> list[str]:
    """The configurations whose ``stack`` stacked models took implausibly long: more
    than 1.5 times ``stack`` steps of one model alone (the same arithmetic, one step).
    A load that hits multithreaded steps (a parallel region waits for a busy core) does
    that; a quiet machine never did here.

    >>> _disturbed({"single": {"a": 1.0, "b": 1.0}, "stacked": {"a": 4.0, "b": 20.0}}, 8)
    ['b']
    """
    return [name for name, t in times["stacked"].items()
            if t > 1.5 * stack * times["single"][name]]  # fmt: skip


# ---------------------------------------------------------------------------- measuring
def _mlp(width: int, depth: int, d_in: int) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        for j in range(depth - 1):
            layers += [nn.Linear(d_in if j == 0 else width, width), nn.ReLU()]
        layers.append(nn.Linear(width if depth > 1 else d_in, 1))
        return nn.Sequential(*layers)

    return make


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 1))  # fmt: skip


def _engine(make: Callable[[], nn.Module], x_shape: tuple[int, ...], batch: int, forward: str,
            device: torch.device) -> Any:  # fmt: skip
    from ..penalties import L2
    from .engine import Engine, Problem

    g = torch.Generator().manual_seed(0)
    n = max(2 * batch, 8)
    X = torch.randn(1, n, *x_shape, generator=g)
    pb = Problem(X.to(device), torch.randn(1, n, 1, generator=g).to(device),
                 torch.ones(1, 1, device=device), [np.arange(n)], [np.arange(0)], "mse")  # fmt: skip
    return Engine(make, pb, L2(1.0), epochs=1, batch_size=batch, optimizer="adam", lr=1e-3,
                  mode="grad", seed=0, early_stopping=None, forward=forward, device=device)  # fmt: skip


def _fastest(engine: Any, copies: int) -> float:
    """The fastest step of ``copies`` stacked models over :data:`ROUNDS` blocks (one
    stepper per block, opened after the other's: a load that comes and goes falls on
    every configuration), each block after a warm-up step."""
    from .engine import Task

    best = float("inf")
    for _ in range(ROUNDS):
        with engine.timed_stepper([Task(0, 0, 0.1)] * copies) as step:
            step()
            best = min(best, *(step() for _ in range(STEPS)))
    return best


def _configs(kind: str) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]]:
    out = {
        "tiny1": (_mlp(4, 1, 4), (4,), 4),
        "tiny4": (_mlp(4, 4, 4), (4,), 4),
        "wide_b128": (_mlp(192, 2, 192), (192,), 64),
        "wide768": (_mlp(768, 2, 768), (768,), 64),
    }
    if kind == "vmap":
        out["conv"] = (_cnn, (3, 8, 8), 16)
    return out


def measure(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Measure the constants of the cost model (see the module docstring) for both
    forward kinds (``"bmm"``: tabular MLPs; ``"vmap"``: any module) and both paths."""
    device = torch.device(device)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    busy = others_load() if device.type == "cpu" else None
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch's one-time imports
    curve = bandwidth(device)
    out: dict[str, Any] = {"bandwidth": curve}
    odd: list[str] = []
    for kind in ("bmm", "vmap"):
        times: dict[str, dict[str, float]] = {"single": {}, "stacked": {}}
        works = {}
        for name, (make, shape, batch) in _configs(kind).items():
            eng = _engine(make, shape, batch, kind, device)
            works[name] = work_of(eng)
            for _ in range(RETRIES):  # a disturbed configuration is timed again
                times["single"][name] = _fastest(eng, 1)
                times["stacked"][name] = _fastest(eng, STACK)
                if not _disturbed({p: {name: times[p][name]} for p in times}, STACK):
                    break
        odd += [f"{kind} {n}" for n in _disturbed(times, STACK)]
        out[kind] = {path: _fit(times[path], works, STACK if path == "stacked" else 1, curve)
                     for path in times}  # fmt: skip
    free = (os.cpu_count() or 1) - threads
    out["load"] = busy  # other processes' cores, from the load average
    out["disturbed"] = odd
    out["provisional"] = bool(odd) or (busy is not None and busy > free + 0.5)
    out["measured_at"] = time.time()
    out["seconds"] = time.perf_counter() - t0
    out["stack"] = STACK
    return out


def bandwidth(device: torch.device, sizes_mb: tuple[float, ...] = (0.25, 1, 4, 16, 64, 256)
              ) -> list[list[float]]:  # fmt: skip
    """Seconds per byte of ``y.add_(x)`` (reads two arrays, writes one) against the bytes
    of the two arrays, fastest of 5 runs for each size."""
    out = []
    for mb in sizes_mb:
        n = int(mb * 2**20 / 4)
        x, y = torch.ones(n, device=device), torch.ones(n, device=device)
        best = float("inf")
        for _ in range(5):
            _sync(device)
            t0 = time.perf_counter()
            y.add_(x)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        out.append([2.0 * n * 4, best / (3 * n * 4)])
        del x, y
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WIDE = ("wide_b128", "wide768")
"""The configurations whose linear FLOPs give the curve of seconds per FLOP (a product
spread over several cores costs less per FLOP than a small one)."""


def _fit(t: dict[str, float], w: dict[str, Any], m: int, curve: list[list[float]]
         ) -> dict[str, Any]:  # fmt: skip
    """Solve the cost model's constants from the timed steps ``t`` of the configurations
    with work ``w`` (``m`` models per step), the memory term taken from ``curve``: ``a``
    and ``b`` from the tiny models, ``f`` as a curve ``[[linear_flops, s/flop], ...]``
    over the :data:`WIDE` models, ``c`` from the convolution; every constant is clamped at
    >= 0."""
    b = max(0.0, (t["tiny4"] - t["tiny1"]) / (w["tiny4"].layers - w["tiny1"].layers))
    a = max(0.0, t["tiny1"] - b * w["tiny1"].layers)
    f = []
    for name in sorted(WIDE, key=lambda n: w[n].linear_flops):
        hi = w[name]
        rest = a + b * hi.layers + m * memory_seconds(hi, curve, m)
        f.append([hi.linear_flops, max(0.0, (t[name] - rest) / (m * hi.linear_flops))])
    c = 0.0
    if "conv" in t:
        cw = w["conv"]
        lin = seconds_per_flop(f, cw.linear_flops) * cw.linear_flops
        rest = a + b * cw.layers + m * (lin + memory_seconds(cw, curve, m))
        c = max(0.0, (t["conv"] - rest) / (m * cw.conv_flops))
    return {"a": a, "b": b, "f": f, "c": c}
