"""batchal: batch active learning at scale (Cluster-Margin and its baselines)."""
from ._validation import BatchalInputError
from .api import select
from .clustering import AverageLinkage, cluster
from .scores import entropy, least_confidence, margin, multilabel_margin, softmax, uncertainty
from .selectors import Pool, Selector, available_strategies, get_selector, register
from .campaign import Campaign
from .topk import TopK, read_topk, topk_predictions, topk_table
from .similar import similar

__version__ = "0.1.0"

__all__ = [
    "AverageLinkage",
    "BatchalInputError",
    "Campaign",
    "Pool",
    "Selector",
    "TopK",
    "available_strategies",
    "cluster",
    "entropy",
    "get_selector",
    "least_confidence",
    "margin",
    "multilabel_margin",
    "read_topk",
    "register",
    "select",
    "similar",
    "softmax",
    "topk_predictions",
    "topk_table",
    "uncertainty",
]
