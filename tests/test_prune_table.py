"""ScoreTable's native scatter update against a plain-Python oracle."""

import numpy as np
import pytest
import torch

from fastprune.prune import ScoreTable


def oracle_update(state, indices, losses, correct, decay, epoch):
    """The update rule written one entry at a time, in float64."""
    for j, (i, loss) in enumerate(zip(indices, losses)):
        loss = float(np.float32(loss))
        if state["seen"][i] == 0:
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
    with pytest.raises(ValueError, match=r"losses\[0\].*sample 2.*not finite"):
        table.update([2], [np.nan])
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
    np.testing.assert_array_equal(table.seen, [1, 0, 1, 0, 0])
    assert table.mean[2] == 3.0


def test_bad_construction():
    with pytest.raises(ValueError, match="num_samples"):
        ScoreTable(0)
    with pytest.raises(ValueError, match="decay"):
        ScoreTable(3, decay=1.0)
