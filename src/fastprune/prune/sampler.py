"""Pruning without converting: a ``torch.utils.data.Sampler`` for any map-style Dataset.

    from fastprune import PrunedSampler, UCB, WithIndices

    strategy = UCB(len(dataset), keep=0.5, seed=0)
    loader = torch.utils.data.DataLoader(WithIndices(dataset), batch_size=256, sampler=PrunedSampler(strategy))
    for epoch in range(epochs):
        for images, labels, indices in loader:            # WithIndices appends each sample's index
            loss = strategy.weighted_loss(indices, criterion(model(images), labels))  # reduction="none"
            loss.backward()

Each epoch visits ``strategy.select(epoch)`` in the same shuffled order as ``fastprune.Loader``
(``random_streams.epoch_permutation``) and, under torch.distributed, takes the same disjoint,
equal-length shard per rank (``distributed.shard``). As with the Loader, a complete pass advances
the epoch by one (``set_epoch``, as with DistributedSampler, sets it; Lightning calls it);
``len(sampler)`` is the count of the epoch the next pass runs. What it does not give is the fast
loader's data path: the Dataset's own ``__getitem__`` and the DataLoader's workers still decode
every sample.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import torch

from .._args import check_bool, check_epoch, check_seed
from ..errors import UsageWarning, user_stacklevel
from ..random_streams import epoch_permutation
from . import selections
from ._inputs import as_indices, in_range
from .distributed import alone_when_built, check_still_alone, sampler_ranks, shard
from .sharding import consumer_shard

try:  # subclassing torch's Sampler/Dataset lets DataLoader, Lightning and type checkers recognise them
    from torch.utils.data import Dataset as _DatasetBase
    from torch.utils.data import Sampler as _SamplerBase
except ImportError:  # pragma: no cover - torch is installed wherever a DataLoader is
    _SamplerBase = _DatasetBase = object


class PrunedSampler(_SamplerBase):
    """Yields the dataset indices of each epoch's selection: shuffled from ``seed``, sharded across
    ranks; ``shuffle=False`` keeps the strategy's order. Sharding: ``num_replicas=``/``rank=`` as
    torch's DistributedSampler takes them (checked against a running torch.distributed group), or
    ``distributed`` (see ``resolve_ranks``; default "auto": the running group's). Every rank takes
    ``len(selection) // num_replicas`` samples; the remainder is dropped that epoch (a different
    one each epoch, as the order is reshuffled). A complete pass advances ``epoch`` by one (once
    its last index is handed out); ``set_epoch`` sets it. A pass left before its end runs its epoch
    again, with a warning unless ``set_epoch`` was called: a loop taking ``len(loader)`` batches
    of a DataLoader with ``drop_last=True`` never asks for the last indices, so call
    ``set_epoch(epoch)`` each epoch there. ``weights(indices)`` gives the loss weights of the latest pass (0 for
    samples outside it; all 1 except for unbiased strategies such as InfoBatch). A sharded strategy
    (``distributed="sharded"``) already selects this rank's samples: the sampler visits all of
    them, and ``weights`` takes only this rank's sample ids. ``data_source``: the dataset, to check
    its length against the strategy's (a strategy built for fewer samples silently never visits
    the others)."""

    def __init__(self, strategy, *, seed: int = 0, shuffle: bool = True,
                 distributed: bool | str | tuple[int, int] | None = "auto",
                 num_replicas: int | None = None, rank: int | None = None, data_source=None):
        if not callable(getattr(strategy, "select", None)) or not hasattr(strategy, "num_samples"):
            raise TypeError(f"PrunedSampler takes a strategy (select(epoch), num_samples), such as "
                            f"fastprune.UCB(len(dataset)), got {type(strategy).__name__}")
        if data_source is not None and len(data_source) != strategy.num_samples:
            # a strategy for fewer samples never visits the rest; one for more indexes past the end
            raise ValueError(f"PrunedSampler: the strategy is for {strategy.num_samples} samples but "
                             f"the dataset has {len(data_source)}: build it with len(dataset)")
        self.strategy = strategy
        self.seed = check_seed(seed)
        self.shuffle = check_bool(shuffle, "PrunedSampler: shuffle")
        self.rank, self.world_size = sampler_ranks(distributed, num_replicas, rank)
        self._alone = num_replicas is None and rank is None and alone_when_built(distributed, self.world_size)
        # a sharded strategy (distributed="sharded") selects this rank's samples itself: visit them all
        self._sharding, self.rank, self.world_size = consumer_shard(strategy, self.rank, self.world_size,
                                                                    "PrunedSampler")
        self._split = 1 if self._sharding is not None else self.world_size
        self.epoch = 0  # the epoch the next pass runs
        self._set_during_pass = False
        self._weights = np.ones(self._entries, dtype=np.float32)

    @property
    def _entries(self) -> int:
        """Size of the weights lookup: every sample, or this rank's shard (sharded strategy)."""
        return self.strategy.num_samples if self._sharding is None else self._sharding.shard_size(self.rank)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        return ids if self._sharding is None else self._sharding.local(ids, self.rank)

    @property
    def num_replicas(self) -> int:
        return self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_epoch(epoch)
        self._set_during_pass = True

    def __len__(self) -> int:
        return selections.num_selected(self.strategy, self.epoch) // self._split

    def __repr__(self) -> str:
        return f"PrunedSampler({self.strategy!r}, epoch={self.epoch}, seed={self.seed}, shuffle={self.shuffle})"

    def __iter__(self) -> Iterator[int]:
        if self._alone and self._sharding is None:
            check_still_alone("PrunedSampler")
        unfinished = getattr(self, "_unfinished", None)
        again = unfinished is not None and not self._set_during_pass
        cause = ("the pass over it stopped before its last sample: a loop taking len(loader) batches of a "
                 "DataLoader with drop_last=True never asks for the remainder")
        advice = "to choose the epoch, call sampler.set_epoch(epoch) at each epoch's start"
        if hasattr(self.strategy, "_check_pass_epoch"):
            # said once losses came in for the epoch (a pass only looked at, `next(iter(loader))`,
            # repeats nothing trained)
            self.strategy._check_pass_epoch(self.epoch, "PrunedSampler", chosen=self._set_during_pass,
                                            cause=cause if again else None, advice=advice if again else None)
        elif again:  # a strategy of the user's own: no record of its losses, so said every time
            warnings.warn(f"PrunedSampler: this pass runs epoch {self.epoch} again ({cause}); {advice}", UsageWarning,
                          stacklevel=user_stacklevel())
        epoch = self.epoch
        self._set_during_pass = False
        self._unfinished = epoch
        # checked as the Loader checks it: a strategy of one's own may return (indices, weights)
        # or miscount its num_selected (len() said 40 of a 32-sample pass)
        order, weights = selections.checked_selection(self.strategy, epoch, self.strategy.num_samples)
        self._weights = np.zeros(self._entries, dtype=np.float32)
        self._weights[self._positions(order)] = weights
        if self.shuffle:
            order = order[epoch_permutation(self.seed, epoch, len(order))]
        ids = shard(order, 0 if self._sharding else self.rank, self._split).tolist()
        if self._split > 1 and hasattr(self.strategy, "_note_order"):  # the ranks' update() calls check it
            self.strategy._note_order(self.seed if self.shuffle else None, epoch, self._split)
        yield from ids[:-1]
        # Advanced before the last index, as the Loader before its last batch: a DataLoader in
        # this process stops asking once its last batch is full (a subset a multiple of the batch
        # size, or drop_last), and the same epoch ran again and again. An epoch left before its
        # end runs again.
        if not self._set_during_pass:
            self.epoch = epoch + 1
        self._unfinished = None
        yield from ids[-1:]

    def weights(self, indices) -> torch.Tensor:
        """The latest pass's loss weights of these dataset indices (1-D integers in range, as
        ``strategy.update`` takes them), as a float32 tensor on the indices' device."""
        import torch

        ids = self._positions(in_range(as_indices(indices), self.strategy.num_samples))
        weights = torch.from_numpy(self._weights[ids])
        return weights.to(indices.device) if isinstance(indices, torch.Tensor) else weights


class WithIndices(_DatasetBase):
    """A map-style Dataset whose samples carry their index: ``(*sample, index)`` for tuple
    samples, ``{**sample, key: index}`` for dict samples, ``(sample, index)`` otherwise, so a
    DataLoader batch tells ``strategy.update`` which samples its losses belong to. ``key``
    (default "index") must not be a key the samples already have."""

    def __init__(self, dataset, key: str = "index"):
        if not isinstance(key, str):
            raise TypeError(f"WithIndices: key must be a string, got {type(key).__name__}")
        self.dataset = dataset
        self.key = key

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return f"WithIndices({type(self.dataset).__name__} of {len(self.dataset)}, key={self.key!r})"

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if isinstance(sample, tuple):
            return (*sample, index)
        if isinstance(sample, dict):
            if self.key in sample:
                raise KeyError(f"WithIndices: the dataset's samples already have a {self.key!r} key; "
                               "name another with WithIndices(dataset, key=...)")
            return {**sample, self.key: index}
        return sample, index


__all__ = ["PrunedSampler", "WithIndices"]
