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

from .._outputs import written_atomically

# Relative to the working directory: run from the repository root, results land next to the
# benchmark scripts (benchmarks/results/), as the project's benchmark rules ask.
RESULTS = Path("benchmarks") / "results"


# The CPU features that decide how fast the benchmark's model trains (bf16 needs AMX to pay; the
# vector width sets fp32 speed). CPUs of one model name differ in them: a VM may hide AMX.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(key: str, path: Path | None = None) -> str | None:
    """The value of the first ``key : value`` line of /proc/cpuinfo whose key is exactly ``key``
    (so "model" is not read off the "model name" line); None where there is none."""
    try:
        with open(path or CPUINFO) as lines:
            return next(value.strip() for name, sep, value in (line.partition(":") for line in lines)
                        if sep and name.strip() == key)
    except (OSError, StopIteration):
        return None


def cpu_id(path: Path | None = None) -> str | None:
    """Vendor, family and model of the CPU ("AuthenticAMD family 26 model 2"): the model name of a VM's
    CPU can be as vague as "AMD EPYC", which this project has seen on CPU kinds of very different
    speeds (Zen 2 and Zen 3 with AVX2 only, Zen 4 and Zen 5 with AVX512-BF16)."""
    parts = [_cpuinfo(key, path) for key in ("vendor_id", "cpu family", "model")]
    if None in parts:
        return None
    return f"{parts[0]} family {parts[1]} model {parts[2]}"


def cpu_vendor() -> str | None:
    """"GenuineIntel", "AuthenticAMD", ... (None where /proc/cpuinfo cannot tell)."""
    return _cpuinfo("vendor_id")


def cpu_flags() -> set[str]:
    """The flags of /proc/cpuinfo (empty where it cannot be read)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_has_fast_bf16(flags: set[str] | None = None, vendor: str | None = None) -> bool:
    """Whether bf16 autocast trains the benchmark's model faster than fp32 on this CPU, by what was
    measured (docs/benchmarks.md): yes with AMX (Intel), and with AVX512-BF16 on AMD (Zen 5, whose
    512-bit units run bf16 dot products natively); no with AVX512-BF16 on Intel without AMX (oneDNN
    converts to and from bf16 around each op). On a Zen 4 (family 25 model 17), 1.29x fp32's speed
    (benchmarks/cpu_precision.py)."""
    flags = cpu_flags() if flags is None else flags
    vendor = cpu_vendor() if vendor is None else vendor
    return "amx_bf16" in flags or (vendor == "AuthenticAMD" and "avx512_bf16" in flags)


def machine() -> dict:
    """The machine description every result file carries (docs/benchmarks.md)."""
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
    return {"cpu": cpu, "cpu_id": cpu_id(), "cpu_features": [f for f in SPEED_FLAGS if f in flags],
            "cores": os.cpu_count(), "ram_gb": round(ram),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "numba": numba.__version__, "ffcv": ffcv_version,
            "fastprune": fastprune.__version__,
            # the native kernels' paths on this CPU ("sse2+avx2", "sse2", "portable"): their speed differs
            "fastprune_simd": fastprune.build_info()["simd"],
            # the machine is shared: the load when the run started says how much to trust timings
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def run_device(settings) -> dict:
    """The device a result file's runs train on (``settings``: a bench ``Settings``): ``device``,
    ``gpu`` (its name), ``torch``, ``cuda`` (the CUDA version torch runs; None on the CPU) and
    ``precision`` (bf16, fp16 or off, as the runs' amp setting resolves there)."""
    from ..train.device import device_record, resolve_device, run_amp

    device = resolve_device(settings.device)
    return {**device_record(device), "precision": run_amp(device, settings.amp)}


def command_line() -> str:
    """The command that is running, for the result file, as it can be typed again: the console
    script as called (``.venv/bin/fastprune bench ...``), ``python -m fastprune[.main_job] ...``
    for a module of the package (whose sys.argv[0] is the module's path, which does not run as a
    script: its imports are relative), else ``python SCRIPT ...``."""
    program = Path(sys.argv[0])
    if program.suffix == ".py" and program.parent.name == "fastprune":
        module = "fastprune" if program.stem == "__main__" else f"fastprune.{program.stem}"
        head = [Path(sys.executable).name, "-m", module]
    elif program.name == "fastprune":
        head = [sys.argv[0]]
    else:
        head = [Path(sys.executable).name, sys.argv[0]]
    return " ".join(shlex.quote(part) for part in [*head, *sys.argv[1:]])


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def provenance(result: dict) -> str:
    """How a result was made, for the first line of its report: command, CPU, cores, date."""
    return (f"`{result['command']}` on {result['machine']['cpu']} ({result['machine']['cores']} cores), "
            f"{result['date']}")


def write_markdown(json_path: Path, lines: list[str]) -> Path:
    """Write ``lines`` as the report next to the result file ``json_path`` (same name, .md), and
    print them."""
    text = "\n".join(lines) + "\n"
    path = Path(json_path).with_suffix(".md")
    with written_atomically(path) as file:
        file.write(text)
    print(text, end="")
    return path


def write_json(path: Path, result: dict) -> Path:
    """Write ``result`` to ``path`` atomically (a reader never sees half a file), on disk before
    it takes the name: a bench result holds hours of runs."""
    text = json.dumps(result, indent=2) + "\n"
    with written_atomically(path, fsync=True) as file:
        file.write(text)
    return Path(path)
