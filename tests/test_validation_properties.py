"""Property-based tests of input validation: arrays of random shapes, dtypes and non-finite values.

The contract: every input is either accepted and honoured exactly, or refused with
a BatchalInputError; no other exception, no silent reshaping.
"""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import batchal
from batchal import BatchalInputError
from batchal._validation import check_2d, first_nonfinite, labeled_mask
from batchal.io import load_array

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# every dtype a user file can plausibly hold, including ones that must be refused
DTYPES = st.one_of(hnp.floating_dtypes(sizes=(32, 64)), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                   hnp.boolean_dtypes(), hnp.unicode_string_dtypes(max_len=3), hnp.complex_number_dtypes())
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


def any_array():
    return DTYPES.flatmap(lambda dt: hnp.arrays(dt, SHAPES))


@SETTINGS
@given(any_array(), st.sampled_from(["margin", "entropy", "random", "coreset"]), st.integers(-1, 4))
def test_select_accepts_or_refuses_cleanly(arr, strategy, k):
    """Whatever array comes in as probs (or embeddings), select returns a valid batch or says why not."""
    kw = {"embeddings": arr} if strategy == "coreset" else {"probs": arr}
    try:
        idx = batchal.select(strategy, k, seed=0, **kw)
    except BatchalInputError:
        return
    a = np.asarray(arr)
    # accepted: the input was a usable 2-d numeric array, and the batch obeys the contract
    assert a.ndim == 2 and a.shape[0] >= 1 and a.dtype.kind in "biuf"
    assert idx.dtype == np.int64 and idx.shape == (k,) and np.unique(idx).shape == (k,)
    assert idx.min() >= 0 and idx.max() < a.shape[0]
    if strategy != "random" and a.dtype.kind == "f":
        assert np.isfinite(a).all()  # NaN or inf in what the strategy reads is never accepted


@SETTINGS
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=7),
                  elements=st.sampled_from([0.0, 1.5, -2.0, np.nan, np.inf, -np.inf])))
def test_first_nonfinite_matches_a_plain_scan(a):
    got = first_nonfinite(a)
    rows = a.reshape(a.shape[0], -1)
    bad = [i for i in range(rows.shape[0]) if not np.isfinite(rows[i]).all()]
    if not bad:
        assert got is None
    else:
        assert got[0] == bad[0]
        assert got[1] == ("NaN" if np.isnan(rows[bad[0]]).any() else "infinite values")


@SETTINGS
@given(any_array())
def test_check_2d_never_reshapes(arr):
    try:
        out = check_2d(arr, "probs")
    except BatchalInputError:
        assert arr.ndim != 2 or 0 in arr.shape or arr.dtype.kind not in "biuf"
        return
    assert out.shape == arr.shape and out.ndim == 2


@SETTINGS
@given(st.integers(1, 20), st.one_of(
    hnp.arrays(np.int64, st.integers(0, 8), elements=st.integers(-3, 25)),
    hnp.arrays(np.float64, st.integers(0, 8), elements=st.sampled_from([0.0, 1.0, 2.5, 3.0, np.nan, 19.0])),
    hnp.arrays(np.bool_, st.integers(0, 22)),
))
def test_labeled_indices_are_exact_or_refused(n, arr):
    try:
        mask = labeled_mask(arr, n)
    except BatchalInputError:
        if arr.dtype == bool:
            assert arr.shape != (n,) and arr.size
        else:
            ok = arr.size == 0 or (np.isfinite(arr).all() and (np.mod(arr, 1) == 0).all() and arr.min() >= 0
                                   and arr.max() < n and np.unique(arr).size == arr.size)
            assert not ok
        return
    if arr.dtype == bool and arr.size:
        np.testing.assert_array_equal(mask, arr)
    else:
        assert sorted(np.flatnonzero(mask).tolist()) == sorted(arr.astype(np.int64).tolist())


@SETTINGS
@given(st.lists(st.lists(st.floats(-5, 5, width=32), min_size=0, max_size=4), min_size=1, max_size=6))
def test_parquet_list_rows_are_never_reshaped(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("pq") / "e.parquet"
    pq.write_table(pa.table({"e": pa.array(rows, type=pa.list_(pa.float32()))}), path)
    try:
        got = load_array(path, name="--embeddings")
    except BatchalInputError as exc:
        assert len({len(r) for r in rows}) > 1, exc  # refused only when the rows really differ
        return
    assert len({len(r) for r in rows}) == 1
    np.testing.assert_array_equal(got, np.asarray(rows, dtype=np.float32).reshape(len(rows), len(rows[0])))


@SETTINGS
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.just(4)),
                  elements=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 7.0, np.nan, np.inf, -1.0])))
def test_merge_trees_are_valid_or_refused(Z):
    """Random trees (scipy's own check lets some through that crash its cuts) are cut or refused."""
    try:
        model = batchal.AverageLinkage.from_linkage(Z, mean_cluster_size=2)
    except BatchalInputError:
        assert not _plain_valid_tree(Z)
        return
    assert _plain_valid_tree(Z)
    assert model.labels_.shape == (Z.shape[0] + 1,)


def _plain_valid_tree(Z) -> bool:
    n = Z.shape[0] + 1
    size = {i: 1.0 for i in range(n)}
    for i, (a, b, h, c) in enumerate(Z.tolist()):
        if any(np.isnan([a, b, h, c])) or h < 0 or not (np.isfinite(a) and np.isfinite(b)):
            return False
        if a != int(a) or b != int(b) or int(a) not in size or int(b) not in size or a == b:
            return False
        if c != size.pop(int(a)) + size.pop(int(b)):
            return False
        size[n + i] = c
    return True


@SETTINGS
@given(any_array(), st.one_of(any_array(), hnp.arrays(np.int64, st.integers(0, 12), elements=st.integers(0, 3))))
def test_npz_datasets_load_or_are_refused(tmp_path_factory, X, y):
    from batchal.simulate import load_npz

    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, X=X, y=y)
    try:
        ds = load_npz(path)
    except BatchalInputError:
        return
    assert X.ndim == 2 and X.dtype.kind in "biuf" and np.isfinite(X.astype(np.float32)).all()
    assert ds.X.shape[0] + ds.X_test.shape[0] == X.shape[0] and ds.X.shape[1] == X.shape[1]
    assert set(np.unique(ds.y_test)) <= set(np.unique(ds.y))  # every test class can be learned


def test_features_beyond_float32_are_refused_by_name(tmp_path):
    from batchal.simulate import load_npz

    X = np.random.default_rng(0).normal(size=(40, 3))
    X[7, 1] = 1e39  # finite in the file, inf once read as float32
    np.savez(tmp_path / "big.npz", X=X, y=np.arange(40) % 2)
    with pytest.raises(BatchalInputError, match=r"beyond float32's range.*row 7"):
        load_npz(tmp_path / "big.npz")
    X[7, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=X, y=np.arange(40) % 2)
    with pytest.raises(BatchalInputError, match=r"NaN or infinite values \(first at row 7\)"):
        load_npz(tmp_path / "nan.npz")


def test_string_labels_become_codes_with_their_names(tmp_path):
    from batchal.simulate import load_npz

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = np.array(["cat", "dog", "emu"])[np.arange(60) % 3]
    np.savez(tmp_path / "s.npz", X=X, y=y)
    ds = load_npz(tmp_path / "s.npz")
    assert ds.class_names == ("cat", "dog", "emu")
    assert ds.y.dtype == np.int64 and set(ds.y) == {0, 1, 2}
    assert "cat, dog, emu" in ds.describe()
    # the codes keep each row's class: recover the names through X
    full = {tuple(np.float32(r)): c for r, c in zip(X, y)}
    assert all(full[tuple(r)] == ds.class_names[c] for r, c in zip(ds.X, ds.y))
    np.savez(tmp_path / "t.npz", X=X[:40], y=y[:40], X_test=X[40:], y_test=y[40:])
    ds = load_npz(tmp_path / "t.npz")
    assert [ds.class_names[c] for c in ds.y_test] == y[40:].tolist()


@pytest.mark.parametrize("arrays, msg", [
    ({"X": np.zeros((30, 2)), "y": np.zeros(30, int)}, "single class"),
    ({"X": np.zeros((30, 2)), "y": np.r_[np.zeros(29, int), 1]}, "single example"),
    ({"X": np.zeros((5, 2)), "y": np.arange(5) % 3}, "too few|single example"),
    ({"X": np.zeros((0, 2)), "y": np.zeros(0, int)}, "empty"),
    ({"X": np.zeros((20, 2)), "y": np.arange(20) % 2, "X_test": np.zeros((4, 2)), "y_test": np.array([0, 1, 2, 3])},
     "never shows"),
    ({"X": np.zeros((20, 2)), "y": np.arange(20) % 2, "X_test": np.zeros((4, 2)), "y_test": np.array(list("abab"))},
     "both be strings or both numbers"),
])
def test_npz_datasets_refused_before_any_work(tmp_path, arrays, msg):
    from batchal.simulate import load_npz

    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(BatchalInputError, match=f"--data: .*({msg})"):
        load_npz(tmp_path / "d.npz")


def test_api_warns_about_unread_non_finite_inputs_and_refuses_negative_seeds():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(3), 30)
    E = rng.normal(size=(30, 4))
    E[4, 1] = np.inf
    with pytest.warns(UserWarning, match=r"embeddings contains infinite values \(first at row 4\); strategy 'margin'"):
        a = batchal.select("margin", 5, probs=P, embeddings=E, seed=0)
    np.testing.assert_array_equal(a, batchal.select("margin", 5, probs=P, seed=0))  # the batch is unaffected
    with pytest.raises(BatchalInputError, match="seed"):
        batchal.select("random", 5, probs=P, seed=-1)


def _numeric_params():
    """(strategy, parameter) for every constructor parameter whose default is a number (not a flag)."""
    import inspect

    from batchal.selectors.base import REGISTRY

    out = []
    for name, cls in sorted(REGISTRY.items()):
        for p, par in inspect.signature(cls.__init__).parameters.items():
            if p not in ("self", "random_state") and isinstance(par.default, (int, float)) \
                    and not isinstance(par.default, bool):
                out.append((name, p))
    return out


@pytest.mark.parametrize("strategy, param", _numeric_params())
@pytest.mark.parametrize("bad", ["x", None, float("nan"), True, -1])
def test_strategy_parameters_refuse_bad_values_by_name(strategy, param, bad):
    """A wrong value for a strategy's numeric parameter through the Python API is a BatchalInputError that
    names it (not a TypeError from deep inside), or a value the strategy documents as allowed."""
    rng = np.random.default_rng(0)
    n = 300
    arrays = dict(probs=rng.dirichlet(np.ones(3), n), clusters=rng.integers(0, 20, n),
                  embeddings=rng.normal(size=(n, 4)))
    order = {"tol": "margin", "dup": "margin", "copies": "margin"}.get(param)
    extra = {"order": order, "dup": 0.01} if order and param != "tol" else ({"order": order} if order else {})
    if param == "dup":
        extra.pop("dup")
    try:
        batchal.select(strategy, 10, seed=0, **arrays, **extra, **{param: bad})
    except BatchalInputError as exc:
        assert param in str(exc)
        return
    # accepted: only where the value is one the parameter documents (None turns an optional rule off)
    assert bad is None and param in ("max_candidate_share",), (strategy, param, bad)


def test_select_refuses_random_state_for_seed():
    p = np.random.default_rng(0).dirichlet(np.ones(3), 50)
    with pytest.raises(BatchalInputError, match="seed="):
        batchal.select("margin", 5, probs=p, random_state=3)


_X = np.random.default_rng(1).normal(size=(120, 6)).astype(np.float32)
_P = np.random.default_rng(1).dirichlet(np.ones(4), 120)


@pytest.mark.parametrize("call, param", [
    (lambda v: batchal.cluster(_X, threshold=v), "threshold"),
    (lambda v: batchal.cluster(_X, mean_cluster_size=v), "mean_cluster_size"),
    (lambda v: batchal.cluster(_X, knn=v), "knn"),  # read by the graph method only; checked on the exact path too
    (lambda v: batchal.cluster(_X, random_state=v), "random_state"),
    (lambda v: batchal.AverageLinkage(knn_out=v).fit(_X), "knn_out"),
    (lambda v: batchal.AverageLinkage().fit(_X).recut(threshold=v), "threshold"),
    (lambda v: batchal.similar(_X, k=5, query_rows=[0], nprobe=v), "nprobe"),  # a flat search ignores nprobe
    (lambda v: batchal.similar(_X, k=5, query_rows=[0], chunk_rows=v), "chunk_rows"),
    (lambda v: batchal.similar(_X, k=5, query_rows=[0], exact_max_rows=v), "exact_max_rows"),
    (lambda v: batchal.similar(_X, k=5, query_rows=[0], seed=v), "seed"),
    (lambda v: batchal.uncertainty("margin", _P, chunk_rows=v), "chunk_rows"),
    (lambda v: batchal.uncertainty("margin", _P, row_offset=v), "row_offset"),
    (lambda v: batchal.uncertainty("margin", _P, aggregate=v), "aggregate"),
])
@pytest.mark.parametrize("bad", ["x", float("nan"), True, -1])
def test_public_functions_refuse_bad_scalars_by_name(call, param, bad):
    """Each public function's scalar parameters: a wrong type or range is a BatchalInputError naming the parameter,
    before any work, whether or not the path taken reads it (no TypeError from deep inside, no silent acceptance)."""
    if param == "aggregate" and bad is True:
        bad = "max"
    with pytest.raises(BatchalInputError, match=param):
        call(bad)
