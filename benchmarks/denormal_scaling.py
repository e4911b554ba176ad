"""Epoch scaling of a large CPU sweep with and without flushing subnormal floats.

50,000 rows x 50 features (synthetic regression), MLP 50-32-32-1, 13 strengths x 5 folds,
Adam, batch 64, no refit. Strong strengths shrink weights and Adam's moments towards zero
until they turn subnormal, and x86 CPUs compute on subnormals many times more slowly: the
time per epoch then grows with every epoch. ``tp.sweep`` flushes subnormals to zero while
it trains on the CPU (:func:`torchpenalty.sweep.engine.flush_denormal`); "without" replaces
that with a no-op, so the same code is timed both ways, interleaved. Printed: seconds for
1, 2, ... epochs, each way, the ratio, and how many of Adam's ``exp_avg`` entries are
subnormal at the end of the unflushed run.

Run: ``python benchmarks/denormal_scaling.py`` (``--quick``: 5,000 rows, 1 epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import engine as engine_mod


def make(d: int):
    return lambda: nn.Sequential(
        nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


def run(X, y, epochs, flush, strengths):
    real = engine_mod.flush_denormal
    if not flush:
        engine_mod.flush_denormal = lambda device="cpu": contextlib.nullcontext()
    try:
        t0 = time.perf_counter()
        tp.sweep(make(X.shape[1]), (X, y), strengths=strengths, epochs=epochs, batch_size=64,
                 progress=False, refit=False, vectorize=True, solver="train")  # fmt: skip
        return time.perf_counter() - t0
    finally:
        engine_mod.flush_denormal = real


def count_subnormal_adam_state(X, y, epochs, strengths):
    """Train the strongest strengths' chunk without flushing; count subnormal exp_avg."""
    seen = {}
    real_opt = engine_mod.Engine._optimizer

    def spy(self, params):
        opt = real_opt(self, params)
        seen["opt"] = opt
        return opt

    engine_mod.Engine._optimizer = spy
    try:
        run(X, y, epochs, flush=False, strengths=strengths)
    finally:
        engine_mod.Engine._optimizer = real_opt
    tiny = torch.finfo(torch.float32).tiny
    sub = total = 0
    for st in seen["opt"].state.values():
        a = st["exp_avg"]
        sub += int(((a != 0) & (a.abs() < tiny)).sum())
        total += a.numel()
    return sub, total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--epochs", default="1,2,3")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, epochs = (
        (5_000, [1]) if args.quick else (args.rows, [int(e) for e in args.epochs.split(",")])
    )
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 50)).astype(np.float32)
    y = X @ rng.normal(size=50) + rng.normal(size=n)
    strengths = [1e-3, 1.0, 10.0] if args.quick else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {n} rows x 50, "
          f"MLP 50-32-32-1, {'3' if strengths else '13'} strengths x 5 folds, batch 64")  # fmt: skip
    run(X[:500], y[:500], 1, True, [1e-3])  # warm-up
    for e in epochs:
        without = run(X, y, e, False, strengths)
        with_ = run(X, y, e, True, strengths)
        print(f"  {e} epoch(s): without flushing {without:8.2f} s   flushed {with_:8.2f} s   "
              f"ratio {without / with_:5.2f}x")  # fmt: skip
    sub, total = count_subnormal_adam_state(X, y, epochs[-1], strengths)
    print(f"  after {epochs[-1]} epoch(s) unflushed: {sub} of {total} exp_avg entries subnormal")


if __name__ == "__main__":
    main()
