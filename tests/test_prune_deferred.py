"""Deferred updates (issue 35): a GPU's losses are staged on the device and applied when the
scores are read. The same sequence of updates through the deferred path and the immediate one
must give bit-identical tables and selections; CI has no GPU, so the deferred path runs here on
CPU tensors by forcing it (``defer=True``), and on "meta" tensors (no data at all) to show that
an update reads no value."""

import numpy as np
import pytest
import torch

from fastprune.prune import EL2N, UCB, EpsilonGreedy, Forgetting, InfoBatch, ScoreTable, UniformRandom

N = 300
STRATEGIES = {
    "eps-greedy": lambda: EpsilonGreedy(N, 0.4, seed=3),
    "ucb": lambda: UCB(N, 0.4, seed=3, labels=np.arange(N) % 3),
    "infobatch": lambda: InfoBatch(N, 0.5, epochs=6, seed=3),
    "uniform": lambda: UniformRandom(N, 0.5, seed=3, keep_schedule=[1.0, 0.3, 0.6]),
    "el2n": lambda: EL2N(N, 0.5, seed=3),
    "forgetting": lambda: Forgetting(N, 0.5, seed=3),
    "skip-invalid": lambda: UCB(N, 0.5, seed=3, skip_invalid=True),
}


def _steps(epoch, rng):
    """One epoch's update() calls: mixed dtypes (bf16, float64, int labels of correctness),
    duplicate ids within and across calls, numpy and tensor inputs."""
    steps = []
    for step in range(6):
        ids = rng.integers(0, N, 40)
        losses = rng.exponential(size=40)
        if step % 3 == 0:
            losses[rng.integers(0, 40, 2)] = np.nan  # skipped under skip_invalid only
        correct = rng.random(40) < 0.5
        kind = (epoch + step) % 4
        if kind == 0:
            steps.append((torch.from_numpy(ids), torch.tensor(losses, dtype=torch.bfloat16), torch.from_numpy(correct)))
        elif kind == 1:
            steps.append((torch.from_numpy(ids).int(), torch.from_numpy(losses), torch.from_numpy(correct).long()))
        elif kind == 2:
            steps.append((ids, losses.astype(np.float32), correct))
        else:
            steps.append((torch.from_numpy(ids), torch.from_numpy(losses).float(), torch.from_numpy(correct)))
    return steps


def _clean(steps):
    """The steps with every NaN loss replaced by 1 (for strategies that refuse NaN)."""
    return [(ids, torch.nan_to_num(torch.as_tensor(losses), 1.0), correct) for ids, losses, correct in steps]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_deferred_updates_give_bit_identical_tables_and_selections(name):
    immediate, deferred = STRATEGIES[name](), STRATEGIES[name]()
    rng = np.random.default_rng(1)
    for epoch in range(6):
        a, b = immediate.select(epoch), deferred.select(epoch)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.weights, b.weights)
        assert deferred.table.pending == 0  # the select applied everything staged before it
        steps = _steps(epoch, rng)
        if name != "skip-invalid":
            steps = _clean(steps)
        for ids, losses, correct in steps:
            immediate.update(ids, losses, correct)
            assert deferred.update(ids, losses, correct, defer=True) is None
        assert deferred.table.pending == 240
        # num_selected (InfoBatch's depends on the scores) sees the staged updates too
        assert immediate.num_selected(epoch + 1) == deferred.num_selected(epoch + 1)
    a, b = immediate.state_dict(), deferred.state_dict()
    assert a["table"].keys() == b["table"].keys()
    for field in a["table"]:
        assert torch.equal(a["table"][field], b["table"][field]), field
    if immediate.table.bandit_score is not None:  # a score column
        np.testing.assert_array_equal(immediate.table.score, deferred.table.score)


def test_staged_updates_wait_for_a_read_and_keep_their_epoch():
    table = ScoreTable(5, decay=0.5)
    table.update(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), epoch=0, defer=True)
    table.update(torch.tensor([0]), torch.tensor([3.0]), epoch=4, defer=True)
    assert table.pending == 3
    np.testing.assert_array_equal(table._arrays["seen"], 0)  # nothing applied yet
    np.testing.assert_array_equal(table.mean, [2.0, 2.0, 0, 0, 0])  # reading applies, in order
    np.testing.assert_array_equal(table.last_epoch, [4, 0, -1, -1, -1])
    assert table.pending == 0
    # an immediate update after a staged one keeps the order
    table.update(torch.tensor([2]), torch.tensor([7.0]), epoch=5, defer=True)
    table.update(torch.tensor([2]), torch.tensor([1.0]), epoch=5)
    assert table.mean[2] == np.float32(4.0) and table.seen[2] == 2


def test_staged_tensors_are_copies_on_their_device():
    table = ScoreTable(4, decay=0.0)
    ids, losses = torch.tensor([0, 1]), torch.tensor([1.0, 2.0])
    table.update(ids, losses, epoch=0, defer=True)
    ids[0], losses[0] = 3, 9.0  # a recycled buffer, or an in-place op after the update
    np.testing.assert_array_equal(table.mean, [1.0, 2.0, 0, 0])


def test_a_device_loss_is_staged_without_reading_any_value():
    # "meta" tensors have no data: any copy to the host or value check would raise here
    strategy = UCB(10, 0.5, seed=0)
    strategy.select(0)
    assert strategy.update(torch.tensor([1, 2]), torch.ones(2, device="meta"),
                           torch.ones(2, dtype=torch.bool, device="meta")) is None
    assert strategy.table.pending == 2
    strategy.table._pending.clear()  # (meta values cannot be applied)
    strategy.table._pending_entries = 0
    # CPU tensors keep today's immediate path: applied and counted at once
    assert strategy.update(torch.tensor([1, 2]), torch.tensor([1.0, 5.0])) == 0
    assert strategy.table.pending == 0 and strategy.table.seen[2] == 1


def test_shape_and_dtype_errors_are_raised_at_the_call():
    table = ScoreTable(10)
    with pytest.raises(ValueError, match=r"losses has 3 entries but indices has 2"):
        table.update(torch.tensor([0, 1]), torch.zeros(3), defer=True)
    with pytest.raises(ValueError, match=r"losses must be 1-D .* got shape \(2, 1\)"):
        table.update(torch.tensor([0, 1]), torch.zeros(2, 1), defer=True)
    with pytest.raises(ValueError, match="indices must be integers, got dtype float32"):
        table.update(torch.tensor([0.0, 1.0]), torch.zeros(2), defer=True)
    with pytest.raises(ValueError, match="correct must be booleans or 0/1 integers, got dtype float32"):
        table.update(torch.tensor([0, 1]), torch.zeros(2), torch.zeros(2), defer=True)
    assert table.pending == 0


@pytest.mark.parametrize("bad, error, message", [
    ((torch.tensor([1, 2]), torch.tensor([1.0, float("nan")]), None), ValueError,
     r"update\(\) call 3 of epoch 2 \(deferred, applied now\): score update: losses\[1\] = nan \(sample 2\) is not finite"),
    ((torch.tensor([1, 12]), torch.tensor([1.0, 1.0]), None), IndexError,
     r"update\(\) call 3 of epoch 2 .*indices\[1\] = 12 is out of range for a table of 10 samples"),
    ((torch.tensor([1, 2]), torch.tensor([1.0, 1.0]), torch.tensor([0, 2])), ValueError,
     r"update\(\) call 3 of epoch 2 .*correct must contain only 0/1"),
])
def test_a_deferred_error_names_the_call_and_leaves_the_calls_before_it_applied(bad, error, message):
    immediate, deferred = UCB(10, 0.5, seed=0), UCB(10, 0.5, seed=0)
    for strategy in (immediate, deferred):
        strategy.select(2)
    good = [(torch.tensor([1, 3]), torch.tensor([0.5, 2.0]), torch.tensor([1, 0])),
            (torch.tensor([3, 4]), torch.tensor([1.5, 4.0]), torch.tensor([1, 1]))]
    for step in good:
        immediate.update(*step)
        deferred.update(*step, defer=True)
    deferred.update(*bad, defer=True)
    deferred.update(*good[0], defer=True)  # after the fault: dropped
    with pytest.raises(error, match=message):
        deferred.select(3)
    with pytest.raises(error):  # the immediate path raises at the call, table untouched
        immediate.update(*bad)
    for field, value in immediate.table.state_dict().items():
        assert torch.equal(value, deferred.table.state_dict()[field]), field
    assert deferred.table.pending == 0


def test_pending_updates_stay_bounded(monkeypatch):
    monkeypatch.setattr(ScoreTable, "max_pending", 100)
    immediate, deferred = ScoreTable(50), ScoreTable(50)
    rng = np.random.default_rng(0)
    for step in range(11):  # flushed after calls 4 and 8, 3 calls wait
        ids, losses = torch.from_numpy(rng.integers(0, 50, 30)), torch.from_numpy(rng.random(30).astype(np.float32))
        immediate.update(ids, losses, epoch=step)
        deferred.update(ids, losses, epoch=step, defer=True)
        assert deferred.pending <= 100
    assert deferred.pending == 90
    np.testing.assert_array_equal(immediate.mean, deferred.mean)
    np.testing.assert_array_equal(immediate.last_epoch, deferred.last_epoch)


def test_flush_returns_the_skipped_count_and_state_dict_round_trips():
    strategy = UCB(10, 0.5, seed=0, skip_invalid=True)
    strategy.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, float("inf"), float("nan")]), defer=True)
    assert strategy.flush() == 2 and strategy.flush() == 0
    strategy.update(torch.tensor([3]), torch.tensor([2.0]), defer=True)
    state = strategy.state_dict()  # applies the staged update first
    assert int(state["table"]["seen"][3]) == 1
    restored = UCB(10, 0.5, seed=0, skip_invalid=True)
    restored.update(torch.tensor([5]), torch.tensor([2.0]), defer=True)
    restored.load_state_dict(state)  # staged updates made before a load are replaced by it
    assert restored.table.pending == 0 and restored.table.seen[5] == 0
    np.testing.assert_array_equal(restored.table.score, strategy.table.score)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_losses_are_deferred_by_default_and_match_the_host_path():
    immediate, deferred = UCB(N, 0.5, seed=0), UCB(N, 0.5, seed=0)
    rng = np.random.default_rng(0)
    for epoch in range(3):
        np.testing.assert_array_equal(immediate.select(epoch).indices, deferred.select(epoch).indices)
        for ids, losses, correct in _clean(_steps(epoch, rng)):
            losses = torch.as_tensor(losses)
            immediate.update(ids, losses, correct)
            on_gpu = [torch.as_tensor(x).cuda() for x in (ids, losses, correct)]
            assert deferred.update(*on_gpu) is None
        assert deferred.table.pending > 0
    np.testing.assert_array_equal(immediate.table.score, deferred.table.score)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 1.1])
def test_a_ctrl_c_during_a_flush_neither_drops_nor_repeats_updates(fraction, ctrl_c_raises):
    """flush() emptied the staged updates before applying them: a Ctrl-C then lost them all, and
    the next selection ranked without that epoch's losses. Each run of calls is now applied and
    counted as one, so an interrupt leaves every update either applied or staged, once."""
    import os
    import signal
    import threading
    import time

    def staged_strategy():
        strategy = UCB(50_000, keep=0.5, seed=0)
        strategy.select(0)
        rng = np.random.default_rng(0)
        for _ in range(4_000):
            strategy.update(torch.from_numpy(rng.integers(0, 50_000, 5)), torch.rand(5), defer=True)
        return strategy

    timing = staged_strategy()
    started = time.perf_counter()
    timing.flush()
    duration = time.perf_counter() - started

    strategy = staged_strategy()
    go = threading.Event()

    def interrupt():  # from another thread, as a terminal's Ctrl-C may reach any thread
        go.wait()
        time.sleep(duration * fraction)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt).start()
    try:
        go.set()
        strategy.flush()
        time.sleep(max(0.5, 2 * duration))  # the signal, if it comes after the flush
    except KeyboardInterrupt:
        pass
    strategy.flush()
    assert int(strategy.table.seen.sum()) == 20_000  # every update once
