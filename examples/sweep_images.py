"""How much weight decay for a small CNN? ``tp.sweep`` on images.

scikit-learn's digits (1,797 handwritten digits, 8x8 pixels) as ``(n, 1, 8, 8)`` images:
every (strength, fold) CNN is trained at once (``torch.func.vmap``), the images go to the
model as they are (only 2-D tabular features are standardized), and the refit model
predicts digits from raw images. Runs in seconds on a CPU.

    python examples/sweep_images.py
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import torchpenalty as tp


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),  # (8, 8, 8)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (8, 4, 4)
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def main() -> None:
    torch.manual_seed(0)
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    labels = digits.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    train, test = order[:1400], order[1400:]
    result = tp.sweep(
        cnn,
        (images[train], labels[train]),
        strengths=[1e-4, 1e-3, 1e-2, 1e-1],
        penalty="l2",
        folds=3,
        epochs=6,
        batch_size=64,
        lr=1e-2,
        progress=False,
        test=(images[test], labels[test]),
    )
    print(result)
    print(f"input: rows of shape {result.settings['x_shape']} ({result.settings['x_dtype']}), "
          f"not standardized; loss {result.loss}")  # fmt: skip
    print(f"best strength: {result.best_strength:g}")
    accuracy = float((result.predict(images[test]) == labels[test]).mean())
    print(f"held-out accuracy of the refit CNN: {accuracy:.3f} ({len(test)} images)")


if __name__ == "__main__":
    main()
