"""Top-k predictions: a few (class, probability) pairs per item instead of a dense (n, C) matrix.

At the paper's size (Open Images: about 10M images, 20K classes, multi-label) dense
float32 probabilities take 800 GB; margin-based selection needs a few numbers per item.
The top-k layout keeps, per row, ``k`` class ids (``top_classes``) and their
probabilities (``top_probs``), ``k`` fixed per file:

* multi-class: the ``k`` most probable classes, most probable first;
* multi-label (``multilabel=True``): the ``k`` classes whose probability is nearest
  0.5 (the smallest per-class margins ``|2p - 1|``), nearest first.

What is exact from top-k and what is not (``TopK.uncertainty``):

* multi-class margin ``p(1) - p(2)`` (``k >= 2``), least confidence ``1 - p(1)``
  (``k >= 1``) and the multi-label min-margin ``min_c |2 p_c - 1|`` (``k >= 1``)
  are exactly the dense scores: they read only the entries the layout keeps;
* entropy and the multi-label mean aggregate read every class: they are refused
  with an error (a bound from ``k`` entries and the residual mass would rank items
  by how much mass the layout dropped, not by their uncertainty).

Near-duplicates (``cluster-margin:order=margin:tol=T``) compare two rows on the union
of their classes: a class missing from a row's top-k can only take values the layout
allows there (multi-class: ``[0, b]``, ``b`` the smaller of the row's k-th probability
and its residual mass ``1 - sum(top_probs)`` (plus the 0.001 a row's sum may be off); multi-label: at least the k-th entry's
distance from 0.5 away from 0.5), and counts with the value *nearest* the other row's
(``near_duplicate_gap``). Two rows are near-duplicates when some dense matrix with
these entries makes them so: whenever the entries decide (every class in both rows,
as with ``k = C``, or a gap above ``tol`` that no missing value can close, or missing
classes confined within ``tol``) it is the dense decision.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import CHUNK_ROWS, PROBA_ATOL, BatchalInputError, iter_chunks

__all__ = ["TopK", "topk_predictions", "topk_table", "read_topk", "is_topk_file", "TOPK_COLUMNS", "check_scores"]

#: The two column (Parquet) / array (.npz) names that mark the layout.
TOPK_COLUMNS = ("top_classes", "top_probs")
#: Parquet schema metadata key (and .npz array name) for the size of the class vocabulary.
N_CLASSES_KEY = "n_classes"


@dataclass
class TopK:
    """Top-k predictions of ``n`` rows: ``classes`` and ``probs``, both of shape (n, k).

    Parameters
    ----------
    classes : int array (n, k)
        Class ids, distinct within a row, in ``[0, n_classes)``.
    probs : float array (n, k)
        Their probabilities in [0, 1], most probable first (multi-class) or nearest
        0.5 first (multi-label).
    n_classes : int, optional
        Size of the class vocabulary; class ids are checked against it when given.
    name : str
        How errors name this input (a file, an option).
    """

    classes: np.ndarray
    probs: np.ndarray
    n_classes: int | None = None
    name: str = "top-k predictions"
    _checked: set = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self):
        c, p = np.asanyarray(self.classes), np.asanyarray(self.probs)
        if c.ndim != 2 or p.ndim != 2:
            raise BatchalInputError(f"{self.name}: top_classes and top_probs must be 2-d (n, k); got shapes "
                                    f"{c.shape} and {p.shape}")
        if c.shape != p.shape:
            raise BatchalInputError(f"{self.name}: top_classes has shape {c.shape} but top_probs {p.shape}; "
                                    "give one probability per class id")
        if c.shape[0] == 0 or c.shape[1] == 0:
            raise BatchalInputError(f"{self.name} is empty (shape {c.shape})")
        if not np.issubdtype(c.dtype, np.integer):
            raise BatchalInputError(f"{self.name}: top_classes must hold integer class ids; got dtype {c.dtype}")
        if not np.issubdtype(p.dtype, np.floating):
            raise BatchalInputError(f"{self.name}: top_probs must hold floats; got dtype {p.dtype}")
        self.classes, self.probs = c, p

    @property
    def n(self) -> int:
        return int(self.classes.shape[0])

    @property
    def k(self) -> int:
        return int(self.classes.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.k)

    def take(self, rows) -> "TopK":
        """The given rows, in that order (read in row order: sorted reads suit memory maps)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(order.shape[0])
        c = np.asarray(self.classes[rows[order]])[back]
        p = np.asarray(self.probs[rows[order]])[back]
        out = TopK(c, p, self.n_classes, self.name)
        out._checked = set(self._checked)
        return out

    def check(self, multilabel: bool = False, row_offset: int = 0, chunk_rows: int = CHUNK_ROWS) -> "TopK":
        """Validate every row (streamed over chunks); see :func:`check_topk_block`. Cached per mode."""
        key = (bool(multilabel), self.n_classes)
        if key in self._checked:
            return self
        if not multilabel and self.k < 2:
            raise BatchalInputError(f"{self.name}: multi-class margin needs k >= 2 entries per row; got k = {self.k}")
        for a, b in iter_chunks(self.n, chunk_rows):
            check_topk_block(np.asarray(self.classes[a:b]), np.asarray(self.probs[a:b]), self.name,
                             a + row_offset, multilabel, self.n_classes)
        self._checked.add(key)
        return self

    def uncertainty(self, kind: str = "margin", *, multilabel: bool = False, aggregate: str = "min",
                    row_offset: int = 0, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
        """Per-row uncertainty, larger = more uncertain, exactly the dense :func:`batchal.scores.uncertainty`.

        Defined: ``"margin"`` (multi-class ``k >= 2``; multi-label with ``aggregate="min"``)
        and ``"least-confidence"`` (multi-class). Entropy and the mean aggregate need every
        class and are refused.
        """
        check_topk_score(kind, multilabel, aggregate, self.name)
        self.check(multilabel, row_offset, chunk_rows)
        out = np.empty(self.n, dtype=np.float32)
        for a, b in iter_chunks(self.n, chunk_rows):
            # float64 arithmetic on the stored float32 values, as the dense scorer does: same bits
            p = np.asarray(self.probs[a:b], dtype=np.float64)
            if multilabel:
                out[a:b] = -np.abs(2.0 * p - 1.0).min(axis=1)
            elif kind == "margin":
                out[a:b] = -np.abs(p[:, 0] - p[:, 1])
            else:
                out[a:b] = 1.0 - p[:, 0]
        return out

    def missing_bounds(self, multilabel: bool) -> np.ndarray:
        """Per row, what a class missing from its top-k may be: see :func:`near_duplicate_gap`.

        Multi-class: the upper bound ``b = min(p_k, max(0, 1 - sum(top_probs)) + 0.001)`` of its
        probability (the slack is the tolerance on a row's sum). Multi-label: the distance ``h = |p_k - 0.5|`` from 0.5 it is at least
        at (``p_k`` the entry farthest from 0.5). float32 (n,).
        """
        out = np.empty(self.n, dtype=np.float32)
        for a, b in iter_chunks(self.n):  # by chunks: float64 temporaries of k_m x k rows would double the peak
            p = np.asarray(self.probs[a:b], dtype=np.float64)
            if multilabel:
                out[a:b] = np.abs(p - 0.5).max(axis=1)
            else:
                # rows may sum to 1 within PROBA_ATOL (as dense rows): the residual is a bound only with that slack
                resid = np.maximum(0.0, 1.0 - p.sum(axis=1)) + PROBA_ATOL
                out[a:b] = np.minimum(p.min(axis=1), resid)
        return out

    def argmax_classes(self) -> np.ndarray:
        """The most probable class of each row (multi-class: the first entry)."""
        return np.asarray(self.classes[:, 0], dtype=np.int64)


def check_topk_score(kind: str, multilabel: bool, aggregate: str, name: str = "top-k predictions") -> None:
    """Refuse a score top-k predictions cannot give exactly (before any row is read)."""
    if multilabel:
        if kind != "margin":
            raise BatchalInputError(f"only the margin score is defined for multi-label input, not {kind!r}")
        if aggregate != "min":
            raise BatchalInputError(
                f"{name}: the multi-label {aggregate!r} aggregate averages over every class, which top-k "
                "predictions do not hold; use aggregate 'min' (exact from top-k) or dense probabilities")
    elif kind not in ("margin", "least-confidence"):
        if kind == "entropy":
            raise BatchalInputError(
                f"{name}: entropy needs every class's probability, which top-k predictions do not hold; "
                "use margin or least-confidence (exact from top-k) or dense probabilities")
        raise BatchalInputError(f"unknown score {kind!r}; choose one of ['entropy', 'least-confidence', 'margin']")


def check_topk_block(classes: np.ndarray, probs: np.ndarray, name: str, offset: int = 0, multilabel: bool = False,
                     n_classes: int | None = None) -> None:
    """Refuse a chunk of top-k rows that breaks the layout, naming ``name`` and the first offending row.

    Checks, in this order: NaN/inf probabilities, probabilities outside [0, 1], class
    ids outside ``[0, n_classes)`` (``>= 0`` without a vocabulary), a class id repeated
    within a row, entries not sorted (descending probability; multi-label: ascending
    distance from 0.5: unsorted input is refused, not sorted here, because whoever wrote
    it may also have cut the wrong k), and multi-class rows whose entries sum above 1.
    """
    def first(bad_rows):
        return int(np.flatnonzero(bad_rows)[0]) + offset

    p = np.asarray(probs, dtype=np.float64)
    fin = np.isfinite(p)
    if not fin.all():
        r = np.flatnonzero(~fin.all(axis=1))[0]
        kind = "NaN" if np.isnan(p[r]).any() else "infinite values"
        raise BatchalInputError(f"{name}: top_probs contains {kind} (first at row {r + offset})")
    out = (p < -PROBA_ATOL) | (p > 1 + PROBA_ATOL)
    if out.any():
        raise BatchalInputError(f"{name}: top_probs has values outside [0, 1] (first at row {first(out.any(axis=1))}); "
                                "top-k predictions hold probabilities, not logits")
    c = np.asarray(classes)
    hi = n_classes if n_classes is not None else np.iinfo(np.int64).max
    bad = (c < 0) | (c >= hi)
    if bad.any():
        r = first(bad.any(axis=1))
        v = int(c[r - offset][bad[r - offset]][0])
        voc = f"the vocabulary of {n_classes:,} classes (ids 0..{n_classes - 1})" if n_classes is not None else "ids >= 0"
        raise BatchalInputError(f"{name}: top_classes has class id {v} outside {voc} (first at row {r})")
    if c.shape[1] > 1:
        s = np.sort(c, axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if dup.any():
            raise BatchalInputError(f"{name}: top_classes repeats a class id within a row (first at row {first(dup)}); "
                                    "each row lists k distinct classes")
        key = np.abs(p - 0.5) if multilabel else -p
        unsorted = (key[:, 1:] < key[:, :-1]).any(axis=1)
        if unsorted.any():
            order = "nearest 0.5 first" if multilabel else "most probable first"
            raise BatchalInputError(f"{name}: top-k entries are not sorted {order} (first at row {first(unsorted)}); "
                                    "write them sorted (batchal.topk_predictions does)")
    if not multilabel:
        over = p.sum(axis=1) > 1 + PROBA_ATOL
        if over.any():
            r = first(over)
            raise BatchalInputError(f"{name}: top_probs of row {r} sum to {p[r - offset].sum():.4f} > 1; multi-class "
                                    "probabilities sum to at most 1 over any k classes (use --multilabel for "
                                    "independent per-class probabilities)")


def topk_predictions(batch, k: int, *, multilabel: bool = False, logits: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Turn one batch of a model's output into the top-k layout, for writing shard by shard.

    Parameters
    ----------
    batch : array (m, C)
        Probabilities (or logits with ``logits=True``: softmax, or sigmoid when multi-label).
    k : int
        Entries kept per row (``1 <= k <= C``; multi-class margin needs ``k >= 2``).
    multilabel : bool
        Keep the ``k`` classes nearest 0.5 (the smallest ``|2p - 1|``), nearest first;
        otherwise the ``k`` most probable, most probable first.
    logits : bool

    Returns
    -------
    (classes int32 (m, k), probs float32 (m, k)), sorted as the layout requires.

    Notes
    -----
    ``argpartition`` finds the ``k`` entries in O(C) per row; only those ``k`` are
    sorted (ties: smaller class id first). The probabilities are rounded to float32
    before choosing, so the kept entries are exactly the ones a dense float32 matrix
    would rank first.
    """
    from .scores import _softmax_block

    x = np.asarray(batch)
    if x.ndim != 2:
        raise BatchalInputError(f"topk_predictions: batch must be 2-d (m, C); got shape {x.shape}")
    C = x.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= C:
        raise BatchalInputError(f"topk_predictions: k must be an integer in [1, {C}]; got {k!r}")
    if logits:
        z = np.asarray(x, dtype=np.float64)
        x = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500))) if multilabel else _softmax_block(z)
    p = np.asarray(x, dtype=np.float32)
    key = np.abs(2.0 * p.astype(np.float64) - 1.0) if multilabel else -p.astype(np.float64)
    part = np.argpartition(key, k - 1, axis=1)[:, :k] if k < C else np.broadcast_to(np.arange(C), p.shape).copy()
    kk = np.take_along_axis(key, part, axis=1)
    order = np.lexsort((part, kk), axis=1)  # by key, ties by class id
    cls = np.take_along_axis(part, order, axis=1).astype(np.int32)
    return cls, np.take_along_axis(p, cls, axis=1)


def topk_table(ids, classes: np.ndarray, probs: np.ndarray, n_classes: int | None = None):
    """A pyarrow Table ``id, top_classes, top_probs`` (fixed-size lists), ``n_classes`` in its metadata.

    Write one per shard with ``pyarrow.parquet.write_table``; a directory of such
    shards is read as one file by ``--probs`` / ``--predictions``.
    """
    import pyarrow as pa

    c = np.ascontiguousarray(classes, dtype=np.int32)
    p = np.ascontiguousarray(probs, dtype=np.float32)
    k = c.shape[1]
    cols = {}
    if ids is not None:
        cols["id"] = pa.array(np.asarray(ids)) if not isinstance(ids, (pa.Array, pa.ChunkedArray)) else ids
    cols["top_classes"] = pa.FixedSizeListArray.from_arrays(pa.array(c.ravel()), k)
    cols["top_probs"] = pa.FixedSizeListArray.from_arrays(pa.array(p.ravel()), k)
    meta = {N_CLASSES_KEY: str(int(n_classes))} if n_classes is not None else None
    return pa.table(cols, metadata=meta)


# ------------------------------------------------------------------ files
def _parquet_files(p: Path) -> list[Path]:
    if p.is_dir():
        return sorted(x for x in p.rglob("*.parquet") if x.is_file())
    return [p]


def is_topk_file(path) -> bool:
    """Whether ``path`` holds the top-k layout: a Parquet file (or shard directory) with ``top_classes``
    and ``top_probs`` columns, or an ``.npz`` with those arrays. Unreadable files answer False
    (the dense reader then names what is wrong)."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".npz" and p.is_file():
            with np.load(p, allow_pickle=False) as z:
                return set(TOPK_COLUMNS) <= set(z.files)
        if p.suffix.lower() == ".parquet" or p.is_dir():
            import pyarrow.parquet as pq

            files = _parquet_files(p)
            return bool(files) and set(TOPK_COLUMNS) <= set(pq.read_schema(files[0]).names)
    except Exception:
        return False
    return False


def _n_classes_meta(schema) -> int | None:
    meta = schema.metadata or {}
    v = meta.get(N_CLASSES_KEY.encode())
    return int(v) if v is not None else None


def read_topk(path, *, name: str = "--probs", multilabel: bool = False, n_classes: int | None = None,
              id_column: str | None = None, check: bool = True):
    """Read a top-k predictions file, validated.

    Parquet (a file or a directory of shards, read one row group at a time into two
    preallocated (n, k) arrays: int32 classes, float32 probabilities) or ``.npz`` (arrays
    ``top_classes`` and ``top_probs``, optionally ``n_classes``). The vocabulary size is
    ``n_classes`` when given, else the file's (Parquet metadata ``n_classes``, or the
    ``.npz`` array).

    Returns
    -------
    TopK, or ``(TopK, ids)`` when ``id_column`` is given (Parquet only; the ids as a pyarrow array).
    """
    p = Path(path)
    label = f"{name} {p}"
    if not p.exists():
        raise BatchalInputError(f"{name}: no such file {p}")
    if p.suffix.lower() == ".npz":
        if id_column is not None:
            raise BatchalInputError(f"{label}: top-k predictions with ids must be Parquet (an id column beside "
                                    "top_classes and top_probs)")
        try:
            with np.load(p, allow_pickle=False) as z:
                c, pr = z["top_classes"], z["top_probs"]
                file_nc = int(z[N_CLASSES_KEY]) if N_CLASSES_KEY in z.files else None
        except Exception as exc:
            raise BatchalInputError(f"{label}: cannot read: {exc}") from None
        tk = TopK(c, pr, n_classes if n_classes is not None else file_nc, label)
        return tk.check(multilabel) if check else tk
    return _read_topk_parquet(p, label, multilabel, n_classes, id_column, check)


def topk_from_table(t, label: str, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, probs)`` of a table's ``top_classes`` and ``top_probs`` list columns, (m, k) each.

    Refuses a non-list column, null rows or values, and k varying between rows (or between
    the two columns), naming ``label`` and the first offending row (``start`` = the table's
    first row in the file).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    m, k, out = t.num_rows, None, []
    for col in TOPK_COLUMNS:
        a = t.column(col).combine_chunks()
        if not (pa.types.is_list(a.type) or pa.types.is_large_list(a.type) or pa.types.is_fixed_size_list(a.type)):
            raise BatchalInputError(f"{label}: column {col!r} must be a list column; got {a.type}")
        if a.null_count:
            r = int(np.flatnonzero(a.is_null().to_numpy(zero_copy_only=False))[0])
            raise BatchalInputError(f"{label}: column {col!r} has a missing (null) row (first at row {start + r})")
        lens = (np.full(m, a.type.list_size) if pa.types.is_fixed_size_list(a.type)
                else pc.list_value_length(a).to_numpy(zero_copy_only=False))
        k = int(lens[0]) if k is None else k
        if k == 0:
            raise BatchalInputError(f"{label}: column {col!r} has empty rows (k = 0)")
        if (lens != k).any():
            r = int(np.flatnonzero(lens != k)[0])
            raise BatchalInputError(f"{label}: k varies between rows: column {col!r} has {int(lens[r])} entries at "
                                    f"row {start + r}, {k} at row {start} (k is fixed per file)")
        flat = a.flatten()
        if flat.null_count:
            r = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]) // k
            raise BatchalInputError(f"{label}: column {col!r} has a null value (first at row {start + r})")
        out.append(flat.to_numpy(zero_copy_only=False).reshape(m, k))
    cb, pb = out
    if not np.issubdtype(cb.dtype, np.integer):
        raise BatchalInputError(f"{label}: top_classes must hold integer class ids; got {cb.dtype}")
    if not np.issubdtype(pb.dtype, np.floating):
        raise BatchalInputError(f"{label}: top_probs must hold floats; got {pb.dtype}")
    return cb, pb


def _read_topk_parquet(p: Path, label: str, multilabel: bool, n_classes, id_column, check: bool):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _parquet_files(p)
    if not files:
        raise BatchalInputError(f"{label}: directory holds no .parquet files")
    try:
        pfs = [pq.ParquetFile(f) for f in files]
    except Exception as exc:
        raise BatchalInputError(f"{label}: cannot read: {exc}") from None
    n = sum(pf.metadata.num_rows for pf in pfs)
    if n == 0:
        raise BatchalInputError(f"{label} holds no rows")
    if n_classes is None:
        n_classes = _n_classes_meta(pfs[0].schema_arrow)
    cols = list(TOPK_COLUMNS) + ([id_column] if id_column else [])
    for f, pf in zip(files, pfs):
        missing = [c for c in cols if c not in pf.schema_arrow.names]
        if missing:
            raise BatchalInputError(f"{label}: {f.name} has no column {missing[0]!r} "
                                    f"(columns: {', '.join(pf.schema_arrow.names)})")
    C = P = None
    ids, start, k = [], 0, None
    for f, pf in zip(files, pfs):
        for g in range(pf.metadata.num_row_groups):
            try:
                t = pf.read_row_group(g, columns=cols)
            except Exception as exc:
                raise BatchalInputError(f"{label}: cannot read {f}: {exc}") from None
            m = t.num_rows
            if m == 0:
                continue
            where = label if len(files) == 1 else f"{label} ({f.name}; rows numbered over all shards)"
            cb, pb = topk_from_table(t, where, start)
            if k is None:
                k = cb.shape[1]
                C = np.empty((n, k), dtype=np.int32)
                P = np.empty((n, k), dtype=np.float32)
            elif cb.shape[1] != k:
                raise BatchalInputError(f"{where}: k varies between rows: {cb.shape[1]} entries at row {start}, "
                                        f"{k} before (k is fixed per file)")
            if check:  # validated as read: the error names the file's row, and bad values never reach int32
                check_topk_block(cb, pb, where, start, multilabel, n_classes)
            elif (cb < 0).any() or (cb > np.iinfo(np.int32).max).any():
                raise BatchalInputError(f"{label}: top_classes has class ids outside int32")
            C[start:start + m] = cb
            P[start:start + m] = pb
            if id_column:
                ids.append(t.column(id_column))
            start += m
    if not multilabel and k < 2:
        raise BatchalInputError(f"{label}: multi-class margin needs k >= 2 entries per row; got k = {k}")
    tk = TopK(C, P, n_classes, label)
    if check:
        tk._checked.add((bool(multilabel), n_classes))
    out = (tk, pa.chunked_array([c for a in ids for c in a.chunks]).combine_chunks()) if id_column else tk
    del ids, t
    # the row groups' buffers went back to Arrow's allocator, which keeps them; hand them to the OS
    # so the selection that follows does not stack on top of them (about 1 GB at 10M x 10)
    pa.default_memory_pool().release_unused()
    return out


def check_scores(scores, name: str = "scores") -> np.ndarray:
    """Precomputed per-row scores (smaller = more uncertain): a finite 1-d float array."""
    s = np.asanyarray(scores)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1 or s.shape[0] == 0:
        raise BatchalInputError(f"{name} must be one number per row (shape (n,)); got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise BatchalInputError(f"{name} must hold numbers; got dtype {s.dtype}")
    for a, b in iter_chunks(s.shape[0]):
        blk = np.asarray(s[a:b], dtype=np.float64)
        ok = np.isfinite(blk)
        if not ok.all():
            r = int(np.flatnonzero(~ok)[0])
            kind = "NaN" if np.isnan(blk[r]) else "infinite values"
            raise BatchalInputError(f"{name} contains {kind} (first at row {a + r})")
    return s
