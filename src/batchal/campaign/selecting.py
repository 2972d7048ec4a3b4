"""``campaign select``: open the next round and record its batch.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

import numpy as np

from .._validation import BatchalInputError, check_count
from .core import engine_arg
from .pool import format_ids, read_predictions
from .stop import record_round
from .store import crash_point, now

__all__ = ["Batch", "select"]


@dataclass
class Batch:
    """One round's batch.

    Attributes
    ----------
    round : int
    ids : list
        Item ids in selection order.
    scores : ndarray of float
        Each item's margin when selected (NaN without predictions); small = uncertain.
    predictions : list of str or None
        The model's top class (multi-label: classes with p >= 0.5, joined by ``|``).
    reused : bool
        True when the round was already open and this is its recorded batch.
    strategy : str
    seed : int
        The seed actually used (drawn and recorded when none was given).
    diagnostics : dict
        The selector's diagnostics (strategies that read clusters: ``k_m`` and the
        redundancy of the candidates); empty for a reused batch.
    """

    round: int
    ids: list
    scores: np.ndarray
    predictions: list
    reused: bool
    strategy: str
    seed: int
    timings: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.ids)


def select(campaign, batch_size: int, predictions=None, *, strategy: str | None = None, seed: int | None = None,
           id_column: str | None = None, probs_column: str | None = None, logits_column: str | None = None,
           multilabel: bool = False, aggregate: str = "min", engine=None, config=None,
           exclude_duplicates: bool = False) -> Batch:
    """Open the next round and select its batch among items neither labeled nor pending.

    Parameters
    ----------
    batch_size : int
    predictions : path, optional
        Parquet (an id column and a ``probs`` or ``logits`` list column, or the
        top-k layout: ``top_classes`` and ``top_probs`` list columns) or a
        ``.npy`` of shape (n, C) (``.npz`` of the two top-k arrays) in the
        campaign's row order. Needed by every
        strategy that reads predictions; items that can be selected must all
        have one (labeled and pending items may be missing).
    strategy : str
        A strategy spec, e.g. ``cluster-margin:margin_factor=2`` (default: the recommended one).
    seed : int, optional
        Same seed, same batch; without one a seed is drawn and recorded.
    engine : Engine or {"local", "ray"}, optional
        Where the predictions are scored and the most uncertain items found
        (default: local). The ray engine runs random, margin, entropy,
        least-confidence and cluster-margin (any spec of them); another
        strategy is refused before anything is read or written. The engine
        only computes: the batch is the local engine's for the same inputs
        and seed, and what is recorded (batch, scores file, round) is the same
        for every engine. The predictions are read and aligned by id on this
        machine, as locally, and handed to the engine as an array.

    config : path or SelectionConfig, optional
        A selection config (:mod:`batchal.selection_config`): strategy,
        balance, thresholds, filters and ``balance_by`` on the columns of the
        campaign's own Parquet pool, a query set (``query_ids`` are campaign
        ids), candidates, ``[dedup] exclude``. Validated before anything is
        read; its resolved form (shares inlined, files hashed) is stored with
        the round and shown by ``status()``.
    exclude_duplicates : bool
        Keep items that are not their near-duplicate group's representative
        out of the batch (:meth:`Campaign.dedup` first). Items with a
        propagated label are never candidates, with or without it.

    A share table of ``balance`` may name the campaign's classes (``--classes``)
    instead of their column ids; ``balance_by=COLUMN`` reads a column of the
    campaign's Parquet pool.

    While the round is open, calling it again with the same batch size,
    strategy, seed, predictions and config returns the recorded batch; anything
    different is an error (label or close the round first).
    """
    import time

    from ..engines import check_strategy
    from ..selectors import RECOMMENDED, Pool
    from ..selectors.spec import parse_spec

    check_count(batch_size, "--batch-size", 1)
    if seed is not None:
        check_count(seed, "--seed", 0)
    cfg, resolved = _config(config, strategy)
    if cfg is not None:
        from ..selection_config import config_spec

        spec = config_spec(cfg, strategy if strategy is not None or cfg.strategy is not None else RECOMMENDED)
        exclude_duplicates = exclude_duplicates or bool(cfg.dedup.get("exclude"))
    else:
        spec = parse_spec(strategy or RECOMMENDED)
    check_strategy("local" if engine is None else engine, spec)  # before the lock: nothing is touched
    t0 = time.perf_counter()
    with campaign._store.write("select") as conn:
        index = campaign._index(conn)
        n = index.n
        preds = None
        t_open = time.perf_counter()
        if predictions is not None:
            vocab = campaign._meta(conn, "classes")
            preds = read_predictions(predictions, index, id_column=id_column or campaign._meta(conn, "id_column"),
                                     probs_column=probs_column, logits_column=logits_column, multilabel=multilabel,
                                     n_classes=len(vocab) if vocab else None)
        t1 = time.perf_counter()
        opened = conn.execute("SELECT round, batch_size, strategy, seed, predictions_sha256, seed_used, multilabel "
                              "FROM rounds WHERE status='open'").fetchone()
        if opened is not None:
            return _reuse(campaign, conn, opened, batch_size, spec.text, seed, preds, multilabel, predictions,
                          resolved)
        excluded = np.zeros(n, dtype=bool)
        active = np.fromiter((r for (r,) in conn.execute("SELECT row FROM batch_items WHERE returned=0 UNION ALL "
                                                         "SELECT row FROM propagated")), dtype=np.int64)
        excluded[active] = True  # labeled (bought or propagated) or pending
        duplicates = None
        if exclude_duplicates:
            from .deduplicating import representatives

            _, rep = representatives(campaign, conn, "--exclude-duplicates")
            duplicates = np.zeros(n, dtype=bool)  # items added after the dedup are in no group: kept
            duplicates[: rep.shape[0]] = rep != np.arange(rep.shape[0])
        if preds is not None and preds.have is not None:
            missing = np.flatnonzero(~preds.have & ~excluded)
            if missing.size:
                raise BatchalInputError(
                    f"--predictions has no row for {missing.size:,} items that can be selected, e.g. "
                    f"{format_ids(index.take(missing[:5]))}; predict every item that is neither labeled nor pending")
        needs = spec.requires
        if "predictions" in needs and preds is None:
            raise BatchalInputError(f"strategy {spec.name!r} needs --predictions")
        classes = campaign._meta(conn, "classes")
        if preds is not None and preds.kind != "topk" and classes and preds.array.shape[1] != len(classes):
            raise BatchalInputError(f"--predictions has {preds.array.shape[1]} classes; the campaign has "
                                    f"{len(classes)} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
        clusters = campaign._clusters(conn)
        if "clusters" in needs and clusters is None:
            raise BatchalInputError(f"strategy {spec.name!r} needs the clustering: run `batchal campaign cluster "
                                    f"{campaign.path}` first")
        emb = campaign._embeddings(conn) if "embeddings" in needs or (cfg and cfg.similar) else None
        pool_clusters = clusters if "clusters" in needs else None
        if preds is None and emb is None and pool_clusters is None:
            # a strategy that reads nothing (random seed round): the Pool still needs its size
            pool_clusters = clusters if clusters is not None else np.zeros(n, dtype=np.int64)
        seed_used = int(seed) if seed is not None else secrets.randbits(63)
        probs = preds.array if preds is not None and preds.kind in ("probs", "topk") else None
        logits = preds.array if preds is not None and preds.kind == "logits" else None
        eng, owned = engine_arg(engine)  # made here, not earlier: a reused round needs none
        try:
            # excluded (labeled and pending items) is the pool's labeled set on every engine
            pool = eng.pool(probs=probs, logits=logits, embeddings=emb, clusters=pool_clusters,
                            labeled=excluded, multilabel=multilabel, aggregate=aggregate)
            pool.class_names = classes  # a balance share table may name the classes
            if spec.params.get("balance_by") is not None or (cfg is not None and cfg.metadata is None):
                from .exporting import PoolColumns

                pool.metadata = PoolColumns(campaign, conn, "balance_by" if cfg is None else f"--config {cfg.path}")
            if cfg is not None:
                from ..selection_config import apply_config

                # the config's rules narrow the candidates: rows outside them count as labeled for this pick
                spec, pool.labeled_mask = apply_config(
                    cfg, pool, emb, strategy=strategy if strategy is not None or cfg.strategy is not None
                    else RECOMMENDED, resolve_ids=lambda ids: index.rows(ids, "similar.query_ids"),
                    duplicates=duplicates)
            elif duplicates is not None:
                pool.labeled_mask = excluded | duplicates
            selector = spec.make(random_state=seed_used, defaults=dict(progress=False))
            idx = selector.select(pool, int(batch_size))
        finally:
            if owned:
                eng.close()
        t2 = time.perf_counter()
        r = conn.execute("SELECT coalesce(max(round) + 1, 1) FROM rounds").fetchone()[0]
        if preds is not None:
            # the scores file records every item's margin; a distributed pool never gathers them, so
            # they are scored here, from the predictions this machine read anyway
            scored = pool if not pool.distributed else Pool(probs=probs, logits=logits, multilabel=multilabel,
                                                            aggregate=aggregate)
            margin_all = -scored.uncertainty("margin")  # cached by the selector when it used margins
            if preds.have is not None:
                margin_all[~preds.have] = np.nan
            scores = margin_all[idx].astype(np.float64)
            labels = _top_labels(preds.array, idx, preds.kind, multilabel, classes)
            scores_file = campaign._store.write_npy(conn, "scores", margin_all.astype(np.float32))
        else:
            scores = np.full(idx.shape[0], np.nan)
            labels = [None] * idx.shape[0]
            scores_file = None
        conn.execute(
            "INSERT INTO rounds(round, status, batch_size, strategy, seed, seed_used, predictions, "
            "predictions_sha256, multilabel, scores_file, opened_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (r, "open", int(batch_size), spec.text, seed, seed_used, preds.source if preds else None,
             preds.sha256 if preds else None, int(multilabel), scores_file, now()))
        item_ids = index.take(idx)
        by_row = np.argsort(idx)  # inserted in row order: the index on row grows at one end, not at random
        sc = [None if s != s else s for s in scores.tolist()]
        conn.executemany(
            "INSERT INTO batch_items(round, pos, row, item_id, score, pred) VALUES (?,?,?,?,?,?)",
            ((r, j, int(idx[j]), item_ids[j], sc[j], labels[j]) for j in by_row.tolist()))
        if resolved is not None:
            conn.execute("INSERT INTO round_configs(round, config, sha256) VALUES (?,?,?)",
                         (r, json.dumps(resolved), _sha(resolved)))
        crash_point("select:inserted")
        stop = None
        if preds is not None:
            # in this transaction: a round never has its batch without its stop-set signals, nor the reverse
            stop = record_round(campaign, conn, r, preds, multilabel, excluded, seed_used)
            crash_point("select:signals")
        campaign._store.log(conn, "select", dict(round=r, batch_size=int(batch_size), strategy=spec.text,
                                                 seed=seed_used, stop=stop, diagnostics=_plain(selector)))
    t3 = time.perf_counter()
    return Batch(r, item_ids, scores, labels, False, spec.text, seed_used,
                 dict(open=t_open - t0, read=t1 - t_open, select=t2 - t1, record=t3 - t2),
                 dict(getattr(selector, "diagnostics_", {}) or {}))


def _plain(selector) -> dict:
    """The selector's diagnostics as JSON numbers (kept in the history for the report's batch composition)."""
    out = {}
    for k, v in (getattr(selector, "diagnostics_", None) or {}).items():
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, np.generic):
            out[k] = v.item()
    return out


def _config(config, strategy):
    """``(SelectionConfig, resolved dict)`` of ``select(config=...)``, or ``(None, None)``."""
    if config is None:
        return None, None
    from ..selection_config import SelectionConfig, load_config

    cfg = config if isinstance(config, SelectionConfig) else load_config(config, pool_columns=True)
    return cfg, cfg.resolved(strategy)


def _sha(resolved: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()


def _reuse(campaign, conn, opened, batch_size, strategy, seed, preds, multilabel, predictions, resolved) -> Batch:
    r, k0, strat0, seed0, sha0, seed_used, ml0 = opened
    diffs = []
    cfg0 = conn.execute("SELECT sha256 FROM round_configs WHERE round=?", (r,)).fetchone()
    if (cfg0[0] if cfg0 else None) != (_sha(resolved) if resolved is not None else None):
        diffs.append("another --config" if cfg0 and resolved is not None else
                     ("a --config" if cfg0 else "no --config"))
        strategy = strat0  # the config's difference is the one to name
    if k0 != batch_size:
        diffs.append(f"--batch-size {k0} (not {batch_size})")
    if strat0 != strategy:
        diffs.append(f"--strategy {strat0} (not {strategy})")
    if seed0 != seed:
        diffs.append(f"--seed {seed0} (not {seed})")
    if sha0 != (preds.sha256 if preds is not None else None):
        diffs.append("other predictions" if preds is not None and sha0 else
                     ("no predictions" if sha0 is None else "predictions (none given now)"))
    if bool(ml0) != bool(multilabel):
        diffs.append(f"multilabel={bool(ml0)}")
    if diffs:
        pending = conn.execute("SELECT count(*) FROM batch_items b WHERE round=? AND returned=0 AND NOT EXISTS "
                               "(SELECT 1 FROM labels l WHERE l.row=b.row)", (r,)).fetchone()[0]
        raise BatchalInputError(
            f"round {r} is open, selected with {', '.join(diffs)}; {pending:,} of its items await labels. "
            f"Run the same command to get that batch again, or finish the round first "
            f"(`batchal campaign label {campaign.path} LABELS`, or `--close` to return unlabeled items to the pool)")
    rows = conn.execute("SELECT item_id, score, pred FROM batch_items WHERE round=? ORDER BY pos", (r,)).fetchall()
    ids = [x[0] for x in rows]
    scores = np.array([np.nan if x[1] is None else x[1] for x in rows], dtype=np.float64)
    return Batch(r, ids, scores, [x[2] for x in rows], True, strat0, seed_used)


def _top_labels(array, idx: np.ndarray, kind: str, multilabel: bool, classes) -> list:
    """The model's answer for each selected row, as a label: top class, or every class with p >= 0.5."""
    from .labels import canonical_label

    from ..topk import TopK

    if isinstance(array, TopK):
        # top-k rows: the first entry (multi-class), or the listed classes with p >= 0.5 (multi-label: classes
        # left out of the k nearest 0.5 are unknown, so a confident positive may be missing from the pre-annotation)
        t = array.take(idx)
        names = np.array(classes if classes else [str(i) for i in range(int(t.classes.max()) + 1)], dtype=object)
        if not multilabel:
            return names[t.classes[:, 0]].tolist()
        pos = t.probs >= 0.5
        out = [None] * t.n
        for i in np.flatnonzero(pos.any(axis=1)).tolist():  # rows with no listed positive stay None
            out[i] = canonical_label(names[t.classes[i][pos[i]]].tolist())
        return out
    A = np.asarray(array[idx], dtype=np.float64)
    names = np.array(classes if classes else [str(i) for i in range(A.shape[1])], dtype=object)
    if not multilabel:
        return names[A.argmax(axis=1)].tolist()
    P = A if kind == "probs" else 1.0 / (1.0 + np.exp(-np.clip(A, -500, 500)))
    return [canonical_label(names[row >= 0.5].tolist()) or None for row in P]
