"""The default of every thread and worker count: the CPUs the process may use, a container's CPU
quota included (a 2-CPU container on a 64-core host saw 64 CPUs, and ran 64 busy threads on 2)."""

from __future__ import annotations

import os

import torch

from fastprune import _cpus


def test_the_cgroup_quota_is_read_from_v2_then_v1(tmp_path):
    v2, v1 = tmp_path / "cpu.max", tmp_path / "v1"
    v1.mkdir()
    assert _cpus.cgroup_cpu_quota(v2, v1) is None  # neither: no quota
    v2.write_text("max 100000\n")
    assert _cpus.cgroup_cpu_quota(v2, v1) is None
    v2.write_text("150000 100000\n")  # 1.5 CPUs' time: 2 threads keep it busy
    assert _cpus.cgroup_cpu_quota(v2, v1) == 2
    v2.write_text("garbage")
    (v1 / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert _cpus.cgroup_cpu_quota(v2, v1) == 4
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cpus.cgroup_cpu_quota(v2, v1) is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: None)
    assert _cpus.usable_cpus() == affinity
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: 1)
    assert _cpus.usable_cpus() == 1
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: affinity + 8)
    assert _cpus.usable_cpus() == affinity


def test_train_without_threads_uses_no_more_torch_threads_than_the_quota_allows(tmp_path, monkeypatch):
    import numpy as np

    import fastprune.train.cli as train_cli
    from fastprune.cli import main
    from fastprune.convert import from_arrays

    store = from_arrays(np.zeros((64, 8, 8, 3), np.uint8), np.arange(64) % 2, tmp_path / "s.beton", progress=False)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        monkeypatch.setattr(train_cli, "usable_cpus", lambda: 1)
        seen = []
        monkeypatch.setattr(train_cli, "run_recipe", lambda *a, **k: seen.append(torch.get_num_threads()) or
                            (_ for _ in ()).throw(KeyboardInterrupt))
        assert main(["train", "--train", str(store), "--val", str(store), "--no-progress"]) == 130
        assert seen == [1]
    finally:
        torch.set_num_threads(before)
