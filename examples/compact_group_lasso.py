"""From structured sparsity to a smaller network: group lasso, then tp.compact.

A 2-class problem on 20 features that depends on 4 of them. An MLP with two hidden layers
of 64 units is trained with group lasso on whole hidden units (rows of each hidden layer,
``GroupLasso(dim=0)``) in proximal mode, which sets unneeded units exactly to zero;
``tp.compact`` then removes them and the model shrinks with the same outputs.

    python examples/compact_group_lasso.py
"""

from __future__ import annotations

import torch
from torch import nn

import torchpenalty as tp


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 20, generator=generator)
    score = x[:, 0] * x[:, 1] + torch.sin(2 * x[:, 2]) - x[:, 3]
    return x, (score > 0).long()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def train(strength: float, x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 2))  # fmt: skip
    reg = tp.Regularizer(model, {"0.weight": tp.GroupLasso(strength, dim=0),
                                 "2.weight": tp.GroupLasso(strength, dim=0)})  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reg.attach(opt, mode="proximal")
    for _ in range(60):  # epochs of full-batch-ish training, 8 minibatches each
        for idx in torch.randperm(len(x)).chunk(8):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = make_data(2000, g)
    x_test, y_test = make_data(2000, g)
    for strength in (0.0, 0.02, 0.1):
        model = train(strength, x, y)
        small, report = tp.compact(model, example_input=x_test)
        print(f"group lasso strength {strength}:")
        print(f"  test accuracy: full {accuracy(model, x_test, y_test):.3f}, "
              f"compacted {accuracy(small, x_test, y_test):.3f}")  # fmt: skip
        print("  " + str(report).replace("\n", "\n  "))
    print("The compacted model computes the same outputs with fewer units.")


if __name__ == "__main__":
    main()
