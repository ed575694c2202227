"""ScoreTable: per-sample statistics the strategies rank by, as contiguous O(N) arrays."""

from __future__ import annotations

import numpy as np

from .._native import core
from ._inputs import as_correct, as_indices, as_losses, staged

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

    ``update(..., defer=True)`` stages an update instead of applying it (device tensors stay on
    their device: no host sync); staged updates are applied in order, before anything reads the
    table (a field, ``state_dict``), at :meth:`flush`, at the next immediate update, or once more
    than ``max_pending`` entries wait.

    ``index_map``: a function from the sample ids ``update`` receives to rows of this table
    (raising IndexError for an id it does not hold), applied when an update is applied: the
    table of a sharded strategy holds only its rank's shard.
    """

    #: Staged entries (all deferred calls together) past which update() applies them at once, so
    #: that the memory they hold stays bounded (13 bytes each with correctness: 52 MiB).
    max_pending = 1 << 22

    def __init__(self, num_samples: int, decay: float | None = 0.7, *, fields=OPTIONAL,
                 bandit_score: tuple[float, bool] | None = None, index_map=None):
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
        # sample ids -> rows, applied with each update (a sharded strategy's table holds its shard)
        self._index_map = index_map
        self._pending: list[_Staged] = []  # deferred updates, in call order
        self._pending_entries = 0
        self._calls = (None, 0)  # (epoch, update() calls in it): names a deferred call at fault

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
        if self.__dict__.get("_pending"):
            self.flush()  # every read sees every update made before it
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

    @property
    def pending(self) -> int:
        """The number of entries staged by deferred updates and not applied yet."""
        return self._pending_entries

    def update(self, indices, losses, correct=None, *, epoch: int = 0, skip_invalid: bool = False,
               defer: bool = False) -> int | None:
        """Apply (index, loss[, correct]) updates in order (a duplicate index is applied twice).

        Raises IndexError for an index outside [0, num_samples) and ValueError for a loss that is
        NaN, infinite or beyond +-1e18 (its squared deviation would overflow the float32 variance)
        or a ``correct`` other than 0/1 — leaving the table untouched — unless ``skip_invalid``,
        which drops such entries instead: a seen sample keeps its statistics, an unseen one is
        marked tried (``seen`` -1, bandit score -inf) until its first valid loss. Returns the
        number of entries skipped. A seen sample's bandit score saturates at the largest float32.
        ``correct`` is ignored by a table that does not keep the correctness fields.

        ``defer=True`` stages the update and returns None (the skipped count is not known
        without reading the values): torch tensors are copied on their own device, so nothing
        waits for a GPU; shapes and dtypes are checked now, values when the update is applied
        (see :meth:`flush`).
        """
        number = self._count_call(epoch)
        if defer:
            self._stage(indices, losses, correct, int(epoch), bool(skip_invalid), number)
            return None
        self.flush()
        return self._apply(indices, losses, correct, epoch, skip_invalid)

    def flush(self) -> int:
        """Apply the staged (deferred) updates in the order they were made; return the number of
        entries skipped. One device-to-host copy per device and dtype, then one native update per
        run of calls of the same epoch, so the table ends bit for bit as if each call had been
        applied when it was made. An invalid value raises the error the immediate update would
        have raised, prefixed with the call at fault (``update() call 12 of epoch 3``); the calls
        before it are applied, it and the later ones dropped."""
        pending, self._pending, self._pending_entries = self._pending, [], 0
        if not pending:
            return 0
        columns = [_to_host([getattr(call, name) for call in pending]) for name in ("indices", "losses", "correct")]
        calls = [_Staged(c.epoch, c.skip_invalid, c.number, i, l, k) for c, i, l, k in zip(pending, *columns)]
        skipped = start = 0
        while start < len(calls):  # runs of calls that one native update can apply together
            key = calls[start].key
            stop = start + 1
            while stop < len(calls) and calls[stop].key == key:
                stop += 1
            skipped += self._apply_run(calls[start:stop])
            start = stop
        return skipped

    def _apply_run(self, calls: list) -> int:
        first = calls[0]
        try:
            idx = [as_indices(c.indices) for c in calls]
            loss = [as_losses(c.losses, len(i)) for c, i in zip(calls, idx)]
            corr = None if first.correct is None else [as_correct(c.correct, len(i)) for c, i in zip(calls, idx)]
            return self._apply(np.concatenate(idx), np.concatenate(loss),
                               None if corr is None else np.concatenate(corr), first.epoch, first.skip_invalid)
        except (ValueError, IndexError):  # the table is untouched: find the call at fault
            pass
        skipped = 0
        for call in calls:
            try:
                skipped += self._apply(call.indices, call.losses, call.correct, call.epoch, call.skip_invalid)
            except (ValueError, IndexError) as error:
                raise type(error)(f"update() call {call.number} of epoch {call.epoch} (deferred, applied "
                                  f"now): {error}") from None
        raise AssertionError("a run of deferred updates failed, but none of its calls alone")  # pragma: no cover

    def _count_call(self, epoch) -> int:
        """The 1-based number of this update() call within its epoch."""
        last, count = self._calls
        count = count + 1 if last == epoch else 1
        self._calls = (epoch, count)
        return count

    def _stage(self, indices, losses, correct, epoch: int, skip_invalid: bool, number: int) -> None:
        is_tensor = hasattr(indices, "detach")
        idx = staged(indices, "indices") if is_tensor else as_indices(indices).copy()
        length = len(idx)
        loss = (staged(losses, "losses", length) if hasattr(losses, "detach")
                else as_losses(losses, length).copy())
        corr = (None if correct is None else staged(correct, "correct", length) if hasattr(correct, "detach")
                else as_correct(correct, length).copy())
        self._pending.append(_Staged(epoch, skip_invalid, number, idx, loss, corr))
        self._pending_entries += length
        if self._pending_entries > self.max_pending:
            self.flush()

    def _apply(self, indices, losses, correct, epoch, skip_invalid) -> int:
        idx = as_indices(indices)
        if self._index_map is not None:
            idx = self._index_map(idx)
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

        self.flush()
        return {name: torch.from_numpy(self._arrays[name].copy()) for name in _FIELDS if name in self._arrays}

    def load_state_dict(self, state: dict) -> None:
        """Load a state_dict of this version or an older one (which held all seven fields; the
        ones this table does not keep are ignored). The correctness group is loaded when present.
        Staged updates are applied first (and then replaced, as they would have been)."""
        self.flush()
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


class _Staged:
    """One deferred update() call: its epoch, skip rule, number within the epoch, and its
    indices, losses and correct (None) as staged: tensors on their device, or numpy arrays."""

    __slots__ = ("epoch", "skip_invalid", "number", "indices", "losses", "correct")

    def __init__(self, epoch, skip_invalid, number, indices, losses, correct):
        self.epoch, self.skip_invalid, self.number = epoch, skip_invalid, number
        self.indices, self.losses, self.correct = indices, losses, correct

    @property
    def key(self):
        """Calls with equal keys are applied by one native update."""
        return self.epoch, self.skip_invalid, self.correct is None


def _to_host(parts: list) -> list:
    """``parts`` (torch tensors on any device, numpy arrays, None) with every tensor brought to
    the host: one concatenation and one copy per (device, dtype), not one per part."""
    groups: dict = {}
    for position, part in enumerate(parts):
        if hasattr(part, "detach"):
            groups.setdefault((part.device, part.dtype), []).append(position)
    out = list(parts)
    if not groups:
        return out
    import torch

    for positions in groups.values():
        host = torch.cat([parts[p] for p in positions]).cpu()
        for p, piece in zip(positions, torch.split(host, [len(parts[p]) for p in positions])):
            out[p] = piece
    return out
