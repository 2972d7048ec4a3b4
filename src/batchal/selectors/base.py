"""The shared selector interface, the pool it reads, and the name registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .._validation import (
    BatchalInputError,
    check_2d,
    check_batch_size,
    check_clusters,
    check_finite,
    labeled_mask,
)
from .. import scores as _scores

# get_selector lives in .spec (it parses specs): base knows nothing of specs, so the import runs one way
__all__ = ["Pool", "Selector", "register", "available_strategies", "REGISTRY", "top_k", "merge_top_k",
           "check_priority"]


def _rows_in_order(src, rows: np.ndarray, dtype) -> np.ndarray:
    """``src[rows]`` as ``dtype``, in the order of ``rows``, read in ascending row order (memory maps suit it)."""
    order = np.argsort(rows, kind="stable")
    back = np.empty_like(order)
    back[order] = np.arange(order.shape[0])
    return np.asarray(src[rows[order]], dtype=dtype)[back]


@dataclass
class Pool:
    """What a selector may read about the pool; arrays are kept as given (memmaps stay memmaps).

    Parameters
    ----------
    probs, logits : array of shape (n, C), optional
        Predicted class probabilities, or logits. At most one. ``probs`` may also be
        a :class:`batchal.topk.TopK` (top-k predictions; moved to ``topk``).
    topk : TopK, optional
        Top-k predictions: (n, k) class ids and their probabilities, never an
        (n, C) matrix. Margin, least confidence and the multi-label min-margin are
        exactly the dense scores; entropy, the mean aggregate and BADGE are refused.
    scores : float array of shape (n,), optional
        A precomputed uncertainty score per row, **smaller = more uncertain** (a
        margin the user's model already reduced). Read by margin and cluster-margin
        (not by the near-duplicate test, which needs probabilities).
    embeddings : array of shape (n, d), optional
    clusters : int array of shape (n,), optional
        One cluster id per row from a one-time clustering of the whole pool.
    labeled : int indices or bool mask, optional
        Rows already labeled; never selected.
    multilabel : bool
        Columns of ``probs``/``logits`` are independent binary problems.
    aggregate : {"min", "mean"}
        Multi-label margin aggregation over classes.
    metadata : dict or pyarrow Table, optional
        Columns of per-row metadata (a source, a camera, a language), one value per
        row, read by ``balance_by=COLUMN``; a column is read only when asked for.
    class_names : sequence of str, optional
        The name of each prediction column (a campaign's ``--classes``): a
        ``balance`` share table may then be keyed by class names.
    priority : float array of shape (n,), optional
        A ranking that replaces the strategy's own score, **larger = picked
        first**: :meth:`top_uncertain` ranks by it whatever score the strategy
        asks for (margin, entropy, least confidence, Cluster-Margin's candidates
        and their order), while :meth:`uncertainty` keeps returning the real
        scores (thresholds, a campaign's scores file). Set by
        :func:`batchal.selection_config.apply_config` from a config's
        ``[weights]``; ``-inf`` may mark rows that are not candidates. NaN is
        refused. Strategies that rank by no score (random, coreset, BADGE) never
        read it, which is why a config refuses ``[weights]`` for them.
    """

    probs: np.ndarray | None = None
    logits: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    clusters: np.ndarray | None = None
    labeled: np.ndarray | None = None
    multilabel: bool = False
    topk: object = None
    scores: np.ndarray | None = None
    aggregate: str = "min"
    metadata: object = None
    class_names: object = None
    priority: np.ndarray | None = None
    n: int = field(init=False)
    labeled_mask: np.ndarray = field(init=False, repr=False)
    _cache: dict = field(init=False, repr=False, default_factory=dict)
    #: False: :meth:`uncertainty` returns every row's score. A distributed pool (the ray engine's)
    #: never gathers them; who needs them all (a campaign's scores file) scores the rows itself.
    distributed: ClassVar[bool] = False

    def __post_init__(self):
        from ..topk import TopK, check_scores

        if isinstance(self.probs, TopK):
            if self.topk is not None:
                raise BatchalInputError("give top-k predictions once (probs or topk)")
            self.topk, self.probs = self.probs, None
        given = [k for k in ("probs", "logits", "topk", "scores") if getattr(self, k) is not None]
        if len(given) > 1:
            raise BatchalInputError(f"give one kind of predictions (probs, logits, top-k or scores), not {' and '.join(given)}")
        sizes = {}
        if self.topk is not None:
            if not isinstance(self.topk, TopK):
                raise BatchalInputError("topk must be a batchal.topk.TopK (top-k class ids and probabilities)")
            sizes["probs"] = self.topk.n
        if self.scores is not None:
            self.scores = check_scores(self.scores, "scores")
            sizes["scores"] = self.scores.shape[0]
        if self.probs is not None:
            self.probs = check_2d(self.probs, "probs")
            sizes["probs"] = self.probs.shape[0]
        if self.logits is not None:
            self.logits = check_2d(self.logits, "logits")
            sizes["logits"] = self.logits.shape[0]
        if self.embeddings is not None:
            self.embeddings = check_2d(self.embeddings, "embeddings")
            sizes["embeddings"] = self.embeddings.shape[0]
        if self.clusters is not None:
            c = np.asarray(self.clusters)
            if c.ndim != 1:
                raise BatchalInputError(f"clusters must be a 1-d array of ints; got shape {c.shape}")
            sizes["clusters"] = c.shape[0]
        if not sizes:
            raise BatchalInputError("the pool is empty: give probs/logits/scores, embeddings or clusters")
        if len(set(sizes.values())) > 1:
            desc = ", ".join(f"{k} has {v} rows" for k, v in sizes.items())
            raise BatchalInputError(f"inputs disagree on the number of rows: {desc}")
        self.n = next(iter(sizes.values()))
        if self.clusters is not None:
            self.clusters = check_clusters(self.clusters, self.n)
        self.labeled_mask = labeled_mask(self.labeled, self.n)
        if self.priority is not None:
            self.priority = check_priority(self.priority, self.n)

    @property
    def has_predictions(self) -> bool:
        return self.probs is not None or self.logits is not None or self.topk is not None or self.scores is not None

    @property
    def has_dense_predictions(self) -> bool:
        """An (n, C) matrix of probabilities or logits (what BADGE's gradient embeddings need)."""
        return self.probs is not None or self.logits is not None

    @property
    def n_unlabeled(self) -> int:
        return int(self.n - self.labeled_mask.sum())

    def uncertainty(self, kind: str = "margin") -> np.ndarray:
        """Cached per-row uncertainty (larger = more uncertain); see :func:`batchal.scores.uncertainty`."""
        if kind not in self._cache and self.scores is not None:
            if kind != "margin":
                raise BatchalInputError(f"precomputed scores stand for the margin (smaller = more uncertain); "
                                        f"the {kind!r} score needs predicted probabilities")
            self._cache[kind] = -np.asarray(self.scores, dtype=np.float32)
        elif kind not in self._cache and self.topk is not None:
            self._cache[kind] = self.topk.uncertainty(kind, multilabel=self.multilabel, aggregate=self.aggregate)
        if kind not in self._cache:
            self._cache[kind] = _scores.uncertainty(
                kind, self.probs, logits=self.logits, multilabel=self.multilabel, aggregate=self.aggregate
            )
        return self._cache[kind]

    def top_uncertain(self, kind: str, k: int) -> np.ndarray:
        """The ``k`` most uncertain unlabeled rows, most uncertain first (ties: smaller row first).

        The one place selectors rank the pool by a score; a distributed pool
        (``batchal.engines.ray``) overrides it with a per-block top-k merged on the driver.
        With :attr:`priority` set, the rows are ranked by it instead of ``kind``'s score.
        """
        if self.priority is not None:
            # float64: a percentile sum over more than 2**24 rows would tie in float32
            return top_k(self.priority, self.labeled_mask, k, dtype=np.float64)
        return top_k(self.uncertainty(kind), self.labeled_mask, k)

    def rows_probs(self, rows: np.ndarray):
        """Predicted probabilities of ``rows`` only, in that order (softmax, or sigmoid when
        multi-label, of the logits when logits were given; a :class:`batchal.topk.TopK` of
        those rows for top-k input); a distributed pool overrides it."""
        from .. import scores

        if self.scores is not None:
            raise BatchalInputError("this strategy compares predicted probabilities (the near-duplicate test of "
                                    "tol=...); precomputed scores hold one number per row: give probabilities or "
                                    "top-k predictions, or drop tol")
        if self.topk is not None:
            return self.topk.check(self.multilabel).take(rows)
        src = self.probs if self.probs is not None else self.logits
        block = _rows_in_order(src, rows, np.float64)
        if self.probs is not None:
            return block.astype(np.float32)
        return (1.0 / (1.0 + np.exp(-block)) if self.multilabel else scores.softmax(block)).astype(np.float32)

    def rows_embeddings(self, rows: np.ndarray) -> np.ndarray:
        """Embeddings of ``rows`` only, in that order, as float32 (read in row order: memory maps stay cheap)."""
        if self.embeddings is None:
            raise BatchalInputError("this strategy reads embeddings; the pool has none")
        return _rows_in_order(self.embeddings, rows, np.float32)

    def metadata_column(self, name: str) -> np.ndarray:
        """One metadata column as a 1-d array of ``n`` values (an error names a missing column)."""
        if self.metadata is None:
            raise BatchalInputError(f"balance_by={name}: the pool has no metadata (give metadata columns: "
                                    "--metadata FILE.parquet, or metadata= in the API)")
        names = list(self.metadata.column_names if hasattr(self.metadata, "column_names") else self.metadata)
        if name not in names:
            raise BatchalInputError(f"balance_by={name}: the metadata has no column {name!r} (columns: {', '.join(map(str, names))})")
        col = self.metadata[name]
        values = col.to_numpy(zero_copy_only=False) if hasattr(col, "to_numpy") and not isinstance(col, np.ndarray) \
            else np.asarray(col)
        if values.ndim != 1 or values.shape[0] != self.n:
            raise BatchalInputError(f"balance_by={name}: the metadata column has {values.shape[0]:,} values but the "
                                    f"pool has {self.n:,} rows")
        return values

    def checked_embeddings(self) -> np.ndarray:
        if "emb_ok" not in self._cache:
            check_finite(self.embeddings, "embeddings")
            self._cache["emb_ok"] = True
        return self.embeddings


REGISTRY: dict[str, type["Selector"]] = {}


def register(cls: type["Selector"]) -> type["Selector"]:
    """Class decorator: make a selector available by its ``name``."""
    if cls.name in REGISTRY:
        raise RuntimeError(f"strategy {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def available_strategies() -> list[str]:
    """Names accepted by :func:`~batchal.selectors.spec.get_selector` and ``batchal select --strategy``."""
    return sorted(REGISTRY)


class Selector:
    """Base class of all batch selectors.

    ``__init__`` only stores parameters; :meth:`select` validates the pool,
    picks ``batch_size`` unlabeled rows and returns their indices in selection
    order (int64). Subclasses implement :meth:`_select` and declare what they
    read in ``requires`` (``"predictions"`` means probs or logits).

    Parameters
    ----------
    random_state : int, numpy Generator or None
        Seed for every random choice; the same seed gives the same batch.

    Attributes
    ----------
    candidates : int or None
        Set from the spec key ``candidates=neighbours:K`` (:meth:`StrategySpec.make`):
        only the ``K`` nearest unlabeled rows of each labeled row are candidates
        (:mod:`batchal.selectors.candidates`).
    """

    name: ClassVar[str] = ""
    candidates: int | None = None
    requires: ClassVar[tuple[str, ...]] = ()
    #: The uncertainty kind the strategy ranks rows by through :meth:`Pool.top_uncertain`
    #: (what a :attr:`Pool.priority` replaces); None: it ranks by no score (random, coreset, BADGE).
    ranks_by: ClassVar[str | None] = None

    def __init__(self, random_state=None):
        self.random_state = random_state

    @classmethod
    def requires_for(cls, params: dict) -> tuple[str, ...]:
        """What a selector with these parameters reads (``requires``, unless a parameter adds an input)."""
        return cls.requires

    def requires_reason(self, req: str) -> str:
        """Why this selector's parameters ask for input ``req`` (named in the error when it is missing)."""
        return "asked for by its parameters"

    def select(self, pool: Pool, batch_size: int) -> np.ndarray:
        """Pick ``batch_size`` unlabeled rows of ``pool``.

        Returns
        -------
        ndarray of int64, shape (batch_size,)
            Row indices in the order they were selected.
        """
        if not isinstance(pool, Pool):
            raise TypeError("select expects a batchal.Pool; build one with Pool(probs=..., ...)")
        for req in self.requires_for(self.get_params()):
            if req == "predictions":
                if not pool.has_predictions:
                    raise BatchalInputError(f"strategy {self.name!r} needs predicted probabilities or logits")
            elif getattr(pool, req) is None:
                how = (": one cluster id per pool row, made once with batchal.cluster or `batchal cluster`"
                       if req == "clusters" else "")
                if req not in type(self).requires:  # asked for by a parameter, not by the strategy itself
                    how = f" ({self.requires_reason(req)})"
                raise BatchalInputError(f"strategy {self.name!r} needs {req}{how}")
        from .candidates import restricted

        # candidates=neighbours:K (any strategy): rows outside the labeled set's neighbourhood count as labeled
        with restricted(pool, getattr(self, "candidates", None), batch_size):
            k = check_batch_size(batch_size, pool.n_unlabeled)
            rng = np.random.default_rng(self.random_state)
            idx = np.asarray(self._select(pool, k, rng), dtype=np.int64)
            # cheap post-condition guards: a wrong batch must never leave the library
            if idx.shape != (k,) or np.unique(idx).shape[0] != k or pool.labeled_mask[idx].any():
                raise RuntimeError(f"internal error in strategy {self.name!r}: invalid batch")
        self.selected_ = idx
        return idx

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def get_params(self) -> dict:
        import inspect

        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def progress_blocks(k: int, desc: str, enabled: bool, n_blocks: int = 50):
    """Split ``k`` sequential picks into about ``n_blocks`` ``(start, stop)`` blocks, with a progress bar.

    The greedy kernels are resumable, so calling them block by block gives the
    same picks as one call while the bar advances between blocks.
    """
    from .._progress import progress  # a bar on a terminal, a line per 10% in a log

    step = max(1, -(-k // n_blocks))
    with progress(k, desc, enabled=enabled, unit="picks") as bar:
        for a in range(0, k, step):
            b = min(k, a + step)
            yield a, b
            bar.update(b - a)


def check_priority(priority, n: int) -> np.ndarray:
    """``priority`` as a float64 array of ``n`` values without NaN (``-inf`` allowed), or an error naming the problem."""
    p = np.asarray(priority)
    if p.ndim != 1 or p.shape[0] != n:
        raise BatchalInputError(f"priority must be a 1-d array with one value per pool row ({n:,}); got shape {p.shape}")
    if p.dtype == bool or not np.issubdtype(p.dtype, np.number):
        raise BatchalInputError(f"priority must hold numbers; got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    if np.isnan(p).any() or np.isposinf(p).any():
        bad = int(np.flatnonzero(np.isnan(p) | np.isposinf(p))[0])
        raise BatchalInputError(f"priority row {bad} is {p[bad]}; give finite values (-inf for a row never picked)")
    return p


def top_k(score: np.ndarray, exclude: np.ndarray, k: int, dtype=np.float32) -> np.ndarray:
    """Indices of the ``k`` largest ``score`` among rows not in ``exclude``, largest first.

    O(n) with ``argpartition`` plus O(k log k) to order the winners. The order is
    total: equal scores go to the smaller row index, also at the cut, so the
    result is deterministic and equals a merge of per-block top-k lists
    (:func:`merge_top_k`), which is how the distributed engine computes it.
    ``dtype``: the precision the scores are compared in (float32, as the
    scores are computed; float64 for a :attr:`Pool.priority`).
    """
    s = np.array(score, dtype=dtype, copy=True)
    s[exclude] = -np.inf
    n = s.shape[0]
    if k < n:
        part = np.argpartition(-s, k - 1)[:k]
        cut = s[part].min()
        n_tied = int(np.count_nonzero(s == cut))
        if n_tied != int(np.count_nonzero(s[part] == cut)):
            # argpartition picks an arbitrary subset of the rows tied at the cut: take the smallest rows
            above = np.flatnonzero(s > cut)
            part = np.concatenate([above, np.flatnonzero(s == cut)[: k - above.shape[0]]])
    else:
        part = np.arange(n)
    order = np.lexsort((part, -s[part]))
    return part[order]


def merge_top_k(score: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of candidate ``(score, row)`` pairs: largest score first, ties to the smaller row.

    Parameters
    ----------
    score : float32 array (m,)
    rows : int64 array (m,), distinct
    k : int

    Returns
    -------
    (score, rows) of the winners, in that order. Applied to the union of
    per-block :func:`top_k` lists it gives the :func:`top_k` of the whole pool.
    """
    m = score.shape[0]
    if k < m:
        part = np.argpartition(-score, k - 1)[:k]
        cut = score[part].min()
        tied = np.flatnonzero(score == cut)
        if tied.shape[0] != int(np.count_nonzero(score[part] == cut)):
            above = np.flatnonzero(score > cut)
            tied = tied[np.argsort(rows[tied], kind="stable")]
            part = np.concatenate([above, tied[: k - above.shape[0]]])
    else:
        part = np.arange(m)
    order = np.lexsort((rows[part], -score[part]))
    sel = part[order]
    return score[sel], rows[sel]
