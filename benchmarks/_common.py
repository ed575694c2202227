"""Helpers shared by the benchmark scripts: the machine's description and the JSON result file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """The machine description every result file carries (see BENCHMARKS.md)."""
    import numba
    import numpy as np
    import torch

    import fastprune

    try:
        import ffcv
        ffcv_version = getattr(ffcv, "__version__", "1.0.2")
    except ImportError:
        ffcv_version = None
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(ram),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "numba": numba.__version__, "ffcv": ffcv_version,
            "fastprune": fastprune.__version__}


def command_line() -> str:
    """The exact command that is running, for the result file."""
    return " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *sys.argv])


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def write_json(path: Path, result: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
