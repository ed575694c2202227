"""How many CPUs this process may use: the default of every thread and worker count; and lowering
a thread's priority (loader threads run below the training loop's).

``os.cpu_count()`` is the machine's; a process may use fewer. Its CPU affinity (taskset, a job
scheduler's cpuset) and a container's CPU quota (cgroup ``cpu.max``: ``docker --cpus 2``,
Kubernetes limits) both cap it, and the quota is invisible to the affinity: a 2-CPU container on
a 64-core host sees 64 CPUs, and 64 busy threads on 2 CPUs' time run many times slower than 2.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


def usable_cpus() -> int:
    """The CPUs this process may run on (affinity), capped by its cgroup's CPU quota; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, quota) if quota else cpus)


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
