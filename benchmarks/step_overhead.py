"""Per-step cost of regularizing, as ratios to the unregularized step of the same run.

For three models (the tutorial's 5->10->5 net, a ~1M and a ~25M parameter MLP) it times a
full SGD training step (zero_grad, forward, MSE, backward, step) for:

* ``none``:            no regularization (foreach SGD): the baseline;
* ``tutorial``:        the tutorial's ``lambda * sum(p**2) / 2`` Python loop in the loss;
* ``reg() in loss``:   ``loss + reg()``;
* ``attach <mode>``:   ``reg.attach(opt, mode=...)`` for grad, decoupled, independent,
  corrected, cautious (decoupled, ``cautious=True``) and proximal (all with ``L2``);
* ``fuse grad``:       ``reg.attach(opt, mode="grad", fuse=True)`` (SGD's own weight_decay;
  foreach SGD adds it out of place, a copy of the gradients);
* ``fuse grad fused``: the same with ``SGD(fused=True)`` (ratio to ``none fused``);
* ``none fused``:      no regularization, ``SGD(fused=True)``;
* ``param_groups fused``: ``SGD(tp.param_groups(model, s), fused=True)`` (ratio to ``none fused``);
* ``one-graph <mode>`` (compiled only): the attached mode with ``tp.one_graph_step(opt)()``
  in place of ``opt.step()``, so that the hooks and SGD's update compile into one graph
  (``one-graph none``: the same for the unregularized step, the baseline of these rows; it
  is itself faster than the compiled ``none``, whose step breaks the graph twice).

Each is timed eager and compiled (``torch.compile`` of the whole step, ``--backend``,
inductor by default, with a tensor lr), as ratios to the same unregularized step: eager to
eager, compiled to compiled (the fused-SGD variants eager only). With one thread and with
torch's default (``--threads``).

Variants are interleaved round by round after a warm-up and the median is reported. Peak
memory is the peak resident set size of a fresh subprocess running three steps of the
variant, minus that of the unregularized variant (CPU has no allocator statistics; a fixed
glibc mmap threshold makes RSS follow live tensors). Finally
``reg.value()`` is timed against one read pass over the same tensors (``p.sum()`` each).

On a GPU (``--device cuda``) steps are timed between ``torch.cuda.synchronize()`` calls and
peak memory is ``torch.cuda.max_memory_allocated()`` of each variant.

Run: ``python benchmarks/step_overhead.py`` (``--quick`` for a smoke run: the tiny model,
the ``eager`` compile backend, one thread setting; ``--device cuda``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import types

import torch
from torch import nn

import torchpenalty as tp

S = 1e-4
MODELS = {
    "tutorial 5-10-5": ([5, 10, 5], 32),
    "MLP ~1M": ([256, 1024, 512, 256, 1], 64),
    "MLP ~25M": ([1024, 2048, 2048, 2048, 2048, 2048, 1024, 1], 64),
}
MODES = {  # variant -> (mode, attach options)
    "attach grad": ("grad", {}),
    "attach decoupled": ("decoupled", {}),
    "attach independent": ("independent", {}),
    "attach corrected": ("corrected", {}),
    "attach cautious": ("decoupled", {"cautious": True}),
    "attach proximal": ("proximal", {}),
    "fuse grad": ("grad", {"fuse": True}),
    "fuse grad fused": ("grad", {"fuse": True}),  # SGD(fused=True): ratio to "none fused"
}
VARIANTS = ["none", "tutorial", "reg() in loss", *MODES, "none fused", "param_groups fused"]
#: compiled only: the same step through ``tp.one_graph_step(opt)`` (hooks and SGD in one graph)
ONE_GRAPH = ["one-graph none"] + [
    "one-graph " + m.removeprefix("attach ") for m in MODES if m.startswith("attach")
]
#: variants timed compiled (fused SGD is eager-only here)
COMPILED = [
    "none", "tutorial", "reg() in loss", *(m for m in MODES if m != "fuse grad fused"), *ONE_GRAPH
]  # fmt: skip
#: variants whose baseline is the unregularized fused-SGD step
ON_FUSED = ("param_groups fused", "fuse grad fused")


def mlp(sizes):
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def tutorial_penalty(model, lam):
    total = 0
    for p in model.parameters():
        total += torch.sum(p**2)
    return lam * total / 2


def build(variant, sizes, batch, device="cpu", compiled=None):
    """The step of ``variant``; ``compiled``: a torch.compile backend (tensor lr)."""
    torch.manual_seed(0)
    model = mlp(sizes).to(device)
    x = torch.randn(batch, sizes[0], device=device)
    y = torch.randn(batch, sizes[-1], device=device)
    reg = tp.Regularizer(model, tp.L2(S))
    lr = torch.tensor(1e-3, device=device) if compiled else 1e-3
    if variant == "param_groups fused":
        opt = torch.optim.SGD(tp.param_groups(model, S), lr=lr, fused=True)
    else:
        fused = variant in ("none fused", "fuse grad fused")
        opt = torch.optim.SGD(model.parameters(), lr=lr, fused=fused)
    one_graph = variant.startswith("one-graph ")
    if one_graph and variant != "one-graph none":
        variant = "attach " + variant.removeprefix("one-graph ")
    if variant in MODES:
        mode, options = MODES[variant]
        reg.attach(opt, mode=mode, **options)
    opt_step = tp.one_graph_step(opt) if one_graph else opt.step

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        if variant == "tutorial":
            loss = loss + tutorial_penalty(model, S)
        elif variant == "reg() in loss":
            loss = loss + reg()
        loss.backward()
        opt_step()

    if compiled:
        step = torch.compile(_own_code(step, variant), backend=compiled)
    return step, model, reg


def _own_code(fn, variant):
    """``fn`` with a code object of its own: dynamo caches compiled code per code object,
    and variants sharing one would scan each other's guards (and hit the recompile limit)."""
    name = "step_" + "".join(c if c.isalnum() else "_" for c in variant)
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(sizes, batch, rounds, warmup, device="cpu", compiled=None):
    variants = COMPILED if compiled else VARIANTS
    steps = {v: build(v, sizes, batch, device, compiled)[0] for v in variants}
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for v, step in steps.items():  # interleaved: drift hits every variant alike
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(t) for v, t in times.items()}


def peak_rss_mib(variant, model_name, steps):
    """Peak RSS of a fresh process running ``steps`` steps of one variant (MiB)."""
    code = (
        "import sys, resource, json; sys.path.insert(0, 'benchmarks');"
        "import step_overhead as b;"
        f"sizes, batch = b.MODELS[{model_name!r}];"
        f"step = b.build({variant!r}, sizes, batch)[0];"
        f"[step() for _ in range({steps})];"
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))"
    )
    # A fixed mmap threshold makes glibc return every large block to the OS on free, so the
    # peak RSS follows the peak of live tensors instead of the allocator's cache.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout.strip().splitlines()[-1])


def cuda_peak_mib(variant, sizes, batch, device, steps=3):
    """Peak allocated CUDA memory of ``steps`` steps of one variant (MiB)."""
    step = build(variant, sizes, batch, device)[0]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def time_value(sizes, repeats, device="cpu"):
    _, _, reg = build("none", sizes, 1, device)
    params = reg.parameters()

    def read_pass():
        with torch.no_grad():
            for p in params:
                p.sum()

    for _ in range(3):
        read_pass()
        reg.value()
    a, b = [], []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        read_pass()
        _sync(device)
        a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reg.value()  # returns a float: synchronizes by itself
        b.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def _ratios(med):
    """variant -> ratio to its own run's unregularized step."""
    out = {}
    for v, t in med.items():
        base = "none fused" if v in ON_FUSED else "one-graph none" if v in ONE_GRAPH else "none"
        out[v] = t / med[base]
    return out


def report(name, sizes, batch, eager, compiled, mem):
    n_params = sum(p.numel() for p in mlp(sizes).parameters())
    print(f"\n{name} ({n_params / 1e6:.2f}M parameters), batch {batch}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"  {'variant':22s} {'eager ms':>9s} {'ratio':>6s}x {'compiled ms':>12s} "
          f"{'ratio':>6s}x {'peak +MiB':>10s}")  # fmt: skip
    er, cr = _ratios(eager), _ratios(compiled) if compiled else {}
    for v in VARIANTS + (ONE_GRAPH if compiled else []):
        c = f"{compiled[v] * 1e3:12.3f} {cr[v]:6.3f}x" if v in cr else f"{'-':>12s} {'-':>7s}"
        e = f"{eager[v] * 1e3:9.3f} {er[v]:6.3f}x" if v in er else f"{'-':>9s} {'-':>7s}"
        m = f"{mem[v]:+10.1f}" if mem and v in mem else f"{'-':>10s}"
        print(f"  {v:22s} {e} {c} {m}")


def _thread_settings(spec):
    out = []
    for part in spec.split(","):
        out.append(None if part == "default" else int(part))
    return out


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument(
        "--backend", default="inductor", help="torch.compile backend; 'none': eager only"
    )
    ap.add_argument("--threads", default="1,default", help="comma-separated: 1,default")
    ap.add_argument("--models", default="", help="comma-separated substrings of model names")
    return ap.parse_args(argv)


def main(argv=None):
    args = _args(argv)
    # every variant has its own optimizer: torch.optim's step wrapper is one code object
    # recompiled per optimizer, and past the default limit (8) dynamo runs it eagerly
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 4096
    cuda = args.device.startswith("cuda")
    models = {"tutorial 5-10-5": MODELS["tutorial 5-10-5"]} if args.quick else MODELS
    if args.models:
        models = {k: v for k, v in models.items() if any(m in k for m in args.models.split(","))}
    rounds, warmup = (3, 1) if args.quick else (args.rounds, 5)
    backend = "eager" if args.quick else (None if args.backend == "none" else args.backend)
    threads = [1] if args.quick else _thread_settings(args.threads)
    default_threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, device {args.device}; median of {rounds} interleaved "
          f"steps; ratio = variant / unregularized step of the same run (eager to eager, "
          f"compiled to compiled; compile backend {backend})")  # fmt: skip
    # Memory first: Linux keeps a process's peak RSS across exec, so children must be
    # started while this process is still small.
    mems = {}
    if not args.no_memory and not args.quick:
        for name, (sizes, batch) in models.items():
            if cuda:
                peak = {v: cuda_peak_mib(v, sizes, batch, args.device) for v in VARIANTS}
            else:
                peak = {v: peak_rss_mib(v, name, 3) for v in VARIANTS}
            mems[name] = {v: peak[v] - peak["none"] for v in VARIANTS}
    results = {}
    for n_threads in threads:
        torch.set_num_threads(n_threads or default_threads)
        for name, (sizes, batch) in models.items():
            eager = time_steps(sizes, batch, rounds, warmup, args.device)
            compiled = {}
            if backend:
                torch._dynamo.reset()
                compiled = time_steps(sizes, batch, rounds, warmup, args.device, backend)
            report(name, sizes, batch, eager, compiled, mems.get(name, {}))
            key = f"{name}, {torch.get_num_threads()} threads"
            results[key] = {"eager_s": eager, "compiled_s": compiled}
        read, value = time_value(sizes, 5 if args.quick else 30, args.device)
        print(f"  reg.value(): {value * 1e3:.3f} ms = {value / read:.2f}x one read pass "
              f"({read * 1e3:.3f} ms)")  # fmt: skip
    torch.set_num_threads(default_threads)
    return results


if __name__ == "__main__":
    json.dumps(main())
