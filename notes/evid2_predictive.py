"""Diagnostic: held-out cross-entropy of the MAP network vs a last-layer Laplace predictive
(KFAC posterior of the last weight, lambda = n * s, bias held fixed; probit approximation
p = softmax(f / sqrt(1 + pi/8 var_f))), for fit_evidence's model and the sweep's refit model
on the same digits split. Run: PYTHONPATH=src python notes/evid2_predictive.py SPLIT"""

import math
import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import torchpenalty as tp

torch.set_num_threads(1)
i = int(sys.argv[1])
X, y = load_digits(return_X_y=True)
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=i, stratify=y)


def mk():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def last_inputs(model, X):
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    seen = []
    h = last.register_forward_hook(lambda m, a, o: seen.append(a[0].detach().double()))
    with torch.no_grad():
        out = model(torch.tensor(X, dtype=torch.float32)).double()
    h.remove()
    return seen[0], out


def scores(model, s):
    lam = len(Xtr) * s
    H, out = last_inputs(model, Xtr)
    p = torch.softmax(out, -1)
    A = H.T @ H
    G = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    a, Ua = torch.linalg.eigh(A)
    g, Ug = torch.linalg.eigh(G)
    Ht, ft = last_inputs(model, Xte)
    z = (Ht @ Ua) ** 2  # (rows, in)
    D = 1.0 / (g.clamp_min(0)[:, None] * a.clamp_min(0)[None, :] * 1.0 + lam)  # (out, in)
    d = z @ D.T  # (rows, out)
    var = d @ (Ug**2).T  # (rows, classes)
    yt = torch.tensor(yte)
    ce_map = nn.functional.cross_entropy(ft, yt, reduction="none").numpy()
    ce_pred = nn.functional.cross_entropy(ft / torch.sqrt(1 + math.pi / 8 * var), yt,
                                          reduction="none").numpy()  # fmt: skip
    se = lambda e: e.std(ddof=1) / np.sqrt(len(e))  # noqa: E731
    return f"MAP {ce_map.mean():.4f} +- {se(ce_map):.4f}   predictive {ce_pred.mean():.4f} +- {se(ce_pred):.4f}"


r = tp.fit_evidence(mk, (Xtr, ytr), loss="cross_entropy", epochs=100, seed=i)
sw = tp.sweep(mk, (Xtr, ytr), loss="cross_entropy", epochs=100, seed=i, progress=False)
s_ev = r.strengths["2.weight"]
print(f"split {i}: evidence (s {s_ev:.3g}): {scores(r.model, s_ev)}")
print(f"split {i}: sweep    (s {sw.best_strength:.3g}): {scores(sw.model, sw.best_strength)}")
