"""Status of a campaign as text and as a plot (the HTML page: :mod:`.report_html`)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["format_status", "plot_status"]


def format_status(s: dict, top: int = 5) -> str:
    """Readable lines for :meth:`Campaign.status`."""
    lines = [
        f"campaign {s['campaign']} ({s['campaign_id'][:8]})",
        f"pool {s['pool']:,} items in {s['shards']} shard(s): {s['labeled']:,} labeled, "
        + (f"{s['propagated']:,} propagated (not bought), " if s.get("propagated") else "")
        + f"{s['pending']:,} pending, {s['available']:,} available",
    ]
    d = s.get("dedup")
    if d:
        lines.append(f"near-duplicates: {d['n_groups']:,} groups over {d['n_rows']:,} items, {d['duplicates']:,} "
                     f"not representatives ({d['metric']} <= {d['threshold']:g}; {d['source']})")
    cl = s.get("clustering")
    if cl:
        lines.append(f"clustering: {cl['n_clusters']:,} clusters (threshold {cl['threshold']:.4g}, "
                     f"{cl['params']['metric']}, singletons {100 * (cl['singleton_share'] or 0):.1f}% of clusters)")
    else:
        lines.append("clustering: none yet (`batchal campaign cluster`)")
    if not s["rounds"]:
        lines.append("rounds: none yet (`batchal campaign select`)")
    for r in s["rounds"]:
        state = "open" if r["open"] else "closed"
        extra = f", {r['pending']:,} pending" if r["open"] else ""
        extra += f", {r['returned']:,} returned" if r["returned"] else ""
        dist = ", ".join(f"{k}: {v:,}" for k, v in list(r["labels"].items())[:top])
        if len(r["labels"]) > top:
            dist += f", ... ({len(r['labels'])} labels)"
        lines.append(f"round {r['round']} [{state}] {r['strategy']}: {r['selected']:,} selected, "
                     f"{r['labeled']:,} labeled{extra}"
                     + (f", {r['propagated']:,} propagated" if r.get("propagated") else "") + (f"; {dist}" if dist else ""))
        st = r.get("stop")
        if st is not None:
            lines.append(f"  stop signals on {st['n']:,} stop-set items: kappa {_num(st['kappa'])}, "
                         f"changed {_pct(st['changed'])}, uncertainty {_num(st['uncertainty'])} "
                         f"({st['uncertainty_kind']})" + ("" if st["prev_round"] is not None else
                                                         " (first round with predictions: nothing to compare)"))
        if r.get("metrics"):
            lines.append("  metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in r["metrics"].items()))
    if s.get("stop_set"):
        lines.append(f"stop rule: {s['stop_rule']}")
        lines.append(f"advice: {s['stop_advice']}" if s.get("stop_advice") else
                     "advice: the stop rule does not hold yet")
    return "\n".join(lines)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def plot_status(s: dict, path, top: int = 8) -> Path:
    """Per round: items selected, labeled, returned (bars) and the label distribution (stacked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..io import atomic_write

    rounds = s["rounds"]
    x = np.array([r["round"] for r in rounds])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if rounds:
        w = 0.27
        ax1.bar(x - w, [r["selected"] for r in rounds], w, label="selected", color="#4472c4")
        ax1.bar(x, [r["labeled"] for r in rounds], w, label="labeled", color="#70ad47")
        ax1.bar(x + w, [r["pending"] + r["returned"] for r in rounds], w, label="pending / returned", color="#ed7d31")
        totals: dict = {}
        for r in rounds:
            for k, v in r["labels"].items():
                totals[k] = totals.get(k, 0) + v
        names = [k for k, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]
        bottom = np.zeros(len(rounds))
        for k in names + (["other"] if len(totals) > top else []):
            vals = np.array([r["labels"].get(k, 0) if k != "other" else
                             sum(v for kk, v in r["labels"].items() if kk not in names) for r in rounds], dtype=float)
            ax2.bar(x, vals, bottom=bottom, label=k)
            bottom += vals
        ax2.legend(fontsize=7, loc="upper left")
        ax1.legend(fontsize=8)
    ax1.set_xlabel("round")
    ax1.set_ylabel("items")
    ax1.set_title(f"{s['labeled']:,} labeled, {s['pending']:,} pending of {s['pool']:,}", fontsize=9)
    ax2.set_xlabel("round")
    ax2.set_ylabel("labels")
    ax2.set_title("label distribution per round", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
