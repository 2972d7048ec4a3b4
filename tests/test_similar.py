"""`similar` (issue 26): the pool's rows nearest to a query set, against brute force."""
import numpy as np
import pytest

import batchal
from batchal import BatchalInputError


def _clustered(n=6000, d=16, centers=60, seed=0):
    r = np.random.default_rng(seed)
    C = r.normal(size=(centers, d))
    X = (C[r.integers(0, centers, n)] + 0.3 * r.normal(size=(n, d))).astype(np.float32)
    Q = (C[r.integers(0, centers, 5)] + 0.3 * r.normal(size=(5, d))).astype(np.float32)
    return X, Q


def _brute(X, Q, k, metric, excluded=()):
    X64, Q64 = X.astype(np.float64), Q.astype(np.float64)
    if metric == "cosine":
        X64 = X64 / np.linalg.norm(X64, axis=1, keepdims=True)
        Q64 = Q64 / np.linalg.norm(Q64, axis=1, keepdims=True)
        D = 1 - Q64 @ X64.T
    else:
        D = np.sqrt(((Q64[:, None, :] - X64[None, :, :]) ** 2).sum(-1))
    d = D.min(0)
    d[list(excluded)] = np.inf
    return np.argsort(d, kind="stable")[:k], np.sort(d)[:k]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_is_brute_force(metric):
    X, Q = _clustered(n=3000)
    labeled = np.arange(0, 3000, 7)
    rows, dist = batchal.similar(X, Q, 100, metric=metric, labeled=labeled, return_distance=True)
    ref, rdist = _brute(X, Q, 100, metric, labeled)
    assert rows.dtype == np.int64 and rows.shape == (100,)
    assert len(set(rows) & set(ref)) == 100  # recall@k = 1.0
    np.testing.assert_allclose(dist, rdist, atol=1e-4)
    assert (np.diff(dist) >= 0).all()  # nearest first
    assert not np.isin(rows, labeled).any()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ivf_recall_on_a_clustered_set(metric):
    X, Q = _clustered(n=8000)
    labeled = np.arange(0, 8000, 5)
    rows = batchal.similar(X, Q, 100, metric=metric, labeled=labeled, method="ivf")
    ref, _ = _brute(X, Q, 100, metric, labeled)
    assert rows.shape == (100,) and np.unique(rows).shape[0] == 100
    assert not np.isin(rows, labeled).any()
    assert len(set(rows) & set(ref)) / 100 >= 0.95


def test_ivf_fills_k_when_the_probed_cells_are_short():
    X, Q = _clustered(n=4000)
    rows = batchal.similar(X, Q[:1], 1500, method="ivf", nprobe=1)
    assert rows.shape == (1500,) and np.unique(rows).shape[0] == 1500


def test_probs_rerank_the_k_nearest_by_margin():
    X, Q = _clustered(n=2000)
    r = np.random.default_rng(1)
    P = r.dirichlet(np.ones(4), 2000).astype(np.float32)
    near = batchal.similar(X, Q, 50)
    ranked = batchal.similar(X, Q, 50, probs=P)
    assert set(near) == set(ranked)
    m = batchal.margin(P)[ranked]
    assert (np.diff(m) >= 0).all()  # smallest margin (most uncertain) first


def test_query_rows_are_queries_and_never_returned():
    X, _ = _clustered(n=2000)
    qr = np.array([3, 500, 1200])
    rows = batchal.similar(X, k=30, query_rows=qr)
    ref, _ = _brute(X, X[qr], 30, "cosine", qr)
    assert set(rows) == set(ref) and not np.isin(rows, qr).any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(query=np.ones((2, 5))), "query has dimension 5 but the embeddings have 16"),
    (dict(query=None), "give the queries once"),
    (dict(k=1999), "larger than the rows that can be returned"),
    (dict(k=0), "k must be an integer >= 1"),
    (dict(metric="manhattan"), "unknown metric"),
    (dict(method="hnsw"), "unknown search method"),
    (dict(query=np.full((1, 16), np.nan)), "query contains NaN"),
    (dict(query=np.zeros((1, 16))), "query row 0 is all zeros"),
])
def test_bad_inputs(kwargs, match):
    X, Q = _clustered(n=2000)
    args = dict(query=Q, k=10, labeled=np.arange(2))
    args.update(kwargs)
    with pytest.raises(BatchalInputError, match=match):
        batchal.similar(X, **args)
    Xn = X.copy()
    Xn[4, 2] = np.nan
    with pytest.raises(BatchalInputError, match="embeddings contains NaN"):
        batchal.similar(Xn, Q, 10)


def test_cli_similar(tmp_path):
    from typer.testing import CliRunner

    from batchal.cli import app

    X, Q = _clustered(n=1000)
    np.save(tmp_path / "E.npy", X)
    np.save(tmp_path / "Q.npy", Q)
    np.save(tmp_path / "L.npy", np.arange(10))
    r = CliRunner().invoke(app, ["similar", "--embeddings", str(tmp_path / "E.npy"), "--query", str(tmp_path / "Q.npy"),
                                 "-k", "20", "--labeled", str(tmp_path / "L.npy"), "--out", str(tmp_path / "rows.npy")])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"),
                                  batchal.similar(X, Q, 20, labeled=np.arange(10)))


def test_an_index_is_built_once_and_queried_again():
    from batchal.similar import SimilarIndex

    X, Q = _clustered(n=8000)
    index = SimilarIndex(X, method="ivf")
    assert index.method == "ivf"
    a = index.query(Q, 50)
    np.testing.assert_array_equal(a, batchal.similar(X, Q, 50, method="ivf"))
    b = index.query(Q[:2], 30, labeled=a)  # the next round: what was taken is now labeled
    assert b.shape == (30,) and not np.isin(b, a).any()
    assert SimilarIndex(X[:500]).method == "flat"


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ivf_cell_by_cell_search_is_the_per_query_search(metric):
    """The batched search (each probed cell against all queries probing it) returns each query's
    k best of its probed cells, as scanning them one query at a time does."""
    import faiss

    from batchal.similar import SimilarIndex, _prep, _search_ivf, _search_ivf_one

    X, _ = _clustered(n=8000)
    r = np.random.default_rng(3)
    Q = X[r.choice(8000, 40, replace=False)] + 0.05 * r.normal(size=(40, 16)).astype(np.float32)
    index = SimilarIndex(X, metric=metric, method="ivf")
    allowed = np.ones(8000, bool)
    allowed[::3] = False
    Qp = _prep(Q, metric, "query")
    D, I = _search_ivf(index, Qp, allowed, 50, 4)
    fm = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    _, cells = faiss.knn(Qp, index._C, index._C.shape[0], metric=fm)
    D1, I1 = _search_ivf_one(index, Qp, cells, allowed[index._order], 50, 4)
    assert (I >= 0).all() and allowed[I].all()
    for j in range(40):
        assert set(I[j]) == set(I1[j])
    np.testing.assert_allclose(D, D1, rtol=1e-4, atol=1e-4)  # float32 products: GEMM against GEMV
    assert (np.diff(D, axis=1) >= 0).all()
