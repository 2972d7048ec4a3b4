#!/usr/bin/env python
"""Campaign commands at scale: ``select`` of k items and ``label`` of k labels in an n-item campaign.

Usage (the command recorded in BENCHMARKS.md, *Campaigns*)::

    python benchmarks/bench_campaign.py --n 1000000 --k 100000 --rounds 5

What it does
------------
* Writes a synthetic pool once to ``--workdir``: a directory of 4 Parquet shards
  with string ids (``item-0000000``), ``--dim`` float32 embeddings from a 2,000-
  component Gaussian mixture, and a predictions Parquet (id + ``probs``, C=10,
  rows in a shuffled order so the id join is exercised).
* ``campaign init`` and ``campaign cluster`` (graph HAC, mean cluster size 10) run
  once into a template campaign that later runs copy; their times are printed
  but are not the subject.
* Then ``--rounds`` rounds, each as the CLI runs them (a new ``Campaign`` object
  per command, so the ids are loaded every time): ``select`` of k items with the
  recommended strategy, writing the batch as a ``.csv`` of ids, then ``label`` of
  those k labels from a CSV. Labeled items accumulate (round r selects among
  n - (r-1)k items), as in a real campaign.
* ``select`` is split into: open (lock, leftovers, ids), read predictions (Parquet
  read, id join, validation, hash), select (exclusion of labeled/pending items,
  scores, strategy), record (per-round score file written and fsynced, k rows
  inserted, commit with fsync) and the output file. "beyond reading" = total
  minus the predictions read. ``label`` is timed whole (CSV read, id join, checks,
  k inserts, commit).
* One more round runs through the command line (``batchal campaign select`` and
  ``label`` in subprocesses) for the wall-clock time a user sees, interpreter
  start and imports included.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchal.campaign import Campaign


def fsl(m):
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(m).ravel()), m.shape[1])


def make_inputs(work: Path, n: int, d: int, C: int, seed: int = 0):
    pool = work / "pool"
    pred = work / "pred.parquet"
    if pool.exists() and pred.exists():
        return pool, pred
    r = np.random.default_rng(seed)
    pool.mkdir(parents=True, exist_ok=True)
    centers = r.normal(size=(2000, d)).astype(np.float32)
    comp = r.integers(0, 2000, n)
    ids = np.array([f"item-{i:07d}" for i in range(n)])
    shards = 4
    for s in range(shards):
        a, b = s * n // shards, (s + 1) * n // shards
        E = centers[comp[a:b]] + 0.3 * r.normal(size=(b - a, d)).astype(np.float32)
        pq.write_table(pa.table({"id": ids[a:b], "embedding": fsl(E.astype(np.float32))}), pool / f"part-{s}.parquet")
    alpha = np.full(C, 0.3)
    P = r.dirichlet(alpha, size=n).astype(np.float32)
    order = r.permutation(n)
    pq.write_table(pa.table({"id": ids[order], "probs": fsl(P[order])}), pred)
    return pool, pred


def write_labels(path: Path, ids, C: int):
    with open(path, "w") as fh:
        fh.write("id,label\n")
        fh.writelines(f"{i},class{hash(i) % C}\n" for i in ids)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--strategy", default=None, help="default: the recommended spec")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/batchal-bench-campaign"))
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    pool, pred = make_inputs(work, args.n, args.dim, args.classes)
    print(f"inputs: {args.n:,} items, d={args.dim}, C={args.classes} ({time.perf_counter() - t:.1f} s)", flush=True)
    # init + cluster once into a template (the clustering is minutes at 1M); each run starts from a copy
    template = work / f"template-n{args.n}-d{args.dim}"
    classes = ",".join(f"class{j}" for j in range(args.classes))
    t_init = t_cluster = float("nan")
    if not (template / "reports").exists() or Campaign(template).status()["clustering"] is None:
        shutil.rmtree(template, ignore_errors=True)
        t = time.perf_counter()
        Campaign.init(template, pool, classes=classes).close()
        t_init = time.perf_counter() - t
        t = time.perf_counter()
        rep = Campaign(template).cluster(mean_cluster_size=10)
        t_cluster = time.perf_counter() - t
        print(f"init {t_init:.1f} s, cluster {t_cluster:.1f} s ({rep['n_clusters']:,} clusters, {rep['method']})",
              flush=True)
    d = work / f"campaign-{os.getpid()}"
    shutil.copytree(template, d)
    rows = []
    for r in range(1, args.rounds + 1):
        c = Campaign(d)
        t0 = time.perf_counter()
        b = c.select(args.k, pred, strategy=args.strategy, seed=r)
        t1 = time.perf_counter()
        c.export(b.round, work / "batch.csv")
        t2 = time.perf_counter()
        c.close()
        write_labels(work / "labels.csv", b.ids, args.classes)
        c = Campaign(d)
        t3 = time.perf_counter()
        res = c.label(work / "labels.csv")
        t4 = time.perf_counter()
        c.close()
        assert res["new"] == args.k and res["closed"] == [r]
        tm = b.timings
        total = (t1 - t0) + (t2 - t1)
        rows.append(dict(round=r, excluded=(r - 1) * args.k, open=tm["open"], read=tm["read"], select=tm["select"],
                         record=tm["record"], out=t2 - t1, beyond=total - tm["read"], total=total, label=t4 - t3))
        x = rows[-1]
        print(f"round {r}: select {x['total']:.2f} s (read predictions {x['read']:.2f}, beyond {x['beyond']:.2f}), "
              f"label {x['label']:.2f} s", flush=True)
    # one round through the command line, as a user runs it
    cli = [sys.executable, "-c", "from batchal.cli import app; app()", "campaign"]
    t = time.perf_counter()
    out = subprocess.run(cli + ["select", str(d), "--predictions", str(pred), "-k", str(args.k), "--seed", "0",
                                "--out", str(work / "batch_cli.csv")], capture_output=True, text=True, check=True)
    t_cli_select = time.perf_counter() - t
    ids = (work / "batch_cli.csv").read_text().splitlines()[1:]
    write_labels(work / "labels_cli.csv", ids, args.classes)
    t = time.perf_counter()
    subprocess.run(cli + ["label", str(d), str(work / "labels_cli.csv")], capture_output=True, text=True, check=True)
    t_cli_label = time.perf_counter() - t
    t = time.perf_counter()
    problems = Campaign(d).check()
    t_check = time.perf_counter() - t
    assert problems == [], problems

    cols = ["round", "excluded", "open", "read", "select", "record", "out", "beyond", "total", "label"]
    print()
    print(f"n = {args.n:,}, k = {args.k:,}, strategy {b.strategy}; seconds")
    print("| round | labeled before | open | read predictions | select | record | write .csv | "
          "**select beyond reading** | select total | **label k** |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print("| " + " | ".join(f"{x[c]:,}" if c in ("round", "excluded") else f"{x[c]:.2f}" for c in cols) + " |")
    med = {c: statistics.median(x[c] for x in rows) for c in cols[2:]}
    print("| **median** | | " + " | ".join(f"**{med[c]:.2f}**" for c in cols[2:]) + " |")
    print()
    print(f"command line, one more round (interpreter start and imports included): select {t_cli_select:.1f} s, "
          f"label {t_cli_label:.1f} s; its select said: {out.stderr.strip()}")
    shutil.rmtree(d, ignore_errors=True)
    print(f"init {t_init:.1f} s, cluster {t_cluster:.1f} s (nan: reused the template), check {t_check:.1f} s; "
          f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


if __name__ == "__main__":
    main()
