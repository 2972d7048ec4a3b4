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


def stop_cluster(cluster) -> None:
    import ray

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
