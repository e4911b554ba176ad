"""Diagnostics for issue #10 part 4 on digits (helper evid2). Held-out cross-entropy of
tp.fit_evidence vs tp.sweep's refit model, 70/30 stratified split (random_state=0), MLP
64-64-10, Adam lr 1e-2, batch 64. Run: PYTHONPATH=src python notes/evid2_digits.py WHAT EPOCHS"""

import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import torchpenalty as tp

torch.set_num_threads(1)
X, y = load_digits(return_X_y=True)
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def mk():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def heldout(model):
    with torch.no_grad():
        out = model(torch.tensor(Xte, dtype=torch.float32))
        e = nn.functional.cross_entropy(out, torch.tensor(yte), reduction="none").numpy()
        acc = (out.argmax(-1).numpy() == yte).mean()
    return e.mean(), e.std(ddof=1) / np.sqrt(len(e)), acc


def main():
    what = sys.argv[1]
    ep = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    kw = dict(a.split("=") for a in sys.argv[3:])
    kw = {k: (int(v) if v.isdigit() else float(v)) for k, v in kw.items()}
    t = time.perf_counter()
    if what == "sweep":
        s = tp.sweep(mk, (Xtr, ytr), loss="cross_entropy", epochs=ep, progress=False, **kw)
        m, se, acc = heldout(s.model)
        print(
            f"sweep ep={ep} {kw} {time.perf_counter() - t:.1f}s CE {m:.4f} +- {se:.4f} acc {acc:.4f} best {s.best_strength:g}"
        )
    else:
        r = tp.fit_evidence(mk, (Xtr, ytr), loss="cross_entropy", epochs=ep, **kw)
        m, se, acc = heldout(r.model)
        st = " ".join(f"{v:.2e}" for v in r.strengths.values())
        print(
            f"evid ep={ep} {kw} {time.perf_counter() - t:.1f}s CE {m:.4f} +- {se:.4f} acc {acc:.4f} s {st} logZ {r.log_evidence[-1]:.1f}"
        )


if __name__ == "__main__":
    main()
