"""Held-out loss of tp.fit_evidence (one strength per layer, and one shared strength) vs
tp.sweep's refit model over several random 70/30 splits (split i: train_test_split
random_state=i, fit seed i). Same MLP, Adam lr 1e-2, batch 64, epochs for all three; sweep
with its default 13 strengths x 5 folds + refit. One torch thread.
Run: PYTHONPATH=src python notes/evid2_compare.py {digits|bc|diabetes} SPLITS [EPOCHS]"""

import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import torchpenalty as tp

torch.set_num_threads(1)
which, splits = sys.argv[1], int(sys.argv[2])
ep = int(sys.argv[3]) if len(sys.argv) > 3 else 100
if which == "diabetes":
    X, y = load_diabetes(return_X_y=True)
    loss = "mse"

    def mk():
        return nn.Sequential(
            nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
        )
elif which == "bc":
    X, y = load_breast_cancer(return_X_y=True)
    loss = "cross_entropy"

    def mk():
        return nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))
else:
    X, y = load_digits(return_X_y=True)
    loss = "cross_entropy"

    def mk():
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def heldout(model, Xte, yte):
    with torch.no_grad():
        out = model(torch.tensor(Xte, dtype=torch.float32))
        if loss == "mse":
            e = (out.squeeze(-1).numpy() - yte) ** 2
        else:
            e = nn.functional.cross_entropy(out, torch.tensor(yte), reduction="none").numpy()
    return e.mean(), e.std(ddof=1) / np.sqrt(len(e))


rows = {"per_layer": [], "shared": [], "sweep": []}
times = {k: [] for k in rows}
for i in range(splits):
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=0.3, random_state=i, stratify=y if loss != "mse" else None
    )
    line = [f"split {i}:"]
    for how in ("per_layer", "shared", "sweep"):
        t = time.perf_counter()
        if how == "sweep":
            r = tp.sweep(mk, (Xtr, ytr), loss=loss, epochs=ep, progress=False, seed=i)
            tag = f"s {r.best_strength:g}"
        else:
            r = tp.fit_evidence(
                mk, (Xtr, ytr), loss=loss, epochs=ep, seed=i, shared=how == "shared"
            )
            tag = "s " + "/".join(f"{v:.2g}" for v in r.strengths.values())
        times[how].append(time.perf_counter() - t)
        m, se = heldout(r.model, Xte, yte)
        rows[how].append(m)
        line.append(f"{how} {m:.4g}+-{se:.2g} ({tag}, {times[how][-1]:.1f}s)")
    print("  ".join(line), flush=True)
print(
    f"{which}, {splits} splits, {ep} epochs: mean held-out loss over splits +- SE over splits; median time"
)
for k, v in rows.items():
    v = np.array(v)
    d = v - np.array(rows["sweep"])
    print(
        f"  {k:9s} {v.mean():.4g} +- {v.std(ddof=1) / np.sqrt(len(v)):.2g}   minus sweep "
        f"{d.mean():+.3g} +- {d.std(ddof=1) / np.sqrt(len(d)):.2g}   time {np.median(times[k]):.2f} s"
    )
