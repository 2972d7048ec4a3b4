"""Pure uncertainty sampling: random, margin, entropy and least confidence."""
from __future__ import annotations

import numpy as np

from .base import Pool, Selector, register


@register
class RandomSelector(Selector):
    """Uniform random sample of the unlabeled rows (the baseline every method must beat)."""

    name = "random"
    requires = ()

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
        unlabeled = np.flatnonzero(~pool.labeled_mask)
        return rng.choice(unlabeled, size=k, replace=False)


class _TopUncertainty(Selector):
    score: str = "margin"
    requires = ("predictions",)

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
        return pool.top_uncertain(self.score, k)


@register
class MarginSelector(_TopUncertainty):
    """The ``k`` unlabeled rows with the smallest margin p(top-1) - p(top-2).

    With multi-label input (``Pool(multilabel=True)``) the multi-label margin is used.
    """

    name = "margin"
    score = "margin"


@register
class EntropySelector(_TopUncertainty):
    """The ``k`` unlabeled rows with the largest predictive entropy."""

    name = "entropy"
    score = "entropy"


@register
class LeastConfidenceSelector(_TopUncertainty):
    """The ``k`` unlabeled rows with the smallest top-1 probability."""

    name = "least-confidence"
    score = "least-confidence"
