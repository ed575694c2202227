"""Where every random number in fastprune comes from (the one list of derivations).

Nothing random carries hidden state from one epoch to the next: each draw is a pure function of
the user's ``seed``, the ``epoch`` and what is being drawn, so a resumed run, another thread count
or another rank of a distributed job draws exactly the same numbers.

* **Selections** (which samples an epoch keeps): the native counter-based RNG (``csrc/rng.hpp``),
  keyed by (strategy seed, epoch, stream), where stream 0 is the whole-data pool and stream
  ``c + 1`` the pool of class ``c`` for class-balanced selection.
* **Class quotas** (class-balanced selection): which classes get the spare samples when the
  quota does not split evenly, :func:`tie_order`, numpy's PCG64 seeded with (strategy seed,
  epoch, stream, a fixed salt), so the spare samples rotate over equal classes from epoch to
  epoch instead of always going to the lowest class ids.
* **Epoch order** (the order the kept samples are visited in): :func:`epoch_permutation`, numpy's
  PCG64 seeded with (loader seed, epoch, a fixed salt); used by ``fastprune.Loader`` and
  ``PrunedSampler`` (their ``seed=``, default 0) and by ``PrunedOrder`` for ffcv's own loader
  (its ``register(seed=)``, default the strategy's seed): the same seed visits a selection in the
  same order in all three.
* **Augmentations**: ``fastprune.loader.transforms.stream_key(seed, epoch, position)`` gives each
  transform of a pipeline its 64-bit stream, and ``uniform(stream, sample_id, k)`` (a splitmix64
  hash, the same mixer as the native RNG) its k-th draw for one sample: independent of which
  samples share its batch.
* **Normalization statistics** (``fastprune train`` without ``--mean/--std``): the samples they
  are computed over, :func:`statistics_sample`, numpy's PCG64 seeded with (a fixed salt).
* **Sharding** across ranks draws nothing: every rank computes the same epoch order and takes
  its own positions of it (``fastprune.prune.distributed.shard``).
"""

from __future__ import annotations

import numpy as np

# Salt of the epoch-order stream, so that it differs from any other use of the same seed.
_ORDER_SALT = 0x5EED
_STATISTICS_SALT = 0x57A7
_TIE_SALT = 0x7135


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The visiting order of an epoch's ``n`` selected samples: a permutation of range(n)."""
    return np.random.default_rng([int(seed), int(epoch), _ORDER_SALT]).permutation(n)


def tie_order(seed: int, epoch: int, stream: int, n: int) -> np.ndarray:
    """The order in which ``n`` groups with equal claims to a spare sample get one: a
    permutation of range(n), another each epoch."""
    return np.random.default_rng([int(seed), int(epoch), int(stream), _TIE_SALT]).permutation(n)


def statistics_sample(n: int, count: int) -> np.ndarray:
    """Sorted ids of ``min(n, count)`` distinct samples of ``n``: the same for every run on a
    store of ``n`` samples, so a resumed run normalizes exactly as the interrupted one."""
    if count >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(n), _STATISTICS_SALT])
    return np.sort(rng.choice(n, count, replace=False)).astype(np.int64)


__all__ = ["epoch_permutation", "statistics_sample", "tie_order"]
