"""The default of every thread and worker count: the CPUs the process may use, a container's CPU
quota included (a 2-CPU container on a 64-core host saw 64 CPUs, and ran 64 busy threads on 2),
divided among the distributed ranks that run on them."""

from __future__ import annotations

import os

import numpy as np
import pytest
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


def test_cpu_lists_are_counted_and_malformed_ones_refused():
    assert _cpus.cpu_list_size("0-7,16-23,31\n") == 17
    assert _cpus.cpu_list_size("5") == 1
    for bad in ("", "\n", "3-1", "a-b", "0-3,,5"):
        with pytest.raises(ValueError):
            _cpus.cpu_list_size(bad)


def test_the_machine_is_the_containers_cpuset_then_the_cpu_count(tmp_path):
    v2, v1 = tmp_path / "cpuset.cpus.effective", tmp_path / "cpuset.effective_cpus"
    assert _cpus.machine_cpus(v2, v1) == os.cpu_count()  # no cpuset file: the whole machine
    v1.write_text("0-31\n")
    assert _cpus.machine_cpus(v2, v1) == 32  # cgroup v1 (a Kubernetes pod's exclusive CPUs, say)
    v2.write_text("\n")  # unreadable as a list: the next source
    assert _cpus.machine_cpus(v2, v1) == 32
    v2.write_text("0-3,64-67\n")
    assert _cpus.machine_cpus(v2, v1) == 8  # cgroup v2 first


def test_local_ranks_come_from_the_launchers_variables():
    assert _cpus.local_ranks({}) == 1
    assert _cpus.local_ranks({"LOCAL_WORLD_SIZE": "8"}) == 8  # torchrun, Accelerate, DeepSpeed
    assert _cpus.local_ranks({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == 4  # Open MPI's mpirun
    assert _cpus.local_ranks({"MPI_LOCALNRANKS": "2"}) == 2  # MPICH, Intel MPI
    assert _cpus.local_ranks({"MV2_COMM_WORLD_LOCAL_SIZE": "3"}) == 3  # MVAPICH
    assert _cpus.local_ranks({"LOCAL_WORLD_SIZE": "8", "MPI_LOCALNRANKS": "2"}) == 8  # torchrun's first
    assert _cpus.local_ranks({"LOCAL_WORLD_SIZE": "", "MPI_LOCALNRANKS": "2"}) == 2  # empty: the next one
    assert _cpus.local_ranks({"LOCAL_WORLD_SIZE": "x", "MPI_LOCALNRANKS": "0"}) == 1  # neither is a count
    assert _cpus.local_ranks({"SLURM_STEP_TASKS_PER_NODE": "8(x2)"}) == 8  # srun: 8 tasks on each of 2 nodes
    assert _cpus.local_ranks({"SLURM_STEP_TASKS_PER_NODE": "4,4"}) == 4
    assert _cpus.local_ranks({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1"}) == 1  # which node is this? not said
    assert _cpus.local_ranks({"SLURM_STEP_TASKS_PER_NODE": "2", "LOCAL_WORLD_SIZE": "4"}) == 4  # torchrun under srun


def test_ranks_share_the_cpus_they_may_all_run_on():
    assert _cpus.ranks_sharing(128, 8, 128) == 8  # torchrun: every rank may run anywhere
    assert _cpus.ranks_sharing(16, 8, 128) == 1  # each rank bound to its own 16 cores
    assert _cpus.ranks_sharing(64, 8, 128) == 4  # --numa-binding: a socket's 64 cores, 4 ranks on it
    assert _cpus.ranks_sharing(128, 1, 128) == 1  # not distributed
    assert _cpus.ranks_sharing(8, 8, 4) == 8  # a machine read smaller than the affinity: all of them
    assert _cpus.ranks_sharing(1, 8, 128) == 1


def test_a_ranks_usable_cpus_are_its_share(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(_cpus, "machine_cpus", lambda: affinity)  # the ranks may all run on every CPU
    for name in _cpus.LOCAL_RANKS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert _cpus.usable_cpus() == affinity
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert _cpus.usable_cpus() == max(1, affinity // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * affinity))
    assert _cpus.usable_cpus() == 1  # more ranks than CPUs: one each, not zero
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert _cpus.usable_cpus() == 1  # a quota of 1 CPU shared by 2 ranks
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(_cpus, "machine_cpus", lambda: 2 * affinity)  # this rank has its own half
    assert _cpus.usable_cpus() == affinity


def test_torchrun_ranks_default_to_their_share_of_the_loader_threads(tmp_path):
    """The real launcher: two ranks on this machine's CPUs each default to half of them."""
    import subprocess
    import sys

    from fastprune.convert import from_arrays

    cpus = len(os.sched_getaffinity(0))
    quota = _cpus.cgroup_cpu_quota()
    cpus = min(cpus, quota) if quota else cpus
    if cpus < 2:
        pytest.skip("one CPU: one thread per rank either way")
    store = tmp_path / "s.beton"
    from_arrays(np.zeros((16, 8, 8, 3), np.uint8), np.arange(16) % 2, store, jpeg=True, progress=False)
    script = tmp_path / "rank.py"
    script.write_text("import os, sys, fastprune\n"
                      "loader = fastprune.Loader(sys.argv[1], 4)\n"
                      "open(os.path.join(sys.argv[2], os.environ['RANK']), 'w').write(str(loader.threads))\n")
    env = {k: v for k, v in os.environ.items() if k not in _cpus.LOCAL_RANKS_VARIABLES}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(script), str(store), str(tmp_path)], check=True, env=env, capture_output=True, timeout=300)
    expected = max(1, cpus // _cpus.ranks_sharing(len(os.sched_getaffinity(0)), 2, _cpus.machine_cpus()))
    assert [(tmp_path / r).read_text() for r in ("0", "1")] == [str(expected)] * 2
    alone = subprocess.run([sys.executable, str(script), str(store), str(tmp_path)], env={**env, "RANK": "x"},
                           check=True, capture_output=True, timeout=300)
    assert alone.returncode == 0 and (tmp_path / "x").read_text() == str(cpus)
