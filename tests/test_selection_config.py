"""One selection config (issue 26): a TOML file of strategy, balance, thresholds, filters and a query set."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import batchal
from batchal import BatchalInputError, Pool
from batchal.cli import app
from batchal.selection_config import apply_config, load_config
from conftest import make_pool


def _write(tmp_path, text, name="selection.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _meta(tmp_path, n):
    r = np.random.default_rng(3)
    pq.write_table(pa.table({"source": np.array(["web", "camera", "scan"])[r.integers(0, 3, n)],
                             "width": r.integers(10, 1000, n)}), tmp_path / "meta.parquet")
    return pq.read_table(tmp_path / "meta.parquet").to_pydict()


def test_every_rule_narrows_the_candidates(tmp_path):
    arrays = make_pool(n=1000, n_clusters=100)
    meta = _meta(tmp_path, 1000)
    np.save(tmp_path / "Q.npy", arrays["embeddings"][:3])
    cfg = load_config(_write(tmp_path, '''
strategy = "cluster-margin:order=margin:tol=0.1"
balance = "uniform"
max_margin = 0.5
metadata = "meta.parquet"
[filters]
source = ["web", "camera"]
width = { min = 100 }
[similar]
query = "Q.npy"
k = 600
'''))
    cfg200 = load_config(_write(tmp_path, 'strategy = "margin"\n[similar]\nquery = "Q.npy"\nk = 200\n', "s2.toml"))
    pool2 = Pool(**{k: v for k, v in arrays.items() if k != "embeddings"})
    _, ex2 = apply_config(cfg200, pool2, arrays["embeddings"])
    near = batchal.similar(arrays["embeddings"], arrays["embeddings"][:3], 200, labeled=arrays["labeled"])
    np.testing.assert_array_equal(np.flatnonzero(~ex2), np.sort(near))
    pool = Pool(**{k: v for k, v in arrays.items() if k != "embeddings"})
    spec, excluded = apply_config(cfg, pool, arrays["embeddings"])
    assert spec.text == "cluster-margin:order=margin:tol=0.1:balance=uniform"
    m = batchal.margin(arrays["probs"])
    src, width = np.array(meta["source"]), np.array(meta["width"])
    expect = np.isin(np.arange(1000), arrays["labeled"]) | (m > 0.5) | (src == "scan") | (width < 100)
    # k = 600 is more than the rows that pass: the query set then keeps all of them
    near = batchal.similar(arrays["embeddings"], arrays["embeddings"][:3], min(600, int((~expect).sum())),
                           labeled=expect)
    expect |= ~np.isin(np.arange(1000), near)
    np.testing.assert_array_equal(excluded, expect)
    pool.labeled_mask = excluded
    b = spec.make(random_state=0).select(pool, 20)
    assert not excluded[b].any()


def test_cli_select_with_config_equals_the_api(tmp_path):
    arrays = make_pool(n=800)
    for k in ("probs", "clusters", "labeled"):
        np.save(tmp_path / f"{k}.npy", arrays[k])
    (tmp_path / "shares.json").write_text('{"0": 0.5, "1": 0.5}')
    cfg = _write(tmp_path, 'strategy = "margin"\nbalance = "shares.json"\nmax_confidence = 0.8\n')
    r = CliRunner().invoke(app, ["select", "--config", str(cfg), "-k", 30, "--probs", str(tmp_path / "probs.npy"),
                                 "--clusters", str(tmp_path / "clusters.npy"), "--labeled",
                                 str(tmp_path / "labeled.npy"), "--out", str(tmp_path / "b.npy")])
    assert r.exit_code == 0, r.output
    b = np.load(tmp_path / "b.npy")
    P = arrays["probs"]
    too_sure = np.flatnonzero(P.max(1) > 0.8)
    ref = batchal.select("margin", 30, seed=0, balance={"0": 0.5, "1": 0.5}, probs=P,
                         labeled=np.union1d(arrays["labeled"], too_sure))
    np.testing.assert_array_equal(b, ref)
    assert np.bincount(P[b].argmax(1), minlength=5)[:2].tolist() == [15, 15]


@pytest.mark.parametrize("text, match", [
    ('strategy = "margin"\nbatch = 3\n', "batch: unknown key"),
    ('strategy = 3\n', "strategy: must be a string"),
    ('strategy = "nope"\n', "strategy: unknown strategy 'nope'"),
    ('strategy = "margin"\nbalance = {"0" = 0.5, "1" = 0.4}\n', "balance: .*sum to 1"),
    ('strategy = "margin"\nbalance = "sideways"\n', "balance: balance must be"),
    ('strategy = "margin:balance=uniform"\nbalance = "input"\n', "balance: also given"),
    ('strategy = "margin"\nmax_margin = 2\n', "max_margin: must be a number in"),
    ('strategy = "margin"\nmax_margin = "low"\n', "max_margin: must be a number"),
    ('strategy = "margin"\n[filters]\nsource = "web"\n', "filters: needs metadata"),
    ('strategy = "margin"\n[similar]\nk = 5\n', "similar: give one of query"),
    ('strategy = "margin"\n[similar]\nquery = "Q.npy"\nk = 5\nradius = 2\n', "similar.radius: unknown key"),
    ('strategy = "margin"\nbalance = "uniform\n', "not valid TOML"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path, text, match):
    p = _write(tmp_path, text)
    with pytest.raises(BatchalInputError, match=match) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_apply_errors_name_the_key(tmp_path):
    arrays = make_pool(n=300)
    _meta(tmp_path, 300)
    pool = Pool(**arrays)
    cfg = load_config(_write(tmp_path, 'strategy = "margin"\nmetadata = "meta.parquet"\n[filters]\nlang = "en"\n'))
    with pytest.raises(BatchalInputError, match="filters.lang: the metadata .* has no column 'lang'"):
        apply_config(cfg, pool)
    cfg = load_config(_write(tmp_path, 'strategy = "random"\nbalance = "uniform"\n'))
    with pytest.raises(BatchalInputError, match="balance: random takes no balance"):
        apply_config(cfg, pool)
    cfg = load_config(_write(tmp_path, 'strategy = "margin"\n[similar]\nquery = "nope.npy"\nk = 5\n'))
    with pytest.raises(BatchalInputError, match="similar: .*nope.npy"):
        apply_config(cfg, pool, arrays["embeddings"])
    cfg = load_config(_write(tmp_path, 'strategy = "margin"\n'))
    with pytest.raises(BatchalInputError, match="strategy: also given with --strategy"):
        apply_config(cfg, pool, strategy="entropy")
