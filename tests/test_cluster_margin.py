"""Cluster-Margin against a plain-Python reference of the paper's Algorithm 1 and on planted clusters."""
import numpy as np
import pytest

from batchal import BatchalInputError, Pool, select
from batchal.selectors import ClusterMarginSelector, round_robin
from conftest import make_pool


def reference_cluster_margin(P, clusters, labeled, k, margin_factor, seed):
    """Straight from the paper, with lists; the random member draws follow the same permutation of M."""
    n = len(P)
    labeled = set(int(i) for i in labeled)
    margins = {}
    for i in range(n):
        if i in labeled:
            continue
        top = sorted(P[i], reverse=True)
        margins[i] = top[0] - top[1]
    km = min(int(np.ceil(margin_factor * k)), len(margins))
    # k_m smallest margins (ties by index, matching the library's documented tie-break)
    M = sorted(margins, key=lambda i: (np.float32(margins[i]), i))[:km]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(M))
    M = [M[j] for j in perm]
    groups = {}
    for i in M:
        groups.setdefault(int(clusters[i]), []).append(i)
    order = sorted(groups, key=lambda c: (len(groups[c]), c))  # smallest first
    chosen = []
    while len(chosen) < k:
        for c in list(order):
            if len(chosen) == k:
                break
            chosen.append(groups[c].pop(0))
            if not groups[c]:
                order.remove(c)
    return chosen


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("factor", [1.0, 2.5, 10.0])
def test_matches_plain_python_reference(seed, factor):
    arrays = make_pool(n=400, n_clusters=37, n_labeled=30, seed=seed)
    k = 40
    got = select("cluster-margin", k, seed=seed, margin_factor=factor, **arrays)
    want = reference_cluster_margin(arrays["probs"], arrays["clusters"], arrays["labeled"], k, factor, seed)
    np.testing.assert_array_equal(got, np.array(want))


def test_one_from_each_of_the_smallest_clusters_when_k_le_clusters():
    # planted: cluster c has c+1 candidates; every row has a tiny margin so all are candidates
    sizes = np.arange(1, 21)
    clusters = np.repeat(np.arange(20), sizes)
    n = clusters.shape[0]
    P = np.tile([0.5, 0.5], (n, 1)).astype(np.float64)
    k = 8
    idx = select("cluster-margin", k, probs=P, clusters=clusters, seed=0, margin_factor=1e6)
    np.testing.assert_array_equal(clusters[idx], np.arange(8))  # smallest first, one each


def test_round_robin_passes_fill_the_batch():
    clusters = np.array([0] * 5 + [1] * 2 + [2] * 1)
    cand = np.arange(8)
    out = round_robin(cand, clusters, 8, np.random.default_rng(0))
    # pass 1 visits clusters 2, 1, 0; pass 2 clusters 1, 0; then cluster 0 alone
    np.testing.assert_array_equal(clusters[out], [2, 1, 0, 1, 0, 0, 0, 0])


def test_members_are_uniformly_random():
    clusters = np.zeros(4, dtype=int)
    counts = np.zeros(4)
    for s in range(2000):
        counts[round_robin(np.arange(4), clusters, 1, np.random.default_rng(s))[0]] += 1
    assert counts.min() > 400  # each of the 4 members ~500 times


def test_candidates_are_the_lowest_margins():
    arrays = make_pool(n=500, n_labeled=50)
    sel = ClusterMarginSelector(margin_factor=3, random_state=0)
    idx = sel.select(Pool(**arrays), 20)
    P = arrays["probs"]
    s = np.sort(P, 1)
    m = s[:, -1] - s[:, -2]
    m[arrays["labeled"]] = np.inf
    assert sel.candidates_.shape == (60,)
    assert set(sel.candidates_) == set(np.argsort(m)[:60])
    assert set(idx) <= set(sel.candidates_)


def test_never_reads_embeddings():
    arrays = make_pool()
    arrays.pop("embeddings")
    assert select("cluster-margin", 10, **arrays).shape == (10,)


def test_bad_margin_factor_and_clusters():
    arrays = make_pool()
    with pytest.raises(BatchalInputError, match="margin_factor"):
        select("cluster-margin", 10, margin_factor=0.5, **arrays)
    with pytest.raises(BatchalInputError, match="integer cluster ids"):
        select("cluster-margin", 10, **{**arrays, "clusters": arrays["clusters"].astype(float)})
