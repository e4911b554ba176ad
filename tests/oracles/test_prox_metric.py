"""Proximal steps follow the optimizer's metric (issue #7 part 1): for every supported
optimizer, ``L1(s)`` / ``ElasticNet(s)`` trained with ``mode="proximal"`` to convergence
equal scikit-learn ``Lasso`` / ``ElasticNet(alpha=s/2)`` (coefficients and exact zeros),
group lasso satisfies its KKT conditions, and the sweep's L1 curve equals
``GridSearchCV(Lasso)`` on the same folds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet, Lasso
from torch import nn

import torchpenalty as tp
from torchpenalty.updates import SUPPORTED, step_metric

S = 0.1  # L1(0.1) = Lasso(alpha=0.05): four exact zeros on diabetes

# (id, optimizer factory, full-batch steps): constant lr, each converges to ~1e-15 here
OPTIMIZERS = [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.1), 1000),
    ("sgd_momentum", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), 1000),
    ("sgd_dampening", lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.5, dampening=0.3), 1500),
    ("sgd_nesterov", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True), 1000),
    ("adam", lambda p: torch.optim.Adam(p, lr=1e-2), 1500),
    ("adam_amsgrad", lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True), 1500),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0), 1500),
    ("adamax", lambda p: torch.optim.Adamax(p, lr=1e-2), 1500),
    ("nadam", lambda p: torch.optim.NAdam(p, lr=1e-2), 1500),
    ("radam", lambda p: torch.optim.RAdam(p, lr=1e-2), 1500),
    ("rmsprop", lambda p: torch.optim.RMSprop(p, lr=1e-2), 1500),
    ("rmsprop_momentum", lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5), 2500),
    ("adagrad", lambda p: torch.optim.Adagrad(p, lr=0.5), 1500),
]
IDS = [o[0] for o in OPTIMIZERS]


def train(X, Y, make_opt, steps, penalty, out=1):
    torch.manual_seed(0)
    model = nn.Linear(X.shape[1], out).double()
    opt = make_opt(model.parameters())
    tp.Regularizer(model, penalty).attach(opt, mode="proximal")
    Xt, Yt = torch.tensor(X), torch.tensor(Y).reshape(len(X), out)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(Xt), Yt).backward()
        opt.step()
    return model


@pytest.mark.parametrize(("name", "make_opt", "steps"), OPTIMIZERS, ids=IDS)
@pytest.mark.parametrize(
    ("penalty", "reference"),
    [
        (tp.L1(S), Lasso(alpha=tp.to_sklearn_lasso(S), tol=1e-14, max_iter=100_000)),
        (
            tp.ElasticNet(S, l1_ratio=0.5),
            ElasticNet(alpha=tp.to_sklearn_elasticnet(S), l1_ratio=0.5, tol=1e-14, max_iter=10**5),
        ),
    ],
    ids=["lasso", "elastic_net"],
)
def test_proximal_equals_sklearn(diabetes_std, name, make_opt, steps, penalty, reference):
    X, y = diabetes_std
    ref = reference.fit(X, y)
    model = train(X, y, make_opt, steps, penalty)
    w = model.weight.detach().numpy().ravel()
    np.testing.assert_allclose(w, ref.coef_, atol=1e-6, err_msg=name)
    # the unpenalized intercept decouples here (centered X); plain RMSprop keeps it
    # oscillating at ~lr around 0, which is the optimizer's own behavior, not the prox's
    assert model.bias.item() == pytest.approx(ref.intercept_, abs=1e-2)
    assert set(np.flatnonzero(w == 0)) == set(np.flatnonzero(ref.coef_ == 0)), name
    assert (ref.coef_ == 0).sum() >= 3  # the check is about exact zeros, not luck


@pytest.mark.parametrize(
    ("name", "make_opt", "steps"),
    [o for o in OPTIMIZERS if o[0] in ("sgd_momentum", "adam")],
    ids=["sgd_momentum", "adam"],
)
def test_group_lasso_satisfies_kkt(diabetes_std, name, make_opt, steps):
    """Groups are input features across 3 outputs (GroupLasso(dim=1) of a (3, 10) weight);
    with a preconditioned step the prox is taken in the optimizer's metric, so the fixed
    point satisfies the KKT conditions of the Euclidean problem."""
    X, y = diabetes_std
    rng = np.random.default_rng(0)
    Y = np.stack([y, X @ rng.normal(size=10) * 0.1 + y, rng.normal(size=len(y))], 1)
    s = 0.15
    model = train(X, Y, make_opt, steps, tp.GroupLasso(s, dim=1), out=3)
    W = model.weight.detach().clone().requires_grad_(True)
    loss = nn.functional.mse_loss(
        torch.tensor(X) @ W.T + model.bias.detach(), torch.tensor(Y).reshape(len(X), 3)
    )
    (G,) = torch.autograd.grad(loss, W)
    zero = 0
    for j in range(10):
        w, g = W[:, j].detach(), G[:, j]
        if torch.all(w == 0):
            zero += 1
            assert g.norm() <= s + 1e-6, (name, j)
        else:
            torch.testing.assert_close(
                g + s * w / w.norm(), torch.zeros(3, dtype=w.dtype), atol=1e-6, rtol=0
            )
    assert 1 <= zero <= 9, zero  # some groups at zero, some not: both conditions checked


def test_sgd_threshold_formula():
    """One step from zero gradient: the threshold is lr*s*(1-dampening)/(1-momentum)."""
    for mom, damp, nest in [
        (0.0, 0.0, False),
        (0.9, 0.0, False),
        (0.5, 0.3, False),
        (0.8, 0.0, True),
    ]:
        w = nn.Parameter(torch.tensor([0.05, 0.5, -3.0], dtype=torch.float64))
        w.grad = torch.zeros_like(w)
        opt = torch.optim.SGD([w], lr=0.1, momentum=mom, dampening=damp, nesterov=nest)
        factor, metric = step_metric(opt, opt.param_groups[0], [w])
        assert metric is None
        assert factor == pytest.approx((1 - damp) / (1 - mom) if mom else 1.0)


def test_adam_threshold_is_per_coordinate():
    """After one Adam step the threshold of coordinate i is lr*s/(sqrt(v_hat_i)+eps)."""
    w = nn.Parameter(torch.tensor([[1.0, -1.0, 2.0]], dtype=torch.float64))
    model = nn.Linear(3, 1, bias=False).double()
    model.weight = w
    opt = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    g = torch.tensor([[0.5, -0.01, 4.0]], dtype=torch.float64)
    before = w.detach().clone()
    w.grad = g.clone()
    opt.step()
    after_adam = w.detach().clone()
    torch.testing.assert_close(after_adam, before - 0.1 * g / (g.abs() + 1e-8))
    _, metric = step_metric(opt, opt.param_groups[0], [w])
    torch.testing.assert_close(metric[0], g.abs() + 1e-8)  # sqrt(v/(1-b2)) = |g|


def test_unknown_optimizer_warns_once():
    model = nn.Linear(3, 1)
    opt = torch.optim.Rprop(model.parameters(), lr=0.01)
    tp.Regularizer(model, tp.L1(0.1)).attach(opt, mode="proximal")
    x = torch.randn(4, 3)
    with pytest.warns(UserWarning, match="Rprop threshold in parameter space"):
        model(x).sum().backward()
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x).sum().backward()
        opt.step()


def test_supported_list_is_what_the_table_covers():
    covered = {type(make(nn.Linear(1, 1).parameters())) for _, make, _ in OPTIMIZERS}
    assert set(SUPPORTED) == covered


@pytest.mark.parametrize("epochs, batch_size", [(800, None), (100, 64)])
def test_sweep_l1_curve_equals_gridsearch_lasso(epochs, batch_size):
    """tp.sweep(penalty="l1", solver="train") with its default optimizer (Adam) and a linear
    model gives GridSearchCV(Lasso(alpha=s/2))'s CV curve on the same folds, on the raw
    target (X standardized on each training fold, as the sweep does; the strength means
    what it means in the user's loop on the raw y) and the same best strength: full batch, and
    with the default mini-batches of 64 (each model's own batches: when the models took
    penalty-only steps on padding batches, the curve was 3-11% high at s = 0.3 and 1)."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from torchpenalty.sweep.folds import kfold

    X, y = load_diabetes(return_X_y=True)
    grid = [0.003, 0.01, 0.1, 0.3, 1.0]
    res = tp.sweep(
        lambda: nn.Linear(10, 1), (X, y), penalty="l1", strengths=grid, epochs=epochs,
        batch_size=batch_size, progress=False, refit=False, solver="train",
    )  # fmt: skip
    est = make_pipeline(StandardScaler(), Lasso(tol=1e-12, max_iter=100_000))
    gs = GridSearchCV(
        est,
        {"lasso__alpha": [tp.to_sklearn_lasso(s) for s in grid]},
        cv=kfold(len(X), 5, 0),
        scoring="neg_mean_squared_error",
    ).fit(X, y)
    expected = -gs.cv_results_["mean_test_score"]
    ours = np.array([r["val_loss_mean"] for r in res.table])
    np.testing.assert_allclose(ours, expected, rtol=0.01)
    assert res.best_strength == grid[int(np.argmin(expected))]
