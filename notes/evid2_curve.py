"""The evidence as a function of ONE shared strength, each point a model trained to its own
MAP at that strength (100 epochs, fit_evidence's loop, no updates): the KFAC Laplace log
evidence log Z(lambda = n s; w*(s)), the training CE, the log-det (Occam) term and the
held-out CE. Run: PYTHONPATH=src python notes/evid2_curve.py SEED [STRENGTHS...]"""

import sys

import numpy as np
import torch

import torchpenalty as tp
from torchpenalty import evidence as E

sys.path.insert(0, "notes")
from evid2_digits import Xtr, heldout, mk, ytr

seed = int(sys.argv[1])
X, Y, sx, sy, _ = E._prepare_xy(Xtr, ytr, "cross_entropy", True)
n = len(X)
grid = [float(v) for v in sys.argv[2:]] or [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
for s in grid:
    torch.manual_seed(seed)
    model = mk()
    reg = tp.Regularizer(model, tp.L2(s))
    ev = tp.Evidence(reg, "cross_entropy", n)
    E._train(model, reg, ev, X, Y, epochs=100, batch_size=64, lr=1e-2, every=10**9, seed=seed)
    pb = ev._curvature((X, Y))
    x = np.array([np.log(n * s)])
    logz, grad = E._log_evidence(x, pb)
    lam = n * s
    occam = -0.5 * np.sum(np.log(pb.eig + lam)) + 0.5 * pb.sizes[0] * np.log(lam)
    m, se, acc = heldout(E._wrap(model.eval(), sx, sy))
    print(
        f"s {s:g}: log Z {logz:8.1f} (train CE sum {pb.data_term:7.1f}, prior "
        f"{-0.5 * lam * pb.sq_norms[0]:7.1f}, occam {occam:7.1f}; d logZ/d log lambda "
        f"{grad[0]:+.1f})   held-out CE {m:.4f} +- {se:.4f} acc {acc:.4f}",
        flush=True,
    )
