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


def test_cpu_lists_are_read_and_malformed_ones_refused():
    assert _cpus.cpu_list("0-2,16-17,31\n") == {0, 1, 2, 16, 17, 31}
    assert _cpus.cpu_list("5") == {5}
    for bad in ("", "\n", "3-1", "a-b", "0-3,,5"):
        with pytest.raises(ValueError):
            _cpus.cpu_list(bad)


def test_the_machine_is_the_own_cgroups_cpuset_then_the_cpu_count(tmp_path):
    root, own = tmp_path / "cgroup", tmp_path / "self_cgroup"
    assert _cpus.machine_cpus(root, own) == os.cpu_count()  # no cgroup file, no cpuset: the whole machine
    own.write_text("0::/slurm/job_5/step_0/task_1\n")  # cgroup v2, bare metal: the path from the root
    (root / "slurm" / "job_5").mkdir(parents=True)
    (root / "cpuset.cpus.effective").write_text("0-127\n")
    assert _cpus.machine_cpus(root, own) == 128  # only the root has a cpuset
    (root / "slurm" / "job_5" / "cpuset.cpus.effective").write_text("0-31\n")
    assert _cpus.machine_cpus(root, own) == 32  # the nearest parent with one: the job's 32 of 128
    own.write_text("4:memory:/x\n3:cpuset,cpuacct:/docker/abc\n")  # cgroup v1; a path the container does not see
    (root / "cpuset").mkdir()
    assert _cpus.machine_cpus(root, own) == os.cpu_count()  # no v1 cpuset file yet
    (root / "cpuset" / "cpuset.effective_cpus").write_text("0-3,64-67\n")
    assert _cpus.machine_cpus(root, own) == 8  # walked up to the container's own root
    (root / "cpuset" / "cpuset.effective_cpus").write_text("garbage")
    assert _cpus.machine_cpus(root, own) == os.cpu_count()


def test_local_ranks_come_from_the_launchers_variables():
    assert _cpus.local_ranks({}) == 1
    assert _cpus.local_ranks({"LOCAL_WORLD_SIZE": "1", "MPI_LOCALNRANKS": "2"}) == 1  # torchrun's one rank
    assert _cpus.launcher_variable({"LOCAL_WORLD_SIZE": "1"}) is None  # one rank: nothing to share
    assert _cpus.launcher_variable({"LOCAL_WORLD_SIZE": "", "MPI_LOCALNRANKS": "2"}) == ("MPI_LOCALNRANKS", "2")
    assert _cpus.local_ranks({"LOCAL_WORLD_SIZE": "8"}) == 8  # torchrun, Accelerate
    assert _cpus.local_ranks({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == 4  # Open MPI's mpirun
    assert _cpus.local_ranks({"MPI_LOCALNRANKS": "2"}) == 2  # MPICH, Intel MPI
    assert _cpus.local_ranks({"MV2_COMM_WORLD_LOCAL_SIZE": "3"}) == 3  # MVAPICH
    assert _cpus.local_ranks({"HOROVOD_LOCAL_SIZE": "5"}) == 5  # horovodrun
    assert _cpus.local_ranks({"LOCAL_SIZE": "6", "LOCAL_RANK": "0", "CROSS_SIZE": "1"}) == 6  # deepspeed
    assert _cpus.local_ranks({"LOCAL_SIZE": "6"}) == 1  # without a LOCAL_RANK beside it: not a launcher's
    assert _cpus.local_ranks({"LOCAL_WORLD_SIZE": "8", "MPI_LOCALNRANKS": "2"}) == 8  # torchrun's first
    assert _cpus.local_ranks({"LOCAL_WORLD_SIZE": "", "MPI_LOCALNRANKS": "2"}) == 2  # empty: the next one
    assert _cpus.local_ranks({"LOCAL_WORLD_SIZE": "x", "MPI_LOCALNRANKS": "0"}) == 1  # neither is a count
    assert _cpus.local_ranks({"SLURM_STEP_TASKS_PER_NODE": "8(x2)"}) == 8  # srun: 8 tasks on each of 2 nodes
    assert _cpus.local_ranks({"SLURM_STEP_TASKS_PER_NODE": "4,4"}) == 4
    uneven = {"SLURM_STEP_TASKS_PER_NODE": "2(x3),1"}
    assert _cpus.local_ranks(uneven) == 1  # which node is this? not said
    assert [_cpus.local_ranks({**uneven, "SLURM_NODEID": str(n)}) for n in range(4)] == [2, 2, 2, 1]
    assert _cpus.local_ranks({**uneven, "SLURM_NODEID": "4"}) == 1  # not a node of the list
    assert _cpus.local_ranks({"SLURM_STEP_TASKS_PER_NODE": "2", "LOCAL_WORLD_SIZE": "4"}) == 4  # torchrun under srun


def test_ranks_share_the_cpus_their_siblings_may_run_on():
    node, socket0 = set(range(128)), set(range(64))
    assert _cpus.ranks_sharing(node, 8, [node] * 7, 128) == 8  # torchrun: every rank may run anywhere
    own = [set(range(16 * r, 16 * r + 16)) for r in range(8)]
    assert _cpus.ranks_sharing(own[0], 8, own[1:], 128) == 1  # each rank bound to its own 16 cores
    assert _cpus.ranks_sharing(socket0, 8, [socket0] * 3 + [node - socket0] * 4, 128) == 4  # --numa-binding
    pairs = [set(range(32))] + [set(range(32 * (r // 2), 32 * (r // 2) + 32)) for r in range(1, 8)]
    assert _cpus.ranks_sharing(pairs[0], 8, pairs[1:], 256) == 2  # GPUs in pairs on NUMA nodes: not 32/256 of 8
    assert _cpus.ranks_sharing(node, 4, [node] * 9, 128) == 4  # more siblings than ranks: at most the ranks
    assert _cpus.ranks_sharing(node, 1, [node] * 7, 128) == 1  # not distributed
    # no sibling seen (a shell per rank, no /proc): the fraction of the machine
    assert _cpus.ranks_sharing(node, 8, [], 128) == _cpus.ranks_sharing(node, 8, None, 128) == 8
    assert _cpus.ranks_sharing(set(range(16)), 8, None, 128) == 1
    assert _cpus.ranks_sharing(socket0, 8, None, 128) == 4
    assert _cpus.ranks_sharing(set(range(8)), 8, None, 4) == 8  # a machine read smaller than the affinity


def test_siblings_are_the_parents_other_children_that_are_ranks(tmp_path):
    proc = tmp_path / "proc"
    assert _cpus.sibling_cpu_sets(proc, pid=10, parent=1) is None  # no /proc: not known
    for thread, children in ((1, "10 11 12 14 15"), (2, "13\n")):
        (proc / "1" / "task" / str(thread)).mkdir(parents=True)
        (proc / "1" / "task" / str(thread) / "children").write_text(children)
    (proc / "1" / "task" / "3").mkdir()  # a thread without a children file (it ended): the others count
    rank_env = b"PATH=/bin\0LOCAL_WORLD_SIZE=4\0LOCAL_RANK=1\0"
    siblings = {10: ("0-1", rank_env), 11: ("0-3", rank_env), 13: ("8", rank_env),  # 12 has ended
                14: ("0-3", b"PATH=/bin\0"),  # a tee beside the ranks: not one of them
                15: ("0-3", b"PATH=/bin\0LOCAL_WORLD_SIZE=40\0")}  # another launch's rank
    for pid, (cpus, env) in siblings.items():
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "status").write_bytes(b"Name:\tpy-\xe8\xa8\nCpus_allowed_list:\t" + cpus.encode() +
                                                 b"\nMems_allowed:\t1\n")  # a name cut inside a character
        (proc / str(pid) / "environ").write_bytes(env)
    ranks = _cpus.sibling_cpu_sets(proc, pid=10, parent=1, marker="LOCAL_WORLD_SIZE=4")
    assert sorted(map(sorted, ranks)) == [[0, 1, 2, 3], [8]]
    assert len(_cpus.sibling_cpu_sets(proc, pid=10, parent=1)) == 4  # no marker: every child
    (proc / "13" / "environ").chmod(0)  # another account's rank: unreadable, not counted
    if not os.access(proc / "13" / "environ", os.R_OK):  # (root reads it anyway)
        assert len(_cpus.sibling_cpu_sets(proc, pid=10, parent=1, marker="LOCAL_WORLD_SIZE=4")) == 1


def test_a_ranks_cpus_are_its_share(monkeypatch):
    affinity = os.sched_getaffinity(0)
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(_cpus, "machine_cpus", lambda: len(affinity))
    monkeypatch.setattr(_cpus, "sibling_cpu_sets", lambda **_: [affinity])  # one other rank on the same CPUs
    assert _cpus.rank_cpus() == _cpus.usable_cpus() == len(affinity)  # no launcher's variable: not a rank
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert _cpus.rank_cpus() == max(1, len(affinity) // 2) and _cpus.usable_cpus() == len(affinity)
    monkeypatch.setattr(_cpus, "sibling_cpu_sets", lambda **_: [{max(affinity) + 1}])  # the other rank: elsewhere
    assert _cpus.rank_cpus() == len(affinity)
    monkeypatch.setattr(_cpus, "sibling_cpu_sets", lambda **_: [affinity] * 7)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert _cpus.rank_cpus() == max(1, len(affinity) // 8)  # more ranks than CPUs: one each, not zero
    monkeypatch.setattr(_cpus, "sibling_cpu_sets", lambda **_: [{max(affinity) + 1}] * 7)  # bound ranks...
    monkeypatch.setattr(_cpus, "cgroup_cpu_quota", lambda: 8 * len(affinity) // 2)  # ...in a container's quota
    assert _cpus.rank_cpus() == max(1, len(affinity) // 2)  # the quota is every rank's: an 8th each


def test_torchrun_ranks_default_to_their_share_of_the_loader_threads(tmp_path):
    """The real launcher: two unbound ranks on this machine's CPUs each default to half of them."""
    import subprocess
    import sys

    from fastprune.convert import from_arrays

    cpus = _cpus.usable_cpus()
    if cpus < 2:
        pytest.skip("one CPU: one thread per rank either way")
    store = tmp_path / "s.beton"
    from_arrays(np.zeros((16, 8, 8, 3), np.uint8), np.arange(16) % 2, store, jpeg=True, progress=False)
    script = tmp_path / "rank.py"
    script.write_text("import os, sys, time, fastprune\n"
                      "from fastprune import _cpus\n"
                      "loader = fastprune.Loader(sys.argv[1], 4)\n"
                      "launcher = _cpus.launcher_variable()\n"
                      "ranks = -1 if launcher is None else len(_cpus.sibling_cpu_sets(marker='='.join(launcher)))\n"
                      "out = os.path.join(sys.argv[2], os.environ['RANK'])\n"
                      "open(out + '.part', 'w').write(f'{loader.threads} {ranks}')\n"
                      "os.replace(out + '.part', out)\n"
                      # Neither rank exits before both have looked: a rank that had finished and been
                      # reaped was no longer the other's sibling (1 run in 12 read '1 0')
                      "deadline = time.monotonic() + 120\n"
                      "while os.environ['RANK'] in ('0', '1') and time.monotonic() < deadline and not all(\n"
                      "        os.path.exists(os.path.join(sys.argv[2], r)) for r in ('0', '1')):\n"
                      "    time.sleep(0.02)\n")
    env = {k: v for k, v in os.environ.items() if k not in _cpus.LOCAL_RANKS_VARIABLES}
    env["TMPDIR"] = str(tmp_path)  # torchrun leaves a folder there
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(script), str(store), str(tmp_path)], check=True, env=env, capture_output=True, timeout=300)
    # each rank saw the other among its siblings (not only the fallback's fraction of the machine)
    assert [(tmp_path / r).read_text() for r in ("0", "1")] == [f"{cpus // 2} 1"] * 2
    alone = subprocess.run([sys.executable, str(script), str(store), str(tmp_path)], env={**env, "RANK": "x"},
                           check=True, capture_output=True, timeout=300)
    assert alone.returncode == 0 and (tmp_path / "x").read_text() == f"{cpus} -1"
