"""Benchmark: workers killed at random moments, each job checked against the local engine's answer (issue 23).

One Ray instance (``ray.init(num_cpus=2)``) serves every trial; the trials go
round the four kinds of kill, each at a random moment (``tests/ray_util.Killer``:
wait for the worker to appear, then a random delay):

* ``knn``: kill -9 a ``KnnShard`` actor; the kNN stage runs again;
* ``rac``: kill -9 a ``RacActor`` mid-rounds (a checkpoint after every round);
  the actors reload the last round;
* ``rac-resume``: the same with no restart allowed: one ``StageFailed`` error,
  then the same job with ``resume=True``;
* ``inference``: kill -9 a ``map_batches`` worker of :func:`predict`; Ray Data
  retries its block;
* ``driver``: kill -9 a ``batchal cluster --engine ray`` process joined to the
  instance, at a random moment after it starts, then the same command with
  ``--resume``.

Every trial's merge tree (or predictions) must equal the local engine's, and
its checkpoint directory must be gone at the end. One JSON line per trial in
``benchmarks/results/ray_faults.jsonl``, and a summary.

Usage::

    python benchmarks/bench_ray_faults.py --trials 25 --n 30000
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import ray_util  # noqa: E402
from ray_util import Killer, SlowSoftmax, fsl, start_ray  # noqa: E402  (the fault injector the tests use)
from test_ray_cluster import _blobs, canonical_tree  # noqa: E402

KINDS = ["knn", "rac", "rac-resume", "inference", "driver"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=25)
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_faults.jsonl"))
    a = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray import cloudpickle

    from batchal.clustering.graph import graph_linkage
    from batchal.engines import get_engine
    from batchal.engines.base import StageFailed

    cloudpickle.register_pickle_by_value(ray_util)
    ray = start_ray()
    eng = get_engine("ray")
    work = Path(tempfile.mkdtemp(prefix="bench-ray-faults-"))
    X = _blobs(a.n, 8, a.n // 200, seed=6)
    np.save(work / "E.npy", X)
    Zl, _ = graph_linkage(X, metric="cosine", knn=10)
    want = canonical_tree(Zl, a.n)
    r = np.random.default_rng(3)
    F = r.normal(size=(4000, 6)).astype(np.float32)
    W = r.normal(size=(6, 4)).astype(np.float32)
    (work / "pool").mkdir()
    pq.write_table(pa.table({"id": np.arange(4000), "features": fsl(F)}), work / "pool" / "part-000.parquet",
                   row_group_size=200)
    want_p = SlowSoftmax(W, 0)()(F)
    rng = np.random.default_rng(a.seed)
    rows = []
    for t in range(a.trials):
        kind = KINDS[t % len(KINDS)]
        seed = int(rng.integers(1 << 30))
        ck = work / f"ck-{t}"
        t0 = time.perf_counter()
        rec = {"trial": t, "kind": kind, "seed": seed}
        if kind == "knn":
            killer = Killer("KnnShard", 3.0, seed)
            Z, info = eng.linkage(X, knn=10, checkpoint_dir=ck)
            rec.update(killed=len(killer.join()), restarts=info["knn_restarts"])
        elif kind == "rac":
            killer = Killer("RacActor", 4.0, seed)
            Z, info = eng.linkage(X, knn=10, checkpoint_dir=ck, checkpoint_s=0)
            rec.update(killed=len(killer.join()), restarts=info["restarts"])
        elif kind == "rac-resume":
            killer = Killer("RacActor", 4.0, seed)
            try:
                eng.linkage(X, knn=10, checkpoint_dir=ck, checkpoint_s=0, restarts=0)
                rec["error"] = None
            except StageFailed as exc:
                rec["error"] = str(exc)
            rec["killed"] = len(killer.join())
            Z, info = eng.linkage(X, knn=10, checkpoint_dir=ck, resume=True)
            rec["resumed_from_round"] = info["resumed_from_round"]
        elif kind == "inference":
            killer = Killer("MapWorker", 2.0, seed)
            res = eng.predict(work / "pool", SlowSoftmax(W, 0.1), work / f"preds-{t}", batch_rows=100)
            rec["killed"] = len(killer.join())
            P = np.stack(pq.read_table(work / f"preds-{t}").column("probs").to_numpy(zero_copy_only=False))
            rec["identical"] = bool(res["rows"] == 4000 and np.allclose(P, want_p, rtol=1e-6, atol=1e-7))
        else:  # driver
            args = [sys.executable, "-c", "from batchal.cli import app; app()", "cluster", "-e", str(work / "E.npy"),
                    "--method", "graph", "--knn", "10", "--engine", "ray", "--save-tree", str(work / f"T-{t}.npy"),
                    "-o", str(work / f"C-{t}.npy"), "-q", "--ray-address", ray.get_runtime_context().gcs_address]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(float(np.random.default_rng(seed).uniform(4.0, 25.0)))  # start-up, kNN, rounds
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            ckd = work / f"C-{t}.npy.ray-checkpoint"
            rec.update(killed=int(killed), knn_kept=(ckd / "knn.npy").exists(), round_kept=(ckd / "rac.json").exists())
            done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True)
            rec["resume_rc"] = done.returncode
            Z = np.load(work / f"T-{t}.npy")
            ck = ckd
        if kind != "inference":
            rec["identical"] = bool(np.array_equal(canonical_tree(Z, a.n), want))
        rec["checkpoint_left"] = ck.exists()
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(rec), flush=True)
        rows.append(rec)
    with open(a.out, "a") as f:
        for rec in rows:
            f.write(json.dumps(dict(rec, n=a.n)) + "\n")
    kills = sum(r["killed"] for r in rows)
    ok = sum(r["identical"] and not r["checkpoint_left"] for r in rows)
    print(f"{kills} kills in {len(rows)} trials; {ok} identical results with no checkpoint left")
    for kind in KINDS:
        sel = [r for r in rows if r["kind"] == kind]
        print(f"  {kind}: {sum(r['killed'] for r in sel)} kills, "
              f"{sum(r['identical'] for r in sel)}/{len(sel)} identical")


if __name__ == "__main__":
    main()
