"""The campaign's stop set and its per-round stopping signals (the maths: :mod:`batchal.stopping`).

The stop set is drawn once, at the first ``select`` that has predictions, inside
that command's transaction: :func:`batchal.stopping.stop_set_size` rows of the
pool as it is then (items added later are not in it: a fixed set is what makes
successive rounds comparable), drawn with a seed derived from the round's seed
and recorded (meta ``stop_set_file``, ``stop_set_seed``, ``stop_set_round``).
Every later ``select`` with predictions stores, in the same transaction as its
batch, the stop set's predicted labels (an ``.npz`` file) and the signals
against the latest earlier round that has them (table ``stop_rounds``): a
killed ``select`` leaves both or neither.
"""
from __future__ import annotations

import io

import numpy as np

from ..stopping import KAPPA_THRESHOLD, STABLE_ROUNDS, StopPredictions, compare, draw_stop_set, stop_advice, \
    stop_predictions

__all__ = ["record_round", "stop_rounds", "advice", "RULE"]

#: The documented rule, as status and the report state it.
RULE = f"kappa >= {KAPPA_THRESHOLD:g} for {STABLE_ROUNDS} successive rounds (Bloodgood & Vijay-Shanker 2009)"


def _stop_set(campaign, conn, n: int, seed_used: int, r: int) -> np.ndarray:
    """The stop set's rows: the recorded one, or drawn now (first select with predictions)."""
    store = campaign._store
    name = store.get_meta(conn, "stop_set_file")
    if name is not None:
        return np.asarray(store.load_npy(name, mmap=False))
    # its own seed stream, derived from the round's: the same select command draws the same set
    seed = int(np.random.SeedSequence([int(seed_used), 0x5709]).generate_state(1, dtype=np.uint64)[0] >> 1)
    rows = draw_stop_set(n, seed)
    name = store.write_npy(conn, "stopset", rows)
    for k, v in dict(stop_set_file=name, stop_set_seed=seed, stop_set_size=int(rows.size), stop_set_round=r).items():
        store.set_meta(conn, k, v)
    return rows


def _load(campaign, name: str) -> StopPredictions:
    with np.load(campaign._store.path_of(name), allow_pickle=False) as a:
        return StopPredictions.from_arrays(a)


def record_round(campaign, conn, r: int, preds, multilabel: bool, excluded: np.ndarray, seed_used: int) -> dict:
    """Store round ``r``'s stop-set predictions and signals (inside the ``select`` transaction).

    Parameters
    ----------
    preds : :class:`batchal.campaign.pool.Predictions`
        The round's predictions, aligned to the campaign's rows.
    excluded : bool array (n,)
        Rows labeled or pending before this round's batch: left out of the signals
        (see :mod:`batchal.stopping` for why).

    Returns
    -------
    dict : the signals (``kappa``, ``changed``, ``uncertainty``, ``uncertainty_kind``, ``n``).
    """
    store = campaign._store
    rows = _stop_set(campaign, conn, excluded.shape[0], seed_used, r)
    have = np.ones(rows.size, dtype=bool) if preds.have is None else np.asarray(preds.have)[rows]
    if preds.kind == "topk":
        sub = preds.array.take(rows)
    else:
        sub = np.asarray(preds.array[rows])
        if not have.all():  # rows without a prediction may hold anything: keep them out of the arithmetic
            sub = np.where(have[:, None], sub, 1.0 / sub.shape[1] if preds.kind == "probs" else 0.0)
    cur = stop_predictions(sub, kind=preds.kind, multilabel=multilabel, have=have)
    prev_row = conn.execute("SELECT round, preds_file FROM stop_rounds WHERE round < ? ORDER BY round DESC LIMIT 1",
                            (r,)).fetchone()
    prev = _load(campaign, prev_row[1]) if prev_row is not None else None
    if prev is not None and prev.multilabel != cur.multilabel:
        prev = None  # a switch between multi-class and multi-label predictions: nothing to compare
    sig = compare(prev, cur, ~excluded[rows])

    def _w(tmp):
        buf = io.BytesIO()
        np.savez(buf, **cur.arrays())
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
    name = store.write_file(conn, "stoppreds", ".npz", _w)
    conn.execute("INSERT INTO stop_rounds(round, preds_file, prev_round, n, kappa, changed, uncertainty, "
                 "uncertainty_kind) VALUES (?,?,?,?,?,?,?,?)",
                 (r, name, prev_row[0] if prev is not None else None, sig["n"], sig["kappa"], sig["changed"],
                  sig["uncertainty"], sig["uncertainty_kind"]))
    return sig


def stop_rounds(conn) -> dict:
    """``{round: {kappa, changed, uncertainty, uncertainty_kind, n, prev_round}}`` of every round with signals."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name='stop_rounds'").fetchone() is None:
        return {}  # a campaign made before the stop signals, not written since
    return {r: dict(kappa=k, changed=c, uncertainty=u, uncertainty_kind=uk, n=n, prev_round=p)
            for r, k, c, u, uk, n, p in conn.execute(
                "SELECT round, kappa, changed, uncertainty, uncertainty_kind, n, prev_round FROM stop_rounds "
                "ORDER BY round")}


def advice(signals: dict) -> str | None:
    """The rule applied to the recorded rounds' kappas (in round order): a sentence, or None."""
    rs = sorted(signals)
    return stop_advice([signals[r]["kappa"] for r in rs], labels=rs)
