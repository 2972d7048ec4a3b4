"""Cluster report: what a cut looks like, written next to the cluster ids.

A user picks eps (or a mean cluster size) before spending labels; the report
shows the consequences: how many clusters, how big, how many singletons (the
smallest-first round-robin of Cluster-Margin visits singletons first, so a
large singleton share means the batch fills with outliers).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _stem_path(out_path, suffix: str) -> Path:
    p = Path(out_path)
    return p.with_name(p.name[: -len(p.suffix)] + suffix if p.suffix else p.name + suffix)


def cluster_summary(labels: np.ndarray) -> dict:
    """Size statistics of a flat clustering (labels 0..K-1)."""
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    sizes = np.bincount(labels) if n else np.zeros(0, dtype=np.int64)
    sizes = sizes[sizes > 0]
    k = int(sizes.shape[0])
    singletons = int((sizes == 1).sum())
    return {
        "n": n,
        "n_clusters": k,
        "mean_size": float(n / k) if k else 0.0,
        "median_size": float(np.median(sizes)) if k else 0.0,
        "max_size": int(sizes.max()) if k else 0,
        "singletons": singletons,
        "singleton_share": float(singletons / k) if k else 0.0,
        "rows_in_singletons_share": float(singletons / n) if n else 0.0,
        "size_quantiles": {q: float(np.quantile(sizes, float(q))) for q in ("0.1", "0.5", "0.9", "0.99")} if k else {},
    }


def report_paths(out_path) -> tuple[Path, Path]:
    """The report's two files beside a cluster-id output: ``<stem>.report.json`` and ``<stem>.sizes.png``."""
    return _stem_path(out_path, ".report.json"), _stem_path(out_path, ".sizes.png")


def _plot_sizes(labels: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = np.bincount(labels)
    sizes = sizes[sizes > 0]
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(2, int(sizes.max()))
    bins = np.unique(np.logspace(0, np.log10(top + 1), 40).astype(int))
    ax.hist(sizes, bins=bins, color="#4472c4", edgecolor="white")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cluster size (rows)")
    ax.set_ylabel("number of clusters")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    from ..io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def cluster_report(model) -> dict:
    """The report of a fitted :class:`batchal.clustering.AverageLinkage`, without writing it."""
    labels = np.asarray(model.labels_)
    rep = cluster_summary(labels)
    timings = {}
    for k, v in getattr(model, "timings_", {}).items():
        if isinstance(v, (list, tuple, dict)):  # e.g. the per-step timestamps
            continue
        timings[k] = float(v) if isinstance(v, (float, np.floating)) else (int(v) if isinstance(v, (int, np.integer)) else str(v))
    rep.update({
        "threshold": float(model.threshold_),
        "metric": getattr(model, "metric", None),
        "method": model.method_,
        "method_reason": model.method_reason_,
        "knn": getattr(model, "knn", None) if model.method_ == "graph" else None,
        "timings": timings,
    })
    return rep


def write_report(model, out_path) -> dict:
    """Write ``<stem>.report.json`` and ``<stem>.sizes.png`` next to ``out_path``.

    Parameters
    ----------
    model : fitted :class:`batchal.clustering.AverageLinkage`
    out_path : path of the cluster-id output (e.g. ``C.npy``)

    Returns
    -------
    dict : the report (also written as JSON).
    """
    from ..io import atomic_write

    rep = cluster_report(model)
    json_path, png_path = report_paths(out_path)
    rep["histogram"] = str(png_path)
    if rep["n_clusters"]:
        _plot_sizes(np.asarray(model.labels_), png_path, f"{rep['n_clusters']:,} clusters of {rep['n']:,} rows "
                    f"({model.method_}, threshold {rep['threshold']:.4g})")
    text = json.dumps(rep, indent=1)
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    rep["report"] = str(json_path)
    return rep


def format_report(d: dict, method: bool = True) -> str:
    """Human-readable lines for a report dict from :func:`write_report`.

    ``method=False`` leaves out the method line (the CLI prints it before a long run).
    """
    # a saved tree does not record its metric: its threshold is in whatever metric built it
    metric = f"metric {d['metric']}" if d.get("metric") else "in the tree's metric"
    lines = [
        f"clusters: {d['n_clusters']:,} over {d['n']:,} rows (threshold {d['threshold']:.6g}, {metric})",
        f"size: mean {d['mean_size']:.2f}, median {d['median_size']:.0f}, max {d['max_size']:,}",
        f"singletons: {d['singletons']:,} = {100 * d['singleton_share']:.1f}% of clusters, "
        f"{100 * d['rows_in_singletons_share']:.1f}% of rows",
    ]
    knn = f", k={d['knn']}" if d.get("knn") else ""
    if method:
        lines.append(f"method: {d['method']} ({d['method_reason']}){knn}")
    elif knn:
        lines.append(f"kNN graph: {d['knn']} neighbours per row")
    t = d.get("timings") or {}
    steps = [f"{k} {v:.1f}s" for k, v in t.items() if isinstance(v, float) and k in ("knn", "symmetrize", "merge", "join_components", "hac", "total")]
    if steps:
        lines.append("time: " + ", ".join(steps))
    if d.get("report"):
        lines.append(f"report: {d['report']}")
    if d.get("histogram"):
        lines.append(f"size histogram: {d['histogram']}")
    return "\n".join(lines)
