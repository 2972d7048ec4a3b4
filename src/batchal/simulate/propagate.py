"""Label propagation to near-duplicates in the simulator: what a dedup threshold buys and costs.

With ``SimulationConfig.propagate = T`` each round's batch is labeled (bought)
and then every batch item's label is copied to the other members of its
near-duplicate group (:func:`batchal.dedup.near_duplicate_groups` at threshold
``T`` on the model's embedding, as ``campaign label --propagate`` copies a
representative's label). Propagated rows join the training set with the copied
label, which may be wrong (the group joins items of two classes), and are never
selected again. Each round records ``n_labeled`` (bought, as without
propagation), ``n_propagated`` and ``propagated_error_rate`` (the share of
propagated labels that differ from the true label), so a team sees what the
threshold saves in bought labels and what it costs in label noise.

The groups are computed once per trial on the seed model's embedding (the one
the one-time clustering reads) and cached on disk like the clustering
(:mod:`.clusters`: keyed by a hash of the embedding and the parameters), so
logistic regression, whose embedding needs no labels, computes them once per
pool.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["Propagation", "duplicate_groups", "start"]

#: bump when the groups' code changes what it returns for the same input
CACHE_VERSION = 1


def duplicate_groups(E: np.ndarray, threshold: float, metric: str, *, cache: bool = True) -> np.ndarray:
    """int64 group id of each row of ``E`` (cached under ``cache_dir()/dedup`` when ``cache``)."""
    from ..dedup import near_duplicate_groups
    from .clusters import cache_path

    params = {"threshold": float(threshold), "metric": metric, "version": CACHE_VERSION}
    path = cache_path("dedup", E, params, ".npy") if cache else None
    if path is not None and path.exists():
        try:
            return np.load(path).astype(np.int64)
        except Exception:  # a damaged cache entry is recomputed, never trusted
            pass
    group = near_duplicate_groups(E, threshold, metric=metric)["group"]
    if path is not None:
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, group)
        os.replace(tmp, path)
    return group


class Propagation:
    """One run's propagated labels.

    Parameters
    ----------
    group : int array (n,)
        Near-duplicate group of each pool row.
    y : array (n,)
        True labels (for the error rate; multi-label rows compare as whole rows).
    """

    def __init__(self, group: np.ndarray, y: np.ndarray):
        self.group, self.y = np.asarray(group), y
        n = self.group.shape[0]
        order = np.argsort(self.group, kind="stable")
        self._order = order  # rows grouped: members of g are _order[_start[g]:_start[g + 1]]
        self._start = np.searchsorted(self.group[order], np.arange(int(self.group.max()) + 2))
        self.rows = np.empty(0, dtype=np.int64)
        self.labels = y[:0]
        self._taken = np.zeros(n, dtype=bool)

    def excluded(self, labeled: np.ndarray) -> np.ndarray:
        """Rows never to select: bought and propagated."""
        return np.concatenate([labeled, self.rows])

    def add(self, batch: np.ndarray, labeled: np.ndarray) -> dict:
        """Propagate the batch's labels to its groups' unlabeled rows; returns this round's record."""
        self._taken[labeled] = True
        self._taken[self.rows] = True
        new, src = [], []
        for b in batch.tolist():
            g = self.group[b]
            members = self._order[self._start[g]:self._start[g + 1]]
            members = members[~self._taken[members]]
            self._taken[members] = True
            new.append(members)
            src.append(np.full(members.shape[0], b, dtype=np.int64))
        new = np.concatenate(new) if new else np.empty(0, np.int64)
        src = np.concatenate(src) if src else np.empty(0, np.int64)
        self.rows = np.concatenate([self.rows, new])
        self.labels = np.concatenate([self.labels, self.y[src]])
        return self.record()

    def record(self) -> dict:
        """``n_propagated`` and ``propagated_error_rate`` (NaN before any propagation) so far."""
        wrong = self.labels != self.y[self.rows]
        if wrong.ndim > 1:  # multi-label: a row is wrong when any class differs
            wrong = wrong.any(axis=1)
        n = int(self.rows.shape[0])
        return {"n_propagated": n, "propagated_error_rate": float(wrong.mean()) if n else float("nan")}

    def training_set(self, X, y, labeled: np.ndarray):
        """``(X, y)`` of bought rows (true labels) and propagated rows (copied labels)."""
        if not self.rows.shape[0]:
            return X[labeled], y[labeled]
        rows = np.concatenate([labeled, self.rows])
        return X[rows], np.concatenate([y[labeled], self.labels])


def start(dataset, cfg, model) -> Propagation:
    """The run's :class:`Propagation`, groups from ``model``'s embedding (the seed model, already fitted)."""
    E = np.ascontiguousarray(model.embed(dataset.X), dtype=np.float32)
    return Propagation(duplicate_groups(E, cfg.propagate, cfg.propagate_metric, cache=cfg.cluster_cache), dataset.y)
