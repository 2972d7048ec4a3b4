"""Benchmark: exact vs graph average-linkage HAC, and graph HAC at scale.

Every measured case runs in its own subprocess so its peak RSS (``VmHWM``)
is its own. Data are generated once and cached under ``/tmp/batchal_bench``
(never committed).

Usage::

    python benchmarks/bench_cluster.py compare --sizes 10000 20000 40000 --d 128
    python benchmarks/bench_cluster.py real --n 20000
    python benchmarks/bench_cluster.py scale --n 1000000 --d 128 --repeats 3
    python benchmarks/bench_cluster.py scale --n 10000000 --d 64 --repeats 1
    python benchmarks/bench_cluster.py recall --sizes 100000 1000000 --d 128
    python benchmarks/bench_cluster.py curve --sizes 1000000 --d 128 --queries 1000

Data. ``blobs``: a Gaussian mixture with n/200 centres ~ N(0, 4 I) and
per-centre noise sd uniform in [0.5, 1.5] (so mean cluster size 10 cuts
*inside* the mixture components, the hard regime for a kNN approximation).
``fmnist``: Fashion-MNIST train+test pixels, standardised, PCA-50.
``fmnist-mlp``: hidden layer (128 ReLU units) of the simulator's MLP trained on 1,000
Fashion-MNIST labels (the embedding cluster-margin clusters in the simulator).
``digits-mlp``: hidden layer (64 units) of an sklearn MLP trained on digits.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("BATCHAL_BENCH_CACHE", "/tmp/batchal_bench"))
SIZES = (4, 10, 50)


# ---------------------------------------------------------------- data
def blobs_path(n: int, d: int, seed: int = 0) -> Path:
    """Cached float32 blobs (written in chunks so 10M x 64 never sits twice in memory)."""
    p = CACHE / f"blobs_{n}_{d}_{seed}.npy"
    if p.exists():
        return p
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    c = max(10, n // 200)
    centers = (rng.standard_normal((c, d)) * 2).astype(np.float32)
    sd = rng.uniform(0.5, 1.5, c).astype(np.float32)
    tmp = p.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    step = 1 << 18
    for a in range(0, n, step):
        b = min(n, a + step)
        lab = rng.integers(0, c, b - a)
        out[a:b] = centers[lab] + rng.standard_normal((b - a, d), dtype=np.float32) * sd[lab, None]
    out.flush()
    del out
    tmp.rename(p)
    return p


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fmnist_path(n: int) -> Path:
    """First n rows of Fashion-MNIST (train then test), standardised pixels, PCA-50."""
    p = CACHE / f"fmnist_pca50_{n}.npy"
    if p.exists():
        return p
    from sklearn.decomposition import PCA

    root = Path("/usr/share/datasets/fashion-mnist")
    files = sorted(root.glob("*images*.gz"))
    if not files:
        raise SystemExit("Fashion-MNIST not found: apt-get install -y dataset-fashion-mnist")
    train = [f for f in files if "train" in f.name] + [f for f in files if "t10k" in f.name]
    X = np.concatenate([_read_idx(f).reshape(-1, 784) for f in train]).astype(np.float32)[:n]
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    Z = PCA(50, random_state=0).fit_transform(X).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(p, Z)
    return p


def fmnist_mlp_path(n: int) -> Path:
    """Hidden layer (128 ReLU units) of batchal's simulator MLP trained on 1,000 Fashion-MNIST labels.

    The embedding Cluster-Margin clusters in ``batchal simulate --dataset fashion-mnist --model mlp``;
    the first n pool rows.
    """
    p = CACHE / f"fmnist_mlp128_{n}.npy"
    if p.exists():
        return p
    from batchal.simulate.datasets import load_dataset
    from batchal.simulate.models import make_model

    ds = load_dataset("fashion-mnist")
    rng = np.random.default_rng(0)
    seed_rows = rng.choice(ds.X.shape[0], 1000, replace=False)
    model = make_model("mlp", ds.n_classes, False, seed=0)
    model.set_pool(ds.X)
    model.fit(ds.X[seed_rows], ds.y[seed_rows])
    H = model.embed(ds.X[:n]) + 1e-4  # no all-zero ReLU rows (cosine)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(p, H.astype(np.float32))
    return p


def digits_mlp_path() -> Path:
    """Hidden-layer embeddings (ReLU, 64 units) of an MLP trained on sklearn digits."""
    p = CACHE / "digits_mlp64.npy"
    if p.exists():
        return p
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    mlp = MLPClassifier((64,), max_iter=300, random_state=0).fit(X, y)
    H = np.maximum(X @ mlp.coefs_[0] + mlp.intercepts_[0], 0).astype(np.float32)
    H += 1e-3  # no all-zero rows (cosine)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(p, H)
    return p


# ---------------------------------------------------------------- one case (subprocess)
class RssSampler:
    """Samples this process's VmRSS (and RssAnon, RssFile) from /proc/self/status in a thread.

    ``peak_between(t0, t1)`` is the largest VmRSS sampled in ``[t0, t1]``
    (``time.perf_counter`` seconds), so a step's peak is read off its
    timestamps. The sampling period (20 ms) can miss a spike shorter than that;
    the process's ``VmHWM`` bounds the overall peak exactly.
    """

    def __init__(self, period: float = 0.02):
        import threading

        self.period = period
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> tuple[int, int, int]:
        vals = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    vals[key] = int(line.split()[1]) * 1024
        return vals.get("VmRSS", -1), vals.get("RssAnon", -1), vals.get("RssFile", -1)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), *self.read()))
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), *self.read()))

    def peak_between(self, t0: float, t1: float) -> dict:
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if not s:  # a step shorter than one period: the nearest sample after its start
            s = [min((x for x in self.samples if x[0] >= t0), key=lambda x: x[0], default=self.samples[-1])]
        i = max(range(len(s)), key=lambda j: s[j][1])
        return {"rss": s[i][1], "anon": s[i][2], "file": s[i][3]}


def measure_linkage(X, method: str, metric: str, *, total_step: bool = True, **graph_kwargs):
    """Exact or graph HAC of ``X`` with wall, CPU and the peak RSS of each step (sampled in this process).

    Returns ``(Z, record)``; ``record`` holds ``wall``, ``cpu``, ``steps`` (name -> seconds and peaks;
    with ``total_step`` also the whole run as ``total``) and the linkage's own ``timings``.
    """
    sampler = RssSampler().__enter__()
    c0 = time.process_time()
    t0 = time.perf_counter()
    if method == "exact":
        from batchal.clustering.exact import exact_linkage

        Z = exact_linkage(np.asarray(X), metric)
        timings = {"hac": time.perf_counter() - t0}
    else:
        from batchal.clustering.graph import graph_linkage

        Z, timings = graph_linkage(X, metric=metric, progress=False, **graph_kwargs)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    t_end = time.perf_counter()
    sampler.__exit__(None, None, None)
    steps = {}
    for name, a, b in timings.pop("steps", []):
        steps[name] = {"s": b - a, **sampler.peak_between(a, b)}
    if total_step:
        steps["total"] = {"s": wall, **sampler.peak_between(t0, t_end)}
    return Z, {"wall": wall, "cpu": cpu, "steps": steps, "timings": timings}


def _case(args) -> None:
    X = np.load(args.data, mmap_mode="r")
    if args.rows:
        X = X[: args.rows]
    Z, rec = measure_linkage(X, args.method, args.metric, knn=args.k, nprobe=args.nprobe)
    if args.save_z:
        np.save(args.save_z, Z)
    print(json.dumps({"wall": rec["wall"], "cpu": rec["cpu"], "peak_bytes": peak_rss_bytes(), "steps": rec["steps"],
                      "load": os.getloadavg(), "timings": rec["timings"]}))


def peak_rss_bytes() -> int:
    """This process's own peak RSS.

    ``VmHWM`` belongs to the process's address space, which exec replaces, whereas
    Linux carries ``ru_maxrss`` over from the parent across fork and exec, so a
    subprocess of a large parent would report the parent's size.
    """
    from bench_select import _status  # the one /proc/self/status reader of the benchmarks

    return _status("VmHWM")


def run_case(data: Path, method: str, metric: str = "cosine", k: int = 50, nprobe=None,
             rows: int = 0, save_z: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "_case", "--data", str(data), "--method", method,
           "--metric", metric, "--k", str(k), "--rows", str(rows)]
    if nprobe:
        cmd += ["--nprobe", str(nprobe)]
    if save_z:
        cmd += ["--save-z", str(save_z)]
    # OpenMP threads (faiss's k-means, numba's parallel loops) sleep rather than spin
    # while waiting: on a shared, oversubscribed machine spinning threads cost
    # several times their work (set OMP_WAIT_POLICY to override).
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr or "")[-2000:], "returncode": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _aris(Ze, Zg, n) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from batchal.clustering.flat import cut

    res = {}
    for m in SIZES:
        a, _ = cut(Ze, n, mean_cluster_size=m)
        b, _ = cut(Zg, n, mean_cluster_size=m)
        res[m] = adjusted_rand_score(a, b)
    return res


def _gb(b) -> str:
    return f"{b / 2**30:.2f}"


def cmd_compare(args, datasets=None) -> list[dict]:
    rows = []
    items = datasets or [(f"blobs d={args.d}", blobs_path(max(args.sizes), args.d), n) for n in args.sizes]
    print(f"| data | n | exact s | exact GB | graph s (kNN + merge) | graph GB | ARI@4 | ARI@10 | ARI@50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path, n in items:
        ze, zg = CACHE / f"Z_exact_{path.stem}_{n}.npy", CACHE / f"Z_graph_{path.stem}_{n}.npy"
        e = run_case(path, "exact", args.metric, rows=n, save_z=ze)
        g = run_case(path, "graph", args.metric, k=args.k, rows=n, save_z=zg)
        if "error" in e or "error" in g:
            print(name, n, e.get("error", ""), g.get("error", ""))
            continue
        ari = _aris(np.load(ze), np.load(zg), n)
        t = g["timings"]
        print(f"| {name} | {n:,} | {e['wall']:.1f} | {_gb(e['peak_bytes'])} | {g['wall']:.1f} "
              f"({t['knn']:.1f} + {t['merge'] + t['symmetrize'] + t['join_components']:.1f}) | "
              f"{_gb(g['peak_bytes'])} | {ari[4]:.4f} | {ari[10]:.4f} | {ari[50]:.4f} |", flush=True)
        rows.append({"data": name, "n": n, "exact": e, "graph": g, "ari": ari})
    return rows


def cmd_real(args) -> list[dict]:
    items = [("fmnist PCA-50", fmnist_path(args.n), args.n),
             ("fmnist MLP-128 hidden", fmnist_mlp_path(args.n), args.n),
             ("digits MLP-64", digits_mlp_path(), 0)]
    items = [(a, b, c if c else int(np.load(b, mmap_mode="r").shape[0])) for a, b, c in items]
    return cmd_compare(args, items)


STEPS = ("knn_prepare", "knn_search", "symmetrize", "merge", "join_components", "finish_tree")


def cmd_scale(args) -> list[dict]:
    """Graph HAC at scale: wall, CPU, and the peak RSS of every step (sampled in the child)."""
    path = blobs_path(args.n, args.d)
    print(f"data {path}; load before: {os.getloadavg()}")
    print("| n | d | k | run | wall s | CPU s | load (1 min) | kNN s | nlist / nprobe | symmetrise s | merge s | "
          "peak GB (VmHWM) | edges | rounds | components |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    runs = []
    for r in range(args.repeats):
        g = run_case(path, "graph", args.metric, k=args.k, nprobe=args.nprobe)
        if "error" in g:
            print("ERROR", g["returncode"], g["error"])
            runs.append(g)
            continue
        t = g["timings"]
        merge = t["merge"] + t["join_components"]
        print(f"| {args.n:,} | {args.d} | {args.k} | {r} | {g['wall']:.1f} | {g['cpu']:.1f} | {g['load'][0]:.1f} | "
              f"{t['knn']:.1f} | {t.get('knn_nlist', '-')} / {t.get('knn_nprobe', '-')} | {t['symmetrize']:.1f} | {merge:.1f} | {_gb(g['peak_bytes'])} | {t['edges']:,} | "
              f"{t['rounds']} | {t['components']} |", flush=True)
        runs.append(g)
    print()
    print("Peak RSS per step (sampled every 20 ms; GB = 2^30 bytes; anon = heap, file = mapped file pages):")
    print("| run | step | s | peak RSS GB | of which anon GB | file GB |")
    print("|---|---|---|---|---|---|")
    for r, g in enumerate(runs):
        if "error" in g:
            continue
        for name in STEPS + ("total",):
            st = g["steps"].get(name)
            if st:
                print(f"| {r} | {name} | {st['s']:.1f} | {_gb(st['rss'])} | {_gb(st['anon'])} | {_gb(st['file'])} |")
    print()
    print("Per run: the kNN steps (s), the merge's phases (s) and its arena compactions:")
    for r, g in enumerate(runs):
        if "error" in g:
            continue
        t = g["timings"]
        knn = " + ".join(f"{key} {t['knn_' + key + '_s']:.1f}" for key in ("train", "assign", "copy")
                         if t.get("knn_" + key + "_s") is not None)
        print(f"- run {r}: kNN {knn} + search {t['knn_search']:.1f}; merge {t.get('merge_phases')}, "
              f"compactions {t.get('compactions')}")
    ok = [g for g in runs if "error" not in g]
    if ok:
        med = lambda f: float(np.median([f(g) for g in ok]))  # noqa: E731
        print(f"median of {len(ok)}: wall {med(lambda g: g['wall']):.1f} s, kNN "
              f"{med(lambda g: g['timings']['knn']):.1f} s, peak {_gb(med(lambda g: g['peak_bytes']))} GB")
    return runs


def _nprobe(v):
    """--nprobe: an int, "auto", or None for the library default."""
    if v is None:
        from batchal.clustering.knn import DEFAULT_NPROBE

        return DEFAULT_NPROBE
    return v if v == "auto" else int(v)


def cmd_recall(args) -> list[dict]:
    """Recall of the approximate kNN lists against brute force on a random sample of query rows."""
    import faiss

    from batchal.clustering.knn import knn_graph, recall

    rows = []
    print("| n | d | k | nlist | nprobe | estimated recall (auto) | kNN s | CPU s | load | recall@k (sample) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        X = np.load(blobs_path(n, args.d), mmap_mode="r")
        t0 = time.perf_counter()
        c0 = time.process_time()
        r = knn_graph(X, args.k, metric=args.metric, nprobe=_nprobe(args.nprobe), method="ivf")
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        load = os.getloadavg()[0]
        q = np.random.default_rng(1).choice(n, size=min(n, args.queries), replace=False)
        Xn = np.array(X, dtype=np.float32, order="C")  # a copy: the memmap is read-only
        if args.metric == "cosine":
            Xn /= np.linalg.norm(Xn, axis=1, keepdims=True)
            index = faiss.IndexFlatIP(Xn.shape[1])
        else:
            index = faiss.IndexFlatL2(Xn.shape[1])
        index.add(Xn)
        _, I = index.search(Xn[q], args.k + 1)
        exact = np.stack([row[row != qi][: args.k] for row, qi in zip(I, q)])
        rec = recall(r.indices[q], exact)
        est = r.info.get("nprobe_estimated_recall")
        print(f"| {n:,} | {args.d} | {args.k} | {r.info['nlist']} | {r.info['nprobe']} | "
              f"{'' if est is None else f'{est:.4f}'} | {dt:.1f} | {cpu:.1f} | {load:.1f} | {rec:.4f} |", flush=True)
        rows.append({"n": n, "d": args.d, "k": args.k, "knn_s": dt, "recall": rec, "info": r.info})
        del Xn, index
    return rows


def cmd_curve(args) -> list[dict]:
    """Recall@k of the IVF search with 1 .. 64 probes, from the exact neighbours of random rows.

    The library's cells (its k-means on its sample, ``nlist = 2 sqrt(n)``); a
    neighbour is found with p probes exactly when its cell is among the query's
    first p cells (as ``nprobe="auto"`` measures up to 16; this goes further).
    """
    from batchal.clustering import knn as L
    from batchal.clustering._knn_kernels import top_cells

    rows = []
    for n in args.sizes:
        X = np.load(blobs_path(n, args.d), mmap_mode="r")
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        C = L._train_cells(X, args.metric, L.default_nlist(n), rng, False)
        q = np.sort(np.random.default_rng(1).choice(n, args.queries, replace=False))
        acc = L._QueryTopK(L._prep_chunk(np.asarray(X[q]), args.metric, 0), q, args.k, args.metric)
        for a in range(0, n, L.CHUNK_ROWS):  # exact top-k of the queries over all rows
            acc.fold(L._prep_chunk(np.asarray(X[a:a + L.CHUNK_ROWS]), args.metric, a), a)
        I, _ = acc.result()
        need = np.unique(np.concatenate([I[I >= 0], q]))
        R = L._prep_chunk(np.asarray(X[need]), args.metric, 0)
        half = (0.5 * np.einsum("ij,ij->i", C, C)).astype(np.float32)
        l2 = args.metric != "cosine"
        P = min(64, C.shape[0])
        cell = np.empty(need.shape[0], dtype=np.int32)
        probes = np.empty((need.shape[0], P - 1), dtype=np.int32)
        for a in range(0, need.shape[0], 4096):
            top_cells(R[a:a + 4096] @ C.T, half, l2, cell, probes, a)
        at = np.searchsorted(need, q)
        qcells = np.concatenate([cell[at, None], probes[at]], axis=1)
        ncell = np.where(I >= 0, cell[np.searchsorted(need, np.maximum(I, 0))], -1)
        rec = L.probe_recall(I, qcells, ncell)
        sel = [p for p in (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64) if p <= P]
        print(f"| {n:,} | {args.d} | {args.k} | {C.shape[0]} | {args.queries} | "
              + " | ".join(f"{p}: {rec[p - 1]:.4f}" for p in sel) + f" | {time.perf_counter() - t0:.0f} |", flush=True)
        rows.append({"n": n, "d": args.d, "k": args.k, "nlist": int(C.shape[0]), "recall": rec.tolist()})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000])
    c.add_argument("--d", type=int, default=128)
    r = sub.add_parser("real")
    r.add_argument("--n", type=int, default=20_000)
    s = sub.add_parser("scale")
    s.add_argument("--n", type=int, default=1_000_000)
    s.add_argument("--d", type=int, default=128)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--nprobe", default=None, help="an int or auto (default: the library's)")
    rc = sub.add_parser("recall")
    rc.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    rc.add_argument("--d", type=int, default=128)
    rc.add_argument("--queries", type=int, default=2000)
    rc.add_argument("--nprobe", default=None, help="an int or auto (default: the library's)")
    cv = sub.add_parser("curve", help="recall@k of 1..64 probes (exact, from sample rows)")
    cv.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    cv.add_argument("--d", type=int, default=128)
    cv.add_argument("--queries", type=int, default=1000)
    for p in (c, r, s, rc, cv):
        p.add_argument("--metric", default="cosine")
        p.add_argument("--k", type=int, default=50)
        p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    x = sub.add_parser("_case")
    x.add_argument("--data", required=True)
    x.add_argument("--method", required=True)
    x.add_argument("--metric", default="cosine")
    x.add_argument("--k", type=int, default=50)
    x.add_argument("--nprobe", default=None)
    x.add_argument("--rows", type=int, default=0)
    x.add_argument("--save-z", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "_case":
        args.nprobe = _nprobe(args.nprobe)
        return _case(args)
    res = {"compare": cmd_compare, "real": cmd_real, "scale": cmd_scale, "recall": cmd_recall,
           "curve": cmd_curve}[args.cmd](args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
