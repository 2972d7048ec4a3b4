"""Shared by the Ray test modules: one capped local Ray instance per module, small Parquet pools."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Object store of the test instance: small, so CI on 2 cores and a shared machine stays light.
OBJECT_STORE_BYTES = 512 << 20


def start_ray():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    return ray


#: Nodes of the multi-node test cluster (a head and two workers, one CPU each) and each one's object store.
CLUSTER_NODES = 3
NODE_OBJECT_STORE_BYTES = 160 << 20


def start_cluster(nodes: int = CLUSTER_NODES):
    """A Ray cluster of ``nodes`` nodes on this machine (separate raylets and object stores), joined.

    Every node has one CPU, so actors that reserve half a CPU and spread land on
    different nodes and their messages cross object stores. Returns the
    ``ray.cluster_utils.Cluster`` (:func:`stop_cluster` ends it).
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a module before left its instance running: not this cluster
        ray.shutdown()
    args = dict(num_cpus=1, object_store_memory=NODE_OBJECT_STORE_BYTES)
    cluster = Cluster(initialize_head=True, head_node_args=dict(args, include_dashboard=False))
    for _ in range(nodes - 1):
        cluster.add_node(**args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    return cluster


def ray_cluster():
    """A module fixture's body: the multi-node cluster of :func:`start_cluster`, ended after the module."""
    import ray

    cluster = start_cluster()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def alive_nodes() -> list:
    """Ids of the cluster's live nodes."""
    import ray

    return [nd["NodeID"] for nd in ray.nodes() if nd["Alive"]]


def ray_engine():
    """A module fixture's body: the ray engine on a capped local instance, shut down after the module."""
    ray = start_ray()
    from batchal.engines import get_engine

    eng = get_engine("ray")
    yield eng
    eng.close()
    ray.shutdown()


def fsl(values: np.ndarray):
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).ravel()), values.shape[1])


def write_shards(directory, columns: dict, bounds, row_group_size: int, ids=None):
    """Parquet shards of the rows ``bounds`` = [(a, b), ...]: an ``id`` column plus list columns."""
    n = next(iter(columns.values())).shape[0]
    ids = np.arange(n) if ids is None else ids
    for i, (a, b) in enumerate(bounds):
        cols = {"id": ids[a:b]}
        for name, v in columns.items():
            cols[name] = fsl(v[a:b]) if v.ndim == 2 else v[a:b]
        pq.write_table(pa.table(cols), f"{directory}/part-{i:03d}.parquet", row_group_size=row_group_size)
    return directory


def own_workers(title: str) -> list:
    """PIDs of Ray workers started under this process whose title starts with ``ray::<title>``.

    Only descendants of this process count (its Ray instance's raylets start
    them), so another job's Ray workers on the same machine are never touched.
    """
    import os

    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    me = os.getpid()
    found = []
    for pid in parent:
        p, hops = pid, 0
        while p in parent and p != me and p > 1 and hops < 32:
            p, hops = parent[p], hops + 1
        if p != me or pid == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(f"ray::{title}"):
            found.append(pid)
    return sorted(found)


class Killer:
    """kill -9 one of this process's Ray workers titled ``ray::<title>``, at a random moment (a thread).

    Waits (at most ``wait_s``) for such a worker to appear, then ``delay_s``
    drawn from ``[0, max_delay_s)``, then kills one of them at random, if one is
    still there. ``killed``: the PIDs killed (empty when none was found in time).
    """

    def __init__(self, title: str, max_delay_s: float, seed: int, wait_s: float = 120.0):
        import threading

        self.title, self.max_delay_s, self.wait_s = title, max_delay_s, wait_s
        self.rng = np.random.default_rng(seed)
        self.killed: list = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import os
        import signal
        import time

        t0 = time.monotonic()
        while time.monotonic() - t0 < self.wait_s and not own_workers(self.title):
            time.sleep(0.05)
        time.sleep(float(self.rng.uniform(0, self.max_delay_s)))
        pids = own_workers(self.title)
        if pids:
            pid = int(self.rng.choice(pids))
            try:
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
            except ProcessLookupError:
                pass

    def join(self):
        self.thread.join()
        return self.killed


class SlowSoftmax:
    """A picklable model factory: a fixed linear layer and softmax, ``delay_s`` per call so that an
    inference worker can be killed mid-pool (register this module with cloudpickle by value)."""

    def __init__(self, W, delay_s: float = 0.15):
        self.W, self.delay_s = W, delay_s

    def __call__(self):
        import time

        W, delay_s = self.W, self.delay_s

        def f(X):
            time.sleep(delay_s)
            z = X @ W
            e = np.exp(z - z.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

        return f
