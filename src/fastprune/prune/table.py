"""ScoreTable: per-sample statistics the strategies rank by, as contiguous O(N) arrays."""

from __future__ import annotations

import numpy as np

from .._native import core
from ._inputs import as_correct, as_indices, as_losses

# name -> (dtype, initial value); one contiguous array each (structure of arrays, so a selection
# kernel streams only the arrays it reads).
_FIELDS = {
    "mean": (np.float32, 0.0),  # EMA of the loss
    "var": (np.float32, 0.0),  # EMA of the squared deviation from that mean
    "seen": (np.int32, 0),  # number of valid updates (-1: tried, but every loss so far was skipped)
    "last_epoch": (np.int32, -1),  # epoch of the latest update (-1: never)
    "forgets": (np.int32, 0),  # correct -> wrong transitions (Toneva et al. 2019)
    "last_correct": (np.int8, -1),  # latest correctness (-1: never reported)
    "ever_correct": (np.uint8, 0),  # 1 once the sample was classified correctly
}
_ALWAYS = ("mean", "seen")
#: The fields a table may leave out. The correctness fields are one group, "correct", allocated at
#: the first update that passes `correct` (or the first read): until then they hold their initial
#: values, so allocating them late is exact.
OPTIONAL = ("var", "last_epoch", "correct")
_CORRECTNESS = ("forgets", "last_correct", "ever_correct")
_ABSENT = {np.dtype(dtype): np.zeros(0, dtype=dtype) for dtype, _ in _FIELDS.values()}
_ABSENT_F32 = _ABSENT[np.dtype(np.float32)]


class ScoreTable:
    """Per-sample loss statistics for ``num_samples`` samples.

    ``decay`` is the EMA weight of the old value (new = decay*old + (1-decay)*loss); ``None``
    means a plain running mean over every update (what the static EL2N baseline averages).
    The first update of a sample sets its mean to the loss and its variance to 0.

    ``fields``: the optional fields to keep, of ``OPTIONAL`` (default: all). A strategy keeps only
    what it reads: 4 bytes per sample each for mean, seen, var, last_epoch and score, 6 for the
    correctness group. ``bandit_score=(c, use_std)`` keeps a ``score`` column equal to
    ``core.bandit_scores(mean, var, seen, c, use_std)``, updated with every sample, so that a
    selection reads one array and computes nothing. The arrays are read-only views: only
    :meth:`update` and :meth:`load_state_dict` change them, which keeps the score column exact.
    """

    def __init__(self, num_samples: int, decay: float | None = 0.7, *, fields=OPTIONAL,
                 bandit_score: tuple[float, bool] | None = None):
        if int(num_samples) != num_samples or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1) or None (running mean), got {decay!r}")
        unknown = set(fields) - set(OPTIONAL)
        if unknown:
            raise ValueError(f"unknown score table fields {sorted(unknown)}; optional ones are {OPTIONAL}")
        if bandit_score is not None and bandit_score[0] != 0 and "var" not in fields:
            raise ValueError("a bandit score with c != 0 needs the 'var' field")
        self.num_samples = int(num_samples)
        self.decay = decay
        self.bandit_score = None if bandit_score is None else (float(bandit_score[0]), bool(bandit_score[1]))
        self._kept = _ALWAYS + tuple(name for name in ("var", "last_epoch") if name in fields)
        self._correctness = "correct" in fields
        self._arrays = {name: self._initial(name) for name in self._kept}
        if self.bandit_score is not None:
            self._arrays["score"] = np.full(self.num_samples, np.inf, dtype=np.float32)  # all unseen

    def __len__(self) -> int:
        return self.num_samples

    @property
    def fields(self) -> tuple[str, ...]:
        """The statistics this table tracks (the correctness group counts once allocated or kept)."""
        return tuple(name for name in _FIELDS if name in self._kept or self._tracks_correctness(name))

    @property
    def bytes_per_sample(self) -> int:
        return sum(array.itemsize for array in self._arrays.values())

    def __getattr__(self, name):
        # Only called for names not found normally: the per-sample arrays, as read-only views.
        arrays = self.__dict__.get("_arrays")
        if arrays is None or (name not in _FIELDS and name != "score"):
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        if name in _CORRECTNESS and name not in arrays and self._correctness:
            self._allocate_correctness()
        if name not in arrays:
            what = "score column" if name == "score" else f"{name!r} field"
            raise AttributeError(f"this score table keeps no {what} (it tracks {', '.join(self.fields)}); "
                                 "the strategy does not read it")
        view = arrays[name].view()
        view.flags.writeable = False
        return view

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    def update(self, indices, losses, correct=None, *, epoch: int = 0, skip_invalid: bool = False) -> int:
        """Apply (index, loss[, correct]) updates in order (a duplicate index is applied twice).

        Raises IndexError for an index outside [0, num_samples) and ValueError for a loss that is
        NaN, infinite or beyond +-1e18 (its squared deviation would overflow the float32 variance)
        or a ``correct`` other than 0/1 — leaving the table untouched — unless ``skip_invalid``,
        which drops such entries instead: a seen sample keeps its statistics, an unseen one is
        marked tried (``seen`` -1, bandit score -inf) until its first valid loss. Returns the
        number of entries skipped. A seen sample's bandit score saturates at the largest float32.
        ``correct`` is ignored by a table that does not keep the correctness fields.
        """
        idx = as_indices(indices)
        loss = as_losses(losses, len(idx))
        corr = as_correct(correct, len(idx))
        if not self._correctness:
            corr = None
        has_correct = corr is not None
        if corr is None:
            corr = _ABSENT[np.dtype(np.int8)]
        elif "forgets" not in self._arrays:
            self._allocate_correctness()
        a = self._arrays
        native_decay = -1.0 if self.decay is None else float(self.decay)
        c, use_std = self.bandit_score or (0.0, True)
        return core.score_update(
            a["mean"], self._array("var"), a.get("score", _ABSENT_F32), a["seen"], self._array("last_epoch"),
            self._array("forgets"), self._array("last_correct"), self._array("ever_correct"), idx, loss, corr,
            native_decay, int(epoch), has_correct, bool(skip_invalid), c, use_std)

    def state_dict(self) -> dict:
        """The tracked fields (the score column is derived: recomputed on load)."""
        import torch  # tensors, so torch.load(weights_only=True) accepts checkpoints

        return {name: torch.from_numpy(self._arrays[name].copy()) for name in _FIELDS if name in self._arrays}

    def load_state_dict(self, state: dict) -> None:
        """Load a state_dict of this version or an older one (which held all seven fields; the
        ones this table does not keep are ignored). The correctness group is loaded when present."""
        names = list(self._kept)
        if self._correctness and all(name in state for name in _CORRECTNESS):
            names += _CORRECTNESS
        loaded = {name: self._checked(state, name) for name in names}
        for name in _CORRECTNESS:
            self._arrays.pop(name, None)
        self._arrays.update(loaded)
        if self.bandit_score is not None:
            c, use_std = self.bandit_score
            self._arrays["score"] = np.ascontiguousarray(
                core.bandit_scores(loaded["mean"], loaded.get("var", _ABSENT_F32), loaded["seen"], c, use_std))

    # ---- helpers --------------------------------------------------------------------------

    def _initial(self, name: str) -> np.ndarray:
        dtype, init = _FIELDS[name]
        return np.full(self.num_samples, init, dtype=dtype)

    def _array(self, name: str) -> np.ndarray:
        return self._arrays.get(name, _ABSENT[np.dtype(_FIELDS[name][0])])

    def _tracks_correctness(self, name: str) -> bool:
        return name in _CORRECTNESS and self._correctness

    def _allocate_correctness(self) -> None:
        for name in _CORRECTNESS:
            self._arrays[name] = self._initial(name)

    def _checked(self, state: dict, name: str) -> np.ndarray:
        if name not in state:
            raise KeyError(f"score table state lacks {name!r}")
        value = state[name]
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if array.shape != (self.num_samples,):
            raise ValueError(f"score table state {name!r} has shape {array.shape}, expected ({self.num_samples},)")
        return np.ascontiguousarray(array, dtype=_FIELDS[name][0]).copy()
