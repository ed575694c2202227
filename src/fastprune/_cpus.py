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

import math
import os
import sys
import threading
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
_CPUSET_V2 = Path("/sys/fs/cgroup/cpuset.cpus.effective")
_CPUSET_V1 = Path("/sys/fs/cgroup/cpuset/cpuset.effective_cpus")

#: Where launchers put the number of processes they started on this machine: torchrun (and the
#: launchers built on it: Accelerate, DeepSpeed), Open MPI, MPICH / Intel MPI, MVAPICH (the list
#: Accelerate reads), then Slurm's srun (its tasks per node, e.g. "8(x2)": read when every node of
#: the step runs as many). Lightning's own launcher sets none of them (pass the Loader's threads=).
LOCAL_RANKS_VARIABLES = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                         "MV2_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE")


def usable_cpus() -> int:
    """This process's share of the CPUs: those it may run on (affinity), capped by its cgroup's CPU
    quota, divided among the ranks of a distributed job that run on them (:func:`ranks_sharing`);
    at least 1."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    cpus = max(1, min(affinity, quota) if quota else affinity)
    return max(1, cpus // ranks_sharing(affinity, local_ranks(), machine_cpus()))


def local_ranks(environ=os.environ) -> int:
    """The processes a launcher started on this machine (:data:`LOCAL_RANKS_VARIABLES`); 1 when
    none says."""
    for name in LOCAL_RANKS_VARIABLES:
        value = environ.get(name, "")
        try:
            count = slurm_tasks_per_node(value) if name.startswith("SLURM_") else int(value)
        except ValueError:  # unset or not a number: the next launcher's variable
            continue
        if count >= 1:
            return count
    return 1


def slurm_tasks_per_node(value: str) -> int:
    """The tasks on each node of a Slurm list such as ``"8(x2)"`` or ``"4,4"``; ValueError when
    the nodes run different counts (``"2(x3),1"``: which is this one is not said here)."""
    counts = {int(part.split("(")[0]) for part in value.split(",")}
    if len(counts) != 1:
        raise ValueError(f"tasks per node differ: {value!r}")
    return counts.pop()


def ranks_sharing(affinity: int, local: int, machine: int) -> int:
    """How many of this machine's ``local`` ranks run on this process's ``affinity`` CPUs, out of
    the ``machine``'s: all of them when each may run anywhere (torchrun binds none), one when each
    rank has its own slice (Slurm's --cpu-bind, mpirun --bind-to), and in proportion in between
    (torchrun --numa-binding: the ranks of one socket share its cores)."""
    return max(1, min(local, round(local * affinity / max(1, machine))))


def machine_cpus(v2: Path = _CPUSET_V2, v1: Path = _CPUSET_V1) -> int:
    """The CPUs of the machine as this process's container has them: its cgroup's cpuset (a
    Kubernetes pod's exclusive CPUs, ``docker --cpuset-cpus``), else ``os.cpu_count()``."""
    for path in (v2, v1):
        try:
            return max(1, cpu_list_size(path.read_text()))
        except (OSError, ValueError):
            continue
    return os.cpu_count() or 1


def cpu_list_size(text: str) -> int:
    """The CPUs in a Linux CPU list such as ``"0-7,16-23,31"``; ValueError when it is not one."""
    count = 0
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)  # ValueError: not a number (an empty file)
        if high < low:
            raise ValueError(f"not a CPU list: {text!r}")
        count += high - low + 1
    return count


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
