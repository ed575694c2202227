"""ScoreTable: per-sample statistics the strategies rank by, as contiguous O(N) arrays."""

from __future__ import annotations

import numpy as np

from .._native import core
from ._convert import as_correct, as_indices, as_losses

# name -> (dtype, initial value); one contiguous array each (structure of arrays, so a selection
# kernel streams only the arrays it reads).
_FIELDS = {
    "mean": (np.float32, 0.0),  # EMA of the loss
    "var": (np.float32, 0.0),  # EMA of the squared deviation from that mean
    "seen": (np.int32, 0),  # number of updates the sample received
    "last_epoch": (np.int32, -1),  # epoch of the latest update (-1: never)
    "forgets": (np.int32, 0),  # correct -> wrong transitions (Toneva et al. 2019)
    "last_correct": (np.int8, -1),  # latest correctness (-1: never reported)
    "ever_correct": (np.uint8, 0),  # 1 once the sample was classified correctly
}


class ScoreTable:
    """Per-sample loss statistics for ``num_samples`` samples.

    ``decay`` is the EMA weight of the old value (new = decay*old + (1-decay)*loss); ``None``
    means a plain running mean over every update (what the static EL2N baseline averages).
    The first update of a sample sets its mean to the loss and its variance to 0.
    """

    def __init__(self, num_samples: int, decay: float | None = 0.7):
        if int(num_samples) != num_samples or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1) or None (running mean), got {decay!r}")
        self.num_samples = int(num_samples)
        self.decay = decay
        for name, (dtype, init) in _FIELDS.items():
            setattr(self, name, np.full(self.num_samples, init, dtype=dtype))

    def __len__(self) -> int:
        return self.num_samples

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    def update(self, indices, losses, correct=None, *, epoch: int = 0, skip_invalid: bool = False) -> int:
        """Apply (index, loss[, correct]) updates in order (a duplicate index is applied twice).

        Raises IndexError for an index outside [0, num_samples) and ValueError for a NaN/inf loss
        or a ``correct`` other than 0/1 — leaving the table untouched — unless ``skip_invalid``,
        which drops such entries instead. Returns the number of entries skipped.
        """
        idx = as_indices(indices)
        loss = as_losses(losses, len(idx))
        corr = as_correct(correct, len(idx))
        has_correct = corr is not None
        if corr is None:
            corr = np.zeros(0, dtype=np.int8)
        native_decay = -1.0 if self.decay is None else float(self.decay)
        return core.score_update(
            self.mean, self.var, self.seen, self.last_epoch, self.forgets, self.last_correct,
            self.ever_correct, idx, loss, corr, native_decay, int(epoch), has_correct, bool(skip_invalid))

    def state_dict(self) -> dict:
        import torch  # tensors, so torch.load(weights_only=True) accepts checkpoints

        return {name: torch.from_numpy(getattr(self, name).copy()) for name in _FIELDS}

    def load_state_dict(self, state: dict) -> None:
        for name, (dtype, _) in _FIELDS.items():
            if name not in state:
                raise KeyError(f"score table state lacks {name!r}")
            value = state[name]
            array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            if array.shape != (self.num_samples,):
                raise ValueError(f"score table state {name!r} has shape {array.shape}, "
                                 f"expected ({self.num_samples},)")
            setattr(self, name, np.ascontiguousarray(array, dtype=dtype).copy())
