"""Reading pool arrays (NumPy memmaps, Parquet) and writing outputs atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ._validation import BatchalInputError

__all__ = ["load_array", "save_indices", "atomic_write"]


def load_array(path, *, name: str = "array", columns: list[str] | None = None) -> np.ndarray:
    """Load an array for the pool.

    ``.npy`` files are memory-mapped (never read whole); ``.npz`` must hold one
    array; ``.parquet`` files (or a directory of Parquet shards) are read with
    pyarrow: a single list/fixed-size-list column becomes an (n, k) array, a
    single numeric column a 1-d array, several numeric columns an (n, k) array.
    ``.csv`` / ``.txt`` are read with ``np.loadtxt`` (small inputs only).
    """
    p = Path(path)
    if not p.exists():
        raise BatchalInputError(f"{name}: no such file {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(p, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if len(z.files) != 1:
                    raise BatchalInputError(f"{name}: {p} holds {len(z.files)} arrays ({z.files}); expected one")
                return z[z.files[0]]
        if suffix == ".parquet" or p.is_dir():
            return _load_parquet(p, name, columns)
        if suffix in (".csv", ".txt"):
            arr = np.loadtxt(p, delimiter="," if suffix == ".csv" else None, ndmin=1)
            return arr
    except BatchalInputError:
        raise
    except Exception as exc:  # a corrupt file must name itself, not surface as a numpy traceback
        raise BatchalInputError(f"{name}: cannot read {p}: {exc}") from exc
    raise BatchalInputError(f"{name}: unsupported file type {suffix!r} ({p}); use .npy, .npz, .parquet or .csv")


def _load_parquet(p: Path, name: str, columns) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(p, columns=columns)
    if table.num_columns == 0:
        raise BatchalInputError(f"{name}: {p} has no columns")
    if table.num_columns == 1:
        col = table.column(0).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            flat = col.flatten().to_numpy(zero_copy_only=False)
            n = len(col)
            if n == 0 or flat.shape[0] % n:
                raise BatchalInputError(f"{name}: list column in {p} has rows of unequal length")
            return flat.reshape(n, flat.shape[0] // n)
        return col.to_numpy(zero_copy_only=False)
    return np.column_stack([table.column(i).to_numpy(zero_copy_only=False) for i in range(table.num_columns)])


def atomic_write(path, write_fn) -> None:
    """Write a file through ``write_fn(tmp_path)`` then rename it into place.

    A failure or a crash never leaves a half-written file at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_indices(path, idx: np.ndarray, ids: np.ndarray | None = None) -> None:
    """Save selected row indices (int64, selection order) to ``.npy`` or ``.csv``.

    A ``.csv`` has a header ``index`` (and ``id`` when ``ids`` are given).
    """
    path = Path(path)
    idx = np.asarray(idx, dtype=np.int64)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        atomic_write(path, lambda tmp: np.save(tmp, idx))
    elif suffix == ".csv":
        def _w(tmp):
            with open(tmp, "w") as fh:
                if ids is None:
                    fh.write("index\n")
                    fh.writelines(f"{i}\n" for i in idx.tolist())
                else:
                    fh.write("index,id\n")
                    fh.writelines(f"{i},{j}\n" for i, j in zip(idx.tolist(), np.asarray(ids)[idx].tolist()))
        atomic_write(path, _w)
    else:
        raise BatchalInputError(f"--out must end in .npy or .csv; got {path.name}")
