"""The simulator's datasets by name: the built-in ones (:mod:`.datasets`) and the generated pools (:mod:`.pools`).

Kept apart from both so that imports run one way: pools build on datasets, and
this catalogue names them all.
"""
from __future__ import annotations

from .._validation import BatchalInputError
from .datasets import Dataset, load_blobs, load_digits, load_fashion_mnist, load_multilabel, subsample_pool
from .pools import POOLS, load_mnist1d, load_pool

DATASETS = ("digits", "fashion-mnist", "mnist1d", "blobs", "multilabel", *POOLS)


def load_dataset(name: str, *, size: int | None = None, seed: int = 0, progress: bool = False) -> Dataset:
    """Load a built-in dataset by name (``digits``, ``fashion-mnist``, ``mnist1d``, ``blobs``, ``multilabel``,
    or one of the generated pools of :mod:`batchal.simulate.pools`: ``mnist1d-lt``, ``fmnist-web``,
    ``fmnist-web-lt``, ``manyclass``, ``multilabel-vocab``).

    ``size`` sets the pool size of generated datasets (mnist1d, blobs, multilabel)
    and draws a stratified random subset of that many pool rows from the fixed
    ones (digits, fashion-mnist); the test split is kept whole.
    """
    if name == "digits":
        return subsample_pool(load_digits(seed), size, seed)
    if name == "fashion-mnist":
        return subsample_pool(load_fashion_mnist(), size, seed)
    makers = {"mnist1d": lambda: load_mnist1d(n=size or 100_000, seed=seed, progress=progress),
              "blobs": lambda: load_blobs(n=size or 20_000, seed=seed),
              "multilabel": lambda: load_multilabel(n=size or 6_000, seed=seed)}
    if name in POOLS:
        return load_pool(name, size, seed, progress)
    if name in makers:
        try:
            return makers[name]()
        except BatchalInputError:
            raise
        except ValueError as exc:  # scikit-learn's stratified split of a pool too small for its classes
            raise BatchalInputError(f"--size {size}: too small a pool for {name} ({exc})") from None
    raise BatchalInputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or pass --data FILE.npz")
