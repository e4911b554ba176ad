"""The evidence's curvature against brute force (issue #10 part 4, helper evid2).

Oracles: the exact generalized Gauss-Newton block ``J^T H J`` of a weight from
``torch.autograd.functional`` (Jacobian of the outputs, Hessian of the loss in the outputs);
the Kronecker-factored form built independently from autograd Jacobians; and the rescaling
symmetry of ReLU networks (``W0 -> c W0, b0 -> c b0, W1 -> W1 / c`` leaves the function
unchanged, so the Laplace log evidence at ``lambda0 / c**2, lambda1 * c**2`` must not change).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian

import torchpenalty as tp
from torchpenalty import evidence as E


def tanh_mlp(d=3, h=4, k=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, k)).double()


def loss_sum(loss, out, y):
    """-log p(y | out) up to constants: unit-noise Gaussian (MSE) or softmax cross-entropy."""
    if loss == "mse":
        return 0.5 * ((out - y) ** 2).sum()
    return nn.functional.cross_entropy(out, y, reduction="sum")


def targets(loss, n, k):
    return torch.randn(n, k, dtype=torch.float64) if loss == "mse" else torch.randint(0, k, (n,))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("layer", [0, 2])
def test_kronecker_factors_are_the_exact_ggn_for_one_row(loss, layer):
    """For a single row the GGN block of a weight is exactly G (x) A: compare torch.kron of
    our factors with J^T H J from autograd (J: outputs by weight entries, row-major)."""
    model = tanh_mlp()
    torch.manual_seed(1)
    x, y = torch.randn(1, 3, dtype=torch.float64), targets(loss, 1, 3)
    mod = model[layer]
    cur = E._Curvature()
    E._batch(model, [model[0], model[2]], x, y, loss, cur, None, None)
    ours = torch.kron(cur.G[id(mod)] / cur.n_a[id(mod)], cur.A[id(mod)])

    w0 = mod.weight.detach().clone()

    def out_of(w):
        saved = mod.weight
        del mod.weight
        mod.weight = w  # a plain tensor in the module for the functional call
        try:
            return model(x)[0]
        finally:
            mod.weight = saved

    J = jacobian(out_of, w0).reshape(3, -1)  # (outputs, weight entries)
    out = model(x).detach()[0]
    H = hessian(lambda o: loss_sum(loss, o[None], y), out)
    exact = J.T @ H @ J
    torch.testing.assert_close(ours, exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_eigenvalues_are_those_of_the_kronecker_form_with_the_free_bias_integrated_out(loss):
    """Many rows: each group's eigenvalues equal those of kron(mean_i G_i, A_c), G_i from
    autograd Jacobians of the outputs in each layer's pre-activation, A_c the centered sum of
    the layer's inputs (the free bias integrated out), computed here without hooks."""
    model = tanh_mlp()
    n = 40
    torch.manual_seed(2)
    X, y = torch.randn(n, 3, dtype=torch.float64), targets(loss, n, 3)
    ev = tp.Evidence(E.per_layer(model, 1e-2), loss, n_data=n)
    pb = ev._curvature((X, y))
    lin0, lin2 = model[0], model[2]
    with torch.no_grad():
        hidden = torch.tanh(lin0(X))
    for group, (inputs, width) in enumerate([(X, 4), (hidden, 3)]):
        G = torch.zeros(width, width, dtype=torch.float64)
        for i in range(n):
            z = (lin0(X[i : i + 1]) if group == 0 else lin2(hidden[i : i + 1])).detach()[0]
            head = (lambda z: lin2(torch.tanh(z))) if group == 0 else (lambda z: z)
            J = jacobian(head, z)  # outputs by pre-activations
            yi = y[i : i + 1]
            H = hessian(lambda o, yi=yi: loss_sum(loss, o[None], yi), head(z).detach())
            G += J.T @ H @ J / n
        centered = inputs - inputs.mean(0)
        A = centered.T @ centered
        expected = np.sort(torch.linalg.eigvalsh(torch.kron(G, A)).clamp_min(0).numpy())
        np.testing.assert_allclose(np.sort(pb.eig[pb.group == group]), expected, atol=1e-9)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_log_evidence_is_invariant_under_relu_rescaling(loss):
    """ReLU layers are positively homogeneous: W0 -> c W0, b0 -> c b0, W1 -> W1 / c gives
    the same function. The log evidence at lambda0 / c^2, lambda1 c^2 is then the same, and
    so is its gradient: the evidence cannot tell these per-layer strengths apart, only
    their product (docs/strength.md)."""
    torch.manual_seed(3)
    n, c = 50, 3.0
    X, y = torch.randn(n, 4, dtype=torch.float64), targets(loss, n, 2)
    values = []
    for scale in (1.0, c):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double()
        with torch.no_grad():
            model[0].weight.mul_(scale)
            model[0].bias.mul_(scale)
            model[2].weight.div_(scale)
        ev = tp.Evidence(E.per_layer(model, 1e-2), loss, n_data=n)
        pb = ev._curvature((X, y))
        x = [math.log(0.7) - 2 * math.log(scale), math.log(2.5) + 2 * math.log(scale)]
        if loss == "mse":
            x.append(math.log(1.3))
        values.append(E._log_evidence(np.array(x), pb))
    (v1, g1), (vc, gc) = values
    assert vc == pytest.approx(v1, rel=1e-10)
    np.testing.assert_allclose(gc, g1, rtol=1e-8, atol=1e-8)


def test_fit_evidence_shared_gives_one_strength():
    torch.manual_seed(0)
    X = torch.randn(80, 4)
    y = (X[:, 0] > 0).long()
    r = tp.fit_evidence(
        lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        (X, y), loss="cross_entropy", epochs=10, every=5, shared=True,
    )  # fmt: skip
    assert r.evidence.group_names == [["0.weight", "2.weight"]]
    assert r.strengths["0.weight"] == r.strengths["2.weight"] != 1e-4
    assert r.settings["shared"] is True


def relu_net(norm=False):
    torch.manual_seed(0)
    mid = [nn.LayerNorm(6, eps=1e-12)] if norm else []
    return nn.Sequential(
        nn.Linear(4, 6), *mid, nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)
    ).double()


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_updates_keep_the_ratio_of_strengths_a_rescaling_cannot_tell_apart(loss):
    """ReLU chain: the evidence is flat along W_i -> c W_i, W_j -> W_j / c (previous test),
    so the updates keep s_0 : s_2 : s_4 as they started; without that they drift apart at
    every update (the first layer's up, the last one's down). A tanh chain has no such
    rescaling: its strengths move apart."""
    torch.manual_seed(4)
    n = 60
    X, y = torch.randn(n, 4, dtype=torch.float64), targets(loss, n, 3)
    start = {"0.weight": 1e-3, "2.weight": 4e-3, "4.weight": 2e-2}
    for act in ("relu", "tanh"):
        model = relu_net()
        if act == "tanh":
            model[1], model[3] = nn.Tanh(), nn.Tanh()
        reg = E.per_layer(model, 0.0)
        E.set_strengths(reg, start)
        ev = tp.Evidence(reg, loss, n_data=n, steps=50)
        for _ in range(3):
            ev.update((X, y))
        ratios = np.array([ev.strengths[k] / start[k] for k in start])
        if act == "relu":
            assert ev.symmetries == [
                {"0.weight": 1, "2.weight": -1},
                {"2.weight": 1, "4.weight": -1},
            ]
            np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
            assert abs(math.log(ratios[0])) > 0.1  # the common strength did move
        else:
            assert ev.symmetries == []
            assert ratios.max() / ratios.min() > 1.5


def test_a_layer_before_a_normalization_keeps_its_strength():
    """Linear -> LayerNorm: W_0 -> c W_0 alone leaves the function unchanged, so the evidence
    cannot tell its strength; it stays where it started while the others move."""
    torch.manual_seed(5)
    X, y = torch.randn(50, 4, dtype=torch.float64), torch.randint(0, 3, (50,))
    model = relu_net(norm=True)
    reg = E.per_layer(model, 1e-3)
    ev = tp.Evidence(reg, "cross_entropy", n_data=50, steps=50)  # s = lambda / n: no noise
    ev.update((X, y))
    assert {"0.weight": 1} in ev.symmetries
    assert ev.strengths["0.weight"] == pytest.approx(1e-3, rel=1e-9)
    assert ev.strengths["3.weight"] != pytest.approx(1e-3, rel=1e-2)
    assert all(p.grad is None for p in model.parameters())


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(h + torch.relu(self.mid(h)))


def test_symmetries_of_a_cnn_and_a_residual_block():
    """A ReLU CNN (max pooling is positively homogeneous too) links each layer to the next;
    a skip connection breaks the rescaling of the layers it bypasses."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))  # fmt: skip
    ev = tp.Evidence(E.per_layer(cnn), "cross_entropy", 30)
    ev.update((torch.randn(30, 1, 8, 6), torch.randint(0, 3, (30,))))
    assert ev.symmetries == [{"0.weight": 1, "3.weight": -1}, {"3.weight": 1, "6.weight": -1}]
    ev = tp.Evidence(E.per_layer(Residual()), "cross_entropy", 30)
    ev.update((torch.randn(30, 4), torch.randint(0, 2, (30,))))
    assert ev.symmetries == []


def test_a_zero_head_leaves_the_symmetries_undecided_until_the_output_varies():
    """With a zero-initialized last layer every rescaling leaves the (zero) output alone;
    nothing is concluded from that: the next update, after training, finds the real ones."""
    torch.manual_seed(6)
    X, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    model = relu_net()
    with torch.no_grad():
        model[4].weight.zero_()
        model[4].bias.zero_()
    ev = tp.Evidence(E.per_layer(model, 1e-3), "cross_entropy", n_data=40)
    ev.update((X, y))
    assert ev.symmetries == []
    with torch.no_grad():
        model[4].weight.normal_()
    ev.update((X, y))
    assert ev.symmetries == [{"0.weight": 1, "2.weight": -1}, {"2.weight": 1, "4.weight": -1}]


def test_symmetries_are_found_from_a_loader_of_single_rows():
    torch.manual_seed(7)
    X, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=1)
    ev = tp.Evidence(E.per_layer(relu_net(), 1e-3), "cross_entropy", n_data=20)
    ev.update(loader)
    assert ev.symmetries == [{"0.weight": 1, "2.weight": -1}, {"2.weight": 1, "4.weight": -1}]
