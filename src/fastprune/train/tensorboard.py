"""Optional TensorBoard logging of a run (``fastprune train/bench --tensorboard DIR``), through
``torch.utils.tensorboard``; needs the ``tensorboard`` package (``pip install
"fastprune[tensorboard]"``), named in one line when missing.

    logger = TensorBoardLogger("runs/ucb", num_samples=len(train_store))
    fit(..., on_epoch_end=logger)       # one point per epoch; then logger.close()
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from ..errors import OutputError, require


class TensorBoardLogger:
    """An ``on_epoch_end`` callback writing each epoch's record as TensorBoard scalars, at step
    = epoch number (1-based): ``loss/train``, ``loss/val``, ``accuracy/val``, per class
    ``accuracy_per_class/NAME``, ``pruning/kept_fraction`` (samples trained / ``num_samples``;
    absent without it), ``pruning/overhead_s`` (seconds inside the strategy), ``time/epoch_s``,
    ``time/train_s`` and ``lr``. Epochs not evaluated have no validation points."""

    def __init__(self, log_dir: str | os.PathLike, num_samples: int | None = None, *, replace: bool = False):
        require("tensorboard", "tensorboard", "TensorBoard logging")
        self.log_dir = os.fspath(log_dir)
        self.num_samples = num_samples
        self.replace = replace  # the folder's earlier event files go when the writer is made
        self._failed = False  # a write failed (and raised): close() does not say it again
        self._made = None  # made at first use (the first epoch): a run refused or failed before writes nothing

    @property
    def writer(self):
        """The ``SummaryWriter`` (made on first use: ``logger.writer.add_text(...)`` works before
        training too)."""
        if self._made is None:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_writer_threads()
            with self._named_errors():
                if self.replace:
                    for name in event_files(self.log_dir):
                        os.remove(os.path.join(self.log_dir, name))
                self._made = SummaryWriter(self.log_dir)
        return self._made

    @contextlib.contextmanager
    def _named_errors(self):
        """A failed write (a full disk, a folder turned read-only) as one OutputError naming the
        folder: it was errno's bare text ('No space left on device'), naming no file."""
        try:
            yield
        except OSError as exc:
            self._failed = True
            raise OutputError(f"cannot write TensorBoard events in {self.log_dir}: {exc.strerror or exc}") from None

    def __call__(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"]) + 1
        scalars = {"loss/train": record.get("loss"), "loss/val": record.get("val_loss"),
                   "accuracy/val": record.get("val_acc"), "pruning/overhead_s": record.get("overhead_s"),
                   "time/epoch_s": record.get("epoch_s"), "time/train_s": record.get("train_s"),
                   "lr": record.get("lr")}
        if self.num_samples:
            scalars["pruning/kept_fraction"] = record["samples"] / self.num_samples
        for name, accuracy in (record.get("val_class_acc") or {}).items():
            scalars[f"accuracy_per_class/{name}"] = accuracy
        writer = self.writer
        with self._named_errors():
            for tag, value in scalars.items():
                if value is not None and value == value:  # None: not evaluated; NaN: nothing to evaluate
                    writer.add_scalar(tag, float(value), step)
            writer.flush()

    def close(self) -> None:
        if self._made is not None:
            made, self._made, said = self._made, None, self._failed
            try:
                with self._named_errors():
                    made.close()
            except OutputError:
                if not said:  # else said already: the write that failed raised it
                    raise

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread prints its failed write's traceback (15 lines, on a full disk)
    and dies; the next write in the main thread raises the same error, which the logger names in
    one line. So that traceback, and only it, is left unprinted (installed once per process)."""
    hook = threading.excepthook
    if getattr(hook, "fastprune_quiet_tensorboard", False):
        return

    def quiet(args):
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError)):
            hook(args)

    quiet.fastprune_quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = quiet


def event_files(folder: str | os.PathLike) -> list[str]:
    """The TensorBoard event files directly in ``folder`` (none where it does not exist)."""
    try:
        return sorted(name for name in os.listdir(folder) if name.startswith("events.out.tfevents."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def check_fresh_folder(folders, option: str, allowed_by: str) -> None:
    """Refuse folders that already hold a run's events: TensorBoard draws two runs' points in one
    folder as one zig-zagging run. ``allowed_by``: the options that allow it, for the message."""
    from ..errors import ConfigError

    for folder in folders:
        if event_files(folder):
            raise ConfigError(f"{option}: {folder} already holds a run's TensorBoard events (two runs in one "
                              f"folder draw as one): give another folder, delete it, or {allowed_by}")
