"""One selection config: a TOML file that steers a batch (strategy, balance, thresholds, filters, a query set).

``batchal select --config selection.toml`` (and :func:`load_config` +
:func:`apply_config` from Python) read::

    strategy = "cluster-margin:order=auto:dup=0.01"   # a spec, as --strategy takes
    balance = "uniform"             # or "input", a JSON file of shares, or a table {"0" = 0.5, "3" = 0.5}
    balance_by = "source"           # balance over a metadata column's values instead of predicted classes
    max_margin = 0.3                # score thresholds: only rows at most this certain are candidates
    max_confidence = 0.9            # top-1 probability at most this
    min_entropy = 0.5               # entropy at least this
    metadata = "meta.parquet"       # one row per pool row, read for [filters]
    [filters]
    source = ["web", "camera"]      # a column's value in this list
    language = "en"                 # equal to this value
    width = { min = 64, max = 4096 }
    candidates = "neighbours:50"    # SEALS: only the 50 nearest unlabeled rows of each labeled row
    [similar]                       # candidates: the k unlabeled rows nearest to a query set
    query = "failures.npy"          # query embeddings (or query_rows = "rows.npy", pool rows;
    k = 5000                        #   or query_ids = "ids.txt", item ids: campaigns, or select --ids)
    metric = "cosine"
    [dedup]                         # near-duplicates
    exclude = true                  # keep rows that are not their group's representative out of the batch
    groups = "groups.parquet"       # select: a `batchal dedup` output (a campaign uses its own groups)
    threshold = 0.05                # simulate: the groups' distance for propagate
    propagate = true                # simulate: copy each batch item's label to its group
    [weights]                       # one ranking from several terms (replaces the strategy's score)
    uncertainty = 1.0               # the strategy's own score (margin, entropy, least-confidence)
    similarity = 0.5                # cosine similarity to the nearest [similar] query (needs [similar])
    "metadata.quality" = 0.2        # a numeric metadata column; a negative weight prefers small values

``batchal campaign select --config`` reads the same file; there ``balance_by``,
``[filters]`` and ``metadata.COLUMN`` weights may name columns of the
campaign's own Parquet pool (no ``metadata`` needed), and the resolved config
(:meth:`SelectionConfig.resolved`, the weights included) is stored with the
round. ``batchal simulate --config`` takes the keys that make sense on a
simulated pool (strategy, balance, candidates, ``[dedup]``, and
``[weights] uncertainty`` alone, which ranks as the plain strategy) and
refuses the others, naming them.

``[weights]`` turns several terms into one ranking. Each term is made a rank
percentile in [0, 1] over the candidate rows (the rows every other rule
leaves): the smallest value gets 0, the largest 1, tied values share their
mean rank, so a term's scale and its outliers do not matter. The priority is
the weighted sum of the percentiles, and it replaces the score the strategy
ranks by (:attr:`batchal.Pool.priority`): margin, entropy and
least-confidence take its top ``k``; Cluster-Margin takes its top ``k_m`` as
candidates and, with ``order=margin``, visits them in its order. Everything
else is unchanged: balance quotas, the near-duplicate test, the clusters, the
thresholds (which read the real scores). ``uncertainty`` alone (a positive
weight) gives exactly the plain strategy's batch. The terms:

* ``uncertainty``: the strategy's own score, larger = more uncertain;
* ``similarity``: cosine similarity to the nearest query of ``[similar]``
  (whatever ``[similar] metric`` is), computed over the candidates in tiles of
  rows and queries (no candidates x queries matrix); needs ``[similar]`` and the
  pool's embeddings;
* ``metadata.COLUMN`` (a quoted key ``"metadata.quality"``, or a
  ``[weights.metadata]`` table): a numeric column of ``metadata`` or of the
  campaign's pool; a missing value among the candidates is an error.

A negative weight prefers small values. A zero weight turns its term off (a
metadata column is still checked to exist). Strategies that rank by no score
(random, coreset, BADGE) refuse ``[weights]``, and so does the ray engine (a
priority ranks every row against every other). ``candidates = "neighbours:K"``
narrows the rows after the priority is computed: the percentiles are over the
rows the config's own rules leave.

Every rule narrows the *candidates*: a row outside them is treated as labeled
for this selection (never selected; ``balance = "input"`` then reads the
distribution over the candidates), and the strategy picks its batch among the
rest, so a threshold or a filter never leaves the batch short when enough
rows pass. Paths are relative to the config file. Every error names the file
and the key: an unknown key, a value of the wrong type, a share table not
summing to 1, a column the metadata lacks, a missing file, an unknown weight
term, weights that are all zero, a weighted column that is not numeric.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import BatchalInputError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

__all__ = ["SelectionConfig", "load_config", "apply_config"]

_TOP = {"strategy": str, "balance": (str, dict), "balance_by": str, "max_margin": (int, float), "max_confidence": (int, float),
        "min_entropy": (int, float), "metadata": str, "filters": dict, "similar": dict, "candidates": str,
        "dedup": dict, "weights": dict}
_SIMILAR = {"query": str, "query_rows": str, "query_ids": str, "k": int, "metric": str, "nprobe": int}
_DEDUP = {"exclude": bool, "groups": str, "threshold": (int, float), "metric": str, "propagate": bool}
_QUERY_KEYS = ("query", "query_rows", "query_ids")
_WEIGHT_TERMS = ("uncertainty", "similarity", "metadata.COLUMN")


@dataclass
class SelectionConfig:
    """A validated selection config.

    Attributes
    ----------
    path : Path
        The file it came from (named in every error).
    strategy : str or None
        A strategy spec.
    balance : str, dict or None
        As the ``balance`` spec key (a path already resolved against the file's folder).
    balance_by : str or None
        A metadata column to balance over (read from ``metadata``).
    thresholds : dict
        ``max_margin``, ``max_confidence``, ``min_entropy`` that were given.
    metadata : Path or None
    filters : dict
        Column -> a value, a list of values or ``{"min": .., "max": ..}``.
    similar : dict or None
        ``query``, ``query_rows`` or ``query_ids`` (resolved paths), ``k``, ``metric``, ``nprobe``.
    candidates : str or None
        ``neighbours:K`` (:mod:`batchal.selectors.candidates`).
    dedup : dict
        ``exclude``, ``groups`` (a resolved path), ``threshold``, ``metric``, ``propagate`` that were given.
    weights : dict
        Term (``uncertainty``, ``similarity``, ``metadata.COLUMN``) -> its weight (float), as given.
    """

    path: Path
    strategy: str | None = None
    balance: object = None
    balance_by: str | None = None
    thresholds: dict = field(default_factory=dict)
    metadata: Path | None = None
    filters: dict = field(default_factory=dict)
    similar: dict | None = None
    candidates: str | None = None
    dedup: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    given: tuple = ()

    def err(self, key: str, msg: str) -> BatchalInputError:
        return BatchalInputError(f"--config {self.path}: {key}: {msg}")

    def refuse(self, allowed: tuple, where: str, why: str) -> None:
        """Refuse every key given outside ``allowed`` (dotted ``dedup.x`` and ``weights.x`` keys included),
        naming the first."""
        keys = [*[k for k in self.given if k not in ("dedup", "weights")], *(f"dedup.{k}" for k in self.dedup),
                *(f"weights.{k}" for k in self.weights)]
        bad = [k for k in keys if k not in allowed]
        if bad:
            raise self.err(bad[0], f"{where} does not apply it ({why}); it takes: {', '.join(allowed)}")

    def resolved(self, strategy: str | None = None) -> dict:
        """The config as JSON values, with what its files held where that decides the batch.

        A share table given as a JSON file is inlined and every other file is
        named with its SHA-256, so the stored record reproduces a round even
        after the files change (``campaign select --config`` stores it per round).
        """
        from .io import sha256_file
        from .selectors.balance import check_balance

        def _file(path):
            p = Path(path)
            return {"path": str(p), "sha256": sha256_file(p) if p.is_file() else None}

        out = {"file": _file(self.path), "strategy": strategy if strategy is not None else self.strategy}
        if self.balance is not None:
            bal = check_balance(self.balance, self.balance_by)
            out["balance"] = bal if isinstance(bal, str) else {str(k): v for k, v in bal.items()}
        for key in ("balance_by", "candidates"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.thresholds)
        if self.metadata is not None:
            out["metadata"] = _file(self.metadata)
        if self.filters:
            out["filters"] = self.filters
        if self.similar is not None:
            out["similar"] = {k: (_file(v) if k in _QUERY_KEYS else v) for k, v in self.similar.items()}
        if self.dedup:
            out["dedup"] = {k: (_file(v) if k == "groups" else v) for k, v in self.dedup.items()}
        if self.weights:
            out["weights"] = dict(self.weights)  # the files they read (metadata, query) are named above
        return out


def _type_name(t) -> str:
    names = {str: "a string", dict: "a table", int: "an integer", float: "a number", bool: "true or false"}
    ts = t if isinstance(t, tuple) else (t,)
    if set(ts) == {int, float}:
        return "a number"
    return " or ".join(names[x] for x in ts)


def _check_type(cfg: SelectionConfig, key: str, value, t) -> None:
    ts = t if isinstance(t, tuple) else (t,)
    if (isinstance(value, bool) and bool not in ts) or not isinstance(value, ts):
        raise cfg.err(key, f"must be {_type_name(t)}; got {value!r}")


def load_config(path, *, pool_columns: bool = False) -> SelectionConfig:
    """Read and validate a selection config (TOML).

    Parameters
    ----------
    path : path of the TOML file
    pool_columns : bool
        The pool carries its own columns (a campaign's Parquet pool):
        ``balance_by`` and ``[filters]`` then need no ``metadata`` file.

    Raises
    ------
    BatchalInputError
        Naming the file and the key: unreadable TOML, an unknown key, a wrong
        type, a threshold out of range, a bad balance value or share table, a
        filter without ``metadata``, a ``[similar]`` table without one query, a
        ``[weights]`` table with an unknown term, a weight that is not a finite
        number, every weight zero, ``similarity`` without ``[similar]``, a
        ``metadata.COLUMN`` term without ``metadata``.
    """
    from .selectors.balance import check_balance
    from .selectors.spec import parse_spec

    p = Path(path)
    cfg = SelectionConfig(path=p)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise BatchalInputError(f"--config: no such file {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchalInputError(f"--config {p}: cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BatchalInputError(f"--config {p}: not valid TOML: {exc}") from None
    base = p.parent
    for key, value in raw.items():
        if key not in _TOP:
            raise cfg.err(key, f"unknown key; the config takes: {', '.join(_TOP)}")
        _check_type(cfg, key, value, _TOP[key])
    if "strategy" in raw:
        try:
            spec = parse_spec(raw["strategy"])
        except BatchalInputError as exc:
            raise cfg.err("strategy", str(exc)) from None
        if "balance" in raw and "balance" in spec.params:
            raise cfg.err("balance", "also given in the strategy spec; give it once")
        cfg.strategy = spec.text
    cfg.given = tuple(raw)
    if "balance_by" in raw:
        if "metadata" not in raw and not pool_columns:
            raise cfg.err("balance_by", "needs metadata = \"FILE.parquet\" (one row per pool row) to read the column from")
        if "strategy" in raw and "balance_by" in parse_spec(raw["strategy"]).params:
            raise cfg.err("balance_by", "also given in the strategy spec; give it once")
        cfg.balance_by = raw["balance_by"]
    if "balance" in raw:
        bal = raw["balance"]
        if isinstance(bal, str) and bal not in ("uniform", "input"):
            bal = str(base / bal)
        try:
            check_balance(bal, raw.get("balance_by"))
        except BatchalInputError as exc:
            raise cfg.err("balance", str(exc)) from None
        cfg.balance = bal
    for key in ("max_margin", "max_confidence", "min_entropy"):
        if key in raw:
            v = float(raw[key])
            hi = np.inf if key == "min_entropy" else 1.0
            if not (np.isfinite(v) and 0 <= v <= hi):
                raise cfg.err(key, f"must be a number in [0, {'inf' if hi == np.inf else 1}]; got {raw[key]!r}")
            cfg.thresholds[key] = v
    if "metadata" in raw:
        cfg.metadata = base / raw["metadata"]
    if "filters" in raw:
        if cfg.metadata is None and not pool_columns:
            raise cfg.err("filters", "needs metadata = \"FILE.parquet\" (one row per pool row) to read the columns from")
        for col, cond in raw["filters"].items():
            key = f"filters.{col}"
            if isinstance(cond, dict):
                bad = set(cond) - {"min", "max"}
                if bad or not cond:
                    raise cfg.err(key, "a range takes min and/or max")
                for b, v in cond.items():
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        raise cfg.err(f"{key}.{b}", f"must be a number; got {v!r}")
            elif isinstance(cond, list):
                if not cond:
                    raise cfg.err(key, "an empty list keeps nothing")
            elif not isinstance(cond, (str, int, float, bool)):
                raise cfg.err(key, f"must be a value, a list of values or {{min, max}}; got {cond!r}")
            cfg.filters[col] = cond
    if "similar" in raw:
        sim = raw["similar"]
        for key, value in sim.items():
            if key not in _SIMILAR:
                raise cfg.err(f"similar.{key}", f"unknown key; [similar] takes: {', '.join(_SIMILAR)}")
            _check_type(cfg, f"similar.{key}", value, _SIMILAR[key])
        if sum(k in sim for k in _QUERY_KEYS) != 1:
            raise cfg.err("similar", "give one of query (an embeddings file), query_rows (a file of pool rows) or "
                                     "query_ids (a file of item ids)")
        if "k" not in sim or sim["k"] < 1:
            raise cfg.err("similar.k", "give how many nearest rows are candidates (a positive integer)")
        cfg.similar = {**sim}
        for key in _QUERY_KEYS:
            if key in sim:
                cfg.similar[key] = base / sim[key]
    if "candidates" in raw:
        from .selectors.candidates import parse_candidates

        try:
            parse_candidates(raw["candidates"])
        except BatchalInputError as exc:
            raise cfg.err("candidates", str(exc)) from None
        if "strategy" in raw and "candidates" in parse_spec(raw["strategy"]).params:
            raise cfg.err("candidates", "also given in the strategy spec; give it once")
        cfg.candidates = raw["candidates"]
    if "dedup" in raw:
        for key, value in raw["dedup"].items():
            if key not in _DEDUP:
                raise cfg.err(f"dedup.{key}", f"unknown key; [dedup] takes: {', '.join(_DEDUP)}")
            _check_type(cfg, f"dedup.{key}", value, _DEDUP[key])
        d = dict(raw["dedup"])
        if "threshold" in d and not (np.isfinite(d["threshold"]) and d["threshold"] >= 0):
            raise cfg.err("dedup.threshold", f"must be a finite number >= 0; got {d['threshold']!r}")
        if "metric" in d and d["metric"] not in ("cosine", "euclidean"):
            raise cfg.err("dedup.metric", f"must be cosine or euclidean; got {d['metric']!r}")
        if d.get("propagate") and "threshold" not in d:
            raise cfg.err("dedup.propagate", "needs threshold = T (the groups' largest distance)")
        if "groups" in d:
            d["groups"] = base / d["groups"]
        cfg.dedup = d
    if "weights" in raw:
        cfg.weights = _load_weights(cfg, raw["weights"], has_similar="similar" in raw,
                                    has_metadata=cfg.metadata is not None or pool_columns)
    return cfg


def _load_weights(cfg: SelectionConfig, table: dict, *, has_similar: bool, has_metadata: bool) -> dict:
    """The ``[weights]`` table as term -> float, each term and value checked (errors name ``weights.TERM``)."""
    items = []
    for key, value in table.items():
        if key == "metadata" and isinstance(value, dict):  # [weights.metadata] or metadata.col = w (a TOML dotted key)
            items.extend((f"metadata.{col}", v) for col, v in value.items())
        else:
            items.append((key, value))
    if not items:
        raise cfg.err("weights", f"empty; give at least one term ({', '.join(_WEIGHT_TERMS)}) and its weight")
    out = {}
    for term, w in items:
        key = f"weights.{term}"
        col = term[len("metadata."):] if term.startswith("metadata.") else None
        if term not in ("uncertainty", "similarity") and not col:
            raise cfg.err(key, f"unknown term; [weights] takes: {', '.join(_WEIGHT_TERMS)} "
                               "(a quoted key, e.g. \"metadata.quality\" = 0.2)")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w):
            raise cfg.err(key, f"must be a finite number (the term's weight; negative prefers small values); got {w!r}")
        if term == "similarity" and not has_similar:
            raise cfg.err(key, "needs a [similar] table: the similarity is to its query set "
                               "(query, query_rows or query_ids)")
        if col and not has_metadata:
            raise cfg.err(key, "needs metadata = \"FILE.parquet\" (one row per pool row) to read the column from")
        if term in out:  # "metadata.x" = w and [weights.metadata] x = w name one term
            raise cfg.err(key, "given twice; give each term once")
        out[term] = float(w)
    if not any(out.values()):
        raise cfg.err("weights", "every weight is 0: the ranking would be a tie; give at least one nonzero weight")
    return out


def _columns(cfg: SelectionConfig, pool, key: str):
    """``(column names, where they are named from, read(column) -> (n,) array)``: of ``metadata``,
    else of the pool's own columns; ``key`` is named when there are none."""
    n = pool.n
    if cfg.metadata is not None:
        import pyarrow.parquet as pq

        path = cfg.metadata
        try:
            pf = pq.ParquetFile(path)
        except FileNotFoundError:
            raise cfg.err("metadata", f"no such file {path}") from None
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise cfg.err("metadata", f"{path} is not a readable Parquet file: {exc}") from None
        names, where = pf.schema_arrow.names, f"the metadata {path}"
        if pf.metadata.num_rows != n:
            raise cfg.err("metadata", f"{path} has {pf.metadata.num_rows:,} rows but the pool has {n:,}")
        read = lambda col: pf.read(columns=[col]).column(0).to_numpy(zero_copy_only=False)  # noqa: E731
    elif pool.metadata is not None:
        md = pool.metadata
        names, where = list(md.column_names if hasattr(md, "column_names") else md), "the pool"
        read = lambda col: np.asarray(md[col])  # noqa: E731
    else:
        raise cfg.err(key, "needs metadata = \"FILE.parquet\" (one row per pool row) to read the columns from")
    return names, where, read


def _filter_mask(cfg: SelectionConfig, pool) -> np.ndarray:
    """Rows passing every filter, reading only the filtered columns (of ``metadata``, else of the pool's own)."""
    names, where, read = _columns(cfg, pool, "filters")
    keep = np.ones(pool.n, dtype=bool)
    for col, cond in cfg.filters.items():
        if col not in names:
            raise cfg.err(f"filters.{col}", f"{where} has no column {col!r} (columns: {', '.join(names)})")
        values = read(col)
        if isinstance(cond, dict):
            if not np.issubdtype(values.dtype, np.number):
                raise cfg.err(f"filters.{col}", f"a range needs a numeric column; {col!r} holds {values.dtype}")
            if "min" in cond:
                keep &= values >= cond["min"]
            if "max" in cond:
                keep &= values <= cond["max"]
        else:
            wanted = cond if isinstance(cond, list) else [cond]
            keep &= np.isin(values, np.array(wanted, dtype=object if values.dtype == object else None))
    return keep


def config_spec(cfg: SelectionConfig, strategy: str | None = None):
    """The spec the config runs: its strategy (or ``strategy``, given outside it) with its ``balance``,
    ``balance_by`` and ``candidates`` folded in. Needs no pool, so a caller knows what the spec reads
    before loading anything."""
    from .selectors.spec import StrategySpec, parse_spec

    if strategy is not None and cfg.strategy is not None:
        raise cfg.err("strategy", "also given with --strategy; give it in one place")
    text = strategy if strategy is not None else cfg.strategy
    if text is None:
        raise cfg.err("strategy", "missing: give strategy = \"SPEC\" in the config or --strategy")
    spec = parse_spec(text)
    for key in ("balance", "balance_by", "candidates"):
        value = getattr(cfg, key)
        if value is None:
            continue
        if key in spec.params:
            raise cfg.err(key, "also given in the strategy spec; give it once")
        if not spec.accepts(key):
            raise cfg.err(key, f"{spec.name} takes no balance; balance applies to margin, entropy, "
                               "least-confidence and cluster-margin")
        label = value if isinstance(value, str) else "table"
        spec = StrategySpec(spec.name, {**spec.params, key: value}, f"{spec.text}:{key}={label}")
    if cfg.weights and spec.cls.ranks_by is None:
        raise cfg.err("weights", f"{spec.name} ranks by no score, so there is none to weigh; [weights] applies to "
                                 "margin, entropy, least-confidence and cluster-margin")
    return spec


def apply_config(cfg: SelectionConfig, pool, embeddings=None, *, strategy: str | None = None, resolve_ids=None,
                 duplicates: np.ndarray | None = None):
    """The spec to run and the rows the config rules out.

    Parameters
    ----------
    cfg : SelectionConfig
    pool : batchal.Pool
        The pool as built from the inputs (its ``labeled`` rows stay excluded;
        its ``metadata``, when set, serves ``balance_by`` and ``[filters]``
        without a ``metadata`` file).
    embeddings : array (n, d), optional
        Needed by ``[similar]``.
    strategy : str, optional
        A spec given outside the config (``--strategy``); an error when the config has one too.
    resolve_ids : callable, optional
        Item ids (an array) -> pool rows, ``-1`` for an unknown id: what
        ``similar.query_ids`` needs (a campaign's id index, or ``select --ids``).
    duplicates : bool array (n,), optional
        Rows that are not their near-duplicate group's representative, for
        ``[dedup] exclude`` (a campaign's own groups); without it they are read
        from ``[dedup] groups``.

    Returns
    -------
    (StrategySpec, bool mask of rows to treat as labeled for this selection)

    Notes
    -----
    Sets ``pool.priority``: with ``[weights]``, the weighted sum of the terms'
    rank percentiles over the candidate rows (``-inf`` elsewhere), which the
    strategy then ranks by; without, None.
    """
    spec = config_spec(cfg, strategy)
    if cfg.weights and getattr(pool, "distributed", False):
        raise cfg.err("weights", "the ray engine ranks each block by the strategy's own score; a weighted "
                                 "priority needs every row's terms in one place: use --engine local")
    if cfg.balance is not None and cfg.balance not in ("uniform", "input") and cfg.balance_by is None:
        from .selectors.balance import by_class_name, check_balance

        try:  # a table keyed by class names is checked against the pool's names here, naming the key
            by_class_name(check_balance(cfg.balance), getattr(pool, "class_names", None))
        except BatchalInputError as exc:
            raise cfg.err("balance", str(exc)) from None
    if cfg.balance_by is not None and pool.metadata is None:
        from .io import ParquetColumns

        try:
            pool.metadata = ParquetColumns(cfg.metadata, f"--config {cfg.path}: metadata")
        except BatchalInputError as exc:
            raise cfg.err("metadata", str(exc)) from None
    if cfg.balance_by is not None and cfg.balance_by not in pool.metadata.column_names:
        where = f"the metadata {cfg.metadata}" if cfg.metadata is not None else "the pool"
        raise cfg.err("balance_by", f"{where} has no column {cfg.balance_by!r} "
                                    f"(columns: {', '.join(pool.metadata.column_names)})")
    excluded = pool.labeled_mask.copy()
    th = cfg.thresholds
    if th:
        if not pool.has_predictions:
            raise cfg.err(next(iter(th)), "a score threshold needs predictions (--probs or --logits)")
        if "max_margin" in th:
            excluded |= -pool.uncertainty("margin") > th["max_margin"]
        if "max_confidence" in th:
            excluded |= 1.0 - pool.uncertainty("least-confidence") > th["max_confidence"]
        if "min_entropy" in th:
            excluded |= pool.uncertainty("entropy") < th["min_entropy"]
    if cfg.filters:
        excluded |= ~_filter_mask(cfg, pool)
    if cfg.dedup.get("exclude"):
        excluded |= duplicates if duplicates is not None else _duplicates(cfg, pool.n)
    query = None
    if cfg.similar is not None:
        near, query = _near_query(cfg, pool, embeddings, excluded, resolve_ids)
        excluded |= ~near
    pool.priority = _priority(cfg, spec, pool, embeddings, ~excluded, query) if cfg.weights else None
    return spec, excluded


def rank_percentile(values: np.ndarray) -> np.ndarray:
    """Each value's rank percentile in [0, 1]: the smallest 0, the largest 1, ties sharing their mean rank.

    ``(mean 0-based rank) / (m - 1)``; one value, or all tied, gives 0.5 each.
    O(m log m) for the sort, O(m) memory.
    """
    v = np.asarray(values)
    m = v.shape[0]
    if m == 0:
        return np.empty(0, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    s = v[order]
    new = np.concatenate(([True], s[1:] != s[:-1]))
    starts = np.flatnonzero(new)
    ends = np.concatenate((starts[1:], [m]))
    mean_rank = (starts + ends - 1) / 2.0  # a run of ties [start, end) shares its mean position
    out = np.empty(m, dtype=np.float64)
    out[order] = np.repeat(mean_rank, ends - starts)
    return out / (m - 1) if m > 1 else np.full(1, 0.5)


def _priority(cfg: SelectionConfig, spec, pool, embeddings, cand: np.ndarray, query) -> np.ndarray:
    """The ``[weights]`` priority: the weighted sum of each term's rank percentile over ``cand`` (-inf elsewhere)."""
    rows = np.flatnonzero(cand)
    total = np.zeros(rows.shape[0], dtype=np.float64)
    meta_terms = [t for t in cfg.weights if t.startswith("metadata.")]
    if meta_terms:
        names, where, read = _columns(cfg, pool, f"weights.{meta_terms[0]}")
        for t in meta_terms:  # a zero-weight column is not read, but a typo in its name is still an error
            if t[len("metadata."):] not in names:
                raise cfg.err(f"weights.{t}", f"{where} has no column {t[len('metadata.'):]!r} "
                                              f"(columns: {', '.join(map(str, names))})")
    for term, w in cfg.weights.items():
        if w == 0 or rows.shape[0] == 0:
            continue
        key = f"weights.{term}"
        if term == "uncertainty":
            if not pool.has_predictions:
                raise cfg.err(key, "the strategy's score needs predictions (--probs, --logits or --scores)")
            try:
                values = np.asarray(pool.uncertainty(spec.cls.ranks_by))[rows]
            except BatchalInputError as exc:
                raise cfg.err(key, str(exc)) from None
        elif term == "similarity":
            values = _similarity(cfg, pool, embeddings, rows, query)
        else:
            col = term[len("metadata."):]
            values = np.asarray(read(col))
            if values.ndim != 1 or values.shape[0] != pool.n:
                raise cfg.err(key, f"the column {col!r} has {values.shape[0]:,} values; the pool has {pool.n:,} rows")
            if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
                raise cfg.err(key, f"a weight needs a numeric column; {col!r} in {where} holds {values.dtype}")
            values = values[rows]
            missing = np.flatnonzero(np.isnan(values)) if np.issubdtype(values.dtype, np.floating) else []
            if len(missing):
                raise cfg.err(key, f"{col!r} is missing (NaN or null) at {len(missing):,} candidate rows, e.g. row "
                                   f"{int(rows[missing[0]])}; fill it, or leave those rows out with [filters]")
        total += w * rank_percentile(values)
    out = np.full(pool.n, -np.inf)
    out[rows] = total
    return out


def _similarity(cfg: SelectionConfig, pool, embeddings, rows: np.ndarray, query) -> np.ndarray:
    """The candidates' cosine similarity to their nearest ``[similar]`` query."""
    from .similar import nearest_query_similarity

    q, qr = query
    q = np.asarray(embeddings[np.sort(np.asarray(qr, dtype=np.int64))]) if q is None else np.asarray(q)
    try:
        return nearest_query_similarity(embeddings, rows, q[None, :] if q.ndim == 1 else q)
    except BatchalInputError as exc:
        raise cfg.err("weights.similarity", str(exc)) from None


def _duplicates(cfg: SelectionConfig, n: int) -> np.ndarray:
    """Rows that are not their group's representative, from a ``batchal dedup`` file (``row`` layout)."""
    import pyarrow.parquet as pq

    path = cfg.dedup.get("groups")
    if path is None:
        raise cfg.err("dedup.exclude", "needs groups = \"groups.parquet\" (the output of `batchal dedup`)")
    try:
        t = pq.ParquetFile(path).read(columns=["row", "representative"])
    except FileNotFoundError:
        raise cfg.err("dedup.groups", f"no such file {path}") from None
    except Exception as exc:  # not Parquet, or without the columns
        raise cfg.err("dedup.groups", f"{path} is not a `batchal dedup` output (columns row, group, "
                                      f"representative): {exc}") from None
    row = t.column("row").to_numpy()
    rep = t.column("representative").to_numpy()
    if row.shape[0] != n or not np.array_equal(row, np.arange(n)):
        raise cfg.err("dedup.groups", f"{path} holds {row.shape[0]:,} rows; the pool has {n:,} (one per pool row)")
    return rep != row


def _near_query(cfg: SelectionConfig, pool, embeddings, excluded: np.ndarray, resolve_ids):
    """``(near, (query, query_rows))``: bool (n,), the ``[similar]`` table's ``k`` rows nearest to its
    query among rows not yet excluded; and the query as read (embeddings, or pool rows; one is None)."""
    from .io import load_array
    from .similar import similar

    if embeddings is None:
        raise cfg.err("similar", "needs the pool's embeddings (--embeddings)")
    sim = cfg.similar
    try:
        q = load_array(sim["query"], name="similar.query") if "query" in sim else None
        qr = load_array(sim["query_rows"], name="similar.query_rows") if "query_rows" in sim else None
        if "query_ids" in sim:
            qr = _query_id_rows(cfg, load_array(sim["query_ids"], name="similar.query_ids", text=True), resolve_ids)
        left = excluded.copy()
        if qr is not None and np.asarray(qr).ndim == 1 and np.issubdtype(np.asarray(qr).dtype, np.integer):
            left[np.asarray(qr)[(qr >= 0) & (qr < pool.n)]] = True  # query rows are never candidates
        # fewer rows than k pass the other rules: all of them stay candidates
        k = min(int(sim["k"]), int((~left).sum()))
        if k < 1:
            raise BatchalInputError("no row is left to search: every row is labeled or ruled out")
        rows = similar(embeddings, q, k, query_rows=qr, metric=sim.get("metric", "cosine"),
                       labeled=excluded, nprobe=sim.get("nprobe", 16))
    except BatchalInputError as exc:
        if str(exc).startswith(f"--config {cfg.path}"):
            raise
        raise cfg.err("similar", str(exc)) from None
    near = np.zeros(pool.n, dtype=bool)
    near[rows] = True
    return near, (q, qr)


def _query_id_rows(cfg: SelectionConfig, ids, resolve_ids) -> np.ndarray:
    if resolve_ids is None:
        raise cfg.err("similar.query_ids", "item ids need the pool's ids (select --ids, or a campaign)")
    ids = np.asarray(ids).ravel()
    rows = np.asarray(resolve_ids(ids), dtype=np.int64)
    unknown = np.flatnonzero(rows < 0)
    if unknown.size:
        raise cfg.err("similar.query_ids", f"{unknown.size:,} ids are not in the pool, e.g. {ids[unknown[0]]!r}")
    return rows


#: What ``simulate --config`` applies: the rest needs data a simulated pool has not (metadata, item ids, ...).
#: ``weights.uncertainty`` alone ranks exactly as the plain strategy, so a campaign's config runs unchanged.
SIMULATE_KEYS = ("strategy", "balance", "candidates", "dedup.threshold", "dedup.metric", "dedup.propagate",
                 "weights.uncertainty")


def simulation_settings(cfg: SelectionConfig) -> dict:
    """What a config sets in a simulation: ``strategy`` (a spec text, or None) and ``propagate``
    (the groups' threshold, or None) with ``propagate_metric``.

    Raises
    ------
    BatchalInputError
        Naming the file and the first key the simulator does not apply, or an
        inline share table (a simulated strategy is a spec text; give the
        shares as a JSON file). ``[weights]`` may hold ``uncertainty`` alone,
        positive, with the config's strategy: it ranks as the plain strategy,
        which is what runs; every other term is refused.
    """
    cfg.refuse(SIMULATE_KEYS, "simulate", "a simulated pool has no metadata, item ids or query files")
    if isinstance(cfg.balance, dict):
        raise cfg.err("balance", "simulate takes the shares as a JSON file (balance = \"shares.json\"); "
                                 "a simulated strategy is a spec text")
    if cfg.weights:
        # only uncertainty is left (refuse above): a positive weight is the plain ranking, which the
        # simulated spec text runs; a negative one would reverse it
        if cfg.weights["uncertainty"] <= 0:
            raise cfg.err("weights.uncertainty", "simulate runs the strategy's own ranking, which a weight of "
                                                 f"{cfg.weights['uncertainty']:g} would reverse; give a positive weight")
        if cfg.strategy is None:
            raise cfg.err("weights", "applies to the config's strategy; give strategy = \"SPEC\" "
                                     "(--strategies run unweighted)")
    out = {"strategy": None, "propagate": None, "propagate_metric": cfg.dedup.get("metric", "cosine")}
    if cfg.strategy is not None or cfg.balance is not None or cfg.candidates is not None or cfg.weights:
        out["strategy"] = config_spec(cfg).text
    if cfg.dedup.get("propagate"):
        out["propagate"] = float(cfg.dedup["threshold"])
    return out
