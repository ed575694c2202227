"""Selections from any sampler: what ``fastprune.Loader`` and ``PrunedSampler`` accept.

A sampler is any object with ``select(epoch)`` returning a ``Selection`` (``indices``,
``weights``), an ``(indices, weights)`` pair or the indices alone, and optionally
``num_selected(epoch)``; both consumers check what it gives the same way, before any batch.
"""

from __future__ import annotations

import numpy as np


def num_selected(sampler, epoch: int) -> int:
    """How many samples ``sampler`` selects for ``epoch`` (its own count where it keeps one)."""
    if hasattr(sampler, "num_selected"):
        return int(sampler.num_selected(epoch))
    return len(selection_arrays(sampler.select(epoch))[0])


def selection_arrays(selection):
    """(indices, weights or None) of whatever ``select`` returned."""
    if hasattr(selection, "indices"):
        return selection.indices, getattr(selection, "weights", None)
    if isinstance(selection, tuple) and len(selection) == 2:
        return selection
    return selection, None


def checked_selection(sampler, epoch: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``sampler.select(epoch)`` as int64 ids within [0, num_samples) and finite float32 weights >= 0
    (ones where it gives none), agreeing with its ``num_selected``; else an error naming the call."""
    indices, weights = selection_arrays(sampler.select(epoch))
    indices = np.asarray(indices)
    if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
        raise ValueError(f"sampler.select({epoch}) must return 1-D integer indices, got {indices.dtype} "
                         f"{indices.shape}")
    indices = indices.astype(np.int64, copy=False)
    if indices.size and (indices.min() < 0 or indices.max() >= num_samples):
        raise IndexError(f"sampler.select({epoch}) returned sample ids outside [0, {num_samples})")
    weights = np.ones(len(indices), np.float32) if weights is None else np.asarray(weights, np.float32)
    if weights.shape != indices.shape:
        raise ValueError(f"sampler.select({epoch}): {len(weights)} weights for {len(indices)} indices")
    bad = np.flatnonzero(~(weights >= 0) | np.isinf(weights))  # NaN, negative, infinite
    if bad.size:  # it would reach the weighted loss of every batch holding it
        raise ValueError(f"sampler.select({epoch}) gave sample {indices[bad[0]]} the weight {weights[bad[0]]} "
                         f"({bad.size} weights are NaN, negative or infinite)")
    if hasattr(sampler, "num_selected") and sampler.num_selected(epoch) != len(indices):
        raise ValueError(f"sampler.num_selected({epoch}) = {sampler.num_selected(epoch)} but select({epoch}) "
                         f"returned {len(indices)} indices; len() would be wrong")
    return indices, weights
