"""Low-precision writes as a wrapper (:class:`Rounded`), and :func:`make_rule`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from .._validation import check_choice
from ..functional import stochastic_round

if TYPE_CHECKING:  # pragma: no cover
    from ..penalties import Penalty

from .base import _LOW, ROUNDINGS, RULES, Batch, UpdateRule


class Rounded(UpdateRule):
    """Runs ``inner`` on float32 copies of float16/bfloat16 weights and writes them back
    by ``rounding``: ``"stochastic"`` (unbiased, no memory), ``"compensated"`` (a float32
    residual per weight, exact and deterministic; kept in ``residuals`` by ``id``) or
    ``"nearest"`` (what torch.optim does). Other dtypes pass through."""

    def __init__(self, inner: UpdateRule, rounding: str = "stochastic") -> None:
        self.inner = inner
        self.rounding = check_choice("rounding", rounding, ROUNDINGS)
        self.residuals: dict[int, Tensor] = {}

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def applies_penalty(self) -> bool:  # type: ignore[override]
        return self.inner.applies_penalty

    def check(self, penalty: Penalty) -> None:
        self.inner.check(penalty)

    def pre(self, b: Batch) -> None:
        self._run(b, self.inner.pre)

    def post(self, b: Batch) -> None:
        self._run(b, self.inner.post)

    def _run(self, b: Batch, fn) -> None:
        low = [i for i, p in enumerate(b.params) if p.dtype in _LOW]
        if self.rounding == "nearest" or not low:
            fn(b)
            return
        keys = b.keys
        wide = list(b.params)
        for i in low:
            w = b.params[i].float()
            res = self.residuals.get(keys[i]) if self.rounding == "compensated" else None
            wide[i] = w.add_(res) if res is not None else w
        fn(b.replace(params=wide))
        for i in low:
            p, w = b.params[i], wide[i]
            if self.rounding == "stochastic":
                p.copy_(stochastic_round(w, p.dtype))
            else:
                p.copy_(w)
                self.residuals[keys[i]] = w - p.float()

    def __repr__(self) -> str:
        return f"Rounded({self.inner!r}, {self.rounding!r})"


def make_rule(
    mode: str | UpdateRule, *, rounding: str = "stochastic", **options: Any
) -> UpdateRule:
    """The rule for ``mode`` (a registered name or a rule), wrapped in :class:`Rounded`
    when it writes weights. ``options`` go to the rule's :meth:`~UpdateRule.from_options`.

    >>> make_rule("decoupled", rounding="compensated")
    Rounded(Decoupled(), 'compensated')
    """
    check_choice("rounding", rounding, ROUNDINGS)
    if isinstance(mode, UpdateRule):
        rule = mode
    else:
        check_choice("mode", mode, list(RULES))
        rule = RULES[mode].from_options(**options)
    if rule.writes_weights and not isinstance(rule, Rounded):
        rule = Rounded(rule, rounding)
    return rule
