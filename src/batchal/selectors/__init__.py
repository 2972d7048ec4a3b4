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

#: The spec the README recommends when the pool's redundancy is unknown: margin's list in which copies of
#: a more uncertain candidate (same cluster, embeddings within cosine distance 0.01) wait for a later pass.
#: Until issue 20 it judged near-duplicates on the predictions (``tol=0.1``), which also deferred distinct
#: items on many-class and large pools (BENCHMARKS.md, *Label savings at scale*).
RECOMMENDED = "cluster-margin:order=margin:dup=0.01"

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
