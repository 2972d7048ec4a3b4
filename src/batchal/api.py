"""One-call entry points used by the CLI and by scripts."""
from __future__ import annotations

import warnings

import numpy as np

from ._validation import BatchalInputError, unread_input_warnings
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
    scores=None,
    multilabel: bool = False,
    aggregate: str = "min",
    metadata=None,
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
        Predictions (exactly one when the strategy needs them). ``probs`` may be a
        :class:`batchal.topk.TopK` (top-k predictions, e.g. from
        :func:`batchal.topk.read_topk`): margin, least-confidence and cluster-margin
        (the near-duplicate test included) then read only the k entries per row.
    embeddings : (n, d) array, optional
    clusters : (n,) int array, optional
    labeled : int indices or bool mask, optional
    scores : (n,) array, optional
        Precomputed uncertainty, smaller = more uncertain (instead of predictions;
        margin and cluster-margin without ``tol``).
    multilabel : bool
        Columns are independent binary problems (multi-label margin).
    aggregate : {"min", "mean"}
        Multi-label margin aggregation.
    metadata : dict of column -> (n,) array, or a pyarrow Table, optional
        Per-row metadata read by ``balance_by=COLUMN``.
    seed : int or None
    **params
        Strategy parameters, e.g. ``margin_factor`` for cluster-margin or
        ``partitions`` for badge.

    Returns
    -------
    int64 array of row indices, in selection order.

    Warns
    -----
    UserWarning
        When an input the strategy does not read holds NaN or infinity (the batch
        is unaffected, but whatever wrote that input is suspect).
    """
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed < 0:
        raise BatchalInputError(f"seed must be a non-negative integer (or None); got {seed}")
    if "random_state" in params:
        raise BatchalInputError("select takes its seed as seed=, not random_state= (that is the selector "
                                "classes' name for it)")
    spec = parse_spec(strategy)
    selector = spec.make(random_state=seed, **params)
    arrays = dict(probs=probs, logits=logits, embeddings=embeddings, clusters=clusters)
    pool = Pool(
        scores=scores,
        probs=probs,
        logits=logits,
        embeddings=embeddings,
        clusters=clusters,
        labeled=labeled,
        multilabel=multilabel,
        aggregate=aggregate,
        metadata=metadata,
    )
    for msg in unread_input_warnings(arrays, spec.requires, spec.name):
        warnings.warn(msg, UserWarning, stacklevel=2)
    return selector.select(pool, batch_size)
