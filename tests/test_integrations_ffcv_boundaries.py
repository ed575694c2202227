"""Boundaries of PrunedOrder (fastprune.integrations.ffcv) that no other test pinned down: a
mutation audit found each change passing the suite. Every epoch is shuffled anew with the
documented stream, weights() hands the strategy's own weights (and 0 outside the selection)
whatever the shape of the ids a batch carries, a strategy of another size is refused, and
num_batches(drop_last=True) is the count ffcv yields."""

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")
from ffcv.fields.decoders import FloatDecoder, IntDecoder  # noqa: E402
from ffcv.loader import Loader  # noqa: E402
from test_integrations_ffcv import BATCH, N, beton, make_loader  # noqa: E402,F401  (beton: the fixture)

from fastprune.integrations.ffcv import PrunedOrder  # noqa: E402
from fastprune.prune import InfoBatch, UniformRandom  # noqa: E402
from fastprune.random_streams import epoch_permutation  # noqa: E402

pytestmark = pytest.mark.ffcv


def _visited(loader):
    return [int(i) for batch in loader for i in np.asarray(batch[0]).reshape(-1)]


def test_every_epoch_is_shuffled_anew_with_the_documented_stream(beton):
    """Two full epochs of the same selection: each visits it in epoch_permutation(seed, epoch)
    order (the order fastprune's Loader and PrunedSampler use), not epoch 0's order again."""
    strategy = UniformRandom(N, 0.5, warmup_epochs=2, seed=4)
    loader, _ = make_loader(beton, strategy)
    orders = [_visited(loader) for _ in range(3)]
    for epoch, order in enumerate(orders):
        assert order == strategy.select(epoch).indices[epoch_permutation(4, epoch, len(order))].tolist()
    assert orders[0] != orders[1]  # same (full) selection, another order


def test_weights_are_the_strategys_and_zero_outside_the_selection(beton):
    """InfoBatch rescales the kept low-loss samples: weights() must hand those weights, not 1."""
    strategy = InfoBatch(N, 0.5, epochs=4, seed=1)
    loader, order = make_loader(beton, strategy)
    for index, value in loader:  # epoch 0: loss = value
        strategy.update(np.asarray(index).reshape(-1), np.asarray(value).reshape(-1))
    selection = strategy.select(1)
    expected = dict(zip(selection.indices.tolist(), selection.weights.tolist()))
    assert len(set(expected.values())) > 1  # some rescaled samples, so the check below means something
    for index, _ in loader:  # epoch 1
        ids = np.asarray(index).reshape(-1)
        np.testing.assert_array_equal(order.weights(ids), [expected[i] for i in ids.tolist()])
    dropped = np.setdiff1d(np.arange(N), selection.indices)
    assert len(dropped) and np.all(order.weights(dropped) == 0.0)


def test_weights_of_an_unsqueezed_index_column_are_one_per_sample(beton):
    """IntDecoder without Squeeze gives (batch, 1) ids: weights() must still return (batch,),
    else `loss * weights` broadcasts to (batch, batch) and the mean is silently wrong."""
    loader, order = make_loader(beton, UniformRandom(N, 0.5, seed=2))
    index, _ = next(iter(loader))
    assert np.asarray(index).shape == (BATCH, 1)
    assert order.weights(index).shape == (BATCH,)
    assert order.weights(torch.from_numpy(np.asarray(index))).shape == (BATCH,)


@pytest.mark.parametrize("num_samples", [50, 200])
def test_a_strategy_of_another_size_is_refused(beton, num_samples):
    order = PrunedOrder.register(UniformRandom(num_samples, 0.5))
    with pytest.raises(ValueError, match=rf"covers {num_samples} samples but the loader traverses {N}"):
        Loader(str(beton), batch_size=BATCH, num_workers=1, order=order,
               pipelines={"index": [IntDecoder()], "value": [FloatDecoder()]})


def test_num_batches_with_drop_last_is_what_ffcv_yields(beton):
    strategy = UniformRandom(N, 0.3, warmup_epochs=1, seed=7)  # 103, then 31 samples
    order = PrunedOrder.register(strategy)
    loader = Loader(str(beton), batch_size=BATCH, num_workers=1, order=order, drop_last=True,
                    pipelines={"index": [IntDecoder()], "value": [FloatDecoder()]})
    for epoch in range(2):
        batches = sum(1 for _ in loader)
        assert batches == order.num_batches(epoch, BATCH, drop_last=True) == strategy.num_selected(epoch) // BATCH


def test_a_replicated_strategy_under_distributed_gives_each_rank_a_disjoint_shard(monkeypatch):
    """Loader(distributed=True) with an ordinary (replicated) strategy: every rank draws the same
    epoch order and takes its own positions of it, like DistributedSampler; without the shard
    every rank trained on the whole selection (world_size times the samples per epoch)."""
    import types

    import torch.distributed as dist

    strategy = UniformRandom(N, 0.5, seed=4, warmup_epochs=1)
    bound = PrunedOrder.register(strategy)
    orders = []
    for rank in range(2):
        monkeypatch.setattr(dist, "get_rank", lambda: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda: 2)
        building = types.SimpleNamespace(indices=np.arange(N), seed=None, distributed=True)
        drawn_for_len = len(bound(building).sample_order(1))  # while ffcv builds its Loader: the length alone
        built = types.SimpleNamespace(indices=np.arange(N), seed=None, distributed=True, first_traversal_order=None)
        orders.append(bound(built).sample_order(1).tolist())
        assert drawn_for_len == len(orders[-1])
    selection = strategy.select(1)
    whole = selection.indices[epoch_permutation(4, 1, len(selection))].tolist()
    assert orders == [whole[:len(whole) // 2 * 2][0::2], whole[:len(whole) // 2 * 2][1::2]]
    assert not set(orders[0]) & set(orders[1])
