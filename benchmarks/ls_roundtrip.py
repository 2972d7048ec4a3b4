#!/usr/bin/env python
"""Round trip of a campaign batch through a real Label Studio server.

Usage (the run recorded in BENCHMARKS.md, *Campaigns*)::

    python3 -m venv /opt/ls-venv && /opt/ls-venv/bin/pip install label-studio   # once, ~2-6 min
    python benchmarks/ls_roundtrip.py --venv /opt/ls-venv

Label Studio is not a batchal dependency: it lives in its own virtual
environment and is driven over its HTTP API (stdlib ``urllib``), as a labeling
team would run it. Steps, each timed:

1. a campaign of ``--n`` items (Parquet pool with an ``image`` URL column),
   clustered; ``batchal campaign select ... --out tasks.json --data-column image``
   writes round 1 as Label Studio tasks with pre-annotations;
2. Label Studio starts on localhost with its own data directory and a first
   user and API token from the environment;
3. a project is created (an ``Image`` and a ``Choices`` named ``label``), the
   task file is imported through ``POST /api/projects/ID/import``;
4. annotations are created through ``POST /api/tasks/ID/annotations``: most
   tasks get the true class, some get three annotations (two agree: majority),
   some only a cancelled annotation (``was_cancelled``), some none;
5. the project is exported (``GET /api/projects/ID/export?exportType=JSON``)
   and imported with ``batchal campaign label DIR export.json``; then checked:
   every annotated item carries its true label, cancelled and unannotated ones
   stay pending, the pre-annotations reached Label Studio, importing the export
   again is a no-op, ``--close`` returns the rest to the pool, ``campaign check``
   passes, and an export from another campaign is refused.

Exit code 0 when every check holds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CLASSES = ["cat", "dog", "fox", "owl"]
TOKEN = "b47c4a1d0e5f4a0c9d2b7e6f5a4c3b2a1d0e9f8c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LS:
    """A few Label Studio API calls over urllib."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def call(self, method: str, path: str, body=None, timeout: float = 120):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Token {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{r.stdout}\n{r.stderr}")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", type=Path, default=Path(os.environ.get("BATCHAL_LS_VENV", "/opt/ls-venv")))
    ap.add_argument("--n", type=int, default=2000, help="pool size")
    ap.add_argument("--k", type=int, default=300, help="batch size (tasks sent to Label Studio)")
    ap.add_argument("--url", help="use a running server (with --token) instead of starting one")
    ap.add_argument("--token", default=TOKEN)
    ap.add_argument("--start-timeout", type=float, default=600)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    times = {}
    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="batchal-ls-"))
    cli = [sys.executable, "-c", "from batchal.cli import app; app()", "campaign"]
    proc = None
    try:
        # 1. campaign and round 1 as Label Studio tasks
        t = time.perf_counter()
        r = np.random.default_rng(0)
        centers = r.normal(size=(50, 16))
        comp = r.integers(0, 50, args.n)
        E = (centers[comp] + 0.1 * r.normal(size=(args.n, 16))).astype(np.float32)
        ids = [f"img-{i:05d}" for i in range(args.n)]
        truth = {i: CLASSES[c % len(CLASSES)] for i, c in zip(ids, comp)}
        fsl = lambda m: pa.FixedSizeListArray.from_arrays(pa.array(m.ravel()), m.shape[1])  # noqa: E731
        pq.write_table(pa.table({"id": ids, "embedding": fsl(E),
                                 "image": [f"https://example.org/images/{i}.jpg" for i in ids]}), work / "pool.parquet")
        P = r.dirichlet(np.ones(len(CLASSES)), size=args.n).astype(np.float32)
        pq.write_table(pa.table({"id": ids, "probs": fsl(P)}), work / "pred.parquet")
        d = work / "campaign"
        run(cli + ["init", str(d), "--pool", str(work / "pool.parquet"), "--classes", ",".join(CLASSES)])
        run(cli + ["cluster", str(d), "-q"])
        run(cli + ["select", str(d), "--predictions", str(work / "pred.parquet"), "-k", str(args.k), "--seed", "1",
                   "--out", str(work / "tasks.json"), "--data-column", "image"])
        tasks = json.loads((work / "tasks.json").read_text())
        assert len(tasks) == args.k
        times["campaign init, cluster, select -> tasks.json"] = time.perf_counter() - t

        # 2. Label Studio
        if args.url:
            ls = LS(args.url, args.token)
        else:
            exe = args.venv / "bin" / "label-studio"
            if not exe.exists():
                raise SystemExit(f"no Label Studio at {exe}: python3 -m venv {args.venv} && "
                                 f"{args.venv}/bin/pip install label-studio")
            port = free_port()
            env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(work / "ls-data"),
                       LABEL_STUDIO_USERNAME="bench@example.org", LABEL_STUDIO_PASSWORD="bench-pass-123",
                       LABEL_STUDIO_USER_TOKEN=args.token, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true")
            t = time.perf_counter()
            proc = subprocess.Popen([str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
                                    env=env, stdout=open(work / "ls.log", "w"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            ls = LS(f"http://127.0.0.1:{port}", args.token)
            while True:
                try:
                    with urllib.request.urlopen(ls.url + "/health", timeout=5) as h:
                        if h.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                if proc.poll() is not None or time.perf_counter() - t > args.start_timeout:
                    raise SystemExit(f"Label Studio did not start; see {work / 'ls.log'}")
                time.sleep(1)
            times["Label Studio start (/health 200)"] = time.perf_counter() - t

        # 3. project and import
        t = time.perf_counter()
        choices = "".join(f'<Choice value="{c}"/>' for c in CLASSES)
        project = ls.call("POST", "/api/projects", {
            "title": "batchal round trip",
            "label_config": f'<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
                            f"{choices}</Choices></View>"})
        pid = project["id"]
        imp = ls.call("POST", f"/api/projects/{pid}/import", tasks)
        assert imp["task_count"] == args.k and imp["prediction_count"] == args.k, imp
        got, page = [], 1
        while True:
            res = ls.call("GET", f"/api/tasks?project={pid}&page={page}&page_size=500")
            batch = res["tasks"] if isinstance(res, dict) else res
            got += batch
            if len(got) >= args.k or not batch:
                break
            page += 1
        assert len(got) == args.k
        times["project + import of the tasks"] = time.perf_counter() - t

        # 4. annotations: true class; every 10th three votes (2 true, 1 wrong); every 15th cancelled; every 20th none
        t = time.perf_counter()
        expect, cancelled, untouched = {}, set(), set()
        res = lambda lab: [{"from_name": "label", "to_name": "image", "type": "choices",  # noqa: E731
                            "value": {"choices": [lab]}}]
        n_ann = 0
        for j, task in enumerate(got):
            i = task["data"]["id"]
            if j % 20 == 7:
                untouched.add(i)
                continue
            if j % 15 == 3:
                ls.call("POST", f"/api/tasks/{task['id']}/annotations", {"result": [], "was_cancelled": True})
                cancelled.add(i)
                n_ann += 1
                continue
            votes = [truth[i]] if j % 10 else [truth[i], CLASSES[(CLASSES.index(truth[i]) + 1) % 4], truth[i]]
            for lab in votes:
                ls.call("POST", f"/api/tasks/{task['id']}/annotations", {"result": res(lab)})
                n_ann += 1
            expect[i] = truth[i]
        times[f"{n_ann} annotations created"] = time.perf_counter() - t

        # 5. export and back into the campaign
        t = time.perf_counter()
        export = ls.call("GET", f"/api/projects/{pid}/export?exportType=JSON")
        (work / "export.json").write_text(json.dumps(export))
        times["export"] = time.perf_counter() - t
        assert all(a.get("prediction", {}).get("model_version") in (None, "round-1")
                   for x in export for a in x["annotations"])
        pre = sum(1 for x in export for a in x["annotations"] if (a.get("prediction") or {}).get("model_version") == "round-1")
        t = time.perf_counter()
        out = run(cli + ["label", str(d), str(work / "export.json")]).stderr.strip()
        times["batchal campaign label export.json"] = time.perf_counter() - t
        st = json.loads(run(cli + ["status", str(d), "--json"]).stdout)
        assert st["labeled"] == len(expect) and st["pending"] == args.k - len(expect), (st, out)
        run(cli + ["labels", str(d), "--out", str(work / "labels.csv")])
        lab = pacsv.read_csv(work / "labels.csv").to_pydict()
        assert dict(zip(lab["id"], lab["label"])) == expect, "labels differ from the annotations"
        again = run(cli + ["label", str(d), str(work / "export.json")]).stderr.strip()
        assert again.startswith("0 new labels"), again
        closed = run(cli + ["label", str(d), "--close"]).stderr.strip()
        run(cli + ["check", str(d)])
        foreign = [dict(x, data=dict(x["data"], batchal_campaign="another-campaign")) for x in export]
        (work / "foreign.json").write_text(json.dumps(foreign))
        bad = subprocess.run(cli + ["label", str(d), str(work / "foreign.json")], capture_output=True, text=True)
        assert bad.returncode == 2 and "another campaign" in bad.stderr, bad.stderr
        total = time.perf_counter() - t_all
        ls_version = ""
        if not args.url:
            v = subprocess.run([str(args.venv / "bin" / "python"), "-c",
                                "import importlib.metadata as m; print(m.version('label-studio'))"],
                               capture_output=True, text=True)
            ls_version = v.stdout.strip()
        print(f"Label Studio {ls_version or '(running server)'} round trip of {args.k} tasks: OK")
        print("| step | seconds |")
        print("|---|---|")
        for k, v in times.items():
            print(f"| {k} | {v:.1f} |")
        print(f"| **total** | **{total:.1f}** |")
        print(f"label import said: {out}")
        print(f"expected: {len(expect)} labeled ({sum(1 for j in range(args.k) if j % 10 == 0 and j % 20 != 7 and j % 15 != 3)} "
              f"by majority of 3), {len(cancelled)} cancelled only, {len(untouched)} not annotated; "
              f"{pre} annotations carried the round-1 pre-annotation")
        print(f"again: {again}; then --close: {closed}; foreign export refused: {bad.stderr.strip()[:120]}...")
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
