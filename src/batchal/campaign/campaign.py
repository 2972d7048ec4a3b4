"""The :class:`Campaign`: a labeling workflow across rounds, persistent and crash-safe.

Every method that changes the campaign runs as one command: it takes the
campaign's lock, writes its new array files, and commits one SQLite
transaction (see :mod:`batchal.campaign.store` for why that order makes a
SIGKILL at any point harmless). Items are addressed by their ids; internally a
row number is an item's fixed position in the campaign's arrays (rows are only
ever appended, so they never shift).

This class is the public facade: each command's logic lives in its own module
(one per ``batchal campaign`` command, as the CLI has one module per command
group), written as a function whose first argument is the campaign, and is
attached here as a method. A reader follows a command from here to its module.
"""
from __future__ import annotations

from . import (adding, checking, clustering, creating, deduplicating, exporting, labeling, metrics, selecting,
               status, undoing)
from .core import CampaignCore
from .selecting import Batch

__all__ = ["Campaign", "Batch"]


class Campaign(CampaignCore):
    """An active-learning campaign stored in a directory.

    Open an existing one with ``Campaign(path)``; create one with
    :meth:`Campaign.init`. The command line ``batchal campaign ...`` calls
    these methods.

    Parameters
    ----------
    path : path of the campaign directory
    lock_timeout : float, optional
        Seconds a writing method waits for another writer (default
        ``BATCHAL_LOCK_TIMEOUT`` or 30); then it raises ``CampaignBusyError``.
    """

    init = classmethod(creating.init)            # campaign init
    cluster = clustering.cluster                 # campaign cluster
    dedup = deduplicating.dedup                  # campaign dedup
    undo = undoing.undo                          # campaign undo
    select = selecting.select                    # campaign select (and the round's stop-set signals)
    label = labeling.label                       # campaign label
    batch = exporting.batch                      # campaign export
    export = exporting.export
    labels = exporting.labels                    # campaign labels
    write_labels = exporting.write_labels
    status = status.status                       # campaign status
    add = adding.add                             # campaign add
    check = checking.check                       # campaign check
    record_metrics = metrics.record_metrics      # campaign metric

    def metrics(self) -> dict:
        """The recorded user metrics, ``{round: {name: value}}``."""
        with self._store.read() as conn:
            return metrics.metrics(conn)
