"""Held-out loss of tp.fit_evidence vs tp.sweep's refit (70/30 split, default 13 strengths x 5
folds). Run: PYTHONPATH=src python notes/evidence_vs_sweep_runs.py {diabetes|bc|digits} [epochs]"""

import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import torchpenalty as tp

torch.set_num_threads(1)
which = sys.argv[1]
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


Xtr, Xte, ytr, yte = train_test_split(
    X, y, test_size=0.3, random_state=0, stratify=y if loss != "mse" else None
)
ep = int(sys.argv[2]) if len(sys.argv) > 2 else 100
t = time.perf_counter()
r = tp.fit_evidence(mk, (Xtr, ytr), loss=loss, epochs=ep)
te = time.perf_counter() - t
t = time.perf_counter()
s = tp.sweep(mk, (Xtr, ytr), loss=loss, epochs=ep, progress=False)
ts = time.perf_counter() - t


def heldout(model):
    with torch.no_grad():
        out = model(torch.tensor(Xte, dtype=torch.float32))
        if loss == "mse":
            e = (out.squeeze(-1).numpy() - yte) ** 2
        else:
            e = nn.functional.cross_entropy(out, torch.tensor(yte), reduction="none").numpy()
    return e.mean(), e.std(ddof=1) / np.sqrt(len(e))


print("evidence", te, heldout(r.model), r.strengths, r.log_evidence[-3:])
print("sweep", ts, heldout(s.model), s.best_strength)
