"""Optional TensorBoard logging of a run (``fastprune train/bench --tensorboard DIR``), through
``torch.utils.tensorboard``; needs the ``tensorboard`` package (``pip install
"fastprune[tensorboard]"``), named in one line when missing.

    logger = TensorBoardLogger("runs/ucb", num_samples=len(train_store))
    fit(..., on_epoch_end=logger)       # one point per epoch; then logger.close()
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import require


class TensorBoardLogger:
    """An ``on_epoch_end`` callback writing each epoch's record as TensorBoard scalars, at step
    = epoch number (1-based): ``loss/train``, ``loss/val``, ``accuracy/val``, per class
    ``accuracy_per_class/NAME``, ``pruning/kept_fraction`` (samples trained / ``num_samples``;
    absent without it), ``pruning/overhead_s`` (seconds inside the strategy), ``time/epoch_s``,
    ``time/train_s`` and ``lr``. Epochs not evaluated have no validation points."""

    def __init__(self, log_dir: str | os.PathLike, num_samples: int | None = None):
        require("tensorboard", "tensorboard", "TensorBoard logging")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = os.fspath(log_dir)
        self.num_samples = num_samples
        self.writer = SummaryWriter(self.log_dir)

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
        for tag, value in scalars.items():
            if value is not None and value == value:  # None: not evaluated; NaN: nothing to evaluate
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
