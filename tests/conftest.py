import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep the simulator's generated pools, clusterings and references out of the user's cache.

    One directory for the whole session, so tests that generate the same small pool
    still share it; a test that sets ``BATCHAL_CACHE`` itself overrides it.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BATCHAL_CACHE", str(tmp_path_factory.mktemp("batchal-cache")))
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def make_pool(n=600, C=5, d=8, n_clusters=60, n_labeled=40, seed=0):
    r = np.random.default_rng(seed)
    P = r.dirichlet(np.full(C, 0.5), size=n).astype(np.float32)
    P /= P.sum(1, keepdims=True)
    E = r.normal(size=(n, d)).astype(np.float32)
    clusters = r.integers(0, n_clusters, n)
    labeled = r.choice(n, n_labeled, replace=False)
    return dict(probs=P, embeddings=E, clusters=clusters, labeled=labeled)


@pytest.fixture
def pool_arrays():
    return make_pool()
