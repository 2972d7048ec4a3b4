"""Reading pool arrays (NumPy memmaps, Parquet, CSV) and writing outputs atomically.

Every output goes through a hidden temporary (``.NAME.batchal-tmp-PID-XXXXXXXX...``)
in the destination directory that is renamed into place, so a failure never
leaves a half-written file. A command killed with SIGKILL cannot clean up after
itself; the next write into the same directory removes such leftovers
(:func:`clean_stale_temps`). Final files get the permissions the umask allows,
like any file a shell command creates.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ._validation import BatchalInputError, BatchalOutputError

__all__ = ["load_array", "load_predictions", "save_indices", "atomic_write", "atomic_directory", "check_output",
           "clean_stale_temps", "TMP_TAG"]

#: Marks every temporary batchal writes; followed by ``-HOST-PID-``: a hash of the host name
#: and the pid of the writing process, so a leftover can be told from a write in progress.
TMP_TAG = ".batchal-tmp"
_TMP_RE = re.compile(r"^\..*" + re.escape(TMP_TAG) + r"-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-")
_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF:06x}"
#: A temporary from another host (a shared file system) is stale only after this long.
FOREIGN_TEMP_SECONDS = 24 * 3600


def load_array(path, *, name: str = "array", columns: list[str] | None = None, text: bool = False) -> np.ndarray:
    """Load an array for the pool.

    ``.npy`` files are memory-mapped (never read whole); ``.npz`` must hold one
    array; ``.parquet`` files (or a directory of Parquet shards) are read with
    pyarrow: a single list/fixed-size-list column becomes an (n, k) array, a
    single numeric column a 1-d array, several numeric columns an (n, k) array.
    ``.csv`` / ``.txt`` are read with ``np.loadtxt`` (small inputs only), after a
    header line if there is one; ``text=True`` lets a one-column file of words (item
    ids) through as strings. Every failure is a :class:`BatchalInputError` naming
    ``name`` and the file.
    """
    p = Path(path)
    if not p.exists():
        raise BatchalInputError(f"{name}: no such file {p}")
    suffix = p.suffix.lower()
    if p.is_dir() and suffix not in ("", ".parquet"):
        raise BatchalInputError(f"{name}: {p} is a directory, not a file")
    try:
        if suffix == ".npy":
            _check_npy(p, name)
            return np.load(p, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if len(z.files) != 1:
                    raise BatchalInputError(f"{name}: {p} holds {len(z.files)} arrays ({z.files}); expected one")
                return z[z.files[0]]
        if suffix == ".parquet" or p.is_dir():
            return _load_parquet(p, name, columns)
        if suffix in (".csv", ".txt"):
            return _load_text(p, name, suffix, text)
    except BatchalInputError:
        raise
    except Exception as exc:  # a corrupt file must name itself, not surface as a numpy traceback
        raise BatchalInputError(f"{name}: cannot read {p}: {exc}") from exc
    raise BatchalInputError(f"{name}: unsupported file type {suffix!r} ({p}); use .npy, .npz, .parquet or .csv")


def load_predictions(path, *, name: str = "--probs", multilabel: bool = False, n_classes: int | None = None):
    """Predictions from a file: a :class:`batchal.topk.TopK` when the file holds the top-k layout
    (Parquet columns or ``.npz`` arrays ``top_classes`` and ``top_probs``), else :func:`load_array`'s
    dense (n, C) array. Top-k files are validated as read (:func:`batchal.topk.read_topk`)."""
    from .topk import is_topk_file, read_topk

    if Path(path).exists() and is_topk_file(path):
        return read_topk(path, name=name, multilabel=multilabel, n_classes=n_classes)
    if n_classes is not None:
        raise BatchalInputError(f"--n-classes applies to top-k predictions (top_classes, top_probs); {path} is dense")
    return load_array(path, name=name)


def _check_npy(p: Path, name: str) -> None:
    """Name what is wrong with a ``.npy`` file in words (NumPy's own messages mislead: a text
    file is "pickled data", a truncated one an mmap length)."""
    fmt = np.lib.format
    with open(p, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise BatchalInputError(f"{name}: {p} is not a .npy file (no NumPy header); save it with numpy.save")
        fh.seek(0)
        try:
            version = fmt.read_magic(fh)
            shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(fh)
        except ValueError as exc:
            raise BatchalInputError(f"{name}: {p} has a damaged .npy header ({exc})") from None
        if dtype.hasobject:
            raise BatchalInputError(f"{name}: {p} holds Python objects (dtype {dtype}), not numbers; "
                                    "save a numeric array")
        need = fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = p.stat().st_size
    if have < need:
        raise BatchalInputError(f"{name}: {p} is truncated ({have:,} bytes; its header promises {need:,})")


def _load_parquet(p: Path, name: str, columns) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if p.is_dir() and not any(p.rglob("*.parquet")):
        raise BatchalInputError(f"{name}: {p} is a directory, not a file (nor a folder of .parquet shards)")

    table = pq.read_table(p, columns=columns)
    if table.num_columns == 0:
        raise BatchalInputError(f"{name}: {p} has no columns")
    if table.num_columns == 1:
        col = table.column(0).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            import pyarrow.compute as pc

            n = len(col)
            if n == 0:
                raise BatchalInputError(f"{name}: {p} has no rows")
            if col.null_count:
                raise BatchalInputError(f"{name}: list column in {p} has {col.null_count} missing (null) rows")
            # every row must have the same length: a total that merely divides by n
            # would otherwise be reshaped into rows that mix items
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if (lengths != lengths[0]).any():
                bad = int(np.flatnonzero(lengths != lengths[0])[0])
                raise BatchalInputError(f"{name}: list column in {p} has rows of unequal length "
                                        f"(row 0 has {lengths[0]} values, row {bad} has {lengths[bad]})")
            flat = col.flatten().to_numpy(zero_copy_only=False)
            return flat.reshape(n, int(lengths[0]))
        return col.to_numpy(zero_copy_only=False)
    return np.column_stack([table.column(i).to_numpy(zero_copy_only=False) for i in range(table.num_columns)])


def _load_text(p: Path, name: str, suffix: str, text: bool = False) -> np.ndarray:
    """A small numeric text file, with or without a header line (batchal's own CSVs have one).

    batchal's batch files (``index`` or ``index,id``) give their ``index`` column,
    so a batch can be passed back as ``--labeled``; other files give every column.
    With ``text=True`` a one-column file that is not numeric is read as strings
    (item ids); its first line is a header only when it reads ``id``.
    """
    delim = "," if suffix == ".csv" else None
    with open(p) as fh:
        first = fh.readline()
    if not first.strip():
        raise BatchalInputError(f"{name}: {p} is empty (or starts with a blank line)")
    cells = [c.strip() for c in (first.split(delim) if delim else first.split())]
    header = bool(cells) and any(c and not _is_number(c) for c in cells)
    usecols = None
    if header and "index" in cells and set(cells) <= {"index", "id"}:
        usecols = cells.index("index")
    try:
        arr = np.loadtxt(p, delimiter=delim, ndmin=1, skiprows=int(header), usecols=usecols)
    except ValueError:
        if not (text and len(cells) == 1):
            raise
        return np.loadtxt(p, delimiter=delim, ndmin=1, dtype=str, skiprows=int(cells[0] in ("id", "ids")))
    if arr.size == 0:
        raise BatchalInputError(f"{name}: {p} holds no values")
    if arr.ndim == 1 and np.isfinite(arr).all() and (np.mod(arr, 1) == 0).all() and np.abs(arr).max() < 2**53:
        # a column of whole numbers (cluster ids, row indices) is read back as integers
        arr = arr.astype(np.int64)
    return arr


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (threads may be writing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _start_time(pid: int) -> float | None:
    """Start of process ``pid`` in seconds since the epoch (Linux /proc), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _alive(pid: int, mtime: float) -> bool:
    """Whether the process that wrote a temporary at ``mtime`` may still be writing it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    start = _start_time(pid)
    # a live process that started after the temporary was last touched is a reused pid
    return start is None or start <= mtime + 1.0


def clean_stale_temps(directory) -> list[Path]:
    """Remove temporaries that a killed batchal command left in ``directory``.

    A temporary written on this host is stale when its writer is gone: its pid is
    not running, or now belongs to a process that started after the temporary was
    last written (a reused pid). A command still writing in the same directory is
    never disturbed. A temporary from another host (a shared file system), whose
    writer cannot be checked, is stale after :data:`FOREIGN_TEMP_SECONDS`.

    Returns
    -------
    list of Path : what was removed.
    """
    me = os.getpid()
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        m = _TMP_RE.match(e.name)
        if not m or (m["host"] == _HOST and int(m["pid"]) == me):
            continue
        try:
            mtime = e.stat(follow_symlinks=False).st_mtime
            if m["host"] != _HOST:
                if time.time() - mtime < FOREIGN_TEMP_SECONDS:
                    continue
            elif _alive(int(m["pid"]), mtime):
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:  # gone already, or not ours to remove: leave it
            continue
    return removed


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}{TMP_TAG}-{_HOST}-{os.getpid()}-"


def _output_error(name, path, exc: OSError) -> BatchalOutputError:
    what = f"{name}: " if name else ""
    return BatchalOutputError(f"{what}cannot write {path}: {exc.strerror or exc}")


def check_output(path, *, name: str = "--out", suffixes: tuple[str, ...] | None = None,
                 directory: bool = False) -> Path:
    """Refuse an output path that cannot be written, before any work is done.

    Checks the suffix, that a file output is not a directory (and a directory
    output not a file), that every existing parent is a directory, and that the
    nearest existing one accepts a new file (by creating and removing a temporary:
    permissions, read-only mounts and ``/proc`` all answer truthfully that way).
    Nothing is left behind.

    Parameters
    ----------
    path : output file (or directory with ``directory=True``)
    name : the option, for the message
    suffixes : accepted suffixes, lower case with the dot, e.g. ``(".npy", ".csv")``
    directory : the output is a directory of files

    Returns
    -------
    Path
    """
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise BatchalOutputError(f"{name} must end in {' or '.join(suffixes)}; got {p.name}")
    if not directory and p.is_dir():
        raise BatchalOutputError(f"{name}: {p} is a directory; give a file name such as "
                                 f"{p / ('out' + (suffixes[0] if suffixes else ''))}")
    if directory and p.exists() and not p.is_dir():
        raise BatchalOutputError(f"{name}: {p} exists and is not a directory")
    anc = p if directory else p.parent
    anc = anc if str(anc) else Path(".")
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise BatchalOutputError(f"{name}: cannot write {p}: {anc} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(p), dir=anc)
        os.close(fd)
        os.unlink(tmp)
    except FileNotFoundError:  # an existing directory refusing new entries: /proc, /sys
        raise BatchalOutputError(f"{name}: cannot write {p}: {anc} does not accept new files") from None
    except OSError as exc:
        raise _output_error(name, p, exc) from None
    return p


def atomic_write(path, write_fn, *, name: str | None = None) -> None:
    """Write a file through ``write_fn(tmp_path)`` then rename it into place.

    A failure or a crash never leaves a half-written file at ``path``; the
    temporary keeps ``path``'s suffix (``np.save`` would add one otherwise). The
    file gets mode ``0o666 & ~umask``. Stale temporaries of killed commands in
    the directory are removed first (:func:`clean_stale_temps`).

    Parameters
    ----------
    path : destination
    write_fn : callable writing the whole file to the path it is given
    name : the option the path came from (e.g. ``"--out"``), for error messages

    Raises
    ------
    BatchalOutputError
        When the file cannot be written (also an ``OSError``).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _output_error(name, path, exc) from None
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, BatchalOutputError):
            raise _output_error(name, path, exc) from exc
        raise


@contextmanager
def atomic_directory(out_dir, *, name: str | None = None):
    """Build a set of files in a hidden staging directory, then move them into ``out_dir``.

    Yields the staging directory. When the block raises, the staging directory is
    removed and ``out_dir`` is untouched: never a partial set of outputs. On success
    a new ``out_dir`` appears in one rename; into an existing one each file is renamed
    in turn (renames only: nothing left that can fail halfway for lack of data).
    Files and directories get the umask's permissions.
    """
    out = Path(out_dir)
    try:
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(20, "exists and is not a directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(out.parent)
        if out.is_dir():
            clean_stale_temps(out)
        stage = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out), dir=out.parent))
    except OSError as exc:
        raise _output_error(name, out, exc) from None
    try:
        yield stage
        mask = _umask()
        for f in stage.iterdir():
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
        if not out.exists():
            os.chmod(stage, 0o777 & ~mask)
            os.replace(stage, out)
        else:
            for f in sorted(stage.iterdir()):
                os.replace(f, out / f.name)
            stage.rmdir()
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, BatchalOutputError):
            raise _output_error(name, out, exc) from exc
        raise


def save_indices(path, idx: np.ndarray, ids: np.ndarray | None = None, *, name: str = "--out") -> None:
    """Save selected row indices (int64, selection order) to ``.npy`` or ``.csv``.

    A ``.csv`` has a header ``index`` (and ``id`` when ``ids`` are given).
    """
    path = Path(path)
    idx = np.asarray(idx, dtype=np.int64)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        atomic_write(path, lambda tmp: np.save(tmp, idx), name=name)
    elif suffix == ".csv":
        def _w(tmp):
            with open(tmp, "w") as fh:
                if ids is None:
                    fh.write("index\n")
                    fh.writelines(f"{i}\n" for i in idx.tolist())
                else:
                    fh.write("index,id\n")
                    fh.writelines(f"{i},{j}\n" for i, j in zip(idx.tolist(), np.asarray(ids)[idx].tolist()))
        atomic_write(path, _w, name=name)
    else:
        raise BatchalOutputError(f"{name} must end in .npy or .csv; got {path.name}")


class ParquetColumns:
    """Per-row metadata in a Parquet file (or a directory of shards), read one column at a time.

    Mapping-like (``column_names``, ``table[name]``), as :class:`batchal.Pool`'s
    ``metadata`` takes it, so only the columns a selection asks for are read.

    Parameters
    ----------
    path : str or Path
    name : str
        The option or key named in errors.
    """

    def __init__(self, path, name: str = "--metadata"):
        import pyarrow.parquet as pq

        self.path, self.name = Path(path), name
        if not self.path.exists():
            raise BatchalInputError(f"{name}: no such file {self.path}")
        try:
            self._ds = pq.ParquetDataset(self.path)
            self.column_names = list(self._ds.schema.names)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise BatchalInputError(f"{name}: {self.path} is not a readable Parquet file or folder: {exc}") from None

    def __getitem__(self, column: str):
        return self._ds.read(columns=[column]).column(0)


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
