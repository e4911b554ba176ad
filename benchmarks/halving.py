"""Successive halving (``tp.sweep(halving=True)``) against the full sweep.

For each problem: the same sweep (13 strengths x 5 folds, Adam lr 1e-2, batches of 64,
L2) with and without halving; printed: ``best_strength`` and ``strength_1se`` of both
(they must agree), the model-epochs each trained (``settings["model_epochs"]``), the
fraction saved, and the seconds of each (one run each, same process, same thread count).

Problems: scikit-learn's diabetes (regression, MLP 10-32-32-1), breast cancer
(classification, MLP 30-32-32-2), digits (classification, MLP 64-64-10, and a CNN on the
8x8 images: conv 8 -> pool -> conv 16 -> pool -> linear).

Run: ``python benchmarks/halving.py`` (``--quick``: 2 strengths, 3 folds, 4 epochs).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sweep_speed import cnn  # the digits CNN of the speed benchmark (this folder)
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import halving as H
from torchpenalty.sweep.calibration import calibrate


def mlp(d: int, widths: list[int], out: int) -> nn.Sequential:
    layers, w0 = [], d
    for w in widths:
        layers += [nn.Linear(w0, w), nn.ReLU()]
        w0 = w
    return nn.Sequential(*layers, nn.Linear(w0, out))


def problems(epochs: int, cnn_epochs: int) -> dict:
    Xd, yd = load_diabetes(return_X_y=True)
    Xb, yb = load_breast_cancer(return_X_y=True)
    Xg, yg = load_digits(return_X_y=True)
    images = (Xg / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    return {
        "diabetes, MLP 10-32-32-1": (lambda: mlp(10, [32, 32], 1), (Xd, yd), "mse", epochs),
        "breast cancer, MLP 30-32-32-2": (lambda: mlp(30, [32, 32], 2), (Xb, yb),
                                          "cross_entropy", epochs),
        "digits, MLP 64-64-10": (lambda: mlp(64, [64], 10), (Xg, yg), "cross_entropy", epochs),
        "digits, CNN (8x8 images)": (cnn, (images, yg), "cross_entropy", cnn_epochs),
    }  # fmt: skip


def compare(name, make, data, loss, epochs, kw):
    out = {}
    for halving in (False, True):
        t0 = time.perf_counter()
        r = tp.sweep(make, data, loss=loss, epochs=epochs, halving=halving, **kw)
        out[halving] = (r, time.perf_counter() - t0)
    (full, tf), (half, th) = out[False], out[True]
    same = (full.best_strength, full.strength_1se) == (half.best_strength, half.strength_1se)
    saved = 1 - half.settings["model_epochs"] / full.settings["model_epochs"]
    print(f"\n{name}, {epochs} epochs")
    print(f"  full sweep: best {full.best_strength:g}, 1se {full.strength_1se:g}, "
          f"{full.settings['model_epochs']} model-epochs, {tf:.1f} s")  # fmt: skip
    print(f"  halving:    best {half.best_strength:g}, 1se {half.strength_1se:g}, "
          f"{half.settings['model_epochs']} model-epochs, {th:.1f} s")  # fmt: skip
    stops = {row["strength"]: row["stopped_epoch"] for row in half.table if row["stopped_epoch"]}
    print(f"  same choices: {same}; model-epochs saved: {saved:.0%}; time ratio "
          f"{tf / th:.2f}x; stopped (strength: epoch): {stops}")  # fmt: skip
    return same, saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--cnn-epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="run only problems whose name contains this")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    kw = dict(progress=False, refit=False)
    epochs, cnn_epochs = args.epochs, args.cnn_epochs
    if args.quick:
        kw.update(strengths=[1e-3, 10.0], folds=3)
        epochs = cnn_epochs = 4
    print(f"torch {torch.__version__}, {args.threads} thread(s); halving: rungs at "
          f"{H.rungs(epochs)} epochs, {H.N_SE:g} SE")  # fmt: skip
    calibrate("cpu")  # the plan's calibration, measured once: not in any timing
    results = {}
    for name, (make, data, loss, ep) in problems(epochs, cnn_epochs).items():
        if args.only and args.only not in name:
            continue
        results[name] = compare(name, make, data, loss, ep, kw)
    print(f"\nsame best and 1se on {sum(s for s, _ in results.values())} of {len(results)}; "
          f"at least 40% fewer model-epochs on {sum(f >= 0.4 for _, f in results.values())}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
