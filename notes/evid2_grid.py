"""Per-layer oracle on digits: held-out CE (the 30% test split) of the MLP 64-64-10 trained
100 epochs with FIXED per-layer strengths (s0 on 0.weight, s1 on 2.weight), same loop as
fit_evidence (Adam lr 1e-2, batch 64, mode="grad", seed). A diagnostic, not a selection rule.
Run: PYTHONPATH=src python notes/evid2_grid.py EPOCHS SEED"""

import sys

import torch

import torchpenalty as tp
from torchpenalty import evidence as E

sys.path.insert(0, "notes")
from evid2_digits import Xtr, heldout, mk, ytr

ep, seed = int(sys.argv[1]), int(sys.argv[2])
X, Y, sx, sy, classes = E._prepare_xy(Xtr, ytr, "cross_entropy", True)
for s0 in [1e-4, 1e-3, 1e-2, 3e-2, 1e-1]:
    row = []
    for s1 in [1e-4, 1e-3, 1e-2, 1e-1]:
        torch.manual_seed(seed)
        model = mk()
        reg = E.per_layer(model, 0.0)
        E.set_strengths(reg, {"0.weight": s0, "2.weight": s1})
        ev = tp.Evidence(reg, "cross_entropy", len(X))
        E._train(model, reg, ev, X, Y, epochs=ep, batch_size=64, lr=1e-2, every=10**9, seed=seed)
        m, se, acc = heldout(E._wrap(model.eval(), sx, sy))
        row.append(f"{m:.3f}±{se:.3f}")
    print(f"s0={s0:g}: " + "  ".join(row), flush=True)
