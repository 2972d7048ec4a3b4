"""Exact average-linkage clustering against scipy's linkage + fcluster."""
import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.metrics import adjusted_rand_score

from batchal import AverageLinkage, BatchalInputError, cluster
from batchal.clustering.exact import check_exact_fits


def blobs(n=400, d=6, k=12, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(scale=4, size=(k, d))
    return c[rng.integers(0, k, n)] + rng.normal(size=(n, d))


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "sqeuclidean"])
def test_threshold_cut_equals_scipy(metric):
    X = blobs()
    if metric == "euclidean":  # root of the mean squared distance: scipy's sqeuclidean tree, heights rooted
        Z = linkage(X, method="average", metric="sqeuclidean")
        Z[:, 2] = np.sqrt(Z[:, 2])
    else:
        Z = linkage(X, method="average", metric=metric)
    t = float(np.quantile(Z[:, 2], 0.9))
    want = fcluster(Z, t=t, criterion="distance")
    got = cluster(X, threshold=t, metric=metric, method="exact")
    assert adjusted_rand_score(want, got) == 1.0
    assert got.min() == 0 and got.max() == want.max() - 1


@pytest.mark.parametrize("size", [4, 10, 50])
def test_mean_cluster_size_gives_that_many_clusters(size):
    X = blobs(n=500)
    m = AverageLinkage(mean_cluster_size=size, method="exact").fit(X)
    assert m.n_clusters_ == round(500 / size)
    want = fcluster(linkage(X, "average", metric="cosine"), t=m.n_clusters_, criterion="maxclust")
    assert adjusted_rand_score(want, m.labels_) == 1.0
    # the reported threshold reproduces the same clusters
    again = cluster(X, threshold=m.threshold_, method="exact")
    assert adjusted_rand_score(again, m.labels_) == 1.0


def test_recut_without_reclustering():
    X = blobs()
    m = AverageLinkage(mean_cluster_size=10, method="exact").fit(X)
    Z = m.linkage_
    m.recut(mean_cluster_size=40)
    assert m.linkage_ is Z and m.n_clusters_ == 10


def test_refuses_sizes_that_do_not_fit():
    with pytest.raises(BatchalInputError, match="GiB.*graph"):
        check_exact_fits(2_000_000)
    with pytest.raises(BatchalInputError, match="needs about"):
        check_exact_fits(1000, budget=1000)


def test_bad_inputs():
    X = blobs(n=50)
    with pytest.raises(BatchalInputError, match="metric"):
        cluster(X, metric="manhattan")
    with pytest.raises(BatchalInputError, match="NaN"):
        cluster(np.where(np.arange(50)[:, None] == 3, np.nan, X))
    with pytest.raises(BatchalInputError, match="all zeros"):
        cluster(np.vstack([X, np.zeros((1, X.shape[1]))]), method="exact")
    with pytest.raises(BatchalInputError, match="method"):
        cluster(X, method="fast")
    with pytest.raises(BatchalInputError, match="threshold"):
        cluster(X, threshold=-1.0)


@pytest.mark.parametrize("corrupt, msg", [
    (lambda Z: Z.__setitem__((5, 2), np.nan), "merge 5 holds NaN"),
    (lambda Z: Z.__setitem__((0, 0), np.inf), "not an integer"),
    (lambda Z: Z.__setitem__((0, 0), 10_000), "not formed before"),
    (lambda Z: Z.__setitem__((1, 0), Z[0, 0]), "merged twice"),
    (lambda Z: Z.__setitem__((3, 3), Z[3, 3] + 1), "not the sum"),
])
def test_corrupt_merge_trees_are_refused(corrupt, msg):
    # scipy's is_valid_linkage lets the id cases through and fcluster then reads out of
    # bounds (a crash); a NaN height used to drop a merge silently (19 clusters for 20)
    from batchal.clustering import AverageLinkage

    Z = AverageLinkage(mean_cluster_size=5).fit(blobs(n=100)).linkage_.copy()
    assert AverageLinkage.from_linkage(Z, mean_cluster_size=5).n_clusters_ == 20
    corrupt(Z)
    with pytest.raises(BatchalInputError, match=f"--tree T.npy: .*{msg}"):
        AverageLinkage.from_linkage(Z, mean_cluster_size=5, name="--tree T.npy")
