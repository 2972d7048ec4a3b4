#!/usr/bin/env python
"""Does the stopping rule stop at the right time? The simulator's evidence for ``campaign status``'s advice.

Each configuration is one ``batchal simulate`` command (printed, timed) run for
more rounds than a campaign would, on a plain and a redundant pool, with two
models. For every strategy and trial it compares the labels at which the rule
(Cohen's kappa between successive rounds' predictions on a fixed stop set >= 0.99
for 3 rounds; ``batchal.stopping``) first advises stopping with the labels at which
the test metric first came within 0.5 points of its final value, and what a user
following the advice would lose: the final metric minus the metric at the advised
round. Summaries go to ``benchmarks/results/stopping/``.

Usage::

    python benchmarks/bench_stopping.py            # run the four configurations, then the table
    python benchmarks/bench_stopping.py --table    # the table from results/stopping/
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "stopping"
STRATEGIES = "cluster-margin:order=margin:tol=0.1,margin,random"
CONFIGS = {
    "lr-digits": ["--dataset", "digits", "--model", "logreg", "--seed-size", "30", "--batch-size", "30",
                  "--rounds", "16", "--trials", "5"],
    "lr-digits-red": ["--dataset", "digits", "--redundancy", "zipf", "--model", "logreg", "--seed-size", "100",
                      "--batch-size", "100", "--rounds", "16", "--trials", "5"],
    "mlp-mnist1d": ["--dataset", "mnist1d", "--size", "10000", "--model", "mlp", "--seed-size", "250",
                    "--batch-size", "250", "--rounds", "16", "--trials", "3"],
    "mlp-mnist1d-red": ["--dataset", "mnist1d", "--size", "10000", "--redundancy", "zipf", "--model", "mlp",
                        "--seed-size", "800", "--batch-size", "800", "--rounds", "16", "--trials", "3"],
}


def run(work: Path) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    rc = 0
    for name, opts in CONFIGS.items():
        out = work / name
        cmd = ["batchal", "simulate", *opts, "--strategies", STRATEGIES, "--out", str(out), "--quiet"]
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        p = subprocess.run(cmd)
        wall = time.perf_counter() - t0
        print(f"  exit {p.returncode}, {wall:,.0f} s", flush=True)
        if p.returncode:
            rc = 1
            continue
        shutil.copy(out / "results.csv", RESULTS / f"{name}_results.csv")
        (RESULTS / f"{name}_run.json").write_text(json.dumps({"command": " ".join(cmd), "wall_seconds": wall}))
    return rc


def table() -> int:
    from batchal.simulate.report import stop_rounds

    print("| pool | strategy | rule says stop at (labels, mean over trials) | within 0.5 points of final at | "
          "trials where it never fired | accuracy lost by stopping when advised (points) |")
    print("|---|---|---:|---:|---:|---:|")
    for name in CONFIGS:
        f = RESULTS / f"{name}_results.csv"
        if not f.exists():
            continue
        rows = []
        with open(f) as fh:
            for r in csv.DictReader(fh):
                rows.append({"strategy": r["strategy"], "trial": int(r["trial"]), "round": int(r["round"]),
                             "n_labeled": int(r["n_labeled"]), "accuracy": float(r["accuracy"]),
                             "stop_advice": r["stop_advice"]})
        for s in dict.fromkeys(r["strategy"] for r in rows):
            pairs = stop_rounds(rows, s)
            adv = [a for a, _ in pairs if a is not None]
            lost = []
            for t, (a, _) in zip(sorted({r["trial"] for r in rows if r["strategy"] == s}), pairs):
                rs = sorted((r for r in rows if r["strategy"] == s and r["trial"] == t), key=lambda r: r["round"])
                at = rs[-1] if a is None else next(r for r in rs if r["n_labeled"] == a)
                lost.append(100 * (rs[-1]["accuracy"] - at["accuracy"]))
            print(f"| {name} | {s} | {np.mean(adv):,.0f} |" if adv else f"| {name} | {s} | never |", end="")
            print(f" {np.mean([c for _, c in pairs]):,.0f} | {len(pairs) - len(adv)} of {len(pairs)} | "
                  f"{np.mean(lost):+.2f} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="only the table from results/stopping/")
    ap.add_argument("--work", type=Path, default=Path("/tmp/batchal-stopping"))
    args = ap.parse_args(argv)
    if not args.table:
        run(args.work)
    return table()


if __name__ == "__main__":
    sys.exit(main())
