"""TypiClust on a one-time clustering: the fast selector against a plain-Python reference."""
import heapq
import math

import numpy as np
import pytest

from batchal import BatchalInputError, Pool, get_selector, select
from batchal.selectors.typiclust import visit_counts


def reference_typiclust(E, clusters, labeled, k, seed, knn=20, max_sample=2000):
    """The rule as written, one visit at a time (a heap) and typicality by plain loops.

    Uses the same seeded draws as the selector: a permutation of the cluster ids
    (the tie rank), then a seed from which each visited cluster larger than
    ``max_sample`` draws a sample of references and one of candidates.
    """
    rng = np.random.default_rng(seed)
    n = len(clusters)
    clusters = [int(c) for c in clusters]
    is_lab = [False] * n
    for r in labeled:
        is_lab[int(r)] = True
    tie = rng.permutation(max(clusters) + 1)
    sample_seed = int(rng.integers(2**63))
    members = {}
    for r in range(n):
        members.setdefault(clusters[r], []).append(r)
    heap = []
    for c, rows in members.items():
        n_lab = sum(is_lab[r] for r in rows)
        if n_lab < len(rows):
            heap.append((n_lab, -len(rows), int(tie[c]), c))
    heapq.heapify(heap)
    visits = []  # cluster of each pick, in batch order
    picks = {}
    while len(visits) < k:
        count, neg_size, t, c = heapq.heappop(heap)
        visits.append(c)
        picks[c] = picks.get(c, 0) + 1
        n_unl = sum(not is_lab[r] for r in members[c])
        if picks[c] < n_unl:
            heapq.heappush(heap, (count + 1, neg_size, t, c))
    ranked = {}
    for c in picks:
        rows = members[c]
        unl = [r for r in rows if not is_lab[r]]
        ref, cand = rows, unl
        if len(rows) > max_sample:
            crng = np.random.default_rng([sample_seed, c])
            ref = sorted(rows[i] for i in crng.choice(len(rows), max_sample, replace=False))
            m = max(max_sample, picks[c])
            if len(unl) > m:
                cand = sorted(unl[i] for i in crng.choice(len(unl), m, replace=False))
        K = min(knn, len(rows) - 1)
        scored = []
        for x in cand:
            dists = []
            for y in ref:
                if y != x:
                    acc = 0.0
                    for t in range(E.shape[1]):
                        diff = float(E[x, t]) - float(E[y, t])
                        acc += diff * diff
                    dists.append(math.sqrt(acc))
            dists.sort()
            mean = sum(dists[:K]) / K if K > 0 else 0.0  # typicality = 1 / mean
            scored.append((mean, x))
        ranked[c] = [x for _, x in sorted(scored)]
    used = {}
    out = []
    for c in visits:
        out.append(ranked[c][used.get(c, 0)])
        used[c] = used.get(c, 0) + 1
    return np.array(out, dtype=np.int64)


def skewed_pool(seed, n=400, d=5, n_labeled=30):
    """Clusters with a long-tailed size distribution (singletons to a big one), as HAC gives."""
    r = np.random.default_rng(seed)
    sizes = np.minimum(r.zipf(1.6, size=n), 120)
    clusters = np.repeat(np.arange(sizes.shape[0]), sizes)[:n]
    clusters = clusters[r.permutation(n)]
    E = (r.normal(size=(n, d)) + r.normal(size=(clusters.max() + 1, d))[clusters] * 3).astype(np.float32)
    labeled = r.choice(n, n_labeled, replace=False)
    return E, clusters, labeled


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 13, 100, 370])
def test_matches_reference(seed, k):
    E, clusters, labeled = skewed_pool(seed)
    got = select("typiclust", k, embeddings=E, clusters=clusters, labeled=labeled, seed=seed)
    np.testing.assert_array_equal(got, reference_typiclust(E, clusters, labeled, k, seed))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [5, 60, 300])
def test_matches_reference_sampled(seed, k):
    """Clusters larger than max_sample: typicality against a seeded sample, the same in both."""
    E, clusters, labeled = skewed_pool(seed)
    got = select("typiclust:knn=5:max_sample=12", k, embeddings=E, clusters=clusters, labeled=labeled, seed=seed)
    want = reference_typiclust(E, clusters, labeled, k, seed, knn=5, max_sample=12)
    np.testing.assert_array_equal(got, want)


def test_matches_reference_in_blocks(monkeypatch):
    """Small clusters read in several blocks of embeddings give the same batch."""
    import batchal.selectors.typiclust as tc

    E, clusters, labeled = skewed_pool(7)
    monkeypatch.setattr(tc, "BLOCK_ROWS", 16)
    got = select("typiclust", 200, embeddings=E, clusters=clusters, labeled=labeled, seed=7)
    np.testing.assert_array_equal(got, reference_typiclust(E, clusters, labeled, 200, 7))


@pytest.mark.parametrize("spec, knn, max_sample", [("typiclust", 20, 2000), ("typiclust:knn=5:max_sample=30", 5, 30)])
def test_matches_reference_blas(monkeypatch, spec, knn, max_sample):
    """Clusters past BLAS_MIN members are scored by BLAS (equal up to rounding: the same batch on these pools)."""
    import batchal.selectors.typiclust as tc

    monkeypatch.setattr(tc, "BLAS_MIN", 8)
    for seed in range(3):
        E, clusters, labeled = skewed_pool(seed)
        for k in (10, 150):
            got = select(spec, k, embeddings=E, clusters=clusters, labeled=labeled, seed=seed)
            np.testing.assert_array_equal(got, reference_typiclust(E, clusters, labeled, k, seed, knn, max_sample))


def test_largest_uncovered_clusters_first():
    r = np.random.default_rng(0)
    sizes = [10, 50, 20, 40, 30]  # cluster c has sizes[c] members
    clusters = np.repeat(np.arange(5), sizes)
    E = r.normal(size=(clusters.shape[0], 3)).astype(np.float32)
    labeled = np.array([np.flatnonzero(clusters == 3)[0]])  # the 40-member cluster is covered
    batch = select("typiclust", 7, embeddings=E, clusters=clusters, labeled=labeled, seed=0)
    # uncovered by size (50, 30, 20, 10), then the covered ones by size (50 again: count 1, 40: count 1, ...)
    np.testing.assert_array_equal(clusters[batch], [1, 4, 2, 0, 1, 3, 4])


def test_takes_the_most_typical_member():
    """A cluster's dense core is typical, its outliers are not; the pick is the argmin of the kNN mean distance."""
    r = np.random.default_rng(1)
    core = r.normal(scale=0.1, size=(30, 2))
    outliers = r.normal(scale=5.0, size=(10, 2)) + 10
    E = np.vstack([outliers, core]).astype(np.float32)
    clusters = np.zeros(40, dtype=int)
    D = np.sqrt(((E[:, None, :].astype(np.float64) - E[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    mean_knn = np.sort(D, 1)[:, :20].mean(1)
    batch = select("typiclust", 3, embeddings=E, clusters=clusters, seed=0)
    np.testing.assert_array_equal(batch, np.argsort(mean_knn, kind="stable")[:3])
    assert batch.min() >= 10  # all from the core


def test_singletons_give_their_member():
    E = np.arange(12, dtype=np.float32).reshape(6, 2)
    clusters = np.arange(6)
    batch = select("typiclust", 6, embeddings=E, clusters=clusters, seed=0)
    assert sorted(batch.tolist()) == list(range(6))


def test_no_predictions_needed_and_diagnostics():
    E, clusters, labeled = skewed_pool(2)
    sel = get_selector("typiclust", random_state=0)
    sel.select(Pool(embeddings=E, clusters=clusters, labeled=labeled), 20)
    assert sel.diagnostics_["visited_clusters"] == 20
    assert sel.diagnostics_["sampled_clusters"] == 0


def test_nan_in_a_read_row_refused_an_unread_row_ignored():
    """Only the visited clusters' rows are read: a bad one is refused by its row, an unread one cannot matter."""
    E, clusters, labeled = skewed_pool(3)
    sizes = np.bincount(clusters)
    big = int(np.argmax(np.where(np.bincount(clusters[labeled], minlength=sizes.shape[0]) == 0, sizes, -1)))
    read_row = int(np.flatnonzero(clusters == big)[0])
    unread_row = int(np.flatnonzero(clusters != big)[0])  # a batch of 1 reads one cluster
    ok = select("typiclust", 1, embeddings=E, clusters=clusters, labeled=labeled, seed=0)
    bad = E.copy()
    bad[read_row, 0] = np.nan
    with pytest.raises(BatchalInputError, match=f"NaN \\(first at row {read_row} "):
        select("typiclust", 1, embeddings=bad, clusters=clusters, labeled=labeled, seed=0)
    bad = E.copy()
    bad[unread_row, 0] = np.inf
    np.testing.assert_array_equal(select("typiclust", 1, embeddings=bad, clusters=clusters, labeled=labeled, seed=0), ok)


@pytest.mark.parametrize("spec, match", [
    ("typiclust:knn=0", "knn must be an integer >= 1"),
    ("typiclust:knn=2.5", "knn must be an integer"),
    ("typiclust:max_sample=1", "max_sample must be an integer >= 2"),
    ("typiclust:knn=20:max_sample=20", "must exceed knn"),
    ("typiclust:candidates=neighbours:5", "drop candidates="),
])
def test_bad_parameters_refused(spec, match):
    E, clusters, labeled = skewed_pool(0)
    with pytest.raises(BatchalInputError, match=match):
        select(spec, 5, embeddings=E, clusters=clusters, labeled=labeled)


def test_missing_inputs_named():
    E, clusters, labeled = skewed_pool(0)
    with pytest.raises(BatchalInputError, match="needs clusters"):
        select("typiclust", 5, embeddings=E, labeled=labeled)
    with pytest.raises(BatchalInputError, match="needs embeddings"):
        select("typiclust", 5, clusters=clusters, labeled=labeled)


def test_visit_counts_water_filling():
    """The closed form equals the one-at-a-time loop on random ladders."""
    r = np.random.default_rng(5)
    for _ in range(50):
        n_ids = int(r.integers(1, 30))
        size = r.integers(0, 12, n_ids)
        lab = np.minimum(r.integers(0, 4, n_ids), size)
        unl = size - lab
        if unl.sum() == 0:
            continue
        k = int(r.integers(1, unl.sum() + 1))
        tie = r.permutation(n_ids)
        heap = [(int(lab[c]), -int(size[c]), int(tie[c]), c) for c in range(n_ids) if unl[c] > 0]
        heapq.heapify(heap)
        want = np.zeros(n_ids, dtype=np.int64)
        for _ in range(k):
            cnt, s, t, c = heapq.heappop(heap)
            want[c] += 1
            if want[c] < unl[c]:
                heapq.heappush(heap, (cnt + 1, s, t, c))
        np.testing.assert_array_equal(visit_counts(lab, unl, size, tie, k), want)


def test_memmapped_embeddings_read_in_part(tmp_path):
    E, clusters, labeled = skewed_pool(4)
    np.save(tmp_path / "E.npy", E)
    mm = np.load(tmp_path / "E.npy", mmap_mode="r")
    a = select("typiclust", 50, embeddings=E, clusters=clusters, labeled=labeled, seed=1)
    b = select("typiclust", 50, embeddings=mm, clusters=clusters, labeled=labeled, seed=1)
    np.testing.assert_array_equal(a, b)


def test_small_batch_is_the_start_of_a_larger_one():
    """The visiting order and each cluster's ranking do not depend on the batch size (samples included,
    as long as no cluster gives more than max_sample picks: then more candidates are drawn)."""
    E, clusters, labeled = skewed_pool(5)
    for spec in ("typiclust", "typiclust:knn=4:max_sample=9"):
        big = select(spec, 120, embeddings=E, clusters=clusters, labeled=labeled, seed=2)
        for k in (1, 7, 40):
            np.testing.assert_array_equal(select(spec, k, embeddings=E, clusters=clusters, labeled=labeled, seed=2),
                                          big[:k])


def test_cluster_margin_typical_way_out():
    """typical=N: typiclust's picks for the labels up to N, then the strategy's own rule."""
    r = np.random.default_rng(0)
    E, clusters, labeled = skewed_pool(1, n_labeled=30)
    P = r.dirichlet(np.full(4, 0.5), size=E.shape[0]).astype(np.float32)
    spec = "cluster-margin:order=margin:dup=0.01"
    arrays = dict(probs=P, embeddings=E, clusters=clusters, labeled=labeled, seed=3)
    # labeled set (30) already at N: exactly the strategy
    np.testing.assert_array_equal(select(spec + ":typical=30", 40, **arrays), select(spec, 40, **arrays))
    # N = 1000 > 30 + 40: the whole batch is typiclust's (the same seeded draws)
    np.testing.assert_array_equal(select(spec + ":typical=1000", 40, **arrays), select("typiclust", 40, **arrays))
    # N = 55: 25 typical rows, then the strategy's rule with those counted as labeled
    mixed = select(spec + ":typical=55", 40, **arrays)
    first = select("typiclust", 25, **arrays)
    np.testing.assert_array_equal(mixed[:25], first)
    rest = select(spec, 15, **{**arrays, "labeled": np.concatenate([labeled, first])})
    np.testing.assert_array_equal(mixed[25:], rest)
    sel = get_selector(spec + ":typical=55", random_state=3)
    sel.select(Pool(probs=P, embeddings=E, clusters=clusters, labeled=labeled), 40)
    assert sel.diagnostics_["typical"] == 25 and "k_m" in sel.diagnostics_


def test_cluster_margin_typical_refusals():
    E, clusters, labeled = skewed_pool(1)
    P = np.full((E.shape[0], 2), 0.5, dtype=np.float32)
    with pytest.raises(BatchalInputError, match="typical=5 scores how typical"):
        select("cluster-margin:typical=5", 5, probs=P, clusters=clusters, labeled=labeled)
    with pytest.raises(BatchalInputError, match="typical must be an integer >= 1"):
        select("cluster-margin:typical=0", 5, probs=P, embeddings=E, clusters=clusters, labeled=labeled)
    with pytest.raises(BatchalInputError, match="drop one of them"):
        select("cluster-margin:typical=50:candidates=neighbours:5", 5, probs=P, embeddings=E, clusters=clusters,
               labeled=labeled)


def test_cli_select_typiclust(tmp_path):
    from typer.testing import CliRunner

    from batchal.cli import app

    E, clusters, labeled = skewed_pool(0)
    for name, arr in (("E", E), ("c", clusters), ("l", labeled)):
        np.save(tmp_path / f"{name}.npy", arr)
    res = CliRunner().invoke(app, ["select", "--strategy", "typiclust", "--batch-size", "7", "--embeddings",
                                   str(tmp_path / "E.npy"), "--clusters", str(tmp_path / "c.npy"), "--labeled",
                                   str(tmp_path / "l.npy"), "--out", str(tmp_path / "out.npy"), "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert "typiclust: 7 clusters visited" in res.output
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"),
                                  select("typiclust", 7, embeddings=E, clusters=clusters, labeled=labeled, seed=0))


def test_ray_engine_refuses_typiclust_and_typical():
    from batchal.engines import check_strategy

    for spec in ("typiclust", "cluster-margin:order=margin:dup=0.01:typical=50"):
        with pytest.raises(BatchalInputError, match="use --engine local"):
            check_strategy("ray", spec)
