"""Class balance of a batch: per-class quotas filled in a strategy's own order.

Uncertainty sampling on a long-tailed pool fills its batch with the classes the
model confuses most often, which are rarely the rare ones (Emam et al. 2021:
on ImageNet, balancing the batch over predicted classes is what lets active
learning beat random). ``balance`` moves the batch's share per *predicted*
class toward a target:

* ``"uniform"``: every class the same share;
* ``"input"``: the pool's predicted distribution over its unlabeled rows;
* a table of shares: a dict ``{class: share}`` or the path of a JSON object of
  that form (classes are the integer column ids of the predictions, or their
  names where the pool has class names, :attr:`batchal.Pool.class_names`: a
  campaign's ``--classes``; shares sum to 1 within 1e-6; a class not listed
  gets share 0).

How: the quota of class ``c`` is ``target_c * k``, rounded by largest remainder
(Hamilton), so each class's count is within one item of its target. A class
with fewer candidates than its quota gives all it has, and the rest of its
quota is redistributed over the other classes in proportion to their targets
(water-filling), so the batch always holds exactly ``k`` items. The quotas are
then filled by scanning the strategy's own order (margin order for margin,
the round-robin's visiting order for Cluster-Margin) and taking an item while
its class still has quota. Where every class's share of the plain batch
already equals its quota, the balanced batch is the plain one.

A row's class is its top-1 prediction (top-k input: the first listed class).
Multi-label: each positive label (``p > 0.5``; top-k input: the listed classes
with ``p > 0.5``, so a confident positive the top-k layout did not list is not
seen). A multi-label item is taken while *any* of its labels has quota and
counts for all of them; items with no positive label, and any shortfall the
co-occurrence of labels leaves, are filled last in the strategy's order.

On the ray engine each block's classes are found in a Ray task
(:meth:`batchal.engines.ray.select.RayPool.balance_labels`) with the same
conversion as here, so the balanced batch is the local one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numba import njit

from .._validation import BatchalInputError, iter_chunks

__all__ = ["check_balance", "target_shares", "class_quotas", "quota_fill", "row_labels", "balanced_order_fill",
           "balanced_top", "describe_balance"]

#: Tolerance on the sum of a share table.
SHARE_ATOL = 1e-6
_KEYWORDS = ("uniform", "input")


def check_balance(balance, by: str | None = None):
    """Validate a ``balance`` value without reading the pool.

    Parameters
    ----------
    balance : {"uniform", "input"}, str path of a JSON file, dict or None
    by : str, optional
        The metadata column balanced over (``balance_by``): the table's keys are
        then the column's values (as text), not class ids.

    Returns
    -------
    None, ``"uniform"``, ``"input"`` or a dict ``{int class: float share}``
    (``{str value: float share}`` with ``by``). A key that is not an integer is
    kept as a class *name* (str), resolved against the pool's class names when
    the targets are computed (:func:`target_shares`).

    Raises
    ------
    BatchalInputError
        An unknown keyword, a missing or malformed JSON file, a negative class
        id, a class given twice, a share that is negative or not finite, shares
        not summing to 1 within 1e-6.
    """
    if balance is None or balance in _KEYWORDS:
        return balance
    where = "balance"
    if isinstance(balance, (str, Path)):
        path = Path(balance)
        if path.suffix.lower() != ".json":
            raise BatchalInputError(f"balance must be 'uniform', 'input' or the path of a JSON file of shares "
                                    f"(class -> share); got {str(balance)!r}")
        where = f"balance file {str(path)!r}"
        try:
            table = json.loads(path.read_text())
        except FileNotFoundError:
            raise BatchalInputError(f"{where} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BatchalInputError(f"{where} is not readable JSON: {exc}") from None
    elif isinstance(balance, dict):
        table = balance
    else:
        raise BatchalInputError(f"balance must be 'uniform', 'input', a dict of shares or a JSON file; got {balance!r}")
    if not isinstance(table, dict) or not table:
        raise BatchalInputError(f"{where} must be a non-empty object class -> share")
    out: dict = {}
    for key, share in table.items():
        if by is not None:  # a value of the metadata column, matched as text
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not np.isfinite(share) or share < 0:
                raise BatchalInputError(f"{where}: the share of {by}={key!r} must be a number >= 0; got {share!r}")
            out[str(key)] = float(share)
            continue
        try:
            c = int(key)
            if isinstance(key, float) or str(c) != str(key).strip():
                raise ValueError
        except (TypeError, ValueError):
            c = str(key).strip()  # a class name: resolved against the pool's class names
            if not c:
                raise BatchalInputError(f"{where}: class {key!r} is neither a class id nor a class name") from None
        if isinstance(c, int) and c < 0:
            raise BatchalInputError(f"{where}: class {key!r} is not a class id (an integer >= 0)")
        if c in out:
            raise BatchalInputError(f"{where}: class {c} given twice")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not np.isfinite(share) or share < 0:
            raise BatchalInputError(f"{where}: the share of class {key!r} must be a number >= 0; got {share!r}")
        out[c] = float(share)
    total = sum(out.values())
    if abs(total - 1.0) > SHARE_ATOL:
        raise BatchalInputError(f"{where}: shares must sum to 1 (within {SHARE_ATOL:g}); they sum to {total:.9g}")
    return out


def by_class_name(balance: dict, class_names) -> dict:
    """A share table with class names as keys, as class ids (ids stay ids); errors name the unknown class."""
    named = [c for c in balance if isinstance(c, str)]
    if not named:
        return balance
    if class_names is None:
        raise BatchalInputError(f"balance: class {named[0]!r} is not a class id (an integer >= 0), and the "
                                "predictions carry no class names to look it up in (a campaign's --classes)")
    pos = {str(v): i for i, v in enumerate(class_names)}
    out: dict = {}
    for c, share in balance.items():
        if isinstance(c, str):
            if c not in pos:
                shown = ", ".join(map(str, list(pos)[:10])) + (" ..." if len(pos) > 10 else "")
                raise BatchalInputError(f"balance: class {c!r} is not one of the class names ({shown})")
            c = pos[c]
        if c in out:
            raise BatchalInputError(f"balance: class {c} given twice (by id and by name)")
        out[c] = share
    return out


def target_shares(balance, n_classes: int, input_counts: np.ndarray, names=None, by: str | None = None,
                  class_names=None) -> np.ndarray:
    """The target share of every class, float64 (n_classes,), summing to 1.

    Parameters
    ----------
    balance : value returned by :func:`check_balance` (not None)
    n_classes : int
    input_counts : int array (n_classes,)
        Predicted-class counts over the pool's unlabeled rows (read for ``"input"``).
    names : array of str, optional
        With ``by``: the column value of each class id (a share table is keyed by them).
    by : str, optional
        The metadata column (named in errors).
    class_names : sequence of str, optional
        The name of each class id (a share table may be keyed by them).
    """
    if balance == "uniform":
        return np.full(n_classes, 1.0 / n_classes)
    if balance == "input":
        total = float(np.sum(input_counts))
        if total == 0:
            raise BatchalInputError("balance=input: no unlabeled row has a positive predicted label to take "
                                    "the distribution from")
        return np.asarray(input_counts, dtype=np.float64) / total
    if names is not None:
        where = {str(v): i for i, v in enumerate(names)}
        bad = [v for v in balance if v not in where]
        if bad:
            shown = ", ".join(map(str, list(where)[:10])) + (" ..." if len(where) > 10 else "")
            raise BatchalInputError(f"balance: {by}={bad[0]!r} does not occur in the metadata column {by!r} "
                                    f"(values: {shown})")
        t = np.zeros(n_classes)
        for v, share in balance.items():
            t[where[v]] = share
        return t
    balance = by_class_name(balance, class_names)
    bad = [c for c in balance if c >= n_classes]
    if bad:
        raise BatchalInputError(f"balance: class {bad[0]} does not exist; the predictions have {n_classes} classes "
                                f"(ids 0..{n_classes - 1})")
    t = np.zeros(n_classes)
    for c, s in balance.items():
        t[c] = s
    return t


def class_quotas(k: int, target: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """Per-class quotas: ``target * k`` rounded by largest remainder, capped by availability.

    Parameters
    ----------
    k : int
        Batch size.
    target : float array (C,)
        Target shares (>= 0, summing to 1).
    avail : int array (C,)
        Candidates of each class.

    Returns
    -------
    int64 array (C,), ``quota <= avail``; it sums to ``k`` unless the classes with a
    positive target hold fewer than ``k`` candidates together.

    Notes
    -----
    Water-filling: a class whose ideal share of what is left is at least its
    availability gets all its candidates and leaves the set; what is left is
    re-divided over the remaining classes in proportion to their targets, until
    every remaining class can meet its ideal. Those ideals are then rounded down
    and the leftover items go to the largest remainders (ties: smaller class id),
    so every class is within one item of its (redistributed) ideal.
    """
    target = np.asarray(target, dtype=np.float64)
    avail = np.asarray(avail, dtype=np.int64)
    q = np.zeros(target.shape[0], dtype=np.int64)
    active = (target > 0) & (avail > 0)
    left = int(k)
    ideal = np.zeros_like(target)
    while active.any() and left > 0:
        ideal = np.where(active, left * target / target[active].sum(), 0.0)
        sat = active & (avail <= ideal)
        if not sat.any():
            break
        q[sat] = avail[sat]
        left -= int(avail[sat].sum())
        active &= ~sat
    if active.any() and left > 0:
        base = np.minimum(np.floor(ideal).astype(np.int64), avail)
        base[~active] = 0
        q += base
        extra = left - int(base.sum())
        cls = np.flatnonzero(active)
        rem = (ideal - base)[cls]
        order = cls[np.lexsort((cls, -rem))]
        q[order[: max(0, min(extra, order.shape[0]))]] += 1
    return q


@njit(cache=True)
def _quota_scan(order, indptr, indices, quota, k):
    """Scan ``order`` (positions into the label CSR); take a position while one of its labels has quota.

    Hand-written: a sequential scan whose state (the per-class counts) changes at
    every step. Returns a bool mask over ``order`` and the number taken.
    """
    count = np.zeros(quota.shape[0], dtype=np.int64)
    taken = np.zeros(order.shape[0], dtype=np.bool_)
    t = 0
    for j in range(order.shape[0]):
        if t == k:
            break
        r = order[j]
        ok = False
        for q in range(indptr[r], indptr[r + 1]):
            c = indices[q]
            if count[c] < quota[c]:
                ok = True
                break
        if ok:
            for q in range(indptr[r], indptr[r + 1]):
                count[indices[q]] += 1
            taken[j] = True
            t += 1
    return taken, t


def quota_fill(order: np.ndarray, indptr: np.ndarray, indices: np.ndarray, quota: np.ndarray, k: int,
               complete: bool = True) -> np.ndarray | None:
    """Fill the quotas in ``order``: positions into ``order`` of the ``k`` items taken, in that order.

    Parameters
    ----------
    order : int array (m,)
        Rows of the label CSR, in the strategy's order (most preferred first).
    indptr, indices : CSR of each row's labels (int64)
    quota : int array (C,)
    k : int
    complete : bool
        ``order`` is the whole candidate list. When False (a prefix of it) and the
        scan ends short of ``k``, None is returned: the caller extends the prefix.

    Returns
    -------
    int64 array (k,) of positions into ``order``, ascending; a shortfall of the
    quota scan (only with multi-label co-occurrence or unlabeled rows) is filled
    with the first positions not taken.
    """
    taken, t = _quota_scan(np.ascontiguousarray(order, dtype=np.int64), indptr, indices,
                           np.ascontiguousarray(quota, dtype=np.int64), int(k))
    if t < k:
        if not complete:
            return None
        rest = np.flatnonzero(~taken)[: k - t]
        taken[rest] = True
    return np.flatnonzero(taken).astype(np.int64)


def row_labels(pool, by: str | None = None) -> tuple[np.ndarray, np.ndarray, int, object]:
    """Each pool row's classes as a CSR ``(indptr, indices, n_classes, names)``, cached on the pool.

    Multi-class: the top-1 class (one per row; ties to the smaller class id).
    Multi-label: every class with ``p > 0.5`` (possibly none). Streams over row
    chunks: memory is O(n) ints, never the (n, C) predictions. ``names`` is None.
    With ``by``: the value of the metadata column ``by`` (one per row; ``names``
    holds the distinct values, sorted, as class ids index them).
    """
    key = ("balance_labels", by)
    if key in pool._cache:
        return pool._cache[key]
    if by is not None:
        values = pool.metadata_column(by)
        try:
            names, inv = np.unique(values, return_inverse=True)
        except TypeError:  # mixed kinds in an object column: compare them as text
            names, inv = np.unique(values.astype(str), return_inverse=True)
        pool._cache[key] = (np.arange(pool.n + 1, dtype=np.int64), inv.astype(np.int64).ravel(),
                            int(names.shape[0]), names)
        return pool._cache[key]
    if pool.scores is not None or not pool.has_predictions:
        raise BatchalInputError("balance needs predicted probabilities (a class per row); precomputed scores "
                                "hold one number per row")
    if pool.distributed:  # the ray engine: each block's labels found where it lies
        indptr, indices, n_classes = pool.balance_labels()
        pool._cache[key] = (indptr, indices, n_classes, None)
        return pool._cache[key]
    if pool.topk is not None:
        n_classes = pool.topk.n_classes
        if n_classes is None:
            n_classes = int(np.asarray(pool.topk.classes).max()) + 1 if pool.n else 0
    else:
        n_classes = int((pool.probs if pool.probs is not None else pool.logits).shape[1])
    counts, parts = [], []
    for a, b in iter_chunks(pool.n):
        c, lab = block_labels(pool.rows_probs(np.arange(a, b, dtype=np.int64)), pool.multilabel)
        counts.append(c)
        parts.append(lab)
    indptr, indices = labels_csr(counts, parts)
    pool._cache[key] = (indptr, indices, n_classes, None)
    return pool._cache[key]


def block_labels(block, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """The classes of a block of rows: ``(labels per row, the labels row-major)``, int64.

    ``block`` is what :meth:`batchal.Pool.rows_probs` gives (float32 probabilities,
    or a :class:`batchal.topk.TopK`); the ray engine's blocks go through the same
    conversion, so both engines find the same classes.
    """
    from ..topk import TopK

    if isinstance(block, TopK):
        cls, p = np.asarray(block.classes, dtype=np.int64), np.asarray(block.probs)
        if multilabel:
            pos = p > 0.5
            return pos.sum(axis=1).astype(np.int64), cls[pos]  # row-major: each row's labels in listed order
        return np.ones(cls.shape[0], dtype=np.int64), cls[:, 0].copy()
    P = np.asarray(block)
    if multilabel:
        pos = P > 0.5
        return pos.sum(axis=1).astype(np.int64), np.nonzero(pos)[1].astype(np.int64)
    return np.ones(P.shape[0], dtype=np.int64), np.argmax(P, axis=1).astype(np.int64)


def labels_csr(counts: list, parts: list) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-block ``block_labels`` into one CSR ``(indptr, indices)``."""
    c = np.concatenate(counts) if counts else np.empty(0, np.int64)
    indptr = np.concatenate(([0], np.cumsum(c))).astype(np.int64)
    indices = np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
    return indptr, indices


def label_counts(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, n_classes: int) -> np.ndarray:
    """How many of ``rows`` carry each class (int64 (n_classes,))."""
    counts = np.zeros(n_classes, dtype=np.int64)
    lens = indptr[rows + 1] - indptr[rows]
    if lens.size and int(lens.max()) == 1 and int(lens.min()) == 1:  # single-label: one gather
        return np.bincount(indices[indptr[rows]], minlength=n_classes).astype(np.int64)
    for a, b in iter_chunks(rows.shape[0]):
        r = rows[a:b]
        starts, ln = indptr[r], lens[a:b]
        flat = np.repeat(starts - np.concatenate(([0], np.cumsum(ln)[:-1])), ln) + np.arange(int(ln.sum()))
        counts += np.bincount(indices[flat], minlength=n_classes)
    return counts


def _targets(pool, balance, by, k):
    """Labels, the pool's counts over unlabeled rows and the target shares (``balance`` None with ``by``: uniform)."""
    bal = check_balance("uniform" if balance is None else balance, by)
    indptr, indices, n_classes, names = row_labels(pool, by)
    if n_classes == 0:
        raise BatchalInputError("balance: the predictions have no classes")
    unl = np.flatnonzero(~pool.labeled_mask)
    pool_counts = label_counts(indptr, indices, unl, n_classes)
    target = target_shares(bal, n_classes, pool_counts, names, by, getattr(pool, "class_names", None))
    return indptr, indices, n_classes, names, pool_counts, target


def _diag(k, target, quota, counts, names):
    d = {"k": k, "target": target, "quota": quota, "batch_counts": counts}
    if names is not None:
        d["names"] = names
    return d


def balanced_order_fill(pool, balance, order: np.ndarray, k: int, *, whole: bool,
                        by: str | None = None) -> tuple[np.ndarray, dict]:
    """The balanced batch from a strategy's ordered candidates.

    Parameters
    ----------
    pool : Pool
    balance : a value accepted by :func:`check_balance` (not None)
    order : int array
        Candidate rows in the strategy's order.
    k : int
    whole : bool
        True: the candidates are every unlabeled row (availability is the pool's);
        False: the candidate set is ``order`` itself (Cluster-Margin's ``M``).
    by : str, optional
        Balance over the values of this metadata column instead of predicted classes.

    Returns
    -------
    (positions into ``order`` of the batch, ascending; diagnostics dict with
    ``k`` and ``target``, ``quota`` and ``batch_counts`` per class).
    """
    indptr, indices, n_classes, names, pool_counts, target = _targets(pool, balance, by, k)
    avail = pool_counts if whole else label_counts(indptr, indices, np.asarray(order, dtype=np.int64), n_classes)
    quota = class_quotas(k, target, avail)
    pos = quota_fill(order, indptr, indices, quota, k)
    picked = np.asarray(order, dtype=np.int64)[pos]
    return pos, _diag(k, target, quota, label_counts(indptr, indices, picked, n_classes), names)


def balanced_top(pool, balance, kind: str, k: int, by: str | None = None) -> tuple[np.ndarray, dict]:
    """Balanced uncertainty sampling: quotas filled in the order of ``kind``'s uncertainty over the pool.

    The order is read as growing prefixes of the ranking (``4k``, doubled until
    the quotas are filled, at most the whole unlabeled pool): the quota scan is
    online, so a prefix that fills them gives the batch the whole ranking would.
    """
    indptr, indices, n_classes, names, pool_counts, target = _targets(pool, balance, by, k)
    unl_n = pool.n_unlabeled
    quota = class_quotas(k, target, pool_counts)
    depth = min(unl_n, 4 * k)
    while True:
        order = pool.top_uncertain(kind, depth)
        pos = quota_fill(order, indptr, indices, quota, k, complete=depth >= unl_n)
        if pos is not None:
            break
        depth = min(unl_n, 2 * depth)
    picked = order[pos]
    return picked, _diag(k, target, quota, label_counts(indptr, indices, picked, n_classes), names)


def describe_balance(diag: dict, top: int = 8) -> str:
    """One line on a balanced batch (printed by ``batchal select``): per class, batch count / target.

    At most ``top`` classes are named (those with the largest target), so that a
    vocabulary of thousands stays one line.
    """
    target, counts = diag["target"], diag["batch_counts"]
    k = diag["k"]
    named = np.flatnonzero((target > 0) | (counts > 0))
    shown = named[np.argsort(-target[named], kind="stable")][:top]
    names = diag.get("names")
    parts = [f"{c if names is None else names[c]}: {int(counts[c])}/{target[c] * k:.1f}" for c in shown]
    more = f" (+{named.shape[0] - shown.shape[0]} classes)" if named.shape[0] > shown.shape[0] else ""
    what = "predicted class" if names is None else "metadata value"
    return f"balance: batch count / target per {what}: " + ", ".join(parts) + more
