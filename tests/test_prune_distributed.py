"""Two gloo processes: all-gathered updates keep the ranks' tables and selections identical.

Every rank runs through :func:`run_ranks`, which checks each rank's results, not how its
interpreter finalizes: torch's gloo backend can abort a finished rank at exit (issue 33; see
``_rank_main``).
"""

import os
import socket
import sys
import traceback
import types

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastprune.prune import UCB, InfoBatch
from fastprune.prune.distributed import _collective_device, gather_updates

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, fn, port, args, world=WORLD):
    """One rank: join the group, run ``fn(rank, *args)``, leave the group, then end the process
    with ``os._exit``: exit code 0 after success, 1 (traceback printed) after an exception.

    Why ``os._exit``: gloo's worker thread can still be freeing a finished collective while the
    interpreter finalizes; its destructor then takes the GIL of a dying interpreter and the rank
    dies with SIGABRT ("terminate called without an active exception") after its work is done.
    Core dumps show only torch/gloo frames (``ProcessGroupGloo::runLoop`` ->
    ``~AsyncAllreduceWork`` -> ``take_gil`` -> ``pthread_exit`` during ``Py_FinalizeEx``).
    Skipping finalization removes that race; a real failure still exits non-zero and
    ``mp.spawn`` raises.
    """
    code = 1
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        try:
            fn(rank, *args)
        finally:
            dist.destroy_process_group()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_ranks(fn, *args, world: int = WORLD) -> None:
    """Run ``fn(rank, *args)`` on ``world`` gloo ranks (WORLD by default); raises if any rank failed."""
    mp.spawn(_rank_main, args=(fn, free_port(), args, world), nprocs=world, join=True)


def worker(rank, out_dir):
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


def test_two_ranks_hold_identical_tables_and_selections(tmp_path):
    run_ranks(worker, str(tmp_path))
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


class _NcclGroup:
    """Stands in for torch.distributed under an NCCL-only group (CI has no GPU): what
    _collective_device reads."""

    def __init__(self, bound=None, backend="nccl"):
        group = types.SimpleNamespace() if bound is False else types.SimpleNamespace(bound_device_id=bound)
        self.distributed_c10d = types.SimpleNamespace(_get_default_group=lambda: group)
        self.get_backend = lambda: backend


def test_collectives_run_on_the_rank_s_own_gpu(monkeypatch):
    # DDP tutorial style: each rank's model on cuda:rank, no set_device, so the current device is
    # cuda:0 on every rank; the collective must follow the losses (or the group's bound device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    on_gpu1 = types.SimpleNamespace(device=torch.device("cuda", 1))
    assert _collective_device(_NcclGroup(), on_gpu1) == torch.device("cuda", 1)
    assert _collective_device(_NcclGroup(bound=torch.device("cuda", 2)), on_gpu1) == torch.device("cuda", 2)
    assert _collective_device(_NcclGroup(bound=False), on_gpu1) == torch.device("cuda", 1)  # torch < 2.3
    # losses on the host (numpy, a CPU tensor): the current device, as before
    assert _collective_device(_NcclGroup(), np.zeros(3)) == torch.device("cuda", 0)
    assert _collective_device(_NcclGroup(), torch.zeros(3)) == torch.device("cuda", 0)
    for backend in ("gloo", "cpu:gloo,cuda:nccl"):  # torch's default group gathers host tensors over gloo
        assert _collective_device(_NcclGroup(backend=backend), on_gpu1) == torch.device("cpu")


def train_worker(rank, store, out_dir):
    """The multi-process training recipe: DDP over gloo, fastprune's Loader and a strategy, no
    sharding arguments anywhere: the loader and PrunedSampler shard by the running group."""
    import fastprune
    from fastprune import PrunedSampler
    from fastprune.loader import Normalize

    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy = UCB(200, keep=0.5, seed=3)
    loader = fastprune.Loader(store, 20, sampler=strategy, seed=3, threads=1, transforms=[Normalize()])
    visited = {}
    for epoch in range(3):
        loader.set_epoch(epoch)
        visited[f"ids{epoch}"] = []
        for images, labels, indices, weights in loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels, reduction="none")
            strategy.update(indices, loss.detach())
            optimizer.zero_grad()
            (loss * weights).mean().backward()
            optimizer.step()
            visited[f"ids{epoch}"] += indices.tolist()
    sampler = PrunedSampler(strategy, seed=3)
    result = {k: np.asarray(v) for k, v in visited.items()}
    result["sampler"] = np.asarray(list(sampler))
    result["mean"] = strategy.table.mean
    result["weight"] = model.module[1].weight.detach().numpy()
    np.savez(f"{out_dir}/train{rank}.npz", **result)


def test_ddp_training_shards_automatically_and_keeps_ranks_in_step(tmp_path):
    import fastprune

    rng = np.random.default_rng(0)
    store = fastprune.convert.from_arrays(rng.integers(0, 256, (200, 4, 4, 3), dtype=np.uint8),
                                          np.arange(200) % 3, tmp_path / "s.beton", progress=False)
    run_ranks(train_worker, str(store), str(tmp_path))
    r0, r1 = np.load(tmp_path / "train0.npz"), np.load(tmp_path / "train1.npz")
    for epoch in range(3):
        a, b = r0[f"ids{epoch}"], r1[f"ids{epoch}"]
        assert len(a) == len(b) == 50 and not set(a) & set(b)          # disjoint halves of 100 kept
    assert len(r0["sampler"]) == 50 and not set(r0["sampler"]) & set(r1["sampler"])
    np.testing.assert_array_equal(r0["mean"], r1["mean"])              # one score table everywhere
    np.testing.assert_allclose(r0["weight"], r1["weight"])             # DDP kept the replicas equal


def failing_worker(rank):
    if rank == 1:
        raise ValueError("rank 1 failed on purpose")


def test_a_failing_rank_still_fails_the_run(capfd):
    """os._exit must not hide a real failure: the rank exits 1, its traceback is printed."""
    with pytest.raises(mp.ProcessExitedException, match="exit code 1"):
        run_ranks(failing_worker)
    assert "rank 1 failed on purpose" in capfd.readouterr().err
