"""Exact (per-layer block) GGN vs our KFAC on the trained digits MLP: for each weight, the
eigenvalues of the GGN block with its free bias integrated out (Schur complement), from
per-row Jacobians (torch.func), and the evidence-optimal prior precision of each layer under
both curvatures (1-D maximization of P/2 log l - l/2 |w|^2 - 1/2 sum log(e + l)).
Run: PYTHONPATH=src python notes/evid2_ggn.py EPOCHS SEED"""

import sys

import numpy as np
import torch
from torch.func import functional_call, jacrev, vmap

import torchpenalty as tp
from torchpenalty import evidence as E

sys.path.insert(0, "notes")
from evid2_digits import Xtr, mk, ytr

ep, seed = int(sys.argv[1]), int(sys.argv[2])
r = tp.fit_evidence(mk, (Xtr, ytr), loss="cross_entropy", epochs=ep, seed=seed)
torch.set_default_dtype(torch.float64)
net = r.model.model.double()  # the StandardizedModel's inner network
X, Y, *_ = E._prepare_xy(Xtr, ytr, "cross_entropy", True)
X = X.double()
params = {k: v.detach() for k, v in net.named_parameters()}
names = list(params)


def f(p, x):
    return functional_call(net, p, (x[None],))[0]


H = {}
for i in range(0, len(X), 128):
    xb = X[i : i + 128]
    with torch.no_grad():
        jac = vmap(jacrev(f), in_dims=(None, 0))(params, xb)  # name -> (B, C, *shape)
    p = torch.softmax(net(xb), -1)
    Hout = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    L = torch.linalg.cholesky(Hout + 1e-12 * torch.eye(10))  # Hout = L L^T
    for layer in ("0", "2"):
        J = torch.cat([jac[f"{layer}.weight"].flatten(2), jac[f"{layer}.bias"].flatten(2)], 2)
        M = torch.einsum("bcp,bcd->bdp", J, L).reshape(-1, J.shape[-1])  # rows of L^T J
        H[layer] = H.get(layer, 0) + M.T @ M


def best_lam(e, P, sq):
    lo, hi = -20.0, 20.0  # bisection on d/dlog l (decreasing in l)
    for _ in range(200):
        m = (lo + hi) / 2
        lam = np.exp(m)
        g = P / 2 - lam * sq / 2 - lam / 2 * np.sum(1 / (e + lam))
        lo, hi = (m, hi) if g > 0 else (lo, m)
    lam = np.exp(lo)
    return lam, np.sum(e / (e + lam))


ev = r.evidence
pb = ev._curvature((X, Y))  # the model is float64 now
for gi, layer in enumerate(("0", "2")):
    Hl = H[layer].detach().numpy()
    nw = params[f"{layer}.weight"].numel()
    Hww, Hwb, Hbb = Hl[:nw, :nw], Hl[:nw, nw:], Hl[nw:, nw:]
    S = Hww - Hwb @ np.linalg.pinv(Hbb, rcond=1e-10) @ Hwb.T
    e_exact = np.clip(np.linalg.eigvalsh(S), 0, None)
    e_kfac = pb.eig[pb.group == gi]
    sq = float(params[f"{layer}.weight"].pow(2).sum())
    le, ge = best_lam(e_exact, nw, sq)
    lk, gk = best_lam(e_kfac, nw, sq)
    print(
        f"layer {layer}.weight P={nw} |w|^2={sq:.1f}: trace exact {e_exact.sum():.1f} kfac "
        f"{e_kfac.sum():.1f}; logdet(e+1) exact {np.log1p(e_exact).sum():.1f} kfac "
        f"{np.log1p(e_kfac).sum():.1f}"
    )
    print(
        f"   optimal lambda: exact {le:.3g} (s {le / len(X):.3g}, gamma {ge:.1f})   kfac "
        f"{lk:.3g} (s {lk / len(X):.3g}, gamma {gk:.1f});  fit_evidence's s "
        f"{r.strengths[layer + '.weight']:.3g}"
    )
