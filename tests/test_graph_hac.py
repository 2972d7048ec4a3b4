"""Graph-restricted exact average-linkage HAC against scipy/fastcluster."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, is_monotonic, is_valid_linkage, linkage
from scipy.spatial.distance import cdist
from sklearn.metrics import adjusted_rand_score

from batchal._validation import BatchalInputError
from batchal.clustering import AverageLinkage, cut
from batchal.clustering.exact import exact_linkage
from batchal.clustering.graph import graph_linkage


def _blobs(n, d, n_centers, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((n_centers, d)) * scale
    lab = rng.integers(0, n_centers, n)
    sd = rng.uniform(0.5, 1.5, n_centers)
    return (C[lab] + rng.standard_normal((n, d)) * sd[lab, None]).astype(np.float32)


def _same_partition(a, b) -> bool:
    # identical up to renaming: the pairs (a_i, b_i) define a bijection
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return pairs.shape[0] == np.unique(a).shape[0] == np.unique(b).shape[0]


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_complete_graph_equals_scipy(metric):
    X = _blobs(300, 8, 6, seed=1)
    n = X.shape[0]
    Ze = linkage(X.astype(np.float64), method="average", metric=metric)
    Zg, _ = graph_linkage(X, metric=metric, knn=n - 1)
    assert is_valid_linkage(Zg) and is_monotonic(Zg)
    np.testing.assert_allclose(np.sort(Zg[:, 2]), np.sort(Ze[:, 2]), rtol=1e-9, atol=1e-12)
    he = np.sort(Ze[:, 2])
    # thresholds between consecutive distinct heights: no ties at the cut
    for q in (0.2, 0.5, 0.8, 0.95, 0.99):
        i = int(q * (n - 2))
        t = 0.5 * (he[i] + he[i + 1])
        a = fcluster(Ze, t, "distance")
        b, used = cut(Zg, n, threshold=t)
        assert used == t
        assert _same_partition(a, b), (metric, q)


def test_euclidean_is_root_mean_square():
    X = _blobs(200, 5, 4, seed=2)
    Zs, _ = graph_linkage(X, metric="sqeuclidean", knn=199)
    Ze, _ = graph_linkage(X, metric="euclidean", knn=199)
    np.testing.assert_array_equal(Zs[:, :2], Ze[:, :2])
    np.testing.assert_allclose(Ze[:, 2], np.sqrt(Zs[:, 2]), rtol=1e-12)


def test_heights_are_true_cross_pair_averages_on_knn_graph():
    """Each height is the exact mean over all cross pairs (not the kNN edges), or a child's if raised."""
    X = _blobs(300, 6, 5, seed=3)
    n = X.shape[0]
    Z, info = graph_linkage(X, metric="cosine", knn=5)
    D = cdist(X.astype(np.float64), X.astype(np.float64), "cosine")
    members = [[i] for i in range(n)]
    for i, (a, b, h, size) in enumerate(Z):
        A, B = members[int(a)], members[int(b)]
        true = D[np.ix_(A, B)].mean()
        child_h = max([Z[int(c) - n, 2] for c in (a, b) if c >= n], default=0.0)
        assert h == pytest.approx(max(true, child_h), rel=1e-9, abs=1e-12)
        assert len(A) + len(B) == size
        members.append(A + B)
    assert info["edges"] < n * (n - 1) // 2 / 4  # really a sparse graph


def _ari_vs_exact(X, metric="cosine", mean_size=10, **kw):
    n = X.shape[0]
    Ze = exact_linkage(X, metric)
    Zg, info = graph_linkage(X, metric=metric, **kw)
    a, _ = cut(Ze, n, mean_cluster_size=mean_size)
    b, _ = cut(Zg, n, mean_cluster_size=mean_size)
    return adjusted_rand_score(a, b), info


def test_knn_graph_blobs_ari():
    X = _blobs(4000, 32, 20, seed=4)
    ari, info = _ari_vs_exact(X)
    assert info["knn_k"] == 50
    assert ari >= 0.95, ari


def test_knn_graph_blobs_ari_ivf_path():
    # force the approximate kNN index on a small pool
    X = _blobs(4000, 32, 20, seed=5)
    ari, info = _ari_vs_exact(X, knn_method="ivf")
    assert info["knn_method"] == "ivf"
    assert ari >= 0.95, ari


@pytest.fixture(scope="module")
def digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    mlp = MLPClassifier((64,), max_iter=200, random_state=0).fit(X, y)
    H = np.maximum(X @ mlp.coefs_[0] + mlp.intercepts_[0], 0) + 1e-3
    return H.astype(np.float32)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_real_embeddings_mlp_hidden_layer_ari(digits_mlp, metric):
    ari, _ = _ari_vs_exact(digits_mlp, metric)
    assert ari >= 0.95, ari


def test_real_embeddings_digits_pca_ari():
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    X = load_digits().data
    P = PCA(20, random_state=0).fit_transform(X).astype(np.float32)
    ari, _ = _ari_vs_exact(P, "cosine")
    assert ari >= 0.95, ari


def test_edge_mean_linkage_would_fail_this_check():
    """Guard that the ARI test can fail: a deliberately wrong linkage scores low."""
    X = _blobs(1500, 16, 10, seed=6)
    n = X.shape[0]
    Ze = exact_linkage(X, "cosine")
    a, _ = cut(Ze, n, mean_cluster_size=10)
    rng = np.random.default_rng(0)
    wrong = rng.permutation(a)
    assert adjusted_rand_score(a, wrong) < 0.95


def test_forest_is_joined_with_finite_heights():
    # two far groups, k small: the kNN graph has (at least) two components
    rng = np.random.default_rng(7)
    A = rng.standard_normal((150, 4)) + 50
    B = rng.standard_normal((150, 4)) - 50
    X = np.vstack([A, B]).astype(np.float32)
    Z, info = graph_linkage(X, metric="sqeuclidean", knn=5)
    assert info["components"] >= 2
    assert np.isfinite(Z).all() and is_valid_linkage(Z) and is_monotonic(Z)
    labels, _ = cut(Z, 300, mean_cluster_size=150)
    assert _same_partition(labels, np.repeat([0, 1], 150))
    # the top merge is the true average between the two groups
    true = cdist(A, B, "sqeuclidean").mean()
    assert Z[-1, 2] == pytest.approx(true, rel=1e-6)


def test_estimator_graph_method_and_memmap(tmp_path):
    X = _blobs(3000, 16, 15, seed=8)
    path = tmp_path / "X.npy"
    np.save(path, X)
    Xm = np.load(path, mmap_mode="r")
    m = AverageLinkage(mean_cluster_size=10, method="graph").fit(Xm)
    assert m.method_ == "graph" and m.labels_.shape == (3000,)
    assert m.n_clusters_ == 300
    assert m.labels_.dtype == np.int64 and m.labels_.min() == 0
    np.testing.assert_array_equal(np.load(path), X)  # the user's data untouched
    assert {"knn", "merge"} <= set(m.timings_)
    m.recut(mean_cluster_size=50)
    assert m.n_clusters_ == 60


def test_auto_picks_by_size():
    from batchal.clustering.hac import AUTO_EXACT_MAX_ROWS, choose_method

    assert choose_method(AUTO_EXACT_MAX_ROWS)[0] == "exact"
    method, reason = choose_method(AUTO_EXACT_MAX_ROWS + 1)
    assert method == "graph" and reason


def test_bad_inputs():
    X = _blobs(100, 4, 3)
    X[5] = 0
    with pytest.raises(BatchalInputError, match="all zeros"):
        graph_linkage(X, metric="cosine", knn=10)
    with pytest.raises(BatchalInputError, match="metric"):
        graph_linkage(X, metric="manhattan", knn=10)
    with pytest.raises(BatchalInputError, match="knn"):
        graph_linkage(_blobs(100, 4, 3), metric="sqeuclidean", knn=0)


def test_report(tmp_path):
    from batchal.clustering.report import format_report, write_report

    X = _blobs(2000, 8, 10, seed=9)
    m = AverageLinkage(mean_cluster_size=10, method="graph").fit(X)
    out = tmp_path / "C.npy"
    rep = write_report(m, out)
    assert (tmp_path / "C.report.json").exists() and (tmp_path / "C.sizes.png").exists()
    on_disk = json.loads((tmp_path / "C.report.json").read_text())
    assert on_disk["n_clusters"] == rep["n_clusters"] == m.n_clusters_ == 200
    sizes = np.bincount(m.labels_)
    assert rep["max_size"] == sizes.max()
    assert rep["singleton_share"] == pytest.approx((sizes == 1).mean())
    assert rep["rows_in_singletons_share"] == pytest.approx((sizes == 1).sum() / 2000)
    assert rep["method"] == "graph" and rep["threshold"] == m.threshold_
    text = format_report(rep)
    assert "200 over 2,000 rows" in text and "singletons" in text


def _naive_rac(X, graph_ptr, graph_nbr):
    """Plain-Python RAC on a fixed graph with exact average cosine linkage (the reference).

    Clusters live in the slot of their smaller-numbered child; every round merges
    all reciprocal nearest-neighbour pairs (ties to the smaller slot id); the
    linkage is recomputed from all cross pairs every time (nothing cached).
    Returns the set of clusters formed (frozensets of rows) by the RAC phase.
    """
    n = X.shape[0]
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    members = {i: [i] for i in range(n)}
    adj = {i: set(int(v) for v in graph_nbr[graph_ptr[i]:graph_ptr[i + 1]]) for i in range(n)}
    formed = set()

    def link(a, b):
        return 1.0 - (U[members[a]].sum(0) @ U[members[b]].sum(0)) / (len(members[a]) * len(members[b]))

    while True:
        nn = {}
        for x, nb in adj.items():
            if nb:
                nn[x] = min(nb, key=lambda y: (link(x, y), y))
        pairs = [(x, y) for x, y in nn.items() if x < y and nn.get(y) == x]
        if not pairs:
            return formed
        for a, b in pairs:
            members[a] = members[a] + members.pop(b)
            formed.add(frozenset(members[a]))
            for y in adj.pop(b):
                adj[y].discard(b)
                if y != a:
                    adj[y].add(a)
                    adj[a].add(y)
            adj[a].discard(a)
            adj[a].discard(b)


@pytest.mark.parametrize("seed,top_m", [(0, 4), (1, 4), (2, 1), (3, 2), (4, 8)])
def test_rac_equals_plain_reference_on_a_knn_graph(seed, top_m, monkeypatch):
    """The kernels (no linkage cache, in-place symmetrisation, rankings updated by pushes)
    give RAC's exact tree on the graph, whatever the length of the certified rankings."""
    from batchal.clustering import _graph_kernels as K
    from batchal.clustering.knn import knn_graph, symmetrize

    monkeypatch.setattr(K, "TOP_M", top_m)
    X = _blobs(400, 5, 8, seed=20 + seed)
    n = X.shape[0]
    ptr, nbr = symmetrize(knn_graph(X, 6, metric="cosine").indices)
    ref = _naive_rac(X.astype(np.float64), ptr, nbr)
    Z, info = graph_linkage(X, metric="cosine", knn=6)
    ph = info["merge_phases"]
    # both ways of updating a slot ran: pushes, and full visits when a ranking ran out
    assert ph["touched"] > n and ph["revisits"] > 0
    members = [frozenset([i]) for i in range(n)]
    for a, b, _, _ in Z:
        members.append(members[int(a)] | members[int(b)])
    got = set(members[n:])
    # every cluster the reference forms is in the tree (the join of components adds the rest)
    assert ref <= got
    assert len(got - ref) == info["components"] - 1


@pytest.mark.parametrize("weights", [False, True])
def test_compaction_packs_lists_in_arena_order(weights):
    # lists scattered through the arena as the merge leaves them: the CSR in slot order,
    # then runs of merged lists appended in slot order, with holes and emptied lists
    from batchal.clustering import _graph_kernels as K

    rng = np.random.default_rng(7)
    n = 3000
    length = rng.integers(0, 12, n).astype(np.int64)
    start = np.zeros(n, dtype=np.int64)
    pos = 0
    moved = np.sort(rng.choice(n, n // 3, replace=False))
    for x in np.concatenate([np.setdiff1d(np.arange(n), moved), moved[::2], moved[1::2]]):
        pos += int(rng.integers(0, 5))  # a hole
        start[x] = pos
        pos += int(length[x])
    length[rng.random(n) < 0.1] = 0
    nbr = rng.integers(0, n, pos + 10).astype(np.int32)
    wt = rng.random(pos + 10).astype(np.float32) if weights else np.empty(0, np.float32)
    before = {x: (nbr[start[x]:start[x] + length[x]].copy(), wt[start[x]:start[x] + length[x]].copy())
              for x in range(n) if length[x]}
    arena_order = sorted(before, key=lambda x: start[x])
    end = K._compact(start, length, nbr, wt)
    assert end == int(length.sum())
    off = 0
    for x in arena_order:  # packed from 0 in the order the lists had in the arena
        assert start[x] == off
        np.testing.assert_array_equal(nbr[off:off + length[x]], before[x][0])
        if weights:
            np.testing.assert_array_equal(wt[off:off + length[x]], before[x][1])
        off += int(length[x])


@pytest.mark.parametrize("mode", ["serial", "parallel", "alternate"])
def test_tree_does_not_depend_on_threads_per_round(mode, monkeypatch):
    """Each RAC round runs on one thread or all (``_Pace``): the tree is the same either way."""
    from numba import get_num_threads, set_num_threads

    from batchal.clustering import _graph_kernels as K

    X = _blobs(3000, 16, 12, seed=5, scale=0.5)  # overlapping: tens of rounds, most small
    Z0, info0 = graph_linkage(X, metric="cosine", knn=10)
    nt = get_num_threads()
    calls = []

    def forced(self, entries):
        calls.append(entries)
        if mode == "serial":
            ntr = 1
        elif mode == "parallel":
            ntr = self.nt
        else:
            ntr = 1 if len(calls) % 2 else self.nt
        self.mode = ntr
        self.serial += ntr == 1
        set_num_threads(ntr)
        return ntr

    monkeypatch.setattr(K._Pace, "round", forced)
    # revisits too: every step may take the round's mode
    monkeypatch.setattr(K, "SERIAL_ROUND_ENTRIES", 0)
    Z, info = graph_linkage(X, metric="cosine", knn=10)
    assert get_num_threads() == nt  # restored
    assert info["rounds"] == info0["rounds"] > 20
    np.testing.assert_array_equal(Z, Z0)
    serial = info["merge_phases"]["serial_rounds"]
    if nt > 1:
        assert serial == {"serial": info["rounds"], "parallel": 0}.get(mode, serial)
        assert mode != "alternate" or 0 < serial < info["rounds"]
