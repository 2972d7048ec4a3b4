"""Benchmark: the graph HAC's merge alone (RAC rounds), threads per round (issue 24).

The merge of the graph HAC runs in rounds of reciprocal-nearest-neighbour merges;
on noise-like families (``overlapping``, ``longtail``) there are hundreds to
thousands of rounds, most merging a handful of pairs. Each round runs on one thread
or on all (``_graph_kernels._Pace``). This script times ``_graph_kernels.rac`` on a
cached kNN graph of the first ``--n`` rows of a family (``bench_cluster_families``'s
cache; kNN as the library chooses, computed once and cached beside it), with the
round's threads chosen as the library does (``auto``) or forced (``all``: every
round on every thread, the behaviour before; ``one``), the modes alternating in one
process. The trees must be identical across modes (checked: their SHA-1).

Usage::

    python benchmarks/bench_merge_rounds.py --families longtail overlapping blobs --n 200000 --repeats 2
    python benchmarks/bench_merge_rounds.py --families longtail --trace   # per-round table
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cluster_families as BF  # noqa: E402

from batchal.clustering import _graph_kernels as K  # noqa: E402
from batchal.clustering.graph import MERGE_SLACK  # noqa: E402
from batchal.clustering.knn import knn_permuted  # noqa: E402


def graph(family: str, n: int):
    """Rows in cell order (float32, unit) and their directed kNN lists, cached."""
    base = BF.CACHE / f"merge_{family}_{n}"
    px, pi = base.with_name(base.name + "_Xp.npy"), base.with_name(base.name + "_I.npy")
    if not px.exists():
        X = np.ascontiguousarray(np.load(BF.family_path(family), mmap_mode="r")[:n])
        Xp, _, I, _, _, info = knn_permuted(X, 50, metric="cosine", return_distances=False)
        print(f"{family}: kNN of {n} rows, nprobe {info.get('nprobe')}", flush=True)
        np.save(pi, np.ascontiguousarray(I, dtype=np.int32))
        np.save(px, Xp)
    return np.load(px), np.load(pi)


class _Forced(K._Pace):
    def __init__(self, nt, threads):
        super().__init__(nt)
        self.threads = nt if threads == "all" else 1

    def round(self, entries):
        from numba import set_num_threads

        self.mode = self.threads
        self.serial += self.threads == 1
        set_num_threads(self.threads)
        return self.threads

    def steps(self, entries):
        return self.round(entries)


def merge(Xp, I, mode: str, trace: bool):
    """One merge as ``graph_linkage`` runs it (float32 sums, cosine): seconds, rounds, phases, tree hash."""
    n, k = I.shape
    arena = np.empty(2 * n * k, dtype=np.int32)
    arena[: n * k] = I.reshape(-1)
    indptr = K.symmetrize_inplace(arena, n, k, n)
    S = Xp.copy()
    end = int(indptr[-1])
    start = indptr[:-1].astype(np.int32)
    length = np.diff(indptr).astype(np.int32)
    nbr = arena[: min(arena.shape[0], int(end * MERGE_SLACK) + n + 1)]
    ps = np.empty((n, 2), dtype=np.int32)
    parent, stamp = ps[:, 0], ps[:, 1]
    parent[:] = np.arange(n, dtype=np.int32)
    stamp[:] = -1
    Z = np.empty((n - 1, 4))
    phases = {"trace": []} if trace else {}
    pace = K._Pace
    if mode != "auto":
        K._Pace = lambda nt: _Forced(nt, mode)
    try:
        t = time.perf_counter()
        c = time.process_time()
        _, _, zc, _, rounds, _ = K.rac(S, np.ones(n), np.ones(1), parent, np.ones(n, np.uint8),
                                       np.arange(n, dtype=np.int32), stamp, np.full(n, -1, np.int32),
                                       start, length, nbr, end, np.flatnonzero(length > 0).astype(np.int32),
                                       Z, 0, n, K.COSINE, 0, phases)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        K._Pace = pace
    return wall, cpu, rounds, phases, hashlib.sha1(Z[:zc].tobytes()).hexdigest()[:12]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=["longtail", "overlapping", "blobs"], choices=BF.FAMILIES)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["auto", "all"], choices=("auto", "all", "one"))
    ap.add_argument("--trace", action="store_true", help="per-round figures of one auto run instead")
    args = ap.parse_args(argv)
    for fam in args.families:
        Xp, I = graph(fam, args.n)
        if args.trace:
            wall, cpu, rounds, ph, h = merge(Xp, I, "auto", True)
            tr = np.array(ph["trace"])
            print(f"{fam}: {rounds} rounds, {wall:.1f} s; rounds by merged-list entries (load {os.getloadavg()[0]:.1f}):")
            for lo, hi in ((0, 1 << 14), (1 << 14, 1 << 17), (1 << 17, 1 << 62)):
                s = (tr[:, 1] >= lo) & (tr[:, 1] < hi)
                print(f"  [{lo}, {hi}): {s.sum()} rounds, {int(tr[s, 0].sum())} pairs, "
                      f"{int(tr[s, 1].sum())} entries, {tr[s, 5].sum():.1f} s")
            continue
        merge(Xp[:2000].copy(), np.where(I[:2000] < 2000, I[:2000], -1), "auto", False)  # compile
        out: dict = {}
        for r in range(args.repeats):
            for mode in args.modes:
                wall, cpu, rounds, ph, h = merge(Xp, I, mode, False)
                rec = {"family": fam, "n": args.n, "mode": mode, "rep": r, "merge_s": round(wall, 2),
                       "cpu_s": round(cpu, 2), "rounds": rounds, "tree": h, "load1": round(os.getloadavg()[0], 2),
                       "phases": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in ph.items()}}
                print(json.dumps(rec), flush=True)
                out.setdefault(mode, []).append(rec)
        trees = {rec["tree"] for recs in out.values() for rec in recs}
        med = {m: float(np.median([x["merge_s"] for x in recs])) for m, recs in out.items()}
        print(f"{fam}: median merge s {med}; trees identical: {len(trees) == 1}", flush=True)
        if len(trees) != 1:
            raise SystemExit("trees differ between modes")


if __name__ == "__main__":
    main()
