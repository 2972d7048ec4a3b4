"""Label-free stopping signals: is another labeling round worth it?

Computed from what a campaign already receives every round, the model's
predictions, on a fixed *stop set* of pool rows drawn once:

* **kappa** (stabilizing predictions; Bloodgood & Vijay-Shanker 2009): Cohen's kappa
  between the predicted labels of two successive rounds on the stop set. Their rule:
  stop once kappa stays at or above 0.99 for three successive rounds (if kappa
  exceeds T, the two models' F-scores differ by at most 4(1-T)/T).
  Multi-label: each class is a binary prediction; the per-class kappas are averaged
  over the classes predicted positive on some compared row in either round (a class
  no row ever gets would count as perfect agreement and, with thousands of
  classes, drown the classes that move).
* **changed**: the share of compared stop-set rows whose predicted label (multi-label:
  label set) changed between the two rounds (classification change; Zhu et al. 2008).
* **uncertainty**: the stop set's mean uncertainty in this round. Dense predictions:
  mean normalised entropy, ``H(p) / log C`` (multi-label: binary entropy per class
  over ``log 2``, averaged over classes). Top-k predictions drop the mass entropy
  needs, and a bound from the residual mass would measure what the layout dropped
  rather than the model, so from top-k it is the exact margin-based uncertainty
  ``1 - margin`` (multi-class ``1 - (p1 - p2)``, multi-label ``1 - min_c |2 p_c - 1|``);
  :attr:`StopPredictions.uncertainty_kind` says which, and the two are not compared.

The signals are computed on the stop-set rows that are not labeled (nor pending)
at the current round: the model is trained on its labeled rows, so their
predictions agree with their labels and inflate agreement without saying
anything about the rest of the pool. The stop set stays selectable: keeping a
few percent of the pool out of every batch would change the batches the
selectors make (the most uncertain stop-set rows are exactly the ones worth
labeling); what this costs is that the compared rows shrink a little each round
and lean towards the confident rows (the uncertain ones get selected), which
makes kappa slightly optimistic in late rounds. With the default size (at least
1,000 rows) and batches of a few percent of the pool, thousands of rows remain.

This module is pure NumPy and holds no state on disk: the campaign
(:mod:`batchal.campaign.stop`) stores its results, and a simulator loop can call
the same functions (or :class:`StopTracker`) each round.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validation import BatchalInputError

__all__ = ["STOP_SET_MAX", "STOP_SET_MIN", "STOP_SET_SHARE", "KAPPA_THRESHOLD", "STABLE_ROUNDS",
           "stop_set_size", "draw_stop_set", "StopPredictions", "stop_predictions", "compare",
           "stop_advice", "StopTracker"]

#: Default stop set: 5% of the pool, at most 10,000 rows, at least 1,000 (or the whole pool below that).
STOP_SET_SHARE = 0.05
STOP_SET_MAX = 10_000
STOP_SET_MIN = 1_000
#: The documented rule (Bloodgood & Vijay-Shanker 2009): kappa >= 0.99 for 3 successive rounds.
KAPPA_THRESHOLD = 0.99
STABLE_ROUNDS = 3


def stop_set_size(n: int) -> int:
    """Default number of stop-set rows for a pool of ``n``: ``max(min(10,000, 5% of n), min(n, 1,000))``.

    10,000 rows give kappa a standard error well under 0.005 near 0.99, so the
    rule's threshold is not lost in sampling noise; 5% keeps the set a small share
    of a small pool; 1,000 rows is the floor under which the 0.99 threshold (10
    changed rows) is noise.
    """
    n = int(n)
    return max(min(STOP_SET_MAX, int(round(STOP_SET_SHARE * n))), min(n, STOP_SET_MIN))


def draw_stop_set(n: int, seed: int, size: int | None = None) -> np.ndarray:
    """A uniform sample of ``size`` (default :func:`stop_set_size`) of ``n`` rows, sorted; same seed, same set."""
    size = stop_set_size(n) if size is None else int(size)
    if not 0 < size <= n:
        raise BatchalInputError(f"stop set size must be in [1, {n:,}]; got {size}")
    rng = np.random.default_rng(int(seed))
    return np.sort(rng.choice(int(n), size=size, replace=False)).astype(np.int64)


@dataclass
class StopPredictions:
    """One round's predicted labels on the stop-set rows.

    Attributes
    ----------
    top : int32 array (m,) or None
        Multi-class: the predicted class of each row (-1: no prediction).
    indptr, indices : int64 array (m + 1,), int32 array or None
        Multi-label: row ``i``'s predicted set is ``indices[indptr[i]:indptr[i + 1]]``.
    have : bool array (m,)
        Rows that had a prediction this round.
    n_classes : int
    uncertainty : float array (m,)
        Each row's uncertainty (NaN without a prediction); see ``uncertainty_kind``.
    uncertainty_kind : {"entropy", "margin"}
    """

    top: np.ndarray | None
    indptr: np.ndarray | None
    indices: np.ndarray | None
    have: np.ndarray
    n_classes: int
    uncertainty: np.ndarray
    uncertainty_kind: str

    @property
    def multilabel(self) -> bool:
        return self.top is None

    def arrays(self) -> dict:
        """The arrays to store (``np.savez``); :meth:`from_arrays` reads them back."""
        out = dict(have=self.have, uncertainty=self.uncertainty.astype(np.float32),
                   n_classes=np.int64(self.n_classes), kind=np.array(self.uncertainty_kind))
        if self.multilabel:
            out.update(indptr=self.indptr, indices=self.indices)
        else:
            out.update(top=self.top)
        return out

    @classmethod
    def from_arrays(cls, a) -> "StopPredictions":
        ml = "indptr" in a
        return cls(top=None if ml else np.asarray(a["top"]), indptr=np.asarray(a["indptr"]) if ml else None,
                   indices=np.asarray(a["indices"]) if ml else None, have=np.asarray(a["have"]),
                   n_classes=int(a["n_classes"]), uncertainty=np.asarray(a["uncertainty"], dtype=np.float64),
                   uncertainty_kind=str(a["kind"]))


def stop_predictions(array, *, kind: str = "probs", multilabel: bool = False, have=None,
                     chunk_rows: int = 4096) -> StopPredictions:
    """Predicted labels and uncertainty of the stop-set rows from their predictions.

    Parameters
    ----------
    array : (m, C) array of probabilities or logits, or a :class:`batchal.topk.TopK` of m rows
        The predictions of the stop-set rows only (take them from the pool's first).
    kind : {"probs", "logits", "topk"}
    multilabel : bool
        Multi-class: the top class. Multi-label: the classes with p >= 0.5; from
        top-k, the listed classes with p >= 0.5 (a confident positive left out of
        the k classes nearest 0.5 is not seen, as in the batch's pre-annotations).
    have : bool array (m,), optional
        Rows that have a prediction (the others' entries are ignored).
    """
    from .topk import TopK

    if isinstance(array, TopK) != (kind == "topk"):
        raise BatchalInputError("stop_predictions: kind='topk' goes with a TopK, and only with one")
    m = array.n if kind == "topk" else int(np.shape(array)[0])
    have = np.ones(m, dtype=bool) if have is None else np.asarray(have, dtype=bool)
    unc = np.full(m, np.nan)
    if kind == "topk":
        C = int(array.n_classes) if array.n_classes else int(array.classes.max()) + 1
        cls_, p = np.asarray(array.classes), np.asarray(array.probs, dtype=np.float64)
        if multilabel:
            pos = (p >= 0.5) & have[:, None]
            unc[have] = 1.0 - np.abs(2.0 * p[have] - 1.0).min(axis=1)
            return _multilabel(pos, cls_, have, C, unc, "margin")
        top = np.where(have, cls_[:, 0], -1).astype(np.int32)
        if p.shape[1] >= 2:
            unc[have] = 1.0 - (p[have, 0] - p[have, 1])
        else:  # one entry: the margin against the residual mass is a bound, so report least confidence
            unc[have] = 1.0 - p[have, 0]
        return StopPredictions(top, None, None, have, C, unc, "margin")
    C = int(np.shape(array)[1])
    top = np.full(m, -1, dtype=np.int32)
    rows_pos, cols_pos = [], []
    for a in range(0, m, chunk_rows):
        b = min(m, a + chunk_rows)
        A = np.asarray(array[a:b], dtype=np.float64)
        h = have[a:b]
        if multilabel:
            P = A if kind == "probs" else 1.0 / (1.0 + np.exp(-np.clip(A, -500, 500)))
            Pc = np.clip(P, 1e-12, 1 - 1e-12)
            H = -(Pc * np.log(Pc) + (1 - Pc) * np.log(1 - Pc)) / np.log(2.0)
            unc[a:b][h] = H[h].mean(axis=1)
            r, c = np.nonzero((P >= 0.5) & h[:, None])
            rows_pos.append(r + a)
            cols_pos.append(c)
        else:
            if kind == "logits":
                A = np.exp(A - A.max(axis=1, keepdims=True))
                A /= A.sum(axis=1, keepdims=True)
            top[a:b] = np.where(h, A.argmax(axis=1), -1)
            Pc = np.clip(A, 1e-300, 1.0)
            H = -(A * np.log(Pc)).sum(axis=1) / np.log(C) if C > 1 else np.zeros(b - a)
            unc[a:b][h] = H[h]
    if not multilabel:
        return StopPredictions(top, None, None, have, C, unc, "entropy")
    r = np.concatenate(rows_pos) if rows_pos else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols_pos) if cols_pos else np.zeros(0, dtype=np.int64)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.add.at(indptr, r + 1, 1)
    return StopPredictions(None, np.cumsum(indptr), c.astype(np.int32), have, C, unc, "entropy")


def _multilabel(pos, classes, have, C, unc, ukind) -> StopPredictions:
    m = pos.shape[0]
    indptr = np.zeros(m + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(pos.sum(axis=1))
    # boolean indexing walks row-major: each row's classes come out together, in row order
    return StopPredictions(None, indptr, np.asarray(classes)[pos].astype(np.int32), have, C, unc, ukind)


def _keys(sp: StopPredictions, rows: np.ndarray) -> np.ndarray:
    """``row * C + class`` of every positive (row, class) pair on ``rows`` (multi-label), sorted."""
    counts = np.diff(sp.indptr)
    owner = np.repeat(np.arange(counts.shape[0]), counts)
    keep = np.isin(owner, rows)
    return np.sort(owner[keep].astype(np.int64) * sp.n_classes + sp.indices[keep])


def _kappa(po: float, pe: float) -> float:
    # pe == 1: both rounds give every row the same single value; agreement is then perfect
    return 1.0 if pe >= 1.0 else float((po - pe) / (1.0 - pe))


def compare(prev: StopPredictions, cur: StopPredictions, mask=None) -> dict:
    """The signals between two rounds' predictions on the same stop set.

    Parameters
    ----------
    prev, cur : StopPredictions
        Predictions of the same stop-set rows, in the same order, in two rounds.
    mask : bool array (m,), optional
        Rows to compare (the campaign: rows not labeled nor pending now). Rows
        without a prediction in either round are left out too.

    Returns
    -------
    dict : ``kappa``, ``changed`` (None when no row is compared), ``uncertainty``
        (``cur``'s mean on the compared rows, or on its rows with a prediction when
        ``prev`` is None), ``uncertainty_kind`` and ``n`` (rows compared).
    """
    m = cur.have.shape[0]
    ok = cur.have.copy() if mask is None else cur.have & np.asarray(mask, dtype=bool)
    if prev is None:
        u = cur.uncertainty[ok]
        return dict(kappa=None, changed=None, uncertainty=float(u.mean()) if u.size else None,
                    uncertainty_kind=cur.uncertainty_kind, n=int(ok.sum()))
    if prev.have.shape[0] != m or prev.multilabel != cur.multilabel:
        raise BatchalInputError("compare: the two rounds' predictions are not on the same stop set")
    ok &= prev.have
    rows = np.flatnonzero(ok)
    n = rows.size
    u = cur.uncertainty[rows]
    out = dict(kappa=None, changed=None, uncertainty=float(u.mean()) if n else None,
               uncertainty_kind=cur.uncertainty_kind, n=int(n))
    if n == 0:
        return out
    if not cur.multilabel:
        a, b = prev.top[rows].astype(np.int64), cur.top[rows].astype(np.int64)
        C = max(prev.n_classes, cur.n_classes, int(max(a.max(), b.max())) + 1)
        po = float((a == b).mean())
        pe = float((np.bincount(a, minlength=C) / n) @ (np.bincount(b, minlength=C) / n))
        out.update(kappa=_kappa(po, pe), changed=1.0 - po)
        return out
    C = max(prev.n_classes, cur.n_classes)
    ka, kb = _keys(prev, rows), _keys(cur, rows)
    both = np.intersect1d(ka, kb, assume_unique=True)
    na = np.bincount(ka % C, minlength=C).astype(np.float64)
    nb = np.bincount(kb % C, minlength=C).astype(np.float64)
    n11 = np.bincount(both % C, minlength=C).astype(np.float64)
    seen = np.flatnonzero((na > 0) | (nb > 0))
    if seen.size:
        po = (n + 2 * n11[seen] - na[seen] - nb[seen]) / n
        pe = (na[seen] * nb[seen] + (n - na[seen]) * (n - nb[seen])) / (n * n)
        kap = np.where(pe >= 1.0, 1.0, (po - pe) / np.where(pe >= 1.0, 1.0, 1.0 - pe))
        kappa = float(kap.mean())
    else:
        kappa = 1.0  # no class predicted on any compared row in either round: nothing changed
    changed_rows = np.unique(np.setxor1d(ka, kb, assume_unique=True) // C).size
    out.update(kappa=kappa, changed=changed_rows / n)
    return out


def stop_advice(kappas, *, threshold: float = KAPPA_THRESHOLD, rounds: int = STABLE_ROUNDS,
                labels=None) -> str | None:
    """The rule as advice: a sentence when the last ``rounds`` kappas are all >= ``threshold``, else None.

    Parameters
    ----------
    kappas : sequence of float or None
        One per round in order; None (no previous round to compare with) breaks a run.
    labels : sequence, optional
        The rounds' numbers, named in the sentence (default 1, 2, ...).
    """
    ks = list(kappas)
    labels = list(labels) if labels is not None else list(range(1, len(ks) + 1))
    tail = ks[-rounds:]
    if len(tail) < rounds or any(k is None or not k >= threshold for k in tail):
        return None
    return (f"predictions stable for {rounds} rounds (rounds {', '.join(str(r) for r in labels[-rounds:])}): "
            f"kappa {', '.join(f'{k:.3f}' for k in tail)} >= {threshold:g}; consider stopping "
            "(Bloodgood & Vijay-Shanker 2009); this is advice, nothing was stopped")


class StopTracker:
    """The signals over a loop's rounds, in memory (for a simulator; a campaign stores them instead).

    Parameters
    ----------
    n : int
        Pool size; the stop set is drawn once from it.
    seed : int
    size : int, optional
        Stop-set rows (default :func:`stop_set_size`).

    Examples
    --------
    >>> t = StopTracker(len(pool), seed=0)                         # doctest: +SKIP
    >>> for r in rounds:                                           # doctest: +SKIP
    ...     s = t.update(probs, labeled=labeled_mask)  # dict: kappa, changed, uncertainty, n, advice
    """

    def __init__(self, n: int, seed: int = 0, size: int | None = None):
        self.rows = draw_stop_set(n, seed, size)
        self.prev: StopPredictions | None = None
        self.history: list[dict] = []

    def update(self, predictions, *, labeled=None, kind: str | None = None, multilabel: bool = False,
               subset: bool = False) -> dict:
        """One round: ``predictions`` of the whole pool ((n, C) probabilities/logits or a TopK).

        ``labeled`` is a bool mask over the pool (labeled or pending rows, left
        out of the comparison). ``subset=True``: ``predictions`` are already the
        stop set's rows, in the order of :attr:`rows` (a simulator predicts only
        those). Returns the round's signals and ``advice``.
        """
        from .topk import TopK

        if kind is None:
            kind = "topk" if isinstance(predictions, TopK) else "probs"
        if subset:
            sub = predictions
        else:
            sub = predictions.take(self.rows) if kind == "topk" else np.asarray(predictions[self.rows])
        cur = stop_predictions(sub, kind=kind, multilabel=multilabel)
        mask = None if labeled is None else ~np.asarray(labeled, dtype=bool)[self.rows]
        s = compare(self.prev, cur, mask)
        self.prev = cur
        self.history.append(s)
        s["advice"] = stop_advice([h["kappa"] for h in self.history])
        return s
