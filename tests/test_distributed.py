"""Two gloo processes: all-gathered updates keep the ranks' tables and selections identical."""

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastprune.prune import UCB, InfoBatch
from fastprune.prune.distributed import gather_updates

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        n = 1001
        strategies = [UCB(n, 0.3, seed=11), InfoBatch(n, 0.5, epochs=6, seed=12)]
        rng = np.random.default_rng(100 + rank)  # each rank sees different losses
        selections = {i: [] for i in range(len(strategies))}
        for epoch in range(4):
            for i, s in enumerate(strategies):
                sel = s.select(epoch)
                selections[i].append(sel.indices)
                shard = np.sort(sel.indices)[rank::WORLD]  # each rank trains on its own shard
                shard = shard[: len(shard) - rank]  # unequal shard sizes on purpose
                losses = torch.from_numpy(rng.exponential(size=len(shard)).astype(np.float32))
                s.update(torch.from_numpy(shard), losses, torch.from_numpy(rng.random(len(shard)) < 0.5))
        result = {}
        for i, s in enumerate(strategies):
            for name in s.table.fields:  # what each strategy tracks (UCB: var; both: correctness)
                result[f"{i}_{name}"] = getattr(s.table, name)
            for epoch, idx in enumerate(selections[i]):
                result[f"{i}_sel{epoch}"] = idx
        # a rank-only (non-gathered) update must fail loudly when ranks disagree on `correct`
        try:
            gather_updates(np.array([0]), np.array([1.0]), np.array([1]) if rank == 0 else None)
            result["mismatch_error"] = np.array(False)
        except ValueError:
            result["mismatch_error"] = np.array(True)
        np.savez(f"{out_dir}/rank{rank}.npz", **result)
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_identical_tables_and_selections(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert set(r0.files) == set(r1.files)
    for key in r0.files:
        np.testing.assert_array_equal(r0[key], r1[key], err_msg=key)
    assert r0["mismatch_error"] and r1["mismatch_error"]
    # both shards' updates reached both tables: UCB keeps 300 per epoch, shards of 150 and 149
    assert r0["0_seen"].sum() == 4 * (150 + 149)
    assert not np.array_equal(r0["0_sel1"], r0["0_sel2"])


def test_distributed_true_without_a_group_is_an_error():
    with pytest.raises(RuntimeError, match="process group"):
        UCB(10, distributed=True).update([0], [1.0])
