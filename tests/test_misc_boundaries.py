"""Boundaries of random_streams, _cpus and _devices that no other test pinned down: a mutation
audit found each change passing the suite. Tie orders of different streams (whole-data vs random
part, one sharded rank vs another) are independent, the statistics sample is distinct ids, a
cgroup v1 quota rounds up like v2's, the CPU affinity caps the count, "cpu:0" is the CPU, and a
plain "cuda" is pinned to the current device, not cuda:0."""

import os

import numpy as np
import pytest
import torch
from test_device import _pretend_cuda

from fastprune import _cpus
from fastprune._devices import resolve_device
from fastprune.random_streams import statistics_sample, tie_order


def test_tie_orders_of_different_streams_are_independent():
    """Stream 0 (the quota), 1 (the uniform part) and each sharded rank's ((rank+1) << 32) + part:
    with one order for all, every rank gave its spare samples to the same classes."""
    streams = [0, 1, (1 << 32) + 0, (2 << 32) + 0, (1 << 32) + 1]
    orders = {tuple(tie_order(3, 5, stream, 20)) for stream in streams}
    assert len(orders) == len(streams)
    assert tuple(tie_order(3, 5, 1, 20)) in orders  # a pure function of its arguments


def test_the_statistics_sample_is_distinct_sorted_and_the_same_every_run():
    ids = statistics_sample(1000, 600)
    assert len(np.unique(ids)) == 600 and np.all(np.diff(ids) > 0) and ids.dtype == np.int64
    assert 0 <= ids.min() and ids.max() < 1000
    np.testing.assert_array_equal(ids, statistics_sample(1000, 600))
    np.testing.assert_array_equal(statistics_sample(50, 50), np.arange(50))


def test_a_cgroup_v1_quota_is_rounded_up_like_v2(tmp_path):
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("150000\n")  # 1.5 CPUs' time: 2 threads keep it busy
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert _cpus.cgroup_cpu_quota(tmp_path / "absent", v1) == 2


def test_usable_cpus_follows_the_affinity_not_the_machine(monkeypatch):
    """taskset / a scheduler's cpuset: os.cpu_count() is the machine's, the affinity the process's."""
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert _cpus.usable_cpus() == 3


def test_cpu_with_an_index_is_the_cpu():
    assert resolve_device("cpu:0") == torch.device("cpu") == resolve_device(torch.device("cpu", 0))
    assert str(resolve_device("CPU:0")) == "cpu"


def test_plain_cuda_is_pinned_to_the_current_device(monkeypatch):
    """A rank that ran set_device(1) and then asked for "cuda" trains on (and records) cuda:1."""
    _pretend_cuda(monkeypatch, True, count=2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda", pin_index=False) == torch.device("cuda")  # plain: the current one when used
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
