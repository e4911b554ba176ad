"""Kept for imports written before :mod:`torchpenalty.updates` held these rules."""

from .updates import (
    Cautious,
    Corrected,
    bind_rule,
    cautious_decay_,
    cautious_rule,
    normalized_weights,
)

__all__ = [
    "Cautious",
    "Corrected",
    "bind_rule",
    "cautious_decay_",
    "cautious_rule",
    "normalized_weights",
]
