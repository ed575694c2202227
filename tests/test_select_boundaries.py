"""Behaviour of the native selection core (csrc/select.cpp, select_kernels.hpp, rng.hpp) that no
other test pinned down: a mutation audit of csrc/ (one change at a time, rebuilt) found each of
these changes passing the suite: InfoBatch's split at a score exactly at the mean, the saturating
counters of the score table, -inf ties in the last partial 64-score word, a NaN that only the
second thread reads, and the derivation of the counter-based RNG."""

import numpy as np
import pytest

from fastprune._native import core
from fastprune.prune import InfoBatch, ScoreTable
from test_prune_kernels import RANDOM, hooks, selection_sampling

I32_MAX = np.iinfo(np.int32).max


# ---- split_sample / count_below (InfoBatch) --------------------------------------------------


def test_a_score_exactly_at_the_threshold_is_not_below_it():
    """'Below' is score < threshold: a sample at the mean is kept, never pruned (a quantised or
    saturated loss often equals the mean exactly)."""
    scores = np.array([1.0, 2.0, 3.0, 2.0, 0.5], dtype=np.float32)
    seen = np.array([1, 1, 1, 1, -1], dtype=np.int32)  # -1: tried, every loss skipped: below
    assert core.count_below(scores, seen, np.float32(2.0)) == 2
    idx, w = core.split_sample(scores, seen, np.float32(2.0), 1, 2.0, 5, 1, 0)
    below = np.array([0, 4])
    kept = below[selection_sampling(2, 1, hooks.random_u32(5, 1, RANDOM, 0, 2))]
    np.testing.assert_array_equal(idx, np.sort(np.r_[[1, 2, 3], kept]))
    np.testing.assert_array_equal(w, np.where(np.isin(idx, below), np.float32(2.0), np.float32(1.0)))


def test_infobatch_prunes_nothing_when_every_loss_equals_the_mean():
    strategy = InfoBatch(50, 0.5, epochs=10)
    strategy.update(np.arange(50), np.full(50, 0.25, np.float32))
    selection = strategy.select(1)
    assert len(selection) == 50
    np.testing.assert_allclose(selection.weights, 1.0)


# ---- the score table's counters saturate -----------------------------------------------------


def table_with(field, value):
    table = ScoreTable(2, decay=None)
    table.update([0, 1], [1.0, 1.0], [1, 1])
    state = table.state_dict()
    state[field] = np.asarray(state[field]).copy()
    state[field][0] = value
    table.load_state_dict(state)
    return table


def test_seen_saturates_at_int32_max():
    """seen stops at 2^31 - 1: wrapping to a negative count would mark a sample seen 2^31 times
    as 'tried, every loss skipped' (and restart its running mean)."""
    table = table_with("seen", I32_MAX)
    table.update([0, 0], [3.0, 5.0])
    assert table.seen[0] == I32_MAX
    assert table.mean[0] == pytest.approx(1.0, abs=1e-6)  # a running mean over 2^31 losses barely moves


def test_forgets_saturate_at_int32_max():
    table = table_with("forgets", I32_MAX)
    table.update([0, 1], [1.0, 1.0], [0, 0])
    assert table.forgets[0] == I32_MAX and table.forgets[1] == 1


# ---- the last, partial 64-score word (scalar tail of the SIMD passes) ------------------------


@pytest.mark.parametrize("n", [16_394, 20_000 + 63])
def test_minus_inf_ties_in_the_last_partial_word_can_be_chosen(n):
    """A bandit score is -inf for a sample whose every loss was skipped. Keeping nearly all
    samples puts the threshold at -inf, the low end of the sampled bracket; the -inf scores in
    the last word (n % 64 != 0: the scalar tail of the marking pass) are ties like the others."""
    from test_prune_kernels import oracle_top_random

    rng = np.random.default_rng(n)
    scores = rng.random(n).astype(np.float32)
    scores[:10] = -np.inf
    scores[-(n % 64):] = -np.inf
    n_inf = 10 + n % 64
    for seed in range(4):
        k_top = n - n_inf + 5
        got = core.select_top_random(scores, k_top, 0, seed, 1, 0)
        np.testing.assert_array_equal(got, oracle_top_random(scores, k_top, 0, seed, 1, 0))
        got = core.select_top_random(scores, k_top - 10, 7, seed, 1, 0)
        np.testing.assert_array_equal(got, oracle_top_random(scores, k_top - 10, 7, seed, 1, 0))


# ---- two threads: the second half ------------------------------------------------------------


@pytest.mark.parametrize("where", ["second half", "last"])
def test_a_nan_in_the_second_half_is_refused_when_only_the_top_is_selected(where):
    """With k_rand == 0 the one-pass marking is split over two threads (no uniform subset to
    draw meanwhile): a NaN that only the second thread reads must still be refused, not
    silently ranked nowhere."""
    n = 2**20 + 4099
    scores = np.random.default_rng(8).random(n).astype(np.float32)
    i = n - 1 if where == "last" else 3 * n // 4
    scores[i] = np.nan
    for threads in (0, 2):
        with pytest.raises(ValueError, match=rf"scores\[{i}\] is NaN"):
            core.select_top_random(scores, n // 2, 0, 0, 0, 0, threads=threads)


# ---- the counter-based RNG is pinned ----------------------------------------------------------


def _mix64(z):
    m = 2**64 - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_selection_random_numbers_follow_the_documented_derivation():
    """Every selection is a function of (seed, epoch, stream) through csrc/rng.hpp's splitmix64
    chain; the oracles above read the numbers back through a hook, so only a derivation written
    out here pins them: a checkpoint resumed under a rebuilt core selects what it would have."""
    m = 2**64 - 1
    for seed, epoch, stream in [(0, 0, 0), (7, 1, 1), (2**63 + 5, 12, 9)]:
        key = _mix64(((_mix64(_mix64((seed + 0x9E3779B97F4A7C15) & m) ^ epoch)) + stream * 0xD1B54A32D192ED03) & m)
        expected = [_mix64((key + (c + 1) * 0x9E3779B97F4A7C15) & m) >> 32 for c in range(5)]
        np.testing.assert_array_equal(hooks.random_u32(seed, epoch, stream, 0, 5), np.array(expected, np.uint32))
