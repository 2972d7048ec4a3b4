"""``campaign undo``: take back the latest round, with everything recorded under it.
"""
from __future__ import annotations

from .._validation import BatchalInputError, check_count
from .store import crash_point

__all__ = ["undo"]


def undo(campaign, round: int | None = None) -> dict:
    """Undo the latest round: its batch, its bought and propagated labels, its signals, metrics and config.

    The round's items return to the pool, as if it had never been selected: a
    batch sent by mistake, labels imported against the wrong round. Only the
    latest round can be undone (a later round's selection depended on it); the
    next ``select`` opens a round with the same number. One transaction, like
    every command: a kill leaves the round whole or gone.

    Parameters
    ----------
    round : int, optional
        The round expected to be the latest (refused otherwise, so a script
        never undoes a round it did not mean to); default: the latest.

    Returns
    -------
    dict : ``round``, ``selected``, ``labels`` (bought) and ``propagated`` removed.
    """
    if round is not None:
        check_count(round, "--round", 0)
    with campaign._store.write("undo") as conn:
        last = conn.execute("SELECT max(round) FROM rounds").fetchone()[0]
        if last is None:
            raise BatchalInputError("no round to undo")
        if round is not None and round != last:
            raise BatchalInputError(f"--round {round}: only the latest round ({last}) can be undone")
        r = last
        q = conn.execute
        n_sel = q("SELECT count(*) FROM batch_items WHERE round=?", (r,)).fetchone()[0]
        n_prop = q("DELETE FROM propagated WHERE round=?", (r,)).rowcount
        n_lab = q("DELETE FROM labels WHERE round=?", (r,)).rowcount
        # an import's new labels all belong to the round open when it ran: those of this round go whole
        q("DELETE FROM imports WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.import=imports.import)")
        # rows first, then their files (the files table is referenced by them)
        gone = [name for (name,) in q("SELECT preds_file FROM stop_rounds WHERE round=?", (r,))]
        q("DELETE FROM stop_rounds WHERE round=?", (r,))
        if campaign._meta(conn, "stop_set_round") == r:  # drawn by this round: the next one draws it again
            gone.append(campaign._meta(conn, "stop_set_file"))
            q("DELETE FROM meta WHERE key IN ('stop_set_file', 'stop_set_seed', 'stop_set_size', 'stop_set_round')")
        q("DELETE FROM metrics WHERE round=?", (r,))
        q("DELETE FROM round_configs WHERE round=?", (r,))
        q("DELETE FROM batch_items WHERE round=?", (r,))
        scores = q("SELECT scores_file FROM rounds WHERE round=?", (r,)).fetchone()[0]
        q("DELETE FROM rounds WHERE round=?", (r,))
        for name in [*gone, scores]:
            if name is not None:
                campaign._store.forget(conn, name)
        out = dict(round=r, selected=n_sel, labels=n_lab, propagated=n_prop)
        campaign._store.log(conn, "undo", out)
        crash_point("undo:deleted")
    return out
