#!/usr/bin/env python
"""Time and peak memory of every batchal selector, side by side with scikit-activeml.

Usage (the command recorded in benchmarks/RESULTS_select.md)::

    python benchmarks/bench_select.py \
        --skactiveml-python /tmp/skactiveml-venv/bin/python \
        --report benchmarks/RESULTS_select.md.new

What it does
------------
* Writes synthetic inputs once per pool size to ``--cache-dir`` (default
  ``/tmp/batchal-bench-cache``) as ``.npy``: ``probs`` (n, C=10) float32 rows
  drawn from a Dirichlet whose concentration favours the class of the row's
  mixture component, ``embeddings`` (n, d=128) float32 from a 100-component
  Gaussian mixture, ``clusters`` (n,) int64 with ids drawn uniformly from n/10
  ids (mean cluster size ~10), ``labeled`` (n/100,) int64 row indices (1%).
* Every case (strategy x size) runs in a fresh subprocess that opens the inputs
  memory-mapped (``np.load(mmap_mode="r")``, as the CLI does), imports batchal and
  **warms up on a tiny memory-mapped input** with the same strategy so the numba
  kernels are compiled/loaded from cache before any timing; the JIT compile is
  therefore excluded.
* Timed: one ``batchal.select(...)`` call (Pool construction + input validation +
  scoring + selection), repeated ``--repeats`` times in that subprocess; the table
  gives the median (and min..max). The inputs are re-opened for each repeat.
* Memory: before each repeat the kernel's peak-RSS counter is reset
  (``echo 5 > /proc/self/clear_refs``); peak = VmHWM after the call minus VmRSS
  before it, i.e. everything the call added: anonymous memory **and** the pages of
  the memory-mapped inputs it touched (those are reported separately as the growth
  of RssFile). The ratio column divides the peak by the bytes of the input arrays
  the strategy reads (given below per strategy).
* scikit-activeml's CoreSet and Badge run at the first size (20K, 2K) in a separate
  interpreter (``--skactiveml-python``, a venv that has scikit-activeml; it is not a
  batchal dependency) on the same cached inputs. Badge gets a fake classifier whose
  ``predict_proba(X, return_embeddings=True)`` returns the precomputed
  probabilities and embeddings (X is a column of row indices), with
  ``fit_clf=False``, so only its query is timed.
* Cases that would not finish within ``--timeout`` at the largest size (projected
  from the previous size with cost proportional to n*k) are run on a truncated
  batch (two small k) and the full-k time is extrapolated linearly in k.
* ``batchal select`` is timed end to end (process start to exit, wall clock, and
  its max RSS from ``wait4``) for cluster-margin at the largest size.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

D = 128
C = 10
N_COMPONENTS = 100
SEED = 0

# What each strategy reads (beyond `labeled`), for the memory ratio.
NEEDS = {
    "random": ("probs",),  # only to give the pool its size; random reads no values
    "margin": ("probs",),
    "entropy": ("probs",),
    "least-confidence": ("probs",),
    "coreset": ("embeddings",),
    "badge": ("probs", "embeddings"),
    "cluster-margin": ("probs", "clusters"),
}


# --------------------------------------------------------------------------- data
def dataset_dir(cache: Path, n: int) -> Path:
    return cache / f"n{n}_d{D}_C{C}_seed{SEED}"


def make_dataset(cache: Path, n: int, chunk: int = 100_000) -> Path:
    """Write the synthetic inputs for a pool of ``n`` rows once (atomic: a complete dir or none)."""
    out = dataset_dir(cache, n)
    if (out / "DONE").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    centers = rng.normal(scale=3.0, size=(N_COMPONENTS, D)).astype(np.float32)
    P = np.lib.format.open_memmap(tmp / "probs.npy", mode="w+", dtype=np.float32, shape=(n, C))
    E = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, D))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        comp = rng.integers(0, N_COMPONENTS, b - a)
        E[a:b] = centers[comp] + rng.normal(size=(b - a, D)).astype(np.float32)
        alpha = np.full((b - a, C), 0.3)
        alpha[np.arange(b - a), comp % C] += 2.0
        g = rng.gamma(alpha)
        g /= g.sum(axis=1, keepdims=True)
        p = g.astype(np.float32)
        p /= p.sum(axis=1, keepdims=True)
        P[a:b] = p
    P.flush()
    E.flush()
    del P, E
    np.save(tmp / "clusters.npy", rng.integers(0, max(1, n // 10), n).astype(np.int64))
    np.save(tmp / "labeled.npy", np.sort(rng.choice(n, max(1, n // 100), replace=False)).astype(np.int64))
    (tmp / "DONE").write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def input_bytes(ddir: Path, names) -> int:
    return sum((ddir / f"{nm}.npy").stat().st_size for nm in (*names, "labeled"))


# --------------------------------------------------------------------------- memory
def _status(key: str) -> int:
    """A field of /proc/self/status in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _load(ddir: Path, names):
    return {nm: np.load(ddir / f"{nm}.npy", mmap_mode="r") for nm in names}


# --------------------------------------------------------------------------- workers
def worker_batchal(args) -> None:
    import batchal

    ddir, n, k = Path(args.data), args.n, args.k
    strategy, params = args.strategy, json.loads(args.params)
    names = NEEDS[strategy]
    # warm-up: same strategy, same dtypes/memmaps, tiny pool -> numba compiled or loaded from cache
    wdir = Path(args.warmup_data)
    w = _load(wdir, (*names, "labeled"))
    wn = np.load(wdir / "labeled.npy", mmap_mode="r").shape[0] * 100
    batchal.select(strategy, max(2, min(k, wn // 20)), seed=0, **w, **params)
    del w
    gc.collect()
    for rep in range(args.repeats):
        gc.collect()
        arrays = _load(ddir, (*names, "labeled"))
        ok = _reset_peak()
        rss0, file0 = _status("VmRSS"), _status("RssFile")
        t0 = time.perf_counter()
        idx = batchal.select(strategy, k, seed=0, **arrays, **params)
        t1 = time.perf_counter()
        peak, file1 = _status("VmHWM"), _status("RssFile")
        assert idx.shape == (k,)
        if rep == 0 and args.save_idx:
            np.save(args.save_idx, idx)
        print(json.dumps(dict(rep=rep, seconds=t1 - t0, peak_delta=peak - rss0 if ok else None,
                              file_delta=file1 - file0, peak_reset=ok, load=os.getloadavg()[0])), flush=True)
        del arrays, idx
        gc.collect()


def worker_skactiveml(args) -> None:
    from skactiveml.base import SkactivemlClassifier
    from skactiveml.pool import Badge, CoreSet
    import skactiveml

    ddir, k = Path(args.data), args.k
    P = np.load(ddir / "probs.npy", mmap_mode="r")
    E = np.load(ddir / "embeddings.npy", mmap_mode="r")
    lab = np.load(ddir / "labeled.npy")
    n = E.shape[0]

    class PrecomputedClassifier(SkactivemlClassifier):
        """Returns stored probabilities/embeddings for X = a column of row indices."""

        def __init__(self, P=None, E=None, classes=None, missing_label=np.nan):
            super().__init__(classes=classes, missing_label=missing_label)
            self.P = P
            self.E = E

        def fit(self, X, y, sample_weight=None):
            self.classes_ = np.asarray(self.classes)
            return self

        def predict_proba(self, X, return_embeddings=False):
            idx = np.asarray(X[:, 0]).astype(np.int64)
            p = np.asarray(self.P[idx])
            return (p, np.asarray(self.E[idx])) if return_embeddings else p

    y = np.full(n, np.nan)
    y[lab] = np.asarray(P[lab]).argmax(axis=1)  # any class label marks the row as labeled
    clf = PrecomputedClassifier(P, E, classes=np.arange(P.shape[1])).fit(None, None)
    Xidx = np.arange(n, dtype=np.float64)[:, None]

    def run():
        if args.strategy == "skactiveml-coreset":
            return CoreSet(random_state=0).query(np.asarray(E), y, batch_size=k)
        return Badge(clf_embedding_flag_name="return_embeddings", random_state=0).query(
            Xidx, y, clf, fit_clf=False, batch_size=k)

    for rep in range(args.repeats):
        gc.collect()
        ok = _reset_peak()
        rss0, file0 = _status("VmRSS"), _status("RssFile")
        t0 = time.perf_counter()
        idx = np.asarray(run(), dtype=np.int64)
        t1 = time.perf_counter()
        peak, file1 = _status("VmHWM"), _status("RssFile")
        if rep == 0 and args.save_idx:
            np.save(args.save_idx, idx)
        print(json.dumps(dict(rep=rep, seconds=t1 - t0, peak_delta=peak - rss0 if ok else None,
                              file_delta=file1 - file0, peak_reset=ok, load=os.getloadavg()[0],
                              version=skactiveml.__version__)), flush=True)
        del idx
        gc.collect()


# --------------------------------------------------------------------------- driver
def run_case(python: str, argv: list[str], timeout: float) -> tuple[list[dict], str]:
    """Run one worker subprocess; return its per-repeat records and a status."""
    cmd = [python, os.path.abspath(__file__), *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, errtxt = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {errtxt.strip().splitlines()[-1] if errtxt.strip() else ''}"
    except subprocess.TimeoutExpired:
        proc.kill()
        out, errtxt = proc.communicate()
        status = f"timeout>{timeout:.0f}s"
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return recs, status


def summarize(recs):
    secs = [r["seconds"] for r in recs]
    peaks = [r["peak_delta"] for r in recs if r["peak_delta"] is not None]
    files = [r["file_delta"] for r in recs]
    return dict(
        median=statistics.median(secs) if secs else None,
        min=min(secs) if secs else None,
        max=max(secs) if secs else None,
        reps=len(secs),
        peak=max(peaks) if peaks else None,
        file=max(files) if files else None,
        load=max(r["load"] for r in recs) if recs else os.getloadavg()[0],
    )


def fmt_s(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def mb(x):
    return "-" if x is None else f"{x / 2**20:.0f}"


def machine_info() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.rstrip()
    import numba
    import sklearn
    import faiss

    return (
        f"- nproc: {os.cpu_count()} ({os.sched_getaffinity(0).__len__()} usable); CPU model: {cpu}\n"
        f"- Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
        f"scikit-learn {sklearn.__version__}, faiss {faiss.__version__}\n"
        f"- kernel {platform.release()}; load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
        f"- `free -g`:\n\n```\n{free}\n```\n"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000:2000,100000:10000,1000000:100000",
                    help="comma-separated n:k pairs")
    ap.add_argument("--strategies", default=None, help="comma-separated (default: all registered)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per case (all repeats)")
    ap.add_argument("--cache-dir", default="/tmp/batchal-bench-cache")
    ap.add_argument("--skactiveml-python", default=None,
                    help="interpreter of a venv with scikit-activeml (omit to skip the comparison)")
    ap.add_argument("--skactiveml-repeats", type=int, default=3)
    ap.add_argument("--badge-partitions", type=int, default=100,
                    help="also run badge with the paper's partitioning at the largest size (0 = skip)")
    ap.add_argument("--no-cli", action="store_true", help="skip the end-to-end `batchal select` timing")
    ap.add_argument("--report", default=None, help="also write the markdown report to this file")
    ap.add_argument("--json", default=None, help="write raw results as JSON")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["batchal", "skactiveml"], help=argparse.SUPPRESS)
    ap.add_argument("--strategy", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--warmup-data", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--save-idx", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker == "batchal":
        return worker_batchal(args)
    if args.worker == "skactiveml":
        return worker_skactiveml(args)

    import batchal

    strategies = args.strategies.split(",") if args.strategies else batchal.available_strategies()
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    warm = make_dataset(cache, 2000)
    idx_dir = cache / "selections"
    idx_dir.mkdir(exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"# bench_select started {started}", flush=True)
    info = machine_info()
    print(info, flush=True)

    rows = []  # dicts for the table
    prev = {}  # strategy -> (n, k, median) of the previous size, for the projection

    def log_row(r):
        rows.append(r)
        print(f"  {r['n']:>8,} {r['k']:>7,}  {r['impl']:<11} {r['strategy']:<26} median {fmt_s(r.get('median')):>8} s "
              f"[{fmt_s(r.get('min'))}..{fmt_s(r.get('max'))}] x{r.get('reps', 0)}  peak +{mb(r.get('peak'))} MB "
              f"(mmapped {mb(r.get('file'))}) / inputs {mb(r['input'])} MB  load {r.get('load', 0):.2f}  {r['status']}",
              flush=True)

    for si, (n, k) in enumerate(sizes):
        t_gen = time.perf_counter()
        ddir = make_dataset(cache, n)
        print(f"\n## n={n:,} k={k:,}  (inputs ready in {time.perf_counter() - t_gen:.1f} s: {ddir})", flush=True)
        cases = [(s, {}) for s in strategies]
        if si == len(sizes) - 1 and args.badge_partitions and "badge" in strategies and si > 0:
            cases.append(("badge", {"partitions": args.badge_partitions}))
        for strategy, params in cases:
            label = strategy + (f" (partitions={params['partitions']})" if params else "")
            base = dict(n=n, k=k, impl="batchal", strategy=label, input=input_bytes(ddir, NEEDS[strategy]))
            common = ["--worker", "batchal", "--strategy", strategy, "--data", str(ddir),
                      "--warmup-data", str(warm), "--n", str(n), "--params", json.dumps(params)]
            # projection from the previous size: cost ~ n * k for the greedy baselines
            projected = None
            if strategy in ("coreset", "badge") and (label in prev):
                pn, pk, pmed = prev[label]
                projected = pmed * (n / pn) * (k / pk)
            if projected is not None and projected > args.timeout:
                # truncated runs at two small k, linear extrapolation in k
                k1 = max(10, int(k * min(0.02, 60.0 / projected)))
                k2 = 2 * k1
                r1, st1 = run_case(sys.executable, [*common, "--k", str(k1), "--repeats", "1"], args.timeout)
                r2, st2 = run_case(sys.executable, [*common, "--k", str(k2), "--repeats", "1"], args.timeout)
                if r1 and r2:
                    t1, t2 = r1[0]["seconds"], r2[0]["seconds"]
                    per_pick = max(0.0, (t2 - t1) / (k2 - k1))
                    est = t1 + per_pick * (k - k1)
                    s2 = summarize(r2)
                    log_row(dict(base, median=None, reps=0, peak=s2["peak"], file=s2["file"], load=s2["load"],
                                 projected=est,
                                 status=(f"not run in full: projected {est:.0f} s > {args.timeout:.0f} s "
                                         f"(k={k1:,}: {t1:.1f} s, k={k2:,}: {t2:.1f} s, "
                                         f"{per_pick * 1e3:.1f} ms/pick); peak shown is at k={k2:,}")))
                else:
                    log_row(dict(base, status=f"truncated runs failed: {st1}; {st2}"))
                continue
            save = str(idx_dir / f"batchal_{strategy}_{n}_{k}.npy") if not params else None
            argv_case = [*common, "--k", str(k), "--repeats", str(args.repeats)]
            if save:
                argv_case += ["--save-idx", save]
            recs, status = run_case(sys.executable, argv_case, args.timeout)
            s = summarize(recs)
            log_row(dict(base, **s, status=status))
            if s["median"] is not None:
                prev[label] = (n, k, s["median"])
            elif status.startswith("timeout"):
                prev[label] = (n, k, args.timeout)

        if si == 0 and args.skactiveml_python:
            for strategy, ours in (("skactiveml-coreset", "coreset"), ("skactiveml-badge", "badge")):
                save = str(idx_dir / f"{strategy}_{n}_{k}.npy")
                recs, status = run_case(
                    args.skactiveml_python,
                    ["--worker", "skactiveml", "--strategy", strategy, "--data", str(ddir), "--n", str(n),
                     "--k", str(k), "--repeats", str(args.skactiveml_repeats), "--save-idx", save],
                    args.timeout * 3,
                )
                s = summarize(recs)
                r = dict(n=n, k=k, impl="skactiveml " + (recs[0].get("version", "") if recs else ""),
                         strategy=ours, input=input_bytes(ddir, NEEDS[ours]), **s, status=status)
                mine = idx_dir / f"batchal_{ours}_{n}_{k}.npy"
                if Path(save).exists() and mine.exists():
                    a, b = np.load(mine), np.load(save)
                    if ours == "coreset":
                        r["status"] += f"; same batch as batchal: {len(np.intersect1d(a, b)) / k:.1%} overlap"
                    else:
                        r["status"] += f"; first pick {'equal' if a[0] == b[0] else 'differs'} (later picks are random draws)"
                log_row(r)

    cli_rows = []
    if not args.no_cli and "cluster-margin" in strategies and shutil.which("batchal"):
        n, k = sizes[-1]
        ddir = dataset_dir(cache, n)
        out = idx_dir / f"cli_cluster-margin_{n}_{k}.npy"
        cmd = ["batchal", "select", "--strategy", "cluster-margin", "--batch-size", str(k),
               "--probs", str(ddir / "probs.npy"), "--clusters", str(ddir / "clusters.npy"),
               "--labeled", str(ddir / "labeled.npy"), "--seed", "0", "--out", str(out)]
        print(f"\n## CLI end to end: {' '.join(cmd)}", flush=True)
        # Linux carries ru_maxrss from this (large) process into a child across fork and
        # exec, so the child's own peak is read by GNU time, whose child starts afresh.
        gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            full = ([gnu_time, "-f", "@@maxrss_kb %M"] if gnu_time else []) + cmd
            proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            errtxt = proc.stderr.read()
            maxrss = ru.ru_maxrss * 1024  # an upper bound without GNU time
            kept = []
            for line in errtxt.splitlines():
                if line.startswith("@@maxrss_kb "):
                    maxrss = int(line.split()[1]) * 1024
                else:
                    kept.append(line)
            errtxt = "\n".join(kept)
            proc.returncode = os.waitstatus_to_exitcode(status)
            row = dict(rep=rep, wall=wall, maxrss=maxrss, rc=proc.returncode,
                       msg=" ".join(errtxt.split()), load=os.getloadavg()[0])
            cli_rows.append(row)
            print(f"  rep {rep}: wall {wall:.2f} s, max RSS {mb(row['maxrss'])} MB, exit {row['rc']}: {row['msg']}",
                  flush=True)
        lib = idx_dir / f"batchal_cluster-margin_{n}_{k}.npy"
        if out.exists() and lib.exists():
            same = np.array_equal(np.load(out), np.load(lib))
            print(f"  CLI output identical to the library's (same seed): {same}", flush=True)
            cli_rows.append(dict(identical=bool(same)))

    finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report = render(rows, cli_rows, info, started, finished, argv if argv is not None else sys.argv[1:], args)
    print("\n" + report)
    if args.report:
        Path(args.report).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows=rows, cli=cli_rows, started=started, finished=finished),
                                              indent=1, default=str))


def render(rows, cli_rows, info, started, finished, argv, args) -> str:
    lines = [f"Run {started} .. {finished}", "", "Machine:", "", info, "",
             "Command: `python benchmarks/bench_select.py " + " ".join(argv) + "`", "",
             "| n | k | impl | strategy | median s | min..max s | repeats | peak MB | of which mmapped input pages MB "
             "| input MB | peak / input | load avg | notes |",
             "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = f"{r['peak'] / r['input']:.2f}x" if r.get("peak") is not None and r["input"] else "-"
        med = fmt_s(r.get("median")) if r.get("median") is not None else (
            f"~{r['projected']:.0f} (projected)" if r.get("projected") else "-")
        lines.append(
            f"| {r['n']:,} | {r['k']:,} | {r['impl']} | {r['strategy']} | {med} | "
            f"{fmt_s(r.get('min'))}..{fmt_s(r.get('max'))} | {r.get('reps', 0)} | {mb(r.get('peak'))} | "
            f"{mb(r.get('file'))} | {mb(r['input'])} | {ratio} | {r.get('load', 0):.2f} | {r['status']} |")
    by = {(r["n"], r["k"], r["impl"].split()[0], r["strategy"]): r for r in rows}
    lines.append("")
    for strat in ("coreset", "badge"):
        for (n, k, impl, s), r in by.items():
            if impl == "skactiveml" and s == strat and (n, k, "batchal", strat) in by:
                ours = by[(n, k, "batchal", strat)]
                if r.get("median") and ours.get("median"):
                    lines.append(f"- {strat} at ({n:,}, {k:,}): scikit-activeml / batchal median time = "
                                 f"{r['median']:.1f} / {ours['median']:.3f} = **{r['median'] / ours['median']:.0f}x**")
    if cli_rows:
        walls = [c["wall"] for c in cli_rows if "wall" in c]
        if walls:
            lines.append(f"- `batchal select --strategy cluster-margin` at ({args.sizes.split(',')[-1]}) end to end "
                         f"(process start to exit, imports and file write included): median "
                         f"{statistics.median(walls):.2f} s over {len(walls)} runs, max RSS of the whole process "
                         f"{max(mb(c['maxrss']) for c in cli_rows if 'maxrss' in c)} MB; its own report: "
                         f"{cli_rows[0]['msg']}")
        for c in cli_rows:
            if "identical" in c:
                lines.append(f"- CLI output identical to the library call with the same seed: {c['identical']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
