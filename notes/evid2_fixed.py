"""Where would the evidence move from a model trained with FIXED strengths? Train the digits
MLP 100 epochs with (s0, s1), then maximize the KFAC log evidence in the prior precisions at
those weights (converged, 2000 Adam steps) and print the strengths it asks for; also the
history of fit_evidence's strengths. Run: PYTHONPATH=src python notes/evid2_fixed.py SEED"""

import sys

import torch

import torchpenalty as tp
from torchpenalty import evidence as E

sys.path.insert(0, "notes")
from evid2_digits import Xtr, heldout, mk, ytr

seed = int(sys.argv[1])
X, Y, sx, sy, _ = E._prepare_xy(Xtr, ytr, "cross_entropy", True)
r = tp.fit_evidence(mk, (Xtr, ytr), loss="cross_entropy", epochs=100, seed=seed)
print("fit_evidence history (epoch: s0 s1):")
for e, h in zip(r.epochs, r.evidence.history, strict=True):
    print(
        f"  {e:3d}: "
        + " ".join(f"{v:.2e}" for v in h["strengths"].values())
        + f"  logZ {h['log_evidence']:.1f}"
    )
for s0, s1 in [(1e-3, 1e-3), (1e-3, 1e-4), (1e-2, 1e-3), (3e-2, 1e-3), (1e-4, 1e-4)]:
    torch.manual_seed(seed)
    model = mk()
    reg = E.per_layer(model, 0.0)
    E.set_strengths(reg, {"0.weight": s0, "2.weight": s1})
    ev = tp.Evidence(reg, "cross_entropy", len(X), steps=2000)
    E._train(model, reg, ev, X, Y, epochs=100, batch_size=64, lr=1e-2, every=10**9, seed=seed)
    m, se, _ = heldout(E._wrap(model.eval(), sx, sy))
    sq = [float(p.pow(2).sum()) for p in reg.parameters()]
    ev.update((X, Y))
    st = " ".join(f"{v:.2e}" for v in ev.strengths.values())
    print(
        f"trained at s=({s0:g}, {s1:g}): held-out CE {m:.3f}+-{se:.3f}, |w|^2 {sq[0]:.1f} {sq[1]:.1f};"
        f" evidence asks s = {st}, logZ {ev.log_evidence[-1]:.1f}",
        flush=True,
    )
