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
