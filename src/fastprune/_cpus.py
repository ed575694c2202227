"""How many CPUs this process may use: the default of every thread and worker count; and lowering
a thread's priority (loader threads run below the training loop's).

``os.cpu_count()`` is the machine's; a process may use fewer. Its CPU affinity (taskset, a job
scheduler's cpuset) and a container's CPU quota (cgroup ``cpu.max``: ``docker --cpus 2``,
Kubernetes limits) both cap it, and the quota is invisible to the affinity: a 2-CPU container on
a 64-core host sees 64 CPUs, and 64 busy threads on 2 CPUs' time run many times slower than 2.

A distributed job's ranks on one machine share those CPUs too: torchrun starts one process per
GPU, each of which sees every core, so 8 ranks each defaulting to all 128 cores of a node would
run 1,024 loader threads (and hold 8x the batches in flight). A rank's default is its share.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
_CGROUPS = Path("/sys/fs/cgroup")
_PROC = Path("/proc")

#: Where launchers put the number of processes they started on this machine: torchrun (and
#: Accelerate, which launches through it), Open MPI, MPICH / Intel MPI, MVAPICH (the list
#: Accelerate reads), Horovod, DeepSpeed's own launcher (``LOCAL_SIZE``, read only beside its
#: ``LOCAL_RANK``), then Slurm's srun (tasks per node, e.g. "8(x2)"). Lightning's own launcher sets
#: none of them (pass the Loader's threads=).
LOCAL_RANKS_VARIABLES = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                         "MV2_COMM_WORLD_LOCAL_SIZE", "HOROVOD_LOCAL_SIZE", "LOCAL_SIZE",
                         "SLURM_STEP_TASKS_PER_NODE")


def usable_cpus() -> int:
    """The CPUs this process may use: those it may run on (affinity), capped by its cgroup's CPU
    quota; at least 1. The default of one-process work (conversion, checksums, ``fastprune
    train``/``bench``); a Loader's default is :func:`rank_cpus`."""
    quota = cgroup_cpu_quota()
    cpus = len(_affinity())
    return max(1, min(cpus, quota) if quota else cpus)


def rank_cpus() -> int:
    """This process's share of :func:`usable_cpus` when it is one of the ranks a launcher started
    on this machine (:func:`local_ranks`): its CPUs divided among the ranks that may run on them
    (:func:`ranks_sharing`), and the container's CPU quota among all of them; at least 1."""
    launcher = launcher_variable()
    if launcher is None:
        return usable_cpus()
    local = local_ranks()
    mine = _affinity()
    siblings = sibling_cpu_sets(marker="=".join(launcher))
    cpus = len(mine) // ranks_sharing(mine, local, siblings, machine_cpus())
    quota = cgroup_cpu_quota()  # a container's: every rank in it draws on the same CPU time
    return max(1, min(cpus, math.ceil(quota / local)) if quota else cpus)


def _affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def local_ranks(environ=os.environ) -> int:
    """The processes a launcher started on this machine (:data:`LOCAL_RANKS_VARIABLES`); 1 when
    none says."""
    found = launcher_variable(environ)
    return 1 if found is None else _rank_count(*found, environ)


def launcher_variable(environ=os.environ) -> tuple[str, str] | None:
    """(name, value) of the first of :data:`LOCAL_RANKS_VARIABLES` that gives a count of 2 or more
    ranks; None when none does (not a rank of a distributed job on this machine)."""
    for name in LOCAL_RANKS_VARIABLES:
        if name == "LOCAL_SIZE" and "LOCAL_RANK" not in environ:  # a name other programs may use
            continue
        value = environ.get(name, "")
        try:
            count = _rank_count(name, value, environ)
        except ValueError:  # unset or not a number: the next launcher's variable
            continue
        if count >= 1:
            return (name, value) if count > 1 else None
    return None


def _rank_count(name: str, value: str, environ) -> int:
    return slurm_tasks_per_node(value, environ) if name.startswith("SLURM_") else int(value)


def slurm_tasks_per_node(value: str, environ=os.environ) -> int:
    """This node's tasks in a Slurm list such as ``"8(x2)"`` or ``"2(x3),1"`` (the nodes in
    order; this one is ``SLURM_NODEID``); ValueError when the list is not one, or the nodes run
    different counts and which one this is is not said."""
    counts = []
    for part in value.split(","):
        count, _, times = part.partition("(x")
        counts += [int(count)] * (int(times.rstrip(")")) if times else 1)
    if len(set(counts)) == 1:
        return counts[0]
    node = int(environ.get("SLURM_NODEID", ""))
    if not 0 <= node < len(counts):
        raise ValueError(f"SLURM_NODEID {node} is not a node of {value!r}")
    return counts[node]


def ranks_sharing(mine: set[int], local: int, siblings: list[set[int]] | None, machine: int) -> int:
    """How many of this machine's ``local`` ranks may run on this process's CPUs ``mine``.

    A launcher's ranks are its children, so this process's siblings are the other ranks: those
    whose CPUs overlap ``mine`` share them with it (all, when none is bound: torchrun; none, when
    each has its own cores: Slurm's --cpu-bind, mpirun --bind-to; those of one NUMA node under
    torchrun --numa-binding). Where no sibling is seen (each rank wrapped in a shell of its own, or
    no /proc), the estimate is the fraction of the ``machine``'s CPUs the process may use."""
    if siblings:
        return max(1, min(local, 1 + sum(1 for cpus in siblings if cpus & mine)))
    return max(1, min(local, round(local * len(mine) / max(1, machine))))


def sibling_cpu_sets(proc: Path = _PROC, pid: int | None = None, parent: int | None = None,
                     marker: str = "") -> list[set[int]] | None:
    """The CPUs each other rank among this process's siblings (its parent's other children) may
    run on; None where /proc does not list the parent's children. A sibling is a rank when its
    environment holds ``marker`` (``NAME=value`` of the launcher's variable, as this process's):
    a ``tee`` or monitor beside the ranks is not one (its environment, if another account's, is
    unreadable: not counted either)."""
    pid, parent = pid or os.getpid(), parent or os.getppid()
    children: set[int] = set()
    try:
        threads = list((proc / str(parent) / "task").iterdir())
    except OSError:
        return None
    for thread in threads:
        try:
            children.update(int(child) for child in (thread / "children").read_text().split())
        except (OSError, ValueError):  # a thread that ended meanwhile; a kernel without the file
            continue
    sets = []
    for child in children - {pid}:
        try:  # bytes: a process name cut at 15 bytes can end inside a UTF-8 character
            if marker and marker.encode() not in (proc / str(child) / "environ").read_bytes().split(b"\0"):
                continue
            status = (proc / str(child) / "status").read_bytes().decode("ascii", "replace")
        except OSError:  # it ended meanwhile, or another account's
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                with contextlib.suppress(ValueError):
                    sets.append(cpu_list(line.partition(":")[2]))
    return sets


def machine_cpus(root: Path = _CGROUPS, own: Path = _PROC / "self" / "cgroup") -> int:
    """The CPUs of the machine as this process's cgroup has them: its cpuset (a container's, a
    Kubernetes pod's exclusive CPUs, a Slurm job's or step's), else ``os.cpu_count()``."""
    for path in _cpuset_files(root, own):
        try:
            return max(1, len(cpu_list(path.read_text())))
        except (OSError, ValueError):
            continue
    return os.cpu_count() or 1


def _cpuset_files(root: Path, own: Path) -> list[Path]:
    """Where this process's cgroup's cpuset may be, nearest first: its own cgroup then each parent
    (cgroup v2: ``0::/path``; v1: ``N:cpuset:/path``), the root last."""
    try:
        lines = own.read_bytes().decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    found = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            folder, name = root, "cpuset.cpus.effective"
        elif "cpuset" in controllers.split(","):
            folder, name = root / "cpuset", "cpuset.effective_cpus"
        else:
            continue
        parts = [part for part in path.strip().split("/") if part and part != ".."]
        found += [folder.joinpath(*parts[:depth], name) for depth in range(len(parts), -1, -1)]
    return found or [root / "cpuset.cpus.effective", root / "cpuset" / "cpuset.effective_cpus"]


def cpu_list(text: str) -> set[int]:
    """The CPUs of a Linux CPU list such as ``"0-7,16-23,31"``; ValueError when it is not one."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)  # ValueError: not a number (an empty file)
        if high < low:
            raise ValueError(f"not a CPU list: {text!r}")
        cpus.update(range(low, high + 1))
    return cpus


def cgroup_cpu_quota(v2: Path = _CGROUP_V2, v1: Path = _CGROUP_V1) -> int | None:
    """CPUs' worth of time the cgroup may use per period, rounded up; None without a quota."""
    try:
        limit, period = v2.read_text().split()[:2]
        return None if limit == "max" else max(1, math.ceil(int(limit) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        limit = int((v1 / "cpu.cfs_quota_us").read_text())
        period = int((v1 / "cpu.cfs_period_us").read_text())
        return None if limit <= 0 or period <= 0 else max(1, math.ceil(limit / period))
    except (OSError, ValueError):
        return None


def lower_thread_priority(steps: int) -> None:
    """Raise the calling thread's nice value by ``steps`` (Linux: nice is per thread; a thread
    starts with its creator's). Lowering one's own priority needs no privilege."""
    if steps <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except OSError:  # e.g. a sandbox without setpriority: run at the normal priority
        pass
