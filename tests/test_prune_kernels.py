"""The native selection kernels against slow numpy/Python oracles."""

import numpy as np
import pytest

from fastprune._native import core

hooks = core.testing  # test-only entry points of the native core

# Derived RNG streams of a kernel call with stream s (see csrc/select.cpp).
TIE, RANDOM = 0, 1


def chi2_critical(df: int, z: float = 3.719) -> float:
    """Upper chi-square quantile (Wilson-Hilferty); z=3.719 is the 1e-4 tail."""
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def selection_sampling(total, want, u32):
    """Knuth's Algorithm S, written plainly: which of `total` items (in order) are taken.
    u32[t] / 2^32 is the uniform of item t; the kernel compares u < need/remaining exactly so."""
    taken, need = [], want
    for t in range(total):
        if need == 0:
            break
        if int(u32[t]) * (total - t) < need << 32:
            taken.append(t)
            need -= 1
    return taken


def floyd_subset(total, want, seed, epoch, stream):
    """Floyd's algorithm, written plainly: the ascending `want`-subset of range(total) that the
    kernels choose with RNG stream `stream`. For i < pick, j = total - pick + i, draw t uniform in
    [0, j] from counter i (Lemire's multiply-shift on the 32-bit uniform, a rejected draw retrying
    with counter + 2^32) and choose t, or j if t is already chosen. pick = want if 2*want <= total,
    else total - want items are chosen to be left out."""
    pick = want if 2 * want <= total else total - want
    u = hooks.random_u32(seed, epoch, stream, 0, pick)
    chosen = set()
    for i in range(pick):
        j = total - pick + i
        r = j + 1
        x, counter = int(u[i]), i
        while (x * r) % 2**32 < (2**32 - r) % r:
            counter += 2**32
            x = int(hooks.random_u32(seed, epoch, stream, counter, 1)[0])
        t = (x * r) >> 32
        chosen.add(j if t in chosen else t)
    mask = np.zeros(total, dtype=bool)
    mask[list(chosen)] = True
    return np.flatnonzero(mask if pick == want else ~mask)


def oracle_top_random(scores, k_top, k_rand, seed, epoch, stream):
    scores = np.asarray(scores, dtype=np.float32)
    n = len(scores)
    top = np.zeros(n, dtype=bool)
    if k_top:
        threshold = np.sort(scores)[::-1][k_top - 1]
        top = scores > threshold
        ties = np.flatnonzero(scores == threshold)
        top[ties[floyd_subset(len(ties), k_top - top.sum(), seed, epoch, 4 * stream + TIE)]] = True
    rest = np.flatnonzero(~top)
    rand = rest[floyd_subset(len(rest), k_rand, seed, epoch, 4 * stream + RANDOM)]
    chosen = np.concatenate([np.flatnonzero(top), rand])
    return np.sort(chosen)


@pytest.mark.parametrize("n", [1, 7, 1000, 200_003])
def test_top_k_equals_sort_for_distinct_scores(n):
    rng = np.random.default_rng(n)
    scores = rng.standard_normal(n).astype(np.float32) * 10.0 ** rng.integers(-30, 30, n)
    for k in sorted({0, 1, n // 3, n - 1, n}):
        got = core.select_top_random(scores, k, 0, 0, 0, 0)
        expected = np.sort(np.argsort(-scores, kind="stable")[:k])
        np.testing.assert_array_equal(got, expected)


def test_special_values_order_like_floats():
    scores = np.array([np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 3.4e38, -3.4e38], dtype=np.float32)
    for k in range(len(scores) + 1):
        got = core.select_top_random(scores, k, 0, 5, 1, 0)
        np.testing.assert_array_equal(got, oracle_top_random(scores, k, 0, 5, 1, 0))


@pytest.mark.parametrize("seed", range(6))
def test_matches_oracle_with_ties_and_random_part(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    scores = rng.integers(0, 5, n).astype(np.float32)  # heavy ties at the threshold
    k_top = int(rng.integers(0, n + 1))
    k_rand = int(rng.integers(0, n - k_top + 1))
    got = core.select_top_random(scores, k_top, k_rand, seed, 3, 2)
    np.testing.assert_array_equal(got, oracle_top_random(scores, k_top, k_rand, seed, 3, 2))
    assert got.dtype == np.int64 and len(got) == k_top + k_rand
    assert np.all(np.diff(got) > 0)  # ascending, hence no duplicates


def _large_cases():
    """Score arrays above the kernel's small-n cutoff (16384), shaped to hit every path of the
    sampled threshold bracket: inside it, at either end (heavy ties), and the exact fallback."""
    rng = np.random.default_rng(11)
    n = 60_001
    half_inf = rng.random(n).astype(np.float32)
    half_inf[rng.random(n) < 0.5] = np.inf  # UCB after one epoch: unseen samples score +inf
    n_inf = int(np.isinf(half_inf).sum())
    spike = rng.random(n).astype(np.float32)
    spike[: n // 50] = 7.0  # a narrow cluster of ties that the sample may straddle
    return [
        ("uniform", rng.random(n).astype(np.float32), [1, 17, n // 3, n // 2, n - 1, n]),
        ("wide", (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32), [n // 5, n // 2]),
        ("five values", rng.integers(0, 5, n).astype(np.float32), [1, n // 5, n // 2, 4 * n // 5]),
        ("all equal", np.full(n, np.inf, dtype=np.float32), [1, n // 2, n]),
        ("half inf", half_inf, [n_inf - 1, n_inf, n_inf + 1, n // 3]),
        ("sorted", np.arange(n, dtype=np.float32), [n // 4, n // 2]),
        ("reversed", -np.arange(n, dtype=np.float32), [n // 4]),
        ("signed zeros", np.where(rng.random(n) < 0.5, -0.0, 0.0).astype(np.float32), [n // 3]),
        ("spike", spike, [n // 50 - 3, n // 50, n // 50 + 3]),
        ("one outlier", np.r_[np.zeros(n - 1, np.float32), np.float32(1.0)], [1, 2, n // 2]),
    ]


@pytest.mark.parametrize("case", range(10))
def test_large_selections_match_oracle(case):
    name, scores, ks = _large_cases()[case]
    n = len(scores)
    for i, k_top in enumerate(ks):
        k_rand = [0, (n - k_top) // 7, n - k_top][i % 3]
        got = core.select_top_random(scores, k_top, k_rand, case, i, 1)
        np.testing.assert_array_equal(got, oracle_top_random(scores, k_top, k_rand, case, i, 1), err_msg=name)


@pytest.mark.parametrize("kind", ["uniform", "ties"])
def test_two_threads_match_one_thread_and_oracle(kind):
    """From 2^20 scores the kernel may split its passes over two threads; the result must not
    depend on that (n not a multiple of 64, so the split and the tail are both exercised)."""
    rng = np.random.default_rng(21)
    n = 2**21 + 37
    if kind == "uniform":
        scores = rng.random(n).astype(np.float32)
        cases = [(n // 2, 1000), (0, 777), (1234, 0), (n - 500, 500), (n // 3, n - n // 3 - 100), (1, 0), (n, 0)]
    else:
        scores = rng.integers(0, 1000, n).astype(np.float32)  # ~2100 ties at every value
        cases = [(n // 2, 0), (n // 2 + 5, 2000), (0, 1000), (n // 7, n - n // 7 - 50), (3, 0)]
    for i, (k_top, k_rand) in enumerate(cases):
        one = core.select_top_random(scores, k_top, k_rand, 9, i, 1, threads=1)
        assert len(one) == k_top + k_rand
        for threads in (0, 2, 2):
            got = core.select_top_random(scores, k_top, k_rand, 9, i, 1, threads=threads)
            np.testing.assert_array_equal(got, one, err_msg=f"{kind} {k_top} {k_rand} threads={threads}")
        np.testing.assert_array_equal(one, oracle_top_random(scores, k_top, k_rand, 9, i, 1),
                                      err_msg=f"{kind} {k_top} {k_rand}")
    bad = scores.copy()
    bad[[n - 1, n // 2 + 3]] = np.nan
    for threads in (0, 1, 2):
        with pytest.raises(ValueError, match=rf"scores\[{n // 2 + 3}\] is NaN"):
            core.select_top_random(bad, n // 2, 10, 0, 0, 0, threads=threads)
    with pytest.raises(ValueError, match="threads"):
        core.select_top_random(scores, 10, 10, 0, 0, 0, threads=-1)


def test_nan_is_reported_for_large_arrays():
    scores = np.random.default_rng(2).random(100_000).astype(np.float32)
    for where in [0, 4097, 99_999]:
        bad = scores.copy()
        bad[where] = np.nan
        with pytest.raises(ValueError, match=rf"scores\[{where}\] is NaN"):
            core.select_top_random(bad, 50_000, 100, 0, 0, 0)
    bad = np.full(100_000, np.nan, dtype=np.float32)  # NaN everywhere, the sample included
    with pytest.raises(ValueError, match=r"scores\[0\] is NaN"):
        core.select_top_random(bad, 10, 0, 0, 0, 0)


def test_sample_uniform_matches_oracle_and_sizes():
    for n, k in [(0, 0), (1, 1), (10, 0), (10, 10), (5000, 1234), (5000, 3766), (70_000, 40_000)]:
        got = core.sample_uniform(n, k, 9, 4, 1)
        np.testing.assert_array_equal(got, floyd_subset(n, k, 9, 4, 4 * 1 + RANDOM))


def test_deterministic_per_seed_and_epoch():
    scores = np.random.default_rng(0).random(10_000).astype(np.float32)
    a = core.select_top_random(scores, 3000, 2000, 1, 2, 0)
    np.testing.assert_array_equal(a, core.select_top_random(scores, 3000, 2000, 1, 2, 0))
    assert not np.array_equal(a, core.select_top_random(scores, 3000, 2000, 1, 3, 0))
    assert not np.array_equal(a, core.select_top_random(scores, 3000, 2000, 2, 2, 0))
    assert not np.array_equal(a, core.select_top_random(scores, 3000, 2000, 1, 2, 1))


def test_uniform_sampling_is_uniform_over_seeds():
    n, k, trials = 40, 7, 6000
    counts = np.zeros(n)
    first = np.zeros(n)  # the smallest chosen index: checks more than the marginals
    for seed in range(trials):
        chosen = core.sample_uniform(n, k, seed, 0, 0)
        counts[chosen] += 1
        first[chosen[0]] += 1
    expected = trials * k / n
    assert ((counts - expected) ** 2 / expected).sum() < chi2_critical(n - 1)
    # P(min = i) = C(n-1-i, k-1) / C(n, k)
    from math import comb
    p_first = np.array([comb(n - 1 - i, k - 1) for i in range(n)]) / comb(n, k)
    mask = p_first * trials >= 5
    exp_first = p_first[mask] * trials
    assert ((first[mask] - exp_first) ** 2 / exp_first).sum() < chi2_critical(int(mask.sum()) - 1)


def test_random_part_is_uniform_over_the_rest():
    scores = np.arange(30, dtype=np.float32)  # the top 10 are indices 20..29
    counts = np.zeros(30)
    trials = 4000
    for epoch in range(trials):
        chosen = core.select_top_random(scores, 10, 5, 0, epoch, 0)
        assert set(range(20, 30)) <= set(chosen.tolist())
        counts[chosen] += 1
    rest = counts[:20]
    expected = trials * 5 / 20
    assert ((rest - expected) ** 2 / expected).sum() < chi2_critical(19)


def test_ties_are_broken_uniformly():
    scores = np.ones(12, dtype=np.float32)
    counts = np.zeros(12)
    for seed in range(3000):
        counts[core.select_top_random(scores, 4, 0, seed, 0, 0)] += 1
    expected = 3000 * 4 / 12
    assert ((counts - expected) ** 2 / expected).sum() < chi2_critical(11)


def test_bad_arguments_raise():
    scores = np.ones(5, dtype=np.float32)
    with pytest.raises(ValueError, match="exceeds"):
        core.select_top_random(scores, 4, 2, 0, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        core.select_top_random(scores, -1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match=r"scores\[2\] is NaN"):
        core.select_top_random(np.array([1, 2, np.nan], dtype=np.float32), 1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="k <= n"):
        core.sample_uniform(3, 4, 0, 0, 0)


def test_bandit_scores():
    rng = np.random.default_rng(1)
    mean = rng.random(100).astype(np.float32)
    var = rng.random(100).astype(np.float32)
    seen = rng.integers(-1, 3, 100).astype(np.int32)  # -1: tried, every loss skipped (issue 38.4)
    var[:10] = np.float32(3e38)  # bonus * c overflows float32: saturates, never +inf
    for c, use_std in [(0.0, True), (1.5, True), (2.0, False)]:
        got = core.bandit_scores(mean, var, seen, c, use_std)
        bonus = np.sqrt(var.astype(np.float64)) if use_std else var.astype(np.float64)
        score = np.minimum(mean + c * bonus, np.finfo(np.float32).max)
        expected = np.where(seen == 0, np.inf, np.where(seen < 0, -np.inf, score)).astype(np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_split_sample_matches_oracle():
    rng = np.random.default_rng(3)
    n = 2000
    scores = rng.exponential(size=n).astype(np.float32)
    seen = (rng.random(n) < 0.9).astype(np.int32)
    seen[rng.random(n) < 0.05] = -1  # tried, every loss skipped: prunable, outside the mean (issue 38.4)
    threshold = np.float32(scores[seen > 0].mean())
    below = (seen < 0) | ((seen > 0) & (scores < threshold))
    assert core.count_below(scores, seen, threshold) == below.sum()
    k_below = int(below.sum()) // 3
    idx, w = core.split_sample(scores, seen, threshold, k_below, 2.5, 7, 1, 0)
    u = hooks.random_u32(7, 1, 4 * 0 + RANDOM, 0, int(below.sum()))
    kept_below = np.flatnonzero(below)[selection_sampling(int(below.sum()), k_below, u)]
    expected = np.sort(np.concatenate([np.flatnonzero(~below), kept_below]))
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(w, np.where(below[idx], np.float32(2.5), np.float32(1.0)))
    mean, count = core.masked_mean(scores, seen)
    assert count == (seen > 0).sum() and mean == pytest.approx(scores[seen > 0].astype(np.float64).mean())
    with pytest.raises(ValueError, match="only"):
        core.split_sample(scores, seen, threshold, int(below.sum()) + 1, 1.0, 0, 0, 0)


def test_threshold_methods_agree_and_fallback_is_exact():
    """The sampled bracket (with tiny, often-missing samples, so that the exact histogram fallback
    runs), the copy + nth_element and the radix histogram all find the same threshold."""
    paths = set()
    for case, (name, scores, ks) in enumerate(_large_cases()):
        for k in ks:
            if k < 1:
                continue
            expected = hooks.threshold(scores, k, 2)
            assert hooks.threshold(scores, k, 1)[:3] == expected[:3], name
            assert hooks.threshold(scores, k, 0)[:3] == expected[:3], name
            for size, sigmas, seed in [(1, 0.0, case), (8, 0.0, k), (64, 0.5, 1), (4096, 4.5, 2)]:
                got = hooks.threshold(scores, k, 3, size, sigmas, seed)
                assert got[:3] == expected[:3], (name, k, size)
                paths.add(got[3])
            value, above, equal, _ = expected
            order = np.sort(scores)[::-1]
            assert value == order[k - 1] and above == (scores > value).sum() and equal == (scores == value).sum()
    assert paths == {1, 2, 3}  # inside the bracket, at one of its ends, and the fallback


def _path_cases():
    """Inputs for the one-pass path (a bracket that holds the threshold) and its fallbacks (heavy
    ties at the bracket's ends, a threshold outside the bracket), above the small-n cutoff."""
    rng = np.random.default_rng(31)
    n = 50_001
    losses = rng.exponential(size=n).astype(np.float32)
    unseen = losses.copy()
    unseen[rng.random(n) < 0.3] = np.inf  # UCB early on: many +inf ties
    coarse = np.round(losses, 1)  # EMA losses of few distinct values: ties at the threshold
    with np.errstate(over="ignore"):
        huge = losses * np.float32(3e38)  # overflowing scores: +inf
    return [("exp", losses), ("unseen", unseen), ("coarse", coarse), ("huge", huge),
            ("two values", (rng.random(n) < 0.5).astype(np.float32)), ("all inf", np.full(n, np.inf, np.float32))]


@pytest.mark.parametrize("case", range(6))
def test_one_pass_and_two_pass_paths_agree_with_oracle(case):
    name, scores = _path_cases()[case]
    n = len(scores)
    n_inf = int(np.isinf(scores).sum())
    ks = sorted({1, 63, 64, 65, n // 3, n // 2, n - 1, n, max(n_inf - 1, 1), min(n_inf + 1, n)})
    for i, k_top in enumerate(ks):
        for k_rand in {0, (n - k_top) // 5, n - k_top}:
            one = core.select_top_random(scores, k_top, k_rand, case, i, 2)
            two = hooks.select_top_random(scores, k_top, k_rand, case, i, 2, one_pass=False)
            np.testing.assert_array_equal(one, two, err_msg=f"{name} k_top={k_top} k_rand={k_rand}")
            if i % 3 == 0:
                np.testing.assert_array_equal(one, oracle_top_random(scores, k_top, k_rand, case, i, 2), err_msg=name)


@pytest.mark.parametrize("threads", [1, 2])
def test_one_pass_two_threads_and_nan(threads):
    """n >= 2^20 (the passes split over two threads), n not a multiple of 64: both paths, both
    thread counts, the same ids; a NaN anywhere is reported by its first index."""
    rng = np.random.default_rng(41)
    n = 2**20 + 4099
    scores = np.round(rng.exponential(size=n), 2).astype(np.float32)
    for k_top, k_rand in [(n // 2, 0), (2 * n // 5, n // 10), (1, 0), (n - 3, 3), (n // 7, n - n // 7)]:
        one = core.select_top_random(scores, k_top, k_rand, 3, 1, 0, threads=threads)
        two = hooks.select_top_random(scores, k_top, k_rand, 3, 1, 0, threads=1, one_pass=False)
        np.testing.assert_array_equal(one, two, err_msg=f"{k_top} {k_rand}")
    bad = scores.copy()
    bad[[n - 1, 2**19 + 5]] = np.nan
    for one_pass in (True, False):
        with pytest.raises(ValueError, match=rf"scores\[{2**19 + 5}\] is NaN"):
            hooks.select_top_random(bad, n // 2, 100, 0, 0, 0, threads=threads, one_pass=one_pass)


def test_reused_output_buffers_keep_live_results_intact():
    """A freed large output is reused by the next selection of about its size; results still
    alive are never written to."""
    scores = np.random.default_rng(5).random(1_200_000).astype(np.float32)
    k = 600_000  # 4.8 MB of int64: a large (reusable) buffer
    first = core.select_top_random(scores, k, 0, 0, 0, 0)
    second = core.select_top_random(scores, k - 100, 100, 0, 1, 0)
    kept = second.copy()
    del first  # its block becomes the spare
    for epoch in range(2, 5):
        again = core.select_top_random(scores, k - 100, 100, 0, epoch, 0)
        np.testing.assert_array_equal(again, hooks.select_top_random(scores, k - 100, 100, 0, epoch, 0, one_pass=False))
        np.testing.assert_array_equal(second, kept)
        assert len(again) == k and np.all(np.diff(again) > 0)
