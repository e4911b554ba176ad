"""Strength conversions to and from Keras and scikit-learn (each checked against the
library in tests/oracles)."""

from __future__ import annotations

from .._validation import check_positive, check_strength


def from_keras_l2(l2: float) -> float:
    """Keras ``L2(l2)`` is ``l2 * sum w**2``; the same penalty is ``L2(2 * l2)``.

    >>> from_keras_l2(0.01)
    0.02
    """
    return 2.0 * check_strength("l2", l2)


def from_keras_l1(l1: float) -> float:
    """Keras ``L1(l1)`` is ``l1 * sum |w|`` = ``L1(l1)``."""
    return check_strength("l1", l1)


def from_sklearn_ridge(alpha: float, n_samples: int) -> float:
    """``Ridge(alpha)`` minimizes ``||y - Xw||**2 + alpha ||w||**2``; on a mean-squared loss
    the same minimizer comes from ``L2(2 * alpha / n_samples)``.

    >>> from_sklearn_ridge(1.0, 100)
    0.02
    """
    return 2.0 * check_strength("alpha", alpha) / check_positive("n_samples", n_samples)


def to_sklearn_ridge(strength: float, n_samples: int) -> float:
    """Inverse of :func:`from_sklearn_ridge`: ``alpha = strength * n_samples / 2``."""
    return check_strength("strength", strength) * check_positive("n_samples", n_samples) / 2.0


def from_sklearn_lasso(alpha: float) -> float:
    """``Lasso(alpha)`` minimizes ``||y - Xw||**2 / (2n) + alpha |w|_1``; on a mean-squared
    loss the same minimizer comes from ``L1(2 * alpha)``."""
    return 2.0 * check_strength("alpha", alpha)


def to_sklearn_lasso(strength: float) -> float:
    """Inverse of :func:`from_sklearn_lasso`: ``alpha = strength / 2``."""
    return check_strength("strength", strength) / 2.0


def from_sklearn_elasticnet(alpha: float) -> float:
    """``ElasticNet(alpha, l1_ratio=r)`` on a mean-squared loss is
    ``ElasticNet(2 * alpha, l1_ratio=r)`` here (same ``l1_ratio``)."""
    return 2.0 * check_strength("alpha", alpha)


def to_sklearn_elasticnet(strength: float) -> float:
    """Inverse of :func:`from_sklearn_elasticnet`: ``alpha = strength / 2``."""
    return check_strength("strength", strength) / 2.0
