#!/usr/bin/env python
"""The recommended spec's rule against the evidence: one table over plain and redundant pools.

For each configuration (pool, model, batch size) the simulator replays the same
seed sets for random, margin, the paper's ``cluster-margin``, the earlier
recommended spec (near-duplicates judged on predicted probabilities,
``tol=0.1``) and the candidate rule (near-duplicates judged on the embedding,
cosine distance ``dup``), and reports for each the labels needed to reach
random's final metric as a ratio to margin's, with the curve's range (seed-set
model and whole-pool model) beside it so that a ratio from a flat curve is seen
as such.

Usage::

    python benchmarks/bench_recommendation.py --configs digits digits-redundant mnist1d-mlp
    python benchmarks/bench_recommendation.py --list

Results (one JSON per configuration) go to ``benchmarks/results/recommendation/``;
``--table`` prints the markdown table from them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "recommendation"

OLD = "cluster-margin:order=margin:tol=0.1"
SPECS = ["random", "margin", "cluster-margin", OLD, "cluster-margin:order=margin:dup=0.01"]


def _pool(name: str):
    from batchal.simulate import load_dataset, make_redundant

    base, *mods = name.split("+")
    kind, _, size = base.partition("@")
    if kind.startswith("manyclass") and kind != "manyclass":  # manyclassC: C classes instead of 32
        from batchal.simulate.pools import load_manyclass

        # a long tail keeps about 5% of a 100-class test split: draw it 10x as large so that ~10,000 rows remain
        ds = load_manyclass(int(size), n_classes=int(kind[len("manyclass"):]),
                            n_test=200_000 if "lt" in mods else 20_000)
    else:
        ds = load_dataset(kind, size=int(size) if size else None)
    for mod in mods:  # applied in order: "lt" thins the classes to frequencies ~ 1/rank, anything else adds copies
        if mod == "lt":
            from batchal.simulate.pools import long_tail

            ds = long_tail(ds, a=1.0, seed=0)
        else:
            ds = make_redundant(ds, mod, seed=0)
    return ds


#: name -> (pool, model, batch share of the pool, trials, extra SimulationConfig fields)
CONFIGS = {
    "digits": ("digits", "logreg", 0.025, 10, {}),
    "digits-redundant": ("digits+zipf", "logreg", 0.025, 10, {}),
    "digits-mlp": ("digits", "mlp", 0.025, 5, {}),
    "digits-redundant-mlp": ("digits+zipf", "mlp", 0.025, 5, {}),
    "mnist1d-mlp": ("mnist1d@20000", "mlp", 0.025, 3, {}),
    "mnist1d-redundant-mlp": ("mnist1d@10000+zipf", "mlp", 0.025, 3, {}),
    "fmnist-redundant-logreg": ("fashion-mnist@10000+zipf", "logreg", 0.025, 3, {}),
    "manyclass-logreg": ("manyclass@12000", "logreg", 0.025, 3, {}),
    "manyclass-mlp": ("manyclass@100000", "mlp", 0.03, 3, {}),
    "manyclass-redundant-mlp": ("manyclass@30000+zipf", "mlp", 0.03, 3, {}),
    "fmnist-web-logreg": ("fmnist-web@100000", "logreg", 0.03, 3, {}),
    # a pool with more classes than any above, whose seed MLP's ReLU layer crowds distinct rows (*The
    # near-duplicate test's unit*); the training rule of the other MLP configurations
    "manyclass100-mlp": ("manyclass100@100000", "mlp", 0.03, 3, {"training": "early-stop"}),
    "manyclass100-logreg": ("manyclass100@100000", "logreg", 0.03, 3, {}),
    # many classes, a long tail and copies at once (a pool of the kind the benchmarks were not chosen on)
    "manyclass100-lt-redundant-mlp": ("manyclass100@600000+lt+zipf", "mlp", 0.03, 3, {"training": "early-stop"}),
    # the same kind at the scale issue's size with a linear head (~1M rows after the tail and the copies; batches
    # of 1%): a pool of the kind a reviewer checks on, not one the rule was chosen on
    "manyclass100-lt-redundant-logreg-1m": ("manyclass100@6000000+lt+zipf", "logreg", 0.01, 3, {}),
    "manyclass100-lt-redundant-logreg-1m-b3": ("manyclass100@6000000+lt+zipf", "logreg", 0.03, 3, {}),
}


def _simulate(name: str, strategies: list[str], jobs: int | None, training: str | None = None,
              trials: int | None = None, tol: float | None = None):
    """One configuration's simulation for ``strategies``: ``(dataset, config, result, wall seconds)``.

    ``training`` sets the MLP's training rule (ignored for logistic regression); ``trials``
    replaces the configuration's number of trials (trial ``t`` has the same seeds either way); ``tol`` the
    logistic regression's L-BFGS tolerance (the simulator's default otherwise)."""
    from batchal.simulate import SimulationConfig, simulate

    pool, model, share, recorded_trials, extra = CONFIGS[name]
    trials = trials or recorded_trials
    ds = _pool(pool)
    b = max(10, round(share * ds.X.shape[0]))
    extra = dict(extra, **({"training": training} if training and model == "mlp" else {}),
                 **({"tol": tol} if tol is not None and model == "logreg" else {}))
    cfg = SimulationConfig(strategies=strategies, seed_size=b, batch_size=b, rounds=6, trials=trials, model=model,
                           progress=False, n_jobs=jobs, **extra)
    t0 = time.perf_counter()
    res = simulate(ds, cfg)
    return ds, cfg, res, time.perf_counter() - t0


def _result_name(name: str, trials: int | None, tol: float | None = None, training: str | None = None) -> str:
    """A configuration's result name; a run with another number of trials, tolerance or MLP training rule
    (than the one the configuration names) is recorded beside it."""
    out = name if trials is None or trials == CONFIGS[name][3] else f"{name}-t{trials}"
    _, model, _, _, extra = CONFIGS[name]
    # a configuration that names no rule was recorded under the simulator's default of its day (early-stop
    # before 2026-12-05 06:28 UTC, budget after), so an explicit rule is always recorded beside it
    if training and model == "mlp" and training != extra.get("training"):
        out = f"{out}-{training}"
    return out if tol is None else f"{out}-tol{-int(round(np.log10(tol)))}"


def run(name: str, jobs: int | None, trials: int | None = None, training: str | None = None,
        tol: float | None = None) -> dict:
    """Every spec of :data:`SPECS` and the current recommended spec on one configuration; with ``trials``
    (other than the recorded number) or ``tol`` recorded as ``NAME-tTRIALS`` / ``NAME[-tTRIALS]-tolN``
    (``tol = 10^-N``); ``training`` as in :func:`_simulate`."""
    from batchal.selectors import RECOMMENDED
    from batchal.simulate.report import _by, ratio_to_margin, rounds_vs

    pool, model, _, _, _ = CONFIGS[name]
    out_name = _result_name(name, trials, tol, training)
    specs = SPECS + ([RECOMMENDED] if RECOMMENDED not in SPECS else [])
    ds, cfg, res, wall = _simulate(name, specs, jobs, training, trials, tol)
    trials = cfg.trials
    n, b = ds.X.shape[0], cfg.batch_size
    target = float(np.nanmean(_by(res.rows, "random")[1][-1]))
    ratios = ratio_to_margin(res.rows, specs, target)
    _, m_acc = _by(res.rows, "margin")
    rounds = {s: list(rounds_vs(_by(res.rows, s)[1], m_acc)) for s in specs[2:]}
    _, r_acc = _by(res.rows, "random")
    out = {"config": out_name, "pool": pool, "rows": n, "classes": ds.n_classes, "model": model, "batch": b,
           "trials": trials, "seed_metric": float(np.nanmean(r_acc[0])), "full_metric": res.full_score,
           "random_final": target, "ratios": {s: list(v) for s, v in ratios.items()}, "rounds_vs_margin": rounds,
           "final": {s: float(np.nanmean(_by(res.rows, s)[1][-1])) for s in specs}, "wall_s": wall,
           "training": cfg.training if cfg.model == "mlp" else None}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out_name}.json").write_text(json.dumps(out, indent=1))
    # every (strategy, trial, round) row, so a ratio can be re-read against another target or subset of trials
    res.to_frame().to_csv(RESULTS / f"{out_name}_results.csv", index=False)
    return out


def add(name: str, specs: list[str], jobs: int | None, training: str | None = None) -> dict:
    """Run ``specs`` beside margin on a recorded configuration and merge them into its JSON.

    The seeds are the recorded run's, so margin's curve must come out identical (checked on its
    final mean; ``training`` gives the MLP's rule of the recorded run, ``early-stop`` for the runs
    recorded before ``budget`` became the default); the ratio reads the recorded random's final metric.
    A spec already in the record is replaced (its earlier figures were another rule's). Also records
    the share of margin's batch that are near-duplicates (min / median / max over rounds) and, for
    ``order=auto``, the rounds that took the paper's round-robin. The rows of this run (margin and
    ``specs``) are saved as ``NAME_added_results.csv``, replacing an earlier ``--add``'s.
    """
    from batchal.simulate.report import _by, ratio_to_margin, rounds_vs

    f = RESULTS / f"{name}.json"
    rec = json.loads(f.read_text())
    _, cfg, res, wall = _simulate(name, ["margin", *specs], jobs, training)
    _, m_acc = _by(res.rows, "margin")
    if not np.isclose(float(np.nanmean(m_acc[-1])), rec["final"]["margin"], rtol=0, atol=1e-9):
        raise SystemExit(f"{name}: margin's final {np.nanmean(m_acc[-1]):.6f} differs from the recorded "
                         f"{rec['final']['margin']:.6f}: not the recorded run's seeds")
    for spec in specs:
        _, acc = _by(res.rows, spec)
        rows = [r for r in res.rows if r["strategy"] == spec and r["round"] > 0]
        nd = [r.get("diag_margin_batch_near_duplicate_share", np.nan) for r in rows]
        rec["ratios"][spec] = list(ratio_to_margin(res.rows, ["margin", spec], rec["random_final"])[spec])
        rec["rounds_vs_margin"][spec] = list(rounds_vs(acc, m_acc))
        rec["final"][spec] = float(np.nanmean(acc[-1]))
        rec.setdefault("added", {})[spec] = {
            "wall_s": wall / len(specs), "training": cfg.training if cfg.model == "mlp" else None,
            "near_duplicate_share": [float(np.nanmin(nd)), float(np.nanmedian(nd)), float(np.nanmax(nd))],
            "paper_rounds": sum(bool(r.get("diag_redundant_pool", False)) for r in rows), "rounds": len(rows)}
    f.write_text(json.dumps(rec, indent=1))
    res.to_frame().to_csv(RESULTS / f"{name}_added_results.csv", index=False)
    return rec


def probe(name: str, pairs: int = 4000, queries: int = 1000) -> dict:
    """How crowded a configuration's clustered embedding is, at trial 0's seed model (no rounds run).

    The median cosine distance of ``pairs`` random row pairs, the exact nearest-neighbour distance of
    ``queries`` random rows (a share of them within 0.01), and the share of margin's first batch that the
    near-duplicate test defers with ``dup=0.01`` read plainly and in the embedding's unit (*The
    near-duplicate test's unit*); on pools made redundant, the true share of margin's batch that repeats
    a source item.
    """
    from batchal.selectors import Pool
    from batchal.selectors.cluster_margin import ClusterMarginSelector
    from batchal.simulate import SimulationConfig
    from batchal.simulate.runner import _new_model, clustered_embedding, seed_set, trial_clusters, trial_seed

    pool, model, share, _, extra = CONFIGS[name]
    ds = _pool(pool)
    b = max(10, round(share * ds.X.shape[0]))
    cfg = SimulationConfig(strategies=["margin"], seed_size=b, batch_size=b, rounds=1, trials=1, model=model,
                           progress=False, n_jobs=1, **dict({"training": "early-stop"} if model == "mlp" else {},
                                                            **extra))
    X, y = ds.X, ds.y
    cl, _ = trial_clusters(ds, cfg, 0)
    m = _new_model(ds, cfg, trial_seed(cfg.seed, 0), None)
    m.set_pool(X)
    lab = seed_set(X.shape[0], cfg, 0)
    m.fit(X[lab], y[lab])
    E = clustered_embedding(m, X, cfg)
    En = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(0)
    a, c = rng.integers(0, E.shape[0], pairs), rng.integers(0, E.shape[0], pairs)
    q = rng.choice(E.shape[0], min(queries, E.shape[0]), replace=False)
    nn = np.full(q.shape[0], 2.0)
    for s0 in range(0, E.shape[0], 50_000):  # exact nearest neighbour, the query itself left out
        S = En[q] @ En[s0:s0 + 50_000].T
        own = (q >= s0) & (q < s0 + S.shape[1])
        S[np.flatnonzero(own), q[own] - s0] = -2
        nn = np.minimum(nn, 1 - S.max(1))
    out = {"config": name, "median_pair_distance": float(np.median(1 - (En[a] * En[c]).sum(1))),
           "nn_within_0.01": float((nn <= 0.01).mean()), "nn_median": float(np.median(nn))}
    P = m.predict_proba(X)
    for unit in ("absolute", "pool"):
        sel = ClusterMarginSelector(order="margin", dup=0.01, dup_scale=unit, random_state=0)
        sel.select(Pool(probs=P, embeddings=E, clusters=cl, labeled=lab), b)
        out[f"share_{unit}"] = sel.diagnostics_["margin_batch_near_duplicate_share"]
        out["unit"] = sel.diagnostics_["dup_unit"]
    if ds.source is not None:
        top = sel.candidates_[:b]
        out["copies"] = 1 - np.unique(ds.source[top]).shape[0] / top.shape[0]
    return out


def table() -> str:
    """The markdown table; every spec beyond :data:`SPECS` (merged by ``--add`` or run with ``--trials`` /
    ``--tol``) gets a column; rounds vs margin are the recommended spec's."""
    from batchal.selectors import RECOMMENDED
    from batchal.simulate.report import fmt_ratio

    # each configuration, then its runs with other trials / tolerances / MLP training rules (see _result_name)
    from batchal.simulate.models import TRAINING

    variants = ("-t*.json", *(f"-{rule}*.json" for rule in TRAINING))
    recs = [json.loads(f.read_text()) for name in CONFIGS
            for f in [RESULTS / f"{name}.json", *sorted((g for v in variants for g in RESULTS.glob(name + v)),
                                                       key=lambda f: (len(f.stem), f.stem))] if f.exists()]
    # every measured spec is in its record's ratios, merged by --add or run in a record of its own
    extra = list(dict.fromkeys(sp for r in recs for sp in r["ratios"] if sp not in SPECS))
    cols = SPECS[2:] + extra
    last = RECOMMENDED
    lines = ["| configuration | rows x classes | model | batch | seed set -> whole pool | random's final | "
             + " | ".join(f"`{s}` / margin" for s in cols) + f" | rounds vs margin (`{last}`) | wall |",
             "|---|---|---|---:|---:|---:|" + "---:|" * len(cols) + "---|---:|"]
    for r in recs:
        rise = r["full_metric"] - r["seed_metric"]
        flat = " (flat)" if rise < 0.02 else ""
        cells = [fmt_ratio(tuple(r["ratios"][s])) if s in r["ratios"] else "—" for s in cols]
        rv = r["rounds_vs_margin"].get(last)
        wall = r["wall_s"] + sum(a["wall_s"] for a in r.get("added", {}).values())
        model = r["model"] + (f" ({r['training']})" if r.get("training") else "")
        lines.append(f"| {r['config']} | {r['rows']:,} x {r['classes']} | {model} | {r['batch']:,} | "
                     f"{r['seed_metric']:.3f} -> {r['full_metric']:.3f}{flat} | {r['random_final']:.3f} | "
                     + " | ".join(cells) + f" | {'—' if rv is None else '/'.join(map(str, rv))} | {wall / 60:.1f} min |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="*", default=[])
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--add", metavar="SPEC[,SPEC...]",
                    help="run these specs beside margin on the recorded configurations and merge them")
    from batchal.simulate.models import TRAINING

    ap.add_argument("--training", choices=TRAINING, default=None, help="the MLP's training rule (with --add: the recorded runs'; a run under another rule "
                                                       "than the configuration's is recorded as NAME-RULE)")
    ap.add_argument("--trials", type=int, default=None,
                    help="run with this many trials instead of the configuration's (recorded as NAME-tN, "
                         "with the recommended spec added)")
    ap.add_argument("--tol", type=float, default=None,
                    help="logistic regression's L-BFGS tolerance, a power of ten (recorded as NAME[-tN]-tolK, "
                         "with the recommended spec added)")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--probe", action="store_true",
                    help="how crowded each configuration's seed embedding is (trial 0, no rounds): a table")
    a = ap.parse_args(argv)
    if a.list:
        print("\n".join(f"{k}: {v[0]}, {v[1]}, batches of {100 * v[2]:g}%, {v[3]} trials" for k, v in CONFIGS.items()))
        return 0
    # every refusal before the first run, so a bad argument never leaves half the configurations done
    unknown = [name for name in a.configs if name not in CONFIGS]
    if unknown:
        print(f"unknown configuration {unknown[0]!r}; --list shows them", file=sys.stderr)
        return 2
    if a.add and (a.trials is not None or a.tol is not None):
        print("--add replays the recorded run: no --trials or --tol with it", file=sys.stderr)
        return 2
    added = []
    if a.add:
        from batchal import BatchalInputError
        from batchal.selectors import split_specs

        try:
            added = [sp.text for sp in split_specs(a.add)]
        except BatchalInputError as exc:
            print(f"--add: {exc}", file=sys.stderr)
            return 2
    if a.tol is not None and not (0 < a.tol < 1 and float(np.log10(a.tol)).is_integer()):
        print(f"--tol must be a power of ten below 1 (e.g. 1e-6); got {a.tol}", file=sys.stderr)
        return 2
    for name in a.configs if a.trials is not None else []:
        if a.trials < 2 or (a.trials == CONFIGS[name][3] and a.tol is None):
            print(f"--trials must be at least 2 and differ from {name}'s recorded {CONFIGS[name][3]} "
                  "(a rerun of the recorded configuration would overwrite its merged specs)", file=sys.stderr)
            return 2
    if a.probe:
        print("| configuration | median cosine distance of random pairs | rows with a neighbour within 0.01 | "
              "median nearest-neighbour distance | near-dup. share of margin's batch, plain 0.01 | in the unit | "
              "copies in margin's batch |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in a.configs:
            r = probe(name)
            cp = f"{100 * r['copies']:.0f}%" if "copies" in r else "—"
            print(f"| {name} | {r['median_pair_distance']:.2f} | {100 * r['nn_within_0.01']:.1f}% | "
                  f"{r['nn_median']:.2g} | {100 * r['share_absolute']:.1f}% | {100 * r['share_pool']:.1f}% "
                  f"(unit {r['unit']:.2f}) | {cp} |", flush=True)
        return 0
    for name in a.configs:
        if a.add:
            r = add(name, added, a.jobs, a.training)
            for spec in added:
                print(f"{name}: {spec} {r['ratios'][spec]}, rounds vs margin {r['rounds_vs_margin'][spec]}, "
                      f"{r['added'][spec]}", flush=True)
            continue
        r = run(name, a.jobs, a.trials, a.training, a.tol)
        print(f"{r['config']}: {r['seed_metric']:.3f} -> {r['full_metric']:.3f}; ratios "
              + ", ".join(f"{s}: {v}" for s, v in r["ratios"].items() if s not in SPECS[:2])
              + f"; {r['wall_s']:.0f} s", flush=True)
    if a.table or not a.configs:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
