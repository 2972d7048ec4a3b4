"""Coreset and BADGE against brute-force references on small pools."""
import numpy as np
import pytest

from batchal import select
from conftest import make_pool


def brute_kcenter(X, labeled, k, first=None):
    X = X.astype(np.float64)
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    if len(labeled):
        mind = D[:, labeled].min(1)
    else:
        mind = D[:, first].copy()
        out = [first]
        mind[first] = -1
        k -= 1
    out = [] if len(labeled) else out
    mind[labeled] = -1
    for _ in range(k):
        j = int(np.argmax(mind))
        out.append(j)
        mind = np.minimum(mind, D[:, j])
        mind[out] = -1
        mind[labeled] = -1
    return out


@pytest.mark.parametrize("seed", range(3))
def test_coreset_equals_brute_force_kcenter(seed):
    a = make_pool(n=300, d=6, n_labeled=25, seed=seed)
    got = select("coreset", 30, embeddings=a["embeddings"], labeled=a["labeled"], seed=seed)
    np.testing.assert_array_equal(got, brute_kcenter(a["embeddings"], a["labeled"], 30))


def test_coreset_without_labels_starts_random_then_greedy():
    a = make_pool(n=200, d=4, seed=1)
    got = select("coreset", 15, embeddings=a["embeddings"], seed=4)
    np.testing.assert_array_equal(got, brute_kcenter(a["embeddings"], [], 15, first=int(got[0])))


def test_coreset_covers_planted_blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=50, size=(10, 5))
    X = np.repeat(centers, 30, axis=0) + rng.normal(size=(300, 5))
    blob = np.repeat(np.arange(10), 30)
    idx = select("coreset", 10, embeddings=X, seed=0)
    assert set(blob[idx]) == set(range(10))  # one per far-apart blob


def brute_badge(P, H, labeled, k, uniforms):
    """Dense gradient embeddings and plain k-means++ (first = largest norm), same uniforms."""
    unl = np.setdiff1d(np.arange(len(P)), labeled)
    A = P[unl].astype(np.float64).copy()
    A[np.arange(len(unl)), A.argmax(1)] -= 1
    G = (A[:, :, None] * H[unl][:, None, :].astype(np.float64)).reshape(len(unl), -1)
    c = int(np.argmax((G ** 2).sum(1)))
    out = [c]
    D2 = np.full(len(unl), np.inf)
    for t in range(1, k):
        D2 = np.minimum(D2, ((G - G[c]) ** 2).sum(1))
        D2[out] = 0
        cum = np.cumsum(D2)
        c = int(np.searchsorted(cum, uniforms[t] * cum[-1], side="left"))
        out.append(c)
    return unl[out]


@pytest.mark.parametrize("seed", range(3))
def test_badge_factorised_kernel_equals_dense_kmeanspp(seed):
    a = make_pool(n=150, C=4, d=5, n_labeled=20, seed=seed)
    k = 12
    got = select("badge", k, probs=a["probs"], embeddings=a["embeddings"], labeled=a["labeled"], seed=seed)
    uniforms = np.random.default_rng(seed).random(k)
    want = brute_badge(a["probs"], a["embeddings"], a["labeled"], k, uniforms)
    np.testing.assert_array_equal(got, want)


def test_badge_partitions_split_the_quota():
    a = make_pool(n=600, n_labeled=0)
    idx = select("badge", 10, probs=a["probs"], embeddings=a["embeddings"], partitions=3, seed=0)
    assert idx.shape == (10,) and np.unique(idx).shape[0] == 10


def test_blocked_kernels_with_progress_equal_one_pass(capsys):
    """Many picks run in resumable blocks (progress bar between them) give the brute-force answer."""
    a = make_pool(n=400, d=6, n_labeled=20, seed=4)
    k = 157  # not a multiple of the block size
    got = select("coreset", k, embeddings=a["embeddings"], labeled=a["labeled"], seed=1, progress=True)
    np.testing.assert_array_equal(got, brute_kcenter(a["embeddings"], a["labeled"], k))
    got = select("badge", k, probs=a["probs"], embeddings=a["embeddings"], labeled=a["labeled"], seed=2,
                 progress=True)
    want = brute_badge(a["probs"], a["embeddings"], a["labeled"], k, np.random.default_rng(2).random(k))
    np.testing.assert_array_equal(got, want)
    assert "badge" in capsys.readouterr().err


@pytest.mark.parametrize("labeled_n", [0, 40])
def test_pruned_coreset_equals_brute_force_on_a_larger_pool(labeled_n):
    """The triangle-inequality pruning must not change a single pick (many centers, clustered data)."""
    rng = np.random.default_rng(7)
    X = (rng.normal(size=(20, 12)) * 4)[rng.integers(0, 20, 1500)] + rng.normal(size=(1500, 12))
    labeled = rng.choice(1500, labeled_n, replace=False)
    got = select("coreset", 400, embeddings=X, labeled=labeled, seed=3)
    ref = brute_kcenter(X.astype(np.float32), labeled, 400, first=None if labeled_n else int(got[0]))
    np.testing.assert_array_equal(got, ref)


def test_pruned_coreset_with_duplicate_rows_and_progress_blocks():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(60, 5))
    X = base[rng.integers(0, 60, 400)]  # every row repeated: many zero distances and ties
    labeled = np.arange(0, 400, 37)
    quiet = select("coreset", 120, embeddings=X, labeled=labeled, seed=0)
    shown = select("coreset", 120, embeddings=X, labeled=labeled, seed=0, progress=True)
    np.testing.assert_array_equal(quiet, shown)
    assert len(set(quiet.tolist())) == 120 and not set(quiet.tolist()) & set(labeled.tolist())
    np.testing.assert_array_equal(quiet, brute_kcenter(X.astype(np.float32), labeled, 120))
