"""ScoreTable(dtype="float16" | "bfloat16"): the float fields stored in 16 bits.

The native conversions are checked against numpy (float16) and torch (bfloat16), both round to
nearest even, with our saturation of finite values at the largest finite half instead of their
inf; the native update against a per-entry Python oracle, bit for bit."""

import io
import math

import numpy as np
import pytest
import torch

from fastprune._native import core
from fastprune.prune import ScoreTable

KINDS = ("float16", "bfloat16")
LARGEST = {"float16": 65504.0, "bfloat16": float(torch.finfo(torch.bfloat16).max)}
F32_MAX = float(np.finfo(np.float32).max)


# ---- oracles of the conversions ------------------------------------------------------------------

def oracle_narrow(values, kind: str) -> np.ndarray:
    """float32 ``values`` -> uint16 bits by numpy (float16) or torch (bfloat16), round to nearest
    even; a finite value that they round to inf saturates at the largest finite half instead."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    if kind == "float16":
        with np.errstate(over="ignore", invalid="ignore"):
            rounded = x.astype(np.float16)
    else:
        rounded = torch.from_numpy(x.copy()).to(torch.bfloat16).float().numpy()
    rounded = rounded.astype(np.float32)
    overflow = np.isinf(rounded) & np.isfinite(x)
    rounded[overflow] = np.copysign(LARGEST[kind], x[overflow])
    if kind == "float16":
        return rounded.astype(np.float16).view(np.uint16)
    return torch.from_numpy(rounded).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def oracle_widen(bits, kind: str) -> np.ndarray:
    """uint16 bits -> float32 by numpy (float16) or torch (bfloat16)."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    if kind == "float16":
        return bits.view(np.float16).astype(np.float32)
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).float().numpy()


def assert_same_bits(actual, expected, what=""):
    """Equal bit for bit, except that any NaN matches any NaN."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    if actual.dtype.kind == "f":
        nan = np.isnan(expected)
        np.testing.assert_array_equal(np.isnan(actual), nan, err_msg=f"{what}: NaN positions")
        actual, expected = actual[~nan], expected[~nan]
        unsigned = np.dtype(f"u{actual.dtype.itemsize}")
        actual, expected = actual.view(unsigned), expected.view(unsigned)
    bad = np.flatnonzero(actual != expected)
    assert bad.size == 0, f"{what}: {bad.size} differ, first at {bad[0]}: {actual[bad[0]]:#x} vs {expected[bad[0]]:#x}"


def is_nan_bits(bits, kind):
    exponent_mask, mantissa_mask = (0x7C00, 0x03FF) if kind == "float16" else (0x7F80, 0x007F)
    return ((bits & exponent_mask) == exponent_mask) & ((bits & mantissa_mask) != 0)


ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


@pytest.fixture(autouse=True)
def ieee_denormals():
    """These tests build and compare denormal floats bit for bit, with numpy and torch as oracles:
    an earlier test of the same process (``fastprune bench`` run in-process) may have left torch's
    denormal flushing on, which turns them into zeros."""
    from fastprune.bench.run import flushing_denormals

    flushing = flushing_denormals()
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(flushing)


@pytest.mark.parametrize("kind", KINDS)
def test_half_to_float32_is_exact_on_every_pattern(kind):
    widened = core.half_to_float32(ALL_BITS, kind)
    assert widened.dtype == np.float32
    assert_same_bits(widened, oracle_widen(ALL_BITS, kind), kind)
    assert np.isnan(widened[is_nan_bits(ALL_BITS, kind)]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_every_half_value_narrows_back_to_itself(kind):
    values = oracle_widen(ALL_BITS, kind)
    narrowed = core.float32_to_half(values, kind)
    assert narrowed.dtype == np.uint16
    nan = is_nan_bits(ALL_BITS, kind)
    np.testing.assert_array_equal(narrowed[~nan], ALL_BITS[~nan])
    assert is_nan_bits(narrowed[nan], kind).all()
    assert ((narrowed[nan] & 0x8000) == (ALL_BITS[nan] & 0x8000)).all()  # NaN keeps its sign


def _halfway_and_neighbours(kind):
    """The midpoints between adjacent finite halves (exact in float32) and the floats next to them."""
    values = oracle_widen(ALL_BITS, kind)
    finite = np.unique(values[np.isfinite(values)].astype(np.float64))
    middle = ((finite[:-1] + finite[1:]) / 2).astype(np.float32)
    assert np.array_equal(middle.astype(np.float64), (finite[:-1] + finite[1:]) / 2)  # exact
    return np.concatenate([middle, np.nextafter(middle, np.float32(np.inf)),
                           np.nextafter(middle, np.float32(-np.inf))])


def _hard_floats(kind):
    rng = np.random.default_rng(5)
    largest = LARGEST[kind]
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, F32_MAX, -F32_MAX, 1e-45, -1e-45, 1e-40, 2.0 ** -24,
                        2.0 ** -25, 2.0 ** -25 * 1.0000001, 2.0 ** -14, 65504, 65519.996, 65520, 65536, 1e5, -1e5,
                        largest, -largest, 3.39e38, 1e18], dtype=np.float32)
    # the floats just above the largest half: float16's 65504..65520 round to it, 65520.. to inf
    near_largest = (np.float32(largest).view(np.uint32) + np.arange(1, 1 << 16, dtype=np.uint32)).view(np.float32)
    near_largest = near_largest[np.isfinite(near_largest)]
    return np.concatenate([
        special, near_largest, -near_largest,
        rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),  # every exponent
        (rng.standard_normal(50_000) * 10.0 ** rng.integers(-9, 6, 50_000)).astype(np.float32),
        (rng.random(20_000) * 2.0 ** -14).astype(np.float32),  # float16's subnormals
        rng.integers(0, 1 << 23, 20_000).astype(np.uint32).view(np.float32),  # float32's subnormals
        _halfway_and_neighbours(kind),
    ], dtype=np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_to_half_rounds_to_nearest_even_and_saturates(kind):
    values = _hard_floats(kind)
    narrowed = core.float32_to_half(values, kind)
    nan = np.isnan(values)
    np.testing.assert_array_equal(narrowed[~nan], oracle_narrow(values, kind)[~nan])
    assert is_nan_bits(narrowed[nan], kind).all()
    widened = core.half_to_float32(narrowed, kind)
    finite = np.isfinite(values)
    assert np.isfinite(widened[finite]).all()  # finite saturates at the largest finite half
    assert (np.abs(widened[finite]) <= LARGEST[kind]).all()
    big = finite & (np.abs(values) >= LARGEST[kind])
    assert big.sum() > 1000
    np.testing.assert_array_equal(widened[big], np.copysign(np.float32(LARGEST[kind]), values[big]))
    np.testing.assert_array_equal(core.half_to_float32(core.float32_to_half(
        np.array([np.inf, -np.inf], np.float32), kind), kind), [np.inf, -np.inf])


def test_conversions_refuse_bad_input():
    for kind in ("float32", "half", ""):
        with pytest.raises(ValueError, match="float16"):
            core.float32_to_half(np.zeros(3, np.float32), kind)
        with pytest.raises(ValueError, match="bfloat16"):
            core.half_to_float32(np.zeros(3, np.uint16), kind)
    with pytest.raises(TypeError):  # not converted: float16 values are not their bits
        core.half_to_float32(np.zeros(3, np.float16), "float16")
    with pytest.raises(TypeError):
        core.float32_to_half(np.zeros(3, np.float64), "float16")
    assert core.float32_to_half(np.zeros(0, np.float32), "bfloat16").shape == (0,)


# ---- the update, per entry, in order ---------------------------------------------------------------

class Oracle:
    """The native score update (csrc/select.cpp) written one entry at a time: the EMA in float64
    from the stored values widened to float, each result rounded to float32 and then to the
    storage type (``kind``, or float32) with saturation. Stored values are float32 numbers here."""

    def __init__(self, n, kind, decay, c, use_std, correctness=True):
        self.kind, self.decay, self.c, self.use_std = kind, decay, c, use_std
        zero, inf = self.round(0.0), self.round(np.inf)
        self.mean, self.var, self.score = np.full(n, zero), np.full(n, zero), np.full(n, inf)
        self.seen, self.last_epoch = np.zeros(n, np.int64), np.full(n, -1, np.int64)
        self.forgets, self.last_correct = np.zeros(n, np.int64), np.full(n, -1, np.int64)
        self.ever_correct = np.zeros(n, np.int64)

    def round(self, x):
        """float64 -> float32 (nearest even), then to the storage type."""
        value = np.float32(x)
        if self.kind == "float32":
            return value
        return oracle_widen(oracle_narrow(np.array([value]), self.kind), self.kind)[0]

    def bandit(self, i):
        seen = self.seen[i]
        if seen == 0:
            return np.float32(np.inf)
        if seen < 0:
            return np.float32(-np.inf)
        if self.c == 0:
            return self.mean[i]
        var = self.var[i]
        bonus = np.sqrt(max(var, np.float32(0.0))) if self.use_std else var  # float32 sqrt
        return np.float32(min(float(self.mean[i]) + self.c * float(bonus), F32_MAX))

    def update(self, indices, losses, correct=None, epoch=0, skip_invalid=False):
        skipped = 0
        for j, (i, loss) in enumerate(zip(indices, np.asarray(losses, dtype=np.float32))):
            in_range = 0 <= i < len(self.seen)
            if not (in_range and math.isfinite(loss) and abs(float(loss)) <= float(np.float32(1e18))):
                assert skip_invalid
                skipped += 1
                if in_range and self.seen[i] == 0:
                    self.seen[i] = -1
                    self.score[i] = self.round(self.bandit(i))
                continue
            self.apply(i, float(loss), epoch, None if correct is None else int(correct[j]))
        return skipped

    def apply(self, i, loss, epoch, correct):
        seen = max(self.seen[i], 0)
        if seen == 0:
            self.mean[i], self.var[i] = self.round(loss), self.round(0.0)
        else:
            alpha = 1.0 / (seen + 1.0) if self.decay is None else 1.0 - self.decay
            mean = float(self.mean[i])
            diff = loss - mean
            self.mean[i] = self.round(mean + alpha * diff)
            self.var[i] = self.round((1.0 - alpha) * (float(self.var[i]) + alpha * diff * diff))
        self.seen[i] = seen + 1
        self.score[i] = self.round(self.bandit(i))
        self.last_epoch[i] = epoch
        if correct is not None:
            if self.last_correct[i] == 1 and correct == 0:
                self.forgets[i] += 1
            self.last_correct[i] = correct
            self.ever_correct[i] |= correct


def assert_table_equals(table, oracle, with_var=True):
    assert_same_bits(table.mean, oracle.mean, "mean")
    if with_var:
        assert_same_bits(table.var, oracle.var, "var")
    if table.bandit_score is not None:
        assert_same_bits(table.score, oracle.score, "score")
    for name in ("seen", "last_epoch", "forgets", "last_correct", "ever_correct"):
        if name in table.fields:
            np.testing.assert_array_equal(getattr(table, name), getattr(oracle, name), err_msg=name)


def random_losses(rng, size, kind, skip_invalid):
    """Losses over many magnitudes: tiny (float16 subnormals), ordinary, above float16's 65504,
    up to the 1e18 limit; under skip_invalid also NaN, inf and beyond 1e18."""
    scale = 10.0 ** rng.choice([-7, -3, 0, 0, 1, 3, 5, 17], size)
    losses = np.clip(rng.exponential(size=size) * scale * rng.choice([1, 1, 1, -1], size), -1e18, 1e18)
    losses[rng.random(size) < 0.05] = 1e18
    losses[rng.random(size) < 0.05] = 7e4  # float16 saturates it at 65504
    if skip_invalid:
        bad = rng.random(size) < 0.15
        losses[bad] = rng.choice([np.nan, np.inf, -np.inf, 2e18, -1e30], bad.sum())
    return losses.astype(np.float32)


@pytest.mark.parametrize("kind", ("float32",) + KINDS)
@pytest.mark.parametrize("decay", [None, 0.7])
@pytest.mark.parametrize("c, use_std", [(0.0, True), (1.5, True), (1.5, False)])
@pytest.mark.parametrize("skip_invalid", [False, True])
def test_update_matches_the_oracle_bit_for_bit(kind, decay, c, use_std, skip_invalid):
    rng = np.random.default_rng([len(kind), int(decay is None), int(c), int(use_std), int(skip_invalid)])
    n = 40
    table = ScoreTable(n, decay, bandit_score=(c, use_std), dtype=kind)
    oracle = Oracle(n, kind, decay, c, use_std)
    assert_table_equals(table, oracle)  # initial values
    for epoch in range(8):
        idx = rng.integers(0, n - 1, 90)  # duplicates within a call, applied in order
        losses = random_losses(rng, 90, kind, skip_invalid)
        if skip_invalid:
            idx[rng.random(90) < 0.03] = n + 5  # out of range: skipped too
            idx[:2], losses[:2] = n - 1, np.nan  # the last sample only ever gets bad losses
        correct = rng.random(90) < 0.5 if epoch % 2 else None
        skipped = table.update(idx, losses, correct, epoch=epoch, skip_invalid=skip_invalid)
        assert skipped == oracle.update(idx, losses, correct, epoch, skip_invalid)
    assert_table_equals(table, oracle)
    assert np.isfinite(table.mean).all() and np.isfinite(table.var).all()
    assert not np.isposinf(table.score[table.seen != 0]).any()  # +inf: unseen only
    if skip_invalid:
        assert table.seen[-1] == -1 and table.score[-1] == -np.inf


@pytest.mark.parametrize("kind", KINDS)
def test_saturation_keeps_seen_samples_finite(kind):
    largest = LARGEST[kind]
    table = ScoreTable(3, 0.5, bandit_score=(1e3, False), dtype=kind)
    table.update([0, 1, 1], [1e18, 1e18, -1e18])
    # float16: the mean and the var saturate at 65504; bfloat16: the score's bonus
    # (c * var = 1e3 * 1e36) overflows float32 and the score saturates at the largest bfloat16
    assert np.isfinite(table.mean).all() and np.isfinite(table.var).all()
    assert table.score[2] == np.inf and np.isfinite(table.score[:2]).all()
    assert table.score[1] == np.float32(largest)
    if kind == "float16":
        assert table.mean[0] == largest and table.score[0] == largest
        assert table.mean[1] == -largest  # 0.5 * 65504 + 0.5 * -1e18
    else:
        assert table.mean[0] == core.half_to_float32(core.float32_to_half(np.float32([1e18]), kind), kind)[0]


def test_float16_clips_losses_above_65504_but_keeps_their_order_below():
    table = ScoreTable(4, 0.7, bandit_score=(0.0, True), dtype="float16")
    table.update([0, 1, 2, 3], [1e5, 65504, 3.0, 1e-6])
    np.testing.assert_array_equal(table.mean, np.float32([65504, 65504, 3.0, np.float16(1e-6)]))
    assert table.mean[3] > 0  # a subnormal float16, not flushed to 0


@pytest.mark.parametrize("kind", KINDS)
def test_fewer_fields_and_index_map(kind):
    """A table without var/score (c = 0) and a shard's table (index_map) update as the oracle."""
    rng = np.random.default_rng(11)
    offset, n = 1000, 30

    def rows(ids):
        ids = np.asarray(ids) - offset
        if ((ids < 0) | (ids >= n)).any():
            raise IndexError("not this shard's sample")
        return ids

    table = ScoreTable(n, 0.7, fields=(), bandit_score=(0.0, True), index_map=rows, dtype=kind)
    oracle = Oracle(n, kind, 0.7, 0.0, True)
    for epoch in range(5):
        idx = rng.integers(0, n, 50)
        losses = random_losses(rng, 50, kind, False)
        table.update(idx + offset, losses, epoch=epoch)
        oracle.update(idx, losses, epoch=epoch)
    assert_table_equals(table, oracle, with_var=False)
    assert table.fields == ("mean", "seen")
    with pytest.raises(IndexError):
        table.update([5], [1.0])


@pytest.mark.parametrize("kind", KINDS)
def test_deferred_updates_equal_immediate_ones(kind):
    rng = np.random.default_rng(3)
    n = 60
    immediate, deferred = (ScoreTable(n, None, bandit_score=(1.0, True), dtype=kind) for _ in range(2))
    for epoch in range(4):
        for _ in range(3):
            idx = rng.integers(0, n, 40)
            losses = random_losses(rng, 40, kind, True)
            correct = rng.random(40) < 0.5
            immediate.update(idx, losses, correct, epoch=epoch, skip_invalid=True)
            deferred.update(torch.from_numpy(idx), torch.from_numpy(losses), torch.from_numpy(correct), epoch=epoch,
                            skip_invalid=True, defer=True)
        assert deferred.pending > 0
        deferred.flush()
    for name in ("mean", "var", "score", "seen", "last_epoch", "forgets", "last_correct", "ever_correct"):
        assert_same_bits(getattr(deferred, name), getattr(immediate, name), name)


def test_native_half_update_refuses_bad_input():
    empty8, empty32 = np.zeros(0, np.int8), np.zeros(0, np.int32)
    mean, seen = np.zeros(4, np.uint16), np.zeros(4, np.int32)

    def update(mean=mean, var=np.zeros(0, np.uint16), seen=seen, indices=np.array([1]), losses=np.float32([1.0]),
               kind="float16"):
        return core.score_update_half(mean, var, np.zeros(0, np.uint16), seen, empty32, empty32, empty8,
                                      np.zeros(0, np.uint8), indices, losses, empty8, 0.7, 0, False, False, 0.0, True,
                                      kind)

    with pytest.raises(ValueError, match="seen has length"):
        update(seen=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="var has length"):
        update(var=np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="losses has length"):
        update(losses=np.float32([1.0, 2.0]))
    with pytest.raises(IndexError, match="out of range"):
        update(indices=np.array([4]))
    with pytest.raises(ValueError, match="kind must be"):
        update(kind="float32")
    with pytest.raises(TypeError):
        update(mean=np.zeros(4, np.float16))  # the bits are passed as uint16
    assert update() == 0 and mean[1] == 0x3C00  # 1.0 in float16


# ---- construction, reads, state ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "half", "", None, np.float16, torch.bfloat16, 16])
def test_invalid_dtype_is_refused(dtype):
    with pytest.raises(ValueError, match="'float32', 'float16', 'bfloat16'"):
        ScoreTable(4, dtype=dtype)


@pytest.mark.parametrize("kind, epsilon_greedy, ucb", [("float32", 12, 20), ("float16", 8, 14), ("bfloat16", 8, 14)])
def test_bytes_per_sample(kind, epsilon_greedy, ucb):
    table = ScoreTable(10, fields=(), bandit_score=(0.0, True), dtype=kind)  # mean, seen, score
    assert table.bytes_per_sample == epsilon_greedy and table.dtype == kind
    table = ScoreTable(10, bandit_score=(1.0, True), dtype=kind)  # + var, last_epoch
    assert table.bytes_per_sample == ucb
    table.update([0], [1.0], [True])  # allocates the correctness group: 6 more
    assert table.bytes_per_sample == ucb + 6


@pytest.mark.parametrize("kind", ("float32",) + KINDS)
def test_reads_are_read_only_float32(kind):
    table = ScoreTable(5, bandit_score=(1.0, True), dtype=kind)
    table.update([0, 1, 1], [1.0, 2.0, 3.5])
    for name in ("mean", "var", "score"):
        array = getattr(table, name)
        assert array.dtype == np.float32 and array.shape == (5,), name
        assert not array.flags.writeable, name
        with pytest.raises(ValueError):
            array[0] = 1.0
    assert table.std.dtype == np.float32  # computed: a new array, as for every table
    # a float32 table hands out views of its arrays, a 16-bit one a copy per read
    assert np.shares_memory(table.mean, table.mean) == (kind == "float32")
    np.testing.assert_array_equal(table.std, np.sqrt(table.var))


def _updated(kind, seed=0, n=50, c=1.5):
    """A table after updates with every kind of loss; unseen, tried and seen samples."""
    rng = np.random.default_rng(seed)
    table = ScoreTable(n, 0.7, bandit_score=(c, True), dtype=kind)
    for epoch in range(4):  # the last 5 samples stay unseen
        idx, losses = rng.integers(0, n - 6, 80), random_losses(rng, 80, kind, True)
        idx[0], losses[0] = n - 6, np.nan  # tried, every loss skipped
        table.update(idx, losses, rng.random(80) < 0.5, epoch=epoch, skip_invalid=True)
    return table


def _saved_and_loaded(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_through_torch_save(kind):
    table = _updated(kind)
    state = table.state_dict()
    assert state["mean"].dtype == state["var"].dtype == getattr(torch, kind)
    assert state["seen"].dtype == torch.int32 and "score" not in state
    restored = ScoreTable(table.num_samples, 0.7, bandit_score=(1.5, True), dtype=kind)
    restored.load_state_dict(_saved_and_loaded(state))
    for name in ("mean", "var", "score", "seen", "last_epoch", "forgets", "last_correct", "ever_correct"):
        assert_same_bits(getattr(restored, name), getattr(table, name), name)
    assert (restored.seen == 0).any() and (restored.seen == -1).any()


@pytest.mark.parametrize("kind", KINDS)
def test_float32_state_into_a_half_table_is_rounded_as_updates_round(kind):
    source = _updated("float32", seed=4)
    table = ScoreTable(source.num_samples, 0.7, bandit_score=(1.5, True), dtype=kind)
    table.load_state_dict(_saved_and_loaded(source.state_dict()))
    expected = Oracle(source.num_samples, kind, 0.7, 1.5, True)
    expected.mean = oracle_widen(oracle_narrow(source.mean, kind), kind)
    expected.var = oracle_widen(oracle_narrow(source.var, kind), kind)
    for name in ("seen", "last_epoch", "forgets", "last_correct", "ever_correct"):
        setattr(expected, name, getattr(source, name).astype(np.int64))
    expected.score = np.array([expected.round(expected.bandit(i)) for i in range(source.num_samples)])
    assert_table_equals(table, expected)
    # and the table goes on as the oracle does from there
    rng = np.random.default_rng(9)
    idx, losses = rng.integers(0, source.num_samples, 100), random_losses(rng, 100, kind, False)
    table.update(idx, losses, epoch=7)
    expected.update(idx, losses, epoch=7)
    assert_table_equals(table, expected)


@pytest.mark.parametrize("source_kind", KINDS)
@pytest.mark.parametrize("kind", ("float32",) + KINDS)
def test_any_float_state_loads_into_any_table(source_kind, kind):
    source = _updated(source_kind, seed=6)
    state = source.state_dict()
    if source_kind == "float16":  # numpy arrays are accepted too
        state = {name: value.numpy() for name, value in state.items()}
    table = ScoreTable(source.num_samples, 0.7, bandit_score=(1.5, True), dtype=kind)
    table.load_state_dict(state)
    for name in ("mean", "var"):
        expected = getattr(source, name)
        if kind != "float32":
            expected = oracle_widen(oracle_narrow(expected, kind), kind)
        assert_same_bits(getattr(table, name), expected, name)
    scores = core.bandit_scores(table.mean, table.var, table.seen, 1.5, True)
    if kind != "float32":
        scores = oracle_widen(oracle_narrow(scores, kind), kind)
    assert_same_bits(table.score, scores, "score")
