"""Benchmark: the ray engine against the local engine on this machine (issue 9).

Every case runs in its own process; two sampler threads record its memory:

* ``peak_sum`` (the figure of the earlier runs): once a second, the resident
  memory (VmRSS) of that process and of every Ray worker process it started (``ray::...``);
  the peak of each process and the peak of their sum. It counts a page that
  several processes map (the object store's shared memory, the memory-mapped
  ``.npy``) once per process, and leaves out Ray's own processes (raylet, GCS,
  agents).
* ``peak_pss`` (issue 23): every 0.25 s, the memory of the whole session at
  that moment: this process and all its descendants (raylet, GCS, Ray's
  agents, every worker and actor; not another job's Ray), each counted at
  its proportional set size without shared memory (``Pss - Pss_Shmem`` of
  ``/proc/PID/smaps_rollup``: a file page mapped by several processes is split
  among them), plus the object store's shared-memory file once, at its
  resident size. The peak of that simultaneous total, and the parts at that
  moment (``pss_at_peak``), and per stage as told by the actors alive
  (``peak_pss_by_actors``: KnnShard, RacActor). For the local engine the session is the one process.

Usage::

    python benchmarks/bench_ray.py cluster --n 1000000 --d 64 --engine ray
    python benchmarks/bench_ray.py cluster --n 1000000 --d 64 --engine local
    python benchmarks/bench_ray.py select --n 10000000 --k 1000000 --engine ray
    python benchmarks/bench_ray.py pipeline --n 10000000 --d 64 --batch 1000000 --object-store-gb 6

``cluster``: kNN graph (k = 50) and graph HAC of the cached blobs of
``bench_cluster.py`` (memory-mapped ``.npy``, read by the workers).
``select``: one round: a small model (a fixed linear layer + softmax over 16
features, C = 10) predicts the pool (Parquet shards, 1M-row row groups), then
cluster-margin selects ``k`` items with cluster ids of mean size 10.
``pipeline``: the whole round through the ray engine in one Ray session: the
clustering (kNN graph + graph HAC of the blobs, clusters of mean size 10), then
the scoring of the Parquet pool by the small model and the cluster-margin batch
of ``--batch`` items over those clusters; wall time and the peak memory of
every process per stage.
Ray: ``ray.init(num_cpus=2, object_store_memory=2 GiB)`` (``--object-store-gb``), 2 actors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_cluster import CACHE, blobs_path  # noqa: E402

OBJECT_STORE = 2 << 30


class _StagedSampler(threading.Thread):
    """A daemon sampling thread whose peaks are also kept per stage; ``stage(name)`` starts one."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = False
        self.stages = {}
        self.current = None

    def _new_stage(self) -> dict:
        raise NotImplementedError  # each sampler names the peaks it keeps per stage

    def stage(self, name: str):
        self.current = name
        self.stages[name] = self._new_stage()


class MemSampler(_StagedSampler):
    """Peak RSS per process (this one and every ``ray::`` worker) and of their sum, sampled every second.

    ``stage(name)`` starts a new stage: the peaks are also kept per stage.
    """

    def __init__(self):
        super().__init__()
        self.peak = {}
        self.peak_sum = 0

    def _new_stage(self) -> dict:
        return {"peak": {}, "peak_sum": 0}

    def run(self):
        me = os.getpid()
        while not self.stop:
            total = 0
            # this process and its ray:: workers (descendants only: not another job's Ray on the machine)
            for pid, name in PssSampler._session(me).items():
                if pid != me and not name.startswith("ray::"):
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        cmd = fh.read().split(b"\0")[0].decode(errors="replace")
                    with open(f"/proc/{pid}/status") as fh:
                        rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))
                except (OSError, StopIteration, ValueError):
                    continue
                name = "driver" if int(pid) == me else f"{cmd.split('.')[0]} ({pid})"
                self.peak[name] = max(self.peak.get(name, 0), rss)
                st = self.stages.get(self.current)
                if st is not None:
                    st["peak"][name] = max(st["peak"].get(name, 0), rss)
                total += rss
            self.peak_sum = max(self.peak_sum, total)
            st = self.stages.get(self.current)
            if st is not None:
                st["peak_sum"] = max(st["peak_sum"], total)
            time.sleep(1.0)


class PssSampler(_StagedSampler):
    """Peak of the simultaneous memory of this process and its descendants (Ray's processes, workers, actors).

    Each process counts its PSS without shared memory (``Pss - Pss_Shmem`` of
    ``smaps_rollup``: private pages, and file pages split among the processes that
    map them); the object store's shared-memory file counts once, at its resident
    size (its blocks on ``/dev/shm``, found through the raylet's mappings): pages a
    process wrote and no longer maps (an actor that ended) still count there.
    ``peak_pss``: the peak of that sum; ``pss_at_peak``: the parts at that
    sample; ``pss_peak_per_process``: each process's own peak; ``peak_pss_plain``:
    the peak of the plain sum of ``Pss`` (shared pages split, none of a dead process).
    """

    def __init__(self, every: float = 0.25):
        super().__init__()
        self.every = every
        self.peak_pss = 0
        self.peak_pss_plain = 0
        self.by_actors = {}
        self.pss_at_peak = {}
        self.peak_per_process = {}
        self.samples = 0
        self.timeline = {}
        self.t0 = time.perf_counter()

    def _new_stage(self) -> dict:
        return {"peak_pss": 0}

    @staticmethod
    def _session(me: int) -> dict:
        """pid -> name of this process and its descendants (the raylet's workers and actors among them)."""
        parent, cmds = {}, {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    st = fh.read()
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().split(b"\0")
            except OSError:
                continue
            parent[int(pid)] = int(st[st.rindex(b")") + 2:].split()[1])
            cmds[int(pid)] = cmd
        out = {}
        for pid, cmd in cmds.items():
            first = cmd[0].decode(errors="replace")
            q, inside = pid, False
            while q > 1:
                if q == me:
                    inside = True
                    break
                q = parent.get(q, 0)
            if not inside:  # another job's Ray on the machine (a CI run beside this one) is not this session
                continue
            if pid == me:
                name = "driver"
            elif first.startswith("ray::"):
                name = f"{first.split('.')[0]} ({pid})"
            else:  # raylet, gcs_server, Ray's python agents: the executable or script name
                words = [w.decode(errors="replace") for w in cmd if w]
                script = next((w for w in words[1:] if w.endswith(".py")), None)
                name = f"{os.path.basename(script or words[0] if words else '?')} ({pid})"
            out[pid] = name
        return out

    @staticmethod
    def _store_bytes(pid: int) -> int:
        """Resident bytes of the object store's shared-memory file(s) that raylet ``pid`` maps (``/dev/shm``)."""
        seen, total = set(), 0
        try:
            with open(f"/proc/{pid}/maps") as fh:
                lines = [ln.split() for ln in fh if "plasma" in ln or "/dev/shm" in ln]
        except OSError:
            return 0
        for w in lines:
            try:
                st = os.stat(f"/proc/{pid}/map_files/{w[0]}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
        return total

    def run(self):
        me = os.getpid()
        while not self.stop:
            total, plain, shm, now = 0, 0, 0, {}
            for pid, name in self._session(me).items():
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as fh:
                        f = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in fh if ln[:3] == "Pss"}
                except (OSError, ValueError, IndexError):
                    continue
                own = f.get("Pss", 0) - f.get("Pss_Shmem", 0)  # shared memory: counted below, once
                plain += f.get("Pss", 0)
                if name.startswith("raylet"):
                    shm += self._store_bytes(pid)
                now[name] = own
                total += own
                self.peak_per_process[name] = max(self.peak_per_process.get(name, 0), own)
            now["object store (shm, resident)"] = shm
            total += shm
            self.samples += 1
            # the stage, told by the actors alive: KnnShard (the kNN search), RacActor (the HAC), none
            alive = sorted({nm.split()[0].split("::")[1] for nm in now if nm.startswith("ray::") and
                            nm.split()[0].split("::")[1][:1].isupper() and "Agent" not in nm and "IDLE" not in nm})
            key = "+".join(alive) or "no actor"
            self.by_actors[key] = max(self.by_actors.get(key, 0), total)
            self.peak_pss_plain = max(self.peak_pss_plain, plain)
            if total > self.peak_pss:
                self.peak_pss, self.pss_at_peak = total, now
            st = self.stages.get(self.current)
            if st is not None:
                st["peak_pss"] = max(st["peak_pss"], total)
            # every 5 s: the highest total and object store of that window, and the actors alive
            b = int((time.perf_counter() - self.t0) // 5)
            row = self.timeline.setdefault(b, [b * 5, 0, 0, key])
            if total > row[1]:
                row[1], row[3] = total, key
            row[2] = max(row[2], shm)
            time.sleep(self.every)

    def result(self) -> dict:
        top = dict(sorted(self.pss_at_peak.items(), key=lambda kv: -kv[1]))
        return {"peak_pss": self.peak_pss, "peak_pss_plain": self.peak_pss_plain, "pss_at_peak": top,
                "pss_peak_per_process": self.peak_per_process, "peak_pss_by_actors": self.by_actors,
                "pss_samples": self.samples,
                "pss_timeline": [self.timeline[b] for b in sorted(self.timeline)]}  # [s, total, store, actors]


def _start_ray(object_store: int = OBJECT_STORE):
    import ray

    ray.init(num_cpus=2, object_store_memory=object_store, include_dashboard=False, log_to_driver=False)
    return ray


def case_cluster(args) -> dict:
    path = blobs_path(args.n, args.d)
    X = np.load(path, mmap_mode="r")
    mem = MemSampler()
    mem.start()
    pss = PssSampler()
    pss.start()
    t0 = time.perf_counter()
    if args.engine == "ray":
        ray = _start_ray(int(args.object_store_gb * (1 << 30)))
        from batchal.engines import get_engine

        eng = get_engine("ray", num_actors=2)
        t1 = time.perf_counter()
        Z, info = eng.linkage(str(path), metric="cosine", knn=args.k)
        wall = time.perf_counter() - t1
        ray.shutdown()
    else:
        from batchal.clustering.graph import graph_linkage

        t1 = time.perf_counter()
        Z, info = graph_linkage(X, metric="cosine", knn=args.k)
        wall = time.perf_counter() - t1
    mem.stop = True
    pss.stop = True
    time.sleep(1.2)
    if args.save_z:
        np.save(args.save_z, Z)
    keep = {k: (v if not isinstance(v, (np.integer, np.floating)) else v.item()) for k, v in info.items()}
    return {"wall": wall, "startup": t1 - t0, "info": keep, "peak_per_process": mem.peak, "peak_sum": mem.peak_sum,
            **pss.result()}


def _pool_parquet(n: int, f: int = 16) -> Path:
    """Cached pool: ``id`` and a 16-float ``features`` list column, 1M-row row groups, 10 shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = CACHE / f"pool_{n}_{f}"
    if d.exists():
        return d
    tmp = CACHE / f"pool_{n}_{f}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = -(-n // 10)
    for s, a in enumerate(range(0, n, per)):
        b = min(n, a + per)
        X = rng.standard_normal((b - a, f), dtype=np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), f)
        pq.write_table(pa.table({"id": np.arange(a, b), "features": col}), tmp / f"part-{s:03d}.parquet",
                       row_group_size=1 << 20)
    tmp.rename(d)
    return d


class LinearSoftmax:
    """The 'small model': a fixed random linear layer (16 -> 10) and a softmax (picklable factory)."""

    def __init__(self, f: int = 16, c: int = 10, seed: int = 0):
        self.W = np.random.default_rng(seed).standard_normal((f, c)).astype(np.float32)

    def __call__(self):
        W = self.W

        def f(X):
            z = X @ W
            z -= z.max(1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(1, keepdims=True)
            return z

        return f


def case_select(args) -> dict:
    pool = _pool_parquet(args.n)
    rng = np.random.default_rng(1)
    cpath = CACHE / f"clusters_{args.n}.npy"
    if not cpath.exists():
        np.save(cpath, rng.integers(0, args.n // 10, args.n))
    clusters = np.load(cpath, mmap_mode="r")
    mem = MemSampler()
    mem.start()
    t0 = time.perf_counter()
    out = CACHE / f"preds_{args.n}_{args.engine}"
    if args.engine == "ray":
        ray = _start_ray()
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        from batchal.engines import get_engine

        eng = get_engine("ray", num_actors=2)
        t1 = time.perf_counter()
        res = eng.predict(pool, LinearSoftmax(), out, batch_rows=1 << 16, concurrency=2)
        t2 = time.perf_counter()
        idx = eng.select("cluster-margin", args.k, probs=out, clusters=clusters, seed=0)
        t3 = time.perf_counter()
        ray.shutdown()
    else:
        import pyarrow.parquet as pq

        import batchal

        t1 = time.perf_counter()
        f = LinearSoftmax()()
        P = np.empty((args.n, 10), dtype=np.float32)
        for file in sorted(pool.glob("*.parquet")):
            pf = pq.ParquetFile(file)
            for g in range(pf.num_row_groups):
                t = pf.read_row_group(g, columns=["id", "features"])
                ids = t.column("id").to_numpy()
                X = t.column("features").combine_chunks().flatten().to_numpy().reshape(-1, 16)
                for a in range(0, X.shape[0], 1 << 16):  # the ray run's model batches: the same numbers
                    P[ids[a:a + (1 << 16)]] = f(X[a:a + (1 << 16)])
        res = {"rows": args.n}
        t2 = time.perf_counter()
        idx = batchal.select("cluster-margin", args.k, probs=P, clusters=clusters, seed=0)
        t3 = time.perf_counter()
    mem.stop = True
    time.sleep(1.2)
    np.save(CACHE / f"batch_{args.n}_{args.k}_{args.engine}.npy", idx)
    return {"predict_s": t2 - t1, "select_s": t3 - t2, "wall": t3 - t1, "startup": t1 - t0, "rows": res["rows"],
            "peak_per_process": mem.peak, "peak_sum": mem.peak_sum}


def case_pipeline(args) -> dict:
    """Clustering, scoring and a cluster-margin batch, all through the ray engine (one Ray session)."""
    path = blobs_path(args.n, args.d)
    pool = _pool_parquet(args.n)
    out = CACHE / f"preds_{args.n}_pipeline"
    mem = MemSampler()
    mem.start()
    t0 = time.perf_counter()
    ray = _start_ray(int(args.object_store_gb * (1 << 30)))
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from batchal.engines import get_engine

    eng = get_engine("ray", num_actors=2)
    stages = {}
    t = time.perf_counter()
    stages["startup"] = t - t0
    mem.stage("cluster")
    model = eng.cluster(str(path), metric="cosine", knn=args.k, mean_cluster_size=10, progress=False)
    t1 = time.perf_counter()
    stages["cluster"] = t1 - t
    labels = np.asarray(model.labels_)
    info = {k: (v.item() if isinstance(v, (np.integer, np.floating)) else v)
            for k, v in getattr(model, "ray_info_", {}).items()}
    mem.stage("predict")
    res = eng.predict(pool, LinearSoftmax(), out, batch_rows=1 << 16, concurrency=2)
    t2 = time.perf_counter()
    stages["predict"] = t2 - t1
    mem.stage("select")
    idx = eng.select("cluster-margin", args.batch, probs=out, clusters=labels, seed=0)
    t3 = time.perf_counter()
    stages["select"] = t3 - t2
    mem.stage("shutdown")
    ray.shutdown()
    mem.stop = True
    time.sleep(1.2)
    np.save(CACHE / f"pipeline_batch_{args.n}_{args.batch}.npy", idx)
    np.save(CACHE / f"pipeline_clusters_{args.n}.npy", labels)
    return {"wall": t3 - t0, "stages": stages, "rows": res["rows"], "batch": int(np.asarray(idx).shape[0]),
            "clusters": int(labels.max()) + 1, "cluster_info": info, "peak_per_process": mem.peak,
            "peak_sum": mem.peak_sum, "stage_peaks": mem.stages}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["cluster", "select", "pipeline"])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=50, help="cluster: neighbours; select: batch size")
    ap.add_argument("--engine", choices=["ray", "local"], default="ray")
    ap.add_argument("--save-z", default=None)
    ap.add_argument("--batch", type=int, default=1_000_000, help="pipeline: batch size")
    ap.add_argument("--object-store-gb", type=float, default=2.0)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.inner:  # a fresh process per case, its own memory
        cmd = [sys.executable, __file__, *sys.argv[1:], "--inner"]
        load0 = os.getloadavg()
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-4000:], file=sys.stderr)
            sys.exit(out.returncode)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res.update(case=args.what, n=args.n, d=args.d, k=args.k, engine=args.engine, load_before=load0,
                   load_after=os.getloadavg(), at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        print(json.dumps(res, indent=1))
        Path(__file__).parent.joinpath("results").mkdir(exist_ok=True)
        with open(Path(__file__).parent / "results" / "ray.jsonl", "a") as fh:
            fh.write(json.dumps(res) + "\n")
        return
    res = {"cluster": case_cluster, "select": case_select, "pipeline": case_pipeline}[args.what](args)
    print(json.dumps(res, default=float))


if __name__ == "__main__":
    main()
