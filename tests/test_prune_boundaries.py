"""Behaviour of the pruning strategies, score table and sampler that no other test pinned down: a
mutation audit (one change at a time to prune/*.py; 56 mutants, 13 survived the suite, one of them
equivalent) found each of these changes passing. Deferred updates applied exactly as immediate
ones, InfoBatch's rule for prune != 0.5, documented weights, look-backs of one epoch, and the
floors that keep a rank or the below-mean group from being emptied."""

import numpy as np
import pytest
import torch

from fastprune.prune import UCB, Forgetting, InfoBatch, PrunedSampler, ScoreTable


# ---- table.py ------------------------------------------------------------------------------


def test_a_deferred_error_names_the_call_number_within_its_own_epoch():
    """_count_call restarts at 1 in each epoch; without that, epoch 1's first call was
    named 'update() call 3 of epoch 1'."""
    table = ScoreTable(8)
    table.update([0], [1.0], epoch=0, defer=True)
    table.update([1], [1.0], epoch=0, defer=True)
    table.update([2], [float("nan")], epoch=1, defer=True)  # the 1st call of epoch 1
    with pytest.raises(ValueError, match=r"^update\(\) call 1 of epoch 1 \(deferred"):
        table.flush()


def test_deferred_calls_with_and_without_correct_apply_as_immediate_ones():
    """Calls with and without ``correct`` must not be merged into one native update (the
    run's first call decides whether correctness is applied at all)."""
    immediate, deferred = ScoreTable(4), ScoreTable(4)
    calls = [([0, 1], [1.0, 2.0], None), ([2, 3], [1.0, 2.0], [1, 0]), ([2, 3], [1.5, 2.5], [0, 1])]
    for indices, losses, correct in calls:
        immediate.update(indices, losses, correct)
        deferred.update(indices, losses, correct, defer=True)
    deferred.flush()
    for name in ("mean", "seen", "forgets", "last_correct", "ever_correct"):
        np.testing.assert_array_equal(getattr(deferred, name), getattr(immediate, name), err_msg=name)


def test_an_interrupted_flush_keeps_the_updates_not_applied_yet():
    """As flush's docstring says, an interrupt (Ctrl-C) leaves the calls not applied yet staged."""
    table = ScoreTable(4)
    table.update([0], [1.0], epoch=0, defer=True)
    table.update([1], [2.0], epoch=1, defer=True)  # another epoch: a second native update
    real, calls = table._apply_run, []

    def interrupted(run):
        calls.append(run)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(run)

    table._apply_run = interrupted
    with pytest.raises(KeyboardInterrupt):
        table.flush()
    table._apply_run = real
    assert table.pending == 1
    table.flush()
    np.testing.assert_array_equal(table.seen, [1, 1, 0, 0])
    np.testing.assert_array_equal(table.last_epoch, [0, 1, -1, -1])


# ---- strategies.py -------------------------------------------------------------------------


def test_infobatch_paper_rule_keeps_one_minus_prune_of_the_below_mean_samples():
    """keep=None keeps round((1 - prune) * n_below) below-mean samples (the suite used only
    prune=0.5, where prune and 1 - prune agree)."""
    losses = np.random.default_rng(0).gamma(2, 0.5, 1000).astype(np.float32)
    strategy = InfoBatch(1000, None, prune=0.3, epochs=10)
    strategy.update(np.arange(1000), losses)
    mean = float(np.float32(losses.mean()))
    n_below = int((losses < mean).sum())
    k_below = round(0.7 * n_below)
    selection = strategy.select(1)
    assert len(selection) == 1000 - n_below + k_below
    weights = selection.weights[losses[selection.indices] < mean]
    np.testing.assert_allclose(weights, n_below / k_below, rtol=1e-6)


def test_infobatch_keeps_at_least_one_below_mean_sample():
    """k_below is at least 1 while there are below-mean samples: the paper's rule with
    prune=0.9 gives round(0.1 * 4) = 0 of 4 below-mean samples, raised to 1 (weight 4), so the
    weighted loss still estimates the below-mean samples' share instead of dropping it."""
    strategy = InfoBatch(10, None, prune=0.9, epochs=10)
    strategy.update(np.arange(10), np.r_[np.full(6, 5.0), np.full(4, 0.1)].astype(np.float32))
    selection = strategy.select(1)
    below = selection.indices >= 6
    assert len(selection) == 7 and below.sum() == 1 and selection.weights[below][0] == 4.0


# ---- base.py -------------------------------------------------------------------------------


def test_weighted_loss_weighs_a_sample_outside_the_selection_one():
    """weighted_loss looks weights up in the current selection, '1 for a sample outside it'."""
    losses = np.random.default_rng(0).gamma(2, 0.5, 200).astype(np.float32)
    strategy = InfoBatch(200, 0.5, epochs=10)
    strategy.update(np.arange(200), losses)
    selection = strategy.select(1)
    assert (selection.weights != 1).any()
    outside = np.setdiff1d(np.arange(200), selection.indices)[:3]
    loss = strategy.weighted_loss(torch.from_numpy(outside), torch.tensor([1.0, 2.0, 3.0]))
    assert float(loss) == pytest.approx(2.0)


def test_a_sharded_rank_keeps_at_least_one_sample():
    """_quota: 'a sharded strategy keeps an equal share of it on every rank (at least one)':
    keep=0.1 of 10 samples over 2 ranks is 1 // 2 = 0, raised to 1."""
    strategy = UCB(10, keep=0.1, distributed=("sharded", 0, 2))
    assert strategy.num_selected(0) == 1
    assert len(strategy.select(0)) == 1


def test_looking_back_one_epoch_leaves_the_current_one_alone():
    """select(e - 1) during epoch e is a look back (as Loader.epoch_order(e - 1)): the current
    epoch, and the epoch later updates count toward, stay e (the suite looked back 3 epochs)."""
    strategy = UCB(100, 0.5, seed=1)
    strategy.select(0)
    strategy.update(np.arange(100), np.linspace(0, 1, 100, dtype=np.float32))
    current = strategy.select(1).indices
    others = np.setdiff1d(np.arange(100), current)[:10]
    strategy.update(others, np.full(10, 5.0, np.float32))  # scores move: a new choice would take these
    strategy.select(0)
    assert strategy.current_epoch == 1
    np.testing.assert_array_equal(strategy.select(1).indices, current)  # still the cached subset


def test_a_checkpoint_with_last_kept_epochs_below_minus_one_is_refused():
    """_load_kept refuses last kept epochs < -1 (-1 means never kept)."""
    strategy = UCB(10, 0.5)
    strategy.select(0)
    state = strategy.state_dict()
    state["kept"]["last_epoch"][3] = -7
    with pytest.raises(ValueError, match="negative values"):
        UCB(10, 0.5).load_state_dict(state)


# ---- sampler.py ----------------------------------------------------------------------------


def test_sampler_weights_are_zero_outside_the_latest_pass():
    """PrunedSampler.weights: '0 for samples outside it'."""
    strategy = UCB(20, 0.5, seed=0)
    sampler = PrunedSampler(strategy, distributed=False)
    visited = set(iter(sampler))
    outside = [i for i in range(20) if i not in visited]
    assert outside and (sampler.weights(torch.tensor(outside)) == 0).all()
    assert (sampler.weights(torch.tensor(sorted(visited))) == 1).all()


# ---- static.py -----------------------------------------------------------------------------


def test_forgetting_ranks_a_sample_never_observed_first_not_last():
    """A sample with no update at all in the scoring epochs (seen == 0) was never classified
    correctly: +inf, kept first. Only one whose every loss was skipped (seen == -1) ranks last."""
    strategy = Forgetting(10, keep=0.2, score_epochs=1, seed=0)
    strategy.select(0)
    strategy.update(np.arange(8), np.ones(8, np.float32), correct=np.ones(8, np.int8))  # 8, 9 unseen
    assert sorted(strategy.select(1).indices.tolist()) == [8, 9]


# ---- report.py -----------------------------------------------------------------------------


def test_kept_order_breaks_equal_times_kept_by_the_higher_score():
    """kept_order: 'times kept, then score (ties: lower id first)'."""
    from fastprune.prune.report import kept_order

    report = {"times_kept": np.array([2, 2, 2, 5]), "score": np.array([0.1, 0.9, 0.5, 0.0]), "index": np.arange(4)}
    assert kept_order(report, np.arange(4)).tolist() == [3, 1, 2, 0]
