"""How much weight decay for a small text classifier? ``tp.sweep`` on token ids.

A corpus generated here (fixed seed, no download): documents of 12 tokens about one of
three topics, each word drawn from the topic's 10 words with probability 0.12 and from 60
shared words otherwise. The model is an ``nn.EmbeddingBag`` (mean of the word vectors)
and a linear layer; the integer token ids go to it as int64, untouched (only 2-D float
features are standardized). The refit model labels new documents.

    python examples/sweep_text.py
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

import torchpenalty as tp

TOPICS, TOPIC_WORDS, SHARED, LENGTH = 3, 10, 60, 12
VOCAB = SHARED + TOPICS * TOPIC_WORDS


def corpus(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` documents ``(n, LENGTH)`` of token ids and their topics ``(n,)``."""
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, TOPICS, n)
    shared = rng.integers(0, SHARED, (n, LENGTH))
    topical = SHARED + topics[:, None] * TOPIC_WORDS + rng.integers(0, TOPIC_WORDS, (n, LENGTH))
    tokens = np.where(rng.random((n, LENGTH)) < 0.12, topical, shared)
    return tokens.astype(np.int64), topics


def model() -> nn.Module:
    return nn.Sequential(nn.EmbeddingBag(VOCAB, 32, mode="mean"), nn.Linear(32, TOPICS))


def main() -> None:
    torch.manual_seed(0)
    # torch.func has no batching rule for embedding_bag yet: it loops over the models
    # with a warning; vectorize="auto" times both paths and keeps the faster anyway.
    warnings.filterwarnings("ignore", message=".*batching rule for aten::embedding_bag")
    X, y = corpus(400, seed=0)
    X_test, y_test = corpus(300, seed=1)
    result = tp.sweep(
        model,
        (X, y),
        strengths=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        penalty="l2",
        folds=3,
        epochs=15,
        batch_size=32,
        lr=3e-2,
        progress=False,
        test=(X_test, y_test),
    )
    print(result)
    print(f"input: token ids of shape {result.settings['x_shape']} ({result.settings['x_dtype']})")
    print(f"best strength: {result.best_strength:g}")
    accuracy = float((result.predict(X_test) == y_test).mean())
    print(f"held-out accuracy of the refit model: {accuracy:.3f} ({len(y_test)} documents)")


if __name__ == "__main__":
    main()
