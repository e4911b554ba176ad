"""The tutorial's 5 -> 10 -> 5 network, regularized the right way.

The tutorial adds ``lambda/2 * sum(p**2)`` over *all* parameters (biases included) to the
loss, in the parameters' dtype, with a Python loop. Here the same network is trained on a
small noisy regression problem that it overfits, once without and once with
``tp.L2`` (same seed, same data, same batches), and the script prints train and
validation loss and weight norms side by side.

Run: ``python examples/tutorial_done_right.py``
"""

from __future__ import annotations

import torch
from torch import nn

import torchpenalty as tp


class Net(nn.Module):  # the tutorial's model
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 10)
        self.fc2 = nn.Linear(10, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def make_data(seed: int = 0, n_train: int = 24, n_val: int = 500):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 5, generator=g) * 0.5
    x = torch.randn(n_train + n_val, 5, generator=g)
    y = x @ w + 1.0 * torch.randn(n_train + n_val, 5, generator=g)  # noisy targets
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def train(strength: float | None, epochs: int = 3000, seed: int = 0):
    (xt, yt), (xv, yv) = make_data()
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    reg = tp.Regularizer(model, tp.L2(strength)) if strength else None
    criterion = nn.MSELoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss = criterion(model(xt), yt)
        if reg is not None:
            loss = loss + reg()  # weights only: biases are not decayed
        loss.backward()
        opt.step()
    with torch.no_grad():
        train_loss = criterion(model(xt), yt).item()
        val_loss = criterion(model(xv), yv).item()
    norm = sum(p.detach().pow(2).sum() for n, p in model.named_parameters() if "weight" in n)
    return train_loss, val_loss, float(norm.sqrt()), reg


def main() -> None:
    strength = 0.05
    rows = [("no regularization", *train(None)[:3]), (f"tp.L2({strength})", *train(strength)[:3])]
    reg = train(strength, epochs=1)[3]
    print("The tutorial's 5->10->5 net on 24 noisy training points (500 held out)\n")
    print(f"{'':20s} {'train MSE':>10s} {'val MSE':>10s} {'||weights||':>12s}")
    for name, tr, va, nw in rows:
        print(f"{name:20s} {tr:10.3f} {va:10.3f} {nw:12.3f}")
    print("\nWhat tp.L2 regularized (the tutorial also decays the biases):")
    print(tp.explain(reg.model))
    better = rows[1][2] < rows[0][2]
    print(f"\nValidation loss {'improved' if better else 'did not improve'} with L2: "
          f"{rows[0][2]:.3f} -> {rows[1][2]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
