"""core.select_top_random_half: the top-k-plus-random selection of float16/bfloat16 scores read as
their uint16 bits, without a float32 copy, against the oracle "widen to float32 (numpy, exactly as
core.half_to_float32), then core.select_top_random" with the same path forced (copy below 16384
scores, one pass, two passes, the exact histogram fallback of the threshold; 1 and 2 threads):
the same indices, the same NaN refusal. Then ScoreTable.raw and the strategies that select from a
16-bit table through it, against the float32-copy path they replaced."""

import numpy as np
import pytest

from fastprune._native import core
from fastprune.prune import UCB, EpsilonGreedy, ScoreTable

hooks = core.testing  # test-only entry points of the native core

KINDS = ("float16", "bfloat16")
NANS = {"float16": (0x7E00, 0x7C01, 0xFE00), "bfloat16": (0x7FC0, 0x7F81, 0xFFC0)}  # quiet, signalling, negative
INF = {"float16": 0x7C00, "bfloat16": 0x7F80}
SIGN = 0x8000
PARALLEL = 2**20 + 4099  # past the two-thread cutoff (2^20), not a multiple of 64 or of the 4096-score chunks


def narrow(values, kind):
    return core.float32_to_half(np.asarray(values, dtype=np.float32), kind)


def widen_oracle(bits, kind):
    """uint16 bits -> float32 by numpy (float16) or by moving them to the high half (bfloat16)."""
    if kind == "float16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def is_nan(bits, kind):
    exponent, mantissa = (0x7C00, 0x03FF) if kind == "float16" else (0x7F80, 0x007F)
    return ((bits & exponent) == exponent) & ((bits & mantissa) != 0)


def scores(dist, n, kind, rng):
    """n scores of a distribution, as `kind` bits."""
    losses = rng.lognormal(-2.0, 1.5, n)
    if dist == "lognormal":
        return narrow(losses, kind)
    if dist == "unseen":  # UCB early on: many unseen (+inf), a few tried whose every loss was skipped (-inf)
        bits = narrow(losses, kind)
        u = rng.random(n)
        bits[u < 0.3] = INF[kind]
        bits[u > 0.95] = INF[kind] | SIGN
        return bits
    if dist == "ties":  # few distinct values (bfloat16 has only 128 per octave)
        return narrow(rng.choice(np.float32([0.5, 0.75, 0.7578125, 3.0]), n), kind)
    if dist == "coarse":  # rounding to 16 bits alone makes ties of nearby losses
        return narrow(np.round(losses, 2), kind)
    if dist == "zeros":  # -0.0 ranks equal to +0.0; the smallest subnormal above both
        return rng.choice(np.uint16([0x0000, SIGN, 0x0001, 0x0001 | SIGN, narrow([1.0], kind)[0]]), n)
    if dist == "bits":  # every non-NaN pattern: negatives, subnormals, +-0, +-inf
        bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
        return np.where(is_nan(bits, kind), bits & SIGN, bits).astype(np.uint16)
    if dist == "constant":
        return np.full(n, narrow([0.25], kind)[0], dtype=np.uint16)
    raise AssertionError(dist)


DISTS = ("lognormal", "unseen", "ties", "coarse", "zeros", "bits", "constant")


def k_grid(n, bits, kind):
    """(k_top, k_rand) edge cases: nothing, everything, one, all but one, halves, the size of the
    +inf block +-1 (the threshold among the unseen ties or just below them), word edges."""
    infinite = int((bits == INF[kind]).sum())
    tops = {0, 1, n - 1, n, n // 3, n // 2, infinite - 1, infinite, infinite + 1, 63, 64, 65}
    grid = set()
    for k_top in (k for k in tops if 0 <= k <= n):
        rest = n - k_top
        grid |= {(k_top, k_rand) for k_rand in (0, 1, rest // 5, rest) if 0 <= k_rand <= rest}
    return sorted(grid)


def assert_same_as_widened(bits, kind, k_top, k_rand, *, threads=(1,), seed=1, epoch=2, stream=3):
    """The half selection equals the float32 kernel's on the widened scores, on each path."""
    wide = widen_oracle(bits, kind)
    for thread_count in threads:
        for one_pass in (True, False):
            args = (k_top, k_rand, seed, epoch, stream)
            expected = hooks.select_top_random(wide, *args, threads=thread_count, one_pass=one_pass)
            got = hooks.select_top_random_half(bits, kind, *args, threads=thread_count, one_pass=one_pass)
            np.testing.assert_array_equal(got, expected, err_msg=f"{kind} n={len(bits)} k_top={k_top} "
                                                                 f"k_rand={k_rand} threads={thread_count} "
                                                                 f"one_pass={one_pass}")


# ---- the widening the selection reads through -------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_widening_is_exact_on_every_pattern_at_every_alignment(kind):
    """The chunk widening (SSE2, eight at a time, then a scalar tail) of all 65536 patterns, from
    every start offset mod 8 and with every tail length."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    for offset in range(8):
        part = every[offset:len(every) - 7 + offset]
        got, expected = core.half_to_float32(part, kind), widen_oracle(part, kind)
        nan = np.isnan(expected)
        np.testing.assert_array_equal(np.isnan(got), nan)
        np.testing.assert_array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))


# ---- the selection against the widened oracle -------------------------------------------------

@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("kind", KINDS)
def test_small_and_mid_sizes_select_as_widened(kind, dist):
    """Sizes around the copy path's cutoff (16384) and the 64-score words, every k edge case."""
    rng = np.random.default_rng([KINDS.index(kind), DISTS.index(dist)])
    for n in (1, 2, 63, 64, 65, 1000, 16383, 16384, 50_001):
        bits = scores(dist, n, kind, rng)
        for i, (k_top, k_rand) in enumerate(k_grid(n, bits, kind)):
            assert_same_as_widened(bits, kind, k_top, k_rand, seed=n, epoch=i)


@pytest.mark.parametrize("dist", ("lognormal", "unseen", "coarse", "bits"))
@pytest.mark.parametrize("kind", KINDS)
def test_parallel_sizes_select_as_widened_on_one_and_two_threads(kind, dist):
    rng = np.random.default_rng(7)
    bits = scores(dist, PARALLEL, kind, rng)
    n = len(bits)
    for k_top, k_rand in [(n // 2, 0), (2 * n // 5, n // 10), (1, 0), (n - 3, 3), (n // 7, n - n // 7), (0, n // 3)]:
        assert_same_as_widened(bits, kind, k_top, k_rand, threads=(1, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_threshold_paths_and_histogram_fallback_as_widened(kind):
    """kth_largest on the bits: copy, histogram, and the bracket with tiny samples that miss (so
    that the exact histogram fallback runs), each as on the widened scores."""
    rng = np.random.default_rng(11)
    paths = set()
    for dist in ("lognormal", "unseen", "ties", "bits"):
        for n in (1000, 20_000):
            bits = scores(dist, n, kind, rng)
            wide = widen_oracle(bits, kind)
            for k in (1, n // 3, n // 2, n):
                for method, size, sigmas, seed in [(0, 0, 4.5, 0), (1, 0, 4.5, 0), (2, 0, 4.5, 0), (3, 1, 0.0, k),
                                                   (3, 8, 0.0, 1), (3, 64, 0.5, 2), (3, 4096, 4.5, 3)]:
                    got = hooks.threshold_half(bits, kind, k, method, size, sigmas, seed)
                    assert got == hooks.threshold(wide, k, method, size, sigmas, seed), (dist, n, k, method, size)
                    paths.add(got[3])
    assert paths == {0, 1, 2, 3}  # copy, inside the bracket, at its end, histogram


@pytest.mark.parametrize("kind", KINDS)
def test_nan_is_refused_naming_its_first_index(kind):
    rng = np.random.default_rng(13)
    for n, threads in [(1000, 1), (50_001, 1), (PARALLEL, 2)]:
        clean = scores("lognormal", n, kind, rng)
        first = n // 2 - 3 if n < PARALLEL else 2**19 + 5  # in the first thread's half
        for nan in NANS[kind]:
            bad = clean.copy()
            bad[[n - 1, first]] = nan
            for one_pass in (True, False):
                with pytest.raises(ValueError, match=rf"scores\[{first}\] is NaN"):
                    hooks.select_top_random_half(bad, kind, n // 2, 10, 0, 0, 0, threads=threads, one_pass=one_pass)
            # as for float32 scores, a selection without a top part reads no score
            assert_same_as_widened(bad, kind, 0, n // 4)


def test_wrong_types_and_arguments_are_refused():
    bits = narrow(np.linspace(0, 1, 100), "bfloat16")
    for wrong in (bits.view(np.float16), bits.astype(np.float32), bits.view(np.int16), bits[::2],
                  bits.reshape(10, 10), list(bits)):
        with pytest.raises(TypeError):
            core.select_top_random_half(wrong, "bfloat16", 10, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="kind must be"):
        core.select_top_random_half(bits, "float32", 10, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="select_top_random_half: k_top \\+ k_rand = 101 exceeds the 100"):
        core.select_top_random_half(bits, "float16", 100, 1, 0, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        core.select_top_random_half(bits, "float16", -1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="threads"):
        core.select_top_random_half(bits, "float16", 1, 0, 0, 0, 0, threads=-1)
    empty = np.zeros(0, dtype=np.uint16)
    assert len(core.select_top_random_half(empty, "float16", 0, 0, 0, 0, 0)) == 0


def test_default_binding_equals_the_hook():
    bits = scores("coarse", 70_000, "bfloat16", np.random.default_rng(3))
    for threads in (0, 1, 2):
        np.testing.assert_array_equal(core.select_top_random_half(bits, "bfloat16", 30_000, 5000, 4, 5, 6, threads=threads),
                                      hooks.select_top_random_half(bits, "bfloat16", 30_000, 5000, 4, 5, 6, one_pass=False))


# ---- ScoreTable.raw --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ("float32",) + KINDS)
def test_raw_is_the_stored_column_without_a_copy(dtype):
    table = ScoreTable(1000, bandit_score=(1.0, True), dtype=dtype)
    table.update(np.arange(0, 1000, 3), np.linspace(0.1, 9.0, 334, dtype=np.float32))
    table.update(np.arange(5), np.full(5, 2.0, np.float32), defer=True)  # applied before the read
    raw, kind = table.raw("score")
    assert table.pending == 0
    assert kind == (None if dtype == "float32" else dtype)
    assert raw.dtype == (np.float32 if dtype == "float32" else np.uint16)
    assert np.shares_memory(raw, table._arrays["score"]) and not raw.flags.writeable
    widened = raw if kind is None else core.half_to_float32(raw, kind)
    np.testing.assert_array_equal(widened.view(np.uint32), table.score.view(np.uint32))
    seen, kind = table.raw("seen")
    assert kind is None and seen.dtype == np.int32 and np.shares_memory(seen, table._arrays["seen"])
    with pytest.raises(ValueError, match="unknown score table field 'bogus'"):
        table.raw("bogus")
    with pytest.raises(AttributeError, match="keeps no 'var' field"):
        ScoreTable(10, fields=(), dtype=dtype).raw("var")


# ---- the strategies --------------------------------------------------------------------------

def trained(make, kind, labels, rng, n, epochs):
    """Two strategies fed the same updates: one as built, one selecting from the float32 copy of
    its score column (the path the half selection replaced). Yields (epoch, new, reference)."""
    new, reference = (make(n, score_dtype=kind, labels=labels, skip_invalid=True) for _ in range(2))
    reference._prepare = lambda epoch: (reference.table.score, None)
    for epoch in range(epochs):
        yield epoch, new, reference
        ids = rng.choice(n, n // 2, replace=False)
        losses = rng.lognormal(-2.0, 1.5, len(ids)).astype(np.float32)
        losses[: len(ids) // 50] = np.nan  # skipped: an unseen sample becomes -inf
        losses[len(ids) // 50: len(ids) // 25] = 1e5  # saturates float16 at 65504: ties
        losses[len(ids) // 25: len(ids) // 10] = np.round(losses[len(ids) // 25: len(ids) // 10], 1)
        for strategy in (new, reference):
            strategy.update(ids, losses)


STRATEGIES = {"epsilon_greedy": lambda n, **o: EpsilonGreedy(n, keep=0.3, eps=0.2, seed=5, **o),
              "ucb": lambda n, **o: UCB(n, keep=0.4, c=1.0, seed=6, **o)}


@pytest.mark.parametrize("classes", (None, 7))
@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("kind", KINDS)
def test_strategies_select_as_from_the_float32_copy(kind, name, classes, monkeypatch):
    """EpsilonGreedy and UCB on 16-bit tables, with and without class pools (whose gathered bits
    are selected from), select what the float32 copy of their scores selected, epoch after epoch;
    and never through the float32 kernel."""
    rng = np.random.default_rng(17)
    n = 40_000  # above the copy path's cutoff; class pools of ~5700 below it
    labels = None if classes is None else rng.integers(0, classes, n)
    for epoch, new, reference in trained(STRATEGIES[name], kind, labels, rng, n, epochs=5):
        expected = reference.select(epoch)
        with monkeypatch.context() as patch:
            patch.setattr(core, "select_top_random", None)  # a half table must not need it
            got = new.select(epoch)
        np.testing.assert_array_equal(got.indices, expected.indices, err_msg=f"epoch {epoch}")
        np.testing.assert_array_equal(got.weights, expected.weights)
