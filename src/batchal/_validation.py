"""Input contracts at the boundary between user arrays and the kernels.

Every public entry point funnels its arrays through these helpers so that a bad
input fails early with a message naming the problem, before any output is
written. Checks that must look at every value (NaN, row sums) stream over row
chunks so memory-mapped arrays of any size are never loaded whole.
"""
from __future__ import annotations

import numpy as np

#: Rows processed per chunk when streaming over an (n, C) or (n, d) array.
CHUNK_ROWS = 1 << 16

#: Tolerance on |sum(row) - 1| for a row of probabilities.
PROBA_ATOL = 1e-3


class BatchalInputError(ValueError):
    """Raised when an input array or parameter breaks the documented contract."""


class BatchalOutputError(BatchalInputError, OSError):
    """Raised when an output cannot be written (a directory, no permission, a full disk).

    Also an ``OSError``, so code that handles file-system errors keeps working.
    """


def iter_chunks(n: int, chunk_rows: int = CHUNK_ROWS):
    """Yield ``(start, stop)`` row ranges covering ``range(n)``."""
    for start in range(0, n, chunk_rows):
        yield start, min(n, start + chunk_rows)


def check_2d(x, name: str, *, allow_float_only: bool = True) -> np.ndarray:
    """Return ``x`` as a 2-d array (a view when possible; memmaps stay memmaps)."""
    if x is None:
        raise BatchalInputError(f"{name} is required")
    arr = np.asanyarray(x)
    if arr.ndim != 2:
        raise BatchalInputError(f"{name} must be a 2-d array of shape (n, k); got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BatchalInputError(f"{name} is empty (shape {arr.shape})")
    if allow_float_only and not np.issubdtype(arr.dtype, np.floating):
        if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
            return arr
        raise BatchalInputError(f"{name} must hold numbers; got dtype {arr.dtype}")
    return arr


def check_finite_block(block: np.ndarray, name: str, offset: int = 0) -> None:
    """Raise if a chunk of rows holds NaN or infinity (``offset`` = its first row)."""
    if not np.isfinite(block).all():
        bad = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
        kind = "NaN" if np.isnan(block[bad]).any() else "infinite values"
        raise BatchalInputError(f"{name} contains {kind} (first at row {bad + offset})")


def check_finite(x: np.ndarray, name: str) -> None:
    """Raise if ``x`` holds NaN or infinity, streaming over row chunks."""
    if not np.issubdtype(x.dtype, np.floating):
        return
    for a, b in iter_chunks(x.shape[0]):
        check_finite_block(np.asarray(x[a:b]), name, a)


def first_nonfinite(x) -> tuple[int, str] | None:
    """``(row, "NaN" or "infinite values")`` of the first row of ``x`` with a non-finite value, or None.

    Streams over row chunks (memmaps are not loaded whole); non-float arrays are finite.
    """
    x = np.asanyarray(x)
    if not np.issubdtype(x.dtype, np.floating) or x.ndim == 0:
        return None
    for a, b in iter_chunks(x.shape[0]):
        block = np.asarray(x[a:b]).reshape(b - a, -1)
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            return a + i, "NaN" if np.isnan(block[i]).any() else "infinite values"
    return None


def unread_input_warnings(arrays: dict, requires, strategy: str, labels: dict | None = None) -> list[str]:
    """Warnings for inputs a strategy does not read that hold NaN or infinity.

    Such an input cannot change the batch, but it is a sign that whatever wrote it
    is broken, and the same files are likely fed to other strategies next.

    Parameters
    ----------
    arrays : dict
        Pool inputs by name (``probs``, ``logits``, ``embeddings``, ``clusters``); None = not given.
    requires : what the strategy reads (``Selector.requires``; ``"predictions"`` = probs or logits)
    strategy : its name, for the message
    labels : how to call each input in the message (e.g. ``{"probs": "--probs"}``)
    """
    read = set(requires)
    if "predictions" in read:
        read |= {"probs", "logits"}
    msgs = []
    for key, arr in arrays.items():
        if arr is None or key in read or key == "labeled" or not isinstance(arr, np.ndarray):
            continue  # top-k predictions (not an array) are validated whenever they are read
        bad = first_nonfinite(arr)
        if bad is not None:
            label = (labels or {}).get(key, key)
            msgs.append(f"{label} contains {bad[1]} (first at row {bad[0]}); strategy {strategy!r} does not read "
                        f"it, so the batch is unaffected, but whatever wrote it is suspect")
    return msgs


def check_proba_block(block: np.ndarray, name: str, offset: int = 0, multilabel: bool = False) -> None:
    """Raise unless a chunk holds finite values in [0, 1] with rows summing to 1.

    With ``multilabel=True`` each column is an independent binary probability,
    so the row-sum check is skipped.
    """
    check_finite_block(block, name, offset)
    if block.min() < -PROBA_ATOL or block.max() > 1 + PROBA_ATOL:
        rows = ((block < -PROBA_ATOL) | (block > 1 + PROBA_ATOL)).any(axis=1)
        bad = int(np.flatnonzero(rows)[0]) + offset
        raise BatchalInputError(
            f"{name} has values outside [0, 1] (first at row {bad}); "
            "if these are raw model outputs pass them as logits (--logits)"
        )
    if not multilabel:
        s = block.sum(axis=1)
        off = np.abs(s - 1.0) > PROBA_ATOL
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise BatchalInputError(
                f"rows of {name} must sum to 1 (row {i + offset} sums to {s[i]:.4f}); "
                "if these are unnormalised scores pass them as logits (--logits); "
                "for independent per-class probabilities use the multi-label margin"
            )


def check_clusters(c, n: int) -> np.ndarray:
    """Return cluster ids as a 1-d integer array of length ``n``."""
    arr = np.asarray(c)
    if arr.ndim != 1:
        raise BatchalInputError(f"clusters must be a 1-d array of ints; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise BatchalInputError(f"clusters must hold integer cluster ids; got dtype {arr.dtype}")
    if arr.shape[0] != n:
        raise BatchalInputError(f"clusters has {arr.shape[0]} rows but the pool has {n}")
    return arr


def labeled_mask(labeled, n: int) -> np.ndarray:
    """Turn labeled row indices (or a boolean mask) into a boolean mask of length ``n``."""
    mask = np.zeros(n, dtype=bool)
    if labeled is None:
        return mask
    arr = np.asarray(labeled)
    if arr.size == 0:
        return mask
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise BatchalInputError(f"labeled mask has shape {arr.shape}; expected ({n},)")
        return arr.copy()
    if arr.ndim != 1:
        raise BatchalInputError(f"labeled must be a 1-d array of row indices; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise BatchalInputError(f"labeled must hold integer row indices; got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n:
        bad = arr[(arr < 0) | (arr >= n)][0]
        raise BatchalInputError(f"labeled index {bad} is out of range for a pool of {n} rows")
    mask[arr] = True
    if int(mask.sum()) != arr.shape[0]:
        vals, counts = np.unique(arr, return_counts=True)
        raise BatchalInputError(f"labeled indices are repeated (e.g. {vals[counts > 1][0]})")
    return mask


def check_batch_size(batch_size, n_unlabeled: int) -> int:
    """Validate a batch size against the number of unlabeled rows."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise BatchalInputError(f"batch_size must be an integer; got {batch_size!r}")
    k = int(batch_size)
    if k <= 0:
        raise BatchalInputError(f"batch_size must be positive; got {k}")
    if k > n_unlabeled:
        raise BatchalInputError(
            f"batch_size {k} is larger than the unlabeled pool ({n_unlabeled} rows)"
        )
    return k


def check_count(value, name: str, low: int = 1, high: int | None = None, *, note: str = "") -> int:
    """``value`` as an int, refused unless a whole number in ``[low, high]`` (a bool is not a count)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if not ok or value < low or (high is not None and value > high):
        bound = f">= {low}" + (f" and <= {high}" if high is not None else "")
        raise BatchalInputError(f"{name} must be an integer {bound}" + (f" ({note})" if note else "")
                                + f"; got {value!r}")
    return int(value)


def check_seed(value, name: str = "seed"):
    """``value`` unchanged if it can seed ``np.random.default_rng``: None, an integer >= 0 or a Generator."""
    if value is None or isinstance(value, np.random.Generator):
        return value
    return check_count(value, name, 0)


def check_number(value, name: str, low: float = -np.inf, high: float = np.inf, *,
                 open_low: bool = False, note: str = "") -> float:
    """``value`` as a float, refused unless a finite real number in its range.

    The range is ``[low, high]`` (``(low, high]`` with ``open_low``). A bool is
    refused too: ``True`` is not a share or a factor. ``note`` says what the
    parameter does, for the message.
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    v = float(value) if ok else np.nan
    if not (np.isfinite(v) and (v > low if open_low else v >= low) and v <= high):
        lo = "(" if open_low else "["
        if np.isfinite(high):
            bound = f"in {lo}{low:g}, {high:g}]"
        else:
            bound = f"> {low:g}" if open_low else f">= {low:g}"
        raise BatchalInputError(f"{name} must be a number {bound}" + (f" ({note})" if note else "")
                                + f"; got {value!r}")
    return v


def check_ids(ids) -> np.ndarray:
    """Return item ids as an array, raising on duplicates."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise BatchalInputError(f"ids must be 1-d; got shape {arr.shape}")
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.shape[0] != arr.shape[0]:
        raise BatchalInputError(f"ids are not unique (e.g. {uniq[counts > 1][0]!r} appears {counts[counts > 1][0]} times)")
    return arr


def as_float32_c(x: np.ndarray) -> np.ndarray:
    """The kernel-side contract: C-contiguous float32 (no copy when already so, memmaps included)."""
    return np.ascontiguousarray(x, dtype=np.float32)
