"""Simulation outputs: results.csv, curves.png, diagnostics.png, cluster_sizes.png and summary.md."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..io import atomic_write

COLUMNS = ["strategy", "trial", "round", "n_labeled", "accuracy", "balanced_accuracy", "rare_recall", "micro_ap",
           "select_seconds", "fit_seconds", "train_epochs", "train_iters", "train_converged", "stop_kappa", "stop_changed", "stop_uncertainty",
           "stop_advice",
           "batch_mean_margin", "batch_label_entropy", "batch_clusters", "batch_copy_share",
           "diag_k_m", "diag_candidate_clusters", "diag_candidate_repeat_share",
           "diag_margin_batch_clusters", "diag_margin_batch_repeat_share",
           "diag_candidate_near_duplicate_share", "diag_margin_batch_near_duplicate_share"]
# --propagate (batchal.simulate.propagate): labels copied to near-duplicates, next to n_labeled (bought)
COLUMNS += ["n_propagated", "propagated_error_rate", "pool_exhausted"]
# cluster-margin:order=auto: did the round take the paper's round-robin (margin's batch redundant)?
COLUMNS += ["diag_redundant_pool"]


def _auto_rounds(rs) -> str:
    """``taken / rounds`` for specs that record ``order=auto``'s choice, else a dash."""
    flags = [r["diag_redundant_pool"] for r in rs if "diag_redundant_pool" in r]
    return f"{sum(map(bool, flags))} / {len(flags)}" if flags else "—"


def verdict(diff: np.ndarray) -> tuple[float, float, str]:
    """Mean, standard error and verdict (above / within spread / below) of paired differences."""
    m, s = float(np.nanmean(diff)), float(_sem(diff))
    v = "above" if m > 2 * s and m > 0 else ("below" if m < -2 * s and m < 0 else "within spread")
    return m, s, v


def rounds_vs(acc: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """Rounds 1.. where the (rounds, trials) curve ``acc`` is above / within spread / below ``ref``, paired by trial."""
    vs = [verdict(acc[i] - ref[i])[2] for i in range(1, ref.shape[0])]
    return vs.count("above"), vs.count("within spread"), vs.count("below")


def ratio_to_margin(rows, strategies, target: float) -> dict:
    """Labels to reach ``target`` as a ratio to margin's (mean over trials of each; None if not comparable).

    Returns per strategy ``(ratio, note)``: ``note`` is ``""``; ``"≥"`` / ``"≤"`` when
    some trials of the strategy / of margin never reach the target (they count at the
    last round's labels, so the ratio is a bound); ``"~"`` when both miss some;
    ``"margin never"`` (the strategy reached the target, margin did not) or ``"never"``.
    """
    if "margin" not in strategies:
        return {}
    tab = savings_table(rows, strategies, target)
    mL = np.asarray(tab["margin"]["labels"], dtype=float)
    out = {}
    for s in strategies:
        L = np.asarray(tab[s]["labels"], dtype=float)
        if not np.isfinite(L).any():
            out[s] = (float("nan"), "never")
        elif not np.isfinite(mL).any():
            out[s] = (float("nan"), "margin never")
        else:
            # a trial that never reaches counts at the last round's labels, so a miss of the
            # strategy makes the ratio a lower bound and a miss of margin an upper bound
            last = _by(rows, s)[0][-1]
            mlast = _by(rows, "margin")[0][-1]
            miss, mmiss = (~np.isfinite(L)).any(), (~np.isfinite(mL)).any()
            note = "~" if miss and mmiss and s != "margin" else ("≥" if miss else ("≤" if mmiss and s != "margin" else ""))
            out[s] = (float(np.mean(np.where(np.isfinite(L), L, last)) / np.mean(np.where(np.isfinite(mL), mL, mlast))),
                      note)
    return out


def fmt_ratio(v) -> str:
    r, note = v
    if note in ("never", "margin never"):
        return note
    return f"{note + ' ' if note else ''}{r:.2f}x"


def _by(rows, strategy, per_trial: bool = False):
    """(rounds, trials) accuracy matrix and the labels axis for one strategy.

    The labels axis is the mean over trials of each round's labels (the same in every trial unless
    propagated labels used up the pool, when later rounds buy less); ``per_trial`` returns the
    (rounds, trials) labels matrix instead.
    """
    rs = [r for r in rows if r["strategy"] == strategy]
    trials = sorted({r["trial"] for r in rs})
    rounds = sorted({r["round"] for r in rs})
    acc = np.full((len(rounds), len(trials)), np.nan)
    labm = np.full((len(rounds), len(trials)), np.nan)
    for r in rs:
        i, j = rounds.index(r["round"]), trials.index(r["trial"])
        acc[i, j] = r["accuracy"]
        labm[i, j] = r["n_labeled"]
    if per_trial:
        return labm, acc
    lab = np.nanmean(labm, axis=1) if labm.size else np.zeros(len(rounds))
    return lab, acc


def _round_labels(curves: dict, strategies, i: int) -> tuple[str, dict]:
    """The labels cell of round ``i`` and each strategy's suffix for its own cell.

    One count when every strategy bought the same; where propagated labels used up the pool
    (a round buys what is left) counts differ, and the cell gives the range while each
    strategy's suffix names its own count (empty suffixes otherwise).
    """
    labs = {s: curves[s][0][i] for s in strategies if i < len(curves[s][0])}
    lo, hi = min(labs.values()), max(labs.values())
    if lo == hi:
        return f"{int(lo):,}", dict.fromkeys(labs, "")
    return f"{int(lo):,}-{int(hi):,}", {s: f" ({int(v):,} labels)" for s, v in labs.items()}


def _sem(a, axis=None):
    a = np.asarray(a, dtype=float)
    k = np.sum(np.isfinite(a), axis=axis)
    sd = np.nanstd(a, axis=axis, ddof=1) if np.all(k > 1) else np.zeros_like(np.nanmean(a, axis=axis))
    return sd / np.sqrt(np.maximum(k, 1))


def labels_to_reach(labels: np.ndarray, acc: np.ndarray, target: float) -> float:
    """Labels at which a learning curve first reaches ``target`` (linear interpolation); NaN if never."""
    hit = np.flatnonzero(acc >= target)
    if hit.size == 0:
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(labels[0])
    a0, a1 = acc[i - 1], acc[i]
    frac = (target - a0) / (a1 - a0) if a1 > a0 else 1.0
    return float(labels[i - 1] + frac * (labels[i] - labels[i - 1]))


def savings_table(rows, strategies, target: float):
    """Per strategy: labels to reach ``target`` per trial, and the saving against random and margin.

    Saving against a baseline is ``1 - labels / baseline_labels`` per trial (the
    trials share seed sets), then mean and standard error over trials. When a
    curve never reaches the target its labels count as "more than the last
    round": the saving is then reported as a bound.
    """
    per = {}
    for s in strategies:
        labm, acc = _by(rows, s, per_trial=True)
        per[s] = (np.nanmean(labm, axis=1), [labels_to_reach(labm[:, j], acc[:, j], target) for j in range(acc.shape[1])])
    out = {}
    for s in strategies:
        lab, L = per[s]
        entry = {"labels": L, "reached": int(np.sum(np.isfinite(L))), "trials": len(L)}
        for base in ("random", "margin"):
            if base not in per or base == s:
                continue
            blab, B = per[base]
            sv, bound = [], False
            for a, b in zip(L, B):
                if np.isfinite(a) and np.isfinite(b):
                    sv.append(1 - a / b)
                elif np.isfinite(a):  # baseline never got there: saving at least this much
                    sv.append(1 - a / blab[-1])
                    bound = True
            entry[f"vs_{base}"] = (float(np.mean(sv)) if sv else float("nan"),
                                   float(_sem(sv)) if len(sv) > 1 else 0.0, bound, len(sv))
        out[s] = entry
    return out


def _fmt_labels(L):
    L = np.asarray(L, dtype=float)
    if not np.isfinite(L).any():
        return "not reached"
    m = np.nanmean(L)
    s = _sem(L[np.isfinite(L)]) if np.isfinite(L).sum() > 1 else 0.0
    miss = int(np.sum(~np.isfinite(L)))
    return f"{m:,.0f} ± {s:,.0f}" + (f" ({miss} trial(s) never)" if miss else "")


def _fmt_saving(v):
    if v is None:
        return "—"
    m, s, bound, k = v
    if not np.isfinite(m):
        return "n/a"
    return f"{'≥ ' if bound else ''}{100 * m:+.1f}% ± {100 * s:.1f}"


def write_outputs(res, out_dir, *, name: str | None = None) -> Path:
    """Write every output of a simulation to ``out_dir``; returns the summary path.

    The files are built in a staging folder and moved in together, so a failure
    (a plot, the summary) leaves ``out_dir`` as it was, never a partial set.
    ``name`` is the option ``out_dir`` came from, for error messages.
    """
    from ..io import atomic_directory

    with atomic_directory(out_dir, name=name) as stage:
        _write_all(res, stage)
    return Path(out_dir) / "summary.md"


def _write_all(res, out: Path) -> None:
    def _csv(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in res.rows:
                w.writerow({k: r.get(k, "") for k in COLUMNS})

    atomic_write(out / "results.csv", _csv)
    diags = [{k: v for k, v in d.items() if k != "cluster_sizes"} for d in res.diagnostics]
    meta = {"dataset": res.dataset, "config": {k: v for k, v in vars(res.config).items()},
            "full_pool_score": res.full_score, "metric": res.metric_name, "seconds": res.seconds,
            "diagnostics": diags, "redundancy": getattr(res, "redundancy", None),
            "peak_rss": getattr(res, "peak_rss", None), "pool": getattr(res, "pool", None),
            "class_names": getattr(res, "class_names", None)}
    atomic_write(out / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=str)))
    _plot_curves(res, out / "curves.png")
    _plot_diagnostics(res, out / "diagnostics.png")
    sizes = [d["cluster_sizes"] for d in res.diagnostics if "cluster_sizes" in d]
    if sizes:
        _plot_cluster_sizes(np.asarray(sizes[0]), out / "cluster_sizes.png", res)
    text = summary_markdown(res)
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))


def _share(v) -> str:
    return "100%" if v is None else f"{100 * v:g}%"


def summary_markdown(res) -> str:
    cfg = res.config
    strategies = cfg.strategies
    target = cfg.target if cfg.target is not None else 0.98 * res.full_score
    metric = res.metric_name
    lines = [f"# Simulation: {res.dataset}", ""]
    budget = ""
    if cfg.model == "mlp":
        cap = f", at most {cfg.max_steps:,} steps" if cfg.max_steps else ""
        rule = {"early-stop": f"epochs until a held-out 10% of the labeled set stops improving, at most {cfg.epochs}",
                "full": f"{cfg.epochs} full epochs, constant learning rate",
                "budget": f"every labeled row for max({cfg.epochs} epochs, {getattr(cfg, 'min_steps', 0):,} steps), "
                          "constant learning rate"}.get(cfg.training, cfg.training)
        budget = f" (training `{cfg.training}`: {rule}{cap})"
    elif cfg.model == "logreg":
        budget = (f" ({'whitened' if getattr(cfg, 'whiten', False) else 'standardised'} input, "
                  f"{'warm' if cfg.warm_start else 'cold'}-started each round, L-BFGS tolerance {getattr(cfg, 'tol', 1e-4):g})")
    lines.append(
        f"model `{cfg.model}`{budget}, seed set {cfg.seed_size:,}, batches of {cfg.batch_size:,}, {cfg.rounds} rounds, "
        f"{cfg.trials} trials; cluster-margin: margin factor {cfg.margin_factor:g}, candidates at most "
        f"{_share(cfg.max_candidate_share)} of the unlabeled rows, mean cluster size "
        f"{cfg.mean_cluster_size:g} ({cfg.metric}); wall time {res.seconds:,.0f} s."
    )
    red = getattr(res, "redundancy", None)
    if red:
        mc = red["multiplicity_counts"]
        top = ", ".join(f"{k}: {v:,}" for k, v in sorted(mc.items())[:6])
        lines.append(
            f"\nRedundant pool (`{red['spec']}`): {red['original_rows']:,} original rows repeated into "
            f"{red['pool_rows']:,} (multiplicity mean {red['mean_multiplicity']:.2f}, median "
            f"{red['median_multiplicity']:g}, max {red['max_multiplicity']}; {100 * red['share_rows_single']:.1f}% of "
            f"pool rows are single, {100 * red['share_rows_in_groups_of_10_plus']:.1f}% in groups of 10 or more). "
            f"Rows per multiplicity: {top}, ... {red.get('test', 'The test split is untouched.')}"
        )
    seed_m = float(np.nanmean(_by(res.rows, strategies[0])[1][0]))
    lines.append(f"\nCurve range: {metric} {seed_m:.4f} from the seed set ({cfg.seed_size:,} labels) and "
                 f"{res.full_score:.4f} for the same model trained on the whole pool (same training rule, no step "
                 f"cap){_rise_note(seed_m, res.full_score)}. Judge every saving below against this range.")
    peak = getattr(res, "peak_rss", None)
    if peak:
        lines.append(f"\nPeak memory (resident): {peak['main'] / 2**30:.2f} GiB in the main process, "
                     f"{peak['largest_worker'] / 2**30:.2f} GiB in the largest worker process.")
    lines += _training_note(res)
    # per-round table
    lines += ["", f"## {metric} per round (mean ± standard error over trials)", ""]
    curves = {s: _by(res.rows, s) for s in strategies}
    lab0 = next(iter(curves.values()))[0]
    lines.append("| labels | " + " | ".join(strategies) + " |")
    lines.append("|---:|" + "---:|" * len(strategies))
    for i in range(len(lab0)):
        head, own = _round_labels(curves, strategies, i)
        cells = []
        for s in strategies:
            acc = curves[s][1]
            cells.append(f"{np.nanmean(acc[i]):.4f} ± {_sem(acc[i]):.4f}{own[s]}" if i < acc.shape[0] else "")
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    targets = [(f"{100 * (target / res.full_score):.0f}% of the full-pool {metric}" if cfg.target is None
                else "the given target", target)]
    if "random" in strategies:
        _, racc = curves["random"]
        targets.append(("random's final mean " + metric, float(np.nanmean(racc[-1]))))
    for label, tval in targets:
        tab = savings_table(res.rows, strategies, tval)
        lines += ["", f"## Labels to reach {metric} {tval:.4f} ({label})", ""]
        ratios = ratio_to_margin(res.rows, strategies, tval)
        lines.append("| strategy | labels needed | saving vs random | saving vs margin | labels / margin's |")
        lines.append("|---|---:|---:|---:|---:|")
        for s in strategies:
            e = tab[s]
            lines.append(f"| {s} | {_fmt_labels(e['labels'])} | {_fmt_saving(e.get('vs_random'))} | "
                         f"{_fmt_saving(e.get('vs_margin'))} | {fmt_ratio(ratios[s]) if s in ratios else '—'} |")
    others = [s for s in strategies if s not in ("margin", "random")]
    if "margin" in strategies and others:
        _, mg = curves["margin"]
        lines += ["", "## Minus margin, per round (paired by trial; verdict at 2 standard errors)", ""]
        lines.append("| labels | " + " | ".join(others) + " |")
        lines.append("|---:|" + "---|" * len(others))
        for i in range(1, mg.shape[0]):
            head, own = _round_labels(curves, ["margin", *others], i)
            cells = []
            for s in others:
                m, se, v = verdict(curves[s][1][i] - mg[i])
                cells.append(f"{m:+.4f} ± {se:.4f} {v}{own[s]}")
            lines.append(f"| {head} | " + " | ".join(cells) + " |")
        lines.append("")
        counts = []
        for s in others:
            a, w, b = rounds_vs(curves[s][1], mg)
            counts.append(f"{s}: {a} above / {w} within / {b} below")
        lines.append("Rounds vs margin: " + "; ".join(counts) + ".")
    lines += _versus_random(res, curves)
    lines += _extra_metrics(res)
    lines += _stopping(res)
    cms = [d for d in res.diagnostics if "n_clusters" in d]
    if cms:
        space = ("the seed model's embedding" if cfg.cluster_space == "embedding"
                 else "the input features")
        lines += ["", f"## Clustering (one per trial, on {space})", ""]
        lines.append("| trial | method | clusters | threshold | singleton share | label purity | seconds |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|")
        seen = set()
        for d in cms:
            if d["trial"] in seen:  # every spec of a trial reads the same clustering
                continue
            seen.add(d["trial"])
            purity = f"{d['purity']:.3f}" if d.get("purity") is not None else "—"
            secs = f"{d['cluster_seconds']:.1f}" + (" (cached)" if d.get("cluster_cached") else "")
            lines.append(f"| {d['trial']} | {d['cluster_method']} | {d['n_clusters']:,} | {d['threshold']:.4g} | "
                         f"{d['singleton_share']:.3f} | {purity} | {secs} |")
        lines += ["", "Label purity: share of pool rows whose true label is their cluster's majority label "
                  "(multi-class only); a low purity means the clusters do not follow the classes."]
    diag_cols = ["batch_mean_margin", "batch_label_entropy", "batch_clusters", "batch_copy_share"]
    lines += ["", "## Batch diagnostics (mean over rounds and trials)", ""]
    lines.append("| strategy | mean margin of batch | label entropy of batch | clusters hit | copies in batch | select seconds |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for s in strategies:
        rs = [r for r in res.rows if r["strategy"] == s and r["round"] > 0]
        vals = [np.mean([r[c] for r in rs if c in r]) if any(c in r for r in rs) else float("nan") for c in diag_cols]
        sel = np.median([r["select_seconds"] for r in rs]) if rs else float("nan")
        lines.append(f"| {s} | {vals[0]:.4f} | {vals[1]:.3f} | {vals[2]:,.0f} | {100 * vals[3]:.1f}% | {sel:.3f} |"
                     .replace("nan%", "—").replace("nan", "—"))
    lines.append("")
    lines.append("Copies in batch: share of the batch that copies an item already labeled or already in the batch "
                 "(redundant pools only).")
    red = [s for s in strategies if any("diag_k_m" in r for r in res.rows if r["strategy"] == s)]
    if red:
        lines += ["", "## Redundancy of the uncertain candidates (strategies that read clusters)", ""]
        lines.append("| strategy | k_m | clusters among candidates | candidates repeating a cluster | "
                     "margin's batch: clusters | margin's batch repeating a cluster | "
                     "margin's batch: near-duplicates | rounds on the paper's round-robin (order=auto) |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in red:
            rs = [r for r in res.rows if r["strategy"] == s and "diag_k_m" in r]
            mean = lambda c: float(np.mean([r[c] for r in rs])) if all(c in r for r in rs) else float("nan")  # noqa: E731
            nd = mean("diag_margin_batch_near_duplicate_share")
            lines.append(f"| {s} | {mean('diag_k_m'):,.0f} | {mean('diag_candidate_clusters'):,.0f} | "
                         f"{100 * mean('diag_candidate_repeat_share'):.1f}% | {mean('diag_margin_batch_clusters'):,.0f} | "
                         f"{100 * mean('diag_margin_batch_repeat_share'):.1f}% | "
                         f"{'—' if not np.isfinite(nd) else f'{100 * nd:.1f}%'} | "
                         f"{_auto_rounds(rs)} |")
        lines += ["", "A candidate *repeats a cluster* when its cluster already holds a more uncertain candidate; "
                  "it is a *near-duplicate* (specs with `tol`) when, in addition, no class probability differs "
                  "from that candidate's by more than `tol` (or, with `dup`, its embedding lies within cosine "
                  "distance `dup`). With `order=auto` a round whose margin batch holds at least `redundant` "
                  "(default 5%) near-duplicates takes the paper's round-robin. A high near-duplicate share in margin's own batch "
                  "means margin would spend labels on copies: the diversity step pays. Cluster repeats alone "
                  "also count distinct items of one region, which margin needs on a clean pool."]
    lines += ["", "Outputs: `results.csv` (one row per strategy, trial and round), `curves.png`, "
              "`diagnostics.png`, `cluster_sizes.png`, `run.json`.", ""]
    return "\n".join(lines)


def _training_note(res) -> list[str]:
    """Whether every round's model was trained to the end of its rule: what makes the curves converged training."""
    def col(name):
        return [r[name] for r in res.rows if r.get(name) not in (None, "")]

    iters, ok, epochs = col("train_iters"), col("train_converged"), col("train_epochs")
    if iters:
        bad = sum(1 for v in ok if str(v) in ("False", "0"))
        state = ("L-BFGS converged in every fit" if not bad else
                 f"L-BFGS stopped at its iteration cap without converging in {bad} of {len(ok)} fits")
        return [f"\nTraining: {state} (iterations per fit: median {np.median(iters):.0f}, "
                f"max {max(int(v) for v in iters)}; {len(iters)} fits)."]
    if epochs and res.config.model == "mlp":
        e = np.asarray(epochs, dtype=float)
        steps = col("train_steps")
        if res.config.training == "budget" and steps:
            st = np.asarray(steps, dtype=float)
            return [f"\nTraining: gradient steps per fit median {np.median(st):,.0f} (min {st.min():,.0f}, max "
                    f"{st.max():,.0f}), epochs per fit median {np.median(e):.0f} (min {e.min():.0f}, max {e.max():.0f}); "
                    f"{len(e)} fits."]
        return [f"\nTraining: epochs per fit median {np.median(e):.0f}, max {e.max():.0f} of {res.config.epochs} "
                f"({len(e)} fits; {int((e >= res.config.epochs).sum())} ran every epoch)."]
    return []


def _rise_note(seed: float, full: float) -> str:
    """Flags a curve too flat to show differences between strategies."""
    rise = full - seed
    if rise < 0.02:
        return (f"; the curve rises only {rise:+.4f} from seed set to whole pool: too flat for this pool to "
                "separate strategies")
    return f"; a rise of {rise:.4f}"


def _versus_random(res, curves) -> list[str]:
    """Per round, each strategy against random (paired by trial): where active selection falls below random.

    Below random is the low-budget regime of Hacohen et al. (ICML 2022): while the
    labeled set is small for the task, uncertain items are the hard, atypical ones.
    """
    strategies = res.config.strategies
    if "random" not in strategies:
        return []
    others = [s for s in strategies if s != "random"]
    _, rnd = curves["random"]
    lines = ["", "## Minus random, per round (paired by trial; verdict at 2 standard errors)", ""]
    lines.append("| labels | " + " | ".join(others) + " |")
    lines.append("|---:|" + "---|" * len(others))
    below = {s: [] for s in others}
    for i in range(1, rnd.shape[0]):
        head, own = _round_labels(curves, strategies, i)
        cells = []
        for s in others:
            m, se, v = verdict(curves[s][1][i] - rnd[i])
            cells.append(f"{m:+.4f} ± {se:.4f} {v}{own[s]}")
            if v == "below":
                below[s].append(int(curves[s][0][i]))
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    flagged = {s: v for s, v in below.items() if v}
    lines.append("")
    if flagged:
        lines.append("**Below random** (the low-budget regime, where uncertainty picks atypical items; Hacohen et "
                     "al. 2022): " + "; ".join(f"{s} at {', '.join(f'{x:,}' for x in v)} labels"
                                               for s, v in flagged.items()) + ".")
    else:
        lines.append("No strategy is below random at any round.")
    return lines


def _extra_metrics(res) -> list[str]:
    """Balanced accuracy and rare-class recall (multi-class), pooled AP (multi-label): first and last round."""
    cols = ["micro_ap"] if res.metric_name == "mAP" else ["balanced_accuracy", "rare_recall"]
    names = {"micro_ap": "pooled (micro) AP", "balanced_accuracy": "balanced accuracy",
             "rare_recall": "recall of the rarest classes"}
    if not any(c in r for r in res.rows for c in cols):
        return []
    last = max(r["round"] for r in res.rows)
    lines = ["", "## " + ", ".join(names[c] for c in cols) + " (mean over trials: seed set -> last round)", ""]
    lines.append("| strategy | " + " | ".join(names[c] for c in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for s in res.config.strategies:
        cells = []
        for c in cols:
            a = [r[c] for r in res.rows if r["strategy"] == s and r["round"] == 0 and c in r]
            b = [r[c] for r in res.rows if r["strategy"] == s and r["round"] == last and c in r]
            cells.append(f"{np.nanmean(a):.4f} -> {np.nanmean(b):.4f}" if a and b else "—")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if "rare_recall" in cols:
        lines += ["", "Rarest classes: the (at most 5) classes least frequent in the pool; on a balanced pool "
                  "they are arbitrary."]
    return lines


def stop_rounds(rows, strategy: str, within: float = 0.005) -> list[tuple]:
    """Per trial: (labels at which the stopping rule first advises stopping or None, labels at which the
    metric first comes within ``within`` of its final value)."""
    out = []
    for t in sorted({r["trial"] for r in rows if r["strategy"] == strategy}):
        rs = sorted((r for r in rows if r["strategy"] == strategy and r["trial"] == t), key=lambda r: r["round"])
        final = rs[-1]["accuracy"]
        advised = next((r["n_labeled"] for r in rs if r.get("stop_advice") in (True, "True")), None)
        close = next(r["n_labeled"] for r in rs if r["accuracy"] >= final - within)
        out.append((advised, close))
    return out


def _stopping(res) -> list[str]:
    """The label-free stopping signals (batchal.stopping) against where the curve actually flattened."""
    if not any("stop_kappa" in r for r in res.rows):
        return []
    lines = ["", "## Stopping signals (stabilising predictions on a fixed stop set; rule: kappa >= 0.99 for 3 "
             "successive rounds)", ""]
    lines.append("| strategy | kappa per round (mean over trials) | rule says stop at (labels, per trial) | "
                 "metric within 0.005 of its final value at |")
    lines.append("|---|---|---|---|")
    for s in res.config.strategies:
        rs = [r for r in res.rows if r["strategy"] == s]
        rounds = sorted({r["round"] for r in rs})
        kap = []
        for rd in rounds[1:]:
            v = [r["stop_kappa"] for r in rs if r["round"] == rd and r.get("stop_kappa") not in (None, "")]
            kap.append(f"{np.mean(v):.3f}" if v else "—")
        pairs = stop_rounds(res.rows, s)
        adv = ", ".join("never" if a is None else f"{a:,}" for a, _ in pairs)
        close = ", ".join(f"{c:,}" for _, c in pairs)
        lines.append(f"| {s} | {' '.join(kap)} | {adv} | {close} |")
    lines += ["", "Cohen's kappa between successive rounds' predicted classes on a fixed random stop set "
              "(its unlabeled members), as `batchal campaign status` computes it; \"never\" means the rule "
              "did not fire within the rounds run."]
    return lines


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(res, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in res.config.strategies:
        lab, acc = _by(res.rows, s)
        m, e = np.nanmean(acc, 1), _sem(acc, 1)
        ax.plot(lab, m, marker="o", ms=3, label=s, lw=2 if s.startswith("cluster-margin") else 1.2)
        ax.fill_between(lab, m - e, m + e, alpha=0.2)
    ax.axhline(res.full_score, color="gray", ls=":", lw=1, label="whole pool")
    ax.set_xlabel("labels")
    ax.set_ylabel(f"test {res.metric_name}")
    ax.set_title(f"{res.dataset}: batches of {res.config.batch_size:,} ({res.config.trials} trials, mean ± s.e.)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _plot_diagnostics(res, path):
    plt = _plt()
    cols = [("batch_mean_margin", "mean margin of the batch"), ("batch_label_entropy", "label entropy of the batch")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (c, title) in zip(axes, cols):
        for s in res.config.strategies:
            rs = [r for r in res.rows if r["strategy"] == s and c in r]
            if not rs:
                continue
            rounds = sorted({r["n_labeled"] for r in rs})
            ax.plot(rounds, [np.mean([r[c] for r in rs if r["n_labeled"] == L]) for L in rounds], marker="o", ms=3, label=s)
        ax.set_title(title)
        ax.set_xlabel("labels after the round")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _plot_cluster_sizes(sizes, path, res):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bins = np.unique(np.logspace(0, np.log10(max(2, sizes.max()) + 1), 30).astype(int))
    ax.hist(sizes, bins=bins)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cluster size")
    ax.set_ylabel("clusters")
    ax.set_title(f"{res.dataset}: {sizes.shape[0]:,} clusters, {100 * (sizes == 1).mean():.0f}% singletons (trial 0)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def comparison_table(res, title: str):
    """A rich table of the mean metric per round for each strategy (the demo's view of a run)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("labels", justify="right")
    curves = {s: _by(res.rows, s) for s in res.config.strategies}
    for s in res.config.strategies:
        table.add_column(s, justify="right")
    lab = next(iter(curves.values()))[0]
    for i, L in enumerate(lab):
        table.add_row(f"{int(L):,}", *[f"{np.nanmean(curves[s][1][i]):.3f}" for s in res.config.strategies])
    return table


def comparison_lines(res) -> list[str]:
    """Plain sentences: labels each strategy needs to reach random's final accuracy, against margin."""
    strategies = res.config.strategies
    if "random" not in strategies or "margin" not in strategies:
        return []
    target = float(np.nanmean(_by(res.rows, "random")[1][-1]))
    tab = savings_table(res.rows, strategies, target)
    ratios = ratio_to_margin(res.rows, strategies, target)
    lines = [f"labels to reach random's final {res.metric_name} ({target:.3f}):"]
    for s in strategies:
        if s == "random":
            continue
        L = np.asarray(tab[s]["labels"], dtype=float)
        got = f"{np.nanmean(L):,.0f}" if np.isfinite(L).any() else "not reached"
        rel = "" if s == "margin" else f"  ({fmt_ratio(ratios[s])} margin's)"
        lines.append(f"  {s}: {got}{rel}")
    return lines


def demo_conclusion(recommended: str) -> str:
    """What the demo's two runs show, in plain words."""
    return (
        "On the plain pool margin's batches are already diverse: the paper's cluster-margin trades uncertainty "
        "for diversity it does not need. On the redundant pool margin spends labels on copies of the same "
        f"uncertain items, and spreading the batch pays. The recommended spec ({recommended}) measures, every "
        "round, how many of margin's own batch are copies of a more uncertain candidate (same cluster, embeddings "
        "within cosine distance dup, in the embedding's own unit): at 5% or more it takes the paper's round-robin, below it margin's list with "
        "those copies deferred, which is margin's batch on a clean pool "
        "(BENCHMARKS.md, Label savings at scale)."
    )
