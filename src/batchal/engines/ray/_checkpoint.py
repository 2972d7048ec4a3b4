"""Checkpoints of a Ray clustering job: the kNN lists once the search is done, the RAC state every few rounds.

A job's directory holds ``job.json`` (what the job is: the same pool,
parameters and actor count are needed to resume it), ``knn.npy`` (the
directed kNN lists, written once the kNN stage has completed) and
``rac-<round>/`` (one file per RAC actor and the driver's round state), named
by ``rac.json`` once complete. Every file is written to a temporary name and
renamed, and ``rac.json`` is replaced only after its round's directory is
whole, so a job killed at any moment leaves the last completed stage and
round readable. The directory must be reachable by every node (a shared file
system on a real cluster): each RAC actor writes and reads its own state.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np

#: Seconds of RAC rounds between two checkpoints (each writes every actor's state).
CHECKPOINT_EVERY_S = 120.0


def write_atomic(path, write) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: a reader sees the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def save_pickle(path, obj) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())

    write_atomic(path, write)


def load_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


class JobCheckpoint:
    """The checkpoint directory of one job (``job``: a JSON-able description that must match to resume).

    Parameters
    ----------
    directory : path
    job : dict
        Pool size, parameters and actor count.
    resume : bool
        Keep what a previous run of the same job left (refused, with the
        difference named, when it was another job); otherwise start empty.
    """

    def __init__(self, directory, job: dict, resume: bool):
        from ..._validation import BatchalInputError

        self.dir = Path(directory)
        self.job = json.loads(json.dumps(job))
        found = self.dir / "job.json"
        if resume and found.exists():
            old = json.loads(found.read_text())
            diff = sorted(k for k in set(old) | set(self.job) if old.get(k) != self.job.get(k))
            if diff:
                raise BatchalInputError(f"--resume: the checkpoint in {self.dir} is of another job "
                                        f"(differs in {', '.join(diff)}); rerun without --resume to start over")
        else:
            if self.dir.exists() and any(self.dir.iterdir()):
                if not found.exists():  # never wipe a directory that is not a checkpoint of ours
                    raise BatchalInputError(f"--checkpoint-dir {self.dir} is not empty and holds no batchal "
                                            "checkpoint; give a new or empty directory")
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(found, lambda tmp: tmp.write_text(json.dumps(self.job, sort_keys=True)))

    # ------------------------------------------------------------------ kNN stage
    @property
    def knn_path(self) -> Path:
        return self.dir / "knn.npy"

    def has_knn(self) -> bool:
        return self.knn_path.exists()

    def save_knn(self, ray, chunks, n: int) -> None:
        """The kNN stage's lists (object-store chunks ``(row ids, lists, ...)``), chunk by chunk into ``knn.npy``."""
        def write(tmp):
            out = None
            for ref in chunks:
                part = ray.get(ref)
                qids, I = part[0], part[1]
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(n, I.shape[1]))
                out[qids] = I
            out.flush()
            del out
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

        write_atomic(self.knn_path, write)  # open_memmap writes the name it is given (no suffix added)

    def load_knn(self) -> np.ndarray:
        return np.load(self.knn_path, mmap_mode="r")

    # ------------------------------------------------------------------ RAC rounds
    def rac_round(self):
        """The last completed RAC checkpoint: ``(its directory, the driver's state)``, or None."""
        ptr = self.dir / "rac.json"
        if not ptr.exists():
            return None
        where = self.dir / json.loads(ptr.read_text())["dir"]
        return where, load_pickle(where / "driver.pkl")

    def rac_begin(self, rounds: int) -> Path:
        """A fresh temporary directory for round ``rounds``'s actor files."""
        tmp = self.dir / f".rac-{rounds:06d}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        return tmp

    def rac_commit(self, tmp: Path, rounds: int, driver_state: dict) -> None:
        """Make round ``rounds``'s checkpoint the current one (the actors wrote theirs into ``tmp``)."""
        save_pickle(tmp / "driver.pkl", driver_state)
        name = f"rac-{rounds:06d}"
        final = self.dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_atomic(self.dir / "rac.json", lambda t: t.write_text(json.dumps({"dir": name, "rounds": rounds})))
        for old in self.dir.glob("rac-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def clean(self) -> None:
        """The job has ended: remove its checkpoints."""
        shutil.rmtree(self.dir, ignore_errors=True)
