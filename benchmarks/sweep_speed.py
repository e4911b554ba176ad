"""Vectorized vs sequential sweep: 13 strengths x 5 folds on scikit-learn's diabetes data
with a 10 -> 32 -> 32 -> 1 MLP, timed in the same run, for two training set-ups
(mini-batches of 64, and full batch). Prints the speed-up of each vectorized forward
path (``bmm``: hand-batched ``baddbmm``; ``vmap``: ``torch.func.vmap(functional_call)``)
over training the 65 models one at a time through the same code, and where the time of
the vectorized run goes (torch.profiler, by operator).

Run: ``python benchmarks/sweep_speed.py`` (``--quick`` for a smoke run, ``--device cuda``).
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_diabetes
from torch import nn

import torchpenalty as tp


def mlp():
    return nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


DEVICE = "cpu"


def timed(**kw):
    t0 = time.perf_counter()
    r = tp.sweep(mlp, kw.pop("data"), progress=False, refit=False, device=DEVICE, **kw)
    return time.perf_counter() - t0, r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 strengths, few epochs")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    X, y = load_diabetes(return_X_y=True)
    strengths = [1e-4, 1e-2, 1.0] if args.quick else None
    setups = [("batch 64, 50 epochs", 64, 50), ("full batch, 200 epochs", None, 200)]
    if args.quick:
        setups = [("batch 64, 3 epochs", 64, 3)]
    print(f"torch {torch.__version__}, device {DEVICE}, {torch.get_num_threads()} threads; "
          f"{13 if strengths is None else len(strengths)} strengths x 5 folds, diabetes (442 rows), MLP 10-32-32-1")  # fmt: skip
    timed(data=(X, y), strengths=[1e-3], folds=2, epochs=2, batch_size=64)  # warm-up
    timed(data=(X, y), strengths=[1e-3], folds=2, epochs=2, batch_size=64, forward="vmap")
    out = {}
    for name, bs, epochs in setups:
        kw = dict(data=(X, y), strengths=strengths, batch_size=bs, epochs=epochs)
        t_bmm, r_bmm = timed(forward="bmm", **kw)
        t_vmap, _ = timed(forward="vmap", **kw)
        t_seq, r_seq = timed(vectorize=False, **kw)
        same = r_bmm.best_strength == r_seq.best_strength
        print(f"\n{name}")
        n_models = len(r_seq.records)
        print(f"  sequential ({n_models} models one at a time): {t_seq:7.2f} s")
        print(
            f"  vectorized, bmm forward:              {t_bmm:7.2f} s   speed-up {t_seq / t_bmm:5.1f}x"
        )
        print(
            f"  vectorized, vmap forward:             {t_vmap:7.2f} s   speed-up {t_seq / t_vmap:5.1f}x"
        )
        print(f"  same best strength: {same} ({r_bmm.best_strength:g})")
        out[name] = {"sequential": t_seq, "bmm": t_bmm, "vmap": t_vmap}

    name, bs, epochs = setups[0]
    acts = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        timed(data=(X, y), strengths=strengths, batch_size=bs, epochs=epochs, forward="bmm")
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print(f"\nwhere the vectorized ({name}, bmm) time goes, by operator (self CPU time):")
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]:
        print(
            f"  {e.key:40s} {e.self_cpu_time_total / 1e3:8.1f} ms  {100 * e.self_cpu_time_total / total:5.1f}%"
        )
    return out


if __name__ == "__main__":
    main()
