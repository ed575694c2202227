"""The sharded mode (distributed="sharded"): each rank holds, selects and updates only its shard.

In-process tests give the ranks explicitly (``("sharded", rank, world)``), which is what a group
resolves to; the multi-process tests run gloo ranks through ``run_ranks``.
"""

import numpy as np
import pytest
import torch

import fastprune
from fastprune.prune import EL2N, UCB, EpsilonGreedy, Forgetting, Full, InfoBatch, PrunedSampler, UniformRandom
from fastprune.prune.sharding import Sharding

from test_prune_distributed import run_ranks

N, WORLD, SEED = 1000, 3, 7


def losses_for(ids):
    """A fixed loss per sample id (distinct, so top-k has no ties)."""
    return (np.asarray(ids) * 0.6180339887 % 1.0 + 0.001).astype(np.float32)


def ranks(cls=EpsilonGreedy, n=N, world=WORLD, **options):
    return [cls(n, distributed=("sharded", r, world), seed=SEED, **options) for r in range(world)]


def test_each_rank_holds_only_its_shard_and_selects_an_equal_quota_of_it():
    strategies = ranks(keep=0.3, eps=0.0)
    sharding = Sharding(N, WORLD, SEED)
    for r, s in enumerate(strategies):
        assert s.sharding == sharding and s.shard_rank == r and s.num_samples == N
        assert s.table.num_samples == sharding.shard_size(r)  # 334, 333, 333
        ids = sharding.ids(r)
        s.update(ids, losses_for(ids))
    chosen = [s.select(1).indices for s in strategies]
    assert [len(c) for c in chosen] == [300 // WORLD] * WORLD  # equal quotas: ranks stay in step
    assert len(np.unique(np.concatenate(chosen))) == 300
    for r, c in enumerate(chosen):
        ids = sharding.ids(r)  # numpy oracle: eps=0 keeps the shard's 100 highest losses
        expected = ids[np.argsort(-losses_for(ids))[:100]]
        np.testing.assert_array_equal(np.sort(c), np.sort(expected))
        assert strategies[r].num_selected(1) == 100


def test_random_part_and_uniform_random_stay_inside_the_shard_and_differ_between_ranks():
    sharding = Sharding(N, WORLD, SEED)
    for cls, options in ((EpsilonGreedy, {"keep": 0.5, "eps": 0.5}), (UniformRandom, {"keep": 0.4}),
                         (UCB, {"keep": 0.2})):
        picks = []
        for r, s in enumerate(ranks(cls, **options)):
            s.update(sharding.ids(r), losses_for(sharding.ids(r)))
            sel = s.select(2)
            assert len(sel) == round(options["keep"] * N) // WORLD
            assert np.all(sharding.owner(sel.indices) == r), cls
            picks.append(sharding.local(sel.indices, r))
        assert not np.array_equal(np.sort(picks[1]), np.sort(picks[2])), cls  # per-rank random streams


def test_full_epochs_visit_the_smallest_shard_size_and_rotate_the_spare_sample():
    strategies = ranks(EpsilonGreedy, keep=0.5, warmup_epochs=3)
    sharding = Sharding(N, WORLD, SEED)
    for r, s in enumerate(strategies):
        for epoch in range(3):
            sel = s.select(epoch)
            assert len(sel) == s.num_selected(epoch) == N // WORLD
            assert len(np.unique(sel.indices)) == N // WORLD and np.all(sharding.owner(sel.indices) == r)
    spare = [set(sharding.ids(0)) - set(strategies[0].select(e).indices) for e in range(3)]
    assert all(len(s) == 1 for s in spare) and len(set.union(*spare)) == 3  # a different one dropped each time
    full = ranks(Full)
    assert [len(s.select(0)) for s in full] == [N // WORLD] * WORLD


def test_updates_are_local_a_foreign_id_is_refused_and_the_table_is_untouched():
    s0 = ranks(keep=0.5)[0]
    sharding = s0.sharding
    mine, theirs = sharding.ids(0)[:4], sharding.ids(1)[:1]
    with pytest.raises(IndexError, match=rf"indices\[4\] = {theirs[0]} belongs to rank 1's shard, not rank 0's") as e:
        s0.update(np.r_[mine, theirs], np.ones(5, np.float32))
    assert "\n" not in str(e.value)
    assert (s0.table.seen == 0).all()
    s0.update(mine, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(s0.table.mean[sharding.local(mine, 0)], [1, 2, 3, 4])
    assert s0.table.seen.sum() == 4


def test_sample_report_names_the_shard_rows_by_sample_id():
    s = ranks(keep=0.5)[2]
    ids = s.sharding.ids(2)
    s.update(ids[:5], [5.0, 4.0, 3.0, 2.0, 1.0])
    report = s.sample_report()
    np.testing.assert_array_equal(report["index"], ids)
    assert report["loss"][:5].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0] and len(report["loss"]) == len(ids)


def test_gpu_style_deferred_updates_map_ids_when_applied():
    a, b = ranks(keep=0.5)[1], ranks(keep=0.5)[1]
    ids = a.sharding.ids(1)[:50]
    a.update(torch.from_numpy(ids), torch.from_numpy(losses_for(ids)), defer=True)
    b.update(ids, losses_for(ids))
    np.testing.assert_array_equal(a.table.mean, b.table.mean)


def test_class_balance_within_the_shard():
    labels = np.arange(N) % 4
    sharding = Sharding(N, WORLD, SEED)
    for r, s in enumerate(ranks(UniformRandom, keep=0.4, labels=labels)):
        sel = s.select(1)
        counts = np.bincount(labels[sel.indices], minlength=4)
        shard_counts = np.bincount(labels[sharding.ids(r)], minlength=4)
        expected = shard_counts * (len(sel) / shard_counts.sum())
        assert np.all(np.abs(counts - expected) <= 1), (counts, expected)


def test_infobatch_whose_epoch_size_follows_the_scores_refuses_sharding_in_one_line():
    with pytest.raises(ValueError, match="distributed='sharded' is not supported by InfoBatch") as e:
        InfoBatch(N, epochs=5, distributed=("sharded", 0, 2))
    assert "\n" not in str(e.value)


def test_static_baselines_select_their_fixed_subset_per_shard():
    sharding = Sharding(N, WORLD, SEED)
    for cls in (EL2N, Forgetting):
        for r, s in enumerate(ranks(cls, keep=0.3, score_epochs=1)):
            ids = s.select(0).indices  # the scoring epoch: the shard, cut to N // WORLD
            s.update(ids, losses_for(ids), (ids % 2 == 0) if cls is Forgetting else None)
            chosen = s.select(1).indices
            assert len(chosen) == 100 and np.all(sharding.owner(chosen) == r)
            np.testing.assert_array_equal(s.select(3).indices, chosen)  # fixed for the rest of training


@pytest.mark.parametrize("bad", ["shard", ("sharded", 2, 2), ("sharded", 0), ("sharded", 0.5, 2)])
def test_bad_distributed_values_are_refused(bad):
    with pytest.raises(ValueError, match="distributed"):
        EpsilonGreedy(N, distributed=bad)


def test_checkpoints_are_per_shard_and_another_world_size_is_refused_in_one_line():
    sharding = Sharding(N, WORLD, SEED)
    a = ranks(keep=0.4)[1]
    a.update(sharding.ids(1), losses_for(sharding.ids(1)))
    a.select(1)
    state = a.state_dict()
    assert state["table"]["mean"].shape == (sharding.shard_size(1),)  # the shard only
    b = ranks(keep=0.4)[1]
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.select(2).indices, a.select(2).indices)
    other_world = EpsilonGreedy(N, keep=0.4, seed=SEED, distributed=("sharded", 1, 2))
    with pytest.raises(ValueError, match="over 3 ranks.*over 2 ranks.*same world size") as e:
        other_world.load_state_dict(state)
    assert "\n" not in str(e.value)
    for other in (ranks(keep=0.4)[0], EpsilonGreedy(N, keep=0.4, seed=SEED)):  # another rank, replicated
        with pytest.raises(ValueError, match="shard"):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="shard"):  # a replicated checkpoint into a sharded strategy
        ranks(keep=0.4)[0].load_state_dict(EpsilonGreedy(N, keep=0.4, seed=SEED).state_dict())


def test_sampler_and_loader_visit_the_rank_selection_whole(tmp_path):
    rng = np.random.default_rng(0)
    store = fastprune.convert.from_arrays(rng.integers(0, 256, (N, 4, 4, 3), dtype=np.uint8),
                                          np.arange(N) % 3, tmp_path / "s.beton", progress=False)
    s = ranks(keep=0.5)[2]
    sel = set(s.select(0).indices.tolist())
    sampler = PrunedSampler(s, seed=1)
    assert len(sampler) == len(sel) == 500 // WORLD
    visited = list(sampler)
    assert set(visited) == sel and len(visited) == len(sel)
    assert sampler.weights(torch.tensor(visited[:3])).tolist() == [1.0] * 3
    with pytest.raises(IndexError, match="belongs to rank"):
        sampler.weights(torch.from_numpy(s.sharding.ids(0)[:1]))
    with pytest.raises(ValueError, match="PrunedSampler: the strategy is sharded as rank 2 of 3 but PrunedSampler "
                                         "runs as rank 0 of 2"):
        PrunedSampler(s, num_replicas=2, rank=0)
    loader = fastprune.Loader(store, 32, sampler=s, seed=1, threads=1)
    assert (loader.rank, loader.world_size) == (2, 3)
    ids, _ = loader.epoch_order(0)
    assert set(ids.tolist()) == sel and len(loader) == -(-len(sel) // 32)
    seen = [i for batch in loader for i in batch.indices.tolist()]
    assert sorted(seen) == sorted(sel)
    with pytest.raises(ValueError, match="Loader: the strategy is sharded as rank 2 of 3"):
        fastprune.Loader(store, 32, sampler=s, distributed=(0, 3))


# ---- multi-process (gloo) ---------------------------------------------------------------------

def sharded_worker(rank, out_dir, world):
    import torch.distributed as dist

    def refuse(*args, **kwargs):
        raise AssertionError("a sharded strategy must not all-gather")

    dist.all_gather = refuse  # any pruning collective fails the rank
    s = UCB(N, keep=0.3, seed=SEED, distributed="sharded")
    oracle = UCB(N, keep=0.3, seed=SEED, distributed=("sharded", rank, world))  # no group involved
    assert (s.shard_rank, s.sharding.world_size) == (rank, world)
    rng = np.random.default_rng(rank)
    result = {}
    for epoch in range(4):
        sel, expected = s.select(epoch), oracle.select(epoch)
        np.testing.assert_array_equal(sel.indices, expected.indices)
        losses = rng.exponential(size=len(sel)).astype(np.float32)
        s.update(torch.from_numpy(sel.indices), torch.from_numpy(losses))
        oracle.update(sel.indices, losses)
        result[f"sel{epoch}"] = sel.indices
    result["entries"] = np.array(s.table.num_samples)
    np.savez(f"{out_dir}/rank{rank}.npz", **result)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_ranks_select_disjoint_equal_parts_with_no_collective(tmp_path, world):
    run_ranks(sharded_worker, str(tmp_path), world, world=world)
    results = [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]
    sharding = Sharding(N, world, SEED)
    assert [int(r["entries"]) for r in results] == [sharding.shard_size(r) for r in range(world)]
    for epoch in range(4):
        parts = [r[f"sel{epoch}"] for r in results]
        assert len({len(p) for p in parts}) == 1  # lockstep
        every = np.concatenate(parts)
        assert len(np.unique(every)) == len(every)
        for r, p in enumerate(parts):
            assert np.all(sharding.owner(p) == r)


def sharded_train_worker(rank, store, out_dir):
    from fastprune.loader import Normalize

    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    strategy = EpsilonGreedy(300, keep=0.5, seed=3, distributed="sharded")
    loader = fastprune.Loader(store, 16, sampler=strategy, seed=3, threads=1, transforms=[Normalize()])
    result = {}
    for epoch in range(4):
        loader.set_epoch(epoch)
        ids = []
        for images, labels, indices, weights in loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels, reduction="none")
            strategy.update(indices, loss.detach())  # local: the loader only hands this rank's samples
            optimizer.zero_grad()
            (loss * weights).mean().backward()
            optimizer.step()
            ids += indices.tolist()
        result[f"ids{epoch}"] = np.asarray(ids)
    result["weight"] = model.module[1].weight.detach().numpy()
    everything = fastprune.Loader(store, 100, seed=0, threads=1, transforms=[Normalize()], distributed=False)
    with torch.no_grad():
        hits = sum(int((model(images).argmax(1) == labels).sum()) for images, labels, _, _ in everything)
    result["accuracy"] = np.array(hits / 300)
    np.savez(f"{out_dir}/train{rank}.npz", **result)


def test_ddp_training_with_a_sharded_strategy_stays_in_step_and_learns(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    images = rng.integers(0, 60, (300, 4, 4, 3)).astype(np.uint8)
    images[np.arange(300), :, :, labels] += 150  # the class's channel is bright
    store = fastprune.convert.from_arrays(images, labels, tmp_path / "s.beton", progress=False)
    run_ranks(sharded_train_worker, str(store), str(tmp_path))
    r0, r1 = np.load(tmp_path / "train0.npz"), np.load(tmp_path / "train1.npz")
    sharding = Sharding(300, 2, 3)
    for epoch in range(4):
        a, b = r0[f"ids{epoch}"], r1[f"ids{epoch}"]
        assert len(a) == len(b) == 75  # keep 0.5 of 300, in 2 equal quotas
        assert not set(a) & set(b) and np.all(sharding.owner(a) == 0) and np.all(sharding.owner(b) == 1)
    np.testing.assert_allclose(r0["weight"], r1["weight"])  # DDP kept the replicas equal
    assert r0["accuracy"] == r1["accuracy"] > 0.9  # it learns (one bright channel per class)


@pytest.mark.ffcv
def test_ffcv_pruned_order_traverses_the_rank_selection(tmp_path):
    pytest.importorskip("ffcv")
    from ffcv.fields import IntField
    from ffcv.fields.decoders import IntDecoder
    from ffcv.loader import Loader
    from ffcv.writer import DatasetWriter

    from fastprune.integrations.ffcv import PrunedOrder

    class Ids:
        def __len__(self):
            return 103

        def __getitem__(self, i):
            return (i,)

    path = tmp_path / "ids.beton"
    DatasetWriter(str(path), {"index": IntField()}, num_workers=1).from_indexed_dataset(Ids())
    strategy = UniformRandom(103, 0.5, seed=4, warmup_epochs=1, distributed=("sharded", 1, 2))
    order = PrunedOrder.register(strategy)
    loader = Loader(str(path), batch_size=10, num_workers=1, order=order, drop_last=False, seed=3,
                    pipelines={"index": [IntDecoder()]})
    for epoch, size in enumerate([103 // 2, round(0.5 * 103) // 2]):  # full epoch, then an equal quota
        seen = [i for (index,) in loader for i in np.asarray(index).reshape(-1).tolist()]
        assert sorted(seen) == sorted(strategy.select(epoch).indices.tolist()) and len(seen) == size
        assert np.all(strategy.sharding.owner(np.array(seen)) == 1)
        np.testing.assert_array_equal(order.weights(np.array(seen[:3])), np.ones(3, np.float32))
