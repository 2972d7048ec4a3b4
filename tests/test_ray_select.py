"""The ray engine's scoring, selection and model inference equal the local engine's (a real local Ray)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray engine's tests need ray (pip install \"batchal[ray]\")")
from typer.testing import CliRunner

import batchal
from batchal import BatchalInputError
from batchal.cli import app
from ray_util import ray_engine, write_shards

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STRATEGIES = ["margin", "entropy", "least-confidence", "cluster-margin", "cluster-margin:order=margin",
              "cluster-margin:margin_factor=3:max_candidate_share=1", "cluster-margin:order=margin:tol=0.1", "random"]


@pytest.fixture(scope="module")
def engine():
    yield from ray_engine()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    r = np.random.default_rng(7)
    n, C = 6000, 5
    P = r.dirichlet(np.full(C, 0.4), size=n).astype(np.float32)
    P[1000:1040] = P[17]  # exact ties in every score, across blocks: the cut must go to the smaller rows
    Z = r.normal(size=(n, C)).astype(np.float32) * 3
    clusters = r.integers(0, 700, n)
    labeled = r.choice(n, 300, replace=False)
    d = tmp_path_factory.mktemp("preds")
    bounds = [(0, 1700), (1700, 1701), (1701, 4200), (4200, n)]
    (d / "probs").mkdir()
    (d / "logits").mkdir()
    write_shards(d / "probs", {"probs": P}, bounds, 600, ids=np.arange(n) * 3 + 1)
    write_shards(d / "logits", {"logits": Z}, bounds, 900)
    np.save(d / "P.npy", P)
    return dict(P=P, Z=Z, clusters=clusters, labeled=labeled, dir=d, n=n)


@pytest.mark.parametrize("spec", STRATEGIES)
def test_same_batch_as_local_from_parquet_shards(engine, pool, spec):
    kw = dict(clusters=pool["clusters"], labeled=pool["labeled"], seed=11)
    local = batchal.select(spec, 250, probs=pool["P"], **kw)
    ray_ = engine.select(spec, 250, probs=pool["dir"] / "probs", **kw)
    np.testing.assert_array_equal(ray_, local)


def test_embedding_near_duplicates_same_batch_as_local(engine, pool, tmp_path):
    """dup= reads the candidates' embeddings on the driver (a memory-mapped .npy): the local batch."""
    r = np.random.default_rng(3)
    E = r.normal(size=(pool["n"], 6)).astype(np.float32)
    E[1:4000:2] = E[0:3999:2] + 1e-4  # pairs of copies, so that the test defers rows
    np.save(tmp_path / "E.npy", E)
    kw = dict(clusters=pool["clusters"], labeled=pool["labeled"], seed=2)
    # the walk, and order=auto made to take the paper's round-robin (redundant=0: any share counts)
    for spec in ("cluster-margin:order=margin:dup=0.01", "cluster-margin:order=auto:dup=0.01:redundant=0"):
        local = batchal.select(spec, 300, probs=pool["P"], embeddings=E, **kw)
        if "auto" in spec:
            np.testing.assert_array_equal(local, batchal.select("cluster-margin", 300, probs=pool["P"], **kw))
        else:
            np.testing.assert_array_equal(local[:1], batchal.select("margin", 1, probs=pool["P"], labeled=pool["labeled"]))
        ray_ = engine.select(spec, 300, probs=pool["dir"] / "probs",
                             embeddings=np.load(tmp_path / "E.npy", mmap_mode="r"), **kw)
        np.testing.assert_array_equal(ray_, local)


def test_same_batch_from_npy_and_array_and_logits(engine, pool):
    kw = dict(clusters=pool["clusters"], labeled=pool["labeled"], seed=5)
    local = batchal.select("cluster-margin", 400, probs=pool["P"], **kw)
    np.testing.assert_array_equal(engine.select("cluster-margin", 400, probs=str(pool["dir"] / "P.npy"), **kw), local)
    np.testing.assert_array_equal(engine.select("cluster-margin", 400, probs=pool["P"], **kw), local)
    local_z = batchal.select("margin", 400, logits=pool["Z"], labeled=pool["labeled"])
    np.testing.assert_array_equal(engine.select("margin", 400, logits=pool["dir"] / "logits",
                                                labeled=pool["labeled"]), local_z)


def test_multilabel_margin(engine, pool):
    r = np.random.default_rng(3)
    M = r.uniform(size=(3000, 7)).astype(np.float32)
    for agg in ("min", "mean"):
        local = batchal.select("margin", 100, probs=M, multilabel=True, aggregate=agg)
        np.testing.assert_array_equal(engine.select("margin", 100, probs=M, multilabel=True, aggregate=agg), local)


def test_bad_input_names_the_row(engine, pool, tmp_path):
    P = pool["P"].copy()
    P[4321, 2] = np.nan
    write_shards(tmp_path, {"probs": P}, [(0, 3000), (3000, pool["n"])], 1000)
    with pytest.raises(BatchalInputError, match=r"NaN \(first at row 4321\)"):
        engine.select("margin", 10, probs=tmp_path)
    with pytest.raises(BatchalInputError, match="not distributed"):
        engine.select("coreset", 10, probs=pool["P"])
    with pytest.raises(BatchalInputError, match="clusters has 5 rows"):
        engine.select("cluster-margin", 10, probs=pool["P"], clusters=np.zeros(5, dtype=np.int64))
    with pytest.raises(BatchalInputError, match="larger than the unlabeled pool"):
        engine.select("margin", pool["n"], probs=pool["P"], labeled=pool["labeled"])


def test_cli_select_engine_ray(engine, pool, tmp_path):
    np.save(tmp_path / "C.npy", pool["clusters"])
    np.save(tmp_path / "L.npy", pool["labeled"])
    args = ["select", "--strategy", "cluster-margin", "--batch-size", "300", "--clusters", str(tmp_path / "C.npy"),
            "--labeled", str(tmp_path / "L.npy"), "--seed", "2", "-q"]
    runner = CliRunner()
    r1 = runner.invoke(app, args + ["--probs", str(pool["dir"] / "P.npy"), "--out", str(tmp_path / "a.npy")])
    r2 = runner.invoke(app, args + ["--probs", str(pool["dir"] / "probs"), "--out", str(tmp_path / "b.npy"),
                                    "--engine", "ray"])
    assert r1.exit_code == 0 and r2.exit_code == 0, (r1.output, r2.output)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    bad = runner.invoke(app, ["select", "--strategy", "badge", "--batch-size", "3", "--probs", str(pool["dir"] / "P.npy"),
                              "--embeddings", str(pool["dir"] / "P.npy"), "--engine", "ray",
                              "--out", str(tmp_path / "c.npy")])
    assert bad.exit_code == 2
    assert bad.output.count("error:") == 1


class _Softmax:
    """A picklable model factory: a fixed linear layer, softmax, and a 3-d embedding."""

    def __init__(self, W):
        self.W = W

    def __call__(self):
        W = self.W

        def f(X):
            z = X @ W
            z = z - z.max(1, keepdims=True)
            e = np.exp(z)
            return {"probs": e / e.sum(1, keepdims=True), "embeddings": np.tanh(X[:, :3])}

        return f


def test_model_inference_writes_row_aligned_predictions(engine, tmp_path):
    import pyarrow.parquet as pq
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module

    r = np.random.default_rng(1)
    n, d, C = 2500, 6, 4
    X = r.normal(size=(n, d)).astype(np.float32)
    W = r.normal(size=(d, C)).astype(np.float32)
    (tmp_path / "pool").mkdir()
    ids = r.permutation(n * 10)[:n]  # arbitrary ids: rows are positions, ids travel with them
    write_shards(tmp_path / "pool", {"features": X}, [(0, 1000), (1000, n)], 400, ids=ids)
    res = engine.predict(tmp_path / "pool", _Softmax(W), tmp_path / "preds", batch_rows=256)
    assert res["rows"] == n
    t = pq.read_table(tmp_path / "preds")
    np.testing.assert_array_equal(t.column("id").to_numpy(), ids)
    out = _Softmax(W)()(X)
    P = np.stack(t.column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(P, out["probs"], rtol=1e-6, atol=1e-7)
    E = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(E, out["embeddings"], rtol=1e-6)
    local = batchal.select("margin", 100, probs=P.astype(np.float32))
    np.testing.assert_array_equal(engine.select("margin", 100, probs=tmp_path / "preds"), local)

