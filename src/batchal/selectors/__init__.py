"""Batch selectors, registered by name.

Importing this package registers every built-in strategy: ``random``,
``margin``, ``entropy``, ``least-confidence``, ``coreset``, ``badge`` and
``cluster-margin``.
"""
from .base import REGISTRY, Pool, Selector, available_strategies, register
from .uncertainty import EntropySelector, LeastConfidenceSelector, MarginSelector, RandomSelector
from .coreset import CoresetSelector
from .badge import BadgeSelector
from .cluster_margin import ClusterMarginSelector, candidate_count, round_robin
from .spec import StrategySpec, get_selector, parse_spec, split_specs

#: The spec the README recommends when the pool's redundancy is unknown (BENCHMARKS.md, *Label efficiency*).
RECOMMENDED = "cluster-margin:order=margin:tol=0.1"

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
    "round_robin",
    "candidate_count",
    "StrategySpec",
    "parse_spec",
    "split_specs",
]
