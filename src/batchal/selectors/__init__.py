"""Batch selectors, registered by name.

Importing this package registers every built-in strategy: ``random``,
``margin``, ``entropy``, ``least-confidence``, ``coreset``, ``badge``, ``cluster-margin`` and
``typiclust``.
"""
from .base import REGISTRY, Pool, Selector, available_strategies, register
from .uncertainty import EntropySelector, LeastConfidenceSelector, MarginSelector, RandomSelector
from .coreset import CoresetSelector
from .badge import BadgeSelector
from .cluster_margin import ClusterMarginSelector, candidate_count, round_robin
from .typiclust import TypiclustSelector
from .spec import StrategySpec, get_selector, parse_spec, split_specs

#: The spec the README recommends when the pool's redundancy is unknown. Every round it measures how many
#: of margin's own batch are near-duplicates (same cluster, embeddings within cosine distance 0.01 in the
#: embedding's unit: times min(1, median distance of random row pairs), so a ReLU layer's cone counts) of a more
#: uncertain candidate: at 5% or more (16-99% on the web-like pools) the pool is redundant and the batch is
#: the paper's round-robin; below (at most 0.03% on every 1M pool without copies) it is margin's list with such
#: copies deferred to a later pass, which without copies is margin's batch. Before (2026-12-05 to 12-06) it
#: was that list alone (``order=margin:dup=0.01``), which lost to margin on the web-like pools' clean test;
#: until issue 20, near-duplicates judged on the predictions (``tol=0.1``) (BENCHMARKS.md, *Label savings at scale*).
RECOMMENDED = "cluster-margin:order=auto:dup=0.01"

__all__ = [
    "REGISTRY",
    "RECOMMENDED",
    "Pool",
    "Selector",
    "available_strategies",
    "get_selector",
    "register",
    "RandomSelector",
    "MarginSelector",
    "EntropySelector",
    "LeastConfidenceSelector",
    "CoresetSelector",
    "BadgeSelector",
    "ClusterMarginSelector",
    "TypiclustSelector",
    "round_robin",
    "candidate_count",
    "StrategySpec",
    "parse_spec",
    "split_specs",
]
