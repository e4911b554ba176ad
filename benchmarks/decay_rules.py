"""Per-step cost of the decay rules, and of ``tp.stats``, as ratios measured in one run.

On an MLP of ~21M parameters (1024-2048x5-1024, batch 64) it times a full Adam training
step (zero_grad, forward, MSE, backward, step) for:

* ``adam``:        no decay (the floor);
* ``decoupled``:   ``reg.attach(opt, mode="decoupled")`` with ``L2`` (the baseline the
  other rules are compared with);
* ``cautious``:    ``mode="decoupled", cautious=True`` (one snapshot of the weights);
* ``corrected``:   ``mode="corrected"`` (every Linear weight named as normalized);
* ``adamw``:       ``torch.optim.AdamW(weight_decay=s)`` on ``tp.param_groups`` (reference).

and then ``tp.stats(reg, opt)`` (with ``--svd`` also ``singular_values=True``) against the
``decoupled`` step and against one read pass over the weights (``p.sum()`` each, one transfer).
Variants are interleaved round by round after a warm-up; medians are reported.
Extra memory of ``cautious``: the snapshot, ``4 bytes x`` regularized float32 weights.

Run: ``python benchmarks/decay_rules.py`` (``--quick`` for a smoke run, ``--device cuda``,
``--threads N``; by default it runs with 1 thread and with torch's default).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch
from torch import nn

import torchpenalty as tp

S = 0.1
SIZES = [1024, 2048, 2048, 2048, 2048, 2048, 1024]
QUICK = [64, 128, 64]
VARIANTS = ["adam", "decoupled", "cautious", "corrected", "adamw"]


def mlp(sizes):
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def build(variant, sizes, batch, device):
    torch.manual_seed(0)
    model = mlp(sizes).to(device)
    x = torch.randn(batch, sizes[0], device=device)
    y = torch.randn(batch, sizes[-1], device=device)
    reg = tp.Regularizer(model, tp.L2(S))
    if variant == "adamw":
        opt = torch.optim.AdamW(tp.param_groups(model, S), lr=1e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    if variant in ("decoupled", "cautious"):
        reg.attach(opt, mode="decoupled", cautious=variant == "cautious")
    elif variant == "corrected":
        reg.attach(opt, mode="corrected", normalized="*")

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    return step, model, reg, opt


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run(sizes, batch, rounds, warmup, device, svd=False):
    built = {v: build(v, sizes, batch, device) for v in VARIANTS}
    for step, *_ in built.values():
        for _ in range(warmup):
            step()
    _, model, reg, opt = built["decoupled"]
    extra = {
        "stats()": lambda: tp.stats(reg, opt),
        "read pass": lambda: torch.stack([p.detach().sum() for p in reg.parameters()]).tolist(),
    }
    if svd:  # an exact SVD per matrix: tens of steps on a CPU
        extra["stats(singular_values=True)"] = lambda: tp.stats(reg, opt, singular_values=True)
    times = {k: [] for k in [*VARIANTS, *extra]}
    for _ in range(rounds):
        for v, (step, *_rest) in built.items():  # interleaved: drift hits all alike
            times[v].append(_timed(step, device))
        for k, fn in extra.items():
            times[k].append(_timed(fn, device))
    med = {k: statistics.median(t) for k, t in times.items()}
    n = sum(p.numel() for p in model.parameters())
    return n, med


def report(n, med, threads):
    base, floor = med["decoupled"], med["adam"]
    print(f"\n{n / 1e6:.1f}M parameters, torch threads = {threads}")
    print(f"{'variant':<30}{'median ms':>10}{'/ decoupled':>13}{'/ adam':>9}")
    for k, t in med.items():
        print(f"{k:<30}{t * 1e3:>10.2f}{t / base:>13.3f}{t / floor:>9.3f}")
    print(f"{'stats() / read pass':<30}{med['stats()'] / med['read pass']:>23.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--svd", action="store_true", help="also time singular_values=True")
    ap.add_argument("--json", default=None, help="write the medians to this file")
    args = ap.parse_args(argv)
    sizes, batch = (QUICK, 8) if args.quick else (SIZES, 64)
    rounds = 3 if args.quick else args.rounds
    default = torch.get_num_threads()
    results = {}
    for threads in [args.threads] if args.threads else [1, default]:
        torch.set_num_threads(threads)
        n, med = run(sizes, batch, rounds, warmup=2, device=args.device, svd=args.svd)
        report(n, med, threads)
        results[threads] = med
        if default == 1:
            break
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
