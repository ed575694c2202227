"""Ranks that disagree stop with a ConfigError on every rank (distributed audit, 2026-12-06).

update() all-gathers each call's size anyway; it now also carries the strategy's epoch, the call's
number in it, a digest of the strategy's settings and of how the consumer orders the epoch. Before:
a rank one update() ahead paired its calls with the other's next epoch (tables out of step, then a
hang), and ranks seeded apart (strategy, Loader or PrunedSampler) trained overlapping shards
silently.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import fastprune
from fastprune.convert import from_arrays
from fastprune.errors import ConfigError, UsageWarning
from fastprune.prune import UCB, PrunedSampler

from test_prune_distributed import run_ranks

N = 120


def _expect_config_error(results: dict, name: str, action) -> None:
    try:
        action()
        results[name] = None
    except ConfigError as exc:
        results[name] = str(exc)


def disagreeing_worker(rank, out_dir):
    store = from_arrays(np.zeros((N, 4, 4, 3), np.uint8), np.arange(N) % 2, f"{out_dir}/store{rank}.beton",
                        progress=False)
    results = {}
    losses = torch.ones(6)

    def one_call_ahead():
        s = UCB(N, 0.5, seed=0)
        s.select(0)
        s.update(torch.arange(rank, 12, 2), losses)
        if rank == 0:  # an extra call in epoch 0: paired with rank 1's first call of epoch 1
            s.update(torch.arange(12, 24, 2), losses)
        else:
            s.select(1)
        s.update(torch.arange(24 + rank, 36, 2), losses)
    _expect_config_error(results, "ahead", one_call_ahead)

    def seeded_per_rank():
        s = UCB(N, 0.5, seed=rank)
        s.select(0)
        s.update(torch.arange(rank, 12, 2), losses)
    _expect_config_error(results, "strategy_seed", seeded_per_rank)

    def loader_seeded_per_rank():
        s = UCB(N, 0.5, seed=0)
        batch = next(iter(fastprune.Loader(store, 6, sampler=s, seed=rank, threads=1)))
        s.update(batch.indices, losses)
    _expect_config_error(results, "loader_seed", loader_seeded_per_rank)

    def sampler_seeded_per_rank():
        s = UCB(N, 0.5, seed=0)
        ids = next(iter(PrunedSampler(s, seed=rank)))
        s.update(torch.tensor([ids]), torch.ones(1))
    _expect_config_error(results, "sampler_seed", sampler_seeded_per_rank)

    def agreeing():  # the same setup on both ranks: a whole epoch, no error
        s = UCB(N, 0.5, seed=0)
        loader = fastprune.Loader(store, 6, sampler=s, seed=0, threads=1)
        for epoch in range(2):
            for batch in loader:
                s.update(batch.indices, torch.rand(len(batch.indices)))
    _expect_config_error(results, "agreeing", agreeing)

    def inspecting_on_one_rank():  # looking at an epoch's order is no pass: nothing to compare
        s = UCB(N, 0.5, seed=0)
        loader = fastprune.Loader(store, 6, sampler=s, seed=0, threads=1)
        for epoch in range(2):
            for number, batch in enumerate(loader):
                if rank == 0 and number == 1:
                    loader.epoch_order(0)  # a look back
                    fastprune.Loader(store, 6, sampler=s, shuffle=False, threads=1).epoch_order(epoch)
                s.update(batch.indices, torch.rand(len(batch.indices)))
    _expect_config_error(results, "inspecting", inspecting_on_one_rank)

    class Tagged(UCB):  # a subclass whose config() holds what JSON cannot (its str() names an address)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.tag = object()

        def config(self):
            return {**super().config(), "tag": self.tag, "hook": lambda: None}

    def subclass_with_objects_in_its_config():
        s = Tagged(N, 0.5, seed=0)
        s.select(0)
        s.update(torch.arange(rank, 12, 2), losses)
    _expect_config_error(results, "objects_in_config", subclass_with_objects_in_its_config)
    with open(f"{out_dir}/rank{rank}.json", "w") as file:
        json.dump(results, file)


def test_ranks_that_disagree_stop_with_one_config_error_on_every_rank(tmp_path):
    run_ranks(disagreeing_worker, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank raised the same error at the same call: none waits on another
    said = ranks[0]
    assert said["ahead"].startswith("update(): the ranks are out of step (rank 0 at call 2 of epoch 0, rank 1 at "
                                    "call 1 of epoch 1): every rank must call update() once per step")
    assert said["strategy_seed"].startswith("update(): the ranks' strategies were built with different settings")
    for name in ("loader_seed", "sampler_seed"):
        assert said[name].startswith("update(): the ranks order the epoch differently (their Loaders' or "
                                     "PrunedSamplers' seeds differ)"), name
    assert said["agreeing"] is None and said["inspecting"] is None and said["objects_in_config"] is None


@pytest.mark.parametrize("consumer", ["loader", "sampler"])
def test_explicit_ranks_without_a_group_warn_once_at_the_first_update(tmp_path, consumer):
    # each rank's table would see only its own losses: the ranks' selections diverge, silently
    strategy = UCB(N, 0.5, seed=0)
    if consumer == "loader":
        store = from_arrays(np.zeros((N, 4, 4, 3), np.uint8), np.arange(N) % 2, tmp_path / "s.beton", progress=False)
        ids = next(iter(fastprune.Loader(store, 6, sampler=strategy, threads=1, distributed=(0, 2)))).indices
    else:
        ids = torch.tensor(list(PrunedSampler(strategy, num_replicas=2, rank=0))[:6])
    with pytest.warns(UsageWarning, match=r"UCB.update\(\): the selection is sharded over 2 ranks but no "
                                          r"torch.distributed group runs"):
        strategy.update(ids, torch.ones(len(ids)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strategy.update(ids, torch.ones(len(ids)))  # once


def test_one_process_alone_never_warns(tmp_path):
    strategy = UCB(N, 0.5, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for index in PrunedSampler(strategy):
            strategy.update(torch.tensor([index]), torch.ones(1))
