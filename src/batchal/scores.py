"""Uncertainty scores for a pool of predictions.

All scores stream over row chunks, so an (n, C) memory-mapped array of any size
is scored with O(n) extra memory (one float32 per row plus one chunk).
Probabilities are validated in the same pass (finite, in [0, 1], rows summing
to 1 for multi-class input).

Conventions: ``margin`` is *small* for uncertain items; ``entropy`` and
``least_confidence`` are *large* for uncertain items. :func:`uncertainty`
returns a score where larger always means more uncertain.

Multi-label margin: each class c is a binary problem with margin
``|2 p_c - 1|``; the item's margin aggregates over classes. ``"min"`` (the
default) scores an item by its most uncertain class, so an item that is
ambiguous for even one label is a candidate; ``"mean"`` averages over classes,
which with many classes is dominated by the confidently-absent ones and ranks
items mostly by how many labels they carry. We default to ``"min"`` because
large multi-label vocabularies (Open Images has ~600 trainable classes) would
otherwise wash out the signal.

Top-k predictions (a few class ids and probabilities per row, for vocabularies
too large for an (n, C) matrix) are scored by :meth:`batchal.topk.TopK.uncertainty`,
which gives exactly these margins and least confidences, and refuses the rest.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ._validation import (
    CHUNK_ROWS,
    BatchalInputError,
    check_2d,
    check_count,
    check_finite_block,
    check_proba_block,
    iter_chunks,
)

__all__ = [
    "softmax",
    "margin",
    "entropy",
    "least_confidence",
    "multilabel_margin",
    "uncertainty",
    "SCORES",
]


def _softmax_block(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)  # shift so exp never overflows
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def softmax(logits, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Numerically stable row-wise softmax, returned as float32 (n, C)."""
    z = check_2d(logits, "logits")
    _check_logits_block_all(z, chunk_rows)
    out = np.empty(z.shape, dtype=np.float32)
    for a, b in iter_chunks(z.shape[0], chunk_rows):
        out[a:b] = _softmax_block(z[a:b])
    return out


def _check_logits_block_all(z, chunk_rows):
    for a, b in iter_chunks(z.shape[0], chunk_rows):
        check_finite_block(np.asarray(z[a:b]), "logits", a)


#: most entries of a block scored at once (float64: 8 MB); narrower inputs keep ``chunk_rows`` rows
BLOCK_ENTRIES = 1 << 20


def _stream(
    fn: Callable[[np.ndarray], np.ndarray],
    probs=None,
    logits=None,
    *,
    multilabel: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    row_offset: int = 0,
) -> np.ndarray:
    """Apply a per-block score ``fn`` (on probabilities) over row chunks.

    ``row_offset`` is added to the row numbers in error messages (a block of a larger pool).
    """
    if (probs is None) == (logits is None):
        raise BatchalInputError("give exactly one of probs or logits")
    check_count(chunk_rows, "chunk_rows", 1)
    check_count(row_offset, "row_offset", 0)
    name = "probs" if probs is not None else "logits"
    x = check_2d(probs if probs is not None else logits, name)
    if not multilabel and x.shape[1] < 2:
        raise BatchalInputError(f"{name} must have at least 2 columns (classes); got {x.shape[1]}")
    out = np.empty(x.shape[0], dtype=np.float32)
    # rows per block also bounded by entries: 65,536 rows of 1,000 classes are 0.5 GB of float64 per
    # temporary, and faulting those pages in cost more than the scores (measured 20-30 s a round at 200K x 1,000)
    chunk_rows = max(1, min(int(chunk_rows), BLOCK_ENTRIES // max(1, x.shape[1])))
    for a, b in iter_chunks(x.shape[0], chunk_rows):
        block = np.asarray(x[a:b], dtype=np.float64)
        if probs is not None:
            check_proba_block(block, name, a + row_offset, multilabel)
        else:
            check_finite_block(block, name, a + row_offset)
            if multilabel:
                # independent sigmoids per class; clip keeps exp finite for huge logits
                block = 1.0 / (1.0 + np.exp(-np.clip(block, -500, 500)))
            else:
                block = _softmax_block(block)
        out[a:b] = fn(block)
    return out


def _margin_block(p: np.ndarray) -> np.ndarray:
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return np.abs(top2[:, 1] - top2[:, 0])


def _entropy_block(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return h


def _least_conf_block(p: np.ndarray) -> np.ndarray:
    return 1.0 - p.max(axis=1)


def margin(probs=None, *, logits=None, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Multi-class margin ``p(top-1) - p(top-2)`` per row (small = uncertain).

    Parameters
    ----------
    probs : array-like of shape (n, C), optional
        Class probabilities; rows must sum to 1. May be a memmap.
    logits : array-like of shape (n, C), optional
        Unnormalised scores; a stable softmax is applied per chunk.
    chunk_rows : int
        Rows per streamed chunk.

    Returns
    -------
    ndarray of shape (n,), float32
    """
    return _stream(_margin_block, probs, logits, chunk_rows=chunk_rows)


def entropy(probs=None, *, logits=None, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Shannon entropy (nats) of each row's class distribution (large = uncertain)."""
    return _stream(_entropy_block, probs, logits, chunk_rows=chunk_rows)


def least_confidence(probs=None, *, logits=None, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """``1 - max_c p_c`` per row (large = uncertain)."""
    return _stream(_least_conf_block, probs, logits, chunk_rows=chunk_rows)


def multilabel_margin(
    probs=None, *, logits=None, aggregate: str = "min", chunk_rows: int = CHUNK_ROWS
) -> np.ndarray:
    """Multi-label margin: per class ``|2 p_c - 1|``, aggregated over classes.

    Parameters
    ----------
    probs : array-like of shape (n, C), optional
        Independent per-class probabilities in [0, 1] (rows need not sum to 1).
    logits : array-like of shape (n, C), optional
        Per-class logits; a sigmoid is applied.
    aggregate : {"min", "mean"}
        ``"min"``: the item's most uncertain class decides (default).
        ``"mean"``: average over classes.

    Returns
    -------
    ndarray of shape (n,), float32; small = uncertain.
    """
    return _stream(_multilabel_fn(aggregate), probs, logits, multilabel=True, chunk_rows=chunk_rows)


def _multilabel_fn(aggregate: str):
    if aggregate == "min":
        return lambda p: np.abs(2.0 * p - 1.0).min(axis=1)
    if aggregate == "mean":
        return lambda p: np.abs(2.0 * p - 1.0).mean(axis=1)
    raise BatchalInputError(f"unknown multi-label aggregate {aggregate!r}; use 'min' or 'mean'")


#: name -> (function, sign) where ``sign * score`` is larger for more uncertain items.
SCORES = {
    "margin": (margin, -1.0),
    "entropy": (entropy, 1.0),
    "least-confidence": (least_confidence, 1.0),
}
_BLOCK_FNS = {"margin": _margin_block, "entropy": _entropy_block, "least-confidence": _least_conf_block}


def uncertainty(
    kind: str = "margin",
    probs=None,
    *,
    logits=None,
    multilabel: bool = False,
    aggregate: str = "min",
    chunk_rows: int = CHUNK_ROWS,
    row_offset: int = 0,
) -> np.ndarray:
    """Uncertainty per row where **larger means more uncertain**.

    ``kind`` is one of ``"margin"``, ``"entropy"``, ``"least-confidence"``.
    With ``multilabel=True`` only ``"margin"`` is defined (the multi-label margin).
    ``row_offset`` numbers the rows in error messages from there (one block of a
    larger pool, as the distributed engine scores it); the scores do not depend on it.
    """
    agg_fn = _multilabel_fn(aggregate)  # checked even where multi-class scores do not read it
    if multilabel:
        if kind != "margin":
            raise BatchalInputError(f"only the margin score is defined for multi-label input, not {kind!r}")
        s = _stream(agg_fn, probs, logits, multilabel=True, chunk_rows=chunk_rows, row_offset=row_offset)
        np.negative(s, out=s)
        return s
    if kind not in SCORES:
        raise BatchalInputError(f"unknown score {kind!r}; choose one of {sorted(SCORES)}")
    _, sign = SCORES[kind]
    s = _stream(_BLOCK_FNS[kind], probs, logits, chunk_rows=chunk_rows, row_offset=row_offset)
    if sign < 0:
        np.negative(s, out=s)
    return s
