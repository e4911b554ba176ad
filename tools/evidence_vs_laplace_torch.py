"""laplace-torch as an independent reference for tp.Evidence (not part of the test suite).

laplace-torch 0.3 pulls a torchvision that does not import beside the pinned torch, so install
it apart (``pip install --target /tmp/lapl --no-deps laplace-torch``, plus its pure-Python
dependencies) and run ``PYTHONPATH=/tmp/lapl:src python tools/evidence_vs_laplace_torch.py``.
(a) linear model without bias, centered diabetes: full and Kron Laplace log marginal
likelihood at tp.Evidence's optimum; (b) MLP 10-32-32-1 without biases after training:
Kron Laplace log marginal likelihood at tp.Evidence's per-layer precisions and noise."""

import numpy as np
import torch
from laplace import Laplace
from sklearn.datasets import load_breast_cancer, load_diabetes
from torch import nn

import torchpenalty as tp
import torchpenalty.evidence as E

torch.manual_seed(0)
X, y = load_diabetes(return_X_y=True)
X = (X - X.mean(0)) / X.std(0)
y = (y - y.mean()) / y.std()
Xt, yt = torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)[:, None]
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, yt), batch_size=442)
n = len(X)


def lbfgs(model, reg, iters=200):
    opt = torch.optim.LBFGS(model.parameters(), max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        l = nn.functional.mse_loss(model(Xt), yt) + reg()
        l.backward()
        return l

    opt.step(closure)


# (a) linear
model = nn.Linear(10, 1, bias=False).double()
reg = tp.Regularizer(model, tp.L2(1e-3))
ev = tp.Evidence(reg, "mse", n)
for _ in range(8):
    lbfgs(model, reg)
    ev.update((Xt, yt))
lam, beta = ev.prior_precisions["weight"], ev.noise_precision
print(f"(a) linear: tp.Evidence lambda {lam:.6g} beta {beta:.6g} log Z {ev.log_evidence[-1]:.6f}")
for structure in ("full", "kron", "diag"):
    la = Laplace(model, "regression", subset_of_weights="all", hessian_structure=structure)
    la.fit(loader)
    v = la.log_marginal_likelihood(
        torch.tensor([lam], dtype=torch.float64), torch.tensor(beta**-0.5, dtype=torch.float64)
    )
    print(f"    laplace-torch {structure:5s}: log marginal likelihood {float(v):.6f}")

# (b) MLP without biases, Adam training with per-layer evidence
torch.manual_seed(0)
mlp = nn.Sequential(
    nn.Linear(10, 32, bias=False),
    nn.ReLU(),
    nn.Linear(32, 32, bias=False),
    nn.ReLU(),
    nn.Linear(32, 1, bias=False),
).double()
reg = tp.evidence.per_layer(mlp, 1e-3)
ev = tp.Evidence(reg, "mse", n)
opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
reg.attach(opt, mode="grad")
for epoch in range(1, 101):
    for idx in torch.randperm(n).split(64):
        opt.zero_grad()
        nn.functional.mse_loss(mlp(Xt[idx]), yt[idx]).backward()
        opt.step()
    if epoch % 5 == 0 and epoch < 100:
        ev.update((Xt, yt))
# both at the same weights and hyperparameters (tp.Evidence's last ones)
lam = torch.tensor(
    [ev.prior_precisions[k] for k in ("0.weight", "2.weight", "4.weight")], dtype=torch.float64
)
beta = ev.noise_precision
pb = ev._curvature((Xt, yt))
x = np.concatenate([np.log(lam.numpy()), [np.log(beta)]])
ours = E._log_evidence(x, pb)[0]
la = Laplace(mlp, "regression", subset_of_weights="all", hessian_structure="kron")
la.fit(loader)
theirs = la.log_marginal_likelihood(lam, torch.tensor(beta**-0.5, dtype=torch.float64))
print(f"(b) MLP (no biases): per-layer lambda {lam.numpy().round(4)}, beta {beta:.4g}")
print(f"    tp.Evidence KFAC log Z {ours:.4f}   laplace-torch kron {float(theirs):.4f}")

# (c) classification: breast cancer, MLP 30-16-2 without biases, cross-entropy
Xc, yc = load_breast_cancer(return_X_y=True)
Xc = torch.tensor((Xc - Xc.mean(0)) / Xc.std(0))
yc = torch.tensor(yc)
nc = len(Xc)
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(30, 16, bias=False), nn.Tanh(), nn.Linear(16, 2, bias=False)).double()
reg = tp.evidence.per_layer(net, 1e-3)
ev = tp.Evidence(reg, "cross_entropy", nc)
opt = torch.optim.Adam(net.parameters(), lr=1e-2)
reg.attach(opt, mode="grad")
for epoch in range(1, 51):
    for idx in torch.randperm(nc).split(64):
        opt.zero_grad()
        nn.functional.cross_entropy(net(Xc[idx]), yc[idx]).backward()
        opt.step()
    if epoch % 5 == 0:
        ev.update((Xc, yc))
lam = np.array([ev.prior_precisions[k] for k in ("0.weight", "2.weight")])
ours = E._log_evidence(np.log(lam), ev._curvature((Xc, yc)))[0]
la = Laplace(net, "classification", subset_of_weights="all", hessian_structure="kron")
la.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xc, yc), batch_size=nc))
theirs = la.log_marginal_likelihood(torch.tensor(lam))
print(f"(c) breast cancer MLP (no biases): lambda {lam.round(4)}")
print(f"    tp.Evidence KFAC log Z {ours:.4f}   laplace-torch kron {float(theirs):.4f}")

# (d) a small CNN without biases on digits (8x8 images), cross-entropy, random weights
from sklearn.datasets import load_digits  # noqa: E402

Xd, yd = load_digits(return_X_y=True)
Xd = torch.tensor(Xd[:300] / 16.0).reshape(-1, 1, 8, 8)
yd = torch.tensor(yd[:300])
torch.manual_seed(0)
cnn = nn.Sequential(
    nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(),
    nn.Conv2d(4, 4, 3, stride=2, bias=False), nn.ReLU(),
    nn.Flatten(), nn.Linear(36, 10, bias=False),
).double()  # fmt: skip
reg = tp.evidence.per_layer(cnn, 1e-2)
ev = tp.Evidence(reg, "cross_entropy", len(Xd), steps=50)
ev.update((Xd, yd))
lam = np.array(list(ev.prior_precisions.values()))
ours = E._log_evidence(np.log(lam), ev._curvature((Xd, yd)))[0]
la = Laplace(cnn, "classification", subset_of_weights="all", hessian_structure="kron")
la.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xd, yd), batch_size=100))
theirs = la.log_marginal_likelihood(torch.tensor(lam))
print(f"(d) digits CNN (no biases): lambda {lam.round(4)}")
print(f"    tp.Evidence KFAC log Z {ours:.4f}   laplace-torch kron {float(theirs):.4f}")

# (e) laplace-torch's own marglik_training on digits (MLP 64-64-10, 40 epochs, Adam 1e-2,
# batch 64, hyperparameter updates every 5 epochs, 100 steps): held-out cross-entropy of
# its MAP model and its layerwise prior precisions as our strengths (lambda / n).
from laplace.marglik_training import marglik_training  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

X, y = load_digits(return_X_y=True)
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
mu, sd = Xtr.mean(0), Xtr.std(0)
sd[sd == 0] = 1
Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
train = torch.utils.data.TensorDataset(torch.tensor(Xtr, dtype=torch.float32), torch.tensor(ytr))
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
la, net, _, _ = marglik_training(
    net, torch.utils.data.DataLoader(train, batch_size=64, shuffle=True), "classification",
    "kron", n_epochs=40, optimizer_kwargs={"lr": 1e-2}, marglik_frequency=5,
    n_hypersteps=100, lr_hyp=0.1,
)  # fmt: skip
with torch.no_grad():
    out = net(torch.tensor(Xte, dtype=torch.float32))
    ce = nn.functional.cross_entropy(out, torch.tensor(yte), reduction="none").numpy()
pp = la.prior_precision.detach().numpy()
print(f"(e) laplace-torch marglik_training, digits: held-out CE {ce.mean():.4f} +- "
      f"{ce.std(ddof=1) / np.sqrt(len(ce)):.4f}; strengths (W0, b0, W1, b1) {(pp / len(Xtr)).round(5)}")  # fmt: skip
