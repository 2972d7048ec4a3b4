#!/usr/bin/env python
"""Label savings at the paper's scale: pools of 1M rows, batches of 1%, 3% and 10% of the pool.

Each configuration (pool, model, batch share) is one ``batchal simulate`` command,
printed before it runs so the exact command is on record; its wall time is
measured around the process. Every configuration replays 6 rounds from a seed set
of 1% of the pool, 3 trials, with random, margin, the paper's ``cluster-margin``,
the recommended spec and BADGE with the paper's random partitioning (each part
picks 1,000). Coreset is left out: k-center greedy is O(pool x batch) per round
and has no partitioned form here (BENCHMARKS.md, *Selection*). The summaries
and per-round results are copied to ``benchmarks/results/scale/`` (small files,
committed); the raw output folders stay under ``--work``.

Usage::

    python benchmarks/bench_scale.py run --pools mnist1d --models logreg --shares 0.01 0.03 0.1
    python benchmarks/bench_scale.py run --pools mnist1d --models mlp --shares 0.1 -- --training full
    python benchmarks/bench_scale.py table      # the scale table and the figure from results/scale/
    python benchmarks/bench_scale.py pairs      # the web-like pools under both test splits
    python benchmarks/bench_scale.py between    # specs between margin and the walk (dup=0.01)
    python benchmarks/bench_scale.py propagated # the web-like pools with labels copied to near-exact copies
    python benchmarks/bench_scale.py converged  # recorded verdicts beside their replays at --tol 1e-6 (-tol6 runs)
    python benchmarks/bench_scale.py bounds     # every spec on the web-like pools against the issue's bounds

Pools are generated locally and cached (``$BATCHAL_CACHE``), never committed.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from batchal.simulate.report import rounds_vs

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale"
FIGURES = HERE / "figures"

#: name -> (simulate options that load the pool, pool rows) ; rows set the batch and seed sizes
POOLS = {
    "mnist1d": (["--dataset", "mnist1d", "--size", "1000000"], 1_000_000),
    "mnist1d-lt": (["--dataset", "mnist1d-lt"], 292_896),
    "fmnist-web": (["--dataset", "fmnist-web"], 1_000_000),
    "fmnist-web-lt": (["--dataset", "fmnist-web-lt"], 1_000_000),
    "fmnist-web-views": (["--dataset", "fmnist-web-views"], 1_000_000),
    "fmnist-web-lt-views": (["--dataset", "fmnist-web-lt-views"], 1_000_000),
    "manyclass": (["--dataset", "manyclass"], 1_000_000),
    "multilabel-vocab": (["--dataset", "multilabel-vocab"], 200_000),
}
SHARES = (0.01, 0.03, 0.10)
SEED_SHARE = 0.01
ROUNDS = 6
TRIALS = 3


def strategies(batch: int) -> list[str]:
    """The compared specs; BADGE splits the pool so that each part picks 1,000 items."""
    from batchal.selectors import RECOMMENDED

    return ["random", "margin", "cluster-margin", RECOMMENDED, f"badge:partitions={max(1, batch // 1000)}"]


def tag(pool: str, model: str, share: float, suffix: str = "") -> str:
    return f"{model}-{pool}-b{round(share * 1000):03d}" + (f"-{suffix}" if suffix else "")


def command(pool: str, model: str, share: float, out: Path, extra: list[str], specs: list[str] | None = None) -> list[str]:
    opts, rows = POOLS[pool]
    batch = int(round(share * rows))
    seed = int(round(SEED_SHARE * rows))
    return ["batchal", "simulate", *opts, "--model", model, "--seed-size", str(seed), "--batch-size", str(batch),
            "--rounds", str(ROUNDS), "--trials", str(TRIALS), "--strategies", ",".join(specs or strategies(batch)),
            "--out", str(out), *extra]


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path) as fh:
        rd = csv.DictReader(fh)
        return list(rd.fieldnames or []), list(rd)


def merge_results(name: str, new_out: Path) -> tuple[list[str], list[str]]:
    """Add the strategies of a later run (``--specs``) to a configuration's recorded results.

    The runs share seeds, so a strategy in both must have the same curve: its
    rows are compared (accuracy per trial and round, to 1e-9) and a mismatch
    refuses the merge, which doubles as a check that the simulator is
    reproducible. The whole-pool reference score must match too, so a run that
    shares no strategy is still checked to be on the same pool, test split and
    training rule. Returns the strategies added and those checked.
    """
    old_f, new_f = RESULTS / f"{name}_results.csv", new_out / "results.csv"
    ref_old = json.loads((RESULTS / f"{name}_run.json").read_text()).get("full_pool_score")
    ref_new = json.loads((new_out / "run.json").read_text()).get("full_pool_score")
    if ref_old is not None and ref_new is not None and abs(float(ref_old) - float(ref_new)) > 1e-9:
        raise SystemExit(f"{name}: the whole-pool reference differs between the recorded run and this one "
                         f"({ref_old} vs {ref_new}): another pool, test split or training rule; not merged")
    fo, old = _read_csv(old_f)
    fn, new = _read_csv(new_f)
    key = lambda r: (r["strategy"], r["trial"], r["round"])  # noqa: E731
    have = {key(r): r for r in old}
    added, checked = [], []
    for r in new:
        k = key(r)
        if k in have:
            if abs(float(have[k]["accuracy"]) - float(r["accuracy"])) > 1e-9:
                raise SystemExit(f"{name}: {k} differs between the recorded run and this one "
                                 f"({have[k]['accuracy']} vs {r['accuracy']}): not merged")
            if r["strategy"] not in checked:
                checked.append(r["strategy"])
        else:
            old.append(r)
            if r["strategy"] not in added:
                added.append(r["strategy"])
    fields = fo + [f for f in fn if f not in fo]
    with open(old_f, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(old)
    return added, checked


def run(args) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    rc = 0
    for pool in args.pools:
        for model in args.models:
            for share in args.shares:
                name = tag(pool, model, share, args.tag)
                out = args.work / name
                specs = [x for x in args.specs.split(",") if x] if args.specs else None
                if specs:
                    from batchal.selectors import RECOMMENDED

                    specs = [RECOMMENDED if x == "recommended" else x for x in specs]
                cmd = command(pool, model, share, out, [a for a in args.extra if a != "--"], specs)
                print("$ " + " ".join(cmd), flush=True)
                t0 = time.perf_counter()
                p = subprocess.run(cmd, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - t0
                print(f"  exit {p.returncode}, {wall:,.0f} s", flush=True)
                if p.returncode != 0:
                    rc = 1
                    continue
                if specs and (RESULTS / f"{name}_results.csv").exists():
                    added, checked = merge_results(name, out)
                    meta = json.loads((RESULTS / f"{name}_run.json").read_text())
                    meta["config"]["strategies"] += [x for x in added if x not in meta["config"]["strategies"]]
                    meta.setdefault("added_runs", []).append(dict(
                        command=" ".join(cmd), strategies=added, wall_seconds=wall,
                        load_average=Path("/proc/loadavg").read_text().split()[:3]))
                    (RESULTS / f"{name}_run.json").write_text(json.dumps(meta, indent=1, default=str))
                    (RESULTS / f"{name}_summary.md").write_text(
                        (RESULTS / f"{name}_summary.md").read_text()
                        + f"\n\nAdded {', '.join(added) or 'nothing new'} ({wall:,.0f} s wall; "
                          + (f"the curves of {', '.join(checked)} matched the recorded run exactly"
                             if checked else "no strategy shared with the recorded run")
                          + f"; the whole-pool reference score matched it):\n\n    {' '.join(cmd)}\n")
                    print(f"  merged into {name}: {', '.join(added) or 'nothing new'}", flush=True)
                    continue
                shutil.copy(out / "results.csv", RESULTS / f"{name}_results.csv")
                meta = json.loads((out / "run.json").read_text())
                meta.update(command=" ".join(cmd), wall_seconds=wall,
                            load_average=Path("/proc/loadavg").read_text().split()[:3])
                (RESULTS / f"{name}_run.json").write_text(json.dumps(meta, indent=1, default=str))
                text = (out / "summary.md").read_text()
                (RESULTS / f"{name}_summary.md").write_text(text + f"\n\nCommand ({wall:,.0f} s wall):\n\n    {' '.join(cmd)}\n")
                shutil.copy(out / "curves.png", FIGURES / f"scale-{name}_curves.png")
    return rc


def _load(name: str):
    rows = []
    with open(RESULTS / f"{name}_results.csv") as fh:
        for r in csv.DictReader(fh):
            row = {}
            for k, v in r.items():
                if v == "":
                    continue
                try:
                    row[k] = int(v) if k in ("trial", "round", "n_labeled") else float(v)
                except ValueError:
                    row[k] = v
            rows.append(row)
    meta = json.loads((RESULTS / f"{name}_run.json").read_text())
    return rows, meta


def _base_target(name: str) -> float:
    """Random's final metric of the configuration a tagged run (without random) belongs to."""
    base = re.match(r"(.*-b\d{3})", name).group(1)
    rows, _ = _load(base)
    return _random_final(rows)


def _random_final(rows) -> float:
    """Random's final metric (mean over trials): the target of labels-to-reach."""
    from batchal.simulate.report import _by

    return float(np.nanmean(_by(rows, "random")[1][-1]))


def _with_recorded(name: str, suffix: str):
    """``(recorded rows, rows, meta)`` of a run named ``name`` that replays ``name`` without ``suffix``;
    None when either is missing."""
    base = name[: -len(suffix)]
    if not ((RESULTS / f"{base}_results.csv").exists() and (RESULTS / f"{name}_results.csv").exists()):
        return None
    old, _ = _load(base)
    return (old, *_load(name))


def summarise(name: str) -> dict:
    """The scale table's entries for one configuration.

    A tagged run without random (e.g. a training-rule check of margin and the
    recommended spec) is judged against its untagged configuration's random.
    """
    from batchal.simulate.report import _by, ratio_to_margin

    rows, meta = _load(name)
    strategies_ = meta["config"]["strategies"]
    curves = {s: _by(rows, s) for s in strategies_}
    target = float(np.nanmean(curves["random"][1][-1])) if "random" in curves else _base_target(name)
    ratios = ratio_to_margin(rows, strategies_, target)
    from batchal.simulate.report import savings_table

    margin_labels = savings_table(rows, strategies_, target)["margin"]["labels"]
    rounds = {s: rounds_vs(curves[s][1], curves["margin"][1]) for s in strategies_ if s != "margin"}
    diag = {}
    for s in strategies_:
        rs = [r for r in rows if r["strategy"] == s and r["round"] > 0]
        for c in ("batch_copy_share", "diag_margin_batch_near_duplicate_share", "diag_margin_batch_repeat_share"):
            v = [r[c] for r in rs if c in r]
            if v:
                diag.setdefault(s, {})[c] = float(np.mean(v))
    return {"name": name, "strategies": strategies_, "target": target, "ratios": ratios, "rounds": rounds,
            "margin_labels": margin_labels, "seed_metric": float(np.nanmean(curves["margin"][1][0])),
            "full": meta["full_pool_score"], "diag": diag, "wall": meta["wall_seconds"],
            "peak": meta.get("peak_rss"), "config": meta["config"], "metric": meta["metric"],
            "final": {s: float(np.nanmean(curves[s][1][-1])) for s in strategies_}, "recommended": _recommended(rows)}


#: the recommended spec before issue 20's revision (near-duplicates judged on the predictions)
EARLIER = "cluster-margin:order=margin:tol=0.1"
#: the recommended spec from that revision until order=auto (2026-12-06): margin order, near-duplicates on the
#: embedding deferred; the sections measured before order=auto (pairs, between, propagated, headroom) read it
WALK = "cluster-margin:order=margin:dup=0.01"


def _short(spec: str) -> str:
    from batchal.selectors import RECOMMENDED

    if spec == RECOMMENDED:
        return "recommended"
    if spec == EARLIER:
        return "earlier rec. (tol=0.1)"
    if spec == WALK:
        return "walk (dup=0.01)"
    return re.sub(r":partitions=\d+", " (part.)", spec)


def _recommended(rows) -> str | None:
    """The run's strategy that gives the recommended spec's curve: the spec itself, or the walk where it is the same run.

    ``order=auto`` takes the walk's batch while the share of margin's batch that are near-duplicates stays
    under its threshold. The walks recorded before ``dup`` took the embedding's unit (2026-12-06) used the
    plain cut, so only a walk that deferred nothing at every (trial, round) is read as the recommended spec:
    its batches were margin's, which the walk in any smaller unit also gives. None when neither is there.
    """
    from batchal.selectors import RECOMMENDED

    have = {r["strategy"] for r in rows}
    if RECOMMENDED in have:
        return RECOMMENDED
    v = [r.get("diag_margin_batch_near_duplicate_share") for r in rows if r["strategy"] == WALK and r["round"] > 0]
    return WALK if v and all(x is not None and np.isfinite(x) and x == 0 for x in v) else None


def _margin_labels(S: dict) -> str:
    """Margin's labels to reach the target, mean over the trials that reached it ("never": none did)."""
    ml = np.asarray(S["margin_labels"], dtype=float)
    return f"{np.nanmean(ml):,.0f}" if np.isfinite(ml).any() else "never"


def table(args) -> int:
    from batchal.simulate.report import fmt_ratio

    # the replays with propagation and with converged training have their own tables (propagated, converged)
    names = sorted(n for p in RESULTS.glob("*_results.csv") for n in [p.name[: -len("_results.csv")]]
                   if not re.search(r"-(prop|tol6)$", n))
    if args.only:
        names = [n for n in names if any(re.search(o, n) for o in args.only)]
    if not names:
        print("no results under", RESULTS)
        return 1
    S = [summarise(n) for n in names]
    head = ["configuration", "seed set -> whole pool", "random's final", "margin's labels"]
    others = ["cluster-margin", "recommended", "walk (dup=0.01)", "earlier rec. (tol=0.1)", "badge (part.)"]
    print("| " + " | ".join(head + [f"{o} / margin" for o in others]
                             + ["rounds vs margin (recommended)", "copies in margin's batch", "near-dup. share", "wall", "peak"]) + " |")
    print("|---|" + "---:|" * (len(head) - 1 + len(others)) + "---|---:|---:|---:|---:|")
    for s in S:
        by_short = {_short(k): k for k in s["strategies"]}
        cells = [s["name"], f"{s['seed_metric']:.3f} -> {s['full']:.3f}", f"{s['target']:.3f}", _margin_labels(s)]
        rec = s["recommended"]
        mark = " ‡" if rec == WALK else ""  # the walk's run read as the recommended spec's (_recommended)
        if rec:
            by_short["recommended"] = rec
        cells += [fmt_ratio(s["ratios"][by_short[o]]) + (mark if o == "recommended" else "") if o in by_short
                  else "—" for o in others]
        cells.append("/".join(map(str, s["rounds"][rec])) if rec else "—")
        d = s["diag"]
        cs = d.get("margin", {}).get("batch_copy_share")
        nd = next((d[x]["diag_margin_batch_near_duplicate_share"] for x in (rec, WALK)
                   if x in d and "diag_margin_batch_near_duplicate_share" in d[x]), None)
        cells.append("—" if cs is None else f"{100 * cs:.0f}%")
        cells.append("—" if nd is None else f"{100 * nd:.0f}%")
        cells.append(f"{s['wall'] / 60:.1f} min")
        peak = s["peak"]
        cells.append("—" if not peak else f"{max(peak['main'], peak['largest_worker']) / 2**30:.1f} GiB")
        print("| " + " | ".join(cells) + " |")
    figure(S)
    return 0


def figure(S: list[dict]) -> None:
    """Labels saved against batch size: one panel per pool and model, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for s in S:
        m = re.match(r"(.+)-b(\d+)(?:-(.+))?$", s["name"])
        if m is None or m.group(3) not in (None, "whiten"):
            continue  # ablations (suffixed) are not on the figure; the web-like pools' runs are all whitened
        groups.setdefault(m.group(1), []).append((int(m.group(2)) / 10, s))
    if not groups:
        return
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    colors = {"random": "tab:gray", "cluster-margin": "tab:orange", "recommended": "tab:green", "walk (dup=0.01)": "tab:cyan",
              "earlier rec. (tol=0.1)": "tab:olive", "badge (part.)": "tab:red"}
    for ax, (g, items) in zip(axes.flat, sorted(groups.items())):
        items.sort(key=lambda x: x[0])
        flat = max(s["full"] - s["seed_metric"] for _, s in items) < 0.02
        # one line per strategy: BADGE's spec text changes with the batch (its partitions), its short name does not
        # the table's specs only: the ablations of `between` would crowd the panels
        names = list(dict.fromkeys([_short(k) for _, s in items for k in s["strategies"] if _short(k) in colors]
                                    + ["recommended" for _, s in items if s["recommended"]]))
        for spec in names:
            xs, ys = [], []
            for share, s in items:
                key = s["recommended"] if spec == "recommended" else next(
                    (k for k in s["strategies"] if _short(k) == spec), None)
                if key is None:
                    continue
                r, note = s["ratios"][key]
                if np.isfinite(r):
                    xs.append(share)
                    ys.append(100 * (1 - r))
            if xs:
                # cluster-margin dashed and on top: on the web-like pools the recommended spec's batches are its
                cm = spec == "cluster-margin"
                ax.plot(xs, ys, marker="o", label=spec, color=colors.get(spec),
                        lw=2 if spec == "recommended" else 1.2, ls="--" if cm else "-", zorder=3 if cm else 2)
        # the walk with labels copied to near-exact duplicates (measured before order=auto)
        xs, ys = [], []
        for share, s in items:
            P = propagation_ratios(s["name"] + "-prop") if s["name"].endswith("-whiten") else None
            if P is not None and np.isfinite(P["ratios"]["rec+p"][0]):
                xs.append(share)
                ys.append(100 * (1 - P["ratios"]["rec+p"][0]))
        if xs:
            ax.plot(xs, ys, marker="s", ls="--", lw=1.5, color="tab:cyan", label="walk + propagation")
        ax.axhline(0, color="gray", lw=1, ls=":")
        ax.set_xscale("log")
        ax.set_xticks([1, 3, 10])
        ax.set_xticklabels(["1%", "3%", "10%"])
        ax.set_xlabel("batch size (share of the pool)")
        ax.set_ylabel("labels saved vs margin (%)")
        title = g.replace("-views", ", test as pool rows") if g.endswith("-views") else (
            g + ", clean test" if "fmnist-web" in g else g)
        ax.set_title(title + (f" (curve rises {100 * max(s['full'] - s['seed_metric'] for _, s in items):.1f} points)" if flat else ""), fontsize=10)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat[:len(groups)]:
        ax.set_xlim(0.8, 12.5)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower right", fontsize=9, ncol=2,
               bbox_to_anchor=(0.98, 0.04), title="strategy (against margin)")
    for ax in axes.flat[:len(groups)]:
        ax.text(0.02, 0.02, "no point: no trial reached the target", transform=ax.transAxes, fontsize=7, color="gray")
    fig.suptitle("Labels to reach random's final metric, saved against margin's (higher is better)", fontsize=10)
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    fig.savefig(FIGURES / "scale_labels_saved.png", dpi=110)
    print(f"\nfigure: {FIGURES / 'scale_labels_saved.png'}")


def pairs(args) -> int:
    """The web-like pools evaluated on both test splits: clean test images, and test images drawn as pool rows are.

    The two runs of a pair share seeds, pool and clustering, so their batches are the same (checked here:
    every (strategy, trial, round) has the same batch mean margin); only the test split differs.
    """
    from batchal.simulate.report import fmt_ratio

    # the recorded runs only: the -tol6 and -prop replays have their own tables
    names = sorted(n for p in RESULTS.glob("*-views-*_results.csv")
                   for n in [p.name[: -len("_results.csv")]] if re.search(r"-b\d+-whiten$", n))
    print("| pool | batch | test split | seed set -> whole pool | random's final | cluster-margin / margin | "
          "recommended / margin | walk (dup=0.01) / margin | badge (part.) / margin | rounds vs margin (recommended) | "
          "rounds vs margin (walk) | same batches |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---|---|---|")
    for views in names:
        clean = views.replace("-views", "")
        if not (RESULTS / f"{clean}_results.csv").exists():
            continue
        rv, rc = _read_csv(RESULTS / f"{views}_results.csv")[1], _read_csv(RESULTS / f"{clean}_results.csv")[1]
        key = lambda r: (r["strategy"], r["trial"], r["round"])  # noqa: E731
        mc = {key(r): r["batch_mean_margin"] for r in rc}
        shared = [key(r) for r in rv if key(r) in mc]
        same = all(mc[k] == r["batch_mean_margin"] for r in rv for k in [key(r)] if k in mc)
        m = re.match(r"logreg-(.+)-views-b(\d+)", views)
        for label, name in (("clean", clean), ("drawn as pool rows", views)):
            S = summarise(name)
            by_short = {_short(k): k for k in S["strategies"]}
            cells = [m.group(1), f"{int(m.group(2)) / 10:g}%", label, f"{S['seed_metric']:.3f} -> {S['full']:.3f}",
                     f"{S['target']:.3f}"]
            cells += [fmt_ratio(S["ratios"][by_short[o]]) if o in by_short else "—"
                      for o in ("cluster-margin", "recommended", "walk (dup=0.01)", "badge (part.)")]
            cells += ["/".join(map(str, S["rounds"][by_short[o]])) if o in by_short else "—"
                      for o in ("recommended", "walk (dup=0.01)")]
            cells.append(f"{'yes' if same else 'NO'} ({len(shared)} rows)" if label == "clean" else "")
            print("| " + " | ".join(cells) + " |")
    return 0


#: specs between margin and the walk (`between`; the recommended spec when measured): more copies per near-duplicate group, or the
#: clusters instead of the near-duplicate test
BETWEEN = ("cluster-margin:order=margin", "cluster-margin:order=margin:dup=0.01:copies=2",
           "cluster-margin:order=margin:dup=0.01:copies=4", "cluster-margin:order=margin:dup=0.01:copies=8")


def _web_runs(suffix: str = "-whiten") -> list[str]:
    """The recorded web-like logistic-regression runs whose names end in ``suffix``, sorted."""
    return sorted(p.name[: -len("_results.csv")] for p in RESULTS.glob(f"logreg-fmnist-web*{suffix}_results.csv"))


def _web_cells(name: str) -> list[str]:
    """Pool, batch share and test split of a web-like run's name, as table cells."""
    m = re.match(r"logreg-(fmnist-web(?:-lt)?)(-views)?-b(\d+)", name)
    return [m.group(1), f"{int(m.group(3)) / 10:g}%", "drawn as pool rows" if m.group(2) else "clean"]


def between(args) -> int:
    """Specs between margin and the walk (the recommended spec when measured) on the web-like pools, both test splits.

    Margin takes every near-duplicate of an uncertain item, the walk one per pass;
    ``copies=c`` takes c per pass, and ``order=margin`` alone one per *cluster* per pass. Printed for
    the configurations whose recorded results hold at least one of them.
    """
    from batchal.simulate.report import fmt_ratio

    specs = ["margin", WALK, *BETWEEN, "cluster-margin"]
    heads = ["margin (copies: all)", "walk (dup=0.01, copies=1)", "order=margin (one per cluster)", "copies=2",
             "copies=4", "copies=8", "cluster-margin"]
    print("| pool | batch | test split | random's final | " + " | ".join(f"{h} / margin" for h in heads[1:])
          + " | rounds vs margin (copies=2 / 4 / 8) |")
    print("|---|---:|---|---:|" + "---:|" * (len(heads) - 1) + "---|")
    for name in _web_runs():
        S = summarise(name)
        if not any(b in S["strategies"] for b in BETWEEN):
            continue
        cells = [*_web_cells(name), f"{S['target']:.3f}"]
        cells += [fmt_ratio(S["ratios"][sp]) if sp in S["ratios"] else "—" for sp in specs[1:]]
        cells.append(", ".join("/".join(map(str, S["rounds"][sp])) if sp in S["rounds"] else "—" for sp in BETWEEN[1:]))
        print("| " + " | ".join(cells) + " |")
    return 0


#: the recommended spec's round-robin with a power allocation (`powers`): a cluster of s candidates visited
#: in proportion to s**q, from the paper's equal visits (q = 0, the recommended spec) to the candidates' own mix (1)
POWERS = (0.5, 0.75, 0.875, 1.0)


def powers(args) -> int:
    """The recommended spec with ``power=q`` on the web-like pools, both test splits (markdown).

    On a redundant pool the recommended spec is the paper's round-robin (q = 0); q = 1 keeps the
    candidates' mix of clusters. Printed for the configurations whose recorded results hold at least
    one ``power=`` run.
    """
    from batchal.selectors import RECOMMENDED
    from batchal.simulate.report import fmt_ratio

    specs = [RECOMMENDED] + [f"{RECOMMENDED}:power={q:g}" for q in POWERS]
    heads = ["0 (recommended)"] + [f"{q:g}" for q in POWERS]
    print("| pool | batch | test split | random's final | margin's labels | "
          + " | ".join(f"power {h} / margin" for h in heads)
          + " | rounds vs margin (power " + " / ".join(heads) + ") | final - margin's, points (power "
          + " / ".join(heads) + ") |")
    print("|---|---:|---|---:|---:|" + "---:|" * len(heads) + "---|---|")
    for name in _web_runs():
        S = summarise(name)
        if not any(sp in S["strategies"] for sp in specs[1:]):
            continue
        have = [sp for sp in specs if sp in S["strategies"]]
        cells = [*_web_cells(name), f"{S['target']:.3f}", _margin_labels(S)]
        cells += [fmt_ratio(S["ratios"][sp]) if sp in have else "—" for sp in specs]
        cells.append(", ".join("/".join(map(str, S["rounds"][sp])) if sp in have else "—" for sp in specs))
        cells.append(" / ".join(f"{100 * (S['final'][sp] - S['final']['margin']):+.2f}" if sp in have else "—"
                                for sp in specs))
        print("| " + " | ".join(cells) + " |")
    return 0


def propagation_ratios(name: str) -> dict | None:
    """A ``-whiten-prop`` run read against its recorded ``-whiten`` configuration (None when either is missing).

    One target for both runs: random's final metric *without* propagation (the scale table's). Labels are
    the ones bought; ``rec``/``margin`` are the recorded run's specs, ``rec+p``/``margin+p`` the propagating run's.
    """
    from batchal.simulate.report import _by, ratio_to_margin

    pair = _with_recorded(name, "-prop")
    if pair is None:
        return None
    from batchal.selectors import RECOMMENDED

    old, new, _ = pair
    target = _random_final(old)
    short = {"margin": "margin", WALK: "rec", RECOMMENDED: "auto"}
    rows = [dict(r, strategy=short[r["strategy"]]) for r in old if r["strategy"] in short]
    rows += [dict(r, strategy=short[r["strategy"]] + "+p") for r in new if r["strategy"] in short]
    have = {r["strategy"] for r in rows}
    ratios = ratio_to_margin(rows, [s for s in ("margin", "rec", "margin+p", "rec+p", "auto", "auto+p") if s in have],
                             target)
    def against_margin_p(s):  # s and margin, both propagating: margin+p plays margin
        return [dict(r, strategy="margin") if r["strategy"] == "margin+p" else r for r in rows
                if r["strategy"] in ("margin+p", s)]

    for s in ("rec+p", "auto+p"):
        if s in have:
            ratios[f"{s} vs margin+p"] = ratio_to_margin(against_margin_p(s), ["margin", s], target)[s]
    # the rounds and the labels propagated: the walk's (measured first), else the recommended spec's
    spec, full = ("rec+p", WALK) if "rec+p" in have else ("auto+p", RECOMMENDED)
    pair = against_margin_p(spec)
    final = max(r["round"] for r in new)
    last = [r for r in new if r["strategy"] == full and r["round"] == final]
    own = _random_final(new) if any(r["strategy"] == "random" for r in new) else float("nan")
    return {"target": target, "own_target": own, "ratios": ratios, "spec": spec,
            "rounds": rounds_vs(_by(pair, spec)[1], _by(pair, "margin")[1]),
            "propagated": float(np.mean([r["n_propagated"] for r in last])),
            "wrong": float(np.mean([r["propagated_error_rate"] for r in last]))}


def propagated(args) -> int:
    """The web-like pools with each batch's labels copied to its near-exact duplicates (``--propagate 0.01``).

    A ``-whiten-prop`` run replays a recorded ``-whiten`` configuration with propagation: every strategy
    buys its batch, then each bought label is copied to the item's near-duplicate group (cosine distance
    at most 0.01 on the embedding the clustering reads, the walk's own ``dup=0.01`` test; measured with the walk,
    the recommended spec before ``order=auto``).
    Labels are the ones bought, read at one target for both runs: random's final metric *without*
    propagation (the scale table's); the propagating run's own random is shown beside it.
    """
    from batchal.simulate.report import fmt_ratio

    print("| pool | batch | test split | random's final (without / with propagation) | walk / margin, "
          "neither propagating | margin + prop. / margin | walk + prop. / margin | walk + prop. / "
          "margin + prop. | rounds vs margin + prop. (walk + prop.) | labels propagated by the last round "
          "(walk + prop.; wrong) | recommended / margin | recommended + prop. / margin | recommended + prop. / "
          "margin + prop. |")
    print("|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for name in _web_runs("-whiten-prop") + _web_runs("-whiten-v2-prop"):
        P = propagation_ratios(name)
        if P is None:
            continue
        r = P["ratios"]
        where = _web_cells(name)
        if name.endswith("-v2-prop"):  # the pool regenerated with one BLAS thread (pools.WEB_KEY)
            where[0] += " (v2)"
        walk = P["spec"] == "rec+p"
        own = f"{P['own_target']:.3f}" if np.isfinite(P["own_target"]) else "—"
        cells = [*where, f"{P['target']:.3f} / {own}",
                 *(fmt_ratio(r[k]) if k in r else "—" for k in ("rec", "margin+p", "rec+p", "rec+p vs margin+p")),
                 "/".join(map(str, P["rounds"])) + ("" if walk else " (rec.)"),
                 f"{P['propagated']:,.0f} ({P['wrong']:.2%})" + ("" if walk else " (rec.)")]
        cells += [fmt_ratio(r[k]) if k in r else "—" for k in ("auto", "auto+p", "auto+p vs margin+p")]
        print("| " + " | ".join(cells) + " |")
    return 0


def converged_check(name: str) -> dict | None:
    """A ``-tol6`` run (L-BFGS at ``tol=1e-6``) read against its recorded configuration (the name without ``-tol6``).

    Per spec: its ratio to margin's labels in each run (each against its own random's final metric, and the
    converged run also against the default's), its rounds against margin in each, and how far its curve
    moved: the rounds where the two mean curves differ by more than 2 standard errors of the trials (both
    curves' spreads combined) and the largest change of the mean. None when either run is missing.
    """
    from batchal.simulate.report import _by, ratio_to_margin

    pair = _with_recorded(name, "-tol6")
    if pair is None:
        return None
    old, new, meta = pair
    specs = [s for s in meta["config"]["strategies"] if s in {r["strategy"] for r in old}]
    t_old, t_new = _random_final(old), _random_final(new)
    out = {"specs": specs, "target": (t_old, t_new), "ratio": {}, "rounds": {}, "moved": {}}
    r_old = ratio_to_margin(old, specs, t_old)
    r_new = ratio_to_margin(new, specs, t_new)
    r_new_at_old = ratio_to_margin(new, specs, t_old)
    for s in specs:
        a, b = _by(old, s)[1], _by(new, s)[1]
        # beyond the trials' spread: the means differ by more than 2 standard errors of the trials (both curves)
        se = np.sqrt(np.nanvar(a, axis=1, ddof=1) / a.shape[1] + np.nanvar(b, axis=1, ddof=1) / b.shape[1])[1:]
        d = np.nanmean(b, axis=1)[1:] - np.nanmean(a, axis=1)[1:]
        out["moved"][s] = (int((np.abs(d) > 2 * se).sum()), float(d[np.argmax(np.abs(d))]))
        if s != "margin":
            out["ratio"][s] = (r_old[s], r_new[s], r_new_at_old[s])
            out["rounds"][s] = (rounds_vs(a, _by(old, "margin")[1]), rounds_vs(b, _by(new, "margin")[1]))
    return out


def converged(args) -> int:
    """Recorded verdicts replayed with converged logistic regression (``--tol 1e-6``), beside the default's."""
    from batchal.simulate.report import fmt_ratio

    print("| configuration | random's final (default / converged) | spec | ratio to margin: default | converged | "
          "converged, default's target | rounds vs margin: default / converged | rounds moved beyond spread (of 6) | "
          "largest change of the mean, points |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|")
    for name in sorted(p.name[: -len("_results.csv")] for p in RESULTS.glob("logreg-*-tol6_results.csv")):
        C = converged_check(name)
        if C is None:
            continue
        head = [name[: -len("-tol6")], f"{C['target'][0]:.4f} / {C['target'][1]:.4f}"]
        for s in C["specs"]:
            moved, dmax = C["moved"][s]
            if s == "margin":
                cells = ["1.00x", "1.00x", "1.00x", "—"]
            else:
                ro, rn = C["rounds"][s]
                cells = [*(fmt_ratio(v) for v in C["ratio"][s]), f"{'/'.join(map(str, ro))} / {'/'.join(map(str, rn))}"]
            print("| " + " | ".join(head + [_short(s), *cells, str(moved),
                                            f"{100 * dmax:+.2f}"]) + " |")
    return 0


def bound_verdict(v, bound: float) -> str:
    """Whether a ratio ``(value, note)`` from ``ratio_to_margin`` meets ``bound``: "yes", "no" or "?" (a bound
    that does not decide: ``≥`` under it, ``≤`` or ``~`` over it).

    "margin never" meets any bound (the issue's "or margin never gets there"); "never" meets none.
    """
    r, note = v
    if note == "margin never":
        return "yes"
    if note == "never":
        return "no"
    if r <= bound:
        return "yes" if note in ("", "≤") else "?"
    return "no" if note in ("", "≥") else "?"


def bounds(args) -> int:
    """Every spec recorded on a web-like pool, on both test splits and at every batch share (markdown).

    One row per (pool, spec, training): its ratio to margin's labels in each of the six configurations
    (clean test and test drawn as the pool's rows are, batches of 1%, 3%, 10%), then how many of them
    meet the issue's 1.1x bound and, at 3% and 10%, its 0.8x ("neither": neither the spec nor margin reaches
    random's final metric, which meets the 1.1x, "or margin never gets there", and shows no saving).
    ``default`` reads the recorded runs (``-whiten``), ``converged`` the ``-whiten-tol6`` replays, ``pool regenerated (v2)`` the ``-whiten-v2`` runs on the pool
    as :data:`batchal.simulate.pools.WEB_KEY` makes it now, each against its own random's final metric.
    """
    from batchal.simulate.report import fmt_ratio

    heads = [f"{t} {b}%" for t in ("clean", "views") for b in (1, 3, 10)]
    print("| pool | spec | training | " + " | ".join(heads) + " | cells at most 1.1x (no / undecided) | "
          "at 3% and 10%: cells at most 0.8x |")
    print("|---|---|---|" + "---:|" * len(heads) + "---|---|")
    for pool in ("fmnist-web", "fmnist-web-lt"):
        for training, suffix in (("default", "-whiten"), ("converged", "-whiten-tol6"),
                                 ("default, pool regenerated (v2)", "-whiten-v2")):
            runs = {}
            for t, views in (("clean", ""), ("views", "-views")):
                for b in (1, 3, 10):
                    name = f"logreg-{pool}{views}-b{b * 10:03d}{suffix}"
                    if (RESULTS / f"{name}_results.csv").exists():
                        runs[(t, b)] = summarise(name)
            # by the short name, so BADGE's partitions (one count per batch size) make one row
            by_short = {(t_b, _short(s)): s for t_b, S in runs.items() for s in S["strategies"]}
            specs = list(dict.fromkeys(_short(s) for S in runs.values() for s in S["strategies"] if s != "margin"))
            for spec in specs:
                cells, v11, v08 = [], [], []
                for t in ("clean", "views"):
                    for b in (1, 3, 10):
                        S, full = runs.get((t, b)), by_short.get(((t, b), spec))
                        if S is None or full not in S["ratios"]:
                            cells.append("—")
                            continue
                        v = S["ratios"][full]
                        # neither reaches the target: the 1.1x is met ("or margin never gets there"), no saving shown
                        neither = v[1] == "never" and not np.isfinite(np.asarray(S["margin_labels"], float)).any()
                        cells.append("neither" if neither else fmt_ratio(v))
                        v11.append("yes" if neither else bound_verdict(v, 1.1))
                        if b in (3, 10):
                            v08.append(bound_verdict(v, 0.8))
                ok11 = f"{v11.count('yes')} of {len(v11)} ({v11.count('no')} / {v11.count('?')})"
                ok08 = f"{v08.count('yes')} of {len(v08)}"
                print("| " + " | ".join([pool, spec, training, *cells, ok11, ok08]) + " |")
    return 0


def headroom(args) -> int:
    """How much of each configuration's curve is left after its first batch, and how far the specs part.

    Where the first batch already brings random most of the way from the seed set to the whole-pool
    model, no selection can save much after it: the saving of any spec is bounded by what is left, and
    its ratio to margin's labels reads differences inside the trials' spread.
    """
    from batchal.simulate.report import _by

    names = sorted(p.name[: -len("_results.csv")] for p in RESULTS.glob("*_results.csv"))
    if args.only:
        names = [n for n in names if any(re.search(o, n) for o in args.only)]
    print("| configuration | seed set -> whole pool | random after batch 1: share of its rise | labels where "
          "random is first within 0.002 of the whole pool | walk (dup=0.01) - margin, rounds 1-6 (min .. max) "
          "| cluster-margin - margin (min .. max) |")
    print("|---|---|---:|---:|---|---|")
    for name in names:
        rows, meta = _load(name)
        have = meta["config"]["strategies"]
        if "random" not in have or "margin" not in have:
            continue
        full = float(meta["full_pool_score"])
        lab, R = _by(rows, "random")
        r = np.nanmean(R, axis=1)
        rise = r.max() - r[0]
        near = np.flatnonzero(r >= full - 0.002)
        m = np.nanmean(_by(rows, "margin")[1], axis=1)

        def gap(spec):
            if spec not in have:
                return "—"
            d = np.nanmean(_by(rows, spec)[1], axis=1)[1:] - m[1:]
            return f"{d.min():+.4f} .. {d.max():+.4f}"

        print(f"| {name} | {r[0]:.3f} -> {full:.3f} | {(r[1] - r[0]) / rise:.0%} | "
              f"{f'{int(lab[near[0]]):,}' if near.size else 'never'} | {gap(WALK)} | {gap('cluster-margin')} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run configurations (one batchal simulate each)")
    r.add_argument("--pools", nargs="+", default=list(POOLS), choices=list(POOLS))
    r.add_argument("--models", nargs="+", default=["logreg"], choices=["logreg", "mlp"])
    r.add_argument("--shares", nargs="+", type=float, default=list(SHARES))
    r.add_argument("--specs", default="", help="comma-separated specs instead of the five ('recommended' = the "
                   "current recommended spec); added to a configuration's recorded results when they exist")
    r.add_argument("--tag", default="", help="suffix of the result names (ablations, e.g. 'full' with --training full)")
    r.add_argument("--work", type=Path, default=Path("/tmp/batchal-scale"))
    r.add_argument("extra", nargs=argparse.REMAINDER, help="after --: further options for batchal simulate")
    t = sub.add_parser("table", help="the scale table (markdown) and figure from results/scale/")
    t.add_argument("--only", nargs="*", default=None, help="regular expressions on configuration names")
    h = sub.add_parser("headroom", help="what each configuration's curve leaves after its first batch (markdown)")
    h.add_argument("--only", nargs="*", default=None, help="regular expressions on configuration names")
    sub.add_parser("pairs", help="the web-like pools on both test splits, side by side (markdown)")
    sub.add_parser("between", help="specs between margin and the walk on the web-like pools (markdown)")
    sub.add_parser("powers", help="the recommended spec's round-robin with power= on the web-like pools (markdown)")
    sub.add_parser("propagated", help="the web-like pools with labels copied to near-exact duplicates (markdown)")
    sub.add_parser("converged", help="recorded verdicts with converged logistic regression (--tol 1e-6) (markdown)")
    sub.add_parser("bounds", help="every spec on the web-like pools against the issue's bounds, both test splits "
                   "(markdown)")
    args = ap.parse_args(argv)
    return {"run": run, "table": table, "headroom": headroom, "pairs": pairs, "between": between,
            "powers": powers, "propagated": propagated, "converged": converged, "bounds": bounds}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
