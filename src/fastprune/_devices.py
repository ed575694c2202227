"""Where a ``device`` argument is resolved, for every part that takes one (the Loader, ``fastprune
train``/``bench``, ``bench.compare``, the main job, the studies): "auto" is CUDA when it is there."""

from __future__ import annotations

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device | None = "auto", *, pin_index: bool = True) -> torch.device:
    """The one place a run's ``device`` is resolved: "auto" (or None) is CUDA when it is available,
    else the CPU; "cpu", "cuda" and "cuda:N" are checked against this machine. A malformed value,
    or CUDA where there is none, raises :class:`~fastprune.errors.ConfigError` in one line."""
    from .errors import ConfigError

    text = device.strip().lower() if isinstance(device, str) else device
    if text is None or text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be {DEVICE_CHOICES}, got {str(device)!r:.60}")
    if resolved.type == "cpu":
        return torch.device("cpu")  # "cpu:0" is the CPU too
    if not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r}: CUDA is not available on this machine (torch "
                          f"{torch.__version__}); use device cpu or auto")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ConfigError(f"device {str(device)!r}: this machine has {count} CUDA device(s) "
                          f"(cuda:0..cuda:{count - 1})")
    # with its index, so that records of "cuda" and "cuda:0" runs compare equal; pin_index=False
    # keeps a plain "cuda" plain: the current device when used (a Loader built before set_device(rank))
    if resolved.index is not None or not pin_index:
        return resolved
    return torch.device("cuda", torch.cuda.current_device())
