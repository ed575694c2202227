"""Checkpoints: everything a run needs to continue exactly as if it had not been interrupted.

A checkpoint holds tensors and plain values only (read with ``weights_only=True``, which executes
nothing), carries a format version and the run's settings, and a resume with other settings is
refused in one line before anything is restored.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from .device import model_device

# Version of the checkpoint layout; files without it (or with another) are refused with a clear
# message instead of a KeyError half-way through restoring.
CHECKPOINT_FORMAT = "fastprune-checkpoint-2"


def save_checkpoint(path, model, optimizer, scheduler, strategy, loader, history, *,
                    scaler=None, settings: dict[str, Any] | None = None) -> None:
    """Write everything a run needs to continue exactly: model, optimizer, scheduler, strategy
    (its score table decides future selections), loader position, RNG states and history, plus
    the run's ``settings``, which a resume must match.

    Only tensors and plain Python values are stored, so :func:`load_checkpoint` can read the file
    with ``torch.load(weights_only=True)``, which executes nothing. Written to a temporary file
    and renamed, so an interrupted save never leaves a torn checkpoint.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "settings": dict(settings or {}),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "strategy": strategy.state_dict() if strategy is not None else None,
        "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "next_epoch": history[-1]["epoch"] + 1 if history else 0,
        "history": history,
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(),
                "python": random.getstate()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's legacy RNG state as a tensor and plain numbers (a raw ndarray would need pickle)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    np.random.set_state((state["name"], state["key"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


def read_checkpoint(path, map_location=None) -> dict[str, Any]:
    """The checkpoint's contents, read without executing anything it holds.

    ``weights_only=True`` restricts unpickling to tensors and plain containers: a file carrying a
    pickled callable (a ``__reduce__`` payload) is refused here, never run.
    """
    import pickle

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable fastprune checkpoint (it is damaged, or holds "
                              f"objects other than tensors and plain values): {first_line}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a fastprune checkpoint of this version (format {found!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}); start a new run")
    return state


def check_settings(path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a run whose settings differ from the checkpoint's, naming each difference."""
    differ = [f"{key}={saved.get(key)!r} in the checkpoint, {value!r} now"
              for key, value in current.items() if saved.get(key, value) != value]
    if differ:
        raise CheckpointError(f"{path} was written by a run with other settings ({'; '.join(differ)}): "
                              "resume with the same settings, or start a new checkpoint")


def load_checkpoint(path, model, optimizer=None, scheduler=None, strategy=None, loader=None, *,
                    scaler=None, settings: dict[str, Any] | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Restore the objects passed from ``path``; return (next epoch, history so far).

    ``settings``: what this run was started with; any that differ from the checkpoint's stop the
    resume with a one-line :class:`~fastprune.CheckpointError`, before anything is restored.
    """
    state = read_checkpoint(path, map_location=model_device(model))
    check_settings(path, state["settings"], settings or {})
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if strategy is not None and state["strategy"] is not None:
            strategy.load_state_dict(state["strategy"])
    except (RuntimeError, ValueError, KeyError) as exc:  # another model, optimizer or strategy
        first_line = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit this run's model, optimizer or strategy: {first_line}") from None
    if loader is not None and state["loader"] is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(state["loader"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    _set_numpy_rng_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["next_epoch"], state["history"]
