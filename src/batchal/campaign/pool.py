"""Reading what a campaign takes in, keyed by item id: pools, predictions, labels.

Ids are integers or strings, held as a pyarrow array (int64 or large_string);
mapping a file's ids to campaign rows is one vectorised hash join
(``pyarrow.compute.index_in``), never a Python dict per item.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._validation import BatchalInputError, check_finite_block, check_proba_block, iter_chunks
from ..io import sha256_file

__all__ = [
    "IdIndex", "PoolFiles", "read_pool", "read_predictions", "read_parquet",
    "id_kind", "format_ids",
]

READ_ROWS = 1 << 16


def id_kind(arr: pa.Array) -> str:
    """``"int"`` or ``"str"``; anything else is refused."""
    t = arr.type
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    raise BatchalInputError(f"ids must be integers or strings; got type {t}")


def normalise_ids(arr, name: str) -> pa.Array:
    """int64 or large_string ids, no nulls."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if arr.null_count:
        raise BatchalInputError(f"{name}: {arr.null_count} ids are missing (null)")
    kind = id_kind(arr)
    return arr.cast(pa.int64() if kind == "int" else pa.large_string())


def format_ids(values, limit: int = 5) -> str:
    v = list(values[:limit])
    more = f" and {len(values) - limit:,} more" if len(values) > limit else ""
    return ", ".join(repr(x) for x in v) + more


def first_duplicates(ids: pa.Array) -> list:
    """A few ids that occur more than once (empty when all are unique)."""
    vc = pc.value_counts(ids)
    counts = vc.field("counts").to_numpy()
    if counts.shape[0] == len(ids):
        return []
    dup = np.flatnonzero(counts > 1)[:5]
    return vc.field("values").take(pa.array(dup)).to_pylist()


class IdIndex:
    """Campaign ids (in row order) and the join from any ids to rows."""

    def __init__(self, ids: pa.Array, kind: str):
        self.ids = ids
        self.kind = kind
        self.n = len(ids)

    def cast(self, query, name: str) -> pa.Array:
        """Query ids in the campaign's type; values that cannot be ids of this campaign become null."""
        if isinstance(query, pa.ChunkedArray):
            query = query.combine_chunks()
        if not isinstance(query, pa.Array):
            query = pa.array(query)
        t = query.type
        if self.kind == "int":
            if pa.types.is_integer(t):
                return query.cast(pa.int64())
            if pa.types.is_string(t) or pa.types.is_large_string(t):
                s = pc.utf8_trim_whitespace(query)
                ok = pc.match_substring_regex(s, r"^[+-]?\d{1,18}$")
                s = pc.if_else(ok, s, pa.scalar(None, s.type))
                return s.cast(pa.int64())
            if pa.types.is_floating(t):  # e.g. ids that went through a float column
                vals = query.to_numpy(zero_copy_only=False)
                whole = np.isfinite(vals) & (np.mod(vals, 1) == 0)
                return pa.array(np.where(whole, vals, 0).astype(np.int64), mask=~whole)
            if pa.types.is_null(t):
                return pa.nulls(len(query), pa.int64())
        else:
            if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t):
                return query.cast(pa.large_string())
            if pa.types.is_null(t):
                return pa.nulls(len(query), pa.large_string())
        raise BatchalInputError(f"{name}: ids of type {t} cannot match this campaign's {self.kind} ids")

    def rows(self, query, name: str) -> np.ndarray:
        """Row of each query id; -1 where the id is not in the campaign (or not an id at all)."""
        q = self.cast(query, name)
        idx = pc.index_in(q, value_set=self.ids)
        return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def take(self, rows: np.ndarray) -> list:
        return self.ids.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()


# ------------------------------------------------------------------ pools
@dataclass
class PoolFiles:
    """What ``read_pool`` found: the ids, the embeddings' shape and the manifest of source files."""

    ids: pa.Array
    kind: str
    rows: int
    dim: int
    files: list = field(default_factory=list)  # dicts: path, bytes, rows, sha256
    content_sha256: str = ""
    data_columns: list = field(default_factory=list)


def _parquet_files(p: Path) -> list[Path]:
    if p.is_dir():
        files = sorted(x for x in p.rglob("*.parquet") if x.is_file())
        if not files:
            raise BatchalInputError(f"{p}: directory holds no .parquet files")
        return files
    return [p]


def read_parquet(p: Path, columns=None) -> pa.Table:
    """A Parquet file or a directory of shards, file by file (``pq.read_table`` would import
    pyarrow.dataset and pandas: half a second for every command)."""
    import pyarrow.parquet as pq

    tables = [pq.ParquetFile(f).read(columns=columns) for f in _parquet_files(p)]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _list_values(col: pa.Array, name: str, ids: pa.Array, dim: int | None) -> np.ndarray:
    """(rows, d) float array from a fixed-size-list or list column; refuses nulls and ragged rows."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise BatchalInputError(f"{name} must be a list or fixed-size list of floats; got type {t}")
    if col.null_count:
        bad = pc.indices_nonzero(pc.is_null(col))[0].as_py()
        raise BatchalInputError(f"{name} is missing (null) for id {ids[bad].as_py()!r}")
    n = len(col)
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
    else:
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        d = int(lens[0]) if n else (dim or 0)
        if n and (lens != d).any():
            bad = int(np.flatnonzero(lens != d)[0])
            raise BatchalInputError(f"{name} is ragged: id {ids[bad].as_py()!r} has {int(lens[bad])} values, "
                                    f"id {ids[0].as_py()!r} has {d}")
    if dim is not None and n and d != dim:
        raise BatchalInputError(f"{name} has {d} values per row here but {dim} elsewhere (id {ids[0].as_py()!r})")
    flat = col.flatten()
    if flat.null_count:
        raise BatchalInputError(f"{name} holds null values inside its lists")
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
        raise BatchalInputError(f"{name} must hold numbers; got {flat.type}")
    return flat.to_numpy(zero_copy_only=False).reshape(n, d)


def _check_finite_rows(block: np.ndarray, name: str, ids, offset: int = 0) -> None:
    if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
        bad = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
        kind = "NaN" if np.isnan(block[bad]).any() else "infinite values"
        the_id = ids[bad + offset] if not isinstance(ids, pa.Array) else ids[bad + offset].as_py()
        raise BatchalInputError(f"{name} holds {kind} (id {the_id!r})")


def read_pool(path, *, id_column: str = "id", embedding_column: str = "embedding", ids_path=None,
              emb_out=None, dim: int | None = None) -> PoolFiles:
    """Read a pool: ids plus embeddings, written as float32 rows into ``emb_out(n, d)``.

    Parameters
    ----------
    path : Parquet file, directory of Parquet shards, or ``.npy`` embeddings
    id_column, embedding_column : column names in the Parquet files
    ids_path : ``.npy`` of ids for a ``.npy`` pool (default: row numbers)
    emb_out : callable ``(n, d) -> writable (n, d) float32 array``, or None to only validate
    dim : required embedding width (``add`` to an existing campaign)
    """
    p = Path(path)
    if not p.exists():
        raise BatchalInputError(f"--pool: no such file or directory {p}")
    if p.suffix.lower() == ".npy":
        return _read_npy_pool(p, ids_path, emb_out, dim)
    if ids_path is not None:
        raise BatchalInputError("--ids is only for a .npy pool; a Parquet pool carries its id column")
    if p.is_file() and p.suffix.lower() != ".parquet":
        raise BatchalInputError(f"--pool must be a .parquet file, a directory of them or a .npy; got {p.name}")
    import pyarrow.parquet as pq

    files = _parquet_files(p)
    metas = []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:
            raise BatchalInputError(f"--pool: cannot read {f}: {exc}") from exc
        names = pf.schema_arrow.names
        for col in (id_column, embedding_column):
            if col not in names:
                raise BatchalInputError(f"{f} has no column {col!r} (columns: {', '.join(names)}); "
                                        f"name them with --id-column / --embedding-column")
        metas.append((f, pf))
    n = sum(pf.metadata.num_rows for _, pf in metas)
    if n == 0:
        raise BatchalInputError(f"--pool {p} holds no rows")
    # the width comes from the first row; every other row must match it
    first = None
    for _, pf in metas:
        for b in pf.iter_batches(batch_size=1, columns=[id_column, embedding_column]):
            if b.num_rows:
                first = b
                break
        if first is not None:
            break
    d0 = _list_values(first.column(1), f"column {embedding_column!r}", normalise_ids(first.column(0), "ids"), dim).shape[1]
    if d0 == 0:
        raise BatchalInputError(f"column {embedding_column!r} holds empty lists")
    out = emb_out(n, d0) if emb_out is not None else None
    id_chunks, manifest, kind, start = [], [], None, 0
    for f, pf in metas:
        rows_f = 0
        for b in pf.iter_batches(batch_size=READ_ROWS, columns=[id_column, embedding_column]):
            ids_b = normalise_ids(b.column(0), f"{f}: column {id_column!r}")
            k = id_kind(ids_b)
            if kind is None:
                kind = k
            elif k != kind:
                raise BatchalInputError(f"{f}: ids are {k}s here but {kind}s in an earlier file")
            E = _list_values(b.column(1), f"{f}: column {embedding_column!r}", ids_b, d0)
            _check_finite_rows(E, f"{f}: column {embedding_column!r}", ids_b)
            if out is not None:
                out[start:start + b.num_rows] = E
            id_chunks.append(ids_b)
            start += b.num_rows
            rows_f += b.num_rows
        manifest.append(dict(path=str(f.resolve()), bytes=f.stat().st_size, rows=rows_f, sha256=sha256_file(f)))
    ids = pa.chunked_array(id_chunks).combine_chunks()
    names = [c for c in metas[0][1].schema_arrow.names if c not in (id_column, embedding_column)]
    return _finish(ids, kind, n, d0, manifest, names)


def _read_npy_pool(p: Path, ids_path, emb_out, dim) -> PoolFiles:
    from ..io import load_array

    E = load_array(p, name="--pool")
    if E.ndim != 2 or E.shape[0] == 0 or E.shape[1] == 0:
        raise BatchalInputError(f"--pool {p.name}: embeddings must be a non-empty (n, d) array; got shape {E.shape}")
    if not (np.issubdtype(E.dtype, np.floating) or np.issubdtype(E.dtype, np.integer)):
        raise BatchalInputError(f"--pool {p.name}: embeddings must be numbers; got dtype {E.dtype}")
    n, d = E.shape
    if dim is not None and d != dim:
        raise BatchalInputError(f"--pool {p.name} has {d} embedding dimensions; the campaign has {dim}")
    manifest = [dict(path=str(p.resolve()), bytes=p.stat().st_size, rows=n, sha256=sha256_file(p))]
    if ids_path is not None:
        ip = Path(ids_path)
        raw = load_array(ip, name="--ids")
        if raw.ndim != 1 or raw.shape[0] != n:
            raise BatchalInputError(f"--ids {ip.name} must be 1-d with one id per pool row ({n}); got shape {raw.shape}")
        if raw.dtype.kind in "iu":
            ids = pa.array(np.asarray(raw, dtype=np.int64))
        elif raw.dtype.kind == "U":
            ids = pa.array(np.asarray(raw).tolist(), type=pa.large_string())
        else:
            raise BatchalInputError(f"--ids {ip.name} must hold integers or strings; got dtype {raw.dtype}")
        manifest.append(dict(path=str(ip.resolve()), bytes=ip.stat().st_size, rows=n, sha256=sha256_file(ip),
                             role="ids"))
        kind = "int" if raw.dtype.kind in "iu" else "str"
    else:
        ids, kind = None, "int"
    out = emb_out(n, d) if emb_out is not None else None
    for a, b in iter_chunks(n):
        block = np.asarray(E[a:b])
        _check_finite_rows(block, f"--pool {p.name}", ids if ids is not None else np.arange(n), a)
        if out is not None:
            out[a:b] = block
    if ids is None:
        ids = pa.array(np.arange(n, dtype=np.int64))
    return _finish(ids, kind, n, d, manifest, [])


def _finish(ids, kind, n, d, manifest, data_columns) -> PoolFiles:
    h = hashlib.sha256()
    for m in manifest:
        h.update(m["sha256"].encode())
    return PoolFiles(ids=ids, kind=kind, rows=n, dim=d, files=manifest, content_sha256=h.hexdigest(),
                     data_columns=data_columns)


# ------------------------------------------------------------------ predictions
@dataclass
class Predictions:
    """Predictions aligned with the campaign's rows.

    ``array`` is (n, C); ``have`` marks rows the file covered (None = all).
    """

    kind: str  # "probs" or "logits"
    array: np.ndarray
    have: np.ndarray | None
    sha256: str
    source: str


def read_predictions(path, index: IdIndex, *, id_column: str = "id", probs_column: str | None = None,
                     logits_column: str | None = None, multilabel: bool = False,
                     n_classes: int | None = None) -> Predictions:
    """Read predictions keyed by id (Parquet) or in campaign row order (``.npy``).

    Values are validated in file order, so an error names the file's row or id.
    Unknown ids and ids given twice are errors; which rows must be covered is the
    caller's rule (``have``). Top-k predictions (Parquet with ``top_classes`` and
    ``top_probs`` list columns beside the id column, or an ``.npz`` of those two
    arrays in the campaign's order) give ``kind="topk"`` and a
    :class:`batchal.topk.TopK` as ``array``; their class ids are checked against
    ``n_classes`` (the campaign's classes) when given.
    """
    from ..topk import is_topk_file

    p = Path(path)
    if not p.exists():
        raise BatchalInputError(f"--predictions: no such file {p}")
    n = index.n
    if not (probs_column or logits_column) and is_topk_file(p):
        return _read_topk_predictions(p, index, id_column, multilabel, n_classes)
    if p.suffix.lower() == ".npy":
        if probs_column or logits_column:
            kind = "logits" if logits_column else "probs"
        else:
            kind = "probs"
        from ..io import load_array

        A = load_array(p, name="--predictions")
        if A.ndim != 2 or A.shape[0] != n:
            raise BatchalInputError(f"--predictions {p.name} has shape {A.shape}; a .npy must have one row per "
                                    f"campaign item, in the campaign's order ({n} rows)")
        _validate(A, kind, f"--predictions {p.name}", multilabel)
        return Predictions(kind, A, None, _hash_array(A, kind), str(p.resolve()))
    if not (p.suffix.lower() == ".parquet" or p.is_dir()):
        raise BatchalInputError(f"--predictions must be .parquet (or a directory of them) or .npy; got {p.name}")
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(_parquet_files(p)[0])
    except BatchalInputError:
        raise
    except Exception as exc:
        raise BatchalInputError(f"--predictions: cannot read {p}: {exc}") from exc
    names = schema.names
    if id_column not in names:
        raise BatchalInputError(f"--predictions {p.name} has no id column {id_column!r} (columns: {', '.join(names)}); "
                                "name it with --id-column")
    if probs_column and logits_column:
        raise BatchalInputError("give --probs-column or --logits-column, not both")
    if probs_column or logits_column:
        col, kind = (probs_column, "probs") if probs_column else (logits_column, "logits")
        if col not in names:
            raise BatchalInputError(f"--predictions {p.name} has no column {col!r} (columns: {', '.join(names)})")
    else:
        found = [c for c in ("probs", "logits") if c in names]
        if not found:
            raise BatchalInputError(f"--predictions {p.name} has neither a 'probs' nor a 'logits' column "
                                    f"(columns: {', '.join(names)}); name it with --probs-column or --logits-column")
        if len(found) == 2:
            raise BatchalInputError(f"--predictions {p.name} has both 'probs' and 'logits'; choose one with "
                                    "--probs-column or --logits-column")
        col, kind = found[0], found[0]
    try:
        table = read_parquet(p, columns=[id_column, col])
    except Exception as exc:
        raise BatchalInputError(f"--predictions: cannot read {p}: {exc}") from exc
    name = f"--predictions {p.name}: column {col!r}"
    ids = normalise_ids(table.column(id_column), f"--predictions {p.name}: column {id_column!r}")
    A = _list_values(table.column(col), name, ids, None)
    if A.shape[0] == 0:
        raise BatchalInputError(f"--predictions {p.name} holds no rows")
    _check_finite_rows(A, name, ids)
    _validate(A, kind, name, multilabel)
    rows, counts = _join_rows(index, ids, p)
    if rows.shape[0] == n and (rows == np.arange(n)).all():
        full, have = np.ascontiguousarray(A, dtype=np.float32), None
    else:
        # rows without predictions get a neutral filler; the caller refuses them if they are selectable
        filler = (1.0 / A.shape[1]) if (kind == "probs" and not multilabel) else (0.5 if kind == "probs" else 0.0)
        full = np.full((n, A.shape[1]), filler, dtype=np.float32)
        full[rows] = A
        have = counts.astype(bool)
    h = hashlib.sha256(_hash_array(full, kind).encode())
    if have is not None:
        h.update(np.packbits(have).tobytes())
    return Predictions(kind, full, have, h.hexdigest(), str(p.resolve()))


def _join_rows(index: IdIndex, ids, p: Path, *, release: bool = False):
    """The campaign rows of a predictions file's ids, refusing ids not in the campaign and repeated ids.

    Returns ``(rows, counts)``: each id's row and how many ids name each row.
    ``release`` hands Arrow's freed memory (the join's hash table) back to the OS first.
    """
    rows = index.rows(ids, f"--predictions {p.name}")
    if release:
        pa.default_memory_pool().release_unused()
    unknown = np.flatnonzero(rows < 0)
    if unknown.size:
        raise BatchalInputError(f"--predictions {p.name} has {unknown.size:,} ids that are not in the campaign: "
                                f"{format_ids(ids.take(pa.array(unknown[:5])).to_pylist())}"
                                + (f" and {unknown.size - 5:,} more" if unknown.size > 5 else ""))
    counts = np.bincount(rows, minlength=index.n)
    if (counts > 1).any():
        dup = np.flatnonzero(counts > 1)
        raise BatchalInputError(f"--predictions {p.name} lists {dup.size:,} ids more than once, e.g. "
                                f"{format_ids(index.take(dup[:5]))}")
    return rows, counts


def _read_topk_predictions(p: Path, index: IdIndex, id_column: str, multilabel: bool, n_classes) -> Predictions:
    """Top-k predictions aligned with the campaign's rows (the dense path's rules, two (n, k) arrays)."""
    from ..topk import TopK, read_topk

    n = index.n
    if p.suffix.lower() == ".npz":
        tk = read_topk(p, name="--predictions", multilabel=multilabel, n_classes=n_classes)
        if tk.n != n:
            raise BatchalInputError(f"--predictions {p.name} has {tk.n:,} rows; an .npz of top-k predictions has one "
                                    f"row per campaign item, in the campaign's order ({n:,} rows)")
        return Predictions("topk", tk, None, _hash_topk(tk), str(p.resolve()))
    import pyarrow.parquet as pq

    names = pq.read_schema(_parquet_files(p)[0]).names
    if id_column not in names:
        raise BatchalInputError(f"--predictions {p.name} has no id column {id_column!r} (columns: {', '.join(names)}); "
                                "name it with --id-column")
    tk, raw_ids = read_topk(p, name="--predictions", multilabel=multilabel, n_classes=n_classes, id_column=id_column)
    ids = normalise_ids(raw_ids, f"--predictions {p.name}: column {id_column!r}")
    rows, counts = _join_rows(index, ids, p, release=True)
    del raw_ids, ids
    if rows.shape[0] == n and (rows == np.arange(n)).all():
        return Predictions("topk", tk, None, _hash_topk(tk), str(p.resolve()))
    # rows without predictions get a neutral filler (classes 0..k-1, equal probabilities, never read:
    # the caller refuses them when they are selectable and blanks their recorded margin)
    k = tk.k
    C = np.broadcast_to(np.arange(k, dtype=np.int32), (n, k)).copy()
    P = np.full((n, k), 1.0 / k if not multilabel else 0.5, dtype=np.float32)
    C[rows], P[rows] = tk.classes, tk.probs
    del tk
    have = counts.astype(bool)
    full = TopK(C, P, n_classes, f"--predictions {p}")
    full._checked.add((bool(multilabel), n_classes))  # every row read was validated; fillers are never scored
    h = hashlib.sha256(_hash_topk(full).encode())
    h.update(np.packbits(have).tobytes())
    return Predictions("topk", full, have, h.hexdigest(), str(p.resolve()))


def _hash_topk(tk) -> str:
    h = hashlib.sha256(f"topk:{tk.shape}".encode())
    for A in (tk.classes, tk.probs):
        for a, b in iter_chunks(A.shape[0], 1 << 18):
            h.update(np.ascontiguousarray(A[a:b]).tobytes())
    return h.hexdigest()


def _validate(A, kind: str, name: str, multilabel: bool) -> None:
    """Finite values; probabilities in [0, 1] (rows summing to 1 unless multi-label), by file row."""
    if not (np.issubdtype(A.dtype, np.floating) or np.issubdtype(A.dtype, np.integer)):
        raise BatchalInputError(f"{name} must hold numbers; got dtype {A.dtype}")
    if not multilabel and A.shape[1] < 2:
        raise BatchalInputError(f"{name} must have at least 2 classes per row; got {A.shape[1]}")
    for a, b in iter_chunks(A.shape[0]):
        block = np.asarray(A[a:b], dtype=np.float64)
        if kind == "probs":
            check_proba_block(block, name, a, multilabel)
        else:
            check_finite_block(block, name, a)


def _hash_array(A, kind: str) -> str:
    h = hashlib.sha256(f"{kind}:{A.shape}:{A.dtype}".encode())
    for a, b in iter_chunks(A.shape[0], 1 << 18):
        h.update(np.ascontiguousarray(A[a:b]).tobytes())
    return h.hexdigest()
