"""kNN graph: exact path equals brute force, IVF recall, symmetrisation."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from batchal._validation import BatchalInputError
from batchal.clustering.knn import knn_graph, recall, symmetrize


def _mixture(n, d, c, seed=0, scale=1.0):
    """Overlapping Gaussian mixture (centres close together: IVF cells cut through clusters)."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((c, d)) * scale
    lab = rng.integers(0, c, n)
    return (C[lab] + rng.standard_normal((n, d))).astype(np.float32)


def _brute(X, k, metric):
    D = cdist(X.astype(np.float64), X.astype(np.float64), metric)
    np.fill_diagonal(D, np.inf)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(D, idx, 1)


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean", "euclidean"])
def test_flat_matches_brute_force(metric):
    X = _mixture(500, 12, 5, seed=1)
    r = knn_graph(X, 10, metric=metric)
    assert r.method == "flat"
    assert r.indices.dtype == np.int32 and r.distances.dtype == np.float32
    I, D = _brute(X, 10, metric)
    assert recall(r.indices, I) >= 0.999
    np.testing.assert_allclose(r.distances, D, rtol=1e-4, atol=1e-4)
    assert (r.indices != np.arange(500)[:, None]).all()  # no self


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_ivf_recall_vs_brute_force(metric):
    X = _mixture(20_000, 32, 40, seed=2, scale=1.5)
    r = knn_graph(X, 20, metric=metric, method="ivf", nprobe=16)
    assert r.method == "ivf" and r.info["nlist"] == round(2 * np.sqrt(20_000)) and r.info["nprobe"] == 16
    rng = np.random.default_rng(0)
    q = rng.choice(20_000, 500, replace=False)
    D = cdist(X[q].astype(np.float64), X.astype(np.float64), metric)
    D[np.arange(500), q] = np.inf
    exact = np.argsort(D, axis=1)[:, :20]
    rec = recall(r.indices[q], exact)
    assert rec >= 0.95, rec
    # and nprobe matters: one probe finds clearly fewer
    r1 = knn_graph(X, 20, metric=metric, method="ivf", nprobe=1)
    assert recall(r1.indices[q], exact) < rec


def test_input_not_modified_and_memmap(tmp_path):
    X = _mixture(3000, 8, 4, seed=3) * 5
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    r = knn_graph(Xm, 8, metric="cosine", method="ivf", chunk_rows=500)
    np.testing.assert_array_equal(np.load(tmp_path / "X.npy"), X)
    assert r.indices.shape == (3000, 8) and (r.indices >= 0).all()
    assert (r.distances >= 0).all() and (r.distances <= 2).all()


def test_symmetrize():
    X = _mixture(400, 6, 3, seed=4)
    r = knn_graph(X, 7, metric="sqeuclidean")
    indptr, nbrs = symmetrize(r.indices)
    assert indptr.dtype == np.int64 and nbrs.dtype == np.int32
    edges = set()
    for u in range(400):
        row = nbrs[indptr[u]:indptr[u + 1]]
        assert (np.diff(row) > 0).all() and u not in row
        edges.update((u, int(v)) for v in row)
    assert all((v, u) in edges for u, v in edges)
    directed = {(u, int(v)) for u in range(400) for v in r.indices[u]}
    assert directed <= edges and len(edges) <= 2 * len(directed)


def test_k_capped_and_errors():
    X = _mixture(20, 3, 2)
    assert knn_graph(X, 100).indices.shape == (20, 19)
    with pytest.raises(BatchalInputError):
        knn_graph(X, 0)
    with pytest.raises(BatchalInputError):
        knn_graph(X[:1], 5)
    with pytest.raises(BatchalInputError):
        knn_graph(X, 5, metric="hamming")


def _sym_reference(I, n):
    """u ~ v iff either lists the other (scipy sparse), self loops and -1 dropped."""
    from scipy.sparse import coo_matrix

    m, k = I.shape
    u = np.repeat(np.arange(m), k)
    v = I.reshape(-1).astype(np.int64)
    ok = (v >= 0) & (v != u)
    A = coo_matrix((np.ones(ok.sum()), (u[ok], v[ok])), shape=(n, n)).tocsr()
    A = ((A + A.T) > 0).tocsr()
    A.sort_indices()
    return A.indptr.astype(np.int64), A.indices.astype(np.int32)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threads", [1, 2])
def test_symmetrize_in_place_equals_reference_on_random_graphs(seed, threads):
    """The counting-pass, in-place symmetrisation equals the plain set union, incl. padding,
    duplicates, self loops and many mutual pairs, with one range of source rows or one per thread."""
    import numba

    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _check_symmetrize(seed)
    finally:
        numba.set_num_threads(saved)


def _check_symmetrize(seed):
    from batchal.clustering._graph_kernels import symmetrize_inplace

    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(2, 400)), int(rng.integers(1, 12))
    I = rng.integers(-1, n, size=(n, k)).astype(np.int32)
    if seed % 2:  # many mutual edges: i lists i+1 and i+1 lists i
        I[:-1, 0] = np.arange(1, n)
        I[1:, -1] = np.arange(n - 1)
    ref_ptr, ref_nbr = _sym_reference(I, n)
    arena = np.full(2 * n * k, -7, dtype=np.int32)
    arena[: n * k] = I.reshape(-1)
    ptr = symmetrize_inplace(arena, n, k, n)
    np.testing.assert_array_equal(ptr, ref_ptr)
    np.testing.assert_array_equal(arena[: ptr[-1]], ref_nbr)
    # and the public wrapper agrees
    p2, nb2 = symmetrize(I)
    np.testing.assert_array_equal(p2, ref_ptr)
    np.testing.assert_array_equal(nb2, ref_nbr)
    # lists for only the first m of the n nodes (the rest get in-edges only)
    m = max(1, n // 2)
    ref_ptr, ref_nbr = _sym_reference(I[:m], n)
    arena = np.full(2 * n * k, -7, dtype=np.int32)
    arena[: m * k] = I[:m].reshape(-1)
    ptr = symmetrize_inplace(arena, m, k, n)
    np.testing.assert_array_equal(ptr, ref_ptr)
    np.testing.assert_array_equal(arena[: ptr[-1]], ref_nbr)


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean", "euclidean"])
def test_ivf_default_settings_reach_recall_098(metric):
    """The default IVF settings (exact cell assignment, per-row probes, nprobe="auto") vs brute force."""
    rng = np.random.default_rng(11)
    n, d, c = 30_000, 32, 150
    C = rng.standard_normal((c, d)) * 2
    lab = rng.integers(0, c, n)
    X = (C[lab] + rng.standard_normal((n, d)) * rng.uniform(0.5, 1.5, c)[lab, None]).astype(np.float32)
    r = knn_graph(X, 20, metric=metric, method="ivf")
    assert r.info["nprobe_estimated_recall"] >= 0.985 and 1 <= r.info["nprobe"] <= 16
    q = rng.choice(n, 400, replace=False)
    D = cdist(X[q].astype(np.float64), X.astype(np.float64), metric)
    D[np.arange(400), q] = np.inf
    exact = np.argsort(D, axis=1)[:, :20]
    assert recall(r.indices[q], exact) >= 0.98
    # the returned distances are the true distances of the returned ids
    got = np.take_along_axis(D, r.indices[q].astype(np.int64), 1)
    np.testing.assert_allclose(r.distances[q], got, rtol=1e-3, atol=1e-3)
    assert (np.diff(r.distances[q], axis=1) >= -1e-6).all()  # nearest first


def test_release_pages_drops_a_read_only_map_from_rss_not_the_data(tmp_path):
    """Reading a memory-mapped pool must not add the pool to the resident set (issue 8)."""
    import sys

    from batchal.clustering.knn import _release_pages

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/status")

    def rss_file():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("RssFile:"))

    X = np.random.default_rng(0).standard_normal((64 * 1024, 128)).astype(np.float32)  # 32 MB
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    total = float(np.asarray(Xm).sum(dtype=np.float64))  # touch every page
    before = rss_file()
    _release_pages(Xm)
    assert rss_file() < before - 24 * 2**20
    assert float(np.asarray(Xm).sum(dtype=np.float64)) == total  # the data is still there
    Xw = np.array(X)  # not a memory map: a no-op
    _release_pages(Xw)
    np.testing.assert_array_equal(Xw, X)


def test_auto_nprobe_measures_the_recall_of_each_probe_count():
    """nprobe="auto": the exact neighbours of sample rows are found during the assignment, and
    the recall curve it reports is the recall the search then has (checked against brute force)."""
    from batchal.clustering import knn as L

    rng = np.random.default_rng(5)
    n, d = 24_000, 16
    C = rng.standard_normal((60, d)) * 2.0  # overlapping components: several probes are needed
    X = (C[rng.integers(0, 60, n)] + rng.standard_normal((n, d))).astype(np.float32)
    # the sampled queries' top-k equals brute force (the same sample as _prepare draws)
    r0 = np.random.default_rng(0)
    L._train_cells(X, "cosine", L.default_nlist(n), r0, False)
    Q, qids = L.sample_queries(X, "cosine", r0)
    acc = L._QueryTopK(Q, qids, 10, "cosine")
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    for a in range(0, n, 5000):
        acc.fold(Xn[a:a + 5000], a)
    got, _ = acc.result()
    S = Q.astype(np.float64) @ Xn.T.astype(np.float64)
    S[np.arange(qids.shape[0]), qids] = -np.inf
    exact = np.argsort(-S, axis=1)[:, :10]
    assert recall(got, exact) >= 0.999  # float32 vs float64 near-ties only
    assert not (got == qids[:, None]).any()

    r = knn_graph(X, 10, metric="cosine", method="ivf")
    curve = np.array(r.info["nprobe_recall"])
    assert curve.shape == (16,) and (np.diff(curve) >= 0).all()
    p = r.info["nprobe"]
    assert p == L.choose_nprobe(curve) and r.info["nprobe_estimated_recall"] == curve[p - 1]
    assert curve[p - 1] >= L.AUTO_TARGET_RECALL and (p == 1 or curve[p - 2] < L.AUTO_TARGET_RECALL)
    q = rng.choice(n, 600, replace=False)
    Sq = Xn[q].astype(np.float64) @ Xn.T.astype(np.float64)
    Sq[np.arange(600), q] = -np.inf
    true = np.argsort(-Sq, axis=1)[:, :10]
    # the measured recall predicts the search's recall on other rows
    assert abs(recall(r.indices[q], true) - curve[p - 1]) < 0.02
    # with one probe fewer the search finds less, as the curve says
    if p > 1:
        r1 = knn_graph(X, 10, metric="cosine", method="ivf", nprobe=p - 1)
        assert abs(recall(r1.indices[q], true) - curve[p - 2]) < 0.02


def test_choose_nprobe_rule():
    from batchal.clustering.knn import choose_nprobe, probe_recall

    assert choose_nprobe(np.array([0.97, 0.986, 0.99])) == 2
    assert choose_nprobe(np.array([0.99, 0.995])) == 1
    # target out of reach: stop where one more probe adds under 2 points
    assert choose_nprobe(np.array([0.60, 0.67, 0.70, 0.726, 0.743, 0.76])) == 4
    assert choose_nprobe(np.array([0.5, 0.6, 0.7])) == 3
    # probe_recall: a neighbour counts from the rank of its cell in the query's list
    qcells = np.array([[4, 7, 1], [2, 3, 9]])
    ids = np.array([[10, 11, 12, -1], [20, 21, 22, 23]])
    ncell = np.array([[4, 1, 5, -1], [3, 3, 2, 9]])
    np.testing.assert_allclose(probe_recall(ids, qcells, ncell), [2 / 7, 4 / 7, 6 / 7])


@pytest.mark.parametrize("nc,p", [(1, 1), (5, 5), (16, 3), (37, 17), (300, 4), (2001, 16)])
@pytest.mark.parametrize("ties", [False, True])
def test_top_cells_equals_a_stable_sort(nc, p, ties):
    """The two-pass top-cells selection against a plain stable sort (ties: smaller cell first)."""
    from batchal.clustering._knn_kernels import top_cells

    rng = np.random.default_rng(nc * 31 + p)
    r = 400
    sc = (rng.integers(0, 4, (r, nc)) if ties else rng.standard_normal((r, nc))).astype(np.float32)
    half = (rng.integers(0, 2, nc) if ties else rng.random(nc)).astype(np.float32)
    for use_norm in (False, True):
        cell = np.empty(r + 3, dtype=np.int32)
        probes = np.empty((r + 3, p - 1), dtype=np.int16)
        top_cells(sc, half, use_norm, cell, probes, 3)
        v = sc - half if use_norm else sc
        ref = np.argsort(-v, axis=1, kind="stable")[:, :p]
        np.testing.assert_array_equal(cell[3:], ref[:, 0])
        np.testing.assert_array_equal(probes[3:], ref[:, 1:])


def _ref_top(keys, ids, k):
    """Plain reference: the best k of (keys, ids) by key descending, then id ascending."""
    o = np.lexsort((ids, -keys))[:k]
    out_i = np.full(k, -1, np.int32)
    out_k = np.full(k, -np.inf, np.float32)
    out_i[: o.shape[0]] = ids[o]
    out_k[: o.shape[0]] = keys[o]
    return out_i, out_k


def _cell_data(m, d, l2, dup, seed):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((8, d)).astype(np.float32) * 2
    X = centers[rng.integers(0, 8, m)] + rng.standard_normal((m, d)).astype(np.float32)
    if dup:  # exact ties between keys
        X[1::3] = X[0::3][: len(X[1::3])]
    if not l2:
        X /= np.linalg.norm(X, axis=1)[:, None]
    return X


@pytest.mark.parametrize("m,d,l2,dup", [(1581, 16, False, False), (700, 8, True, False), (866, 6, False, True),
                                        (40, 8, False, False), (300, 4, True, True), (817, 5, False, True)])
def test_cell_folds_equal_a_plain_reference(m, d, l2, dup):
    """The fold kernels (own cell from the block-maxima bound, a block from -inf, a probed cell
    folded straight into running lists) keep exactly the best k of a plain sort, ties by id,
    never a row's own id, for cells wider and narrower than k blocks."""
    from batchal.clustering import _knn_kernels as KK

    k = 50
    X = _cell_data(m, d, l2, dup, m + d)
    X = np.ascontiguousarray(np.vstack([np.zeros((5, d), np.float32), X]))  # the cell starts at row 5
    half = (0.5 * np.einsum("ij,ij->i", X, X)).astype(np.float32) if l2 else np.zeros(1, np.float32)
    rows = np.arange(5, 5 + m, dtype=np.int64)
    block = X[5:] @ X[5:].T
    keys = block - half[None, 5:] if l2 else block
    ref = [_ref_top(np.delete(keys[i], i), np.delete(rows, i).astype(np.int32), k) for i in range(m)]
    ref_i = np.array([r[0] for r in ref])
    ref_k = np.array([r[1] for r in ref])
    for bound in (False, True):
        Bk = np.empty((m, 4 * k), np.float32)
        Bi = np.empty((m, 4 * k), np.int32)
        cnt = np.zeros(m, np.int64)
        thr = np.full(m, -np.inf, np.float32)
        if bound:
            KK.own_cell_update(block, 5, half, l2, Bk, Bi, cnt, thr, k)
        else:
            KK.heap_update(block, np.arange(m), rows, 5, half, l2, Bk, Bi, cnt, thr, k)
        I = np.empty((5 + m, k), np.int32)
        K = np.empty((5 + m, k), np.float32)
        KK.buf_finish(Bk, Bi, cnt, k, rows, I, K, True)
        np.testing.assert_array_equal(I[5:], ref_i)
        np.testing.assert_array_equal(K[5:], ref_k)


@pytest.mark.parametrize("m,c,d,l2,dup", [(300, 700, 8, False, False), (200, 40, 6, True, False),
                                          (250, 500, 4, False, True), (120, 0, 4, False, False)])
@pytest.mark.parametrize("order", [False, True])
def test_probe_fold_equals_the_best_k_of_old_and_new(m, c, d, l2, dup, order):
    """A probed cell folded straight into the rows' running lists (some rows' lists short, in any
    order) gives the best k of the old entries and the cell's, as one plain sort would."""
    from batchal.clustering import _knn_kernels as KK

    k = 30
    rng = np.random.default_rng(m + c)
    X = _cell_data(m + c, d, l2, dup, m * c + d)
    if dup:  # ties between a row's old keys and the probed cell's
        X[m:m + min(m, c) // 2] = X[: min(m, c) // 2]
    half = (0.5 * np.einsum("ij,ij->i", X, X)).astype(np.float32) if l2 else np.zeros(1, np.float32)
    block = X[:m] @ X[m:].T
    keys = block - half[None, m:] if l2 else block
    # the queries are rows 0..m-1; their old lists come from a random part of an imaginary pool
    I = np.full((m, k), -1, np.int32)
    K = np.full((m, k), -np.inf, np.float32)
    pool = rng.standard_normal((400, d)).astype(np.float32)
    olds = []
    for i in range(m):
        nold = k if i % 4 else int(rng.integers(0, k))  # every fourth list is short
        ids = rng.choice(np.arange(m + c, m + c + 400), nold, replace=False).astype(np.int32)
        kk = (pool[ids - m - c] @ X[i]).astype(np.float32)
        if dup and nold:
            kk[: nold // 3] = np.round(kk[: nold // 3], 1)  # ties among old keys
        if dup and nold == k and c and i % 5 == 0:
            # the list's worst key equals the cell's best for this row: a tie at the threshold,
            # which the cell's entry wins (smaller id)
            top = keys[i].max()
            kk = np.maximum(kk, top + 1).astype(np.float32)
            kk[0] = top
        p = rng.permutation(nold)
        I[i, :nold] = ids[p]
        K[i, :nold] = kk[p]
        olds.append((ids, kk))
    rows = np.arange(m, dtype=np.int64)
    KK.probe_fold(block, rows, m, half, l2, I, K, 4 * k, order)
    for i in range(m):
        ids = np.concatenate([olds[i][0], np.arange(m, m + c, dtype=np.int32)])
        kk = np.concatenate([olds[i][1], keys[i]]).astype(np.float32)
        ri, rk = _ref_top(kk, ids, k)
        if order:
            np.testing.assert_array_equal(I[i], ri)
            np.testing.assert_array_equal(K[i], rk)
        else:
            o = np.lexsort((I[i], -K[i]))
            np.testing.assert_array_equal(I[i][o], ri)
            np.testing.assert_array_equal(K[i][o], rk)

def test_fold_lists_keeps_the_best_k_of_every_candidate_list_in_the_total_order():
    # the list kernel both engines fold with: candidate lists in any order and any split give the best k
    # of the union by (key descending, id ascending), also with tied keys and short lists
    from batchal.clustering._knn_kernels import fold_lists

    r = np.random.default_rng(0)
    n, k, parts = 50, 6, 4
    keys = r.integers(0, 5, (n, 40)).astype(np.float32)  # many ties
    ids = np.stack([r.permutation(1000)[:40] for _ in range(n)]).astype(np.int64)
    ids[:, 30:] = -1  # padding (fewer candidates than slots)
    I = np.full((n, k), -1, np.int64)
    K = np.full((n, k), -np.inf, np.float32)
    rows = np.arange(n)
    for p, sl in enumerate(np.array_split(r.permutation(40), parts)):
        fold_lists(rows, ids[:, sl], keys[:, sl], I, K, p == parts - 1)
    for g in range(n):
        ok = ids[g] >= 0
        want = sorted(zip(-keys[g][ok], ids[g][ok]))[:k]
        assert list(zip(-K[g], I[g])) == want
