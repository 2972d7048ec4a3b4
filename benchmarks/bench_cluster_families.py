"""Benchmark: the graph HAC and its kNN stage over families of data (issue 24).

Every family is 1M x 128 float32 by default, generated locally once and cached
under ``~/.cache/batchal/bench-families`` (``$BATCHAL_BENCH_FAMILIES`` overrides;
never committed). Each measured case runs in its own subprocess, so its peak
RSS (``VmHWM``) is its own.

Usage::

    python benchmarks/bench_cluster_families.py gen                      # all families
    python benchmarks/bench_cluster_families.py knn --families separated sphere
    python benchmarks/bench_cluster_families.py scale --repeats 3        # the table of issue 24
    python benchmarks/bench_cluster_families.py agree --rows 20000       # ARI against exact HAC

Families (``FAMILIES``; cosine, k = 50 throughout):

``blobs``
    the clustering benchmark's own mixture (``bench_cluster.py``): n/200 centres
    ~ N(0, 4 I), per-centre noise sd uniform in [0.5, 1.5].
``separated``
    many small well-separated clusters: 10,000 centres ~ N(0, I), each row a
    random centre plus N(0, 0.5^2 I) noise (the mixture of issue 24).
``overlapping``
    few large overlapping clusters: 20 centres ~ N(0, I), noise sd 1.
``longtail``
    20,000 clusters with Zipf(1.1) sizes (the largest holds ~10% of the rows,
    most hold a handful), centres ~ N(0, I), noise sd uniform in [0.3, 0.8].
``bursts``
    near-duplicate bursts: 40,000 base rows from a mixture (2,000 centres
    ~ N(0, I), noise sd 1) each copied 2-50 times (uniform) with N(0, 0.02^2 I)
    noise, as web pools hold re-uploads.
``web``
    real embeddings: the simulator's ``fmnist-web`` pool (Fashion-MNIST images,
    Zipf-many near-exact and augmented copies, the 256-unit hidden layer of a
    frozen network; :func:`batchal.simulate.pools.load_fmnist_web`), PCA to 128
    dimensions fitted on 50,000 rows.
``sphere``
    uniform noise on the unit sphere: no structure, the worst case for any
    partition index.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cluster as BC  # noqa: E402  (the RSS sampler, the ARI at cuts, peak RSS)

CACHE = Path(os.environ.get("BATCHAL_BENCH_FAMILIES", Path.home() / ".cache" / "batchal" / "bench-families"))
FAMILIES = ("blobs", "separated", "overlapping", "longtail", "bursts", "web", "sphere")
STEP = 1 << 16


def _write(name: str, n: int, d: int, fill) -> Path:
    """Cache file of a family; ``fill(out, rng)`` writes the rows in chunks (never twice in memory)."""
    p = CACHE / f"{name}_{n}_{d}.npy"
    if p.exists():
        return p
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    fill(out, np.random.default_rng(0))
    out.flush()
    del out
    tmp.rename(p)
    return p


def _mixture_fill(centres: np.ndarray, sd: np.ndarray, weights=None):
    def fill(out, rng):
        n, d = out.shape
        c = centres.shape[0]
        for a in range(0, n, STEP):
            b = min(n, a + STEP)
            lab = rng.choice(c, b - a, p=weights) if weights is not None else rng.integers(0, c, b - a)
            out[a:b] = centres[lab] + rng.standard_normal((b - a, d), dtype=np.float32) * sd[lab, None]
    return fill


def family_path(name: str, n: int = 1_000_000, d: int = 128) -> Path:
    """Path of the cached ``(n, d)`` float32 rows of family ``name`` (generated on first use)."""
    rng = np.random.default_rng(12345)  # the families' parameters; the rows use their own stream
    if name == "blobs":  # the very rows of bench_cluster.py, cached here
        BC.CACHE = CACHE
        return BC.blobs_path(n, d)
    if name == "separated":
        c = 10_000
        return _write(name, n, d, _mixture_fill(rng.standard_normal((c, d)).astype(np.float32),
                                                np.full(c, 0.5, np.float32)))
    if name == "overlapping":
        c = 20
        return _write(name, n, d, _mixture_fill(rng.standard_normal((c, d)).astype(np.float32),
                                                np.full(c, 1.0, np.float32)))
    if name == "longtail":
        c = 20_000
        w = 1.0 / np.arange(1, c + 1) ** 1.1
        return _write(name, n, d, _mixture_fill(rng.standard_normal((c, d)).astype(np.float32),
                                                rng.uniform(0.3, 0.8, c).astype(np.float32), w / w.sum()))
    if name == "bursts":
        nb = max(2, n // 25)
        centres = rng.standard_normal((max(2, nb // 20), d)).astype(np.float32)
        base = centres[rng.integers(0, centres.shape[0], nb)] + rng.standard_normal((nb, d)).astype(np.float32)
        copies = rng.integers(2, 51, nb)
        src = np.repeat(np.arange(nb), copies)
        src = src[rng.permutation(src.shape[0])]
        if src.shape[0] < n:
            src = np.concatenate([src, rng.integers(0, nb, n - src.shape[0])])
        src = src[:n]

        def fill(out, rng2):
            for a in range(0, n, STEP):
                b = min(n, a + STEP)
                out[a:b] = base[src[a:b]] + rng2.standard_normal((b - a, d), dtype=np.float32) * 0.02
        return _write(name, n, d, fill)
    if name == "web":
        return _write(name, n, d, _web_fill)
    if name == "sphere":
        def fill(out, rng2):
            for a in range(0, n, STEP):
                b = min(n, a + STEP)
                g = rng2.standard_normal((b - a, d), dtype=np.float32)
                out[a:b] = g / np.linalg.norm(g, axis=1, keepdims=True)
        return _write(name, n, d, fill)
    raise SystemExit(f"unknown family {name!r}; one of {', '.join(FAMILIES)}")


def _web_fill(out, rng):
    """fmnist-web's 256-unit hidden layer (its first n rows), PCA-128 fitted on 50,000 of them."""
    from batchal.simulate.pools import load_fmnist_web

    n, d = out.shape
    ds = load_fmnist_web(max(n, 1_000_000))
    X = ds.X
    fit = np.sort(rng.choice(n, min(n, 50_000), replace=False))
    S = np.asarray(X[fit], dtype=np.float64)
    mu = S.mean(0)
    _, _, Vt = np.linalg.svd(S - mu, full_matrices=False)
    W = np.ascontiguousarray(Vt[:d].T, dtype=np.float32)  # (256, d)
    mu = mu.astype(np.float32)
    for a in range(0, n, STEP):
        b = min(n, a + STEP)
        out[a:b] = (np.asarray(X[a:b], dtype=np.float32) - mu) @ W


def subsample_path(name: str, rows: int, n: int = 1_000_000, d: int = 128) -> Path:
    """``rows`` random rows (seeded, sorted) of a family, cached as their own file."""
    p = CACHE / f"{name}_{n}_{d}_sub{rows}.npy"
    if not p.exists():
        X = np.load(family_path(name, n, d), mmap_mode="r")
        idx = np.sort(np.random.default_rng(7).choice(X.shape[0], rows, replace=False))
        np.save(p, np.asarray(X[idx], dtype=np.float32))
    return p


# ---------------------------------------------------------------- cases (each in its own process)
def _env() -> dict:
    # OpenMP threads sleep rather than spin while waiting (see bench_cluster.run_case)
    return dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def _sub(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=_env())
    if out.returncode != 0:
        return {"error": (out.stderr or "")[-3000:], "returncode": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def brute_force_recall(X, indices: np.ndarray, k: int, metric: str, queries: int, seed: int = 1) -> float:
    """Recall@k of ``indices`` (original numbering) on ``queries`` random rows against faiss brute force."""
    import faiss

    from batchal.clustering.knn import _prep_chunk, recall

    n = X.shape[0]
    q = np.sort(np.random.default_rng(seed).choice(n, size=min(n, queries), replace=False))
    Q = _prep_chunk(np.asarray(X[q]), metric, 0)
    fm = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    # best k + 1 over the pool chunk by chunk (the pool never sits in memory as one copy)
    best_s = np.full((q.shape[0], k + 1), -np.inf if metric == "cosine" else np.inf, dtype=np.float32)
    best_i = np.full((q.shape[0], k + 1), -1, dtype=np.int64)
    for a in range(0, n, 1 << 18):
        b = min(n, a + (1 << 18))
        s, i = faiss.knn(Q, _prep_chunk(np.asarray(X[a:b]), metric, a), k + 1, metric=fm)
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, i + a], axis=1)
        o = np.argsort(-s_all if metric == "cosine" else s_all, axis=1, kind="stable")[:, :k + 1]
        best_s, best_i = np.take_along_axis(s_all, o, 1), np.take_along_axis(i_all, o, 1)
    exact = np.stack([row[row != qi][:k] for row, qi in zip(best_i, q)])
    return recall(indices[q], exact)


def _case_knn(args) -> None:
    """kNN graph alone: time, chosen settings, recall against brute force on sample rows."""
    from batchal.clustering.knn import knn_graph

    X = np.load(args.data, mmap_mode="r")
    t0 = time.perf_counter()
    c0 = time.process_time()
    kw = {} if args.nlist is None else {"nlist": args.nlist}
    r = knn_graph(X, args.k, metric=args.metric, nprobe=BC._nprobe(args.nprobe), method=args.knn_method, **kw)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    load = os.getloadavg()
    rec = brute_force_recall(X, r.indices, r.indices.shape[1], args.metric, args.queries)
    info = {k: v for k, v in r.info.items() if isinstance(v, (int, float, str, list, type(None)))}
    print(json.dumps({"wall": wall, "cpu": cpu, "load": load, "recall": rec, "info": info,
                      "peak_bytes": BC.peak_rss_bytes()}))


def _case_graph(args) -> None:
    """Whole graph HAC: wall, CPU, seconds and peak RSS per step (sampled in this process)."""
    X = np.load(args.data, mmap_mode="r")
    Z, rec = BC.measure_linkage(X, args.method, args.metric, total_step=False, knn=args.k,
                                nprobe=BC._nprobe(args.nprobe), knn_method=args.knn_method)
    if args.save_z:
        np.save(args.save_z, Z)
    print(json.dumps({"wall": rec["wall"], "cpu": rec["cpu"], "peak_bytes": BC.peak_rss_bytes(), "steps": rec["steps"],
                      "load": os.getloadavg(), "timings": rec["timings"]}, default=str))


# ---------------------------------------------------------------- commands
def _common(args) -> list[str]:
    out = ["--metric", args.metric, "--k", str(args.k), "--knn-method", args.knn_method]
    if args.nprobe is not None:
        out += ["--nprobe", str(args.nprobe)]
    return out


def cmd_gen(args):
    for f in args.families:
        t0 = time.perf_counter()
        p = family_path(f, args.n, args.d)
        print(f"{f}: {p} ({time.perf_counter() - t0:.1f} s)", flush=True)


def cmd_knn(args) -> list[dict]:
    print(f"kNN stage alone, n = {args.n:,}, d = {args.d}, k = {args.k}, recall on {args.queries} rows")
    print("| family | nlist | nprobe | estimated recall | recall@k (brute force) | kNN s | CPU s | load (1 min) | "
          "train + assign + copy + search s | recall by probes (1, 2, ... 16) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    rows = []
    for f in args.families:
        argv = ["_knn", "--data", str(family_path(f, args.n, args.d)), "--queries", str(args.queries), *_common(args)]
        if args.nlist:
            argv += ["--nlist", str(args.nlist)]
        r = _sub(argv)
        if "error" in r:
            print(f"| {f} | ERROR {r['error'][-400:]} |")
            continue
        i = r["info"]
        est = i.get("nprobe_estimated_recall")
        parts = " + ".join(f"{i[key]:.1f}" for key in ("train_s", "assign_s", "copy_s") if key in i)
        curve = " ".join(f"{x:.3f}" for x in (i.get("nprobe_recall") or []))
        print(f"| {f} | {i.get('nlist')} | {i.get('nprobe')} | {'' if est is None else f'{est:.4f}'} | "
              f"{r['recall']:.4f} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['load'][0]:.1f} | "
              f"{parts} + {i.get('search_s', 0):.1f} | {curve} |", flush=True)
        rows.append({"family": f, **r})
    return rows


def _case_hnsw(args) -> None:
    """faiss HNSW on the first ``n`` rows: build time, then search time and recall@k per ``efSearch``."""
    import faiss

    from batchal.clustering.knn import _prep_chunk

    X = np.load(args.data, mmap_mode="r")[: args.rows]
    Xn = _prep_chunk(np.asarray(X), args.metric, 0)
    fm = faiss.METRIC_INNER_PRODUCT if args.metric == "cosine" else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(Xn.shape[1], args.hnsw_m, fm)
    index.hnsw.efConstruction = args.ef_construction
    t0, c0 = time.perf_counter(), time.process_time()
    index.add(Xn)
    build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    q = np.sort(np.random.default_rng(1).choice(Xn.shape[0], size=min(Xn.shape[0], args.queries), replace=False))
    out = []
    for ef in args.ef_search:
        index.hnsw.efSearch = ef
        c0 = time.process_time()
        _, i = index.search(Xn[q], args.k + 1)
        dt = time.process_time() - c0
        got = np.stack([row[row != qi][: args.k] for row, qi in zip(i, q)])
        c0 = time.process_time()
        rec = brute_force_recall(X, _scatter(got, q, Xn.shape[0]), args.k, args.metric, args.queries)
        exact = time.process_time() - c0  # the exact lists of the same queries: what brute force costs per row
        out.append({"ef": ef, "recall": rec, "search_cpu_s_all_rows": dt * Xn.shape[0] / q.shape[0]})
    print(json.dumps({"rows": Xn.shape[0], "build_s": build, "build_cpu_s": build_cpu,
                      "exact_cpu_s_all_rows": exact * Xn.shape[0] / q.shape[0], "load": os.getloadavg(), "by_ef": out,
                      "threads": faiss.omp_get_max_threads()}))


def _scatter(got: np.ndarray, q: np.ndarray, n: int) -> np.ndarray:
    """Lists of the query rows ``q`` placed at their rows of an (n, k) array (the recall helper indexes by row)."""
    full = np.full((n, got.shape[1]), -1, dtype=np.int64)
    full[q] = got
    return full


def cmd_hnsw(args) -> list[dict]:
    """Is faiss's HNSW an option where IVF cannot reach the recall? Build and search cost, recall per efSearch."""
    print(f"faiss HNSW (M = {args.hnsw_m}, efConstruction = {args.ef_construction}), first {args.rows:,} rows, "
          f"k = {args.k}, recall on {args.queries} rows against brute force over the same rows")
    print("| family | rows | build s (CPU s) | load (1 min) | " + " | ".join(f"ef {e}: recall, search CPU s (all rows)"
                                                         for e in args.ef_search)
          + " | exact (faiss brute force) CPU s (all rows) |")
    print("|---|---:|---:|---:|" + "---|" * len(args.ef_search) + "---:|")
    rows = []
    for f in args.families:
        argv = ["_hnsw", "--data", str(family_path(f, args.n, args.d)), "--queries", str(args.queries),
                "--rows", str(args.rows), "--hnsw-m", str(args.hnsw_m), "--ef-construction", str(args.ef_construction),
                "--ef-search", *map(str, args.ef_search), "--metric", args.metric, "--k", str(args.k)]
        r = _sub(argv)
        if "error" in r:
            print(f"| {f} | ERROR {r['error'][-400:]} |")
            continue
        cells = " | ".join(f"{e['recall']:.3f}, {e['search_cpu_s_all_rows']:.1f}" for e in r["by_ef"])
        print(f"| {f} | {r['rows']:,} | {r['build_s']:.1f} ({r['build_cpu_s']:.1f}) | {r['load'][0]:.1f} | {cells} | "
              f"{r['exact_cpu_s_all_rows']:.0f} |", flush=True)
        rows.append({"family": f, **r})
    return rows


def cmd_scale(args) -> list[dict]:
    """The table of issue 24: per family, median of ``repeats`` whole runs, peak, recall."""
    out = []
    print(f"graph HAC, n = {args.n:,}, d = {args.d}, k = {args.k}, {args.metric}; load before {os.getloadavg()}")
    print("| family | run | wall s | CPU s | load (1 min) | kNN s (prepare + search) | nlist / nprobe | "
          "symmetrise s | merge s | peak GiB |")
    print("|---|---|---:|---:|---:|---|---|---:|---:|---:|")
    for f in args.families:
        path = family_path(f, args.n, args.d)
        runs = []
        for r in range(args.repeats):
            g = _sub(["_graph", "--data", str(path), "--method", "graph", *_common(args)])
            if "error" in g:
                print(f"| {f} | {r} | ERROR {g['error'][-400:]} |")
                continue
            t = g["timings"]
            print(f"| {f} | {r} | {g['wall']:.1f} | {g['cpu']:.1f} | {g['load'][0]:.1f} | {t['knn']:.1f} "
                  f"({t['knn_prepare']:.1f} + {t['knn_search']:.1f}) | {t.get('knn_nlist', '-')} / "
                  f"{t.get('knn_nprobe', '-')} | {t['symmetrize']:.1f} | "
                  f"{t['merge'] + t['join_components']:.1f} | {BC._gb(g['peak_bytes'])} |", flush=True)
            runs.append(g)
        rec = None
        if args.queries:
            kr = _sub(["_knn", "--data", str(path), "--queries", str(args.queries), *_common(args)])
            rec = kr.get("recall")
        out.append({"family": f, "runs": runs, "recall": rec})
    print()
    print(f"| family | wall s (median of {args.repeats}) | kNN s | merge s | peak GiB (max) | nlist / nprobe | "
          f"recall@{args.k} ({args.queries} rows) |")
    print("|---|---:|---:|---:|---:|---|---:|")
    meds = []
    for o in out:
        if not o["runs"]:
            continue
        med = lambda fn: float(np.median([fn(g) for g in o["runs"]]))  # noqa: E731
        t = o["runs"][0]["timings"]
        w = med(lambda g: g["wall"])
        meds.append(w)
        print(f"| {o['family']} | {w:.1f} | {med(lambda g: g['timings']['knn']):.1f} | "
              f"{med(lambda g: g['timings']['merge'] + g['timings']['join_components']):.1f} | "
              f"{BC._gb(max(g['peak_bytes'] for g in o['runs']))} | {t.get('knn_nlist')} / {t.get('knn_nprobe')} | "
              f"{'' if o['recall'] is None else format(o['recall'], '.4f')} |")
    if meds:
        print(f"median over families: {np.median(meds):.1f} s; range {min(meds):.1f}-{max(meds):.1f} s")
    return out


def cmd_agree(args) -> list[dict]:
    """Exact average linkage against the graph HAC on a random subsample of each family."""
    print(f"agreement with exact average linkage, {args.rows:,} random rows of each family, k = {args.k}, "
          f"kNN method {args.knn_method}")
    print("| family | exact s | exact GiB | graph s | graph GiB | nlist / nprobe | ARI@4 | ARI@10 | ARI@50 | load |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    out = []
    for f in args.families:
        p = subsample_path(f, args.rows, args.n, args.d)
        ze = CACHE / f"Z_exact_{p.stem}.npy"
        zg = CACHE / f"Z_graph_{p.stem}_{args.knn_method}.npy"
        e = {"wall": float("nan"), "peak_bytes": 0}
        if not ze.exists():
            e = _sub(["_graph", "--data", str(p), "--method", "exact", "--metric", args.metric, "--save-z", str(ze)])
        g = _sub(["_graph", "--data", str(p), "--method", "graph", *_common(args), "--save-z", str(zg)])
        if "error" in e or "error" in g:
            print(f"| {f} | ERROR {e.get('error', '')[-300:]} {g.get('error', '')[-300:]} |")
            continue
        ari = BC._aris(np.load(ze), np.load(zg), args.rows)
        t = g["timings"]
        print(f"| {f} | {e['wall']:.1f} | {BC._gb(e['peak_bytes'])} | {g['wall']:.1f} | {BC._gb(g['peak_bytes'])} | "
              f"{t.get('knn_nlist', '-')} / {t.get('knn_nprobe', '-')} | {ari[4]:.4f} | {ari[10]:.4f} | "
              f"{ari[50]:.4f} | {g['load'][0]:.1f} |", flush=True)
        out.append({"family": f, "exact": e, "graph": g, "ari": ari})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    cmds = {"gen": cmd_gen, "knn": cmd_knn, "scale": cmd_scale, "agree": cmd_agree, "hnsw": cmd_hnsw}
    parsers = {name: sub.add_parser(name) for name in cmds}
    for p in parsers.values():
        p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
        p.add_argument("--n", type=int, default=1_000_000)
        p.add_argument("--d", type=int, default=128)
        p.add_argument("--metric", default="cosine")
        p.add_argument("--k", type=int, default=50)
        p.add_argument("--nprobe", default=None, help="an int or auto (default: the library's)")
        p.add_argument("--knn-method", default="auto", choices=("auto", "ivf", "flat"))
        p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parsers["knn"].add_argument("--queries", type=int, default=1000)
    parsers["knn"].add_argument("--nlist", type=int, default=None)
    parsers["scale"].add_argument("--repeats", type=int, default=3)
    parsers["scale"].add_argument("--queries", type=int, default=1000, help="recall sample (0: skip)")
    parsers["agree"].add_argument("--rows", type=int, default=20_000)
    hn = sub.add_parser("_hnsw")
    for p in (parsers["hnsw"], hn):
        p.add_argument("--rows", type=int, default=200_000)
        p.add_argument("--hnsw-m", type=int, default=32)
        p.add_argument("--ef-construction", type=int, default=40)
        p.add_argument("--ef-search", type=int, nargs="+", default=[64, 256, 1024])
    parsers["hnsw"].add_argument("--queries", type=int, default=1000)
    for a, kw in (("--data", {"required": True}), ("--metric", {"default": "cosine"}), ("--k", {"type": int, "default": 50}),
                  ("--queries", {"type": int, "default": 1000})):
        hn.add_argument(a, **kw)
    for name in ("_knn", "_graph"):
        x = sub.add_parser(name)
        x.add_argument("--data", required=True)
        x.add_argument("--method", default="graph")
        x.add_argument("--metric", default="cosine")
        x.add_argument("--k", type=int, default=50)
        x.add_argument("--nprobe", default=None)
        x.add_argument("--nlist", type=int, default=None)
        x.add_argument("--knn-method", default="auto")
        x.add_argument("--queries", type=int, default=1000)
        x.add_argument("--save-z", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "_knn":
        return _case_knn(args)
    if args.cmd == "_graph":
        return _case_graph(args)
    if args.cmd == "_hnsw":
        return _case_hnsw(args)
    res = cmds[args.cmd](args)
    if args.json and res is not None:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
