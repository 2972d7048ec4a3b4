"""Pure uncertainty sampling: random, margin, entropy and least confidence."""
from __future__ import annotations

import numpy as np

from .balance import balanced_top
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
    """The ``k`` most uncertain unlabeled rows by one score.

    Parameters
    ----------
    balance : {"uniform", "input"}, str path of a JSON file of shares, dict or None, default None
        Move the batch's share per predicted class toward a target: per-class quotas
        filled in this score's order (see :mod:`batchal.selectors.balance`). None: the
        plain ranking.
    balance_by : str or None, default None
        Balance over the values of this metadata column of the pool (a source, a
        camera, a language) instead of the predicted classes; ``balance`` then gives
        the target (default ``uniform``; a share table is keyed by the column's values).
    random_state : int, Generator or None

    Attributes
    ----------
    balance_ : dict
        With ``balance``: ``target``, ``quota`` and ``batch_counts`` per class of the last call.
    """

    score: str = "margin"
    requires = ("predictions",)

    def __init__(self, balance: str | dict | None = None, balance_by: str | None = None, random_state=None):
        super().__init__(random_state=random_state)
        self.balance = balance
        self.balance_by = balance_by

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
        if self.balance is None and self.balance_by is None:
            return pool.top_uncertain(self.score, k)
        batch, self.balance_ = balanced_top(pool, self.balance, self.score, k, by=self.balance_by)
        return batch


@register
class MarginSelector(_TopUncertainty):
    """The ``k`` unlabeled rows with the smallest margin p(top-1) - p(top-2).

    With multi-label input (``Pool(multilabel=True)``) the multi-label margin is used.
    """

    name = "margin"
    score = ranks_by = "margin"


@register
class EntropySelector(_TopUncertainty):
    """The ``k`` unlabeled rows with the largest predictive entropy."""

    name = "entropy"
    score = ranks_by = "entropy"


@register
class LeastConfidenceSelector(_TopUncertainty):
    """The ``k`` unlabeled rows with the smallest top-1 probability."""

    name = "least-confidence"
    score = ranks_by = "least-confidence"
