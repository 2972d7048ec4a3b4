"""Near-duplicate groups (issue 26): connected components of the kNN graph within a threshold."""
import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from batchal import BatchalInputError
from batchal.dedup import near_duplicate_groups


def _bursts(n_items=400, d=16, seed=0):
    """Items, a third of them with a burst of 2-8 noisy copies."""
    r = np.random.default_rng(seed)
    base = r.normal(size=(n_items, d))
    rows = [base]
    for i in range(0, n_items, 3):
        m = int(r.integers(2, 9))
        rows.append(base[i] + 0.01 * r.normal(size=(m, d)))
    X = np.concatenate(rows).astype(np.float32)
    return X[r.permutation(X.shape[0])]


def _brute_groups(X, T, metric):
    D = cdist(X.astype(np.float64), X.astype(np.float64), "cosine" if metric == "cosine" else "euclidean")
    return connected_components(D <= T, directed=False)[1]


def _pairs(labels):
    out = set()
    for g in np.unique(labels):
        m = np.flatnonzero(labels == g)
        out |= {(int(a), int(b)) for i, a in enumerate(m) for b in m[i + 1:]}
    return out


@pytest.mark.parametrize("metric, T", [("cosine", 0.01), ("euclidean", 0.2)])
@pytest.mark.parametrize("method", ["flat", "ivf"])
def test_pairs_against_brute_force(metric, T, method):
    X = _bursts()
    g = near_duplicate_groups(X, T, metric=metric, method=method)
    got, ref = _pairs(g["group"]), _pairs(_brute_groups(X, T, metric))
    assert len(ref) > 500
    tp = len(got & ref)
    assert tp / len(got) >= 0.98 and tp / len(ref) >= 0.98
    if method == "flat":
        assert got == ref


def test_columns_and_representatives():
    X = _bursts(200)
    g = near_duplicate_groups(X, 0.01)
    n = X.shape[0]
    np.testing.assert_array_equal(g["row"], np.arange(n))
    # groups numbered by their first row; the representative is a member of its group
    firsts = [np.flatnonzero(g["group"] == k)[0] for k in range(g["group"].max() + 1)]
    assert firsts == sorted(firsts)
    assert (g["group"][g["representative"]] == g["group"]).all()
    reps = np.unique(g["representative"])
    assert reps.shape[0] == g["group"].max() + 1
    singles = np.bincount(g["group"])[g["group"]] == 1
    assert (g["representative"][singles] == np.flatnonzero(singles)).all()


def test_cli_dedup_and_bad_inputs(tmp_path):
    from typer.testing import CliRunner

    from batchal.cli import app

    X = _bursts(100)
    np.save(tmp_path / "E.npy", X)
    r = CliRunner().invoke(app, ["dedup", "--embeddings", str(tmp_path / "E.npy"), "--threshold", "0.01",
                                 "--out", str(tmp_path / "g.parquet"), "-q"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "g.parquet")
    assert t.column_names == ["row", "group", "representative"]
    np.testing.assert_array_equal(t.column("group").to_numpy(), near_duplicate_groups(X, 0.01)["group"])
    for kw, match in [(dict(threshold=-1), "threshold"), (dict(threshold=0.1, metric="l1"), "unknown metric")]:
        with pytest.raises(BatchalInputError, match=match):
            near_duplicate_groups(X, **kw)
    Xn = X.copy()
    Xn[3, 0] = np.nan
    with pytest.raises(BatchalInputError, match="NaN"):
        near_duplicate_groups(Xn, 0.1)


def test_default_threshold_is_cosine_001_and_euclidean_needs_one(tmp_path):
    from typer.testing import CliRunner

    from batchal.cli import app
    from batchal.dedup import DEFAULT_COSINE_THRESHOLD, default_threshold

    assert default_threshold(None, "cosine") == DEFAULT_COSINE_THRESHOLD == 0.01
    assert default_threshold(0.2, "euclidean") == 0.2
    with pytest.raises(BatchalInputError, match="give a threshold for the euclidean"):
        default_threshold(None, "euclidean")
    r = np.random.default_rng(0)
    E = r.normal(size=(400, 8)).astype(np.float32)
    E[200:] = E[:200] + 1e-3 * r.normal(size=(200, 8)).astype(np.float32)  # copies at cosine distance ~1e-7
    np.save(tmp_path / "E.npy", E)
    res = CliRunner().invoke(app, ["dedup", "--embeddings", str(tmp_path / "E.npy"), "--out", str(tmp_path / "g.parquet"),
                                   "-q"])
    assert res.exit_code == 0, res.output
    g = pq.read_table(tmp_path / "g.parquet").to_pydict()
    want = near_duplicate_groups(E, 0.01)
    assert g["group"] == want["group"].tolist() and max(g["group"]) + 1 == 200
    res = CliRunner().invoke(app, ["dedup", "--embeddings", str(tmp_path / "E.npy"), "--metric", "euclidean",
                                   "--out", str(tmp_path / "g2.parquet"), "-q"])
    assert res.exit_code == 2 and "give a threshold" in res.output and not (tmp_path / "g2.parquet").exists()
