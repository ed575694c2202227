"""PrunedSampler + WithIndices: pruning a plain map-style Dataset through torch's DataLoader."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fastprune
from fastprune import PrunedSampler, WithIndices
from fastprune.errors import UsageWarning
from fastprune.random_streams import epoch_permutation


def _dataset(n=100):
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    return TensorDataset(x, torch.arange(n) % 3)


def test_an_epoch_visits_the_selection_shuffled_like_the_loader_and_len_follows_it():
    strategy = fastprune.UCB(100, keep=0.3, seed=1)
    sampler = PrunedSampler(strategy, seed=5)
    assert len(sampler) == 30
    visited = list(sampler)
    selection = strategy.select(0)
    assert visited == selection.indices[epoch_permutation(5, 0, 30)].tolist()
    assert list(PrunedSampler(strategy, seed=5)) == visited                 # reproducible from the seed
    assert sorted(PrunedSampler(strategy, shuffle=False)) == sorted(visited)
    sampler.set_epoch(1)
    assert len(sampler) == 30 and list(sampler) != visited


def test_ranks_take_disjoint_equal_shards():
    strategy = fastprune.UniformRandom(101, keep=0.5, seed=0)          # 50 or 51 kept: odd remainders
    shards = [list(PrunedSampler(strategy, distributed=(rank, 3))) for rank in range(3)]
    assert [len(s) for s in shards] == [len(PrunedSampler(strategy, distributed=(0, 3)))] * 3
    assert len(set().union(*shards)) == sum(len(s) for s in shards)
    with pytest.raises(ValueError, match="rank < world_size"):
        PrunedSampler(strategy, distributed=(3, 3))


def test_a_dataloader_loop_feeds_indices_back_and_weights_follow_the_epoch():
    dataset = _dataset()
    strategy = fastprune.InfoBatch(100, keep=0.5, epochs=4, seed=0)
    sampler = PrunedSampler(strategy, seed=0)
    loader = DataLoader(WithIndices(dataset), batch_size=16, sampler=sampler)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        expected = len(sampler)                                           # this pass's count
        seen = []
        for x, y, indices in loader:
            assert torch.equal(x[:, 0].long(), indices)                   # the index is the sample's own
            losses = x[:, 0] / 100.0
            strategy.update(indices, losses)
            weights = sampler.weights(indices)
            assert weights.dtype == torch.float32 and (weights > 0).all()
            seen += indices.tolist()
        assert len(seen) == expected == strategy.num_selected(epoch)
        assert sampler.epoch == epoch + 1                                 # a complete pass advanced it
    # InfoBatch up-weights the kept low-loss samples of a pruned epoch
    assert sampler.weights(torch.arange(100)).max() > 1


def test_with_indices_keeps_the_sample_shape():
    assert WithIndices([(1, 2)])[0] == (1, 2, 0)
    assert WithIndices([{"image": 1}])[0] == {"image": 1, "index": 0}
    assert WithIndices(["a"])[0] == ("a", 0)
    with pytest.raises(KeyError, match="already have a 'index' key; name another with WithIndices"):
        WithIndices([{"index": 3}])[0]
    assert WithIndices([{"index": 3}], key="sample_id")[0] == {"index": 3, "sample_id": 0}


def test_data_source_is_checked_against_the_strategy():
    """UCB(20) over 50 samples never visited 30 of them, silently; UCB(100) over 50 failed deep in
    the dataset ("83 is out of bounds"). Given the dataset, the sampler names the mismatch."""
    dataset = _dataset(50)
    for size in (20, 100):
        with pytest.raises(ValueError, match=f"the strategy is for {size} samples but the dataset has 50"):
            PrunedSampler(fastprune.UCB(size, keep=1.0), data_source=dataset)
    sampler = PrunedSampler(fastprune.UCB(50, keep=1.0), data_source=dataset)
    assert sorted(sampler) == list(range(50))


def test_without_set_epoch_each_pass_runs_the_next_epoch():
    """Issue 34.4: without set_epoch the sampler replayed epoch 0's subset forever. A complete pass
    now advances the epoch (as fastprune.Loader does); set_epoch still sets it; a pass broken off
    repeats its epoch."""
    strategy = fastprune.UCB(100, keep=0.3, seed=1)
    sampler = PrunedSampler(strategy, seed=2)
    loader = DataLoader(WithIndices(_dataset()), batch_size=8, sampler=sampler)
    passes = []
    for _ in range(3):
        ids = torch.cat([indices for _, _, indices in loader])
        passes.append(sorted(ids.tolist()))
        assert passes[-1] == sorted(strategy.select(len(passes) - 1).indices.tolist())
        strategy.update(ids, torch.rand(len(ids)))
    assert sampler.epoch == 3
    assert passes[0] != passes[1] != passes[2]                          # pruning follows the scores
    sampler.set_epoch(1)
    with pytest.warns(UsageWarning, match=r"runs epoch 1 but UCB is at epoch 2.*set_epoch\(1\) chose it"):
        assert sorted(sampler) == sorted(strategy.select(1).indices.tolist()) and sampler.epoch == 2
    next(iter(sampler))                                                 # broken off: no advance
    assert sampler.epoch == 2
    sampler.set_epoch(7)
    it = iter(sampler)
    next(it)
    sampler.set_epoch(9)                                                # set during a pass: kept
    list(it)
    assert sampler.epoch == 9


def test_a_loop_taking_exactly_len_batches_still_advances_the_epoch():
    """With num_workers=0 a DataLoader asks no further once its last batch is full (a subset a
    multiple of the batch size): the sampler never reached its advance, and epoch 0's cached
    subset was trained again every epoch, whatever the scores said."""
    strategy = fastprune.UCB(100, keep=0.4, seed=1)                     # 40 samples: 5 full batches of 8
    sampler = PrunedSampler(strategy, seed=2)
    loader = DataLoader(WithIndices(_dataset()), batch_size=8, sampler=sampler)
    subsets = []
    for epoch in range(3):
        seen = [indices for _, (_, _, indices) in zip(range(len(loader)), loader)]
        subsets.append(sorted(torch.cat(seen).tolist()))
        strategy.update(torch.cat(seen), torch.rand(40))
        assert sampler.epoch == epoch + 1
    assert subsets[0] != subsets[1] != subsets[2]


def test_drop_last_without_set_epoch_warns_that_the_epoch_runs_again():
    strategy = fastprune.UCB(100, keep=0.3, seed=1)                     # 30 samples: 3 batches of 8, 6 dropped
    sampler = PrunedSampler(strategy, seed=2)
    loader = DataLoader(WithIndices(_dataset()), batch_size=8, sampler=sampler, drop_last=True)

    def epoch_of_len_batches():  # as Lightning or zip(range(len(loader)), loader) take them
        indices = torch.cat([indices for _, (_, _, indices) in zip(range(len(loader)), loader)])
        strategy.update(indices, torch.ones(len(indices)))  # scored, as a training loop would
        return indices

    epoch_of_len_batches()
    with pytest.warns(RuntimeWarning, match=r"PrunedSampler: this pass runs epoch 0 again \(UCB got its losses\), "
                                            r"so it repeats a subset chosen before \(the pass over it stopped before "
                                            "its last sample: .*drop_last=True.* call sampler.set_epoch") as warned:
        epoch_of_len_batches()
    assert [w.filename for w in warned] == [__file__]  # the loop's line, not torch's sampler.py
    for epoch in range(1, 3):                                          # the remedy: no warning, epochs move on
        sampler.set_epoch(epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert len(epoch_of_len_batches()) == 24
        assert strategy._epoch == epoch


def test_drop_last_over_a_strategy_of_one_s_own_still_warns():
    """A strategy of the user's own (select, num_samples, num_selected: what PrunedSampler asks
    for) has no record of losses; its sampler still says an unfinished pass runs again (a review
    found it silent, the epoch at 0 for ever)."""
    from fastprune.prune.base import Selection

    class Half:
        num_samples = 100

        def select(self, epoch):
            return Selection(np.arange(0, 100, 2), np.ones(50, np.float32))

        def num_selected(self, epoch):
            return 50

    sampler = PrunedSampler(Half(), seed=0)
    loader = DataLoader(WithIndices(_dataset()), batch_size=8, sampler=sampler, drop_last=True)
    list(zip(range(len(loader)), loader))
    with pytest.warns(UsageWarning, match=r"PrunedSampler: this pass runs epoch 0 again \(the pass over it stopped "
                                          r"before its last sample: .*drop_last=True.*\); to choose the epoch, call "
                                          r"sampler.set_epoch\(epoch\)"):
        list(zip(range(len(loader)), loader))


def test_a_strategy_of_one_s_own_is_taken_and_checked_as_the_loader_takes_it():
    """The Loader accepts select() returning (indices, weights) and a sampler without
    num_selected, and refuses a num_selected that miscounts; PrunedSampler raised AttributeError on
    the first two and reported len() 40 of a 20-sample pass (an API audit)."""
    class Pairs:
        num_samples = 100

        def select(self, epoch):
            return np.arange(epoch, 100, 5), np.full(20, 2.0, np.float32)

    sampler = PrunedSampler(Pairs(), seed=0)
    assert len(sampler) == 20 and sorted(sampler) == list(range(0, 100, 5))
    assert sampler.weights(torch.tensor([5, 6])).tolist() == [2.0, 0.0]

    class Miscounted(Pairs):
        def num_selected(self, epoch):
            return 40

    with pytest.raises(ValueError, match=r"sampler.num_selected\(0\) = 40 but select\(0\) returned 20 indices"):
        list(PrunedSampler(Miscounted()))
    with pytest.raises(IndexError, match="returned sample ids outside"):
        list(PrunedSampler(type("Past", (Pairs,), {"select": lambda self, e: np.array([0, 100])})()))


def test_looking_at_a_batch_then_training_does_not_warn():
    """``next(iter(loader))`` to look at a batch leaves the sampler's pass unfinished; the first
    real pass then runs that epoch again, which repeats nothing trained: it warned all the same (a
    notebook audit), where the Loader waits for losses."""
    strategy = fastprune.UCB(100, keep=0.3, seed=1)
    sampler = PrunedSampler(strategy, seed=2)
    loader = DataLoader(WithIndices(_dataset()), batch_size=8, sampler=sampler)
    first = next(iter(loader))[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seen = torch.cat([indices for _, _, indices in loader])
        strategy.update(seen, torch.ones(len(seen)))
    assert first.tolist() == seen[:8].tolist() and sampler.epoch == 1  # epoch 0, whole, then on


def test_a_torch_loop_changes_by_one_call_with_weighted_loss():
    """Issue 34.4: the DataLoader loop of docs/guide.md, with strategy.weighted_loss and no
    set_epoch, learns and prunes (a tiny linearly separable set)."""
    torch.manual_seed(0)
    x = torch.randn(400, 4)
    y = (x[:, 0] + x[:, 1] > 0).long()
    strategy = fastprune.InfoBatch(400, keep=0.5, epochs=8, seed=0)
    loader = DataLoader(WithIndices(TensorDataset(x, y)), batch_size=40, sampler=PrunedSampler(strategy))
    net = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    sizes = []
    for epoch in range(8):
        count = 0
        for xb, yb, indices in loader:
            loss = strategy.weighted_loss(indices, criterion(net(xb), yb))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            count += len(indices)
        sizes.append(count)
    assert sizes[0] == 400 and max(sizes[1:7]) < 400 and sizes[7] == 400   # pruned, then InfoBatch's full tail
    assert (net(x).argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_num_replicas_and_rank_like_distributed_sampler(rank):
    """Issue 37.4: num_replicas=/rank= as torch's DistributedSampler takes them; 3 ranks over 5
    kept samples each take one (equal steps), disjoint, the remainder dropped."""
    strategy = fastprune.UniformRandom(10, keep=0.5, seed=0)                 # 5 kept
    shards = [list(PrunedSampler(strategy, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [1, 1, 1] and len(set(sum(shards, []))) == 3
    assert set(sum(shards, [])) <= set(strategy.select(0).indices.tolist())
    sampler = PrunedSampler(strategy, num_replicas=3, rank=rank)
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (3, rank, 1)
    assert list(sampler) == shards[rank]
    assert list(PrunedSampler(strategy, distributed=(rank, 3))) == shards[rank]


def test_num_replicas_and_rank_are_checked():
    strategy = fastprune.UniformRandom(10, keep=0.5, seed=0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, num_replicas\)"):
        PrunedSampler(strategy, num_replicas=3, rank=3)
    with pytest.raises(ValueError, match="rank= is needed: no torch.distributed group"):
        PrunedSampler(strategy, num_replicas=3)
    with pytest.raises(ValueError, match="not both"):
        PrunedSampler(strategy, num_replicas=3, rank=0, distributed=False)
    with pytest.raises(TypeError, match="num_replicas must be an integer"):
        PrunedSampler(strategy, num_replicas=2.5, rank=0)


def test_num_replicas_and_rank_are_checked_against_a_running_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        strategy = fastprune.UniformRandom(10, keep=0.5, seed=0)
        with pytest.raises(ValueError, match="num_replicas=3 but the running torch.distributed group has "
                                             "num_replicas 1"):
            PrunedSampler(strategy, num_replicas=3, rank=0)
        sampler = PrunedSampler(strategy, rank=0)                          # num_replicas from the group
        assert (sampler.num_replicas, len(sampler)) == (1, 5)
    finally:
        dist.destroy_process_group()


def test_weights_refuses_ids_that_update_refuses():
    """Issue 38.7: weights() read -1 as sample N-1, 2.7 as sample 2 and a bool tensor as 0/1."""
    strategy = fastprune.InfoBatch(10, keep=0.5, epochs=4, seed=0)
    sampler = PrunedSampler(strategy)
    list(sampler)
    for bad, error, match in [(torch.tensor([-1]), IndexError, r"indices\[0\] = -1 is out of range"),
                              (torch.tensor([10]), IndexError, "out of range for a table of 10"),
                              (torch.tensor([2.7]), ValueError, "indices must be integers"),
                              (torch.tensor([True, False]), ValueError, "indices must be integers"),
                              (torch.tensor([[1]]), ValueError, "1-D")]:
        with pytest.raises(error, match=match):
            sampler.weights(bad)
        with pytest.raises(error, match=match):
            strategy.update(bad, torch.ones(bad.shape))
    assert sampler.weights([0, 9]).tolist() == [1.0, 1.0]


def test_a_sampler_or_loader_built_before_the_group_starts_refuses_to_run_unsharded(tmp_path, monkeypatch):
    """Built before init_process_group, "auto" found no group: each rank trained on the whole
    selection while the strategy gathered every rank's losses (each sample counted twice), without
    a word. A pass under a running group now says so; distributed=False means it and runs."""
    import numpy as np

    from fastprune.prune import distributed
    from fastprune.store import IntField, RGBImageField, write_dataset

    store = write_dataset(tmp_path / "s.beton", [(np.zeros((4, 4, 3), np.uint8), i % 2) for i in range(8)],
                          {"image": RGBImageField(), "label": IntField()}, progress=False, workers=1)
    built = {"sampler": PrunedSampler(fastprune.UCB(8, keep=0.5)),
             "loader": fastprune.Loader(store, 2, sampler=fastprune.UCB(8, keep=0.5))}
    opted_out = {"sampler": PrunedSampler(fastprune.UCB(8, keep=0.5), distributed=False),
                 "loader": fastprune.Loader(store, 2, sampler=fastprune.UCB(8, keep=0.5), distributed=False)}

    class TwoRanks:
        @staticmethod
        def get_world_size():
            return 2

    monkeypatch.setattr(distributed, "_active_group", lambda: TwoRanks)
    for name, consumer in built.items():
        with pytest.raises(RuntimeError, match=r"was built before torch.distributed.init_process_group, so it "
                                               r"does not shard, but a group of 2 ranks runs now"):
            next(iter(consumer))
    for consumer in opted_out.values():
        next(iter(consumer))


def test_a_strategy_opted_out_of_gathering_under_a_sharding_sampler_warns():
    """UCB(distributed=False) under a sampler sharding over 2 ranks: each rank scores only its own
    shard, so the selections diverge (35 duplicates, 149 samples missing of 401 in the audit)."""
    with pytest.warns(RuntimeWarning, match="strategy was built with distributed=False"):
        PrunedSampler(fastprune.UCB(10, distributed=False), num_replicas=2, rank=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        PrunedSampler(fastprune.UCB(10), num_replicas=2, rank=0)
        PrunedSampler(fastprune.UCB(10, distributed=False))


def _pass(sampler, strategy):
    """One pass of a DataLoader over ``sampler``, its losses fed back: the sorted ids it trained."""
    ids = torch.cat([indices for _, _, indices in DataLoader(WithIndices(_dataset()), batch_size=10,
                                                             sampler=sampler)])
    strategy.update(ids, torch.rand(len(ids)))
    return sorted(ids.tolist())


def test_a_new_sampler_each_epoch_warns_that_it_repeats_a_subset_and_set_epoch_moves_on():
    """User audit: a DataLoader (and its sampler) built inside the epoch loop started every
    sampler at epoch 0, and the strategy handed back epoch 0's cached subset each time: half the
    samples never seen, silently (behind a warm-up epoch, no pruning at all)."""
    strategy = fastprune.UCB(100, keep=0.5, seed=1, warmup_epochs=0)
    first = _pass(PrunedSampler(strategy, seed=2), strategy)
    with pytest.warns(UsageWarning, match=r"runs epoch 0 again \(UCB got its losses\), so it repeats"):
        assert _pass(PrunedSampler(strategy, seed=2), strategy) == first
    with warnings.catch_warnings():  # set_epoch chooses the epoch: no warning, the next subset
        warnings.simplefilter("error")
        for epoch in (1, 2):
            sampler = PrunedSampler(strategy, seed=2)
            sampler.set_epoch(epoch)
            assert _pass(sampler, strategy) == sorted(strategy.select(epoch).indices.tolist())
        one = PrunedSampler(strategy, seed=2)  # one sampler for the run: each pass runs the next epoch
        one.set_epoch(3)
        for _ in range(3):
            _pass(one, strategy)
    assert strategy.current_epoch == 5


def test_resuming_needs_set_epoch_and_then_selects_what_an_uninterrupted_run_does():
    """A fresh sampler over a strategy loaded from a checkpoint ran epochs 0, 1, 2 again (the
    full warm-up first) with the updates filed under the checkpoint's epoch; it now warns, and
    with set_epoch the resumed epochs select as the uninterrupted run's."""
    def run(strategy, sampler, epochs):
        return [_pass(sampler, strategy) for _ in range(epochs)]

    torch.manual_seed(0)
    whole = fastprune.UCB(100, keep=0.5, seed=1)
    uninterrupted = run(whole, PrunedSampler(whole, seed=2), 5)
    torch.manual_seed(0)
    before = fastprune.UCB(100, keep=0.5, seed=1)
    sampler = PrunedSampler(before, seed=2)
    run(before, sampler, 3)
    state, next_epoch = before.state_dict(), sampler.epoch
    assert next_epoch == 3
    after = fastprune.UCB(100, keep=0.5, seed=1)
    after.load_state_dict(state)
    with pytest.warns(UsageWarning, match="runs epoch 0 but UCB is at epoch 2, .*a new PrunedSampler starts at epoch"):
        list(PrunedSampler(after, seed=2))
    after = fastprune.UCB(100, keep=0.5, seed=1)  # Accelerate's prepared loader sets its own count, from 0
    after.load_state_dict(state)
    counted_from_zero = PrunedSampler(after, seed=2)
    counted_from_zero.set_epoch(0)
    with pytest.warns(UsageWarning, match=r"runs epoch 0 but UCB is at epoch 2, .*set_epoch\(0\) chose it.*Accelerate"):
        list(counted_from_zero)
    after = fastprune.UCB(100, keep=0.5, seed=1)
    after.load_state_dict(state)
    resumed = PrunedSampler(after, seed=2)
    resumed.set_epoch(next_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(after, resumed, 2) == uninterrupted[3:]


def test_a_new_loader_on_a_trained_strategy_warns_unless_its_epoch_is_set(tmp_path):
    import numpy as np

    from fastprune.convert import from_arrays

    path = from_arrays(np.zeros((40, 4, 4, 3), np.uint8), np.arange(40) % 2, tmp_path / "s.beton", progress=False)

    def epoch(loader, strategy):
        for batch in loader:
            strategy.update(batch.indices, torch.rand(len(batch.indices)))

    with fastprune.Store(path) as store:  # the Loaders read the caller's open store
        strategy = fastprune.EpsilonGreedy(40, keep=0.5, seed=0, warmup_epochs=0)
        epoch(fastprune.Loader(store, 10, sampler=strategy, threads=1), strategy)
        with pytest.warns(UsageWarning, match=r"Loader: this pass runs epoch 0 again .*\(a new Loader starts at epoch"):
            epoch(fastprune.Loader(store, 10, sampler=strategy, threads=1), strategy)
        strategy = fastprune.EpsilonGreedy(40, keep=0.5, seed=0, warmup_epochs=0)
        loader = fastprune.Loader(store, 10, sampler=strategy, threads=1)
        for batch in loader:  # left after its first batch: the epoch runs again
            strategy.update(batch.indices, torch.rand(len(batch.indices)))
            break
        with pytest.warns(UsageWarning, match="runs epoch 0 again .*this Loader's pass over it stopped before its"):
            epoch(loader, strategy)
        strategy = fastprune.EpsilonGreedy(40, keep=0.5, seed=0, warmup_epochs=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loader = fastprune.Loader(store, 10, sampler=strategy, threads=1)
            for _ in range(3):  # one loader: each pass runs the next epoch
                epoch(loader, strategy)
            again = fastprune.Loader(store, 10, sampler=strategy, threads=1)
            again.set_epoch(3)
            epoch(again, strategy)
        assert strategy.current_epoch == 3
