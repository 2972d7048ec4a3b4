"""Cluster-Margin against a plain-Python reference of the paper's Algorithm 1 and on planted clusters."""
import numpy as np
import pytest

from batchal import BatchalInputError, Pool, select
from batchal.selectors import ClusterMarginSelector, round_robin
from conftest import make_pool


def reference_cluster_margin(P, clusters, labeled, k, margin_factor, seed, share=None):
    """Straight from the paper, with lists; the random member draws follow the same permutation of M."""
    n = len(P)
    labeled = set(int(i) for i in labeled)
    margins = {}
    for i in range(n):
        if i in labeled:
            continue
        top = sorted(P[i], reverse=True)
        margins[i] = top[0] - top[1]
    km = margin_factor * k
    if share is not None:  # batchal's cap: at most `share` of the unlabeled rows, never below 2 k
        km = min(km, max(min(2, margin_factor) * k, share * len(margins)))
    km = min(int(np.ceil(km)), len(margins))
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
@pytest.mark.parametrize("share", [None, 0.1, 0.3])
def test_matches_plain_python_reference(seed, factor, share):
    arrays = make_pool(n=400, n_clusters=37, n_labeled=30, seed=seed)
    k = 40 if share != 0.3 else 15
    got = select("cluster-margin", k, seed=seed, margin_factor=factor, max_candidate_share=share, **arrays)
    want = reference_cluster_margin(arrays["probs"], arrays["clusters"], arrays["labeled"], k, factor, seed, share)
    np.testing.assert_array_equal(got, np.array(want))


def test_candidate_count_rule():
    from batchal.selectors import candidate_count

    # the paper's regime (batch = 1% of the pool): the cap changes nothing
    assert candidate_count(100_000, 10_000_000) == 1_000_000
    # a batch that is 8% of the pool: 10 k would be 85% of it; capped, but never below 2 k
    assert candidate_count(5_000, 59_000) == 10_000
    assert candidate_count(1_000, 59_000) == 5_900
    assert candidate_count(5_000, 59_000, max_candidate_share=None) == 50_000
    assert candidate_count(5_000, 59_000, max_candidate_share=1.0) == 50_000
    assert candidate_count(100, 1_000, margin_factor=1.5) == 150
    assert candidate_count(10, 30) == 20 and candidate_count(10, 15) == 15  # 2 k, at most the unlabeled rows
    sel = ClusterMarginSelector(random_state=0)
    sel.select(Pool(**make_pool(n=2000, n_labeled=100)), 50)
    assert sel.candidates_.shape == (190,)  # 10% of 1,900 unlabeled, between 2 k = 100 and 10 k = 500


def test_one_from_each_of_the_smallest_clusters_when_k_le_clusters():
    # planted: cluster c has c+1 candidates; every row has a tiny margin so all are candidates
    sizes = np.arange(1, 21)
    clusters = np.repeat(np.arange(20), sizes)
    n = clusters.shape[0]
    P = np.tile([0.5, 0.5], (n, 1)).astype(np.float64)
    k = 8
    idx = select("cluster-margin", k, probs=P, clusters=clusters, seed=0, margin_factor=1e6, max_candidate_share=1.0)
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
    sel = ClusterMarginSelector(margin_factor=3, max_candidate_share=None, random_state=0)
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
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(BatchalInputError, match="max_candidate_share"):
            select("cluster-margin", 10, max_candidate_share=bad, **arrays)
    with pytest.raises(BatchalInputError, match="integer cluster ids"):
        select("cluster-margin", 10, **{**arrays, "clusters": arrays["clusters"].astype(float)})
