"""Checkpoints: everything a run needs to continue exactly as if it had not been interrupted.

A checkpoint holds tensors and plain values only (read with ``weights_only=True``, which executes
nothing), carries a format version and the run's settings, and a resume with other settings is
refused in one line before anything is restored.
"""

from __future__ import annotations

import errno
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError, UsageWarning, first_line, user_stacklevel
from ..store._atomic import replaced_when_done
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
                "python": random.getstate(), "cuda": _cuda_rng_state(model)},
    }
    path = Path(path)
    landing = Path(os.path.realpath(path))  # through a link its target is replaced, as for logs and stores
    landing.parent.mkdir(parents=True, exist_ok=True)
    try:  # through a Python file, whose write raises the OSError of a full disk with its errno
        # a temporary file beside it, on disk before the rename makes it the checkpoint; removed after
        # any error, Ctrl-C included (a half-written file would keep a full disk full)
        with replaced_when_done(landing, fsync=True) as file:
            torch.save(state, file)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot write the checkpoint ({first_line(_os_error_behind(exc))}); the "
                              "previous one, if any, is kept") from None


def _os_error_behind(exc: BaseException) -> BaseException:
    """The OSError ``exc`` was raised while handling, else ``exc``: torch's zip writer turns the
    file's "[Errno 28] No space left on device" into "[enforce fail at inline_container.cc:672] .
    unexpected pos 704 vs 598", and keeps it only as the context."""
    seen = exc
    for _ in range(8):  # a chain, not a cycle
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            break
    return exc


def _model_gpu(model) -> torch.device | None:
    """The GPU the model trains on, or None (the CPU; a model without parameters)."""
    try:
        device = model_device(model)
    except ConfigError:
        return None
    return device if device.type == "cuda" else None


def _cuda_rng_state(model) -> torch.Tensor | None:
    """The generator state of the model's GPU (its dropout masks draw from it); None on the CPU.
    Only that GPU's: asking every GPU would touch the others, which a DDP rank does not own."""
    device = _model_gpu(model)
    return None if device is None else torch.cuda.get_rng_state(device).cpu()


def _set_cuda_rng_state(model, state: torch.Tensor | None) -> None:
    """Restore it on the resumed model's GPU (nothing where the checkpoint has none: a CPU run,
    or one from before it was saved; or where the model is on the CPU now)."""
    device = _model_gpu(model)
    if state is not None and device is not None:
        torch.cuda.set_rng_state(state, device)


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's legacy RNG state as a tensor and plain numbers (a raw ndarray would need pickle)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    np.random.set_state((state["name"], state["key"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


def read_checkpoint(path, map_location=None) -> dict[str, Any]:
    """The checkpoint's contents, read without executing anything it holds (:func:`read_saved`);
    a file of another format is refused."""
    state = read_saved(path, map_location)
    check_format(path, state)
    return state


def check_format(path, state: Any) -> None:
    """Refuse ``state`` (read from ``path``) unless it is a checkpoint of this version's format."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a fastprune checkpoint of this version (format {found!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}); {_format_advice(found)}")


def read_saved(path, map_location=None) -> Any:
    """What ``torch.save`` wrote to ``path`` (a checkpoint, a strategy's state_dict...), its CRCs
    checked, read without executing anything it holds.

    ``weights_only=True`` restricts unpickling to tensors and plain containers: a file carrying a
    pickled callable (a ``__reduce__`` payload) is refused here, never run.
    """
    # CRCs first: a flipped byte in the pickled record failed in the unpickler instead ("Unsupported
    # operand 181"), a message that changed with where the byte fell
    _check_crcs(path)
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4...": the refusal below says it all
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        if exc.filename is not None:  # the file itself: missing, a folder, unreadable
            if exc.errno == errno.ENOENT:
                raise CheckpointNotFoundError(path) from None
            raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror or exc}") from None
        # a read inside the archive (a truncated zip: "[Errno 22] Invalid argument") names nothing
        raise CheckpointError(f"{path}: not a loadable fastprune checkpoint (truncated or damaged): {exc}") from None
    except MemoryError:  # this machine's state, not the file's
        raise
    except Exception as exc:  # noqa: BLE001  the unpickler of a random file raises anything: KeyError, IndexError...
        if str(path).lower().endswith(".beton"):  # the unpickler said "Unsupported operand 2"
            raise CheckpointError(f"{path}: a store, not a checkpoint: give the checkpoint (--checkpoint's file)") \
                from None
        raise CheckpointError(f"{path}: not a loadable fastprune checkpoint (it is damaged, written by a fastprune "
                              "before checkpoint format 2, or holds objects other than tensors and plain values): "
                              f"{_load_failure(exc)}") from None
    return state


def _format_advice(found: Any) -> str:
    """What to do with a checkpoint of another format: a newer fastprune's needs that version."""
    prefix = CHECKPOINT_FORMAT.rsplit("-", 1)[0] + "-"
    if isinstance(found, str) and found.startswith(prefix) and found[len(prefix):].isdigit() \
            and int(found[len(prefix):]) > int(CHECKPOINT_FORMAT[len(prefix):]):
        return "a newer fastprune wrote it: resume with that version (upgrade fastprune)"
    return "this version cannot resume it: start a new run"


def _check_crcs(path) -> None:
    """torch.load does not check the archive's CRC-32s: a flipped bit in a weight would resume
    silently from the altered weights. Reading the file once more costs about what loading did."""
    import zipfile

    if not zipfile.is_zipfile(path):  # torch's legacy format (_use_new_zipfile_serialization=False): no CRCs
        return
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:  # a damaged directory: torch.load's refusal names what it found
        return
    with archive:
        for part in archive.infolist():
            if part.CRC == 0 and part.file_size:  # written without one (torch's save.compute_crc32 = False)
                continue
            try:
                with archive.open(part) as data:
                    while data.read(1 << 24):  # zipfile checks the CRC-32 at the end of the part
                        pass
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise CheckpointError(f"{path}: damaged checkpoint (its part {part.filename!r}: {exc}); resume from "
                                      "another checkpoint or start a new run") from None


def _load_failure(exc: BaseException) -> str:
    """What torch.load found wrong, in one line, without torch's advice to retry
    with ``weights_only`` turned off: the one thing not to do with a file one does not trust."""
    lines = (line.split("WeightsUnpickler error:", 1)[-1].strip() for line in str(exc).splitlines())
    useful = [line for line in lines if line and "weights_only" not in line and "Weights only" not in line
              and not line.startswith(("Check the documentation", "Please file an issue"))]
    # "Unsupported global: GLOBAL x was not an allowed global by default. Please use
    # torch.serialization.add_safe_globals([x]) ...": the allow-listing advice goes too
    return useful[0].split(" Please use ")[0] if useful else type(exc).__name__


# Settings that name the stores a run trained and evaluated on (store_identity: size and CRCs).
STORE_SETTINGS = {"train_store": "training", "val_store": "validation"}


# Settings recorded since checkpoint format 2 whose absence means one value: before --label-field,
# every run read the default label field
SETTINGS_ABSENT_MEAN = {"label_field": None}


def check_settings(path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a run whose settings differ from the checkpoint's, naming each difference."""
    for key, role in STORE_SETTINGS.items():
        if key in saved and key in current and saved[key] != current[key]:
            raise CheckpointError(f"{path} was written for another {role} store ({saved[key]}; this one: "
                                  f"{current[key]}): resume on the same stores, or start a new checkpoint")
    saved = {**SETTINGS_ABSENT_MEAN, **saved}
    differ = [f"{key}={saved.get(key)!r} in the checkpoint, {value!r} now"
              for key, value in current.items() if saved.get(key, value) != value]
    if differ:
        raise CheckpointError(f"{path} was written by a run with other settings ({'; '.join(differ)}): "
                              "resume with the same settings, or start a new checkpoint")
    unchecked = [key for key in current if key not in saved]
    if unchecked:  # an older fastprune's checkpoint (or a settings= key added since): it resumes unchecked
        hint = (" (precision: pass amp= / --amp as the run trained; --amp auto picks bf16 on CPUs fast at it)"
                if "precision" in unchecked else "")
        warnings.warn(f"{path} does not record {', '.join(unchecked)} (an older fastprune, or a run set up "
                      f"otherwise, wrote it): this run's "
                      f"{'is' if len(unchecked) == 1 else 'are'} taken as the checkpoint's{hint}", UsageWarning,
                      stacklevel=user_stacklevel())


def load_checkpoint(path, model, optimizer=None, scheduler=None, strategy=None, loader=None, *,
                    scaler=None, settings: dict[str, Any] | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Restore the objects passed from ``path``; return (next epoch, history so far).

    ``settings``: what this run was started with; any that differ from the checkpoint's stop the
    resume with a one-line :class:`~fastprune.CheckpointError`, before anything is restored.
    """
    # Read to the CPU whatever the model's device: the RNG states and the strategy's arrays must be
    # host tensors (a CUDA ByteTensor does not restore), and load_state_dict moves the model's and
    # the optimizer's tensors to their parameters' device itself.
    state = read_checkpoint(path, map_location="cpu")
    _check_contents(path, state)
    check_settings(path, state["settings"], settings or {})
    _check_optimizer_shapes(path, state["optimizer"], optimizer)
    if (strategy is None) != (state["strategy"] is None):  # one would be dropped, or start from nothing mid-run
        raise CheckpointError(f"{path} was written {'with' if state['strategy'] is not None else 'without'} a pruning "
                              f"strategy and this run has {'none' if strategy is None else 'one'}: resume as the "
                              "run was started, or start a new run")
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if strategy is not None and state["strategy"] is not None:
            strategy.load_state_dict(state["strategy"])
        if loader is not None and state["loader"] is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(state["loader"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        # another model, optimizer or strategy, or a tampered entry: one line, never a traceback
        raise CheckpointError(f"{path} does not fit this run's model, optimizer or strategy: "
                              f"{first_line(exc)}") from None
    torch.set_rng_state(state["rng"]["torch"])
    _set_cuda_rng_state(model, state["rng"].get("cuda"))
    _set_numpy_rng_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["next_epoch"], state["history"]


_ENTRIES = ("settings", "model", "optimizer", "scheduler", "strategy", "loader", "next_epoch", "history", "rng")


def _check_contents(path, state: dict[str, Any]) -> None:
    """Refuse, in one line and before anything is restored, a checkpoint that loads but could not
    have been written by :func:`save_checkpoint`: a missing entry, an epoch count that does not
    follow its history (``next_epoch=10**9`` would end the run at once, "complete"), RNG states
    that do not restore, NaN in the strategy's score table."""
    def bad(what: str):
        raise CheckpointError(f"{path}: damaged or altered checkpoint: {what}; start a new run")

    missing = [key for key in _ENTRIES if key not in state]
    if missing:
        bad(f"no {missing[0]!r} entry")
    if not isinstance(state["settings"], dict):
        bad(f"'settings' is a {type(state['settings']).__name__}, not a dict")
    history, next_epoch = state["history"], state["next_epoch"]
    if not isinstance(history, list) or [_epoch_of(r) for r in history] != list(range(len(history))):
        bad("'history' is not one record per epoch 0, 1, 2, ...")
    if type(next_epoch) is not int or next_epoch != len(history):
        bad(f"next_epoch {next_epoch!r} does not follow its history of {len(history)} epochs")
    epochs = state["settings"].get("epochs")
    if type(epochs) is int and next_epoch > epochs:
        bad(f"next_epoch {next_epoch} is past the run's {epochs} epochs")
    _check_rng(bad, state["rng"])
    table = state["strategy"].get("table") if isinstance(state["strategy"], dict) else None
    for name, value in table.items() if isinstance(table, dict) else ():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and torch.isnan(value).any():
            bad(f"the strategy's score table holds NaN in {name!r}")


def _epoch_of(record) -> int | None:
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return epoch if type(epoch) is int else None


def _check_rng(bad, rng) -> None:
    """Restore the saved RNG states into throw-away generators: what would fail, fails here."""
    try:
        torch.Generator().set_state(rng["torch"])
        numpy_state = rng["numpy"]
        np.random.RandomState().set_state((numpy_state["name"], numpy_state["key"].numpy().astype(np.uint32),
                                           numpy_state["pos"], numpy_state["has_gauss"],
                                           numpy_state["cached_gaussian"]))
        random.Random().setstate(rng["python"])
        cuda = rng.get("cuda")
        if cuda is not None and not (isinstance(cuda, torch.Tensor) and cuda.dtype == torch.uint8
                                     and cuda.dim() == 1):
            raise TypeError(f"'cuda' is not a uint8 generator state: {type(cuda).__name__}")
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        bad(f"its RNG states do not restore ({first_line(exc)})")


def _check_optimizer_shapes(path, saved, optimizer) -> None:
    """torch loads an optimizer's per-parameter buffers whatever their shape, and the first step
    then fails deep in training: compare each saved buffer with its parameter first."""
    if optimizer is None or not isinstance(saved, dict):
        return  # a missing optimizer state is load_state_dict's to report
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in saved.get("param_groups", []) for i in group.get("params", [])]
    if len(ids) != len(params):
        return  # load_state_dict refuses another parameter layout itself
    by_id = dict(zip(ids, params))
    for key, buffers in (saved.get("state") or {}).items():
        param = by_id.get(key)
        for name, value in (buffers.items() if isinstance(buffers, dict) else ()):
            if param is not None and isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
                raise CheckpointError(f"{path}: damaged or altered checkpoint: optimizer buffer {name!r} of "
                                      f"parameter {key} has shape {list(value.shape)}, the parameter "
                                      f"{list(param.shape)}; start a new run")
