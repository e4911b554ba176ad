"""tp.Evidence and tp.fit_evidence: the Laplace evidence for per-layer L2 strengths.

Oracles: scikit-learn BayesianRidge (strength, noise precision, log marginal likelihood),
the exact Gaussian marginal likelihood of a multi-output linear model (SciPy), autograd
(strength conversion, the cross-entropy Hessian, the objective's gradient) and tp.sweep
(held-out loss on an MLP regression and a classification set).
"""

from __future__ import annotations

import json
import runpy
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import BayesianRidge
from torch import nn

import torchpenalty as tp
from torchpenalty import evidence as E


def fit_map(model, reg, X, y, iters=200):
    """Full-batch L-BFGS on the mean squared error plus the penalty (to the MAP)."""
    opt = torch.optim.LBFGS(model.parameters(), max_iter=iters, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-15)  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X).reshape(y.shape), y) + reg()
        loss.backward()
        return loss

    opt.step(closure)


# ---------------------------------------------------------------------- conversion
@pytest.mark.parametrize(
    ("loss", "k"), [("mse", 1), ("mse", 3), ("cross_entropy", 4)], ids=["mse", "mse-k3", "ce"]
)
def test_strength_conversion_gives_the_same_map_objective(loss, k):
    """-log posterior = c * (mean loss + L2(s)) for a constant c, so both have the same
    gradient up to c: s = 2 lambda / (beta n k) (MSE), lambda / n (cross-entropy)."""
    torch.manual_seed(0)
    n, d, lam, beta = 30, 5, 3.7, 2.5
    X = torch.randn(n, d, dtype=torch.float64)
    w = torch.randn(k, d, dtype=torch.float64, requires_grad=True)
    out = X @ w.T
    if loss == "mse":
        y = torch.randn(n, k, dtype=torch.float64)
        neg_log_post = beta / 2 * ((out - y) ** 2).sum() + lam / 2 * (w**2).sum()
        mean_loss = nn.functional.mse_loss(out, y)
        c = beta * n * k / 2
    else:
        y = torch.randint(0, k, (n,))
        neg_log_post = nn.functional.cross_entropy(out, y, reduction="sum") + lam / 2 * (w**2).sum()
        mean_loss = nn.functional.cross_entropy(out, y)
        c = n
    s = E.to_strength(lam, n_data=n, loss=loss, noise_precision=beta, n_outputs=k)
    (g_post,) = torch.autograd.grad(neg_log_post, w, retain_graph=True)
    (g_ours,) = torch.autograd.grad(mean_loss + tp.L2(s)([w]), w)
    torch.testing.assert_close(g_post, c * g_ours)
    back = E.to_prior_precision(s, n_data=n, loss=loss, noise_precision=beta, n_outputs=k)
    assert back == pytest.approx(lam)


# ---------------------------------------------------------------------- exactness
def test_linear_mse_equals_bayesian_ridge(diabetes_std):
    """nn.Linear + MSE: the evidence's strength, noise precision and log evidence equal
    BayesianRidge's (s = 2 lambda_ / (alpha_ n)) at convergence."""
    X, y = diabetes_std
    n = len(X)
    br = BayesianRidge(tol=1e-12, max_iter=1000, compute_score=True).fit(X, y)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Linear(10, 1).double()
    reg = tp.Regularizer(model, tp.L2(1e-3))
    ev = tp.Evidence(reg, "mse", n_data=n, steps=100)  # near the optimum at each update
    for _ in range(7):
        fit_map(model, reg, Xt, yt, iters=100)
        ev.update((Xt, yt))
    s_br = 2 * br.lambda_ / (br.alpha_ * n)
    assert ev.strengths["weight"] == pytest.approx(s_br, rel=1e-3)
    assert ev.prior_precisions["weight"] == pytest.approx(br.lambda_, rel=1e-3)
    assert ev.noise_precision == pytest.approx(br.alpha_, rel=1e-3)
    # BayesianRidge's score adds Gamma(1e-6, 1e-6) hyperpriors: a few 1e-5 nats here
    assert ev.log_evidence[-1] == pytest.approx(br.scores_[-1], abs=1e-2)
    np.testing.assert_allclose(model.weight.detach().numpy()[0], br.coef_, rtol=1e-3, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(8, 40),
    d=st.integers(1, 6),
    k=st.integers(1, 3),
    log_s=st.floats(-4, 1),
    seed=st.integers(0, 2**16),
)
def test_linear_evidence_is_the_exact_marginal_likelihood(n, d, k, log_s, seed):
    """At the MAP of a linear model with k outputs, the Kronecker-factored Laplace log
    evidence equals the exact Gaussian marginal likelihood sum_c log N(y_c | 0, C) with
    C = I/beta + X X^T/lambda (centered data: the integrated-out bias is 0)."""
    rng = np.random.default_rng(seed)
    s = 10.0**log_s
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    X -= X.mean(0)
    Y = X @ rng.normal(size=(d, k)) + rng.normal(size=(n, k))
    Y -= Y.mean(0)
    model = nn.Linear(d, k).double()
    reg = tp.Regularizer(model, tp.L2(s))
    with torch.no_grad():  # the exact MAP of mean MSE + s/2 |W|^2: ridge with alpha = s n k / 2
        W = np.linalg.solve(X.T @ X + s * n * k / 2 * np.eye(d), X.T @ Y)
        model.weight.copy_(torch.tensor(W.T))
        model.bias.zero_()
    ev = tp.Evidence(reg, "mse", n_data=n, steps=0)  # evaluate at the starting values
    value = ev.update((torch.tensor(X), torch.tensor(Y)))
    beta = n * k / ((X @ W - Y) ** 2).sum()  # the start: maximum likelihood noise
    lam = E.to_prior_precision(s, n_data=n, noise_precision=beta, n_outputs=k)
    C = np.eye(n) / beta + X @ X.T / lam
    exact = sum(multivariate_normal(np.zeros(n), C).logpdf(Y[:, c]) for c in range(k))
    assert value == pytest.approx(exact, rel=1e-8)
    assert ev.noise_precision == pytest.approx(beta)
    assert ev.strengths == {"weight": pytest.approx(s)}


def test_free_bias_is_integrated_out_by_centering():
    """The bias of a regularized Linear gets a flat prior: uncentered inputs give the
    same log evidence as centered ones (the Schur complement), at the same MAP."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 4))
    y = X @ rng.normal(size=4) + rng.normal(size=50)
    values = []
    for shift in (0.0, 5.0):
        Xs = torch.tensor(X + shift)
        model = nn.Linear(4, 1).double()
        reg = tp.Regularizer(model, tp.L2(0.1))
        fit_map(model, reg, Xs, torch.tensor(y))
        values.append(tp.Evidence(reg, "mse", n_data=50, steps=0).update((Xs, torch.tensor(y))))
    assert values[0] == pytest.approx(values[1], rel=1e-7)


def test_cross_entropy_directions_factor_the_loss_hessian():
    """sum_c v_c v_c^T = the Hessian of the cross-entropy in the logits (autograd); the
    Monte-Carlo directions average to it."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5, dtype=torch.float64)
    exact = torch.stack([
        torch.autograd.functional.hessian(lambda z: nn.functional.cross_entropy(z, torch.tensor([0]), reduction="sum"), row[None])[0, :, 0, :]
        for row in logits
    ])  # fmt: skip
    vs = list(E._directions(logits, "cross_entropy", None, None))
    ours = sum(torch.einsum("bi,bj->bij", v, v) for v in vs)
    torch.testing.assert_close(ours, exact)
    gen = torch.Generator().manual_seed(0)
    mc = list(E._directions(logits, "cross_entropy", 4000, gen))
    est = sum(torch.einsum("bi,bj->bij", v, v) for v in mc)
    torch.testing.assert_close(est, exact, atol=0.04, rtol=0)


@pytest.mark.parametrize("mse", [True, False], ids=["mse", "ce"])
def test_objective_gradient_matches_finite_differences(mse):
    rng = np.random.default_rng(3)
    pb = E._Problem(
        eig=rng.exponential(5.0, size=40), group=rng.integers(0, 3, size=40),
        sq_norms=rng.uniform(0.5, 2, size=3), sizes=np.array([12.0, 20.0, 8.0]),
        data_term=37.0, n_targets=50.0, mse=mse,
    )  # fmt: skip
    x = rng.normal(size=4 if mse else 3)
    _, grad = E._log_evidence(x, pb)
    h = 1e-6
    fd = [
        (E._log_evidence(x + h * e, pb)[0] - E._log_evidence(x - h * e, pb)[0]) / (2 * h)
        for e in np.eye(len(x))
    ]
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- data handling
def mlp(d=5, h=8, k=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Dropout(0.1), nn.Linear(h, k))


def test_loader_pair_and_subset_rescaling_agree():
    """A DataLoader, a Dataset and (X, y) give the same update; the data repeated twice with the
    same n_data gives the same one too (sums are rescaled to n_data rows)."""
    torch.manual_seed(1)
    X, y = torch.randn(64, 5), torch.randn(64)
    results = []
    for data in (
        (X, y),
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=10),
        torch.utils.data.TensorDataset(X, y),
        (torch.cat([X, X]), torch.cat([y, y])),
    ):
        model = mlp()
        ev = tp.Evidence(E.per_layer(model, 1e-2), "mse", n_data=64, steps=20)
        results.append((ev.update(data), ev.strengths, ev.noise_precision))
    for value, strengths, beta in results[1:]:
        assert value == pytest.approx(results[0][0], rel=1e-5)
        assert beta == pytest.approx(results[0][2], rel=1e-5)
        for name, s in strengths.items():
            assert s == pytest.approx(results[0][1][name], rel=1e-5)


def test_numpy_pair_is_cast_to_the_model_dtype():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 1))  # float64 arrays
    values = []
    for data in ((X, y), (torch.tensor(X, dtype=torch.float32), torch.tensor(y))):
        ev = tp.Evidence(E.per_layer(mlp()), "mse", n_data=30)  # a float32 model
        values.append(ev.update(data))
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_update_leaves_training_mode_and_gradients_alone():
    model = mlp()
    reg = E.per_layer(model)
    X, y = torch.randn(20, 5), torch.randn(20, 1)
    ev = tp.Evidence(reg, "mse", n_data=20)
    model.train()
    ev.update((X, y))
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    ev.update((X, y))
    assert not model.training
    assert len(ev.log_evidence) == len(ev.history) == 2
    assert sorted(ev.strengths) == sorted(ev.prior_precisions) == ["0.weight", "3.weight"]


def test_cross_entropy_per_layer_strengths_and_mc():
    torch.manual_seed(0)
    X, y = torch.randn(80, 5), torch.randint(0, 3, (80,))
    for mc in (None, 4):
        model = mlp(k=3)
        ev = tp.Evidence(E.per_layer(model, 1e-3), "cross_entropy", n_data=80, mc_samples=mc)
        ev.update((X, y))
        assert ev.noise_precision is None
        assert all(s > 0 and np.isfinite(s) for s in ev.strengths.values())


def test_one_penalty_for_several_layers_gives_one_strength():
    model = mlp()
    reg = tp.Regularizer(model, tp.L2(1e-3))
    ev = tp.Evidence(reg, "mse", n_data=30)
    ev.update((torch.randn(30, 5), torch.randn(30, 1)))
    assert ev.group_names == [["0.weight", "3.weight"]]
    assert ev.strengths["0.weight"] == ev.strengths["3.weight"] != 1e-3


def test_penalty_keyed_by_module_class():
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    reg = tp.Regularizer(model, {"2.*": tp.L2(1e-2), nn.Linear: tp.L2(1e-3)})
    ev = tp.Evidence(reg, "mse", n_data=30)
    ev.update((torch.randn(30, 5), torch.randn(30, 1)))
    assert ev.group_names == [["0.weight"], ["2.weight"]]


def test_regularized_bias_is_its_own_block():
    model = nn.Linear(3, 2)
    reg = tp.Regularizer(model, {"weight": tp.L2(1e-3), "bias": tp.L2(1e-3)}, include="*")
    ev = tp.Evidence(reg, "mse", n_data=25)
    ev.update((torch.randn(25, 3), torch.randn(25, 2)))
    assert ev.group_names == [["weight"], ["bias"]] and ev.n_outputs == 2


def test_conv2d_over_the_whole_image_equals_linear():
    """A Conv2d whose kernel covers the input is a Linear on the flattened input: same
    Kronecker factors (unfolded patches), same evidence."""
    torch.manual_seed(0)
    X, y = torch.randn(40, 2, 3, 3, dtype=torch.float64), torch.randn(40, 4, dtype=torch.float64)
    conv = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten()).double()
    lin = nn.Linear(18, 4).double()
    with torch.no_grad():
        lin.weight.copy_(conv[0].weight.reshape(4, 18))
        lin.bias.copy_(conv[0].bias)
    a = tp.Evidence(tp.Regularizer(conv, tp.L2(0.1)), "mse", 40, steps=5).update((X, y))
    b = tp.Evidence(tp.Regularizer(lin, tp.L2(0.1)), "mse", 40, steps=5).update((X.flatten(1), y))
    assert a == pytest.approx(b, rel=1e-10)


def test_cnn_on_images_gets_one_strength_per_layer():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))  # fmt: skip
    ev = tp.Evidence(E.per_layer(cnn), "cross_entropy", 50)
    ev.update((torch.randn(50, 1, 8, 8), torch.randint(0, 3, (50,))))
    assert sorted(ev.strengths) == ["0.weight", "2.weight", "5.weight"]
    assert all(np.isfinite(v) and v > 0 for v in ev.strengths.values())


def test_state_dict_round_trip_through_json_resumes_identically():
    torch.manual_seed(0)
    X, y = torch.randn(40, 5), torch.randn(40, 1)
    model = mlp()
    reg = E.per_layer(model, 1e-3)
    ev = tp.Evidence(reg, "mse", n_data=40)
    ev.update((X, y))
    state = json.loads(json.dumps(ev.state_dict()))
    ev.update((X, y))
    fresh = tp.Evidence(E.per_layer(model, 0.5), "mse", n_data=40)
    fresh.load_state_dict(state)
    assert fresh.strengths == pytest.approx(ev.history[0]["strengths"])
    assert fresh.log_evidence == ev.log_evidence[:1]
    fresh.update((X, y))
    assert fresh.strengths == pytest.approx(ev.strengths)
    assert fresh.log_evidence == pytest.approx(ev.log_evidence)
    with pytest.raises(ValueError, match=r"state\['x'\] must hold 3 values"):
        fresh.load_state_dict({**state, "x": [0.0]})
    with pytest.raises(ValueError, match="state must be a dict with keys"):
        fresh.load_state_dict({"x": None})


# ---------------------------------------------------------------------- set_strengths
def test_set_strengths_takes_effect_in_loss_and_grad_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    reg = E.per_layer(model, 0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = reg.attach(opt, mode="grad")
    opt.zero_grad()
    model(torch.randn(4, 2)).sum().backward()
    opt.step()  # step 1: the schedule position moves on
    E.set_strengths(reg, {"0.weight": 0.5, "1.weight": 0.25})
    w0, w1 = model[0].weight.detach(), model[1].weight.detach()
    expected = 0.25 * w0.pow(2).sum() + 0.125 * w1.pow(2).sum()
    torch.testing.assert_close(reg().detach(), expected)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), before[0] * (1 - 0.1 * 0.5))
    torch.testing.assert_close(model[1].weight.detach(), before[2] * (1 - 0.1 * 0.25))
    assert reg.step_count == 2
    handle.remove()


@pytest.mark.parametrize(
    ("build", "strengths", "error", "match"),
    [
        (lambda m: E.per_layer(m), {"nope": 0.1}, ValueError, "got 'nope'"),
        (lambda m: E.per_layer(m), {"0.weight": -1.0}, ValueError, r"strengths\['0.weight'\] must be a finite number >= 0, got -1.0"),
        (lambda m: tp.Regularizer(m, tp.L2(0.1)), {"0.weight": 0.1, "1.weight": 0.2}, ValueError, "share one penalty"),
        (lambda m: tp.Regularizer(m, tp.L1(0.1)), {"0.weight": 0.1}, ValueError, "tp.L2 penalties"),
        (lambda m: E.per_layer(m), [("0.weight", 0.1)], TypeError, "strengths must be a dict"),
    ],
    ids=["unknown-name", "negative", "shared-unequal", "not-l2", "not-a-dict"],
)  # fmt: skip
def test_set_strengths_errors(build, strengths, error, match):
    reg = build(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))
    with pytest.raises(error, match=match):
        E.set_strengths(reg, strengths)


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (lambda: nn.Linear(2, 1), {}, TypeError, "reg must be a torchpenalty.Regularizer"),
        (lambda: tp.Regularizer(nn.Linear(2, 1), tp.L2(0.1)), {"loss": "mae"}, ValueError, "loss must be one of 'mse', 'cross_entropy', got 'mae'"),
        (lambda: tp.Regularizer(nn.Linear(2, 1), tp.L2(0.1)), {"n_data": None}, TypeError, "n_data must be the number of training rows"),
        (lambda: tp.Regularizer(nn.Linear(2, 1), tp.L2(0.1)), {"n_data": 0}, ValueError, "n_data must be an integer >= 1, got 0"),
        (lambda: tp.Regularizer(nn.Linear(2, 1), tp.L2(0.1)), {"lr": -1}, ValueError, "lr must be a finite number > 0, got -1"),
        (lambda: tp.Regularizer(nn.Linear(2, 1), tp.L1(0.1)), {}, ValueError, r"tp.L2 penalties for the evidence, got L1\(strength=0.1\)"),
        (lambda: tp.Regularizer(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 1)), tp.L2(0.1)), {}, ValueError, r"nn.Linear and nn.Conv2d .*\['0.weight'\]"),
        (lambda: tp.Regularizer(nn.Conv2d(2, 2, 3, groups=2), tp.L2(0.1)), {}, ValueError, r"\['weight'\]; leave them out"),
        (lambda: tp.Regularizer(nn.Linear(2, 1), tp.L2(0.1), exclude="*"), {}, ValueError, "reg must regularize at least one parameter"),
    ],
    ids=["not-a-reg", "loss", "n-data-none", "n-data-0", "lr", "l1", "conv1d", "grouped-conv", "empty"],
)  # fmt: skip
def test_evidence_errors(make, kwargs, error, match):
    kwargs = {"loss": "mse", "n_data": 10, **kwargs}
    with pytest.raises(error, match=match):
        tp.Evidence(make(), kwargs.pop("loss"), kwargs.pop("n_data"), **kwargs)


def test_update_errors():
    reg = tp.Regularizer(nn.Linear(3, 2), tp.L2(0.1))
    with pytest.raises(ValueError, match=r"y must have the model's output shape \(4, 2\)"):
        tp.Evidence(reg, "mse", 4).update((torch.randn(4, 3), torch.randn(4)))
    with pytest.raises(ValueError, match="at least one row"):
        tp.Evidence(reg, "mse", 4).update((torch.randn(0, 3), torch.randn(0, 2)))
    with pytest.raises(TypeError, match="data must be a DataLoader"):
        tp.Evidence(reg, "mse", 4).update(3.0)


# ---------------------------------------------------------------------- against the sweep
def held_out(model, X, y, loss):
    with torch.no_grad():
        out = model(torch.tensor(X, dtype=torch.float32))
        if loss == "mse":
            e = (out.reshape(-1).numpy() - y) ** 2
        else:
            e = nn.functional.cross_entropy(out, torch.tensor(y), reduction="none").numpy()
    return e.mean(), e.std(ddof=1) / np.sqrt(len(e))


@pytest.mark.parametrize("case", ["diabetes-mlp", "breast-cancer"])
def test_fit_evidence_held_out_loss_within_one_se_of_the_sweep(case):
    """One run with the evidence vs 7 strengths x 5 folds + refit, same training set-up:
    the held-out loss is within one standard error of the sweep's refit model."""
    if case == "diabetes-mlp":
        X, y = load_diabetes(return_X_y=True)
        loss, d, k = "mse", 10, 1
    else:
        X, y = load_breast_cancer(return_X_y=True)
        loss, d, k = "cross_entropy", 30, 2
    rng = np.random.default_rng(0)
    test = rng.permutation(len(X))[: len(X) // 4]
    train = np.setdiff1d(np.arange(len(X)), test)

    def make():
        return nn.Sequential(
            nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, k)
        )

    kw = dict(loss=loss, epochs=40, batch_size=64, lr=1e-2)
    t0 = time.perf_counter()
    r = tp.fit_evidence(make, (X[train], y[train]), every=4, **kw)
    t_ev = time.perf_counter() - t0
    t0 = time.perf_counter()
    sw = tp.sweep(
        make, (X[train], y[train]), strengths=np.logspace(-4, 1, 7).tolist(), progress=False, **kw
    )
    t_sw = time.perf_counter() - t0
    ev_loss, ev_se = held_out(r.model, X[test], y[test], loss)
    sw_loss, sw_se = held_out(sw.model, X[test], y[test], loss)
    print(f"{case}: evidence {ev_loss:.4g} +- {ev_se:.3g} ({t_ev:.2f} s, {r.strengths}); "
          f"sweep {sw_loss:.4g} +- {sw_se:.3g} ({t_sw:.2f} s, best {sw.best_strength:g})")  # fmt: skip
    assert ev_loss <= sw_loss + sw_se
    assert len(r.strengths) == 3 and len(r.log_evidence) == 9
    if loss == "cross_entropy":
        assert set(r.predict(X[test][:5])) <= set(np.unique(y))


def test_fit_evidence_result_predict_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)) * 10 + 4
    labels = np.array(["a", "b"])[(X[:, 0] > 4).astype(int)]
    r = tp.fit_evidence(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), (X, labels),
                        loss="cross_entropy", epochs=6, every=2)  # fmt: skip
    assert (
        r.predict(X[:4]).tolist()
        == r.classes[r.model(torch.tensor(X[:4], dtype=torch.float32)).argmax(-1).numpy()].tolist()
    )
    assert r.epochs == [2, 4] and r.noise_precision is None
    Y = np.stack([X[:, 0], -X[:, 1]], 1)
    r2 = tp.fit_evidence(lambda: nn.Linear(3, 2), (X, Y), epochs=4, every=2, lr=0.1)
    assert r2.predict(X[:5]).shape == (5, 2) and r2.noise_precision > 0
    assert r2.plot() is r2
    r2.figure_.savefig(tmp_path / "ev.png")
    assert (tmp_path / "ev.png").stat().st_size > 5000


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"make_model": nn.Linear(2, 1)}, TypeError, "make_model must be a callable"),
        ({"data": np.zeros((3, 2))}, TypeError, "data must be a pair"),
        ({"loss": "hinge"}, ValueError, "loss must be one of"),
        ({"every": 0}, ValueError, "every must be an integer >= 1, got 0"),
        ({"data": (np.zeros((3, 2)), np.zeros(4))}, ValueError, "data must be"),
        ({"shared": "yes"}, TypeError, "shared must be True or False"),
    ],
    ids=["model-instance", "data", "loss", "every", "lengths", "shared"],
)  # fmt: skip
def test_fit_evidence_errors(kwargs, error, match):
    kw = {"make_model": lambda: nn.Linear(2, 1), "data": (np.zeros((3, 2)), np.zeros(3)), **kwargs}
    with pytest.raises(error, match=match):
        tp.fit_evidence(kw.pop("make_model"), kw.pop("data"), **kw)


def test_benchmark_quick(capsys):
    """benchmarks/evidence.py --quick runs (in this process: the imports are paid once)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "evidence.py"
    runpy.run_path(str(path), run_name="bench")["main"](["--quick"])
    out = capsys.readouterr().out
    assert "x faster than the sweep" in out and "relative difference" in out


class BagOfWords(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag(20, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.emb(x)).squeeze(-1)


def test_fit_evidence_passes_token_ids_and_images_through():
    """Integer inputs stay int64 (an embedding, left out of the rule, takes them) and
    images are not standardized; MSE predictions come back in the target's units."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 20, size=(80, 6))
    y = 100.0 + 10 * (tokens == 3).sum(1)
    r = tp.fit_evidence(BagOfWords, (tokens, y), loss="mse", epochs=4, every=2, exclude="emb.*")
    assert list(r.strengths) == ["head.weight"]
    pred = r.predict(tokens)
    assert pred.shape == (80,) and abs(pred.mean() - y.mean()) < 3 * y.std()
    images = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    cnn = lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))  # noqa: E731
    r = tp.fit_evidence(cnn, (images, labels), loss="cross_entropy", epochs=4, every=2)
    assert sorted(r.strengths) == ["0.weight", "3.weight"]
    with torch.no_grad():
        logits = r.model(torch.tensor(images))
    assert r.predict(images).tolist() == logits.argmax(-1).tolist()
