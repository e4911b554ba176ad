"""Linear models trained with torchpenalty converge to scikit-learn's solutions, with the
strength converted by the documented functions (bias unpenalized by the default rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet, Lasso, Ridge
from torch import nn

import torchpenalty as tp


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return torch.tensor(X), torch.tensor(y).unsqueeze(1)


def linear(d):
    torch.manual_seed(0)
    return nn.Linear(d, 1).double()


def lipschitz(X):
    # gradient of mean((Xw + b - y)^2) is (2/n) [X 1]^T r: L = 2 * lambda_max([X 1]^T [X 1] / n)
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    return 2 * torch.linalg.eigvalsh(Xa.T @ Xa / len(X)).max().item()


def ista(model, X, y, penalty, steps):
    """Full-batch proximal gradient (ISTA) with step 1/L: SGD + mode="proximal"."""
    opt = torch.optim.SGD(model.parameters(), lr=1 / lipschitz(X))
    tp.Regularizer(model, penalty).attach(opt, mode="proximal")
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(X), y).backward()
        opt.step()
    return model


@pytest.mark.parametrize("alpha", [1.0, 30.0, 300.0])
def test_l2_converges_to_ridge(diabetes, alpha):
    X, y = diabetes
    n = len(X)
    model = linear(X.shape[1])
    reg = tp.Regularizer(model, tp.L2(tp.from_sklearn_ridge(alpha, n)))
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), y) + reg()
        loss.backward()
        return loss

    opt.step(closure)
    ref = Ridge(alpha=alpha).fit(X.numpy(), y.numpy().ravel())
    np.testing.assert_allclose(model.weight.detach().numpy().ravel(), ref.coef_, atol=1e-7)
    np.testing.assert_allclose(model.bias.item(), ref.intercept_, atol=1e-7)
    assert tp.to_sklearn_ridge(tp.from_sklearn_ridge(alpha, n), n) == pytest.approx(alpha)


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_proximal_l1_converges_to_lasso_with_the_same_zeros(diabetes, alpha):
    X, y = diabetes
    model = ista(linear(X.shape[1]), X, y, tp.L1(tp.from_sklearn_lasso(alpha)), steps=4000)
    ref = Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(X.numpy(), y.numpy().ravel())
    w = model.weight.detach().numpy().ravel()
    np.testing.assert_allclose(w, ref.coef_, atol=1e-6)
    assert (ref.coef_ == 0).any(), "alpha too small to test sparsity"
    assert np.array_equal(w == 0, ref.coef_ == 0)  # exact zeros, in the same places
    assert tp.to_sklearn_lasso(tp.from_sklearn_lasso(alpha)) == pytest.approx(alpha)


@pytest.mark.parametrize("l1_ratio", [0.3, 0.8])
def test_proximal_elastic_net_converges_to_sklearn(diabetes, l1_ratio):
    X, y = diabetes
    alpha = 0.05
    pen = tp.ElasticNet(tp.from_sklearn_elasticnet(alpha), l1_ratio=l1_ratio)
    model = ista(linear(X.shape[1]), X, y, pen, steps=4000)
    ref = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-12, max_iter=100_000)
    ref.fit(X.numpy(), y.numpy().ravel())
    w = model.weight.detach().numpy().ravel()
    np.testing.assert_allclose(w, ref.coef_, atol=1e-6)
    assert np.array_equal(w == 0, ref.coef_ == 0)
    assert tp.to_sklearn_elasticnet(pen.strength) == pytest.approx(alpha)


def test_proximal_group_lasso_satisfies_kkt(diabetes):
    """Multi-output regression with one group per input feature (dim=1): at the solution
    a zero group has ||grad_g|| <= s and a non-zero group has grad_g = -s w_g/||w_g||."""
    X, y = diabetes
    Y = torch.cat([y, 0.5 * y + 0.1 * X[:, :1]], 1)
    s = 0.15
    torch.manual_seed(0)
    model = nn.Linear(X.shape[1], 2).double()
    opt = torch.optim.SGD(model.parameters(), lr=1 / lipschitz(X))
    tp.Regularizer(model, tp.GroupLasso(s, dim=1)).attach(opt, mode="proximal")
    for _ in range(4000):
        opt.zero_grad()
        nn.functional.mse_loss(model(X), Y, reduction="sum").div(len(X)).backward()
        opt.step()
    opt.zero_grad()
    nn.functional.mse_loss(model(X), Y, reduction="sum").div(len(X)).backward()
    W, G = model.weight.detach(), model.weight.grad
    norms = W.norm(dim=0)
    zero = norms == 0
    assert zero.any() and (~zero).any(), "s should zero some features and keep others"
    assert (G[:, zero].norm(dim=0) <= s + 1e-8).all()
    kkt = G[:, ~zero] + s * W[:, ~zero] / norms[~zero]
    assert kkt.abs().max() < 1e-6


def test_keras_conversion():
    w = [torch.tensor([[1.0, 2.0]])]
    keras_l2 = 0.01 * (w[0] ** 2).sum()  # keras.regularizers.L2(0.01)
    assert tp.L2(tp.from_keras_l2(0.01))(w).item() == pytest.approx(keras_l2.item())
    assert tp.L1(tp.from_keras_l1(0.01))(w).item() == pytest.approx(0.03)
