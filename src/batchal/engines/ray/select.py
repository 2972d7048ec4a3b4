"""Scoring and selection on Ray: per-block scores and bottom-k, merged on the driver.

Each Ray task reads one block of predictions (a Parquet row group, a ``.npy``
row range or an object-store chunk), scores it with the local engine's
streaming scorer (:func:`batchal.scores.uncertainty`, which also validates it)
and returns only that block's ``k`` most uncertain unlabeled rows. The driver
merges those lists as they arrive, keeping at most a few ``k`` candidates: the
pool's scores are never gathered and nothing is sorted or grouped globally.
The selectors themselves run unchanged on the driver over a :class:`RayPool`
whose :meth:`RayPool.top_uncertain` is this merge, so a batch is the local
engine's batch for the same inputs and seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..._validation import BatchalInputError, check_clusters, labeled_mask
from ...selectors.base import Pool, merge_top_k
from ._sources import Block, RowSource

#: Strategies that need only scores, cluster ids and the labeled set (what the ray engine distributes).
RAY_STRATEGIES = ("random", "margin", "entropy", "least-confidence", "cluster-margin")


def check_ray_strategy(strategy):
    """Refuse a strategy the ray engine does not run, naming it (before any work, and before Ray starts).

    Parameters
    ----------
    strategy : str or StrategySpec

    Returns
    -------
    StrategySpec : the parsed spec.
    """
    from ...selectors.spec import parse_spec

    spec = parse_spec(strategy)
    if spec.name not in RAY_STRATEGIES:
        raise BatchalInputError(f"strategy {spec.name!r} is not distributed (it needs every embedding on one "
                                f"machine); the ray engine runs {', '.join(RAY_STRATEGIES)}; use --engine local")
    if spec.params.get("candidates") is not None:
        # the neighbourhood search reads every embedding; the ray engine reads none
        raise BatchalInputError(f"strategy {spec.text!r}: candidates=neighbours needs the embeddings on one "
                                "machine; use --engine local")
    if spec.params.get("typical") is not None:
        # typiclust's picks read the visited clusters' embeddings and the whole clustering on one machine
        raise BatchalInputError(f"strategy {spec.text!r}: typical= is not distributed; use --engine local (or run "
                                "typiclust locally for the first rounds)")
    if spec.params.get("balance_by") is not None:
        # the metadata columns live on the driver's side only in the local engine
        raise BatchalInputError(f"strategy {spec.text!r}: balance_by is not distributed yet; use --engine local")
    return spec


def _block_top(src: RowSource, block: Block, kind: str, is_logits: bool, multilabel: bool, aggregate: str,
               labeled, k: int):
    """One block's ``k`` most uncertain unlabeled rows: ``(score float32, row int64, n_classes)``."""
    from ...scores import uncertainty
    from ...selectors.base import top_k

    x = src.read(block)
    if src.topk:  # validated and scored by the local engine's code; its messages name the file and pool row
        u = x.uncertainty(kind, multilabel=multilabel, aggregate=aggregate, row_offset=block.start)
    else:
        if x.ndim != 2:
            raise BatchalInputError(f"{src.name} must be 2-d (n, C); a block has shape {x.shape}")
        try:
            u = uncertainty(kind, None if is_logits else x, logits=x if is_logits else None, multilabel=multilabel,
                            aggregate=aggregate, row_offset=block.start)
        except BatchalInputError as exc:
            where = f" ({block.where})" if block.kind != "ref" else ""
            raise BatchalInputError(f"{exc}{where}") from None
    mask = np.zeros(x.shape[0], dtype=bool)
    if labeled is not None and labeled.shape[0]:
        lo, hi = np.searchsorted(labeled, [block.start, block.start + block.rows])
        mask[labeled[lo:hi] - block.start] = True
    kk = min(k, int(x.shape[0] - mask.sum()))
    if kk <= 0:
        return np.empty(0, np.float32), np.empty(0, np.int64), x.shape[1]
    local = top_k(u, mask, kk)
    return u[local], local.astype(np.int64) + block.start, x.shape[1]


def _block_rows(source: RowSource, block, rows: np.ndarray):
    """The given global rows of one block (a Ray task): the candidates' predictions, where they lie
    (``(classes, probs)`` of those rows for top-k input)."""
    x = source.read(block)
    if source.topk:
        t = x.take(rows - block.start)
        return np.asarray(t.classes), np.asarray(t.probs)
    return np.asarray(x[rows - block.start], dtype=np.float64)


def _block_labels(source: RowSource, block: Block, is_logits: bool, multilabel: bool):
    """One block's predicted classes (a Ray task), found as the local engine finds them.

    The block goes through :meth:`batchal.Pool.rows_probs`'s conversion (float32
    probabilities; softmax, or sigmoid when multi-label, of logits) and then
    :func:`batchal.selectors.balance.block_labels`, so ties resolve alike.
    Returns ``(labels per row, labels row-major, n_classes)``.
    """
    from ... import scores
    from ...selectors.balance import block_labels

    x = source.read(block)
    if source.topk:
        nc = source.n_classes if source.n_classes is not None else int(np.asarray(x.classes).max()) + 1
        return (*block_labels(x, multilabel), nc)
    z = np.asarray(x, dtype=np.float64)
    if is_logits:
        z = 1.0 / (1.0 + np.exp(-z)) if multilabel else scores.softmax(z)
    return (*block_labels(z.astype(np.float32), multilabel), z.shape[1])


class RayPool(Pool):
    """A pool whose predictions stay where they are (Parquet shards, a shared ``.npy``, the object store).

    Cluster ids (which may be memory-mapped: only the candidates' ids are read)
    and the labeled set live on the driver. Supports the strategies in
    :data:`RAY_STRATEGIES`; the others need the whole embedding matrix on one machine.
    """

    #: the scores are never gathered in one array: :meth:`uncertainty` refuses
    distributed = True

    def __init__(self, source: RowSource, *, is_logits: bool = False, clusters=None, labeled=None,
                 multilabel: bool = False, aggregate: str = "min", max_inflight: int = 4, progress: bool = False,
                 embeddings=None):
        self.probs = self.logits = self.topk = self.scores = None
        # like the cluster ids, kept on the driver (a memory map): only the candidates' rows are read (dup=...)
        self.embeddings = embeddings
        if embeddings is not None and embeddings.shape[0] != source.n:
            raise BatchalInputError(f"embeddings have {embeddings.shape[0]:,} rows; the predictions {source.n:,}")
        self.source = source
        self.is_logits = is_logits
        self.multilabel = multilabel
        self.aggregate = aggregate
        self.n = source.n
        self._cache = {}
        self.clusters = check_clusters(clusters, self.n) if clusters is not None else None
        self.labeled = labeled
        self.labeled_mask = labeled_mask(labeled, self.n)
        self.max_inflight = max_inflight
        self.progress = progress
        self.n_classes_ = None

    @property
    def has_predictions(self) -> bool:
        return True

    def uncertainty(self, kind: str = "margin") -> np.ndarray:
        raise BatchalInputError("the ray engine never gathers the whole score array; this strategy needs it "
                                "(use --engine local)")

    def rows_probs(self, rows: np.ndarray) -> np.ndarray:
        """The candidates' probabilities, gathered block by block in Ray tasks (only blocks holding one)."""
        import ray

        from ... import scores
        from ._session import input_errors

        rows = np.asarray(rows, dtype=np.int64)
        src_ref = ray.put(self.source)
        task = ray.remote(num_cpus=1)(_block_rows)
        refs, where = [], []
        with input_errors():
            for b in self.source.blocks:
                sel = np.flatnonzero((rows >= b.start) & (rows < b.start + b.rows))
                if sel.size:
                    refs.append(task.remote(src_ref, b, rows[sel]))
                    where.append(sel)
            parts = ray.get(refs)
        if self.source.topk:
            from ...topk import TopK

            k = parts[0][0].shape[1]
            cls = np.empty((rows.shape[0], k), dtype=np.int32)
            prb = np.empty((rows.shape[0], k), dtype=np.float32)
            for sel, (c, p) in zip(where, parts):
                cls[sel], prb[sel] = c, p
            return TopK(cls, prb, self.source.n_classes, self.source.name)
        out = np.empty((rows.shape[0], parts[0].shape[1] if parts else 0), dtype=np.float64)
        for sel, part in zip(where, parts):
            out[sel] = part
        if not self.is_logits:
            return out.astype(np.float32)
        return (1.0 / (1.0 + np.exp(-out)) if self.multilabel else scores.softmax(out)).astype(np.float32)

    def balance_labels(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every row's predicted classes as a CSR ``(indptr, indices, n_classes)`` (for ``balance``).

        Each block's classes are found in a Ray task where it lies; the driver keeps
        O(n) ints (one class per row multi-class), never the predictions.
        """
        import ray

        from ...selectors.balance import labels_csr
        from ._session import input_errors

        src_ref = ray.put(self.source)
        task = ray.remote(num_cpus=1)(_block_labels)
        blocks = sorted(self.source.blocks, key=lambda b: b.start)
        with input_errors():
            parts = ray.get([task.remote(src_ref, b, self.is_logits, self.multilabel) for b in blocks])
        indptr, indices = labels_csr([p[0] for p in parts], [p[1] for p in parts])
        return indptr, indices, max((p[2] for p in parts), default=0)

    def top_uncertain(self, kind: str, k: int) -> np.ndarray:
        """Per-block top-k in Ray tasks, merged on the driver as results arrive."""
        import ray
        from tqdm.auto import tqdm

        from ._session import input_errors

        if self.priority is not None:
            # a priority (a config's [weights]) ranks every row against every other: not distributed
            raise BatchalInputError("the ray engine ranks by the strategy's own score per block; a priority "
                                    "(a selection config's [weights]) needs every row's score: use --engine local")
        if self.source.topk:  # refused before any task starts
            from ...topk import check_topk_score

            check_topk_score(kind, self.multilabel, self.aggregate, self.source.name)
        lab = np.flatnonzero(self.labeled_mask).astype(np.int64)
        lab_ref = ray.put(lab)
        src_ref = ray.put(self.source)
        task = ray.remote(num_cpus=1)(_block_top)
        blocks = list(self.source.blocks)
        pending, best_s, best_r = [], np.empty(0, np.float32), np.empty(0, np.int64)
        buf_s, buf_r, classes = [], [], set()
        with input_errors(), tqdm(total=self.n, desc=f"{kind} (ray)", unit="rows", disable=not self.progress,
                                  leave=False, mininterval=0.5) as bar:
            rows_of = {}
            while blocks or pending:
                while blocks and len(pending) < self.max_inflight:
                    b = blocks.pop(0)
                    ref = task.remote(src_ref, b, kind, self.is_logits, self.multilabel, self.aggregate, lab_ref, k)
                    rows_of[ref] = b.rows
                    pending.append(ref)
                done, pending = ray.wait(pending, num_returns=1)
                s, r, c = ray.get(done[0])
                classes.add(c)
                bar.update(rows_of.pop(done[0]))
                buf_s.append(s)
                buf_r.append(r)
                if sum(x.shape[0] for x in buf_s) > 2 * k:  # keep the driver at O(k)
                    best_s, best_r = merge_top_k(np.concatenate([best_s, *buf_s]), np.concatenate([best_r, *buf_r]), k)
                    buf_s, buf_r = [], []
        if len(classes) > 1:
            raise BatchalInputError(f"{self.source.name}: blocks disagree on the number of classes: {sorted(classes)}")
        self.n_classes_ = classes.pop()
        if not self.multilabel and self.n_classes_ < 2:
            raise BatchalInputError(f"{self.source.name} must have at least 2 columns (classes); got {self.n_classes_}")
        _, rows = merge_top_k(np.concatenate([best_s, *buf_s]), np.concatenate([best_r, *buf_r]), k)
        return rows


def ray_pool(*, probs=None, logits=None, clusters=None, labeled=None, multilabel: bool = False,
             aggregate: str = "min", column: str | None = None, id_column: str | None = "id",
             progress: bool = False, max_inflight: int | None = None, n_classes: int | None = None,
             embeddings=None) -> RayPool:
    """The :class:`RayPool` over ``probs`` or ``logits`` (Parquet shards, a shared ``.npy``, or an array).

    ``clusters``, ``labeled`` and ``embeddings`` are arrays or paths, kept on the
    driver (``clusters`` and ``embeddings`` are only read at the candidates). See
    :func:`ray_select`.
    """
    import ray

    from ...io import load_array

    if probs is not None and logits is not None:
        raise BatchalInputError("give probs or logits, not both")
    x = probs if probs is not None else logits
    kind = "probs" if probs is not None else "logits"
    if logits is not None and not isinstance(logits, (str, Path, list, tuple, np.ndarray)):
        raise BatchalInputError("top-k predictions are probabilities: pass them as probs")
    src = RowSource.open(x, name=kind, kind=kind, column=column, id_column=id_column, ray=ray, n_classes=n_classes)
    if n_classes is not None and not src.topk:
        raise BatchalInputError("n_classes applies to top-k predictions (top_classes, top_probs)")
    if clusters is not None and not isinstance(clusters, np.ndarray):
        clusters = load_array(clusters, name="clusters")
    if labeled is not None and not isinstance(labeled, np.ndarray):
        labeled = load_array(labeled, name="labeled")
    if embeddings is not None and not isinstance(embeddings, np.ndarray):
        embeddings = load_array(embeddings, name="embeddings")
    if max_inflight is None:
        from ._session import RaySession

        max_inflight = 2 * RaySession.cpus()
    return RayPool(src, is_logits=logits is not None, clusters=clusters, labeled=labeled, multilabel=multilabel,
                   aggregate=aggregate, max_inflight=max_inflight, progress=progress, embeddings=embeddings)


def ray_select(strategy, batch_size: int, *, probs=None, logits=None, clusters=None, labeled=None, embeddings=None,
               multilabel: bool = False, aggregate: str = "min", seed=None, column: str | None = None,
               id_column: str | None = "id", progress: bool = False, max_inflight: int | None = None,
               defaults: dict | None = None, n_classes: int | None = None, **params) -> np.ndarray:
    """The next batch, with the predictions read and scored by Ray workers.

    Parameters are those of :func:`batchal.select`; ``probs``/``logits`` may be
    Parquet shards (a file, a directory, a list of files: ``column`` or a
    ``probs``/``logits`` list column, or numeric columns but ``id_column``), a
    ``.npy`` path every worker can read, or an array; or top-k predictions: Parquet
    shards with ``top_classes`` and ``top_probs`` list columns, or a
    :class:`batchal.topk.TopK` (``n_classes``: the vocabulary size their class ids
    are checked against; default the files' metadata). ``clusters``, ``labeled``
    and ``embeddings`` (read by ``cluster-margin:...:dup=``) are arrays or paths
    (``clusters`` and ``embeddings`` are only read at the candidates).
    """
    spec = check_ray_strategy(strategy)
    if probs is not None and logits is not None:
        raise BatchalInputError("give probs or logits, not both")
    if probs is None and logits is None:
        if "predictions" in spec.requires or spec.name == "random":
            raise BatchalInputError(f"strategy {spec.name!r} on the ray engine needs predicted probabilities or "
                                    "logits (they also give the pool's size)")
    pool = ray_pool(probs=probs, logits=logits, clusters=clusters, labeled=labeled, multilabel=multilabel,
                    aggregate=aggregate, column=column, id_column=id_column, progress=progress,
                    max_inflight=max_inflight, n_classes=n_classes, embeddings=embeddings)
    selector = spec.make(random_state=seed, defaults=defaults, **params)
    return selector.select(pool, batch_size)
