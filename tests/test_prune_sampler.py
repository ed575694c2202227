"""PrunedSampler + WithIndices: pruning a plain map-style Dataset through torch's DataLoader."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fastprune
from fastprune import PrunedSampler, WithIndices
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
        seen = []
        for x, y, indices in loader:
            assert torch.equal(x[:, 0].long(), indices)                   # the index is the sample's own
            losses = x[:, 0] / 100.0
            strategy.update(indices, losses)
            weights = sampler.weights(indices)
            assert weights.dtype == torch.float32 and (weights > 0).all()
            seen += indices.tolist()
        assert len(seen) == len(sampler) == strategy.num_selected(epoch)
    # InfoBatch up-weights the kept low-loss samples of a pruned epoch
    assert sampler.weights(torch.arange(100)).max() > 1


def test_with_indices_keeps_the_sample_shape():
    assert WithIndices([(1, 2)])[0] == (1, 2, 0)
    assert WithIndices([{"image": 1}])[0] == {"image": 1, "index": 0}
    assert WithIndices(["a"])[0] == ("a", 0)
    with pytest.raises(KeyError, match="already have an 'index'"):
        WithIndices([{"index": 3}])[0]
