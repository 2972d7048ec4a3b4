"""Issue 22 in a campaign: the stop set and its signals per round, user metrics, the HTML report.

The report is opened in a real headless Chromium (Debian's package, installed
here when missing): every plot must be decoded and drawn, and loading the page
must make no network request.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchal.campaign import Campaign
from campaign_util import CLASSES, fsl, make_pool, write_label_csv

N = 3000


def _predictions(path, ids, base, noise, w):
    P = ((1 - w) * base + w * noise).astype(np.float32)
    pq.write_table(pa.table({"id": ids, "probs": fsl(P)}), path)


def four_rounds(tmp: Path, weights=(0.025, 0.012, 0.006, 0.003)) -> Path:
    """A 4-round campaign whose predictions settle: kappa >= 0.99 in rounds 2, 3 and 4 (the rule holds)."""
    ids, _ = make_pool(tmp / "pool.parquet", n=N)
    d = tmp / "c"
    c = Campaign.init(d, tmp / "pool.parquet", classes=",".join(CLASSES))
    c.cluster(mean_cluster_size=10)
    r = np.random.default_rng(0)
    base = r.dirichlet(np.full(3, 0.7), size=N)
    for rnd, w in enumerate(weights, start=1):
        _predictions(tmp / f"p{rnd}.parquet", ids, base, r.dirichlet(np.ones(3), size=N), w)
        b = c.select(150, tmp / f"p{rnd}.parquet", seed=rnd)
        write_label_csv(tmp / "l.csv", b.ids)
        c.label(tmp / "l.csv")
        c.record_metrics([(rnd, "val_acc", 0.62 + 0.08 * np.log(rnd + 1)), (rnd, "val_f1", 0.55 + 0.07 * rnd)])
    c.close()
    return d


@pytest.fixture(scope="module")
def campaign4(tmp_path_factory):
    return four_rounds(tmp_path_factory.mktemp("stop"))


def test_signals_for_every_round_and_the_advice(campaign4):
    with Campaign(campaign4) as c:
        s = c.status()
        assert c.check() == []
        n_files = c._store.conn.execute("SELECT count(*) FROM stop_rounds").fetchone()[0]
    assert n_files == 4 and s["stop_set"]["size"] == 1000 and s["stop_set"]["drawn_in_round"] == 1
    st = [r["stop"] for r in s["rounds"]]
    assert st[0]["kappa"] is None and st[0]["changed"] is None and 0 < st[0]["uncertainty"] < 1
    assert all(x["kappa"] >= 0.99 and x["changed"] <= 0.01 for x in st[1:]), st
    assert [x["prev_round"] for x in st] == [None, 1, 2, 3]
    # compared rows: stop-set members neither labeled nor pending when the round was selected
    assert st[0]["n"] == 1000 and all(a["n"] >= b["n"] for a, b in zip(st, st[1:]))
    assert s["stop_advice"].startswith("predictions stable for 3 rounds (rounds 2, 3, 4)")
    assert s["rounds"][3]["metrics"]["val_f1"] == pytest.approx(0.83)


def test_status_text_and_json_carry_the_signals(campaign4):
    from batchal.cli import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["campaign", "status", str(campaign4), "--json"])
    s = json.loads(res.stdout)
    assert set(s["rounds"][1]["stop"]) >= {"kappa", "changed", "uncertainty"} and isinstance(s["stop_advice"], str)
    res = CliRunner().invoke(app, ["campaign", "status", str(campaign4)])
    assert "stop signals on 1,000 stop-set items: kappa n/a" in res.stdout
    assert "advice: predictions stable for 3 rounds" in res.stdout and "consider stopping" in res.stdout
    assert "metrics: val_acc" in res.stdout


def test_same_seed_same_stop_set_and_rounds_without_predictions(tmp_path):
    ids, _ = make_pool(tmp_path / "pool.parquet", n=1200)
    sets = []
    for k in range(2):
        c = Campaign.init(tmp_path / f"c{k}", tmp_path / "pool.parquet")
        b = c.select(50, strategy="random", seed=3)  # no predictions: no stop set yet, no signals
        assert c.status()["rounds"][0]["stop"] is None and c.status()["stop_set"] is None
        write_label_csv(tmp_path / "l.csv", b.ids)
        c.label(tmp_path / "l.csv")
        _predictions(tmp_path / "p.parquet", ids, np.full((1200, 3), 1 / 3), np.eye(3)[np.arange(1200) % 3], 0.5)
        c.select(50, tmp_path / "p.parquet", strategy="margin", seed=4)
        s = c.status()
        assert s["stop_set"]["drawn_in_round"] == 2 and s["rounds"][1]["stop"]["kappa"] is None
        labeled_rows = set(c._index(c._store.conn).rows(pa.array(b.ids), "t").tolist())
        members = set(np.asarray(c._store.load_npy(c._meta(c._store.conn, "stop_set_file"))).tolist())
        # compared: the members neither labeled (round 1) nor pending when round 2 was selected
        assert s["rounds"][1]["stop"]["n"] == 1000 - len(members & labeled_rows)
        sets.append(np.asarray(c._store.load_npy(c._meta(c._store.conn, "stop_set_file"))))
        assert c.check() == []
        c.close()
    assert np.array_equal(*sets)


# ------------------------------------------------------------------ the HTML report in a real browser
def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired):
            pass
        exe = shutil.which("chromium")
        if exe:
            return exe
    pytest.skip("Chromium is not installed and `apt-get install chromium` could not install it (apt unreachable?)")


def _run_chromium(exe, url, *args, timeout=180):
    # a proxy on a dead port: any request for the network would fail (and be logged in the net log)
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
           "--proxy-server=http://127.0.0.1:9", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _page_requests(netlog: Path) -> list:
    """URLs of the requests a page made (any origin as initiator), from Chromium's net log."""
    d = json.loads(netlog.read_text())
    start = d["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in d["events"] if e["type"] == start
            and e.get("params", {}).get("initiator", "not an origin") != "not an origin"]


def test_report_renders_in_chromium_every_plot_drawn_no_network(campaign4, tmp_path):
    from matplotlib.image import imread

    from batchal.cli import app
    from typer.testing import CliRunner

    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["campaign", "report", str(campaign4), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    # self-contained: every src/href is inline data, no URL of any kind to fetch
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert refs and all(x.startswith("data:image/png;base64,") for x in refs), refs[:3]
    assert not re.search(r"https?://|<script|<link|@import|url\(", page)
    ids = re.findall(r'<img id="([^"]+)"', page)
    assert ids == ["plot-labels", "plot-batches", "plot-stop", "plot-metrics"]
    assert "consider stopping" in page
    exe = _chromium()
    # 1. the browser's own view: each image decoded (naturalWidth) and where it lies on the page
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>document.body.setAttribute('data-imgs', JSON.stringify("
                                  "[...document.images].map(i => { const r = i.getBoundingClientRect(); return "
                                  "[i.id, i.complete, i.naturalWidth, r.x, r.y, r.width, r.height]; })));"
                                  "</script></body>"))
    netlog = tmp_path / "net.json"
    r = _run_chromium(exe, probe.as_uri(), "--window-size=1200,1000", "--dump-dom", f"--log-net-log={netlog}",
                      "--virtual-time-budget=5000")
    m = re.search(r'data-imgs="([^"]*)"', r.stdout)
    assert m, r.stderr[-2000:]
    imgs = json.loads(m.group(1).replace("&quot;", '"'))
    assert [i[0] for i in imgs] == ids
    assert all(i[1] and i[2] >= 500 and i[5] > 300 and i[6] > 150 for i in imgs), imgs
    # 2. no network request from the page. Chromium itself fetches (updates, spelling dictionaries): those
    # requests have no initiator ("not an origin"); a page's have its origin. A control page with one remote
    # image shows that such a request is seen.
    assert _page_requests(netlog) == [], _page_requests(netlog)
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    netlog2 = tmp_path / "net2.json"
    _run_chromium(exe, control.as_uri(), "--window-size=400,300", "--dump-dom", f"--log-net-log={netlog2}",
                  "--virtual-time-budget=3000")
    assert [u for u in _page_requests(netlog2) if "example.invalid" in u], "the control request was not seen"
    # 3. the screenshot: every plot's region is drawn (not blank: many distinct, non-white pixels)
    height = int(max(i[4] + i[6] for i in imgs)) + 40
    shot = tmp_path / "shot.png"
    r = _run_chromium(exe, out.as_uri(), f"--window-size=1200,{height}", f"--screenshot={shot}")
    assert shot.exists(), r.stderr[-2000:]
    S = imread(shot)[..., :3]
    assert S.shape[:2] == (height, 1200)
    for pid, _, _, x, y, w, h in imgs:
        region = S[int(y):int(y + h), int(x):int(x + w)]
        ink = (region < 0.9).any(axis=2).mean()
        assert region.std() > 0.05 and 0.01 < ink < 0.9, (pid, region.std(), ink)
    if os.environ.get("BATCHAL_REPORT_SCREENSHOT"):  # how docs/campaign-report.png is made
        shutil.copyfile(shot, os.environ["BATCHAL_REPORT_SCREENSHOT"])
