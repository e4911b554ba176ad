"""Per-step cost of regularizing, as ratios to the unregularized step of the same run.

For three models (the tutorial's 5->10->5 net, a ~1M and a ~25M parameter MLP) it times a
full SGD training step (zero_grad, forward, MSE, backward, step) for:

* ``none``:            no regularization (foreach SGD): the baseline;
* ``tutorial``:        the tutorial's ``lambda * sum(p**2) / 2`` Python loop in the loss;
* ``reg() in loss``:   ``loss + reg()``;
* ``attach grad``:     ``reg.attach(opt, mode="grad")``;
* ``none fused``:      no regularization, ``SGD(fused=True)``;
* ``param_groups fused``: ``SGD(tp.param_groups(model, s), fused=True)`` (ratio to ``none fused``).

Variants are interleaved round by round after a warm-up and the median is reported. Peak
memory is the peak resident set size of a fresh subprocess running three steps of the
variant, minus that of the unregularized variant (CPU has no allocator statistics; a fixed
glibc mmap threshold makes RSS follow live tensors). Finally
``reg.value()`` is timed against one read pass over the same tensors (``p.sum()`` each).

On a GPU (``--device cuda``) steps are timed between ``torch.cuda.synchronize()`` calls and
peak memory is ``torch.cuda.max_memory_allocated()`` of each variant.

Run: ``python benchmarks/step_overhead.py`` (``--quick`` for a smoke run, ``--device cuda``).
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

import torch
from torch import nn

import torchpenalty as tp

S = 1e-4
MODELS = {
    "tutorial 5-10-5": ([5, 10, 5], 32),
    "MLP ~1M": ([256, 1024, 512, 256, 1], 64),
    "MLP ~25M": ([1024, 2048, 2048, 2048, 2048, 2048, 1024, 1], 64),
}
VARIANTS = ["none", "tutorial", "reg() in loss", "attach grad", "none fused", "param_groups fused"]


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


def build(variant, sizes, batch, device="cpu"):
    torch.manual_seed(0)
    model = mlp(sizes).to(device)
    x = torch.randn(batch, sizes[0], device=device)
    y = torch.randn(batch, sizes[-1], device=device)
    reg = tp.Regularizer(model, tp.L2(S))
    if variant == "param_groups fused":
        opt = torch.optim.SGD(tp.param_groups(model, S), lr=1e-3, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, fused=variant == "none fused")
    if variant == "attach grad":
        reg.attach(opt, mode="grad")

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        if variant == "tutorial":
            loss = loss + tutorial_penalty(model, S)
        elif variant == "reg() in loss":
            loss = loss + reg()
        loss.backward()
        opt.step()

    return step, model, reg


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(sizes, batch, rounds, warmup, device="cpu"):
    steps = {v: build(v, sizes, batch, device)[0] for v in VARIANTS}
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {v: [] for v in VARIANTS}
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    models = {"tutorial 5-10-5": MODELS["tutorial 5-10-5"]} if args.quick else MODELS
    rounds, warmup = (3, 1) if args.quick else (args.rounds, 5)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads; median of {rounds} "
          "interleaved steps; ratio = variant / unregularized step (same run)")  # fmt: skip
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
    for name, (sizes, batch) in models.items():
        n_params = sum(p.numel() for p in mlp(sizes).parameters())
        med = time_steps(sizes, batch, rounds, warmup, args.device)
        mem = mems.get(name, {})
        print(f"\n{name} ({n_params / 1e6:.2f}M parameters), batch {batch}")
        print(f"  {'variant':22s} {'median ms':>10s} {'ratio':>7s} {'peak +MiB':>10s}")
        for v in VARIANTS:
            base = med["none fused"] if v == "param_groups fused" else med["none"]
            ratio = med[v] / base
            m = f"{mem[v]:+10.1f}" if mem else f"{'-':>10s}"
            print(f"  {v:22s} {med[v] * 1e3:10.3f} {ratio:7.3f} {m}")
        read, value = time_value(sizes, 5 if args.quick else 30, args.device)
        print(f"  reg.value(): {value * 1e3:.3f} ms = {value / read:.2f}x one read pass "
              f"({read * 1e3:.3f} ms)")  # fmt: skip
        results[name] = {"median_s": med, "peak_mib": mem, "value_vs_read": value / read}
    return results


if __name__ == "__main__":
    json.dumps(main())
