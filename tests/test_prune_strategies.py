"""Strategies: sizes, contents against numpy oracles, epoch phases, determinism, unbiasedness."""

import numpy as np
import torch
import pytest

from fastprune._native import core
from fastprune.errors import UsageWarning
from fastprune.random_streams import tie_order
from fastprune.prune import (EL2N, UCB, EpsilonGreedy, Forgetting, Full, InfoBatch, ScoreTable, Selection,
                             UniformRandom)


def feed(strategy, epoch, rng, n=None):
    """Select an epoch and report a random loss for each selected sample."""
    sel = strategy.select(epoch)
    losses = rng.exponential(size=len(sel)).astype(np.float32)
    strategy.update(sel.indices, losses, rng.random(len(sel)) < 0.7)
    return sel


def check_selection(sel: Selection, n: int, k: int):
    assert isinstance(sel, Selection) and len(sel) == k
    assert sel.indices.dtype == np.int64 and sel.weights.dtype == np.float32
    assert len(np.unique(sel.indices)) == k  # no duplicates
    assert sel.indices.min() >= 0 and sel.indices.max() < n


ALL = [lambda n: Full(n), lambda n: UniformRandom(n, 0.3, seed=1), lambda n: EpsilonGreedy(n, 0.3, seed=1),
       lambda n: UCB(n, 0.3, seed=1), lambda n: InfoBatch(n, 0.3, epochs=10, seed=1),
       lambda n: EL2N(n, 0.3, seed=1), lambda n: Forgetting(n, 0.3, seed=1)]


@pytest.mark.parametrize("make", ALL)
def test_num_selected_is_exact_and_select_is_repeatable(make):
    n, rng = 503, np.random.default_rng(0)
    strategy = make(n)
    for epoch in range(6):
        k = strategy.num_selected(epoch)
        assert strategy.num_selected(epoch) == k  # no side effects
        sel = strategy.select(epoch)
        check_selection(sel, n, k)
        losses = rng.exponential(size=len(sel)).astype(np.float32)
        strategy.update(sel.indices, losses, rng.random(len(sel)) < 0.7)
        again = strategy.select(epoch)  # after updates: still the same epoch's selection
        np.testing.assert_array_equal(again.indices, sel.indices)
        np.testing.assert_array_equal(again.weights, sel.weights)


@pytest.mark.parametrize("make", ALL[1:])
def test_same_seed_same_run(make):
    a, b = make(300), make(300)
    ra, rb = np.random.default_rng(5), np.random.default_rng(5)
    for epoch in range(5):
        np.testing.assert_array_equal(feed(a, epoch, ra).indices, feed(b, epoch, rb).indices)


@pytest.mark.parametrize("make", ALL[2:])
def test_micro_batch_updates_equal_one_joined_update_per_step(make):
    """Gradient accumulation (docs/guide.md): each micro-batch's update, or one per optimizer step
    with the micro-batches joined, leaves the same table and the same next selections."""
    per_micro, joined = make(300), make(300)
    rng = np.random.default_rng(3)
    for epoch in range(4):
        sel = per_micro.select(epoch)
        np.testing.assert_array_equal(joined.select(epoch).indices, sel.indices)
        for step in np.array_split(np.arange(len(sel)), 5):  # optimizer steps of 4 micro-batches each
            micro = np.array_split(sel.indices[step], 4)
            losses = [rng.exponential(size=len(m)).astype(np.float32) for m in micro]
            correct = [rng.random(len(m)) < 0.7 for m in micro]
            for m, loss, ok in zip(micro, losses, correct):
                per_micro.update(m, loss, ok)
            joined.update(np.concatenate(micro), np.concatenate(losses), np.concatenate(correct))
    assert per_micro.table.fields == joined.table.fields
    for field in per_micro.table.fields:
        np.testing.assert_array_equal(getattr(per_micro.table, field), getattr(joined.table, field))
    np.testing.assert_array_equal(per_micro.select(4).indices, joined.select(4).indices)


def test_full():
    sel = Full(7).select(3)
    np.testing.assert_array_equal(sel.indices, np.arange(7))
    np.testing.assert_array_equal(sel.weights, np.ones(7))


def test_uniform_random_changes_every_epoch():
    s = UniformRandom(1000, 0.5)
    a, b = s.select(0).indices, s.select(1).indices
    assert len(a) == 500 and not np.array_equal(a, b)


def topk_oracle(scores, k):
    return set(np.argsort(-scores, kind="stable")[:k].tolist())


def test_epsilon_greedy_eps0_is_exact_top_k_of_ema_loss():
    n, rng = 400, np.random.default_rng(1)
    s = EpsilonGreedy(n, 0.25, eps=0.0, warmup_epochs=1)
    s.update(np.arange(n), rng.random(n))  # epoch 0 (warm-up): every sample seen
    for epoch in range(1, 4):
        sel = s.select(epoch)
        assert set(sel.indices.tolist()) == topk_oracle(s.table.mean, 100)
        s.update(sel.indices, rng.random(len(sel)))


def test_epsilon_greedy_mixes_top_and_random():
    n, rng = 1000, np.random.default_rng(2)
    s = EpsilonGreedy(n, 0.4, eps=0.25)
    s.update(np.arange(n), rng.random(n))
    chosen = set(s.select(1).indices.tolist())
    top = topk_oracle(s.table.mean, 300)  # (1 - eps) * 400
    assert top <= chosen and len(chosen) == 400


def test_unseen_samples_are_tried_first():
    s = EpsilonGreedy(100, 0.3, eps=0.0)
    seen = set()
    for epoch in range(3):
        sel = s.select(epoch)
        assert not (set(sel.indices.tolist()) & seen) or len(seen) > 70
        seen |= set(sel.indices.tolist())
        s.update(sel.indices, np.ones(len(sel)))
    assert len(seen) >= 90


@pytest.mark.parametrize("bonus", ["std", "var"])
def test_ucb_is_top_k_of_mean_plus_bonus(bonus):
    n, rng = 300, np.random.default_rng(3)
    s = UCB(n, 0.2, c=2.0, bonus=bonus)
    for _ in range(3):
        s.update(np.arange(n), rng.exponential(size=n))
    b = np.sqrt(s.table.var) if bonus == "std" else s.table.var
    scores = (s.table.mean + np.float32(2.0) * b).astype(np.float32)
    assert set(s.select(0).indices.tolist()) == topk_oracle(scores, 60)


def test_warmup_final_and_reselect_every():
    s = UniformRandom(200, 0.25, warmup_epochs=2, final_full_epochs=2, epochs=10, reselect_every=3)
    assert [s.num_selected(e) for e in range(10)] == [200, 200, 50, 50, 50, 50, 50, 50, 200, 200]
    np.testing.assert_array_equal(s.select(2).indices, s.select(4).indices)
    assert not np.array_equal(s.select(4).indices, s.select(5).indices)
    np.testing.assert_array_equal(s.select(5).indices, s.select(7).indices)
    assert len(s.select(9)) == 200


def test_class_balanced_quotas():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    rng = np.random.default_rng(4)
    labels = rng.permutation(labels)
    for s in [UCB(1000, 0.3, labels=labels), UniformRandom(1000, 0.3, labels=labels),
              InfoBatch(1000, 0.5, epochs=10, labels=labels)]:
        s.update(np.arange(1000), rng.exponential(size=1000))
        sel = s.select(1)
        counts = np.bincount(labels[sel.indices], minlength=3)
        if isinstance(s, InfoBatch):
            assert abs(len(sel) - 500) <= 3  # per-class rounding only
            np.testing.assert_allclose(counts / [500, 300, 200], 0.5, atol=0.01)
        else:
            np.testing.assert_array_equal(counts, [150, 90, 60])
        assert s.num_selected(1) == len(sel)


def infobatch_table(n=2000, seed=0):
    s = InfoBatch(n, 0.6, epochs=10, seed=seed)
    losses = np.random.default_rng(42).exponential(size=n).astype(np.float32)
    s.update(np.arange(n), losses)
    return s, losses


def test_infobatch_hits_the_overall_target_and_weights():
    s, losses = infobatch_table()
    sel = s.select(1)
    assert len(sel) == 1200 == s.num_selected(1)
    above = losses >= np.float32(losses.astype(np.float64).mean())
    kept_above = above[sel.indices]
    assert set(np.flatnonzero(above)) <= set(sel.indices.tolist())
    assert np.all(sel.weights[kept_above] == 1.0)
    n_below, k_below = (~above).sum(), (~kept_above).sum()
    np.testing.assert_allclose(sel.weights[~kept_above], n_below / k_below, rtol=1e-6)


def test_infobatch_is_unbiased_over_seeds():
    n = 500
    losses = np.random.default_rng(7).exponential(size=n)
    values = np.random.default_rng(8).normal(size=n)  # a per-sample "gradient" component
    sums = []
    inclusion = np.zeros(n)
    for seed in range(3000):
        s = InfoBatch(n, 0.5, epochs=10, seed=seed)
        s.update(np.arange(n), losses)
        sel = s.select(1)
        sums.append(float((values[sel.indices] * sel.weights).sum()))
        inclusion[sel.indices] += sel.weights
    sums = np.array(sums)
    stderr = sums.std() / np.sqrt(len(sums))
    assert abs(sums.mean() - values.sum()) < 4 * stderr
    # each sample's expected weight is 1 (inclusion probability x weight)
    assert np.abs(inclusion / 3000 - 1).max() < 0.25


def test_infobatch_classic_prune_ratio_and_final_epochs():
    s = InfoBatch(1000, None, prune=0.5, epochs=8, delta=0.75)  # epochs 6, 7 use full data
    losses = np.random.default_rng(1).exponential(size=1000)
    s.update(np.arange(1000), losses)
    n_below = (losses < np.float32(losses.mean())).sum()
    assert s.num_selected(1) == 1000 - n_below + round(0.5 * n_below)
    assert [s.is_full_epoch(e) for e in range(8)] == [False] * 6 + [True] * 2
    assert len(s.select(7)) == 1000


def test_infobatch_unreachable_target_keeps_min_fraction():
    s = InfoBatch(1000, 0.1, epochs=10, min_below_keep=0.2)
    losses = np.random.default_rng(1).exponential(size=1000)
    s.update(np.arange(1000), losses)
    n_below = (losses < np.float32(losses.mean())).sum()
    assert s.num_selected(1) == 1000 - n_below + int(np.ceil(0.2 * n_below))


def test_el2n_scores_then_fixes_the_subset():
    n, rng = 300, np.random.default_rng(9)
    s = EL2N(n, 0.2, score_epochs=2)
    total = np.zeros(n)
    for epoch in range(2):
        sel = s.select(epoch)
        assert len(sel) == n
        losses = rng.exponential(size=n)
        total += losses.astype(np.float32)
        s.update(sel.indices, losses)
    fixed = s.select(2)
    assert set(fixed.indices.tolist()) == topk_oracle((total / 2).astype(np.float32), 60)
    s.update(fixed.indices, rng.exponential(size=60) * 100)
    for epoch in (3, 7):
        np.testing.assert_array_equal(s.select(epoch).indices, fixed.indices)


def test_forgetting_counts_events_and_ranks_unlearned_first():
    s = Forgetting(6, 0.5, score_epochs=3)
    pattern = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0]])  # rows: samples
    for epoch in range(3):
        s.select(epoch)
        s.update(np.arange(6), np.ones(6), pattern[:, epoch])
    np.testing.assert_array_equal(s.table.forgets, [1, 0, 0, 1, 0, 1])
    chosen = set(s.select(3).indices.tolist())  # never learned (2) first, then ties among 1-forget ones
    assert len(chosen) == 3 and 2 in chosen and chosen <= {0, 2, 3, 5}
    with pytest.raises(ValueError, match="needs `correct`"):
        s.update([0], [1.0])


def test_bad_options_name_the_argument():
    for make, match in [(lambda: UCB(10, 0.0), "keep"), (lambda: UCB(10, 0.5, c=-1), "c must"),
                        (lambda: UCB(10, 0.5, bonus="x"), "bonus"), (lambda: EpsilonGreedy(10, eps=2), "eps"),
                        (lambda: UniformRandom(10, 0.5, final_full_epochs=1), "needs epochs"),
                        (lambda: UniformRandom(10, 0.5, reselect_every=0), "reselect_every must be an integer in "
                                                                                   "\\[1, "),
                        (lambda: UniformRandom(10, 0.5, reselect_every=2.5), "reselect_every must be an integer"),
                        (lambda: UniformRandom(10, 0.01), "keeps no sample"),
                        (lambda: UCB(10, labels=[0, 1]), "labels"),
                        (lambda: InfoBatch(10, epochs=5, delta=0), "delta"),
                        (lambda: EL2N(10, score_epochs=0), "score_epochs must be an integer in \\[1, "),
                        (lambda: UCB(10, 0.5, epochs=0), "epochs must be an integer in \\[1, "),
                        (lambda: InfoBatch(10, epochs=0), "epochs must be an integer in \\[1, "),
                        # each mode's knob was accepted by the other and ignored
                        (lambda: InfoBatch(10, epochs=5, prune=0.3), "prune=0.3 sets the paper's rule, which "
                                                                      "applies with keep=None"),
                        (lambda: InfoBatch(10, None, epochs=5, min_below_keep=0.2), "with keep=None the paper's"),
                        (lambda: EL2N(10, score_epochs=1.5), "score_epochs must be an integer")]:
        with pytest.raises(ValueError, match=match):
            make()
    with pytest.raises(ValueError, match="epoch"):
        UCB(10).select(-1)


def _largest_remainder(sizes: np.ndarray, total: int, tie_order: np.ndarray) -> list[int]:
    """A slow split of ``total`` in proportion to ``sizes``: floors, then one more for the largest
    remainders (exact fractions; equal ones to the group earliest in ``tie_order``)."""
    from fractions import Fraction

    if total == 0:
        return [0] * len(sizes)
    rank = {int(g): r for r, g in enumerate(tie_order)}
    exact = [Fraction(int(size) * total, int(sizes.sum())) for size in sizes]
    parts = [int(e) for e in exact]
    for g in sorted(range(len(sizes)), key=lambda g: (-(exact[g] - parts[g]), rank[g]))[: total - sum(parts)]:
        parts[g] += 1
    return parts


def test_the_uniform_part_of_a_class_balanced_epsilon_greedy_is_eps_of_the_whole_quota():
    """100 classes of 10 at keep 0.5, eps 0.1: eps·5 rounds to 0 per class, and none of the 500
    picks was uniform (pure greedy: dropped samples' stale scores never refreshed). The uniform
    part is eps·k of the whole quota, split over the classes."""
    rng = np.random.default_rng(0)
    labels = np.arange(1000) % 100
    strategy = EpsilonGreedy(1000, 0.5, eps=0.1, labels=labels, seed=0)
    losses = rng.random(1000).astype(np.float32)
    strategy.update(np.arange(1000), losses)
    chosen = strategy.select(1).indices
    greedy_top4 = {int(i) for c in range(100) for i in np.flatnonzero(labels == c)[np.argsort(-losses[labels == c])[:4]]}
    assert len(chosen) == 500 and greedy_top4 <= set(chosen.tolist())
    quotas = strategy._pool_quotas(1)
    random_parts = strategy._random_parts(quotas, 1)
    assert int(random_parts.sum()) == 50
    assert list(random_parts) == _largest_remainder(quotas, 50, tie_order(0, 1, 1, 100))
    outside_top5 = set(chosen.tolist()) - {int(i) for c in range(100) for i in
                                           np.flatnonzero(labels == c)[np.argsort(-losses[labels == c])[:5]]}
    assert 30 <= len(outside_top5) <= 50  # each class's one uniform pick misses its 5th-best 5 times in 6


def old_selection(strategy, epoch, state, c, use_std, eps=0.0):
    """What the strategies selected before the score column: scores materialised from a full
    table state by bandit_scores, then select_top_random per class pool (streams 0, 1, 2, ...)."""
    scores = core.bandit_scores(state["mean"].numpy(), state["var"].numpy(), state["seen"].numpy(), c, use_std)
    pools = [None] if strategy._pools is None else strategy._pools
    quotas = [strategy.num_kept] if strategy._pools is None else strategy._pool_quotas(epoch)
    parts = []
    # the uniform part of the whole quota, split over the class pools by largest remainder
    total_rand = int(round(eps * int(np.sum(quotas))))
    k_rands = [total_rand] if strategy._pools is None else _largest_remainder(
        np.asarray(quotas), total_rand, tie_order(strategy.seed, epoch, 1, len(quotas)))
    for stream, (pool, quota, k_rand) in enumerate(zip(pools, quotas, k_rands),
                                                   start=0 if strategy._pools is None else 1):
        k_rand = int(k_rand)
        sub = scores if pool is None else np.ascontiguousarray(scores[pool])
        got = core.select_top_random(sub, int(quota) - k_rand, k_rand, strategy.seed, epoch, stream)
        parts.append(got if pool is None else pool[got])
    return np.concatenate(parts)


@pytest.mark.parametrize("keep", [0.003, 0.3, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("labels", [False, True])
def test_bandits_select_what_scores_then_select_did(keep, labels):
    """The score column changes where scores are computed, not what is selected: the same ids as
    computing the scores from an old-style (seven-field) state and then selecting, for every
    keep, with class pools, ties (unseen samples score +inf) and equal losses."""
    n, rng = 2000, np.random.default_rng(int(keep * 1000) + labels)
    full = UCB(n, 0.5)  # a full old-style table: every sample's fields, some unseen, many equal losses
    part = np.flatnonzero(rng.random(n) < 0.85)
    for epoch in range(3):
        idx = part[rng.random(len(part)) < 0.8]
        full.table.update(idx, np.round(rng.exponential(size=len(idx)), 1), rng.random(len(idx)) < 0.5)
    state = {**full.table.state_dict(), "last_epoch": torch.zeros(n, dtype=torch.int32)}
    opts = {"seed": 4, "labels": rng.integers(0, 3, n) if labels else None}
    cases = [(EpsilonGreedy(n, keep, eps=0.2, **opts), 0.0, True, 0.2), (EL2N(n, keep, **opts), 0.0, True, 0.0),
             (UCB(n, keep, c=1.3, **opts), 1.3, True, 0.0), (UCB(n, keep, c=0.5, bonus="var", **opts), 0.5, False, 0.0)]
    batch = rng.integers(0, n, 300)  # an update after loading: the column must follow it
    losses = np.round(rng.exponential(size=300), 1)
    for strategy, c, use_std, eps in cases:
        strategy.table.load_state_dict(state)
        reference = ScoreTable(n, decay=strategy.table.decay)
        reference.load_state_dict(state)
        strategy.table.update(batch, losses)
        reference.update(batch, losses)
        epoch = 5 if not isinstance(strategy, EL2N) else strategy.warmup_epochs
        got = np.sort(strategy.select(epoch).indices)
        expected = old_selection(strategy, epoch, reference.state_dict(), c, use_std, eps)
        np.testing.assert_array_equal(got, np.sort(expected), err_msg=type(strategy).__name__)


def test_nan_in_a_loaded_table_is_a_clean_error():
    s = UCB(100, 0.5)
    state = s.table.state_dict()
    state["seen"][:] = 1
    state["mean"][17] = float("nan")
    s.table.load_state_dict(state)
    with pytest.raises(ValueError, match=r"scores\[17\] is NaN"):
        s.select(0)


def test_bytes_per_sample_per_strategy():
    """22 bytes per sample before; now each strategy keeps what it reads (+6 once `correct` is given)."""
    sizes = {type(s).__name__: s.table.bytes_per_sample for s in
             [EpsilonGreedy(10), UCB(10), InfoBatch(10, epochs=4), UniformRandom(10), EL2N(10), Forgetting(10)]}
    assert sizes == {"EpsilonGreedy": 12, "UCB": 16, "InfoBatch": 8, "UniformRandom": 8, "EL2N": 12, "Forgetting": 8}
    s = EpsilonGreedy(10)
    s.update([1], [0.5], [True])
    assert s.table.bytes_per_sample == 18 and s.table.forgets.sum() == 0


def test_every_pruning_strategy_keeps_half_by_default():
    """UniformRandom(n) once kept everything (the base class's keep): a random baseline that prunes nothing."""
    for strategy in (UniformRandom(100), EpsilonGreedy(100), UCB(100)):
        assert strategy.num_selected(0) == 50, type(strategy).__name__


@pytest.mark.parametrize("make", [
    lambda **kw: EpsilonGreedy(1000, 0.3, seed=3, **kw),
    lambda **kw: UCB(1000, 0.3, seed=3, **kw),
    lambda **kw: UniformRandom(1000, 0.3, seed=3, **kw),
    lambda **kw: EpsilonGreedy(1000, 0.3, seed=3, labels=np.arange(1000) % 7, **kw),
])
def test_a_keep_schedule_sets_each_epochs_size_and_full_epochs(make):
    strategy = make(keep_schedule=[0.1, 0.25, 1.0, 0.5])
    rng = np.random.default_rng(0)
    sizes = []
    for epoch in range(6):
        selection = strategy.select(epoch)
        assert strategy.num_selected(epoch) == len(selection)
        assert len(np.unique(selection.indices)) == len(selection)
        strategy.update(selection.indices, rng.random(len(selection)).astype(np.float32))
        sizes.append(len(selection))
    # the schedule's fractions, then `keep` once it has run out; 1.0 is a full epoch (every index)
    assert sizes == [100, 250, 1000, 500, 300, 300]
    assert strategy.is_full_epoch(2) and not strategy.is_full_epoch(3)
    assert np.array_equal(strategy.select(2).indices, np.arange(1000))
    # a checkpoint carries the schedule: one taken with another schedule is refused
    other = make(keep_schedule=[0.1, 0.25, 1.0, 0.4])
    with pytest.raises(ValueError, match="keep_schedule"):
        other.load_state_dict(strategy.state_dict())


def test_a_keep_schedule_with_a_bad_fraction_names_its_epoch():
    with pytest.raises(ValueError, match=r"keep_schedule\[1\] must be in \(0, 1\], got 1.5"):
        EpsilonGreedy(100, 0.3, keep_schedule=[0.2, 1.5])
    with pytest.raises(ValueError, match=r"keep_schedule\[0\]=0.001 keeps no sample out of 100"):
        EpsilonGreedy(100, 0.3, keep_schedule=[0.001])
    assert "keep_schedule" not in EpsilonGreedy(100, 0.3).config()  # older checkpoints still load



# ---- hardening: issue 38 points 3, 4 and 7, issue 37 point 6, issue 34 point 4 --------------

@pytest.mark.parametrize("make", [lambda: UCB(50, 0.3, seed=1), lambda: InfoBatch(50, 0.5, epochs=9, seed=1),
                                  lambda: Full(50)])
def test_select_hands_out_copies_that_cannot_change_the_cache(make):
    """Issue 38.3: select() handed out its cached arrays, so user code such as
    `sel.indices[:] = 3` or `sel.weights /= sel.weights.sum()` changed what the loader trains on."""
    strategy = make()
    strategy.update(np.arange(50), np.linspace(0, 1, 50, dtype=np.float32))
    first = strategy.select(1)
    indices, weights = first.indices.copy(), first.weights.copy()
    first.indices[:] = 3
    user_weights = first.weights
    user_weights /= user_weights.sum()
    again = strategy.select(1)
    np.testing.assert_array_equal(again.indices, indices)
    np.testing.assert_array_equal(again.weights, weights)


def test_always_nan_samples_are_not_chosen_every_epoch():
    """Issue 38.4: with skip_invalid, samples whose loss is always NaN stayed "unseen" (+inf) and
    eps-greedy's greedy part took all of them every epoch. They are now tried once and then
    revisited only by the random part."""
    n, bad = 1000, np.arange(100)  # 10% of samples always NaN
    strategy = EpsilonGreedy(n, 0.3, eps=0.2, seed=0, skip_invalid=True)
    rng = np.random.default_rng(0)
    taken = []
    for epoch in range(8):
        chosen = strategy.select(epoch).indices
        losses = rng.random(len(chosen)).astype(np.float32) + 0.5
        losses[np.isin(chosen, bad)] = np.nan
        strategy.update(chosen, losses)
        taken.append(np.isin(bad, chosen).sum())
    assert (strategy.table.seen[bad] == -1).all()
    # after every sample was tried (4 epochs at keep 0.3), only the random part (60 of 900) meets them
    assert max(taken[5:]) <= 20 and sum(taken[5:]) > 0


@pytest.mark.parametrize("strategy_class", [Forgetting, EL2N])
def test_static_strategies_drop_samples_whose_every_loss_was_skipped(strategy_class):
    """The rule every strategy shares: a sample whose every loss was skipped ranks last. Forgetting
    read only ever_correct and ranked such samples first ("never classified correctly"): all 5
    always-NaN samples sat in its fixed 20-sample subset for the whole run (fidelity audit)."""
    n, bad, rng = 100, np.arange(5), np.random.default_rng(0)
    strategy = strategy_class(n, 0.2, score_epochs=3, skip_invalid=True, seed=0)
    for epoch in range(3):
        chosen = strategy.select(epoch).indices
        losses = rng.gamma(2, 0.5, n).astype(np.float32)
        losses[bad] = np.nan
        correct = rng.uniform(size=n) < 0.8
        correct[bad] = False
        strategy.update(chosen, losses[chosen], correct[chosen])
    assert (strategy.table.seen[bad] == -1).all()
    assert not np.isin(bad, strategy.select(3).indices).any()


@pytest.mark.parametrize("epochs, delta, full", [(25, 0.28, 18), (100, 0.07, 93), (50, 0.14, 43), (8, 0.75, 2),
                                                 (10, 0.875, 1), (7, 0.5, 3)])
def test_infobatch_final_full_epochs_are_exact_for_decimal_deltas(epochs, delta, full):
    """epochs - ceil(delta·epochs) as the decimal delta means it: 0.28 * 25 = 7.000000000000001
    in floating point gave 17 full epochs, not 18 (59 of 39,600 pairs were off; fidelity audit)."""
    strategy = InfoBatch(100, 0.5, epochs=epochs, delta=delta)
    assert sum(strategy.is_full_epoch(e) for e in range(epochs)) == full
    assert strategy.is_full_epoch(epochs - full) and not strategy.is_full_epoch(epochs - full - 1)


def test_infobatch_paper_rule_refuses_kept_fractions_it_would_ignore():
    """keep=None prunes by `prune`: a keep_schedule of 0.9 or 0.1 gave the same epochs as none
    (fidelity audit). Only 1.0 (a full epoch) means something there."""
    with pytest.raises(ValueError, match=r"keep_schedule=\[0.9, 0.1\] may hold only 1.0"):
        InfoBatch(1000, None, epochs=10, keep_schedule=[0.9, 0.1])
    losses = np.random.default_rng(0).gamma(2, 0.5, 1000).astype(np.float32)
    strategy = InfoBatch(1000, None, epochs=10, keep_schedule=[1.0, 1.0, 1.0])
    strategy.update(np.arange(1000), losses)
    assert len(strategy.select(2)) == 1000 and len(strategy.select(3)) < 1000
    scheduled = InfoBatch(1000, 0.5, epochs=10, keep_schedule=[0.9, 0.9])
    scheduled.update(np.arange(1000), losses)
    assert len(scheduled.select(1)) == 900  # with keep given, a schedule is honoured


def test_duplicate_indices_in_one_update_are_one_observation_each():
    """Issue 37.6: duplicates in one update() call are accepted, each one observation applied in
    order (documented in Strategy.update and the module docstring), as with torch tensors."""
    strategy = UCB(4, 0.5, decay=0.5)
    strategy.update(torch.tensor([2, 2, 2, 1]), torch.tensor([4.0, 0.0, 2.0, 1.0]))
    assert strategy.table.seen[2] == 3 and strategy.table.mean[2] == 2.0  # 4 -> 2 -> 2
    sequential = UCB(4, 0.5, decay=0.5)
    for i, loss in [(2, 4.0), (2, 0.0), (2, 2.0), (1, 1.0)]:
        sequential.update([i], [loss])
    np.testing.assert_array_equal(strategy.table.score, sequential.table.score)
    assert "duplicate index is one observation per occurrence" in " ".join(UCB.update.__doc__.split())


_OPTION_CHANGES = [
    ("warmup_epochs", {"warmup_epochs": 1}),
    ("reselect_every", {"reselect_every": 2}),
    ("labels", {"labels": np.arange(60) % 3}),
    ("epochs", {"epochs": 9}),
    ("final_full_epochs", {"epochs": 9, "final_full_epochs": 2}),
    ("skip_invalid", {"skip_invalid": True}),
]


@pytest.mark.parametrize("key, options", _OPTION_CHANGES, ids=[k for k, _ in _OPTION_CHANGES])
def test_state_does_not_load_into_a_strategy_with_other_options(key, options):
    """Issue 38.7: these options were not part of config(), so UCB(...).load_state_dict of a
    class-balanced (or warmed-up, ...) strategy's state succeeded and replayed its cached subset."""
    taken = UCB(60, 0.5, seed=0, **options)
    taken.update(np.arange(60), np.linspace(0, 1, 60, dtype=np.float32))
    taken.select(1)
    with pytest.raises(ValueError, match=rf"different settings.*{key}="):
        UCB(60, 0.5, seed=0).load_state_dict(taken.state_dict())
    with pytest.raises(ValueError, match=rf"different settings.*{key}="):  # and the other way round
        taken.load_state_dict(UCB(60, 0.5, seed=0).state_dict())
    UCB(60, 0.5, seed=0, **options).load_state_dict(taken.state_dict())  # the same options load


def test_other_labels_are_refused_and_older_checkpoints_still_load():
    a = EpsilonGreedy(60, 0.5, labels=np.arange(60) % 3)
    with pytest.raises(ValueError, match="labels="):
        EpsilonGreedy(60, 0.5, labels=(np.arange(60) + 1) % 3).load_state_dict(a.state_dict())
    EpsilonGreedy(60, 0.5, labels=(np.arange(60) % 3) * 10).load_state_dict(a.state_dict())  # same classes
    state = EpsilonGreedy(60, 0.5).state_dict()  # a checkpoint from before these keys were recorded
    for key in ("warmup_epochs", "reselect_every", "labels", "epochs", "final_full_epochs", "skip_invalid"):
        del state["config"][key]
    with pytest.warns(UsageWarning, match="its warmup_epochs, reselect_every, labels, epochs, final_full_epochs, "
                                          "skip_invalid were not recorded"):
        EpsilonGreedy(60, 0.5).load_state_dict(state)
    scheduled = EpsilonGreedy(60, 0.5, keep_schedule=[0.2]).state_dict()  # checked both ways now
    with pytest.raises(ValueError, match="keep_schedule"):
        EpsilonGreedy(60, 0.5).load_state_dict(scheduled)


def test_weighted_loss_updates_and_returns_the_weighted_mean():
    """Issue 34.4: one call replaces update + weighted mean; weights default to the current
    selection's (InfoBatch up-weights its kept below-mean samples)."""
    strategy = InfoBatch(100, 0.5, epochs=8, seed=0)
    strategy.select(0)
    losses = torch.linspace(0.1, 2.0, 100, requires_grad=True)
    loss = strategy.weighted_loss(torch.arange(100), losses)
    assert loss.item() == pytest.approx(losses.mean().item()) and (strategy.table.seen == 1).all()
    loss.backward()
    assert losses.grad is not None
    selection = strategy.select(1)
    assert selection.weights.max() > 1
    ids = torch.as_tensor(selection.indices[::-1].copy())
    per_sample = torch.rand(len(ids))
    expected = (per_sample * torch.as_tensor(selection.weights[::-1].copy())).mean()
    assert strategy.weighted_loss(ids, per_sample).item() == pytest.approx(expected.item())
    given = torch.full((len(ids),), 2.0)
    assert strategy.weighted_loss(ids, per_sample, given).item() == pytest.approx(2 * per_sample.mean().item())
    assert (strategy.table.seen[selection.indices] == 3).all()
    with pytest.raises(ValueError, match=r"weights has shape \(3,\) but losses \(2,\)"):
        strategy.weighted_loss(ids[:2], per_sample[:2], torch.ones(3))
    assert (strategy.table.seen[selection.indices] == 3).all()                # refused before the update
    with pytest.raises(TypeError, match="losses must be a torch tensor"):
        strategy.weighted_loss(ids, per_sample.numpy())
    with pytest.raises(IndexError, match="out of range"):
        strategy.weighted_loss(torch.tensor([100]), torch.tensor([1.0]))
    forgetting = Forgetting(10, 0.5)
    forgetting.select(0)
    forgetting.weighted_loss(torch.arange(10), torch.ones(10), correct=torch.arange(10) % 2 == 0)
    assert forgetting.table.ever_correct.sum() == 5


@pytest.mark.parametrize("make", [lambda n, labels: UniformRandom(n, 0.3, labels=labels, seed=3),
                                  lambda n, labels: UCB(n, 0.3, labels=labels, seed=3),
                                  lambda n, labels: EpsilonGreedy(n, 0.3, labels=labels, seed=3)])
def test_class_balanced_spare_samples_rotate_over_equal_classes(make):
    """1000 classes of 2 samples at keep 0.3: 600 spare picks for 1000 equal classes. Ties went to
    the lowest class ids every epoch, so classes 600..999 were never selected in 20 epochs; the
    split now follows the epoch's tie order (an oracle of the largest-remainder rule)."""
    labels = np.repeat(np.arange(1000), 2)
    strategy = make(2000, labels)
    strategy.update(np.arange(2000), np.random.default_rng(0).random(2000).astype(np.float32))
    seen = np.zeros(1000, dtype=bool)
    for epoch in range(1, 21):
        quotas = strategy._pool_quotas(epoch)
        assert list(quotas) == _largest_remainder(np.full(1000, 2), 600, tie_order(3, epoch, 0, 1000))
        chosen = strategy.select(epoch).indices
        assert np.array_equal(np.bincount(labels[chosen], minlength=1000), quotas)
        seen[labels[chosen]] = True
    assert seen.all()


def test_class_balanced_selection_refuses_a_continuous_target_as_labels():
    """Regression targets passed as labels= made one class per sample: every strategy kept the
    samples with the smallest targets each epoch, whatever the scores. Integral floats are classes."""
    targets = np.random.default_rng(0).normal(size=100)
    with pytest.raises(ValueError, match=r"labels must be class ids, got .* for sample 0"):
        UCB(100, 0.3, labels=targets)
    with pytest.raises(ValueError, match="for sample 7"):
        UCB(100, 0.3, labels=np.where(np.arange(100) == 7, np.nan, 1.0))
    strategy = UCB(100, 0.3, labels=(np.arange(100) % 4).astype(np.float64))
    assert len(strategy.select(0)) == 30 and len(strategy._pools) == 4


@pytest.mark.parametrize("cls", [Full, UniformRandom, EpsilonGreedy, UCB, InfoBatch, EL2N, Forgetting])
def test_help_of_every_strategy_names_every_option_it_passes_on(cls):
    """The strategies take the shared options through **options: help(UCB) named none of seed,
    warmup_epochs, labels, score_dtype... (only the base module's docstring did)."""
    import inspect

    from fastprune.prune.base import Strategy

    shared = [name for name in inspect.signature(Strategy.__init__).parameters if name not in ("self", "num_samples", "keep")]
    missing = [name for name in shared if f"        {name}=" not in cls.__doc__]
    assert not missing, f"{cls.__name__}'s docstring does not name {missing}"


def test_the_typed_options_are_exactly_what_strategy_takes():
    """**options is typed (Unpack[StrategyOptions]) so that IDEs complete the shared options and a
    type checker flags UCB(10, kep=0.5); the TypedDicts must follow Strategy.__init__."""
    import inspect
    import typing

    from fastprune.prune.base import InfoBatchOptions, StaticOptions, Strategy, StrategyOptions

    shared = {name for name in inspect.signature(Strategy.__init__).parameters} - {"self", "num_samples", "keep"}
    assert set(StrategyOptions.__annotations__) | set(StrategyOptions.__optional_keys__) == shared
    assert set(InfoBatchOptions.__optional_keys__) == shared - {"epochs", "final_full_epochs"}
    # EL2N and Forgetting keep their subset: reselect_every is refused at run time, so not typed either
    assert set(StaticOptions.__optional_keys__) == shared - {"warmup_epochs", "reselect_every"}
    with pytest.raises(ValueError, match="reselect_every"):
        EL2N(10, 0.5, reselect_every=2)  # type: ignore[call-arg]
    for cls in (Full, UniformRandom, EpsilonGreedy, UCB, InfoBatch, EL2N, Forgetting):
        typing.get_type_hints(cls.__init__)  # resolvable at run time too (jsonargparse, LightningCLI)


def _losses(ids: np.ndarray, epoch: int) -> np.ndarray:
    """Fixed per (sample, epoch), so two runs of the same calls see the same losses."""
    return ((ids * 7919 + epoch * 104729) % 1000 / 1000.0).astype(np.float32)


def _run(strategy, epochs: int, look_back_at=None) -> list:
    """Per epoch: the selected ids, and InfoBatch-style weighted losses of its two halves, with
    ``select(1)`` (a look back, as Loader.epoch_order(1) does) between them at ``look_back_at``."""
    out = []
    for epoch in range(epochs):
        ids = strategy.select(epoch).indices
        first, second = ids[: len(ids) // 2], ids[len(ids) // 2:]
        strategy.update(first, _losses(first, epoch))
        if epoch == look_back_at:
            strategy.select(1)
        weighted = float(strategy.weighted_loss(torch.from_numpy(second), torch.from_numpy(_losses(second, epoch))))
        strategy.update(second, _losses(second, epoch))
        out.append((sorted(ids.tolist()), round(weighted, 6)))
    return out


@pytest.mark.parametrize("make", [lambda: UCB(400, 0.5, reselect_every=2, seed=3),
                                  lambda: InfoBatch(400, 0.5, epochs=8, seed=3)])
def test_selecting_an_earlier_epoch_leaves_the_current_one_alone(make):
    """select(1) during epoch 4 moved the current epoch back and evicted its cached subset: a
    reselect_every=2 run chose epoch 5 anew (541 of 800 samples the same), and InfoBatch's
    weighted_loss read epoch 1's weights for the rest of the epoch."""
    assert _run(make(), 7, look_back_at=4) == _run(make(), 7)
    strategy = make()
    _run(strategy, 5)
    assert strategy.select(1).indices.size == strategy.num_selected(1)


def _train_epochs(strategy, epochs, scored_fraction=1.0, start=0):
    """Select each epoch and update a leading ``scored_fraction`` of its samples (a loop scoring
    one micro-batch in four scores 0.25)."""
    rng = np.random.default_rng(0)
    for epoch in range(start, start + epochs):
        sel = strategy.select(epoch)
        scored = sel.indices[:int(len(sel) * scored_fraction)]
        strategy.update(scored, rng.exponential(size=len(scored)).astype(np.float32), rng.random(len(scored)) < 0.5)


def test_a_loop_that_scores_too_few_samples_is_warned_once():
    """Gradient accumulation that passes only the stepping micro-batch's losses to update(), or
    a loop with no update() at all, pruned by chance silently: unscored samples are kept first."""
    import warnings

    from fastprune.errors import UsageWarning

    strategy = UCB(400, 0.5, seed=0)
    with pytest.warns(UsageWarning, match=r"^UCB: epoch 1 starts, but update\(\) got losses for 50 of the 200 "
                                          r"samples selected for epoch 0: .* every micro-batch under gradient") as seen:
        _train_epochs(strategy, 4, scored_fraction=0.25)
    assert len([w for w in seen if "starts, but update()" in str(w.message)]) == 1  # once per strategy
    assert seen[0].filename == __file__  # the line that selected (here the helper's select)
    with pytest.warns(UsageWarning, match="got losses for 0 of the 120"):
        _train_epochs(EpsilonGreedy(400, 0.3, seed=0), 2, scored_fraction=0.0)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # every sample scored, warm-up and final full epochs included; static strategies after
        # their scoring epochs, and strategies that read no scores, need none
        _train_epochs(UCB(400, 0.5, seed=0, warmup_epochs=2, final_full_epochs=2, epochs=8), 8)
        _train_epochs(UCB(400, 0.5, seed=0, reselect_every=3), 7, scored_fraction=0.5)  # half is enough
        for static in (EL2N(400, 0.5, score_epochs=2), Forgetting(400, 0.5, score_epochs=2)):
            _train_epochs(static, 2)
            _train_epochs(static, 5, scored_fraction=0.0, start=2)
        _train_epochs(UniformRandom(400, 0.5, seed=0), 4, scored_fraction=0.0)
        _train_epochs(Full(400), 4, scored_fraction=0.0)
        # a resumed run: the epoch it resumes in was partly trained before the checkpoint
        trained = UCB(400, 0.5, seed=0)
        _train_epochs(trained, 3)
        resumed = UCB(400, 0.5, seed=0)
        resumed.load_state_dict(trained.state_dict())
        _train_epochs(resumed, 2, start=3)
    with pytest.warns(UsageWarning, match="epoch 6 starts, .* 20 of the 200 samples selected for epoch 5"):
        _train_epochs(resumed, 2, scored_fraction=0.1, start=5)


def test_a_warning_points_at_the_users_line_through_context_manager_decorators():
    """run_recipe is decorated with @process_state_kept(): its strategies' warnings (EL2N's 'never
    prunes') pointed at contextlib's wrapper, not the caller's line."""
    import contextlib
    import warnings

    from fastprune.errors import UsageWarning, user_stacklevel

    namespace = {"__name__": "fastprune.fake", "warnings": warnings, "user_stacklevel": user_stacklevel}
    exec("def warn_here():\n    warnings.warn('deep', UsageWarning, stacklevel=user_stacklevel())\n",
         {**namespace, "UsageWarning": UsageWarning}, namespace)

    @contextlib.contextmanager
    def kept():
        yield

    namespace["decorated"] = kept()(namespace["warn_here"])
    exec("def entry():\n    decorated()\n", namespace)
    with pytest.warns(UsageWarning, match="deep") as caught:
        namespace["entry"]()
    assert caught[0].filename == __file__


def test_an_epoch_past_the_planned_ones_warns_once():
    """A strategy built for ``epochs`` ran on past them without a word: a loop run longer, or run
    again after an interrupt in a notebook, had InfoBatch's final full-data epochs go on (a notebook
    audit)."""
    import warnings

    strategy = InfoBatch(100, keep=0.5, epochs=8, seed=0)  # epoch 7 is its final full-data one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(8):
            strategy.select(epoch)
            strategy.update(np.arange(100), np.random.default_rng(epoch).random(100))
    with pytest.warns(UsageWarning, match=r"InfoBatch: epoch 8 starts, past the epochs=8 it was built for \(epochs "
                                          r"0\.\.7\), so its plan no longer fits the run \(its final full-data epochs "
                                          r"go on\): build it with epochs= the run's number of epochs") as warned:
        strategy.select(8)
    assert [w.filename for w in warned] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strategy.select(8)  # the same epoch again: not a new start
        strategy.select(9)  # once per strategy
        UCB(100, keep=0.5, seed=0).select(50)  # no planned epochs: nothing to be past
    older = InfoBatch(100, keep=0.5, epochs=2, seed=0)
    del older.__dict__["_warned_past_plan"]  # as unpickled from a version without the flag
    with pytest.warns(UsageWarning, match="past the epochs=2"):
        older.select(2)


def test_an_infobatch_checkpoint_resumes_whatever_its_inert_knob_recorded():
    """prune= under a keep (and min_below_keep= under keep=None) was accepted and ignored, and
    recorded: now refused, such a run's checkpoint still resumes (the knob never acted). The knob
    that acts is still compared, and the repr shows only it."""
    state = InfoBatch(100, 0.3, epochs=10).state_dict()
    state["config"]["prune"] = 0.3  # a run built with prune=0.3, ignored
    InfoBatch(100, 0.3, epochs=10).load_state_dict(state)
    paper = InfoBatch(100, None, epochs=10).state_dict()
    paper["config"]["min_below_keep"] = 0.2
    InfoBatch(100, None, epochs=10).load_state_dict(paper)
    with pytest.raises(ValueError, match="prune=0.5 vs 0.3"):
        InfoBatch(100, None, epochs=10, prune=0.3).load_state_dict(paper)
    assert "prune" not in repr(InfoBatch(100, 0.3, epochs=10))
    assert "min_below_keep" not in repr(InfoBatch(100, None, epochs=10, prune=0.3))
