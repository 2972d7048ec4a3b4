"""Workers that die: kill -9 a kNN actor, a RAC actor mid-round, an inference worker, the driver.

Each kill lands at a random moment (a thread waits for the worker to appear,
then a random delay). The job must then give the local engine's exact answer,
directly (a stage run again, actors reloaded from their checkpoint, Ray Data's
retry) or after one clear error and a rerun with ``resume``; checkpoints are
removed once the job completes. ``benchmarks/bench_ray_faults.py`` runs the
same kills many times; these are a bounded subset.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray engine's tests need ray (pip install \"batchal[ray]\")")

from batchal.clustering.graph import graph_linkage
from ray_util import Killer, SlowSoftmax, own_workers, ray_engine, write_shards
from test_ray_cluster import _blobs, canonical_tree

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def engine():
    yield from ray_engine()


@pytest.fixture(scope="module")
def pool():
    X = _blobs(21000, 8, 100, seed=6)  # above 20,000 rows: the IVF kNN, several probe rounds
    Zl, _ = graph_linkage(X, metric="cosine", knn=10)
    return X, canonical_tree(Zl, X.shape[0])


def test_a_killed_knn_actor_reruns_the_stage(engine, pool, tmp_path):
    X, want = pool
    killer = Killer("KnnShard", 1.5, seed=1)
    Z, info = engine.linkage(X, knn=10, checkpoint_dir=tmp_path / "ck")
    assert killer.join(), "no kNN actor was found to kill"
    assert info["knn_restarts"] == 1
    np.testing.assert_array_equal(canonical_tree(Z, X.shape[0]), want)
    assert not (tmp_path / "ck").exists()  # cleaned once the tree is complete


def test_a_killed_rac_actor_reloads_the_last_round(engine, pool, tmp_path):
    X, want = pool
    killer = Killer("RacActor", 2.0, seed=2)
    Z, info = engine.linkage(X, knn=10, checkpoint_dir=tmp_path / "ck", checkpoint_s=0)  # every round
    assert killer.join(), "no RAC actor was found to kill"
    assert info["restarts"] == 1 and info["checkpoints"] > 1
    np.testing.assert_array_equal(canonical_tree(Z, X.shape[0]), want)
    assert not (tmp_path / "ck").exists()


def test_a_killed_rac_actor_without_checkpoint_builds_the_graph_again(engine, pool, monkeypatch):
    # the kNN lists left the object store once the actors held the graph: with no checkpoint to reload,
    # the restart runs the kNN stage again (deterministic) and builds the same graph. The kill lands after a
    # round drawn at random (a timed kill can miss the stage: on a fast machine it is over in under a second)
    from batchal.engines.ray import rac

    X, want = pool
    at = int(np.random.default_rng(4).integers(1, 6))
    killed = []

    def kill_once(rounds):
        if rounds == at and not killed:
            pid = int(np.random.default_rng(4).choice(own_workers("RacActor")))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    monkeypatch.setattr(rac, "_after_round", kill_once)
    Z, info = engine.linkage(X, knn=10)
    assert killed, "no RAC actor was found to kill"
    assert info["restarts"] == 1 and info["knn_reruns"] == 1 and info["checkpoints"] == 0
    np.testing.assert_array_equal(canonical_tree(Z, X.shape[0]), want)


def test_a_knn_actor_killed_while_the_graph_build_reads_its_lists(engine, pool, monkeypatch):
    # the kNN lists stay in the kNN stage's live actors until the RAC actors hold the graph (LiveLists): a
    # kNN actor killed while the build reads them costs a RAC restart, which without a checkpoint runs the
    # (deterministic) kNN stage again; the kill lands as the count pass asks for its first chunk (an array is
    # one block: one kNN actor)
    from batchal.engines.ray import knn as RK

    X, want = pool
    real = RK.LiveLists.chunks
    killed = []

    def chunks(self):
        for i, item in enumerate(real(self)):
            if i == 0 and not killed:
                pid = int(np.random.default_rng(5).choice(own_workers("KnnShard")))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            yield item

    monkeypatch.setattr(RK.LiveLists, "chunks", chunks)
    Z, info = engine.linkage(X, knn=10)
    assert killed, "no kNN actor was found to kill"
    assert info["knn_restarts"] == 0 and info["restarts"] == 1 and info["knn_reruns"] == 1
    np.testing.assert_array_equal(canonical_tree(Z, X.shape[0]), want)
    deadline = time.monotonic() + 10
    while own_workers("KnnShard") and time.monotonic() < deadline:  # every kNN actor ended with the build
        time.sleep(0.1)
    assert not own_workers("KnnShard")


def test_no_restarts_left_is_one_error_then_resume_gives_the_tree(engine, pool, tmp_path):
    from batchal.engines.base import StageFailed

    X, want = pool
    killer = Killer("RacActor", 2.0, seed=3)
    with pytest.raises(StageFailed, match=r"rerun with --resume to continue from (round \d+|the stage's start)") as e:
        engine.linkage(X, knn=10, checkpoint_dir=tmp_path / "ck", checkpoint_s=0, restarts=0)
    assert killer.join()
    # the kill lands in the graph's build (no round checkpointed yet) or in a round
    at = re.search(r"round (\d+)", str(e.value))
    assert (tmp_path / "ck" / "knn.npy").exists() and (tmp_path / "ck" / "rac.json").exists() == bool(at)
    assert not list((tmp_path / "ck").glob(".*.tmp"))  # nothing half-written is left as a checkpoint
    Z, info = engine.linkage(X, knn=10, checkpoint_dir=tmp_path / "ck", resume=True)
    assert info["knn_resumed"] and info["resumed_from_round"] == (int(at.group(1)) if at else None)
    np.testing.assert_array_equal(canonical_tree(Z, X.shape[0]), want)
    assert not (tmp_path / "ck").exists()


def test_a_killed_driver_resumes_from_the_checkpoint(engine, pool, tmp_path):
    # the driver is a `batchal cluster` process joined to this Ray instance: killing it ends its actors but
    # not the cluster; it dies once its first RAC round checkpoint is whole, the rerun with --resume continues
    from typer.testing import CliRunner

    from batchal.cli import app

    X, want = pool
    np.save(tmp_path / "E.npy", X)
    args = ["cluster", "-e", str(tmp_path / "E.npy"), "--method", "graph", "--knn", "10", "--engine", "ray",
            "--save-tree", str(tmp_path / "T.npy"), "-o", str(tmp_path / "C.npy"), "-q"]
    ck = tmp_path / "C.npy.ray-checkpoint"
    _kill_after_first_round(args, ck)
    assert (ck / "knn.npy").exists() and not (tmp_path / "T.npy").exists()
    r = CliRunner().invoke(app, args[:-1] + ["--resume"])
    assert r.exit_code == 0, r.output
    assert "resumed from the checkpoint" in r.output
    np.testing.assert_array_equal(canonical_tree(np.load(tmp_path / "T.npy"), X.shape[0]), want)
    assert not ck.exists()


def _kill_after_first_round(args: list, ck):
    """Run ``batchal *args`` as a driver joined to this Ray instance; kill -9 it once the checkpoint ``ck``
    holds a whole RAC round (its actors die with it, the Ray instance does not)."""
    import ray

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath("src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", "from batchal.cli import app; app()", *args, "--ray-address",
                             ray.get_runtime_context().gcs_address], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not (ck / "rac.json").exists() and proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_killed_inference_worker_is_retried(engine, tmp_path):
    import pyarrow.parquet as pq
    from ray import cloudpickle

    import ray_util

    cloudpickle.register_pickle_by_value(ray_util)  # workers cannot import the tests' helpers
    r = np.random.default_rng(4)
    n, d, C = 4000, 6, 4
    X = r.normal(size=(n, d)).astype(np.float32)
    W = r.normal(size=(d, C)).astype(np.float32)
    (tmp_path / "pool").mkdir()
    write_shards(tmp_path / "pool", {"features": X}, [(0, 2000), (2000, n)], 200)  # 20 row groups
    killer = Killer("MapWorker", 1.0, seed=5)
    res = engine.predict(tmp_path / "pool", SlowSoftmax(W), tmp_path / "preds", batch_rows=100)
    assert killer.join(), "no inference worker was found to kill"
    assert res["rows"] == n
    t = pq.read_table(tmp_path / "preds")
    np.testing.assert_array_equal(t.column("id").to_numpy(), np.arange(n))
    P = np.stack(t.column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(P, SlowSoftmax(W)()(X), rtol=1e-6, atol=1e-7)


def test_a_killed_campaign_cluster_resumes_with_the_local_clusters(engine, tmp_path):
    # `campaign cluster --engine ray` killed once its first round checkpoint is whole (in the campaign's
    # ray-checkpoint/); `--resume` records the clusters the local engine records, and the campaign checks
    from typer.testing import CliRunner

    from batchal import Campaign
    from batchal.cli import app
    from campaign_util import CLASSES, make_pool

    make_pool(tmp_path / "pool.parquet", n=21000, d=8)
    for name in ("local", "ray"):
        Campaign.init(tmp_path / name, tmp_path / "pool.parquet", classes=CLASSES).close()
    opts = ["--method", "graph", "--knn", "10", "-q"]
    r = CliRunner().invoke(app, ["campaign", "cluster", str(tmp_path / "local"), *opts])
    assert r.exit_code == 0, r.output
    ck = tmp_path / "ray" / "ray-checkpoint"
    _kill_after_first_round(["campaign", "cluster", str(tmp_path / "ray"), *opts, "--engine", "ray"], ck)
    r = CliRunner().invoke(app, ["campaign", "cluster", str(tmp_path / "ray"), *opts, "--engine", "ray", "--resume"])
    assert r.exit_code == 0, r.output
    assert not ck.exists()
    got, want = Campaign(tmp_path / "ray"), Campaign(tmp_path / "local")
    with got._store.read() as a, want._store.read() as b:
        np.testing.assert_array_equal(got._clusters(a), want._clusters(b))
    assert got.check() == []
    got.close(), want.close()


def test_a_checkpoint_directory_of_something_else_is_refused(engine, tmp_path):
    from batchal import BatchalInputError
    from batchal.engines.ray._checkpoint import JobCheckpoint

    (tmp_path / "mine.txt").write_text("keep me")
    X = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    with pytest.raises(BatchalInputError, match="not empty and holds no batchal checkpoint"):
        engine.linkage(X, knn=5, checkpoint_dir=tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    JobCheckpoint(tmp_path / "ck", {"n": 300}, resume=False)  # what a killed job of another pool left
    with pytest.raises(BatchalInputError, match="of another job"):
        engine.linkage(X[:200], knn=5, checkpoint_dir=tmp_path / "ck", resume=True)
    assert (tmp_path / "ck" / "job.json").exists()  # refused: kept as it was
