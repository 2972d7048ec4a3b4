"""``campaign report``: the campaign as one self-contained HTML page.

Everything is inside the one file: the plots are PNG images inlined as base64
``data:`` URLs and the page has no script, stylesheet, font or image from
anywhere else, so it opens the same from a laptop, an e-mail attachment or an
air-gapped machine, and loading it makes no network request. Sections: a short
summary, labels per round and per class (and the classes found over time), the
batches' composition (margins, clusters hit, the redundancy diagnostic), the
stopping signals against the rule, the user's metrics.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from ..io import atomic_write
from .stop import RULE
from ..stopping import KAPPA_THRESHOLD

__all__ = ["write_report", "render_report", "report_data"]


def report_data(campaign) -> dict:
    """What the page shows: :meth:`Campaign.status` plus each round's batch margins, clusters hit and diagnostics."""
    from .status import status

    s = status(campaign)
    batches = {}
    with campaign._store.read() as conn:
        clusters = campaign._clusters(conn)
        diag = {}
        for (detail,) in conn.execute("SELECT detail FROM history WHERE command='select' ORDER BY seq"):
            d = json.loads(detail)
            diag[d.get("round")] = d.get("diagnostics") or {}
        for r in [x["round"] for x in s["rounds"]]:
            got = conn.execute("SELECT row, score FROM batch_items WHERE round=?", (r,)).fetchall()
            rows = np.array([g[0] for g in got], dtype=np.int64)
            scores = np.array([np.nan if g[1] is None else g[1] for g in got], dtype=np.float64)
            hit = None
            if clusters is not None and rows.size:
                c = np.asarray(clusters)[rows[rows < clusters.shape[0]]]
                hit = int(np.unique(c).size)
            batches[r] = dict(scores=scores, clusters_hit=hit, size=int(rows.size), diagnostics=diag.get(r, {}))
    return dict(status=s, batches=batches)


def _png(fig) -> str:
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    for ax in fig.axes:  # rounds are whole numbers (a boxplot labels its own positions: left as it is)
        if isinstance(ax.xaxis.get_major_formatter(), ScalarFormatter):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(data: dict) -> list[tuple[str, str, str]]:
    """``(id, title, base64 PNG)`` of each plot; a plot with nothing to show is left out (and said so in text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, batches = data["status"], data["batches"]
    rounds = s["rounds"]
    x = np.array([r["round"] for r in rounds])
    out = []
    if not rounds:
        return out
    # labels per round and per class, and the classes found so far
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    totals: dict = {}
    for r in rounds:
        for k, v in r["labels"].items():
            totals[k] = totals.get(k, 0) + v
    names = [k for k, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:10]]
    bottom = np.zeros(len(rounds))
    for k in names + (["other"] if len(totals) > len(names) else []):
        vals = np.array([r["labels"].get(k, 0) if k != "other" else
                         sum(v for kk, v in r["labels"].items() if kk not in names) for r in rounds], dtype=float)
        a1.bar(x, vals, bottom=bottom, label=k)
        bottom += vals
    a1.bar(x, [r["pending"] + r["returned"] for r in rounds], bottom=bottom, color="#cccccc",
           label="pending / returned")
    a1.set(xlabel="round", ylabel="items", title="labels per round and class")
    a1.legend(fontsize=7, loc="upper left")
    seen: set = set()
    found = []
    for r in rounds:
        seen |= {c for lab in r["labels"] for c in lab.split("|")}
        found.append(len(seen))
    a2.plot(x, found, "o-", color="#4472c4")
    if s.get("classes"):
        a2.axhline(len(s["classes"]), ls="--", color="#999999", label=f"{len(s['classes'])} classes")
        a2.legend(fontsize=8)
    a2.set(xlabel="round", ylabel="classes", title="classes found so far (rare classes appear late)")
    a2.set_ylim(bottom=0)
    fig.tight_layout()
    out.append(("plot-labels", "Labels per round and class", _png(fig)))
    plt.close(fig)
    # batch composition
    fig, (b1, b2) = plt.subplots(1, 2, figsize=(11, 3.8))
    sc = [batches[r]["scores"][np.isfinite(batches[r]["scores"])] for r in x.tolist()]
    if any(v.size for v in sc):
        b1.boxplot([v if v.size else [np.nan] for v in sc], positions=x, widths=0.5, showfliers=False)
        b1.set(xlabel="round", ylabel="margin at selection (small = uncertain)", title="batch margins")
    else:
        b1.text(0.5, 0.5, "no predictions: no margins", ha="center", va="center", transform=b1.transAxes)
        b1.set(title="batch margins")
    hit = [batches[r]["clusters_hit"] for r in x.tolist()]
    size = [batches[r]["size"] for r in x.tolist()]
    if any(h is not None for h in hit):
        b2.bar(x - 0.2, size, 0.4, label="items", color="#a5a5a5")
        b2.bar(x + 0.2, [h or 0 for h in hit], 0.4, label="clusters hit", color="#4472c4")
        nd = [batches[r]["diagnostics"].get("margin_batch_near_duplicate_share") for r in x.tolist()]
        if any(v is not None for v in nd):
            t = b2.twinx()
            t.plot(x, [np.nan if v is None else 100 * v for v in nd], "s-", color="#ed7d31",
                   label="near-duplicates in margin's batch (%)")
            t.set_ylabel("near-duplicate share (%)")
            t.set_ylim(0, 100)
            t.legend(fontsize=7, loc="upper right")
        b2.legend(fontsize=7, loc="upper left")
    else:
        b2.bar(x, size, 0.5, color="#a5a5a5", label="items")
        b2.legend(fontsize=7)
    b2.set(xlabel="round", ylabel="count", title="batch size and clusters hit")
    fig.tight_layout()
    out.append(("plot-batches", "Batch composition", _png(fig)))
    plt.close(fig)
    # stopping signals
    st = [r.get("stop") or {} for r in rounds]
    if any(v for v in st):
        fig, (c1, c2) = plt.subplots(1, 2, figsize=(11, 3.8))
        k = [np.nan if v.get("kappa") is None else v["kappa"] for v in st]
        c1.plot(x, k, "o-", color="#4472c4", label="kappa (successive rounds)")
        c1.axhline(KAPPA_THRESHOLD, ls="--", color="#c00000", label=f"rule: >= {KAPPA_THRESHOLD:g} for 3 rounds")
        lo = np.nanmin(k) if np.isfinite(k).any() else 0.9
        c1.set_ylim(min(lo, KAPPA_THRESHOLD) - 0.02, 1.005)
        c1.set(xlabel="round", ylabel="Cohen's kappa", title="prediction stability on the stop set")
        c1.legend(fontsize=7, loc="lower right")
        ch = [np.nan if v.get("changed") is None else 100 * v["changed"] for v in st]
        un = [np.nan if v.get("uncertainty") is None else v["uncertainty"] for v in st]
        c2.plot(x, ch, "o-", color="#ed7d31", label="changed predictions (%)")
        c2.set(xlabel="round", ylabel="changed (%)", title="changed predictions and uncertainty")
        c2.set_ylim(bottom=0, top=max(1.0, 1.1 * np.nanmax(ch)) if np.isfinite(ch).any() else 1.0)
        t = c2.twinx()
        t.plot(x, un, "s--", color="#70ad47", label="mean uncertainty")
        t.set_ylabel("mean uncertainty")
        c2.legend(fontsize=7, loc="upper left")
        t.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        out.append(("plot-stop", "Stopping signals", _png(fig)))
        plt.close(fig)
    # user metrics
    names = sorted({n for r in rounds for n in r.get("metrics", {})})
    if names:
        fig, ax = plt.subplots(figsize=(11, 3.4))
        for n in names:
            ax.plot(x, [r["metrics"].get(n, np.nan) for r in rounds], "o-", label=n)
        ax.set(xlabel="round", ylabel="value", title="your metrics per round")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(("plot-metrics", "Your metrics", _png(fig)))
        plt.close(fig)
    return out


def _summary(data: dict) -> list[str]:
    s = data["status"]
    rounds = s["rounds"]
    lines = [f"{s['pool']:,} items in the pool; {s['labeled']:,} labeled over {len(rounds)} round(s), "
             f"{s['pending']:,} pending, {s['available']:,} available."]
    seen = {c for r in rounds for lab in r["labels"] for c in lab.split("|")}
    if rounds:
        lines.append(f"{len(seen)} class(es) found" + (f" of {len(s['classes'])}." if s.get("classes") else "."))
    last = next((r for r in reversed(rounds) if r.get("stop")), None)
    if last is not None:
        st = last["stop"]
        k = "n/a (first round with predictions)" if st["kappa"] is None else f"{st['kappa']:.4f}"
        ch = "n/a" if st["changed"] is None else f"{100 * st['changed']:.2f}%"
        lines.append(f"Round {last['round']}: kappa {k} against round {st['prev_round']}, changed {ch}, "
                     f"mean uncertainty {st['uncertainty']:.4f} ({st['uncertainty_kind']}) on {st['n']:,} "
                     "stop-set items.")
    lines.append(f"Stop rule: {RULE}. " + (f"Advice: {s['stop_advice']}." if s.get("stop_advice") else
                                            "The rule does not hold yet."))
    m = next((r for r in reversed(rounds) if r.get("metrics")), None)
    if m is not None:
        lines.append(f"Latest metrics (round {m['round']}): "
                     + ", ".join(f"{k} {v:.4g}" for k, v in m["metrics"].items()) + ".")
    else:
        lines.append("No metrics recorded (`batchal campaign metric DIR --round N --name val_acc --value X`).")
    return lines


def _table(rounds: list) -> str:
    head = ("<tr><th>round</th><th>state</th><th>selected</th><th>labeled</th><th>kappa</th><th>changed</th>"
            "<th>uncertainty</th><th>metrics</th></tr>")
    body = []
    for r in rounds:
        st = r.get("stop") or {}
        f = lambda v, pct=False: "" if v is None else (f"{100 * v:.2f}%" if pct else f"{v:.4f}")  # noqa: E731
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r["round"], "open" if r["open"] else "closed", f"{r['selected']:,}", f"{r['labeled']:,}",
            f(st.get("kappa")), f(st.get("changed"), True), f(st.get("uncertainty")),
            ", ".join(f"{k} {v:.4g}" for k, v in r.get("metrics", {}).items()))) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def render_report(data: dict) -> str:
    """The page's HTML for :func:`report_data`'s output."""
    s = data["status"]
    plots = _plots(data)
    parts = [f"<p>{html.escape(x)}</p>" for x in _summary(data)]
    parts.append(_table(s["rounds"]))
    for pid, title, b64 in plots:
        parts.append(f'<h2>{html.escape(title)}</h2>\n<img id="{pid}" alt="{html.escape(title)}" '
                     f'src="data:image/png;base64,{b64}">')
    if not any(p[0] == "plot-stop" for p in plots):
        parts.append("<h2>Stopping signals</h2><p>None yet: they come with the first round selected with "
                     "predictions.</p>")
    title = f"batchal campaign {s['campaign_id'][:8]}"
    style = ("body{font-family:sans-serif;max-width:1150px;margin:1em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 8px}"
             "img{max-width:100%;display:block}h2{font-size:17px;margin-top:1.4em}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p><code>{html.escape(s['campaign'])}</code></p>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_report(campaign, out) -> Path:
    """Write the campaign's page to ``out`` atomically (a crash leaves the old file or none, never half of one)."""
    out = Path(out)
    page = render_report(report_data(campaign))
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"), name="--out")
    return out
