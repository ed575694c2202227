"""Drive ffcv's own Loader (PyPI release 1.0.2) with fastprune's strategies.

    import torch
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader
    from ffcv.transforms import Convert, Squeeze, ToTensor, ToTorchImage
    from fastprune import UCB
    from fastprune.integrations.ffcv import PrunedOrder

    strategy = UCB(num_samples, keep=0.5)
    order = PrunedOrder.register(strategy)          # ffcv 1.0.2 only accepts orders from ORDER_MAP
    loader = Loader(path, batch_size=256, order=order, drop_last=False, pipelines={  # ffcv drops by default
        "image": [SimpleRGBImageDecoder(), ToTensor(), ToTorchImage(), Convert(torch.float32)],  # 0..255
        "label": [IntDecoder(), ToTensor(), Squeeze()],
        "index": [IntDecoder(), ToTensor(), Squeeze()]})  # convert with --index / index=True for this field
    for epoch in range(epochs):
        for x, y, index in loader:                     # the store's field order (convert's: image, label, index)
            loss = criterion(model(x), y)                                # reduction="none"
            strategy.update(index, loss)
            optimizer.zero_grad()
            (loss * torch.from_numpy(order.weights(index))).mean().backward()
            optimizer.step()

ffcv yields a batch's fields in the store's order, not the ``pipelines`` dict's, and fields the
dict leaves out too (unless set to None): ``PrunedOrder`` warns when the two orders differ (a
store written as image, index, label unpacked as above trained on sample ids as labels), and
refuses pipelines naming a field the store lacks. A store with no index field (ffcv's writer adds
none) cannot name a batch's samples: ``fastprune convert FILE.beton --index --out COPY.beton``
(:func:`fastprune.convert.from_store`) copies it with one, every value as stored.

ffcv's Loader counts its epochs from 0 (``loader.next_epoch``): to resume after
``strategy.load_state_dict(...)``, set ``loader.next_epoch`` to the checkpoint's next epoch. A pass
over an epoch the strategy is past (an ffcv Loader built each epoch, or a resume without it)
repeats a subset chosen before, and warns once (``UsageWarning``).

The order is shuffled per epoch with the strategy's seed (``register(strategy, seed=...)`` sets
another), not ffcv's Loader ``seed=``: ffcv draws that at random when it is not given, so ranks
of a distributed run would shuffle differently and their shards overlap.

Why ``register``: the PyPI release's Loader instantiates ``ORDER_MAP[order](loader)`` and its
branch for custom TraversalOrder objects is broken (it calls an instance), so a custom order
must be a class registered in ``ffcv.loader.loader.ORDER_MAP``. ``register`` makes a subclass
bound to the strategy, registers it, and returns it to pass as ``order=``.

``len(loader)``: ffcv freezes it at construction (from the epoch-0 order) and truncates every
later epoch to that many batches — which would silently drop samples whenever an epoch's subset
is larger than epoch 0's (e.g. final full-data epochs). Each time an epoch's order is drawn we
store it as the loader's ``first_traversal_order``, which ffcv's ``__len__`` reads, so from the
start of iterating an epoch ``len(loader)`` is that epoch's true batch count and nothing is
truncated. Before iteration starts it still reports the previous epoch's count; use
``order.num_batches(epoch)`` for the count ahead of time.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import require

require("ffcv", "ffcv", "fastprune.integrations.ffcv")  # else one line naming the extra, not a bare ImportError
from ffcv.loader.loader import ORDER_MAP  # noqa: E402
from ffcv.traversal_order.base import TraversalOrder  # noqa: E402

from ..prune.distributed import shard
from ..prune.sharding import consumer_shard
from ..random_streams import epoch_permutation


class PrunedOrder(TraversalOrder):
    """An ffcv TraversalOrder whose epochs are the strategy's selections, shuffled per (seed, epoch)."""

    strategy = None  # set on the subclass that register() makes
    shuffle_seed = None  # register()'s seed, else the strategy's

    @classmethod
    def register(cls, strategy, seed: int | None = None) -> type["PrunedOrder"]:
        """The order class to pass as ``Loader(order=...)``. Epochs are shuffled with ``seed``, by
        default the strategy's: never ffcv's Loader ``seed=``, which ffcv draws at random when it is
        not given, so that every rank (and every rerun) shuffles alike."""
        from .._args import check_seed

        shuffle_seed = check_seed(strategy.seed if seed is None else seed)
        bound = type(f"PrunedOrder[{type(strategy).__name__}]", (cls,),
                     {"strategy": strategy, "shuffle_seed": shuffle_seed})
        ORDER_MAP[bound] = bound
        return bound

    def __init__(self, loader):
        if self.strategy is None:
            raise TypeError("use PrunedOrder.register(strategy) and pass its result as the Loader's order")
        super().__init__(loader)
        if len(self.indices) != self.strategy.num_samples:
            raise ValueError(f"the strategy covers {self.strategy.num_samples} samples but the loader "
                             f"traverses {len(self.indices)} (its `indices`)")
        if not np.array_equal(self.indices, np.arange(len(self.indices))):
            # a batch names its samples by store id (the index field), which update() and weights()
            # take; the strategy would count positions in `indices`, so scores went to other samples
            raise ValueError("PrunedOrder needs the Loader's indices to be 0..n-1 (all samples, or the "
                             "first n): a batch reports store ids, and for another subset they are not "
                             "the strategy's; write the subset to a store of its own")
        _check_pipeline_fields(loader)
        type(self).instance = self
        rank, world = (0, 1)
        if self.distributed:
            import torch.distributed as dist

            rank, world = dist.get_rank(), dist.get_world_size()
        # a sharded strategy (distributed="sharded") selects this rank's samples: traverse them whole
        self._sharding, self._rank, self._world = consumer_shard(self.strategy, rank, world, "PrunedOrder")
        self._weights = np.ones(self._entries(), dtype=np.float32)

    def _entries(self) -> int:
        return self.strategy.num_samples if self._sharding is None else self._sharding.shard_size(self._rank)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        return ids if self._sharding is None else self._sharding.local(ids, self._rank)

    def sample_order(self, epoch: int):
        if not hasattr(self.loader, "first_traversal_order"):
            # ffcv's Loader draws an order when it is built, for len() alone: its length, with no
            # select(), which starts an epoch (a strategy loaded from a checkpoint took its epoch as
            # started afresh, unscored, and warned so at the next epoch)
            _warn_field_order(self.loader)  # its outputs are known by now
            return np.zeros(self._order_length(epoch), dtype=self.indices.dtype)
        # each pass: an ffcv Loader built each epoch, or over a loaded checkpoint without
        # loader.next_epoch set, starts at epoch 0 and would repeat the subsets chosen before
        if hasattr(self.strategy, "_check_pass_epoch"):
            self.strategy._check_pass_epoch(epoch, "ffcv Loader", cause=(
                "a new ffcv Loader starts at epoch 0 unless loader.next_epoch is set"))
        selection = self.strategy.select(epoch)
        self._weights = np.zeros(self._entries(), dtype=np.float32)
        self._weights[self._positions(selection.indices)] = selection.weights
        # The strategy returns its selection in any order (often ascending): shuffle it.
        order = self.indices[selection.indices[epoch_permutation(self.shuffle_seed, epoch, len(selection))]]
        if self.distributed and self._sharding is None:
            order = shard(order, self._rank, self._world)
            if self._world > 1 and hasattr(self.strategy, "_note_order"):  # the ranks' update() calls check it
                self.strategy._note_order(self.shuffle_seed, epoch, self._world)
        self.loader.first_traversal_order = order  # ffcv's len() reads this: keep it current
        return order

    def _order_length(self, epoch: int) -> int:
        """The length of ``sample_order(epoch)``'s array (this rank's shard under distribution)."""
        count = self.strategy.num_selected(epoch)
        if self.distributed and self._sharding is None:
            return len(shard(np.arange(count), self._rank, self._world))
        return count

    @classmethod
    def weights(cls, sample_ids) -> np.ndarray:
        """The current epoch's loss weights of these sample ids (positions in the loader's indices;
        under a sharded strategy, ids of this rank's shard)."""
        from ..prune._inputs import to_numpy

        ids = np.asarray(to_numpy(sample_ids)).reshape(-1).astype(np.int64)
        return cls.instance._weights[cls.instance._positions(ids)]

    @classmethod
    def num_batches(cls, epoch: int, batch_size: int, drop_last: bool = False) -> int:
        k = cls.strategy.num_selected(epoch)
        return k // batch_size if drop_last else math.ceil(k / batch_size)


def _asked_fields(loader) -> list[str]:
    """The outputs the Loader's ``pipelines`` dict names, in its order (None disables a field)."""
    return [name for name, spec in loader._args["pipelines"].items() if spec is not None]


def _check_pipeline_fields(loader) -> None:
    """A pipeline (a list of operations) reads the field of its name: one the store lacks failed
    in ffcv with a bare AssertionError; a PipelineSpec may name another source, and is not checked."""
    from ffcv.pipeline import PipelineSpec

    if not (hasattr(loader, "reader") and hasattr(loader, "_args")):  # not ffcv 1.0.2's Loader: nothing to check
        return
    stored, pipelines = list(loader.reader.handlers), loader._args["pipelines"]
    missing = [name for name in _asked_fields(loader)
               if not isinstance(pipelines[name], PipelineSpec) and name not in stored]
    if missing:
        hint = (": a store converted with index=True (fastprune convert --index) holds each sample's id as "
                "'index', which update() and weights() need" if "index" in missing else "")
        raise ValueError(f"{loader.fname}: the Loader's pipelines name {', '.join(map(repr, missing))}, which the "
                         f"store does not hold (its fields: {', '.join(stored)}){hint}")


def _warn_field_order(loader) -> None:
    """ffcv yields the store's fields in the file's order (and those the pipelines dict omits), not
    the dict's: a loop unpacking in the dict's order silently swaps them (labels for sample ids)."""
    import warnings

    from ..errors import UsageWarning

    if not (hasattr(loader, "pipeline_specs") and hasattr(loader, "_args")):
        return
    outputs, asked = list(loader.pipeline_specs), _asked_fields(loader)
    if outputs != asked:
        warnings.warn(f"{loader.fname}: this ffcv Loader yields ({', '.join(outputs)}) per batch, the store's "
                      f"field order, not the pipelines' ({', '.join(asked)}): unpack batches in the store's order "
                      "(or set a field's pipeline to None to leave it out)", UsageWarning,
                      stacklevel=5)  # past sample_order and ffcv's Loader.next_traversal_order and __init__
