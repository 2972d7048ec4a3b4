"""Row blocks that Ray workers read themselves: Parquet row groups, ``.npy`` row ranges, object-store chunks.

Rows are numbered as the local engine numbers them: Parquet files in sorted
path order (a directory: every ``*.parquet`` below it), rows in file order.
The driver reads only the Parquet footers (row counts); each worker reads its
own block, so no array of the whole pool passes through the driver.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._validation import BatchalInputError

#: Rows per object-store chunk when an in-memory array is handed to the ray engine.
CHUNK_ROWS = 1 << 16
#: Rows per block of a ``.npy`` read by the workers (a task's unit; shards are whole blocks).
NPY_BLOCK_ROWS = 1 << 18


@dataclass(frozen=True)
class Block:
    """One block of rows ``[start, start + rows)``.

    ``kind`` is ``"parquet"`` (``where`` = file path, ``part`` = row group),
    ``"npy"`` (``where`` = path of a ``.npy`` every worker can read, ``part`` = first row in it)
    or ``"ref"`` (``where`` = an ObjectRef of an (rows, k) array).
    """

    kind: str
    where: object
    part: int
    start: int
    rows: int


def parquet_files(path) -> list[Path]:
    """The Parquet files of a path: the file itself, or every ``*.parquet`` below a directory, sorted."""
    if isinstance(path, (list, tuple)):
        return [f for p in path for f in parquet_files(p)]
    p = Path(path)
    if not p.exists():
        raise BatchalInputError(f"no such file or directory: {p}")
    if p.is_dir():
        files = sorted(x for x in p.rglob("*.parquet") if x.is_file())
        if not files:
            raise BatchalInputError(f"{p}: directory holds no .parquet files")
        return files
    if p.suffix.lower() != ".parquet":
        raise BatchalInputError(f"{p.name}: expected a .parquet file or a directory of them")
    return [p]


def list_column_values(col, name: str) -> np.ndarray:
    """(rows, k) array from a list / fixed-size-list column; refuses nulls and ragged rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise BatchalInputError(f"{name}: {col.null_count} rows are missing (null)")
    n = len(col)
    if pa.types.is_fixed_size_list(col.type):
        k = col.type.list_size
    else:
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        k = int(lens[0]) if n else 0
        if n and (lens != k).any():
            bad = int(np.flatnonzero(lens != k)[0])
            raise BatchalInputError(f"{name}: rows have unequal lengths (row {bad} has {int(lens[bad])}, row 0 has {k})")
    flat = col.flatten()
    if flat.null_count:
        raise BatchalInputError(f"{name}: null values inside the lists")
    return flat.to_numpy(zero_copy_only=False).reshape(n, k)


def table_values(table, name: str) -> np.ndarray:
    """A table's selected columns as a 2-d array: one list column, or several numeric columns."""
    import pyarrow as pa

    if table.num_columns == 1:
        t = table.schema.field(0).type
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            return list_column_values(table.column(0), name)
    return np.column_stack([table.column(i).to_numpy(zero_copy_only=False) for i in range(table.num_columns)])


def value_columns(schema, want: str | None, kind: str, id_column: str | None, path) -> list[str]:
    """Which columns hold the values: ``want``; else a column named ``kind``; else the only column;
    else every numeric column but the id column."""
    import pyarrow as pa

    names = schema.names
    if want is not None:
        if want not in names:
            raise BatchalInputError(f"{path} has no column {want!r} (columns: {', '.join(names)})")
        return [want]
    if kind in names:
        return [kind]
    if len(names) == 1:
        return names
    cols = [f.name for f in schema if f.name != id_column and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    if not cols:
        raise BatchalInputError(f"{path}: no {kind!r} column and no numeric columns (columns: {', '.join(names)})")
    return cols


class RowSource:
    """The blocks of an (n, k) input, and how a worker reads one.

    Parameters
    ----------
    blocks : list of Block
    n : int
    columns : list of str, optional
        Parquet columns holding the values.
    name : str
        Named in error messages.
    """

    def __init__(self, blocks: list[Block], n: int, columns=None, name: str = "input", topk: bool = False,
                 n_classes: int | None = None):
        self.blocks = blocks
        self.n = n
        self.columns = columns
        self.name = name
        #: blocks are top-k predictions (:class:`batchal.topk.TopK`), read from two list columns
        self.topk = topk
        self.n_classes = n_classes

    @classmethod
    def open(cls, x, *, name: str, kind: str | None = None, column: str | None = None,
             id_column: str | None = "id", ray=None, n_classes: int | None = None) -> "RowSource":
        """From a Parquet path (file, directory or list), ``.npy`` paths (one, or a list whose rows
        follow each other, as a campaign's shards), an in-memory array, or top-k predictions
        (Parquet with ``top_classes`` and ``top_probs`` columns, or a :class:`batchal.topk.TopK`)."""
        from ...topk import TopK

        if isinstance(x, TopK):
            return cls._topk_array(x, name, ray, n_classes)
        if isinstance(x, (str, Path)) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], (str, Path))):
            paths = [Path(x)] if isinstance(x, (str, Path)) else [Path(f) for f in x]
            npy = [f.suffix.lower() == ".npy" for f in paths]
            if all(npy):
                return cls._npy(paths, name)
            if any(npy):
                raise BatchalInputError(f"{name}: give .npy files or Parquet files, not both")
            src = cls._parquet(x, name, kind or name, column, id_column)
            if src.topk and n_classes is not None:
                src.n_classes = n_classes
            return src
        return cls._array(np.asanyarray(x), name, ray)

    @classmethod
    def _parquet(cls, path, name, kind, column, id_column):
        import pyarrow.parquet as pq

        from ...topk import TOPK_COLUMNS, _n_classes_meta

        blocks, start, cols, n_classes = [], 0, None, None
        for f in parquet_files(path):
            try:
                pf = pq.ParquetFile(f)
            except Exception as exc:
                raise BatchalInputError(f"{name}: cannot read {f}: {exc}") from None
            if column is None and kind == "probs" and set(TOPK_COLUMNS) <= set(pf.schema_arrow.names):
                c = list(TOPK_COLUMNS)  # the top-k layout, recognised by its column names
                n_classes = n_classes if n_classes is not None else _n_classes_meta(pf.schema_arrow)
            else:
                c = value_columns(pf.schema_arrow, column, kind, id_column, f)
            if cols is None:
                cols = c
            elif c != cols:
                raise BatchalInputError(f"{name}: {f} has value columns {c}, earlier files {cols}")
            for g in range(pf.metadata.num_row_groups):
                m = pf.metadata.row_group(g).num_rows
                if m:
                    blocks.append(Block("parquet", str(f), g, start, m))
                    start += m
        if start == 0:
            raise BatchalInputError(f"{name}: {path} holds no rows")
        return cls(blocks, start, cols, name, topk=cols == list(TOPK_COLUMNS), n_classes=n_classes)

    @classmethod
    def _topk_array(cls, tk, name: str, ray, n_classes):
        """Top-k predictions held by the driver: object-store chunks of (classes, probs) pairs."""
        blocks = []
        for a in range(0, tk.n, CHUNK_ROWS):
            b = min(tk.n, a + CHUNK_ROWS)
            part = (np.ascontiguousarray(tk.classes[a:b]), np.ascontiguousarray(tk.probs[a:b]))
            blocks.append(Block("ref", ray.put(part), 0, a, b - a))
        return cls(blocks, tk.n, None, name, topk=True, n_classes=n_classes if n_classes is not None else tk.n_classes)

    @classmethod
    def _npy(cls, paths: list, name: str):
        blocks, start, tail = [], 0, None
        for p in paths:
            if not p.exists():
                raise BatchalInputError(f"{name}: no such file {p}")
            try:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
            except Exception as exc:
                raise BatchalInputError(f"{name}: cannot read {p}: {exc}") from None
            if tail is not None and arr.shape[1:] != tail:
                raise BatchalInputError(f"{name}: {p} has rows of shape {arr.shape[1:]}, earlier files {tail}")
            tail = arr.shape[1:]
            n = arr.shape[0]
            where = str(p.resolve())
            # a block never spans two files: ``part`` is its first row in its own file
            blocks += [Block("npy", where, a, start + a, min(n, a + NPY_BLOCK_ROWS) - a)
                       for a in range(0, n, NPY_BLOCK_ROWS)]
            start += n
        return cls(blocks, start, None, name)

    @classmethod
    def _array(cls, arr: np.ndarray, name: str, ray):
        if arr.ndim < 1 or arr.shape[0] == 0:
            raise BatchalInputError(f"{name} is empty (shape {arr.shape})")
        n = arr.shape[0]
        blocks = []
        for a in range(0, n, CHUNK_ROWS):
            b = min(n, a + CHUNK_ROWS)
            blocks.append(Block("ref", ray.put(np.ascontiguousarray(arr[a:b])), 0, a, b - a))
        return cls(blocks, n, None, name)

    def read(self, block: Block):
        """The rows of one block (in a worker): an array, or a :class:`batchal.topk.TopK` for top-k input."""
        if block.kind == "ref":
            import ray

            got = ray.get(block.where)
            if self.topk:
                from ...topk import TopK

                return TopK(got[0], got[1], self.n_classes, self.name)
            return got
        if block.kind == "npy":
            arr = np.load(block.where, mmap_mode="r", allow_pickle=False)
            return np.asarray(arr[block.part:block.part + block.rows])
        import pyarrow.parquet as pq

        t = pq.ParquetFile(block.where).read_row_group(block.part, columns=self.columns)
        if self.topk:
            from ...topk import TopK, topk_from_table

            where = f"{self.name} {block.where}"
            c, p = topk_from_table(t, where, block.start)
            return TopK(c, p, self.n_classes, where)
        return table_values(t, f"{self.name} ({block.where})")
