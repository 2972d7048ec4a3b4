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


def reference_power_round_robin(candidates, clusters, k, seed, power):
    """Visits in proportion to size**power, with lists: the r-th member (random order) of a cluster of s
    candidates has the key (r + 1/2) / s**power; ties by size, then cluster id."""
    perm = np.random.default_rng(seed).permutation(len(candidates))
    groups = {}
    for j in perm:
        groups.setdefault(int(clusters[j]), []).append(int(j))
    keyed = [((r + 0.5) / len(m) ** power, len(m), c, j) for c, m in groups.items() for r, j in enumerate(m)]
    return [int(candidates[j]) for *_, j in sorted(keyed)[:k]]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("power", [0.0, 0.5, 0.75, 1.0])
def test_power_round_robin_matches_reference(seed, power):
    from batchal.selectors.cluster_margin import power_round_robin

    r = np.random.default_rng(100 + seed)
    m = 300
    clusters = r.zipf(1.6, m) % 41  # heavy-tailed cluster sizes
    cand = r.permutation(5000)[:m]
    for k in (1, 17, 150, m):
        got = power_round_robin(cand, clusters, k, np.random.default_rng(seed), power)
        np.testing.assert_array_equal(got, reference_power_round_robin(cand, clusters, k, seed, power))
        assert np.unique(got).shape[0] == k


@pytest.mark.parametrize("seed", range(4))
def test_power_zero_is_the_papers_round_robin(seed):
    from batchal.selectors.cluster_margin import power_round_robin

    r = np.random.default_rng(seed)
    clusters = r.zipf(1.4, 500) % 60
    cand = np.arange(500)
    for k in (5, 60, 333):
        want = round_robin(cand, clusters, k, np.random.default_rng(seed))
        np.testing.assert_array_equal(power_round_robin(cand, clusters, k, np.random.default_rng(seed), 0.0), want)
    arrays = make_pool(n=600, n_clusters=40, n_labeled=40, seed=seed)
    np.testing.assert_array_equal(select("cluster-margin:power=0", 50, seed=seed, **arrays),
                                  select("cluster-margin", 50, seed=seed, **arrays))


def test_power_one_keeps_each_clusters_share_and_one_half_follows_the_square_root():
    sizes = [10, 20, 40, 80]
    clusters = np.repeat(np.arange(4), sizes)
    cand = np.arange(clusters.shape[0])
    got = round_robin(cand, clusters, 75, np.random.default_rng(0), power=1.0)
    np.testing.assert_array_equal(np.bincount(clusters[got]), [5, 10, 20, 40])  # half of each
    got = round_robin(cand, clusters, 4, np.random.default_rng(0), power=0.0)
    np.testing.assert_array_equal(np.bincount(clusters[got]), [1, 1, 1, 1])  # the paper: one each
    # power 1/2: visits in proportion to sqrt(size); 4 passes' worth of the smallest cluster's rate
    got = round_robin(cand, clusters, 30, np.random.default_rng(0), power=0.5)
    counts = np.bincount(clusters[got])
    assert counts.sum() == 30 and np.all(np.diff(counts) > 0)
    np.testing.assert_allclose(counts / np.sqrt(sizes), (counts / np.sqrt(sizes)).mean(), rtol=0.25)
    # a batch smaller than the number of clusters: the paper takes the singletons, power 1 the big cluster
    clusters = np.repeat(np.arange(21), [1] * 20 + [100])
    cand = np.arange(clusters.shape[0])
    assert set(clusters[round_robin(cand, clusters, 10, np.random.default_rng(0))]) <= set(range(20))
    assert set(clusters[round_robin(cand, clusters, 10, np.random.default_rng(0), power=1.0)]) == {20}


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "half"])
def test_bad_power_rejected(bad):
    with pytest.raises(BatchalInputError, match="power must be a number in"):
        select("cluster-margin", 5, seed=0, power=bad, **make_pool())


def test_power_needs_the_papers_round_robin():
    with pytest.raises(BatchalInputError, match="power shares the visits.*not order=margin"):
        select("cluster-margin:order=margin:power=0.5", 5, seed=0, **make_pool())
