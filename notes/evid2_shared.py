"""One shared prior precision for all weights (a single tp.L2, one group) vs one per layer,
same loop as fit_evidence (Adam lr 1e-2, batch 64, update every 5 epochs, not after the
last). Run: PYTHONPATH=src python notes/evid2_shared.py EPOCHS SEED [per_layer|shared]"""

import sys

import torch

import torchpenalty as tp
from torchpenalty import evidence as E

sys.path.insert(0, "notes")
from evid2_digits import Xtr, heldout, mk, ytr

ep, seed, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
X, Y, sx, sy, _ = E._prepare_xy(Xtr, ytr, "cross_entropy", True)
torch.manual_seed(seed)
model = mk()
reg = E.per_layer(model, 1e-4) if how == "per_layer" else tp.Regularizer(model, tp.L2(1e-4))
ev = tp.Evidence(reg, "cross_entropy", len(X), seed=seed)
E._train(model, reg, ev, X, Y, epochs=ep, batch_size=64, lr=1e-2, every=5, seed=seed)
m, se, acc = heldout(E._wrap(model.eval(), sx, sy))
st = " ".join(f"{v:.2e}" for v in ev.strengths.values())
print(
    f"{how} ep={ep} seed={seed}: CE {m:.4f} +- {se:.4f} acc {acc:.4f} s {st} logZ {ev.log_evidence[-1]:.1f}"
)
