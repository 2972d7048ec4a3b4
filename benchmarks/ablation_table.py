#!/usr/bin/env python
"""Compare cluster-margin variants (ablation runs) with the baselines of a main run.

The simulator seeds trial ``t`` identically in every run with the same ``--seed``,
so an ablation run that only re-runs cluster-margin (other margin factor or
cluster size) pairs trial by trial with the margin and random curves of the
main run.

Usage::

    python benchmarks/ablation_table.py "F=10=MAIN/results.csv" "F=2=ABL2/results.csv" "F=3=ABL3/results.csv"

Each argument is LABEL=PATH; the first run also provides the margin and random curves.
"""
from __future__ import annotations

import csv
import sys

import numpy as np

from batchal.simulate.report import _by, _sem, savings_table


def read_rows(path, rename=None):
    rows = []
    with open(path) as fh:
        for r in csv.DictReader(fh):
            row = {"strategy": r["strategy"], "trial": int(r["trial"]), "round": int(r["round"]),
                   "n_labeled": int(r["n_labeled"]), "accuracy": float(r["accuracy"])}
            if r.get("batch_mean_margin"):
                row["batch_mean_margin"] = float(r["batch_mean_margin"])
            if rename and row["strategy"] == "cluster-margin":
                row["strategy"] = rename
            rows.append(row)
    return rows


def table(main_csv: str, variants: list[tuple[str, str]], main_label: str = "F=10") -> str:
    rows = read_rows(main_csv, rename=f"cluster-margin ({main_label})")
    for label, path in variants:
        rows += read_rows(path, rename=f"cluster-margin ({label})")
    names = [f"cluster-margin ({main_label})"] + [f"cluster-margin ({lab})" for lab, _ in variants]
    base = [s for s in ("margin", "random") if any(r["strategy"] == s for r in rows)]
    _, racc = _by(rows, "random")
    target = float(np.nanmean(racc[-1]))
    sav = savings_table(rows, names + base, target)
    _, macc = _by(rows, "margin")
    out = [f"Target: random's final mean accuracy {target:.4f}.", "",
           "| variant | final accuracy | labels to reach target | saving vs random | rounds vs margin (above / within / below) | mean margin of batch |",
           "|---|---:|---:|---:|---|---:|"]
    for s in names + base:
        lab, acc = _by(rows, s)
        L = np.asarray(sav[s]["labels"], dtype=float)
        Ls = f"{np.nanmean(L):,.0f}" if np.isfinite(L).any() else "not reached"
        if np.isfinite(L).sum() < L.size:
            Ls += f" ({int((~np.isfinite(L)).sum())} never)"
        v = sav[s].get("vs_random")
        vs = "—" if v is None else f"{'≥ ' if v[2] else ''}{100 * v[0]:+.1f}% ± {100 * v[1]:.1f}"
        cmp = "—"
        if s != "margin":
            d = acc[1:] - macc[1:]
            m, e = np.nanmean(d, axis=1), _sem(d, axis=1)
            above = int(np.sum((m > 2 * e) & (m > 0)))
            below = int(np.sum((m < -2 * e) & (m < 0)))
            cmp = f"{above} / {d.shape[0] - above - below} / {below}"
        mm = [r["batch_mean_margin"] for r in rows if r["strategy"] == s and "batch_mean_margin" in r]
        out.append(f"| {s} | {np.nanmean(acc[-1]):.4f} ± {_sem(acc[-1]):.4f} | {Ls} | {vs} | {cmp} | "
                   f"{np.mean(mm) if mm else float('nan'):.3f} |")
    return "\n".join(out)


if __name__ == "__main__":
    (main_label, main), *rest = [tuple(a.rsplit("=", 1)) for a in sys.argv[1:]]
    print(table(main, rest, main_label))
