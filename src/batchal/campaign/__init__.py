"""Campaigns: active learning across rounds, persistent and crash-safe (``batchal campaign ...``).

A campaign is a directory: a SQLite database (WAL, synchronous=FULL, one
transaction per command) holding every item's state, and memory-mapped arrays
beside it. See :class:`Campaign`.
"""
from .campaign import Batch, Campaign
from .store import CampaignBusyError

__all__ = ["Batch", "Campaign", "CampaignBusyError"]
