#!/usr/bin/env python
"""Low budgets (issue 20): typical members first (typiclust), against random, margin and the recommended spec.

Hacohen, Dekel & Weinshall (ICML 2022) find that with few labels per class,
typical examples beat uncertain ones, and uncertainty sampling can fall below
random. This replays small seed sets and small batches with ``batchal
simulate`` and prints one markdown table per configuration: mean accuracy per
round, each cell marked where it is below random (paired by trial, 2 standard
errors; ``v``) or above (``^``), and the labels each strategy needs to reach
random's final accuracy as a ratio to margin's (the simulator's rule).

Usage::

    python benchmarks/bench_low_budget.py run [CONFIG ...]     # each into benchmarks/results/low_budget/CONFIG/
    python benchmarks/bench_low_budget.py table [CONFIG ...]   # the markdown tables from those results
    python benchmarks/bench_low_budget.py scale                # typiclust's time: 30,000 of 1,000,000 rows
    python benchmarks/bench_low_budget.py run digits-s10-b10-mlp --training early-stop   # the MLP's rule

``--training`` passes the MLP's training rule to ``batchal simulate`` (default: the
simulator's own; the recorded MLP configuration states the rule it ran under).

The way-out spec ``RECOMMENDED + ":typical=50"`` takes typiclust's picks while the
labeled set holds fewer than 50 rows: 5 per class on these 10-class pools, the
range of Hacohen et al.'s low-budget experiments, not tuned here.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "low_budget"
REC = "cluster-margin:order=margin:dup=0.01"  # batchal.selectors.RECOMMENDED at the time of writing
SPECS = ["random", "margin", REC, "typiclust", REC + ":typical=50"]

#: name -> simulate arguments (5 trials each, logistic regression unless said)
CONFIGS = {
    "digits-s10-b10": ["--dataset", "digits", "--seed-size", "10", "--batch-size", "10", "--rounds", "10"],
    "digits-s20-b20": ["--dataset", "digits", "--seed-size", "20", "--batch-size", "20", "--rounds", "6"],
    "fmnist-s20-b20": ["--dataset", "fashion-mnist", "--size", "10000", "--seed-size", "20", "--batch-size", "20",
                       "--rounds", "8"],
    "fmnist-s100-b100": ["--dataset", "fashion-mnist", "--size", "10000", "--seed-size", "100", "--batch-size",
                         "100", "--rounds", "5"],
    "digits-s10-b10-mlp": ["--dataset", "digits", "--model", "mlp", "--seed-size", "10", "--batch-size", "10",
                           "--rounds", "10"],
}


def run(names, trials: int = 5, jobs: int = 2, training: str | None = None) -> None:
    for name in names:
        out = RESULTS / name
        cmd = [sys.executable, "-c", "from batchal.cli import app; app()", "simulate", *CONFIGS[name],
               "--trials", str(trials), "--jobs", str(jobs), "--strategies", ",".join(SPECS), "--out", str(out)]
        if training is not None:
            cmd += ["--training", training]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["trial"], r["round"], r["n_labeled"] = int(r["trial"]), int(r["round"]), int(r["n_labeled"])
        r["accuracy"] = float(r["accuracy"])
    return rows


def table(name: str) -> str:
    from batchal.simulate.report import _by, fmt_ratio, ratio_to_margin, verdict

    rows = _rows(RESULTS / name)
    specs = [s for s in SPECS if any(r["strategy"] == s for r in rows)]
    curves = {s: _by(rows, s) for s in specs}
    lab, racc = curves["random"]
    lines = [f"**{name}** (`{' '.join(CONFIGS.get(name, []))}`, 5 trials)", "",
             "| labels | " + " | ".join(f"`{s}`" for s in specs) + " |",
             "|---:|" + "---:|" * len(specs)]
    for i, n in enumerate(lab):
        cells = []
        for s in specs:
            acc = curves[s][1][i]
            mark = ""
            if s != "random" and i > 0:
                mark = {"below": " v", "above": " ^"}.get(verdict(acc - racc[i])[2], "")
            cells.append(f"{np.mean(acc):.3f}{mark}")
        lines.append(f"| {int(n)} | " + " | ".join(cells) + " |")
    target = float(np.mean(racc[-1]))
    ratios = ratio_to_margin(rows, specs, target)
    lines.append(f"| to {target:.3f} (random's final), labels / margin's | "
                 + " | ".join(fmt_ratio(ratios[s]) for s in specs) + " |")
    return "\n".join(lines)


def scale() -> None:
    """A batch of 30,000 from 1,000,000 memory-mapped rows (d = 64), long-tailed clusters (Zipf sizes)."""
    import tempfile

    from batchal import Pool, get_selector

    n, d, k = 1_000_000, 64, 30_000
    for a, n_lab in ((2.1, 100), (2.1, 10_000), (1.9, 100), (1.7, 100)):
        r = np.random.default_rng(0)
        sizes = np.minimum(r.zipf(a, size=n), 50_000)
        cs = np.cumsum(sizes)
        m = int(np.searchsorted(cs, n)) + 1
        sizes = sizes[:m]
        sizes[-1] -= cs[m - 1] - n
        clusters = np.repeat(np.arange(m), sizes)[r.permutation(n)]
        with tempfile.TemporaryDirectory() as tmp:
            np.save(f"{tmp}/E.npy", r.normal(size=(n, d)).astype(np.float32))
            E = np.load(f"{tmp}/E.npy", mmap_mode="r")
            labeled = r.choice(n, n_lab, replace=False)
            sel = get_selector("typiclust", random_state=0)
            sel.select(Pool(embeddings=E, clusters=clusters, labeled=labeled), 10)  # numba's compile, once
            t0, c0 = time.perf_counter(), time.process_time()
            sel.select(Pool(embeddings=E, clusters=clusters, labeled=labeled), k)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"| {m:,} | {n / m:.1f} | {sizes.max():,} | {n_lab:,} | {sel.diagnostics_['visited_clusters']:,} | "
              f"{sel.diagnostics_['sampled_clusters']} | {dt:.1f} s | {cpu:.1f} s |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "table", "scale"])
    ap.add_argument("configs", nargs="*", default=list(CONFIGS)[:4])
    from batchal.simulate.models import TRAINING

    ap.add_argument("--training", choices=TRAINING, default=None,
                    help="the MLP's training rule (default: the simulator's)")
    args = ap.parse_args()
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    if args.what == "run":
        run(args.configs, training=args.training)
    elif args.what == "table":
        print("\n\n".join(table(c) for c in args.configs if (RESULTS / c / "results.csv").exists()))
    else:
        # CPU seconds beside wall seconds: on a shared machine the wall time is mostly waiting for a core
        print("| clusters | mean size | largest | labeled | clusters visited | sampled | wall | CPU |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        scale()


if __name__ == "__main__":
    main()
