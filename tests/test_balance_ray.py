"""Balanced specs on the ray engine: the local engine's batch (a real local Ray)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray engine's tests need ray (pip install \"batchal[ray]\")")

import batchal
from batchal.topk import topk_predictions, topk_table
from ray_util import ray_engine, write_shards

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPECS = ["margin:balance=uniform", "entropy:balance=input", "least-confidence:balance=uniform",
         "cluster-margin:balance=uniform", "cluster-margin:order=margin:tol=0.1:balance=input"]


@pytest.fixture(scope="module")
def engine():
    yield from ray_engine()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    r = np.random.default_rng(3)
    n, C = 4000, 5
    a = 1.0 / np.arange(1, C + 1) ** 1.5  # long-tailed: the plain batch is unbalanced
    P = r.dirichlet(a * 2, size=n).astype(np.float32)
    Z = np.log(np.maximum(P, 1e-6)).astype(np.float32)
    d = tmp_path_factory.mktemp("bal")
    bounds = [(0, 1500), (1500, 1501), (1501, n)]
    (d / "probs").mkdir()
    write_shards(d / "probs", {"probs": P}, bounds, 500)
    np.save(d / "Z.npy", Z)
    import pyarrow.parquet as pq

    c, p = topk_predictions(P, 3)
    pq.write_table(topk_table(np.arange(n), c, p, n_classes=C), d / "topk.parquet", row_group_size=700)
    return dict(P=P, Z=Z, dir=d, clusters=r.integers(0, 400, n), labeled=r.choice(n, 200, replace=False))


@pytest.mark.parametrize("spec", SPECS)
def test_same_balanced_batch_as_local(engine, pool, spec):
    kw = dict(clusters=pool["clusters"], labeled=pool["labeled"], seed=4)
    local = batchal.select(spec, 150, probs=pool["P"], **kw)
    np.testing.assert_array_equal(engine.select(spec, 150, probs=pool["dir"] / "probs", **kw), local)
    counts = np.bincount(pool["P"][local].argmax(1), minlength=5)
    assert counts.min() > 0


def test_balanced_from_logits_and_topk(engine, pool):
    kw = dict(clusters=pool["clusters"], labeled=pool["labeled"], seed=2)
    for spec in ("margin:balance=uniform", "cluster-margin:order=margin:balance=input"):
        local = batchal.select(spec, 120, logits=pool["Z"], **kw)
        np.testing.assert_array_equal(engine.select(spec, 120, logits=str(pool["dir"] / "Z.npy"), **kw), local)
    c, p = topk_predictions(pool["P"], 3)
    top = batchal.TopK(c, p, n_classes=5)
    for spec in ("margin:balance=uniform", "cluster-margin:balance=input"):
        local = batchal.select(spec, 120, probs=top, **kw)
        np.testing.assert_array_equal(engine.select(spec, 120, probs=pool["dir"] / "topk.parquet", **kw), local)
