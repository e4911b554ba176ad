"""The evidence vs the cross-validated sweep on scikit-learn's diabetes data (75/25
train/test split): ``tp.fit_evidence`` (one model, per-layer strengths from the Laplace
evidence every 5 epochs) against ``tp.sweep`` (13 strengths x 5 folds + refit) with the
same MLP 10-32-32-1 and training set-up (Adam, lr 1e-2, batch 64, 100 epochs). Prints the
time of each (median of interleaved repeats), the ratio, the same loop without updates
(the evidence's overhead), the held-out MSE with its standard error, and the strengths;
with one torch thread and with the default. Then over 5 random 70/30 splits (mean +-
standard error over the splits, one thread): diabetes (the same MLP, MSE), breast cancer
(MLP 30-32-2) and digits (MLP 64-64-10) scored by held-out cross-entropy: the evidence with
one strength per layer, with one shared strength, and the sweep. Then the linear model:
the evidence's strength next to BayesianRidge's and the sweep's.

Run: ``python benchmarks/evidence.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import BayesianRidge
from sklearn.model_selection import train_test_split
from torch import nn

import torchpenalty as tp
from torchpenalty.evidence import to_strength


def mlp():
    return nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


def held_out(model, X, y):
    with torch.no_grad():
        e = (model(torch.tensor(X, dtype=torch.float32)).reshape(-1).numpy() - y) ** 2
    return e.mean(), e.std(ddof=1) / np.sqrt(len(e))


def compare(Xtr, ytr, Xte, yte, epochs, strengths, repeats):
    kw = dict(epochs=epochs, batch_size=64, lr=1e-2)
    times = {"evidence": [], "sweep": [], "plain": []}
    for _ in range(repeats):  # interleaved
        t0 = time.perf_counter()
        ev = tp.fit_evidence(mlp, (Xtr, ytr), every=5, **kw)
        times["evidence"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # the same loop without updates: the evidence's overhead
        tp.fit_evidence(mlp, (Xtr, ytr), every=10**9, **kw)
        times["plain"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sw = tp.sweep(mlp, (Xtr, ytr), strengths=strengths, progress=False, **kw)
        times["sweep"].append(time.perf_counter() - t0)
    t_ev, t_sw, t_plain = (statistics.median(times[k]) for k in ("evidence", "sweep", "plain"))
    (l_ev, se_ev), (l_sw, se_sw) = held_out(ev.model, Xte, yte), held_out(sw.model, Xte, yte)
    n_models = len(sw.records) + 1
    print(f"  sweep ({n_models} models):      {t_sw:7.2f} s   held-out MSE {l_sw:8.1f} +- {se_sw:.1f}"
          f"   best strength {sw.best_strength:g}")  # fmt: skip
    print(f"  evidence (1 model):     {t_ev:7.2f} s   held-out MSE {l_ev:8.1f} +- {se_ev:.1f}"
          f"   {t_sw / t_ev:.1f}x faster than the sweep")  # fmt: skip
    print(f"  same loop, fixed strength, no updates: {t_plain:7.2f} s   (evidence overhead "
          f"{t_ev / t_plain:.2f}x)")  # fmt: skip
    print("  evidence strengths: " + ", ".join(f"{k} {v:.3g}" for k, v in ev.strengths.items()))
    within = l_ev <= l_sw + se_sw
    print(f"  evidence within one standard error of the sweep: {within}")


def classifier(d, k):
    return lambda: nn.Sequential(nn.Linear(d, 64 if d == 64 else 32), nn.ReLU(),
                                 nn.Linear(64 if d == 64 else 32, k))  # fmt: skip


def row_losses(model, X, y, loss):
    """Held-out loss per test row: squared error (raw units) or cross-entropy (nats)."""
    with torch.no_grad():
        out = model(torch.tensor(X, dtype=torch.float32))
        if loss == "mse":
            return (out.reshape(-1).numpy() - y) ** 2
        return nn.functional.cross_entropy(out, torch.tensor(y), reduction="none").numpy()


def over_splits(name, X, y, loss, make, epochs, strengths, splits):
    """Held-out loss over ``splits`` random 70/30 splits (split i: random_state i, seed i,
    stratified for classes): the evidence per layer, shared, and the sweep's refit model,
    interleaved. With one split the standard error is over the test rows, else over the
    splits' mean losses; "paired" is the mean difference to the sweep, split by split."""
    kw = dict(loss=loss, epochs=epochs)
    runs = {
        "evidence, per layer": lambda X, y, i: tp.fit_evidence(make, (X, y), seed=i, **kw),
        "evidence, shared": lambda X, y, i: tp.fit_evidence(
            make, (X, y), seed=i, shared=True, **kw),
        "sweep (refit)": lambda X, y, i: tp.sweep(
            make, (X, y), strengths=strengths, seed=i, progress=False, **kw),
    }  # fmt: skip
    losses, times, picked = ({k: [] for k in runs} for _ in range(3))
    for i in range(splits):
        Xtr, Xte, ytr, yte = train_test_split(
            X, y, test_size=0.3, random_state=i, stratify=None if loss == "mse" else y
        )
        for key, run in runs.items():
            t0 = time.perf_counter()
            r = run(Xtr, ytr, i)
            times[key].append(time.perf_counter() - t0)
            losses[key].append(row_losses(r.model, Xte, yte, loss))
            s = [r.best_strength] if key.startswith("sweep") else list(r.strengths.values())
            picked[key].append("/".join(f"{v:.2g}" for v in s))
    sizes = [m.out_features for m in make() if isinstance(m, nn.Linear)]
    print(f"\n{name}: {len(X)} rows, MLP {X.shape[1]}-{'-'.join(map(str, sizes))}, {loss}, "
          f"{epochs} epochs, {splits} split(s), 1 thread")  # fmt: skip
    sweep = np.array([e.mean() for e in losses["sweep (refit)"]])
    for key in runs:
        means = np.array([e.mean() for e in losses[key]])
        e, d = losses[key][0], means - sweep
        se = means.std(ddof=1) / np.sqrt(splits) if splits > 1 else e.std(ddof=1) / np.sqrt(len(e))
        paired = f"{d.mean():+.4g} +- {d.std(ddof=1) / np.sqrt(splits):.2g}" if splits > 1 else "-"
        print(f"  {key:20s} held-out {means.mean():.4g} +- {se:.2g}   paired {paired:>16s}   "
              f"median time {statistics.median(times[key]):6.2f} s   "
              f"strengths {', '.join(picked[key])}")  # fmt: skip


def linear(X, y, strengths, epochs):
    Xs = (X - X.mean(0)) / X.std(0)
    ys = (y - y.mean()) / y.std()
    n = len(X)
    br = BayesianRidge(tol=1e-10, max_iter=1000).fit(Xs, ys)
    t0 = time.perf_counter()
    torch.manual_seed(0)  # L-BFGS from another start can stop early on one update
    model = nn.Linear(X.shape[1], 1).double()
    reg = tp.Regularizer(model, tp.L2(1e-3))
    ev = tp.Evidence(reg, "mse", n_data=n, steps=100)
    Xt, yt = torch.tensor(Xs), torch.tensor(ys)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(Xt).squeeze(-1), yt) + reg()
        loss.backward()
        return loss

    for _ in range(8):
        opt.step(closure)
        ev.update((Xt, yt))
    t_ev = time.perf_counter() - t0
    sw = tp.sweep(lambda: nn.Linear(X.shape[1], 1), (X, y), strengths=strengths, epochs=epochs,
                  lr=0.05, progress=False, refit=False)  # fmt: skip
    s_br = to_strength(br.lambda_, n_data=n, noise_precision=br.alpha_)
    s_ev = ev.strengths["weight"]
    print(f"  BayesianRidge: s = 2 lambda_/(alpha_ n) = {s_br:.6g}")
    print(f"  tp.Evidence (8 updates, {t_ev:.2f} s): s = {s_ev:.6g}  "
          f"(relative difference {abs(s_ev - s_br) / s_br:.1e})")  # fmt: skip
    print(f"  tp.sweep best strength (grid of {len(sw.strengths)}): {sw.best_strength:g}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few epochs, 3 strengths, 1 repeat")
    args = ap.parse_args(argv)
    X, y = load_diabetes(return_X_y=True)
    test = np.random.default_rng(0).permutation(len(X))[: len(X) // 4]
    train = np.setdiff1d(np.arange(len(X)), test)
    epochs, strengths, repeats = (10, [1e-3, 1e-2, 1e-1], 1) if args.quick else (100, None, 3)
    default = torch.get_num_threads()
    print(f"torch {torch.__version__}; diabetes {len(train)} train / {len(test)} test rows, "
          f"MLP 10-32-32-1, {epochs} epochs, batch 64")  # fmt: skip
    tp.fit_evidence(mlp, (X[train], y[train]), epochs=2, every=1)  # warm-up
    for threads in sorted({1, default}):
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s):")
        compare(X[train], y[train], X[test], y[test], epochs, strengths, repeats)
    torch.set_num_threads(1)
    if args.quick:  # the tests run this: digits only, one split
        Xc, yc = load_digits(return_X_y=True)
        over_splits("digits", Xc, yc, "cross_entropy", classifier(64, 10), epochs, strengths, 1)
    else:
        over_splits("diabetes", X, y, "mse", mlp, epochs, strengths, 5)
        for name, load in (("breast cancer", load_breast_cancer), ("digits", load_digits)):
            Xc, yc = load(return_X_y=True)
            make = classifier(Xc.shape[1], len(np.unique(yc)))
            over_splits(name, Xc, yc, "cross_entropy", make, epochs, strengths, 5)
    torch.set_num_threads(default)
    print("\nlinear model (all 442 rows, standardized):")
    linear(X, y, strengths or np.logspace(-4, 1, 16).tolist(), 30 if args.quick else 300)


if __name__ == "__main__":
    main()
