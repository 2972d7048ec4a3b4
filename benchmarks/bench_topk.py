#!/usr/bin/env python
"""Selection from top-k predictions at the paper's size: 10M items, top-10 multi-label over 20K classes.

Usage (the commands recorded in BENCHMARKS.md, *Top-k predictions at the paper's size*)::

    python benchmarks/bench_topk.py select   --n 10000000 --k 1000000 --repeats 3
    python benchmarks/bench_topk.py campaign --n 10000000 --k 1000000 --rounds 3

What it does
------------
* Writes the predictions once to ``--workdir``, shard by shard (``--shards`` Parquet files of
  ``id`` int64, ``top_classes`` and ``top_probs`` fixed-size lists of 10, ``n_classes=20000`` in
  the metadata; row groups of 131,072 rows). No dense matrix exists at any point: each row's
  10 classes are distinct ids drawn over the 20K vocabulary, its probabilities are 0.5 +/- a
  sorted distance (nearest 0.5 first, the multi-label layout). Items come in groups of 10 that
  share a cluster id; about 30% of the rows copy their group's first row with noise of 0.01 on
  each probability (near-duplicates for ``tol=0.1``), so the recommended spec has work to do.
* The cluster ids are **synthetic** (one id per group of 10, shuffled, mean cluster size 10,
  ``C.npy``): clustering 10M rows is benchmarked elsewhere (BENCHMARKS.md, *Graph HAC at scale*).
* ``select``: ``batchal select --multilabel --probs SHARDS/ --clusters C.npy -k K`` for
  ``cluster-margin`` and the recommended spec, each ``--repeats`` times in a fresh process
  under GNU time (peak RSS of that process); the CLI's own split is parsed: *load* (read and
  validate the Parquet shards, memory-map the clusters) and *select* (scores, candidates,
  round-robin), plus the whole wall time.
* ``campaign``: a 10M-item campaign (``--dim``-dimensional embeddings, int ids) is initialised
  once and given the same synthetic clusters with ``campaign cluster --clusters C.npy`` (a
  precomputed clustering); then ``--rounds`` rounds through the command line, each
  ``campaign select --multilabel --predictions SHARDS/ -k K --out batch.csv`` (the recommended
  spec) under GNU time, followed by ``campaign label`` of the batch (labels of the model's top
  class). The CLI's own split is parsed: open, read predictions (Parquet read, validation, id
  join), select, record (scores file, batch rows, commit).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VOCAB = 20_000
TOPK = 10
GROUP = 10


def make_predictions(work: Path, n: int, shards: int, seed: int = 0) -> tuple[Path, Path]:
    """Top-10 multi-label predictions of ``n`` items as Parquet shards, and synthetic cluster ids."""
    from batchal import topk_table

    out = work / f"preds-n{n}"
    cpath = work / f"C-n{n}.npy"
    if out.exists() and cpath.exists():
        return out, cpath
    tmp = work / f".preds-n{n}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r = np.random.default_rng(seed)
    n_groups = -(-n // GROUP)
    cluster_of_group = r.permutation(n_groups).astype(np.int64)
    np.save(cpath, np.repeat(cluster_of_group, GROUP)[:n])
    per = -(-n // shards)
    per = -(-per // GROUP) * GROUP  # shards hold whole groups: a copy's source is in its own shard
    for s, a in enumerate(range(0, n, per)):
        b = min(n, a + per)
        m = b - a
        # distinct classes: a random start plus 10 cumulative steps of 1..1999 (< 20K in total), mod 20K
        steps = r.integers(1, 2000, size=(m, TOPK))
        steps[:, 0] = r.integers(0, VOCAB, m)
        cls = (np.cumsum(steps, axis=1) % VOCAB).astype(np.int32)
        dist = np.sort(r.uniform(0.0, 0.5, size=(m, TOPK)), axis=1)
        side = np.where(r.random((m, TOPK)) < 0.15, 1.0, -1.0)  # mostly below 0.5: absent classes dominate
        prob = (0.5 + side * dist).astype(np.float32)
        # near-duplicates: ~30% of rows copy the first row of their group, with noise, re-sorted
        first = (np.arange(a, b) // GROUP) * GROUP - a
        copy = (r.random(m) < 0.3) & (first >= 0) & (first != np.arange(m))
        cls[copy] = cls[first[copy]]
        noisy = np.clip(prob[first[copy]] + r.normal(scale=0.01, size=(int(copy.sum()), TOPK)), 0, 1)
        prob[copy] = noisy.astype(np.float32)
        order = np.argsort(np.abs(prob.astype(np.float64) - 0.5), axis=1, kind="stable")
        cls = np.take_along_axis(cls, order, axis=1)
        prob = np.take_along_axis(prob, order, axis=1)
        pq.write_table(topk_table(np.arange(a, b, dtype=np.int64), cls, prob, n_classes=VOCAB),
                       tmp / f"part-{s:03d}.parquet", row_group_size=1 << 17)
        print(f"  shard {s}: rows {a:,}..{b:,}", flush=True)
    os.replace(tmp, out)
    return out, cpath


def timed(cmd: list[str]) -> dict:
    """Run a command under GNU time: wall seconds, peak RSS (GiB) and its stderr."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "@@maxrss_kb %M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    rss = int(re.search(r"@@maxrss_kb (\d+)", p.stderr)[1]) * 1024 / 2**30
    return dict(wall=wall, rss=rss, err=p.stderr)


CLI = [sys.executable, "-c", "from batchal.cli import app; app()"]


def bench_select(args, preds: Path, cpath: Path) -> None:
    from batchal.selectors import RECOMMENDED

    for spec in ("cluster-margin", RECOMMENDED):
        runs = []
        for i in range(args.repeats):
            out = args.workdir / "batch.npy"
            res = timed(CLI + ["select", "-s", spec, "-k", str(args.k), "--multilabel", "--probs", str(preds),
                               "--clusters", str(cpath), "--seed", str(i), "--out", str(out)])
            m = re.search(r"load ([\d.]+)s, select ([\d.]+)s", res["err"])
            res.update(load=float(m[1]), select=float(m[2]))
            nd = re.search(r"(\d+)% of margin's batch are near-duplicates", res["err"])
            res["nd"] = nd[1] if nd else "-"
            assert np.load(out).shape == (args.k,)
            runs.append(res)
            print(f"{spec}: run {i + 1}: load {res['load']:.1f} s, select {res['select']:.1f} s, wall {res['wall']:.1f} s,"
                  f" peak RSS {res['rss']:.2f} GiB (near-duplicates in margin's batch: {res['nd']}%)", flush=True)
        med = {key: statistics.median(r[key] for r in runs) for key in ("load", "select", "wall", "rss")}
        print(f"{spec}: MEDIAN of {len(runs)}: load {med['load']:.1f} s, select {med['select']:.1f} s, "
              f"wall {med['wall']:.1f} s, peak RSS {med['rss']:.2f} GiB (max {max(r['rss'] for r in runs):.2f})",
              flush=True)


def bench_campaign(args, preds: Path, cpath: Path) -> None:
    from batchal.campaign import Campaign

    template = args.workdir / f"campaign-n{args.n}"
    if not (template / "campaign.db").exists():
        shutil.rmtree(template, ignore_errors=True)
        r = np.random.default_rng(1)
        emb = args.workdir / f"E-n{args.n}.npy"
        E = np.lib.format.open_memmap(emb, mode="w+", dtype=np.float32, shape=(args.n, args.dim))
        for a in range(0, args.n, 1 << 20):
            b = min(args.n, a + (1 << 20))
            E[a:b] = r.normal(size=(b - a, args.dim))
        E.flush()
        del E
        t = time.perf_counter()
        Campaign.init(template, emb, classes=[f"c{j}" for j in range(VOCAB)]).close()
        print(f"campaign init: {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        res = timed(CLI + ["campaign", "cluster", str(template), "--clusters", str(cpath), "-q"])
        print(f"campaign cluster --clusters (precomputed): {time.perf_counter() - t:.1f} s, "
              f"peak RSS {res['rss']:.2f} GiB", flush=True)
    d = args.workdir / f"campaign-run-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(template, d)
    rows = []
    for rnd in range(1, args.rounds + 1):
        out = args.workdir / "cbatch.csv"
        res = timed(CLI + ["campaign", "select", str(d), "--multilabel", "--predictions", str(preds),
                           "-k", str(args.k), "--seed", str(rnd), "--out", str(out)])
        m = re.search(r"\[open ([\d.]+)s, read predictions ([\d.]+)s, select ([\d.]+)s, record ([\d.]+)s\]", res["err"])
        res.update(open=float(m[1]), read=float(m[2]), select=float(m[3]), record=float(m[4]))
        ids = out.read_text().splitlines()[1:]
        assert len(ids) == args.k
        lab = args.workdir / "clabels.csv"
        with open(lab, "w") as fh:
            fh.write("id,label\n")
            fh.writelines(f"{i},c{int(i) % VOCAB}\n" for i in ids)
        lres = timed(CLI + ["campaign", "label", str(d), str(lab), "-q"])
        rows.append(res)
        print(f"round {rnd}: campaign select wall {res['wall']:.1f} s [open {res['open']:.1f}, read predictions "
              f"{res['read']:.1f}, select {res['select']:.1f}, record {res['record']:.1f}], peak RSS {res['rss']:.2f} GiB;"
              f" campaign label of {args.k:,}: {lres['wall']:.1f} s, {lres['rss']:.2f} GiB", flush=True)
    for key in ("open", "read", "select", "record", "wall", "rss"):
        print(f"  median {key}: {statistics.median(r[key] for r in rows):.2f}", flush=True)
    shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["select", "campaign"])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--k", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dim", type=int, default=4, help="campaign: embedding dimensions (not read by selection)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/batchal-bench-topk"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    preds, cpath = make_predictions(args.workdir, args.n, args.shards)
    size = sum(f.stat().st_size for f in preds.glob("*.parquet")) / 2**30
    print(f"inputs: {args.n:,} items, top-{TOPK} of {VOCAB:,} classes, {args.shards} shards, {size:.2f} GiB on disk "
          f"({time.perf_counter() - t:.1f} s)", flush=True)
    (bench_select if args.what == "select" else bench_campaign)(args, preds, cpath)


if __name__ == "__main__":
    main()
