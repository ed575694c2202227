"""Pruning without converting: a ``torch.utils.data.Sampler`` for any map-style Dataset.

    from fastprune import PrunedSampler, UCB, WithIndices

    strategy = UCB(len(dataset), keep=0.5, seed=0)
    sampler = PrunedSampler(strategy, seed=0)
    loader = torch.utils.data.DataLoader(WithIndices(dataset), batch_size=256, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                          # as with DistributedSampler
        for images, labels, indices in loader:            # WithIndices appends each sample's index
            loss = criterion(model(images), labels)       # reduction="none"
            strategy.update(indices, loss)
            (loss * sampler.weights(indices)).mean().backward()

Each epoch visits ``strategy.select(epoch)`` in the same shuffled order as ``fastprune.Loader``
(``random_streams.epoch_permutation``) and, under torch.distributed, takes the same disjoint,
equal-length shard per rank (``distributed.shard``); ``len(sampler)`` is the current epoch's
count. What it does not give is the fast loader's data path: the Dataset's own ``__getitem__``
and the DataLoader's workers still decode every sample.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .._args import check_epoch, check_seed
from ..random_streams import epoch_permutation
from ._inputs import to_numpy
from .distributed import resolve_ranks, shard

try:  # subclassing torch's Sampler lets DataLoader and Lightning recognise it; torch is optional here
    from torch.utils.data import Sampler as _SamplerBase
except ImportError:  # pragma: no cover - torch is installed wherever a DataLoader is
    _SamplerBase = object


class PrunedSampler(_SamplerBase):
    """Yields the dataset indices of each epoch's selection: shuffled from ``seed``, sharded across
    ranks (``distributed``: see ``resolve_ranks``; default "auto"); ``shuffle=False`` keeps the
    strategy's order. ``weights(indices)`` gives the loss weights of the current epoch
    (all 1 except for unbiased strategies such as InfoBatch)."""

    def __init__(self, strategy, *, seed: int = 0, shuffle: bool = True, distributed="auto"):
        self.strategy = strategy
        self.seed = check_seed(seed)
        self.shuffle = bool(shuffle)
        self.rank, self.world_size = resolve_ranks(distributed)
        self.epoch = 0
        self._weights = np.ones(strategy.num_samples, dtype=np.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_epoch(epoch)

    def __len__(self) -> int:
        return self.strategy.num_selected(self.epoch) // self.world_size

    def __iter__(self) -> Iterator[int]:
        selection = self.strategy.select(self.epoch)
        self._weights = np.zeros(self.strategy.num_samples, dtype=np.float32)
        self._weights[selection.indices] = selection.weights
        order = selection.indices
        if self.shuffle:
            order = order[epoch_permutation(self.seed, self.epoch, len(order))]
        return iter(shard(order, self.rank, self.world_size).tolist())

    def weights(self, indices):
        """The current epoch's loss weights of these dataset indices, as a float32 tensor."""
        import torch

        ids = np.asarray(to_numpy(indices)).reshape(-1).astype(np.int64)
        return torch.from_numpy(self._weights[ids])


class WithIndices:
    """A map-style Dataset whose samples carry their index: ``(*sample, index)`` for tuple
    samples, ``{**sample, "index": index}`` for dict samples, ``(sample, index)`` otherwise, so a
    DataLoader batch tells ``strategy.update`` which samples its losses belong to."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if isinstance(sample, tuple):
            return (*sample, index)
        if isinstance(sample, dict):
            if "index" in sample:
                raise KeyError("WithIndices: the dataset's samples already have an 'index' key")
            return {**sample, "index": index}
        return sample, index


__all__ = ["PrunedSampler", "WithIndices"]
