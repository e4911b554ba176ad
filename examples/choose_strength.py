"""Choose an L1 strength for a classifier by cross-validation, then train with it.

Runs ``tp.sweep`` on scikit-learn's breast-cancer data (30 features, 569 rows) with a small
MLP, prints the table, saves the validation curve, and shows how sparse the first layer of
the refit model is at the 1-SE strength (the largest strength as good as the best one).

Run: ``python examples/choose_strength.py [--out curve.png]``
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

import torchpenalty as tp


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default="choose_strength.png", help="where to save the validation curve"
    )
    args = ap.parse_args()

    X, y = load_breast_cancer(return_X_y=True)
    result = tp.sweep(
        make_model,
        (X, y),
        penalty="l1",  # trained with a proximal step: exact zeros
        loss="cross_entropy",  # stratified folds
        strengths=[1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0],
        folds=5,
        epochs=60,
        refit="1se",
        progress=False,
    )
    print(f"{'strength':>9} {'val loss':>9} {'± SE':>7} {'val acc':>8} {'zeros':>6}")
    for row in result.table:
        print(f"{row['strength']:>9.0e} {row['val_loss_mean']:>9.4f} {row['val_loss_se']:>7.4f} "
              f"{row['val_accuracy_mean']:>8.3f} {row['zero_fraction_mean']:>6.0%}")  # fmt: skip
    print(f"\nbest strength {result.best_strength:g}, 1-SE strength {result.strength_1se:g}")

    first = result.model.model[0].weight  # the refit model at the 1-SE strength
    unused = (first == 0).all(dim=0).sum().item()
    print(f"refit at {result.chosen_strength:g}: {(first == 0).float().mean():.0%} of the first "
          f"layer's weights are exactly zero; {unused} of 30 input features are unused")  # fmt: skip

    disp = result.plot()  # validation curve with best and 1-SE marked
    disp.figure_.tight_layout()
    disp.figure_.savefig(args.out, dpi=110)
    print(f"validation curve: {args.out}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
