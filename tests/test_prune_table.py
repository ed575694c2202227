"""ScoreTable's native scatter update against a plain-Python oracle."""

import numpy as np
import pytest
import torch

import fastprune
from fastprune._native import core
from fastprune.prune import ScoreTable


def oracle_update(state, indices, losses, correct, decay, epoch, skip_invalid=False):
    """The update rule written one entry at a time, in float64. Under ``skip_invalid`` a loss that
    is not finite or beyond +-1e18 is skipped; it marks an unseen sample tried (seen -1)."""
    for j, (i, loss) in enumerate(zip(indices, losses)):
        loss = float(np.float32(loss))
        if skip_invalid and not (np.isfinite(loss) and abs(loss) <= 1e18):
            if state["seen"][i] == 0:
                state["seen"][i] = -1
            continue
        if state["seen"][i] <= 0:
            state["seen"][i] = 0
            state["mean"][i], state["var"][i] = loss, 0.0
        else:
            alpha = 1.0 / (state["seen"][i] + 1) if decay is None else 1.0 - decay
            diff = loss - state["mean"][i]
            state["mean"][i] += alpha * diff
            state["var"][i] = (1 - alpha) * (state["var"][i] + alpha * diff * diff)
        state["seen"][i] += 1
        state["last_epoch"][i] = epoch
        if correct is not None:
            c = int(correct[j])
            if state["last_correct"][i] == 1 and c == 0:
                state["forgets"][i] += 1
            state["last_correct"][i] = c
            state["ever_correct"][i] |= c


def fresh_state(n):
    return {"mean": np.zeros(n), "var": np.zeros(n), "seen": np.zeros(n, int), "last_epoch": -np.ones(n, int),
            "forgets": np.zeros(n, int), "last_correct": -np.ones(n, int), "ever_correct": np.zeros(n, int)}


@pytest.mark.parametrize("decay", [0.0, 0.7, None])
def test_update_matches_oracle_with_duplicates(decay):
    rng = np.random.default_rng(0)
    n = 50
    table, state = ScoreTable(n, decay=decay), fresh_state(n)
    for epoch in range(6):
        idx = rng.integers(0, n, 80)  # many duplicates within one call
        loss = rng.exponential(size=80).astype(np.float32)
        correct = rng.random(80) < 0.6 if epoch % 2 else None
        table.update(idx, loss, correct, epoch=epoch)
        oracle_update(state, idx, loss, correct, decay, epoch)
    for name in ("seen", "last_epoch", "forgets", "last_correct", "ever_correct"):
        np.testing.assert_array_equal(getattr(table, name), state[name], err_msg=name)
    np.testing.assert_allclose(table.mean, state["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table.var, state["var"], rtol=1e-4, atol=1e-6)


def oracle_scores(state, c, use_std):
    """bandit_scores in float64: +inf unseen, -inf tried with every loss skipped, else
    mean + c*bonus saturated at the largest float32."""
    bonus = np.sqrt(np.maximum(state["var"], 0)) if use_std else state["var"]
    score = np.minimum(state["mean"] + c * bonus, np.finfo(np.float32).max)
    return np.where(state["seen"] == 0, np.inf, np.where(state["seen"] < 0, -np.inf, score))


@pytest.mark.parametrize("c, use_std", [(1.0, True), (100.0, False)])
def test_extreme_losses_never_poison_a_sample(c, use_std):
    """Issue 38.4: a loss of 1e20 used to overflow the variance to inf, and the sample scored +inf
    (chosen as if unseen) forever. Now a loss beyond 1e18 is invalid (refused or skipped), every
    valid one leaves finite statistics, scores saturate below +inf, and the table matches the oracle."""
    table = ScoreTable(4, decay=0.7, bandit_score=(c, use_std))
    with pytest.raises(ValueError, match=r"losses\[0\] = 1e\+20 \(sample 0\) is beyond \+-1e18"):
        table.update([0, 0, 1], [1e20, 0.0, 1.0])
    assert (table.seen == 0).all()  # refused whole
    rng = np.random.default_rng(5)
    n = 64
    table, state = ScoreTable(n, decay=0.7, bandit_score=(c, use_std)), fresh_state(n)
    for epoch in range(8):
        idx = rng.integers(0, n, 100)
        loss = rng.choice(np.array([1e18, -1e18, 9.9e17, 1e20, -3e38, np.nan, 0.5], np.float32), 100)
        table.update(idx, loss, epoch=epoch, skip_invalid=True)
        oracle_update(state, idx, loss, None, 0.7, epoch, skip_invalid=True)
    np.testing.assert_array_equal(table.seen, state["seen"])
    assert np.isfinite(table.mean).all() and np.isfinite(table.var).all()
    np.testing.assert_allclose(table.mean, state["mean"], rtol=1e-5)
    np.testing.assert_allclose(table.var, state["var"], rtol=1e-4)
    expected = oracle_scores(state, c, use_std)
    np.testing.assert_allclose(table.score, expected.astype(np.float32), rtol=1e-5)
    assert not np.isposinf(table.score[table.seen != 0]).any()
    # the case, skipped: sample 0 takes its statistics from its valid losses only
    table = ScoreTable(2, decay=0.7, bandit_score=(1.0, True))
    assert table.update([0, 0, 1], [1e20, 0.0, 1.0], skip_invalid=True) == 1
    assert table.seen[0] == 1 and table.mean[0] == 0.0 and table.score[0] == 0.0


def test_always_invalid_samples_are_tried_not_unseen():
    """Issue 38.4: under skip_invalid, a sample whose loss is always NaN used to stay "unseen"
    (+inf) and be chosen every epoch. It is now marked tried and ranks last; its first valid loss
    starts its statistics afresh; a seen sample's NaN changes nothing."""
    table = ScoreTable(3, decay=0.5, bandit_score=(1.0, True))
    table.update([0, 1, 2], [np.nan, 2.0, 1.0], skip_invalid=True)
    np.testing.assert_array_equal(table.seen, [-1, 1, 1])
    assert table.score[0] == -np.inf
    table.update([0, 1], [np.nan, np.inf], skip_invalid=True)
    np.testing.assert_array_equal(table.seen, [-1, 1, 1])
    assert table.mean[1] == 2.0
    table.update([0], [4.0])
    assert table.seen[0] == 1 and table.mean[0] == 4.0 and table.var[0] == 0.0 and table.score[0] == 4.0
    again = ScoreTable(3, decay=0.5, bandit_score=(1.0, True))  # -1 survives a checkpoint
    poisoned = ScoreTable(3, decay=0.5, bandit_score=(1.0, True))
    poisoned.update([0], [np.nan], skip_invalid=True)
    again.load_state_dict(poisoned.state_dict())
    assert again.seen[0] == -1 and again.score[0] == -np.inf


def test_duplicates_are_applied_in_order():
    table = ScoreTable(3, decay=0.5)
    table.update([1, 1, 1], [4.0, 0.0, 2.0])
    # 4 -> 4 + .5*(0-4) = 2 -> 2 + .5*(2-2) = 2
    assert table.mean[1] == 2.0 and table.seen[1] == 3
    table2 = ScoreTable(3, decay=0.5)
    table2.update([1, 1, 1], [0.0, 2.0, 4.0])
    assert table2.mean[1] == 2.5  # order matters, so the kernel must not reorder


def test_running_mean_decay_none():
    table = ScoreTable(2, decay=None)
    for v in [1.0, 2.0, 6.0]:
        table.update([0], [v])
    assert table.mean[0] == pytest.approx(3.0)


def test_accepts_torch_tensors_with_grad():
    table = ScoreTable(4)
    loss = torch.tensor([1.0, 2.0], requires_grad=True) * 2
    table.update(torch.tensor([3, 0]), loss, torch.tensor([True, False]))
    assert table.mean[3] == 2.0 and table.mean[0] == 4.0 and table.ever_correct[3] == 1


def test_invalid_entries_raise_and_leave_table_unchanged():
    table = ScoreTable(5)
    table.update([0], [1.0])
    before = {k: v.clone() for k, v in table.state_dict().items()}
    with pytest.raises(IndexError, match=r"indices\[1\] = 5 is out of range"):
        table.update([1, 5], [1.0, 1.0])
    with pytest.raises(IndexError, match="out of range"):
        table.update([-1], [1.0])
    with pytest.raises(ValueError, match=r"losses\[0\].*sample 2.*not finite") as invalid:
        table.update([2], [np.nan])
    assert isinstance(invalid.value, fastprune.FastpruneError)  # caught with fastprune's other errors
    with pytest.raises(ValueError, match="not finite"):
        table.update([2, 3], [1.0, np.inf])
    with pytest.raises(ValueError, match="1-D"):
        table.update([2], [[1.0]])
    with pytest.raises(ValueError, match="2 entries"):
        table.update([2], [1.0, 2.0])
    with pytest.raises(ValueError, match="0/1"):
        table.update([2], [1.0], [3])
    after = table.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_skip_invalid_drops_bad_entries():
    table = ScoreTable(5)
    skipped = table.update([0, 9, 1, 2], [1.0, 1.0, np.nan, 3.0], skip_invalid=True)
    assert skipped == 2
    np.testing.assert_array_equal(table.seen, [1, -1, 1, 0, 0])  # 1: tried, its only loss skipped
    assert table.mean[2] == 3.0


def test_bad_construction():
    with pytest.raises(ValueError, match="num_samples"):
        ScoreTable(0)
    with pytest.raises(ValueError, match="decay"):
        ScoreTable(3, decay=1.0)


# ---- the bandit score column and per-strategy fields ---------------------------------------

def full_state(n, rng):
    """A table state as every earlier version saved it: all seven fields, some samples unseen."""
    table = ScoreTable(n)
    seen = rng.random(n) < 0.8
    for epoch in range(3):
        idx = np.flatnonzero(seen & (rng.random(n) < 0.7))
        table.update(idx, rng.exponential(size=len(idx)).astype(np.float32), rng.random(len(idx)) < 0.5,
                     epoch=epoch)
    return table.state_dict()


@pytest.mark.parametrize("c, use_std", [(0.0, True), (1.5, True), (0.7, False)])
def test_score_column_equals_bandit_scores_after_updates_and_loads(c, use_std):
    rng = np.random.default_rng(7)
    n = 300
    fields = ("correct",) if c == 0 else ("var", "correct")
    table = ScoreTable(n, decay=0.7, fields=fields, bandit_score=(c, use_std))
    np.testing.assert_array_equal(table.score, np.full(n, np.inf, np.float32))  # all unseen
    reference = ScoreTable(n, decay=0.7)  # every field, scores computed afterwards as before
    for epoch in range(4):
        idx = rng.integers(0, n, 400)  # duplicates within a call
        loss = rng.exponential(size=400).astype(np.float32)
        table.update(idx, loss, epoch=epoch)
        reference.update(idx, loss, epoch=epoch)
        expected = core.bandit_scores(reference.mean, reference.var, reference.seen, c, use_std)
        np.testing.assert_array_equal(table.score, expected)  # bit-exact, not approximately
    loaded = ScoreTable(n, decay=0.7, fields=fields, bandit_score=(c, use_std))
    loaded.load_state_dict(reference.state_dict())  # an old-style state with all seven fields
    np.testing.assert_array_equal(loaded.score, table.score)


def test_zero_bonus_weight_reads_no_variance():
    """c == 0 ranks by the mean alone, so an overflowed variance cannot turn 0*inf into a NaN."""
    mean = np.array([1.0, 2.0, 3.0], np.float32)
    var = np.array([np.inf, 0.0, 1.0], np.float32)
    seen = np.array([1, 0, 2], np.int32)
    np.testing.assert_array_equal(core.bandit_scores(mean, var, seen, 0.0, True), [1.0, np.inf, 3.0])
    np.testing.assert_array_equal(core.bandit_scores(mean, np.zeros(0, np.float32), seen, 0.0, True),
                                  [1.0, np.inf, 3.0])
    with pytest.raises(ValueError, match="var has length 0"):
        core.bandit_scores(mean, np.zeros(0, np.float32), seen, 1.0, True)


def test_fewer_fields_bytes_and_clear_errors():
    table = ScoreTable(10, fields=("correct",), bandit_score=(0.0, True))
    assert table.fields == ("mean", "seen", "forgets", "last_correct", "ever_correct")
    assert table.bytes_per_sample == 12  # mean, seen, score; correctness not allocated yet
    with pytest.raises(AttributeError, match="keeps no 'var' field"):
        table.var
    with pytest.raises(AttributeError, match="keeps no score column"):
        ScoreTable(10).score
    every = ScoreTable(10)
    every.update([0], [1.0], [False])
    assert every.bytes_per_sample == 22  # every field, as before (once `correct` was passed)
    table.update([1, 2], [1.0, 2.0])
    assert table.bytes_per_sample == 12 and "forgets" not in table.state_dict()
    table.update([1], [1.0], [True])  # the first `correct` allocates the correctness group
    assert table.bytes_per_sample == 18 and table.ever_correct[1] == 1 and "forgets" in table.state_dict()
    bare = ScoreTable(4, fields=())
    bare.update([0], [1.0], [True])  # correctness not kept: validated, then ignored
    with pytest.raises(AttributeError, match="keeps no 'forgets' field"):
        bare.forgets
    with pytest.raises(ValueError, match="0/1"):
        bare.update([0], [1.0], [2])
    with pytest.raises(ValueError, match="unknown score table fields"):
        ScoreTable(4, fields=("mean",))
    with pytest.raises(ValueError, match="needs the 'var' field"):
        ScoreTable(4, fields=(), bandit_score=(1.0, True))


def test_arrays_are_read_only_views():
    """Only update() and load_state_dict() may change the table, so the score column stays exact."""
    table = ScoreTable(5, bandit_score=(1.0, True))
    for name in ("mean", "var", "seen", "score", "forgets"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(table, name)[0] = 1


def test_loading_old_and_partial_states():
    rng = np.random.default_rng(3)
    state = full_state(50, rng)
    small = ScoreTable(50, fields=("correct",), bandit_score=(0.0, True))
    small.load_state_dict(state)  # the fields it does not keep are ignored
    np.testing.assert_array_equal(small.forgets, state["forgets"].numpy())
    np.testing.assert_array_equal(small.score, core.bandit_scores(state["mean"].numpy(), state["var"].numpy(),
                                                                  state["seen"].numpy(), 0.0, True))
    partial = {k: v for k, v in state.items() if k not in ("forgets", "last_correct", "ever_correct")}
    small.load_state_dict(partial)  # saved before any `correct`: the group is back to unallocated
    assert small.bytes_per_sample == 12 and small.forgets.max() == 0
    full = ScoreTable(50)
    with pytest.raises(KeyError, match="lacks 'var'"):
        full.load_state_dict(small.state_dict())
    with pytest.raises(ValueError, match=r"'seen' has shape \(49,\)"):
        full.load_state_dict({**state, "seen": state["seen"][:49]})
