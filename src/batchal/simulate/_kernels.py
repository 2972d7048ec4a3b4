"""Compiled kernels of the simulator's models (numba; kept apart from the model classes).

Contract: 2-d C-contiguous arrays; logits float32, labels int8 (0/1).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, fastmath=False, cache=True)
def bce_residual(Z, Y):
    """Binary cross-entropy with logits, summed, and the residual in place.

    Parameters
    ----------
    Z : float32 array (m, C), C-contiguous
        Logits; overwritten with ``sigmoid(Z) - Y``.
    Y : int8 array (m, C), C-contiguous
        0/1 labels.

    Returns
    -------
    float
        ``sum(max(z, 0) - z y + log(1 + exp(-|z|)))`` in float64.

    Notes
    -----
    Hand-written because numpy needs about ten passes over the (m, C) block for
    the loss and the residual (two ``exp``, a ``log1p``, temporaries); here one
    ``exp`` per entry in one pass, rows in parallel. With 1,000 classes these
    passes, not the two matrix products, were the cost of a multi-label fit.
    """
    m, C = Z.shape
    part = np.zeros(m, dtype=np.float64)
    for i in numba.prange(m):
        s = 0.0
        for c in range(C):
            z = np.float64(Z[i, c])
            y = np.float64(Y[i, c])
            e = np.exp(-abs(z))
            s += max(z, 0.0) - z * y + np.log1p(e)
            p = 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
            Z[i, c] = np.float32(p - y)
        part[i] = s
    return part.sum()
