"""Helpers shared by the benchmark scripts: the machine's description and the JSON result file."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from pathlib import Path

# Relative to the working directory: run from the repository root, results land next to the
# benchmark scripts (benchmarks/results/), as BENCHMARKS.md asks.
RESULTS = Path("benchmarks") / "results"


# The CPU features that decide how fast the benchmark's model trains (bf16 needs AMX to pay; the
# vector width sets fp32 speed). CPUs of one model name differ in them: a VM may hide AMX.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo(key: str) -> str | None:
    """The value of the first ``key`` line of /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as lines:
            return next(line.split(":", 1)[1].strip() for line in lines
                        if line.startswith(key) and ":" in line)
    except (OSError, StopIteration):
        return None


def cpu_flags() -> set[str]:
    """The flags of /proc/cpuinfo (empty where it cannot be read)."""
    return set((_cpuinfo("flags") or "").split())


def machine() -> dict:
    """The machine description every result file carries (see BENCHMARKS.md)."""
    import numba
    import numpy as np
    import torch

    import fastprune

    try:  # ffcv.__version__ says 0.0.3rc1 in its 1.0.2 release: ask the installed distribution
        ffcv_version = importlib.metadata.version("ffcv")
    except importlib.metadata.PackageNotFoundError:
        ffcv_version = None
    cpu = _cpuinfo("model name") or platform.processor()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    flags = cpu_flags()
    return {"cpu": cpu, "cpu_features": [f for f in SPEED_FLAGS if f in flags],
            "cores": os.cpu_count(), "ram_gb": round(ram),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "numba": numba.__version__, "ffcv": ffcv_version,
            "fastprune": fastprune.__version__,
            # the machine is shared: the load when the run started says how much to trust timings
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def command_line() -> str:
    """The exact command that is running, for the result file."""
    return " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *sys.argv])


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def write_json(path: Path, result: dict) -> Path:
    """Write ``result`` to ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path
