"""The generated pools of batchal.simulate.pools, on small sizes."""
from __future__ import annotations

import numpy as np
import pytest

from batchal._validation import BatchalInputError
from batchal.simulate import load_dataset
from batchal.simulate import pools
from batchal.simulate.datasets import FASHION_MNIST_DIR, check_labels
from batchal.simulate.pools import load_mnist1d

needs_fmnist = pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Fashion-MNIST idx files not installed")
WEB = dict(feature_size=200, hidden=16, n_sources=300)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one cache for the module: the small feature network is trained once
    monkeypatch.setenv("BATCHAL_CACHE", str(tmp_path_factory.getbasetemp() / "pools-cache"))


def _same(a, b):
    for k in ("X", "y", "X_test", "y_test"):
        np.testing.assert_array_equal(np.asarray(getattr(a, k)), np.asarray(getattr(b, k)))


# ----------------------------------------------------------------------------- MNIST-1D in chunks

def test_mnist1d_chunks_deterministic_resumable_and_prefix_consistent():
    pytest.importorskip("mnist1d")
    d = pools.load_mnist1d_chunked(125, n_test=30, chunk=50)
    assert d.X.shape == (125, 40) and d.y.shape == (125,) and d.X_test.shape == (30, 40)
    assert isinstance(d.X, np.memmap)  # a cache hit is memory-mapped
    np.testing.assert_allclose(d.X.mean(0), 0, atol=1e-4)
    assert np.bincount(d.y[:50]).max() - np.bincount(d.y[:50]).min() <= 1  # each chunk balanced
    _same(d, pools.load_mnist1d_chunked(125, n_test=30, chunk=50))  # cache hit
    # a pool of another size reuses the chunks: its raw rows are a prefix of the larger pool's
    small = pools.load_mnist1d_chunked(100, n_test=30, chunk=50)
    np.testing.assert_array_equal(small.y, d.y[:100])
    # assembly from scratch by two workers (pool and chunks removed) gives the same arrays
    import shutil

    for p in pools.cache_dir().glob("mnist1d*"):
        shutil.rmtree(p)
    _same(d, pools.load_mnist1d_chunked(125, n_test=30, chunk=50, workers=2))


def test_mnist1d_small_pools_keep_single_call(monkeypatch):
    pytest.importorskip("mnist1d")
    called = []
    monkeypatch.setattr(pools, "load_mnist1d_chunked", lambda *a, **k: called.append(a))
    d = load_mnist1d(n=200, n_test=50)  # at most 100K: the one make_dataset call, as before
    assert not called and d.X.shape == (200, 40)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args(as_dict=False)
    args.num_samples, args.train_split, args.seed = 250, 200 / 250, 0
    ref = np.asarray(make_dataset(args)["x"], dtype=np.float32)
    np.testing.assert_allclose(d.X, (ref - ref.mean(0)) / (ref.std(0) + 1e-6), rtol=1e-5, atol=1e-5)
    load_mnist1d(n=100_001, n_test=10)  # above 100K: the chunked generator
    assert called


# ----------------------------------------------------------------------------- the web pool

def test_multiplicities_exact_and_heavy_tailed():
    rng = np.random.default_rng(0)
    for size in (1000, 20_000, 10**6):
        m = pools._multiplicities(500, size, 1.5, rng)
        assert m.sum() == size and m.min() >= 1
    m = pools._multiplicities(2000, 200_000, 1.5, np.random.default_rng(1))
    assert (m == 1).mean() > 0.2 and m.max() > 20 * np.median(m)


@needs_fmnist
def test_web_pool_sizes_sources_and_determinism():
    d = pools.load_fmnist_web(3000, **WEB)
    assert d.name == "fmnist-web" and d.X.shape == (3000, 16) and d.X.dtype == np.float32
    assert d.X_test.shape == (10_000, 16)
    fm = pools._fashion_mnist()
    np.testing.assert_array_equal(d.y, fm["y"][d.source])  # each row has its source image's class
    red = d.redundancy
    assert red["pool_rows"] == 3000 and red["original_rows"] == np.unique(d.source).shape[0] == 300
    assert red["rows_original"] == 300 and red["rows_near_exact"] + red["rows_augmented"] == 2700
    kind = np.load(pools.cache_dir() / pools._key(pools.WEB_KEY, red["params"]) / "kind.npy")
    # a source's original row is its image's embedding, exactly
    orig = np.flatnonzero(kind == 0)[:20]
    net = pools._feature_net(None, None, None, 0, 0, pools.cache_dir() / pools._key(
        "fmnist-web-net-v1", {"f": 200, "h": 16, "c": 0, "s": 0}))
    np.testing.assert_allclose(d.X[orig], pools._embed(net, pools._pixels(fm["X"][d.source[orig]])),
                               rtol=1e-5, atol=1e-5)
    again = pools.load_fmnist_web(3000, **WEB)  # cache hit
    _same(d, again)
    np.testing.assert_array_equal(d.source, again.source)


def test_embedding_does_not_depend_on_the_callers_thread_count():
    # OpenBLAS splits a float32 product's sums by thread: with two threads 1.2% of such a block's
    # entries differed from one thread's, so a pool's bytes depended on the machine that made it
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    layers = [(rng.standard_normal((784, 256)).astype(np.float32) / 28, np.zeros(256, np.float32))]
    X = rng.random((4096, 784), dtype=np.float32)
    with threadpool_limits(1):
        one = pools._embed(layers, X)
    with threadpool_limits(4):
        many = pools._embed(layers, X)
    np.testing.assert_array_equal(one, many)


@needs_fmnist
def test_near_exact_copies_closer_than_augmented():
    dist = {}
    for aug in (0.0, 1.0):
        d = pools.load_fmnist_web(2000, augmented=aug, **WEB)
        fm = pools._fashion_mnist()
        kind = np.load(pools.cache_dir() / pools._key(pools.WEB_KEY, d.redundancy["params"]) / "kind.npy")
        assert (kind == (2 if aug else 1)).sum() == 2000 - 300
        net = pools._feature_net(None, None, None, 0, 0, pools.cache_dir() / pools._key(
            "fmnist-web-net-v1", {"f": 200, "h": 16, "c": 0, "s": 0}))
        copies = np.flatnonzero(kind > 0)
        orig = pools._embed(net, pools._pixels(fm["X"][d.source[copies]]))
        dist[aug] = np.median(np.linalg.norm(d.X[copies] - orig, axis=1))
    assert dist[0.0] < 0.5 * dist[1.0]


@needs_fmnist
def test_web_long_tail_keeps_size_and_copies_follow_sources():
    base = pools.load_fmnist_web(4000, **WEB)
    lt = pools.long_tail(base, a=1.0, seed=3)
    assert lt.name == "fmnist-web-lt" and lt.X.shape[0] == 4000
    ranks = pools._class_ranks(10, 3)
    src_per_class = np.bincount(pools._fashion_mnist()["y"][np.unique(lt.source)], minlength=10)
    top = src_per_class[ranks == 1][0]
    np.testing.assert_allclose(src_per_class, np.maximum(1, np.round(top / ranks)), atol=1)
    test_counts = np.bincount(lt.y_test, minlength=10)
    assert test_counts[ranks == 1][0] == 1000 and test_counts[ranks == 10][0] == 100


# ----------------------------------------------------------------------------- long tails, many classes, multi-label

def test_long_tail_frequencies_follow_rank_power():
    d = pools.load_manyclass(20_000, n_classes=10, n_test=2000)
    for a in (0.5, 1.0, 2.0):
        lt = pools.long_tail(d, a=a, seed=1)
        ranks = pools._class_ranks(10, 1)
        counts = np.bincount(lt.y, minlength=10)
        top = counts[ranks == 1][0]
        assert top == np.bincount(d.y)[ranks == 1][0]  # the largest class keeps all its rows
        np.testing.assert_allclose(counts, np.maximum(1, np.round(top / ranks ** a)), atol=1)
        assert set(np.unique(lt.y_test)) == set(range(10))
    _same(pools.long_tail(d, 1.0, seed=1), pools.long_tail(d, 1.0, seed=1))


def test_long_tail_of_a_redundant_pool_keeps_whole_groups():
    from batchal.simulate import make_redundant

    red = make_redundant(pools.load_manyclass(2000, n_classes=5, n_test=500), "zipf:a=2,cap=20", seed=0)
    lt = pools.long_tail(red, a=1.0)
    kept = np.unique(lt.source)
    np.testing.assert_array_equal(np.sort(lt.source), np.sort(red.source[np.isin(red.source, kept)]))
    assert lt.redundancy["long_tail"]["a"] == 1.0


def test_manyclass_deterministic_balanced():
    d = pools.load_manyclass(6400, n_classes=32, n_test=640, seed=2)
    assert d.X.shape == (6400, 40) and d.n_classes == 32
    assert np.bincount(d.y).min() >= 190
    _same(d, pools.load_manyclass(6400, n_classes=32, n_test=640, seed=2))
    other = pools.load_manyclass(6400, n_classes=32, n_test=640, seed=3)
    assert not np.array_equal(np.asarray(d.X), np.asarray(other.X))


def test_multilabel_features_do_not_depend_on_the_callers_thread_count():
    # the concepts' float32 sum rounded by how OpenBLAS split it between threads: 0.5% of such a block's
    # entries differed between one and two threads, so the pool depended on the machine that made it
    from threadpoolctl import threadpool_limits

    concepts = np.random.default_rng(1).standard_normal((1000, 64)).astype(np.float32)
    p = np.full(1000, 1e-3)
    out = []
    for threads in (1, 4):
        with threadpool_limits(threads):
            out.append(pools._multilabel_rows(2000, concepts, p, 5, 0.25, 0.05, np.random.default_rng(0)))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_multilabel_vocab_covers_every_class_with_a_long_tail():
    d = pools.load_multilabel_vocab(20_000, n_classes=1000, n_test=1000, a=1.0)
    y = check_labels(d.X, d.y, "pool")
    assert y.shape == (20_000, 1000) and y.dtype == np.int8 and d.multilabel
    freq = y.sum(0)
    assert freq.min() >= 1  # every class in the pool
    assert 1.5 <= y.sum(1).mean() <= 3.0
    top = np.sort(freq)[::-1]
    # 1/rank: the 10th most frequent about a tenth of the first, the 100th about a hundredth
    assert 5 < top[0] / top[9] < 20 and 40 < top[0] / top[99] < 250
    _same(d, pools.load_multilabel_vocab(20_000, n_classes=1000, n_test=1000, a=1.0))
    rare = pools.load_multilabel_vocab(3000, n_classes=2000, n_test=100, a=2.0)
    assert rare.y.sum(0).min() >= 1


def test_load_dataset_names(monkeypatch):
    import batchal.simulate.datasets as datasets

    small = datasets.load_mnist1d
    monkeypatch.setattr(datasets, "load_mnist1d", lambda n, n_test, seed, progress: small(n, 500, seed))  # a small test split
    d = load_dataset("manyclass", size=3200)
    assert d.name == "manyclass" and d.X.shape[0] == 3200
    assert load_dataset("multilabel-vocab", size=2000).y.shape == (2000, 1000)
    lt = load_dataset("mnist1d-lt", size=1000)
    assert lt.name == "mnist1d-lt" and 250 < lt.X.shape[0] < 350  # 1000 x H(10) / 10 rows


@pytest.mark.parametrize("call, param", [
    (lambda: pools.load_manyclass(0), "size"),
    (lambda: pools.load_manyclass(100, n_classes=1), "n_classes"),
    (lambda: pools.load_manyclass(100, seed=-1), "seed"),
    (lambda: pools.load_multilabel_vocab(100, n_classes=1000), "n_classes"),
    (lambda: pools.load_multilabel_vocab(2000, label_noise=1.0), "label_noise"),
    (lambda: pools.load_multilabel_vocab(2000, a=-1), "a"),
    (lambda: pools.load_fmnist_web(100, a=1.0), "a"),
    (lambda: pools.load_fmnist_web(100, augmented=1.5), "augmented"),
    (lambda: pools.load_fmnist_web(100, feature_size=55_000), "feature_size"),
    (lambda: pools.load_fmnist_web(100, n_sources=59_000), "n_sources"),
    (lambda: pools.load_fmnist_web(100, tail=0), "tail"),
    (lambda: pools.load_mnist1d_chunked(100, chunk=5), "chunk"),
    (lambda: pools.load_mnist1d_chunked(100, workers=0), "workers"),
    (lambda: pools.long_tail(pools.load_manyclass(200, n_test=20), a=0), "a"),
    (lambda: pools.long_tail(pools.load_multilabel_vocab(2000), a=1), "dataset"),
])
def test_bad_parameters(call, param):
    with pytest.raises(BatchalInputError, match=param):
        call()


@needs_fmnist
def test_web_test_views_are_drawn_as_pool_rows():
    clean = pools.load_fmnist_web(3000, **WEB)
    views = pools.load_fmnist_web(3000, test="views", **WEB)
    assert views.name == "fmnist-web-views"
    np.testing.assert_array_equal(views.X, clean.X)  # the pool does not depend on the test split
    np.testing.assert_array_equal(views.y_test, clean.y_test)
    path = pools.cache_dir() / pools._key(pools.WEB_KEY, clean.redundancy["params"])
    kind = np.load(path / "kind_test_views.npy")
    red = clean.redundancy
    share = red["rows_augmented"] / red["pool_rows"]
    assert abs((kind == 2).mean() - share) < 0.03 and abs((kind == 0).mean() - 300 / 3000) < 0.02
    # originals are the clean test rows exactly; copies moved, augmented ones more than near-exact ones
    np.testing.assert_array_equal(np.asarray(views.X_test)[kind == 0], np.asarray(clean.X_test)[kind == 0])
    moved = np.linalg.norm(np.asarray(views.X_test) - np.asarray(clean.X_test), axis=1)
    assert 0 < np.median(moved[kind == 1]) < 0.5 * np.median(moved[kind == 2])
    again = pools.load_fmnist_web(3000, test="views", **WEB)
    np.testing.assert_array_equal(again.X_test, views.X_test)
    with pytest.raises(BatchalInputError, match="test must be"):
        pools.load_fmnist_web(3000, test="noisy", **WEB)


@needs_fmnist
def test_web_long_tail_test_views_keep_the_tail():
    lt = pools.load_fmnist_web(4000, tail=1.0, **WEB)
    lv = pools.load_fmnist_web(4000, tail=1.0, test="views", **WEB)
    assert lv.name == "fmnist-web-lt-views" and lv.X_test.shape == lt.X_test.shape
    np.testing.assert_array_equal(lv.y_test, lt.y_test)
    # long_tail of a views pool keeps its test split drawn as pool rows
    again = pools.long_tail(pools.load_fmnist_web(4000, test="views", **WEB), a=1.0, seed=0)
    assert again.name == "fmnist-web-lt-views"
    np.testing.assert_array_equal(again.X_test, lv.X_test)
