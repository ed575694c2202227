"""The dynamic strategies: Full, UniformRandom, EpsilonGreedy, UCB, InfoBatch.

Policy (how many, from where) is here; the O(N) work is in the native core.
"""

from __future__ import annotations

import math

import numpy as np

from .._native import core
from .._args import check_fraction, check_real
from .base import Fixed, InfoBatchOptions, Selection, Strategy, StrategyOptions, Unpack, _quotas


def _sub(array: np.ndarray, pool: np.ndarray | None) -> np.ndarray:
    return array if pool is None else np.ascontiguousarray(array[pool])


def _pool_size(strategy: Strategy, pool: np.ndarray | None) -> int:
    return strategy.table.num_samples if pool is None else len(pool)  # the shard's size when sharded


class Full(Strategy):
    """Every sample, every epoch, weight 1 (the baseline and the 'no pruning' switch)."""

    shardable = True
    uses_scores = False

    def __init__(self, num_samples: int, **options: Unpack[StrategyOptions]):
        super().__init__(num_samples, 1.0, **options)

    def is_full_epoch(self, epoch: int) -> bool:
        return True


class UniformRandom(Strategy):
    """A fresh uniform random subset of ``keep * N`` samples every epoch (weights 1).

    Raju et al. find even this beats static pruning at aggressive rates. Scores are still
    recorded by update(), so the table can be inspected, but they do not affect the choice.
    """

    shardable = True
    uses_scores = False

    def __init__(self, num_samples: int, keep: float = 0.5, **options: Unpack[StrategyOptions]):
        # 0.5 as every other pruning strategy: the base class's 1.0 would silently prune nothing
        super().__init__(num_samples, keep, **options)

    def _choose(self, context, epoch, pool, quota, stream):
        indices = core.sample_uniform(_pool_size(self, pool), quota, self.seed, epoch, stream)
        return Selection.unweighted(indices)


class _TopScores(Strategy):
    """Keeps the highest scores, optionally mixed with a uniform part (k_rand of the quota).
    By default the scores are the table's bandit score column, kept current by every update, so a
    selection reads one array and computes no scores; a 16-bit table's column is read as stored
    (its bits), without a float32 copy."""

    shardable = True

    def _scores(self) -> np.ndarray:
        return self.table.score

    def _random_part(self, quota: int) -> int:
        return 0

    def _random_parts(self, quotas, epoch):
        """The uniform part of the whole quota, split over the class pools like the quota itself:
        rounded per class, eps·5 is 0 for classes of quota 5, and 100 such classes had lost the
        uniform part (and the refresh of stale scores it exists for) entirely."""
        total = self._random_part(int(quotas.sum()))
        if total == 0:
            return np.zeros_like(quotas)
        return _quotas(quotas, total, self._tie_order(epoch, 1))

    def _prepare(self, epoch):
        """(scores, kind): the bandit score column as stored (kind: a 16-bit table's dtype, else
        None), or the float32 scores of a strategy that computes its own (Forgetting)."""
        if self._bandit_score() is not None:
            return self.table.raw("score")
        return self._scores(), None

    def _choose(self, context, epoch, pool, quota, stream, k_rand=None):
        scores, kind = context
        k_rand = self._random_part(quota) if k_rand is None else k_rand
        ranked = _sub(scores, pool)  # a class pool's gathered copy: of the bits when 16-bit (2 B/sample)
        args = (quota - k_rand, k_rand, self.seed, epoch, stream)
        if kind is None:
            indices = core.select_top_random(ranked, *args)
        else:
            indices = core.select_top_random_half(ranked, kind, *args)
        return Selection.unweighted(indices)


class EpsilonGreedy(_TopScores):
    """Raju et al.'s epsilon-greedy bandit: score = EMA of the sample's loss; keep the
    ``(1-eps)·k`` highest scores plus ``eps·k`` drawn uniformly from the rest.

    Defaults: ``eps=0.2`` — with keep=0.5 that re-visits 10% of the data at random each epoch,
    enough to refresh stale scores of samples the greedy part has dropped (their losses drift as
    the model trains) while keeping 80% of the budget on the hardest samples. ``decay=0.7``
    (EMA weight of the old value): a sample is updated only when selected, roughly every
    1/keep epochs, so a slow EMA (0.9+) would rank by losses many epochs old; 0.7 halves an old
    loss's weight after two visits and still smooths augmentation noise.
    Unseen samples score +inf, so every sample is tried once first (ties broken at random).
    """

    eps: Fixed[float] = Fixed()

    def __init__(self, num_samples: int, keep: float = 0.5, eps: float = 0.2, **options: Unpack[StrategyOptions]):
        eps = check_real(eps, "eps")
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1], got {eps!r}")
        self.eps = float(eps)
        super().__init__(num_samples, keep, **options)

    def config(self):
        return {**super().config(), "eps": self.eps}

    def _bandit_score(self):
        return 0.0, True  # the EMA loss (+inf while unseen): no variance needed

    def _random_part(self, quota):
        return int(round(self.eps * quota))


class UCB(_TopScores):
    """Raju et al.'s UCB bandit: keep the top k of ``mean + c·bonus``, where mean is the EMA of
    the loss and bonus its EMA standard deviation (``bonus="std"``) or variance (``"var"``).

    Defaults: ``bonus="std"`` because the std has the loss's own unit, so ``c`` does not depend
    on the loss scale; ``c=1.0`` then means "one standard deviation of optimism", the usual UCB
    scale; ``decay=0.7`` as in :class:`EpsilonGreedy` (the variance needs a few updates of memory
    to mean anything, which a decay of 0.5 or less would not give). Unseen samples score +inf.
    """

    table_fields = ("var", "correct")
    c: Fixed[float] = Fixed()
    bonus: Fixed[str] = Fixed()

    def __init__(self, num_samples: int, keep: float = 0.5, c: float = 1.0, bonus: str = "std",
                 **options: Unpack[StrategyOptions]):
        if bonus not in ("std", "var"):
            raise ValueError(f"bonus must be 'std' or 'var', got {bonus!r}")
        c = check_real(c, "c")
        if not math.isfinite(c) or c < 0:
            raise ValueError(f"c must be a finite number >= 0, got {c!r}")
        self.c, self.bonus = float(c), bonus
        super().__init__(num_samples, keep, **options)

    def config(self):
        return {**super().config(), "c": self.c, "bonus": self.bonus}

    def _bandit_score(self):
        return self.c, self.bonus == "std"


def _pruned_epochs(delta: float, epochs: int) -> int:
    """ceil(delta·epochs), the epochs InfoBatch prunes, as the decimal delta the user wrote means
    it: 0.28 * 25 is 7.000000000000001 in floating point, whose ceil would prune an 8th epoch."""
    return math.ceil(round(delta * epochs, 9))


class InfoBatch(Strategy):
    """InfoBatch (Qin et al., ICLR 2024) with a settable overall kept fraction.

    Each pruned epoch keeps every sample whose latest loss is >= the mean loss (and every sample
    not yet seen), and a uniform random subset of exactly ``k_below`` of the ``n_below``
    below-mean samples, each up-weighted by ``n_below / k_below`` — the inverse of its inclusion
    probability, so the expected weighted loss sum equals the full-data sum.

    How ``k_below`` is set:

    * ``keep`` given (overall fraction of the N samples, what InfoBatch's users ask for):
      ``k_below = round(keep·N) - n_above``, i.e. the below-mean keep probability is
      ``p = (keep - f_above) / f_below`` with ``f_above``/``f_below`` the fractions at/above and
      below the mean. ``p`` is never below ``min_below_keep`` (default 0.1, so the weights stay
      at most 10): where the target leaves a smaller share of the below-mean samples, or none
      (more than ``keep·N`` samples at/above the mean), the epoch is larger than the target.
    * ``keep=None``: the paper's own rule, ``p = 1 - prune`` (``prune=0.5`` by default).

    ``prune`` applies with ``keep=None`` only and ``min_below_keep`` with a ``keep`` only; the
    other mode refuses them.

    The final ``epochs - ceil(delta·epochs)`` epochs use full data (``delta=0.875``, the paper's
    default, "annealing"). ``decay=0.0`` by default: InfoBatch scores by the latest loss.
    """

    default_decay = 0.0
    target: Fixed[float | None] = Fixed()  # keep=None: the paper's rule alone
    delta: Fixed[float] = Fixed()
    prune: Fixed[float] = Fixed()
    min_below_keep: Fixed[float] = Fixed()
    #: Its epoch sizes follow the scores (how many are at/above the mean): a schedule sized at the
    #: start of a run cannot know them (fit warns unless the schedule re-plans).
    sizes_follow_scores = True

    def __init__(self, num_samples: int, keep: float | None = 0.5, *, epochs: int, delta: float = 0.875,
                 prune: float | None = None, min_below_keep: float | None = None,
                 **options: Unpack[InfoBatchOptions]):
        if "final_full_epochs" in options:
            raise ValueError("InfoBatch sets its final full-data epochs from delta; do not pass final_full_epochs")
        # Each mode has its own knob; the other's was accepted and ignored (a port of InfoBatch's
        # prune_ratio writing InfoBatch(n, epochs=E, prune=0.3) pruned to the default keep=0.5)
        if keep is not None and prune is not None:
            raise ValueError(f"InfoBatch: prune={prune!r} sets the paper's rule, which applies with keep=None; with "
                             f"keep={keep!r} the kept fraction decides: pass keep=None, prune=... or keep alone")
        if keep is None and min_below_keep is not None:
            raise ValueError(f"InfoBatch: min_below_keep={min_below_keep!r} bounds the below-mean share a keep= "
                             "leaves; with keep=None the paper's rule (prune=) decides it")
        prune = 0.5 if prune is None else prune
        min_below_keep = 0.1 if min_below_keep is None else min_below_keep
        delta, prune = check_real(delta, "delta"), check_real(prune, "prune")
        if not 0.0 < delta <= 1.0:
            raise ValueError(f"delta must be in (0, 1], got {delta!r}")
        if not 0.0 <= prune < 1.0:
            raise ValueError(f"prune must be in [0, 1), got {prune!r}")
        epochs = self._positive(epochs, "epochs")  # None or -3 named as epochs, not final_full_epochs
        full = epochs - _pruned_epochs(delta, epochs)
        super().__init__(num_samples, 1.0 if keep is None else keep, epochs=epochs, final_full_epochs=full, **options)
        if keep is None and any(fraction != 1.0 for fraction in self.keep_schedule or ()):
            raise ValueError(f"InfoBatch(keep=None) prunes by the paper's rule (prune={prune}), which "
                             f"no kept fraction changes: keep_schedule={list(self.keep_schedule)} may hold only "
                             f"1.0 (a full epoch) there; pass keep=<fraction> to schedule kept fractions")
        self.target = None if keep is None else self.keep  # a float: numpy's would not load with weights_only
        self.delta, self.prune = float(delta), float(prune)
        self.min_below_keep = check_fraction(min_below_keep, "min_below_keep")

    def config(self):
        return {**super().config(), "target": self.target, "delta": self.delta, "prune": self.prune,
                "min_below_keep": self.min_below_keep}

    def _inert_settings(self):
        # a checkpoint of a run that passed the other mode's knob (accepted and ignored before it
        # was refused) resumes: the knob never acted
        return {"prune"} if self.target is not None else {"min_below_keep"}

    def _prepare(self, epoch):
        mean, _ = core.masked_mean(self.table.mean, self.table.seen)
        return float(np.float32(mean))

    def _k_below(self, pool_size: int, quota: int, n_below: int) -> int:
        if n_below == 0:
            return 0
        if self.target is None:
            k = round((1.0 - self.prune) * n_below)
        else:
            k = quota - (pool_size - n_below)
            k = max(k, math.ceil(self.min_below_keep * n_below))
        return int(min(max(k, 1), n_below))

    def _split(self, threshold, pool):
        scores, seen = _sub(self.table.mean, pool), _sub(self.table.seen, pool)
        return scores, seen, core.count_below(scores, seen, threshold)

    def _choose(self, threshold, epoch, pool, quota, stream):
        scores, seen, n_below = self._split(threshold, pool)
        k_below = self._k_below(len(scores), quota, n_below)
        weight = np.float32(n_below / k_below) if k_below else np.float32(1.0)
        indices, weights = core.split_sample(scores, seen, threshold, k_below, float(weight),
                                             self.seed, epoch, stream)
        return Selection(indices, weights)

    def _count_pruned(self, epoch):
        threshold = self._prepare(epoch)
        pools = [None] if self._pools is None else self._pools
        quotas = [self._quota(epoch)] if self._pools is None else self._pool_quotas(epoch)
        total = 0
        for pool, quota in zip(pools, quotas):
            scores, _, n_below = self._split(threshold, pool)
            total += len(scores) - n_below + self._k_below(len(scores), int(quota), n_below)
        return total
