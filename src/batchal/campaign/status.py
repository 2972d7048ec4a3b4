"""``campaign status``: counts, stopping signals and metrics per round, as a dict (text and plots: :mod:`.report`)."""
from __future__ import annotations

import json

from .metrics import metrics as read_metrics
from .stop import RULE, advice, stop_rounds
from .store import has_table

__all__ = ["status"]


def status(campaign) -> dict:
    """Pool size, labeled, pending, available; per round: selected, labeled, open, label counts.

    Each round also carries ``stop`` (``kappa``, ``changed``, ``uncertainty``: the
    stopping signals on the stop set, None where undefined, e.g. the first round,
    or ``stop`` None for a round selected without predictions) and ``metrics``
    (the user's ``{name: value}``); the top level ``stop_advice`` is the
    documented rule's sentence when it holds, else None, and ``stop_rule`` the rule.

    ``labeled`` counts bought labels only; ``propagated`` (top level and per
    round) the labels copied from near-duplicate representatives
    (``campaign label --propagate``), which are not available for selection
    either. ``dedup`` describes the recorded near-duplicate groups (None: none);
    a round selected with ``--config`` carries its resolved ``config``.
    """
    with campaign._store.read() as conn:
        n = campaign._meta(conn, "n_items")
        rounds = []
        per = {r: (s, ret, lab) for r, s, ret, lab in conn.execute(
            "SELECT b.round, count(*), sum(b.returned), count(l.row) FROM batch_items b LEFT JOIN labels l "
            "ON l.row=b.row AND l.round=b.round GROUP BY b.round")}
        dist: dict = {}
        for r, lab, c in conn.execute("SELECT round, label, count(*) FROM labels GROUP BY round, label"):
            dist.setdefault(r, {})[lab] = c
        for r, status, k, strat, opened, closed, reason in conn.execute(
                "SELECT round, status, batch_size, strategy, opened_at, closed_at, close_reason FROM rounds "
                "ORDER BY round"):
            s, ret, lab = per.get(r, (0, 0, 0))
            rounds.append(dict(round=r, selected=s, labeled=lab, pending=s - ret - lab if status == "open" else 0,
                               returned=ret, open=status == "open", strategy=strat, opened_at=opened,
                               closed_at=closed, close_reason=reason,
                               labels=dict(sorted(dist.get(r, {}).items(), key=lambda kv: -kv[1]))))
        prop, configs, dedup = {}, {}, None
        if has_table(conn, "propagated"):  # a campaign made before them, not written since, has none
            prop = dict(conn.execute("SELECT round, count(*) FROM propagated GROUP BY round").fetchall())
            configs = {r: json.loads(c) for r, c in conn.execute("SELECT round, config FROM round_configs")}
            d = conn.execute("SELECT gen, params, source, n_rows, n_groups, groups_file FROM dedup "
                             "ORDER BY gen DESC LIMIT 1").fetchone()
            if d is not None:
                dedup = dict(gen=d[0], **json.loads(d[1]), source=d[2], n_groups=d[4], duplicates=d[3] - d[4],
                             groups_file=d[5])
        for x in rounds:
            x["propagated"] = prop.get(x["round"], 0)
            x["config"] = configs.get(x["round"])
        signals = stop_rounds(conn)
        user = read_metrics(conn)
        for x in rounds:
            sig = signals.get(x["round"])
            x["stop"] = None if sig is None else {k: sig[k] for k in ("kappa", "changed", "uncertainty",
                                                                      "uncertainty_kind", "n", "prev_round")}
            x["metrics"] = user.get(x["round"], {})
        stop_set = dict(size=campaign._meta(conn, "stop_set_size"), seed=campaign._meta(conn, "stop_set_seed"),
                        drawn_in_round=campaign._meta(conn, "stop_set_round"))
        labeled = conn.execute("SELECT count(*) FROM labels").fetchone()[0]
        cl = conn.execute("SELECT params, threshold, report FROM clustering ORDER BY gen DESC LIMIT 1").fetchone()
        shards = conn.execute("SELECT count(*) FROM shards").fetchone()[0]
        info = dict(campaign=str(campaign.path), campaign_id=campaign._meta(conn, "campaign_id"),
                    classes=campaign._meta(conn, "classes"))
    pending = sum(x["pending"] for x in rounds)
    propagated = sum(x["propagated"] for x in rounds)
    clustering = None
    if cl is not None:
        rep = json.loads(cl[2])
        clustering = dict(params=json.loads(cl[0]), threshold=cl[1], n_clusters=rep.get("n_clusters"),
                          singleton_share=rep.get("singleton_share"))
    return dict(info, pool=n, labeled=labeled, propagated=propagated, pending=pending,
                available=n - labeled - pending - propagated, shards=shards, clustering=clustering, dedup=dedup,
                rounds=rounds,
                stop_set=stop_set if stop_set["size"] is not None else None, stop_rule=RULE,
                stop_advice=advice(signals))
