#!/usr/bin/env python
"""Benchmark: near-duplicate groups and rare-concept search at 10M, and label propagation in the simulator.

Issue 26's must-show points:

* ``dedup``: :func:`batchal.dedup.near_duplicate_groups` on the clustering benchmark's
  blobs (``bench_cluster.blobs_path``) with near-duplicate *bursts* injected
  (:func:`dup_path`), against the kNN stage alone (``knn_graph`` with dedup's own
  ``knn`` and ``method``): time and peak RSS, each in its own subprocess (VmHWM is
  its own), then the precision and recall of the groups' *pairs* against brute
  force on a sample made of whole bursts plus random rows.
* ``similar``: :class:`batchal.similar.SimilarIndex` on the same rows: build time and
  peak, then the time of one query of 100 items (k = 100), median over the query sets,
  and recall@100 against the exact top-100 of every query set over all rows.
* ``propagate``: the simulator's ``--propagate`` on redundant pools: labels bought to
  reach random's final accuracy with and without propagation.

Usage::

    python benchmarks/bench_dedup.py dedup --n 1000000
    python benchmarks/bench_dedup.py similar --n 1000000
    python benchmarks/bench_dedup.py dedup --n 10000000 --d 64
    python benchmarks/bench_dedup.py similar --n 10000000 --d 64
    python benchmarks/bench_dedup.py propagate

Data. The blobs (n/200 Gaussian components in d dimensions, see ``bench_cluster.py``),
then ``--dup-share`` (default 3%) of the rows replaced by copies: bursts of
``m`` copies of one source row, ``m`` heavy-tailed (``P(m >= x) = x^-1.2``, at most
``--max-burst``), each copy ``x + |x| sqrt(2t/d) g`` with ``g ~ N(0, I)`` and ``t``
log-uniform in [1e-4, 3e-3] (so ``1 - cos(x, copy)`` is about ``t``; two copies of one
source are about ``t1 + t2`` apart). Written chunk by chunk to a memory map next to
the blobs and cached (never two full copies in memory); the burst of every row is
saved beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cluster import CACHE, blobs_path  # noqa: E402

TAIL = 1.2
T_LO, T_HI = 1e-4, 3e-3


# ---------------------------------------------------------------- data
def _burst_plan(n: int, share: float, max_burst: int, seed: int):
    """Source rows, copy rows and the burst of each copy (all disjoint)."""
    rng = np.random.default_rng(seed + 1000)
    target = int(share * n)
    sizes = []
    total = 0
    while total < target:
        m = np.minimum(max_burst, np.floor(rng.random(4096) ** (-1.0 / TAIL))).astype(np.int64)
        m = m[np.cumsum(m) + total <= target + max_burst]
        for v in m:
            if total >= target:
                break
            sizes.append(int(v))
            total += int(v)
    sizes = np.asarray(sizes, dtype=np.int64)
    B = sizes.shape[0]
    rows = rng.choice(n, size=B + total, replace=False)
    sources, copies = rows[:B], rows[B:]
    copy_burst = np.repeat(np.arange(B, dtype=np.int64), sizes)
    t = np.exp(rng.uniform(np.log(T_LO), np.log(T_HI), total))
    return sources, copies, copy_burst, t


def dup_path(n: int, d: int, share: float = 0.03, max_burst: int = 2000, seed: int = 0) -> tuple[Path, Path]:
    """(rows .npy, bursts .npz): the blobs with near-duplicate bursts injected; cached."""
    tag = f"dupblobs_{n}_{d}_{seed}_{share:g}_{max_burst}"
    p, meta = CACHE / f"{tag}.npy", CACHE / f"{tag}.bursts.npz"
    if p.exists() and meta.exists():
        return p, meta
    base = np.load(blobs_path(n, d, seed), mmap_mode="r")
    sources, copies, copy_burst, t = _burst_plan(n, share, max_burst, seed)
    o = np.argsort(copies)
    copies, copy_burst, t = copies[o], copy_burst[o], t[o]
    tmp = p.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    step = 1 << 18
    for a in range(0, n, step):
        b = min(n, a + step)
        out[a:b] = base[a:b]
        lo, hi = np.searchsorted(copies, [a, b])
        if hi > lo:
            src = sources[copy_burst[lo:hi]]
            so = np.argsort(src)
            X = np.empty((hi - lo, d), dtype=np.float32)
            X[so] = base[src[so]]  # sorted reads of the memory map
            rng = np.random.default_rng([seed, a])
            g = rng.standard_normal((hi - lo, d)).astype(np.float32)
            scale = np.linalg.norm(X, axis=1) * np.sqrt(2.0 * t[lo:hi] / d)
            out[copies[lo:hi]] = X + scale[:, None].astype(np.float32) * g
    out.flush()
    del out
    burst = np.full(n, -1, dtype=np.int32)
    burst[sources] = np.arange(sources.shape[0])
    burst[copies] = copy_burst
    np.savez(meta, burst=burst, sources=sources, copies=copies, copy_burst=copy_burst, t=t)
    tmp.rename(p)
    return p, meta


# ---------------------------------------------------------------- one case (subprocess)
from bench_select import _reset_peak, _status  # noqa: E402  (the same /proc readers)


def _case(args) -> None:
    X = np.load(args.data, mmap_mode="r")
    out = {"load_before": os.getloadavg()}
    c0, t0 = time.process_time(), time.perf_counter()
    if args.kind == "knn":
        from batchal.clustering.knn import knn_graph

        g = knn_graph(X, args.knn, metric="cosine", method=args.method, random_state=0)
        out["info"] = {k: v for k, v in g.info.items() if isinstance(v, (int, float, str))}
    elif args.kind == "dedup":
        import batchal.dedup as dd

        inner = dd.groups_from_knn
        split = {}

        def timed(*a, **kw):  # near_duplicate_groups calls it by its global name
            s = time.perf_counter()
            split["knn"] = s - t0
            r = inner(*a, **kw)
            split["groups"] = time.perf_counter() - s
            return r

        dd.groups_from_knn = timed
        res = dd.near_duplicate_groups(X, args.threshold, knn=args.knn, method=args.method, random_state=0)
        out["split"] = split
    out["wall"] = time.perf_counter() - t0
    out["cpu"] = time.process_time() - c0
    out["peak_bytes"] = _status("VmHWM")
    out["load_after"] = os.getloadavg()
    if args.kind == "dedup" and args.save:
        np.save(args.save, res["group"])
    print(json.dumps(out))


def _similar_case(args) -> None:
    """Build the index, time the query sets, then (outside the timed part) the exact answers."""
    from batchal.similar import SimilarIndex

    X = np.load(args.data, mmap_mode="r")
    n, d = X.shape
    out = {"load_before": os.getloadavg()}
    t0 = time.perf_counter()
    index = SimilarIndex(X, metric="cosine")
    out["build_s"] = time.perf_counter() - t0
    out["method"] = index.method
    out["nlist"] = int(index._C.shape[0]) if index.method == "ivf" else None
    out["build_peak_bytes"] = _status("VmHWM")
    out["reset_peak"] = _reset_peak()
    # query sets: `queries` new examples of one mixture component each (a rare concept's examples)
    rng = np.random.default_rng(0)  # the blobs' own generator: their centres and spreads
    c = max(10, n // 200)
    centers = (rng.standard_normal((c, d)) * 2).astype(np.float32)
    sd = rng.uniform(0.5, 1.5, c).astype(np.float32)
    qr = np.random.default_rng(7)
    comps = qr.choice(c, args.sets, replace=False)
    Qs = [centers[j] + qr.standard_normal((args.queries, d)).astype(np.float32) * sd[j] for j in comps]
    res = {}
    for nprobe in args.nprobe:
        times, rows = [], []
        for Q in Qs:
            s = time.perf_counter()
            r = index.query(Q, args.k, nprobe=nprobe)
            times.append(time.perf_counter() - s)
            rows.append(r)
        res[nprobe] = {"times": times, "rows": [r.tolist() for r in rows]}
    out["query_peak_bytes"] = _status("VmHWM")
    out["load_after_queries"] = os.getloadavg()
    del index
    # exact top-k of every set over all rows: a row's distance to a set is to its nearest query
    t1 = time.perf_counter()
    Qn = np.concatenate(Qs)
    Qn /= np.linalg.norm(Qn, axis=1, keepdims=True)
    S, q = len(Qs), args.queries
    best_s = np.full((S, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((S, 0), dtype=np.int64)
    step = 1 << 15
    for a in range(0, n, step):
        Xc = np.array(X[a:a + step], dtype=np.float32)
        Xc /= np.linalg.norm(Xc, axis=1, keepdims=True)
        sim = (Qn @ Xc.T).reshape(S, q, -1).max(axis=1)  # (S, chunk): cosine to the nearest query
        cs = np.concatenate([best_s, sim], axis=1)
        ci = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + Xc.shape[0]), sim.shape)], axis=1)
        keep = np.argpartition(-cs, args.k - 1, axis=1)[:, : args.k] if cs.shape[1] > args.k else \
            np.broadcast_to(np.arange(cs.shape[1]), cs.shape)
        best_s, best_i = np.take_along_axis(cs, keep, 1), np.take_along_axis(ci, keep, 1)
    out["exact_s"] = time.perf_counter() - t1
    for nprobe, r in res.items():
        r["recall"] = [len(set(a) & set(b.tolist())) / args.k for a, b in zip(r["rows"], best_i)]
        del r["rows"]
    out["res"] = res
    out["kth_distance"] = float(np.median(1 - best_s.min(axis=1)))
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))


def _env():
    # OpenMP threads sleep rather than spin while waiting (as bench_cluster.py does on the shared machine)
    return dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def run_case(*argv) -> dict:
    cmd = [sys.executable, __file__, *map(str, argv)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if out.returncode != 0:
        return {"error": (out.stderr or "")[-3000:], "returncode": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gb(b) -> str:
    return f"{b / 2**30:.2f}"


# ---------------------------------------------------------------- precision / recall on a sample
def _sample_rows(burst: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Whole bursts (half the sample, bursts drawn at random) plus random rows outside any burst."""
    rng = np.random.default_rng(seed)
    in_burst = np.flatnonzero(burst >= 0)
    b_of = burst[in_burst]
    order = np.argsort(b_of, kind="stable")
    in_burst, b_of = in_burst[order], b_of[order]
    starts = np.searchsorted(b_of, np.arange(b_of.max() + 2))
    picked, total = [], 0
    for j in rng.permutation(b_of.max() + 1):
        m = starts[j + 1] - starts[j]
        if total + m > size // 2:
            continue
        picked.append(in_burst[starts[j]:starts[j + 1]])
        total += m
        if total >= size // 2 - 1:
            break
    rows = np.concatenate(picked)
    rest = np.flatnonzero(burst < 0)
    rows = np.concatenate([rows, rng.choice(rest, size - rows.shape[0], replace=False)])
    return np.sort(rows)


def _same_group_pairs(labels: np.ndarray) -> int:
    _, c = np.unique(labels, return_counts=True)
    return int((c * (c - 1) // 2).sum())


def pair_scores(X, rows: np.ndarray, group: np.ndarray, threshold: float) -> dict:
    """Precision and recall of the same-group pairs among ``rows`` against exact transitive groups.

    Exact: the connected components of the sample's pairs with ``1 - cos <= threshold``
    (brute force, float32, all pairs of the sample). Predicted: pairs of sample rows
    that the groups put together (the groups of the whole pool, restricted to the sample).
    precision = |predicted & exact| / |predicted|, recall = |predicted & exact| / |exact|.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    S = np.array(X[rows], dtype=np.float32)
    S /= np.linalg.norm(S, axis=1, keepdims=True)
    m = S.shape[0]
    ii, jj = [], []
    for a in range(0, m, 2048):
        G = S[a:a + 2048] @ S.T
        i, j = np.nonzero(1.0 - G <= threshold)
        k = j > i + a
        ii.append(i[k] + a)
        jj.append(j[k])
    ii, jj = np.concatenate(ii), np.concatenate(jj)
    adj = coo_matrix((np.ones(ii.shape[0], np.int8), (ii, jj)), shape=(m, m))
    _, exact = connected_components(adj, directed=False)
    pred = group[rows]
    n_exact, n_pred = _same_group_pairs(exact), _same_group_pairs(pred)
    both = _same_group_pairs(exact.astype(np.int64) * (int(pred.max()) + 1) + pred)
    return {"rows": m, "edges": int(ii.shape[0]), "exact_pairs": n_exact, "predicted_pairs": n_pred,
            "both": both, "precision": both / n_pred if n_pred else float("nan"),
            "recall": both / n_exact if n_exact else float("nan")}


# ---------------------------------------------------------------- commands
def cmd_dedup(args) -> dict:
    from batchal.dedup import DEFAULT_COSINE_THRESHOLD

    T = DEFAULT_COSINE_THRESHOLD if args.threshold is None else args.threshold
    t0 = time.perf_counter()
    path, meta = dup_path(args.n, args.d, args.dup_share, args.max_burst)
    data_s = time.perf_counter() - t0
    M = np.load(meta)
    burst, sizes = M["burst"], np.bincount(M["copy_burst"])
    print(f"data {path} ({data_s:.0f} s to make or find); {sizes.shape[0]:,} bursts, {sizes.sum():,} copies "
          f"({sizes.sum() / args.n:.1%} of rows); copies per burst: median {np.median(sizes):.0f}, "
          f"p99 {np.percentile(sizes, 99):.0f}, max {sizes.max()}; load {os.getloadavg()}", flush=True)
    save = CACHE / f"groups_{path.stem}_{args.knn}.npy"
    res = {}
    for kind in args.cases:
        res[kind] = r = run_case("_case", "--kind", kind, "--data", path, "--knn", args.knn, "--method", args.method,
                                 "--threshold", T, "--save", save)
        if "error" in r:
            print(f"{kind}: ERROR {r['returncode']}\n{r['error']}", flush=True)
        else:
            print(f"{kind}: {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, peak {_gb(r['peak_bytes'])} GiB, "
                  f"load {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f} {r.get('split', '')} "
                  f"{r.get('info', '')}", flush=True)
    print()
    print(f"| n | d | knn | case | wall s | CPU s | peak GiB (VmHWM) | load (1 min) before / after |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for kind, r in res.items():
        if "error" in r:
            continue
        extra = f" (kNN {r['split']['knn']:.1f} + groups {r['split']['groups']:.1f})" if "split" in r else ""
        print(f"| {args.n:,} | {args.d} | {args.knn} | {kind}{extra} | {r['wall']:.1f} | {r['cpu']:.1f} | "
              f"{_gb(r['peak_bytes'])} | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
    if "knn" in res and "dedup" in res and "error" not in res["knn"] and "error" not in res["dedup"]:
        print(f"\ndedup / kNN stage: time {res['dedup']['wall'] / res['knn']['wall']:.3f}x, "
              f"peak {res['dedup']['peak_bytes'] / res['knn']['peak_bytes']:.3f}x")
    if save.exists() and "dedup" in res and "error" not in res["dedup"]:
        group = np.load(save)
        X = np.load(path, mmap_mode="r")
        rows = _sample_rows(burst, min(args.sample, args.n))
        sc = pair_scores(X, rows, group, T)
        # bursts recovered whole: every member of the burst in one group, and that group holds no other row
        bo = np.flatnonzero(burst >= 0)
        gb = group[bo]
        one = np.ones(sizes.shape[0], bool)
        gmin = np.full(sizes.shape[0], np.iinfo(np.int64).max)
        gmax = np.full(sizes.shape[0], -1)
        np.minimum.at(gmin, burst[bo], gb)
        np.maximum.at(gmax, burst[bo], gb)
        one &= gmin == gmax
        gsize = np.bincount(group)
        exact_burst = one & (gsize[np.maximum(gmin, 0)] == sizes + 1)
        print(f"\nPairs on a sample of {sc['rows']:,} rows ({(burst[rows] >= 0).sum():,} in "
              f"{np.unique(burst[rows][burst[rows] >= 0]).shape[0]:,} whole bursts, the rest random rows outside "
              f"bursts), threshold {T}:")
        print("| exact edges | exact same-group pairs | predicted pairs | both | precision | recall |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(f"| {sc['edges']:,} | {sc['exact_pairs']:,} | {sc['predicted_pairs']:,} | {sc['both']:,} | "
              f"{sc['precision']:.4f} | {sc['recall']:.4f} |")
        print(f"\nWhole pool: {gsize.shape[0]:,} groups, {(gsize > 1).sum():,} with copies; bursts in one group: "
              f"{one.mean():.4f}, exactly one group of their own: {exact_burst.mean():.4f}; bursts split "
              f"(sizes): {np.sort(sizes[~one])[::-1][:10].tolist()}")
        res["pairs"] = sc
        res["bursts_one_group"] = float(one.mean())
    return res


def cmd_similar(args) -> dict:
    path, _ = dup_path(args.n, args.d, args.dup_share, args.max_burst)
    print(f"data {path}; load {os.getloadavg()}", flush=True)
    r = run_case("_similar", "--data", path, "--sets", args.sets, "--queries", args.queries, "--k", args.k,
                 "--nprobe", *args.nprobe)
    if "error" in r:
        print("ERROR", r["returncode"], r["error"])
        return r
    print(f"build: {r['build_s']:.1f} s ({r['method']}, nlist {r['nlist']}), peak {_gb(r['build_peak_bytes'])} GiB; "
          f"load {r['load_before'][0]:.1f}; exact answers {r['exact_s']:.0f} s; median distance of the 100th "
          f"exact row {r['kth_distance']:.4f}")
    print(f"\n| n | d | nprobe | query sets | queries per set | k | query s: median (min-max) | "
          f"recall@{args.k}: mean (min) | query peak GiB |")
    print("|---|---|---:|---:|---:|---:|---|---|---:|")
    for nprobe, x in r["res"].items():
        t, rc = np.asarray(x["times"]), np.asarray(x["recall"])
        print(f"| {args.n:,} | {args.d} | {nprobe} | {args.sets} | {args.queries} | {args.k} | "
              f"{np.median(t):.2f} ({t.min():.2f}-{t.max():.2f}) | {rc.mean():.4f} ({rc.min():.2f}) | "
              f"{_gb(r['query_peak_bytes'])} |")
    print(f"\nload after the queries {r['load_after_queries']}, at the end {r['load_after']}")
    return r


PROPAGATE_CONFIGS = {
    # name -> (pool, model, batch share, trials); pools as in bench_recommendation.py
    "digits-redundant": ("digits+zipf", "logreg", 0.025, 3),
    "digits-redundant-mlp": ("digits+zipf", "mlp", 0.025, 3),
    "mnist1d-redundant-mlp": ("mnist1d@10000+zipf", "mlp", 0.025, 3),
}


def cmd_propagate(args) -> dict:
    from bench_recommendation import _pool

    from batchal.simulate import SimulationConfig, simulate
    from batchal.simulate.report import _by, labels_to_reach

    from batchal.dedup import DEFAULT_COSINE_THRESHOLD

    T = DEFAULT_COSINE_THRESHOLD if args.threshold is None else args.threshold
    specs = ["random", "margin", "cluster-margin:order=margin:dup=0.01"]
    out = {}
    print("| pool | model | strategy | labels bought to reach random's final (no propagation) | "
          f"with --propagate {T}: bought | propagated (final round) | propagated labels wrong | final accuracy: without / with |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for name in args.configs:
        pool, model, share, trials = PROPAGATE_CONFIGS[name]
        ds = _pool(pool)
        n = ds.X.shape[0]
        b = max(10, round(share * n))
        t0 = time.perf_counter()
        runs = {}
        for prop in (None, T):
            cfg = SimulationConfig(strategies=specs, seed_size=b, batch_size=b, rounds=6, trials=trials, model=model,
                                   progress=False, n_jobs=args.jobs, propagate=prop)
            runs[prop] = simulate(ds, cfg).rows
        wall = time.perf_counter() - t0
        target = float(np.nanmean(_by(runs[None], "random")[1][-1]))
        out[name] = {"n": n, "batch": b, "target": target, "wall": wall, "rows": {str(k): v for k, v in runs.items()}}
        for s in specs:
            cells = []
            for prop in (None, T):
                lab, acc = _by(runs[prop], s)
                L = [labels_to_reach(lab, acc[:, j], target) for j in range(acc.shape[1])]
                miss = sum(not np.isfinite(x) for x in L)
                Lf = [x if np.isfinite(x) else lab[-1] for x in L]
                cells.append((float(np.mean(Lf)), miss, float(np.mean(acc[-1]))))
            last = [r for r in runs[T] if r["strategy"] == s and r["round"] == max(x["round"] for x in runs[T])]
            n_prop = float(np.mean([r["n_propagated"] for r in last]))
            err = float(np.nanmean([r["propagated_error_rate"] for r in last]))

            def fmt(c):
                return f"{'>= ' if c[1] else ''}{c[0]:.0f}" + (f" ({c[1]} of {trials} never)" if c[1] else "")

            print(f"| {pool} ({n:,} rows, batch {b}) | {model} | {s} | {fmt(cells[0])} | {fmt(cells[1])} | "
                  f"{n_prop:.0f} | {err:.2%} | {cells[0][2]:.3f} / {cells[1][2]:.3f} |", flush=True)
        print(f"<!-- {name}: target {target:.4f}, {wall:.0f} s -->", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    dd = sub.add_parser("dedup")
    sm = sub.add_parser("similar")
    for p in (dd, sm):
        p.add_argument("--n", type=int, default=1_000_000)
        p.add_argument("--d", type=int, default=64)
        p.add_argument("--dup-share", type=float, default=0.03)
        p.add_argument("--max-burst", type=int, default=2000)
        p.add_argument("--json", type=Path, default=None)
    dd.add_argument("--knn", type=int, default=20, help="dedup's default")
    dd.add_argument("--method", default="auto")
    dd.add_argument("--threshold", type=float, default=None)
    dd.add_argument("--sample", type=int, default=50_000)
    dd.add_argument("--cases", nargs="+", default=["knn", "dedup"])
    sm.add_argument("--sets", type=int, default=20)
    sm.add_argument("--queries", type=int, default=100)
    sm.add_argument("--k", type=int, default=100)
    sm.add_argument("--nprobe", type=int, nargs="+", default=[16])
    pr = sub.add_parser("propagate")
    pr.add_argument("--configs", nargs="+", default=list(PROPAGATE_CONFIGS))
    pr.add_argument("--threshold", type=float, default=None)
    pr.add_argument("--jobs", type=int, default=None)
    pr.add_argument("--json", type=Path, default=None)
    x = sub.add_parser("_case")
    x.add_argument("--kind", required=True)
    x.add_argument("--data", required=True)
    x.add_argument("--knn", type=int, default=20)
    x.add_argument("--method", default="auto")
    x.add_argument("--threshold", type=float, default=0.01)
    x.add_argument("--save", default=None)
    y = sub.add_parser("_similar")
    y.add_argument("--data", required=True)
    y.add_argument("--sets", type=int, default=20)
    y.add_argument("--queries", type=int, default=100)
    y.add_argument("--k", type=int, default=100)
    y.add_argument("--nprobe", type=int, nargs="+", default=[16])
    args = ap.parse_args(argv)
    if args.cmd == "_case":
        return _case(args)
    if args.cmd == "_similar":
        return _similar_case(args)
    res = {"dedup": cmd_dedup, "similar": cmd_similar, "propagate": cmd_propagate}[args.cmd](args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
