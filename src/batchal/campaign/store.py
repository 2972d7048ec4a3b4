"""A campaign's persistent state: one SQLite database, array files beside it, one writer at a time.

Layout of a campaign directory::

    campaign.db      SQLite, WAL journal, synchronous=FULL: every item state, every round
    arrays/          .npy / .arrow files (ids, embeddings, cluster ids, per-round scores),
                     each named once and never rewritten; listed in the ``files`` table
    reports/         cluster-size report and histogram of the clustering (also listed)
    lock             flock'ed by the one command allowed to write

Crash safety rests on one ordering rule: a command first writes its new array files
(temporary name, fsync, rename, fsync of the directory), then commits the one database
transaction that references them. The commit is the commit point: killed before it,
the database is as before and the new files are unreferenced garbage; killed after it,
everything the database references is on disk. The next writing command deletes
whatever the ``files`` table does not list (leftover temporary files included), under
the lock, so it never touches a concurrent writer's files. Readers (status, export,
check) take no lock; WAL gives them a consistent snapshot while a writer runs.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .._validation import BatchalInputError
from ..io import atomic_write, sha256_file

__all__ = ["Store", "CampaignBusyError", "crash_point", "has_table", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
DB_NAME = "campaign.db"
#: What a campaign directory holds (anything else there is the user's, never touched)
OWN_NAMES = {DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal", "lock", "arrays", "reports"}
#: Default seconds a writer waits for another writer's lock (``BATCHAL_LOCK_TIMEOUT`` overrides).
DEFAULT_LOCK_TIMEOUT = 30.0

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files(
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL,
    shape TEXT, dtype TEXT);
-- one shard per `init` or `add`: rows [row_start, row_start + rows) of the campaign
CREATE TABLE shards(
    shard INTEGER PRIMARY KEY, row_start INTEGER NOT NULL, rows INTEGER NOT NULL,
    ids_file TEXT NOT NULL REFERENCES files(name), emb_file TEXT NOT NULL REFERENCES files(name),
    source TEXT NOT NULL, content_sha256 TEXT NOT NULL, added_at TEXT NOT NULL, report TEXT);
CREATE TABLE pool_files(
    shard INTEGER NOT NULL REFERENCES shards(shard), seq INTEGER NOT NULL, path TEXT NOT NULL,
    bytes INTEGER NOT NULL, rows INTEGER NOT NULL, sha256 TEXT NOT NULL, role TEXT NOT NULL DEFAULT 'pool',
    PRIMARY KEY(shard, seq));
CREATE TABLE clustering(
    gen INTEGER PRIMARY KEY, params TEXT NOT NULL, metric TEXT NOT NULL, threshold REAL NOT NULL,
    n_rows INTEGER NOT NULL, tree_file TEXT REFERENCES files(name), report TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE rounds(
    round INTEGER PRIMARY KEY, status TEXT NOT NULL CHECK(status IN ('open', 'closed')),
    batch_size INTEGER NOT NULL, strategy TEXT NOT NULL, seed INTEGER, seed_used INTEGER NOT NULL,
    predictions TEXT, predictions_sha256 TEXT, multilabel INTEGER NOT NULL DEFAULT 0,
    scores_file TEXT REFERENCES files(name), opened_at TEXT NOT NULL, closed_at TEXT, close_reason TEXT);
-- at most one open round
CREATE UNIQUE INDEX rounds_one_open ON rounds(status) WHERE status = 'open';
-- item_id has no declared type: SQLite keeps integers as integers and strings as strings
CREATE TABLE batch_items(
    round INTEGER NOT NULL REFERENCES rounds(round), pos INTEGER NOT NULL, row INTEGER NOT NULL,
    item_id NOT NULL, score REAL, pred TEXT, returned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(round, pos)) WITHOUT ROWID;
-- the database itself refuses an item in two batches (returned items may be selected again);
-- `returned` in the key (always 0 there) makes it a covering index for the scan of active rows
CREATE UNIQUE INDEX batch_items_active ON batch_items(row, returned) WHERE returned = 0;
CREATE TABLE imports(
    import INTEGER PRIMARY KEY, source TEXT NOT NULL, format TEXT NOT NULL, sha256 TEXT NOT NULL,
    at TEXT NOT NULL, n_new INTEGER NOT NULL, n_same INTEGER NOT NULL, n_skipped INTEGER NOT NULL);
CREATE TABLE labels(
    row INTEGER PRIMARY KEY, item_id NOT NULL, round INTEGER NOT NULL REFERENCES rounds(round),
    label TEXT NOT NULL, import INTEGER NOT NULL REFERENCES imports(import));
CREATE INDEX labels_round ON labels(round);
CREATE TABLE history(seq INTEGER PRIMARY KEY, at TEXT NOT NULL, command TEXT NOT NULL, detail TEXT NOT NULL);
"""

#: Tables added after schema version 1: created (IF NOT EXISTS) inside every writing command's
#: transaction, so a campaign made before them gains them at its next command, atomically.
ADDITIONS = """
-- per round with predictions: the stop set's predicted labels (an .npz) and the stopping signals
-- against prev_round (see batchal.stopping); written in the select transaction with the round's batch
CREATE TABLE IF NOT EXISTS stop_rounds(
    round INTEGER PRIMARY KEY REFERENCES rounds(round), preds_file TEXT NOT NULL REFERENCES files(name),
    prev_round INTEGER, n INTEGER NOT NULL, kappa REAL, changed REAL, uncertainty REAL,
    uncertainty_kind TEXT NOT NULL);
-- the team's own per-round measurements (`campaign metric`), e.g. validation accuracy
CREATE TABLE IF NOT EXISTS metrics(
    round INTEGER NOT NULL REFERENCES rounds(round), name TEXT NOT NULL, value REAL NOT NULL,
    recorded_at TEXT NOT NULL, PRIMARY KEY(round, name));
-- near-duplicate groups (`campaign dedup`): a Parquet file (id, group, representative) and each row's
-- representative row (.npy), for the first n_rows items; source: the clustering's kNN graph or a search
CREATE TABLE IF NOT EXISTS dedup(
    gen INTEGER PRIMARY KEY, params TEXT NOT NULL, source TEXT NOT NULL,
    groups_file TEXT NOT NULL REFERENCES files(name), rep_file TEXT NOT NULL REFERENCES files(name),
    n_rows INTEGER NOT NULL, n_groups INTEGER NOT NULL, created_at TEXT NOT NULL);
-- labels copied from a group's representative (`campaign label --propagate`), never bought: kept apart
-- from `labels` (which counts what was bought) and undone with the round of the label they copy
CREATE TABLE IF NOT EXISTS propagated(
    row INTEGER PRIMARY KEY, item_id NOT NULL, round INTEGER NOT NULL REFERENCES rounds(round),
    label TEXT NOT NULL, source_row INTEGER NOT NULL, dedup_gen INTEGER NOT NULL REFERENCES dedup(gen),
    at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS propagated_round ON propagated(round);
-- the resolved selection config of a round (`campaign select --config`), as JSON: what reproduces it
CREATE TABLE IF NOT EXISTS round_configs(
    round INTEGER PRIMARY KEY REFERENCES rounds(round), config TEXT NOT NULL, sha256 TEXT NOT NULL);
"""


class CampaignBusyError(BatchalInputError):
    """Another command holds the campaign's write lock for longer than the timeout."""


def crash_point(name: str) -> None:
    """Test hook: ``BATCHAL_CRASH_AT=<name>`` kills this process with SIGKILL here.

    The crash tests use it to stop a command at each step that matters (arrays
    written, database changed but not committed, committed but output not written).
    """
    if os.environ.get("BATCHAL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a crash of the machine, not just the process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_timeout_default() -> float:
    v = os.environ.get("BATCHAL_LOCK_TIMEOUT")
    try:
        return float(v) if v else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise BatchalInputError(f"BATCHAL_LOCK_TIMEOUT must be a number of seconds; got {v!r}") from None


class _Lock:
    """An exclusive flock on ``DIR/lock``; the kernel releases it when its holder dies (SIGKILL too)."""

    def __init__(self, path: Path, timeout: float, command: str):
        self.path, self.timeout, self.command = path, timeout, command
        self.fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    try:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    finally:
                        os.close(fd)
                    raise CampaignBusyError(
                        f"campaign {self.path.parent} is busy: another command holds its lock ({holder}); "
                        f"gave up after waiting {self.timeout:g} s (set BATCHAL_LOCK_TIMEOUT to wait longer)"
                    ) from None
                time.sleep(delay)
                delay = min(0.1, delay * 2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, `{self.command}` since {now()}\n".encode(), 0)
        self.fd = fd

    def release(self):
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


class Store:
    """The database connection and the array directory of one campaign.

    Parameters
    ----------
    root : path
        The campaign directory.
    lock_timeout : float, optional
        Seconds a writer waits for the lock (default ``BATCHAL_LOCK_TIMEOUT`` or 30).
    """

    def __init__(self, root, lock_timeout: float | None = None):
        self.root = Path(root)
        self.db_path = self.root / DB_NAME
        self.arrays = self.root / "arrays"
        self.reports = self.root / "reports"
        self.lock_timeout = lock_timeout_default() if lock_timeout is None else float(lock_timeout)
        self._conn: sqlite3.Connection | None = None
        self._in_write = False

    # ---------------------------------------------------------------- connection
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per command
            conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=max(self.lock_timeout, 1.0))
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def is_initialised(self) -> bool:
        """A committed ``init`` left a ``campaign_id``; a killed ``init`` left nothing committed."""
        if not self.db_path.exists():
            return False
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='campaign_id'").fetchone()
        except sqlite3.OperationalError:  # no meta table: init never committed
            return False
        return row is not None

    # ---------------------------------------------------------------- transactions
    @contextmanager
    def write(self, command: str, *, create: bool = False):
        """Hold the lock and one IMMEDIATE transaction for a whole command; commit at the end.

        ``create=True`` (init) creates the directory and the schema inside the same
        transaction, so a killed init leaves no half-made campaign.
        """
        if self._in_write:
            raise RuntimeError("nested campaign write")
        if create:
            if self.root.is_dir() and not self.db_path.exists():
                strangers = sorted(p.name for p in self.root.iterdir() if p.name not in OWN_NAMES)
                if strangers:
                    raise BatchalInputError(f"{self.root} exists and holds other files ({', '.join(strangers[:3])}); "
                                            "a campaign needs a new or empty directory")
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.db_path.exists():  # checked before locking: no lock file left in a stranger's directory
            raise BatchalInputError(f"{self.root} is not a campaign (run `batchal campaign init` first)")
        lock = _Lock(self.root / "lock", self.lock_timeout, command)
        lock.acquire()
        self._in_write = True
        conn = None
        try:
            if not create and not self.is_initialised():
                raise BatchalInputError(f"{self.root} is not a campaign (run `batchal campaign init` first)")
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            if create and not self._has_schema():
                for stmt in _statements(SCHEMA):
                    conn.execute(stmt)
            for stmt in _statements(ADDITIONS):
                conn.execute(stmt)
            self.arrays.mkdir(exist_ok=True)
            self.reports.mkdir(exist_ok=True)
            self._collect_garbage()
            yield conn
            crash_point(f"{command}:before-commit")
            conn.execute("COMMIT")
            crash_point(f"{command}:after-commit")
        except BaseException:
            if conn is not None and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._in_write = False
            lock.release()

    @contextmanager
    def read(self):
        """A consistent snapshot for a reading command (no lock; WAL lets a writer go on)."""
        if not self.is_initialised():
            raise BatchalInputError(f"{self.root} is not a campaign (run `batchal campaign init` first)")
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _has_schema(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone() is not None

    # ---------------------------------------------------------------- files
    def _collect_garbage(self) -> None:
        """Delete files no committed transaction references (a killed command's leftovers)."""
        referenced = {r[0] for r in self.conn.execute("SELECT name FROM files")} if self._has_schema() else set()
        for d in (self.arrays, self.reports):
            for p in d.iterdir():
                rel = f"{d.name}/{p.name}"
                if rel not in referenced:
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        pass

    def path_of(self, name: str) -> Path:
        return self.root / name

    def new_name(self, kind: str, suffix: str, where: str = "arrays") -> str:
        return f"{where}/{kind}-{uuid.uuid4().hex[:12]}{suffix}"

    def register(self, conn, name: str, kind: str, *, shape=None, dtype=None) -> str:
        """Record a written file in the ``files`` table (inside the command's transaction)."""
        p = self.path_of(name)
        conn.execute(
            "INSERT INTO files(name, kind, bytes, sha256, shape, dtype) VALUES (?,?,?,?,?,?)",
            (name, kind, p.stat().st_size, sha256_file(p), json.dumps(list(shape)) if shape is not None else None,
             _dtype_text(dtype)),
        )
        return name

    def write_file(self, conn, kind: str, suffix: str, write_fn, *, where: str = "arrays", shape=None, dtype=None) -> str:
        """Write a new file atomically (temp, fsync, rename, fsync dir) and register it."""
        name = self.new_name(kind, suffix, where)

        def _write(tmp):
            write_fn(tmp)
            crash_point(f"file-tmp:{kind}")  # killed here: a temporary file for the next writer to delete
        atomic_write(self.path_of(name), _write)
        fsync_dir(self.path_of(name).parent)
        crash_point(f"file-written:{kind}")
        return self.register(conn, name, kind, shape=shape, dtype=dtype)

    def adopt(self, conn, name: str, kind: str, *, shape=None, dtype=None) -> str:
        """Register a file written in place under a name from :meth:`new_name` (a memory map filled by
        a long computation, too large to hold and write at once): fsync it and its directory, then
        register it. Until the commit it is unreferenced, so a crash leaves it to the next writer's
        garbage collection, as a temporary file."""
        p = self.path_of(name)
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(p.parent)
        crash_point(f"file-written:{kind}")
        return self.register(conn, name, kind, shape=shape, dtype=dtype)

    def write_npy(self, conn, kind: str, array: np.ndarray) -> str:
        arr = np.ascontiguousarray(array)
        return self.write_file(conn, kind, ".npy", lambda tmp: np.save(tmp, arr), shape=arr.shape, dtype=arr.dtype)

    def load_npy(self, name: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.path_of(name), mmap_mode="r" if mmap else None, allow_pickle=False)

    def forget(self, conn, name: str) -> None:
        """Drop a superseded file from ``files``; the next writer deletes it from disk."""
        conn.execute("DELETE FROM files WHERE name=?", (name,))

    # ---------------------------------------------------------------- meta
    @staticmethod
    def get_meta(conn, key: str, default=None):
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @staticmethod
    def set_meta(conn, key: str, value) -> None:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                     (key, json.dumps(value)))

    @staticmethod
    def log(conn, command: str, detail: dict) -> None:
        conn.execute("INSERT INTO history(at, command, detail) VALUES (?,?,?)", (now(), command, json.dumps(detail)))


def has_table(conn, name: str) -> bool:
    """Whether the database has table ``name`` (tables of :data:`ADDITIONS` appear at the first write)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _statements(script: str):
    """Split the schema into statements (``executescript`` would commit the open transaction)."""
    buf = []
    for line in script.splitlines():
        if line.strip().startswith("--") or not line.strip():
            continue
        buf.append(line)
        if line.rstrip().endswith(";"):
            yield "\n".join(buf)
            buf = []


def _dtype_text(dtype) -> str | None:
    if dtype is None:
        return None
    try:
        return str(np.dtype(dtype))
    except TypeError:  # e.g. "large_string" for an Arrow ids file
        return str(dtype)
