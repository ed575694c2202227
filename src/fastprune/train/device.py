"""Device and precision, each resolved in one place: :func:`resolve_device` ("auto": CUDA when it
is there) and :func:`run_amp` (the precision a recipe run trains in, the same for ``fastprune
train``, ``bench``, ``bench.compare`` and the studies). AMP and channels_last pay off on CUDA; on
CPU, ``fit`` leaves them off unless asked for. :class:`GpuBusySampler` measures how busy the GPU
was during a run (nvml), or says nothing (None) where it cannot."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from .._devices import DEVICE_CHOICES, resolve_device  # noqa: F401  (one place; the Loader uses it too)


def autocast_dtype(device: torch.device, amp: str | bool) -> torch.dtype | None:
    """The autocast dtype for ``amp`` ("auto", "bf16", "fp16", "off" or a bool) on ``device``.

    "auto" means CUDA only: bf16 on GPUs with native bf16 (compute capability 8.0, Ampere, and
    newer), else fp16: torch's ``is_bf16_supported()`` also says yes where bf16 is only emulated
    (T4, V100), which is slow and which cuDNN's convolutions lack. On CPU, bf16 autocast must be
    asked for explicitly ("bf16"); it is fast only on CPUs with AMX/AVX512-BF16. (A recipe run asks
    for it there: see :func:`run_amp`.)
    """
    if amp in ("off", False, None):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp in ("auto", True):
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")


def run_amp(device: torch.device, amp: str | bool = "auto") -> str:
    """The precision a recipe run trains in, "bf16", "fp16" or "off": the one rule ``fastprune
    train``, ``fastprune bench``, ``bench.compare`` and the studies share (through ``run_recipe``).
    An explicit choice stands; "auto" is bf16 on a GPU that supports it (else fp16), and on a CPU
    bf16 where it trains faster than fp32 (AMX, or AVX512-BF16 on AMD: docs/benchmarks.md), else
    fp32 ("off")."""
    from ..bench.machine import cpu_has_fast_bf16  # the CPU's description lives with the machine's

    dtype = autocast_dtype(device, amp)  # checks the value too
    if dtype is None and amp in ("auto", True) and device.type == "cpu" and cpu_has_fast_bf16():
        dtype = torch.bfloat16
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def memory_format_for(device: torch.device, channels_last: str | bool) -> torch.memory_format:
    """channels_last (NHWC) for ``channels_last`` True, or "auto" (None) on CUDA; else contiguous."""
    channels_last = "auto" if channels_last is None else channels_last
    if not (channels_last == "auto" or isinstance(channels_last, bool)):  # "off" is truthy
        raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    use = device.type == "cuda" if channels_last == "auto" else channels_last
    return torch.channels_last if use else torch.contiguous_format


def cpu_channels_last_hazard(model: nn.Module) -> str | None:
    """The first layer whose backward torch's CPU channels_last path (oneDNN's 1x1 backward-weights
    kernel) gets wrong, or None: a 1x1 convolution of stride > 1 with 2-15 input channels (a narrow
    ResNet's downsampling shortcut). Measured with torch 2.14.1 on a Zen 4 EPYC, the AVX2 kernel
    chosen by ONEDNN_MAX_CPU_ISA=AVX2 as on a CPU without AVX-512:
    * AVX-512 kernel: "free(): invalid size", "corrupted size vs. prev_size" or a segfault within a
      few steps for 2-15 input channels, at odd and even batch sizes, with 1 or more threads.
    * AVX2 kernel, 2-7 input channels: heap corruption with 1 thread; with 2, a hang (an endless
      loop in the kernel) from 32x32 images up, and below that weight gradients 4-33% off with no
      error at all. Any batch size.
    * Never for 1 or 16+ input channels, 3x3 kernels, stride 1, the contiguous format, oneDNN's AVX
      and SSE4.1 kernels or with torch.backends.mkldnn off; nor in a sweep of pools, norms,
      transposed convolutions and torchvision's small models. Depthwise, grouped and padded 1x1
      convolutions never failed but are matched too (few trials; a false match costs only speed)."""
    for name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and max(module.stride) > 1
                and 1 < module.in_channels < 16):
            return (f"{name or type(model).__name__} (Conv2d({module.in_channels}, {module.out_channels}, "
                    f"kernel_size=1, stride={module.stride[0]}))")
    return None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (a ConfigError for a model without any)."""
    from ..errors import ConfigError

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for parameter in model.parameters():
        return parameter.device
    raise ConfigError(f"model {type(model).__name__} has no parameters: nothing to train")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so epoch timings measure the work, not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_record(device: torch.device | str) -> dict:
    """What a result file records about the device a run trained on: ``device`` ("cpu",
    "cuda:0"), ``gpu`` (its name), ``torch`` and ``cuda`` (the CUDA version torch runs). On the CPU
    ``gpu`` and ``cuda`` are None."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if on_gpu and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device) if on_gpu else None,
            "torch": torch.__version__, "cuda": torch.version.cuda if on_gpu else None}


def gpu_utilization(device: torch.device) -> float | None:
    """The GPU's busy percentage now (nvml, through ``torch.cuda.utilization``), or None: on the
    CPU, and wherever nvml is missing or fails."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # no nvidia-ml-py, no driver library, an unsupported GPU: no figure
        return None


class GpuBusySampler:
    """Samples :func:`gpu_utilization` every ``interval`` seconds from a daemon thread while open
    (``with GpuBusySampler(device) as busy: ...``); ``busy.mean()`` is the mean busy percentage over
    the samples so far (or since ``busy.mark()``), None on the CPU, where nvml does not answer, or
    before the first sample. Never raises: a run must not fail for want of a figure."""

    def __init__(self, device: torch.device, interval: float = 0.25, *, read=gpu_utilization):
        self.device, self.interval, self._read = torch.device(device), interval, read
        self._samples: list[float] = []
        self._mark = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuBusySampler:
        if self._read(self.device) is not None:  # a first reading says whether nvml answers at all
            self._thread = threading.Thread(target=self._sample, name="fastprune-gpu-busy", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read(self.device)
            if value is not None:
                self._samples.append(value)

    def mean(self, since_mark: bool = False) -> float | None:
        samples = self._samples[self._mark:] if since_mark else self._samples
        return round(sum(samples) / len(samples), 1) if samples else None

    def mark(self) -> float | None:
        """The mean since the previous mark (or the start), and a new mark: per-epoch figures."""
        end = len(self._samples)  # the thread may append meanwhile: those count for the next mark
        samples, self._mark = self._samples[self._mark:end], end
        return round(sum(samples) / len(samples), 1) if samples else None


def flushing_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (``torch.set_flush_denormal`` has no
    getter): a float32 product that should be denormal comes out as 0."""
    return bool(np.float32(2.0 ** -126) * np.float32(0.5) == 0)


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """torch's thread count and denormal flushing, and Python's, numpy's and torch's random
    streams (CUDA's where it is initialised), as they were before the block: a command or library
    call run in-process must not leave them changed. A sweep calling ``fastprune.cli.main(["train",
    ...])`` ran every later run with the previous one's threads, denormal flushing and seeds."""
    threads, flushing = torch.get_num_threads(), flushing_denormals()
    python, numpy_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.set_flush_denormal(flushing)
            random.setstate(python)
            np.random.set_state(numpy_state)
