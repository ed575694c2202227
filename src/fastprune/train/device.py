"""Device and precision: AMP and channels_last pay off on CUDA; on CPU they are off unless asked for."""

from __future__ import annotations

import torch
from torch import nn


def autocast_dtype(device: torch.device, amp: str | bool) -> torch.dtype | None:
    """The autocast dtype for ``amp`` ("auto", "bf16", "fp16", "off" or a bool) on ``device``.

    "auto" means CUDA only: bf16 where the GPU supports it, else fp16. On CPU, bf16 autocast must be
    asked for explicitly ("bf16"); it is fast only on CPUs with AMX/AVX512-BF16.
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
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")


def memory_format_for(device: torch.device, channels_last: str | bool) -> torch.memory_format:
    """channels_last (NHWC) for ``channels_last`` True, or "auto" on CUDA; else contiguous."""
    use = device.type == "cuda" if channels_last == "auto" else bool(channels_last)
    return torch.channels_last if use else torch.contiguous_format


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so epoch timings measure the work, not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
