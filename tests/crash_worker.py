"""Child side of the SIGKILL tests: runs one campaign command, to be killed at any moment.

The tests fork children from a forkserver that has imported this module, so a
child starts in milliseconds with everything loaded (and the numba kernels
compiled by :func:`_warm`), and a random kill lands inside the command rather
than in the interpreter's start-up.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow.csv  # noqa: F401  (loaded once in the forkserver, not in every child)
import pyarrow.parquet  # noqa: F401

import batchal
from batchal.campaign import Campaign


def _warm():
    r = np.random.default_rng(0)
    P = r.dirichlet(np.ones(3), size=50)
    batchal.select("cluster-margin:order=margin", 5, probs=P, clusters=r.integers(0, 10, 50), seed=0)
    batchal.select("cluster-margin", 5, probs=P, clusters=r.integers(0, 10, 50), seed=0)


_warm()


def run(directory, op: str, kwargs: dict, crash_at: str | None, started) -> None:
    """Run ``Campaign(directory).<op>(**kwargs)`` (``init`` too); ``crash_at`` sets ``BATCHAL_CRASH_AT``."""
    if crash_at:
        os.environ["BATCHAL_CRASH_AT"] = crash_at
    else:
        os.environ.pop("BATCHAL_CRASH_AT", None)
    if op == "init":
        started.set()
        Campaign.init(directory, **kwargs)
        return
    c = Campaign(directory)
    started.set()
    getattr(c, op)(**kwargs)
