"""Average-linkage clustering of a pool: exact (small pools) and kNN-graph restricted (large pools)."""
from .flat import cut, threshold_for_mean_size
from .exact import exact_linkage
from .hac import AverageLinkage, choose_method, cluster

__all__ = ["AverageLinkage", "cluster", "cut", "exact_linkage", "choose_method", "threshold_for_mean_size"]
