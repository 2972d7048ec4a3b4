"""One-call entry points used by the CLI and by scripts."""
from __future__ import annotations

import numpy as np

from .selectors import Pool
from .selectors.spec import parse_spec


def select(
    strategy: str,
    batch_size: int,
    *,
    probs=None,
    logits=None,
    embeddings=None,
    clusters=None,
    labeled=None,
    multilabel: bool = False,
    aggregate: str = "min",
    seed=None,
    **params,
) -> np.ndarray:
    """Pick the next batch of ``batch_size`` unlabeled rows with a named strategy.

    Parameters
    ----------
    strategy : str or StrategySpec
        A registered name, see :func:`batchal.available_strategies`, or a spec
        ``NAME:key=value[:key=value...]`` whose parameters override ``**params``.
    batch_size : int
    probs, logits : (n, C) arrays, optional
        Predictions (exactly one when the strategy needs them).
    embeddings : (n, d) array, optional
    clusters : (n,) int array, optional
    labeled : int indices or bool mask, optional
    multilabel : bool
        Columns are independent binary problems (multi-label margin).
    aggregate : {"min", "mean"}
        Multi-label margin aggregation.
    seed : int or None
    **params
        Strategy parameters, e.g. ``margin_factor`` for cluster-margin or
        ``partitions`` for badge.

    Returns
    -------
    int64 array of row indices, in selection order.
    """
    selector = parse_spec(strategy).make(random_state=seed, **params)
    pool = Pool(
        probs=probs,
        logits=logits,
        embeddings=embeddings,
        clusters=clusters,
        labeled=labeled,
        multilabel=multilabel,
        aggregate=aggregate,
    )
    return selector.select(pool, batch_size)
