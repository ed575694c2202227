"""ScoreTable: per-sample statistics the strategies rank by, as contiguous O(N) arrays."""

from __future__ import annotations

import numbers

import numpy as np

from .._args import check_bool, check_epoch
from .._native import core
from .._signals import signals_deferred
from ..errors import FastpruneError
from ._inputs import as_correct, as_indices, as_losses, staged, to_numpy

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
#: The storage types of the float fields (``dtype``), each with the numpy dtype of its arrays: numpy
#: has no bfloat16, so a bfloat16 table holds the raw bits as uint16.
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}
MAX_LOSS = 1e18  # csrc/select.cpp's kMaxLoss: a larger loss's squared deviation overflows float32
SKIP_HINT = " (pass skip_invalid=True to drop such entries)"  # how the core's message ends


class InvalidLoss(FastpruneError, ValueError):
    """An update's loss is NaN, infinite or beyond +-1e18 (usually a diverged model); the message
    names the entry and its sample. ``fit`` turns it into :class:`~fastprune.TrainingDiverged`."""
_FLOATS = ("mean", "var", "score")  # the fields stored in ``dtype``; the score column is derived
_ABSENT = {np.dtype(dtype): np.zeros(0, dtype=dtype)
           for dtype in [dtype for dtype, _ in _FIELDS.values()] + list(DTYPES.values())}


class ScoreTable:
    """Per-sample loss statistics for ``num_samples`` samples.

    ``decay`` is the EMA weight of the old value (new = decay*old + (1-decay)*loss); ``None``
    means a plain running mean over every update (what the static EL2N baseline averages).
    The first update of a sample sets its mean to the loss and its variance to 0.

    ``fields``: the optional fields to keep, of ``OPTIONAL`` (default: all). A strategy keeps only
    what it reads: 4 bytes per sample each for mean, seen, var, last_epoch and score (mean, var
    and score 2 in a 16-bit table, see ``dtype``), 6 for the correctness group.
    ``bandit_score=(c, use_std)`` keeps a ``score`` column equal to
    ``core.bandit_scores(mean, var, seen, c, use_std)``, updated with every sample, so that a
    selection reads one array and computes nothing. The arrays are read-only views: only
    :meth:`update` and :meth:`load_state_dict` change them, which keeps the score column exact.

    ``dtype`` ("float32", "float16" or "bfloat16") is the storage type of mean, var and score:
    a 16-bit table takes 2 bytes per sample for each (half the table, for tables of 1e9 samples).
    Its updates do float32's arithmetic on the stored values widened to float32 and round each
    result to nearest even, saturating at the type's largest finite value, so mean and var stay
    finite and only an unseen sample's score is +inf. bfloat16 keeps float32's range with about
    3 significant digits; float16 has about 3.3 digits but the range 6e-5..65504: it clips a
    larger loss (or score) to 65504, and a variance past 65504 (losses spread by more than about
    256, squared units) to it, which caps UCB's std bonus at 256. Reading ``mean``, ``var``,
    ``score`` or ``std`` of a 16-bit table returns a read-only float32 copy (exact): 4 bytes per
    sample while it lives.
    :meth:`raw` gives a field as stored instead, without a copy: what a selection reads.

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
                 bandit_score: tuple[float, bool] | None = None, index_map=None, dtype: str = "float32"):
        if int(num_samples) != num_samples or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if decay is not None and (isinstance(decay, (bool, str)) or not isinstance(decay, numbers.Real)):
            raise TypeError(f"decay must be a number in [0, 1) or None (running mean), got {decay!r}")
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1) or None (running mean), got {decay!r}")
        unknown = set(fields) - set(OPTIONAL)
        if unknown:
            raise ValueError(f"unknown score table fields {sorted(unknown)}; optional ones are {OPTIONAL}")
        if bandit_score is not None and bandit_score[0] != 0 and "var" not in fields:
            raise ValueError("a bandit score with c != 0 needs the 'var' field")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {dtype!r}")
        self._dtype = dtype
        self.num_samples = int(num_samples)
        self.decay = None if decay is None else float(decay)  # numpy's would not load with weights_only=True
        self.bandit_score = None if bandit_score is None else (float(bandit_score[0]), bool(bandit_score[1]))
        self._kept = _ALWAYS + tuple(name for name in ("var", "last_epoch") if name in fields)
        self._correctness = "correct" in fields
        self._arrays = {name: self._initial(name) for name in self._kept}
        if self.bandit_score is not None:
            self._arrays["score"] = self._initial("score")
        # sample ids -> rows, applied with each update (a sharded strategy's table holds its shard)
        self._index_map = index_map
        self._pending: list[_Staged] = []  # deferred updates, in call order
        self._pending_entries = 0
        self._calls = (None, 0)  # (epoch, update() calls in it): names a deferred call at fault

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return f"ScoreTable(num_samples={self.num_samples}, decay={self.decay!r}, dtype={self.dtype!r})"

    @property
    def fields(self) -> tuple[str, ...]:
        """The statistics this table tracks (the correctness group counts once allocated or kept)."""
        return tuple(name for name in _FIELDS if name in self._kept or self._tracks_correctness(name))

    @property
    def dtype(self) -> str:
        """The storage type of mean, var and score: "float32", "float16" or "bfloat16"."""
        return self._dtype

    @property
    def bytes_per_sample(self) -> int:
        return sum(array.itemsize for array in self._arrays.values())

    def __getattr__(self, name):
        # Only called for names not found normally: the per-sample arrays, as read-only views (of
        # a 16-bit table's float fields: read-only float32 copies).
        if self.__dict__.get("_arrays") is None or (name not in _FIELDS and name != "score"):
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        array = self._stored(name)
        return _read_only(_widen(array, self.dtype) if name in _FLOATS else array)  # 16-bit: a float32 copy

    def raw(self, name: str) -> tuple[np.ndarray, str | None]:
        """Field ``name`` (or ``"score"``) as stored, read-only and without a copy, with its kind as
        the native ``*_half`` functions take it: a 16-bit table's mean, var and score as their
        uint16 bits with the table's ``dtype`` ("float16" or "bfloat16"); anything else as a field
        read gives it, with None. Staged updates are applied first, as for a field read. A
        selection ranks a 16-bit score column this way, without its float32 copy."""
        if name not in _FIELDS and name != "score":
            raise ValueError(f"unknown score table field {name!r}; fields are {', '.join(_FIELDS)} and 'score'")
        array = self._stored(name)
        half = name in _FLOATS and self.dtype != "float32"
        return _read_only(_bits(array) if half else array), self.dtype if half else None

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
        — leaving the table untouched — unless ``skip_invalid``, which drops such entries instead:
        a seen sample keeps its statistics, an unseen one is marked tried (``seen`` -1, bandit
        score -inf) until its first valid loss. A ``correct`` other than 0/1 always raises
        ValueError (a wrong tensor passed, not a value training produces). Returns the
        number of entries skipped. A seen sample's bandit score saturates at the largest float32
        (and mean, var and score at the largest value of a 16-bit ``dtype``: 65504 for float16).
        ``correct`` is ignored by a table that does not keep the correctness fields.

        ``defer=True`` stages the update and returns None (the skipped count is not known
        without reading the values): torch tensors are copied on their own device, so nothing
        waits for a GPU; shapes and dtypes are checked now, values when the update is applied
        (see :meth:`flush`).
        """
        epoch = check_epoch(epoch, "ScoreTable.update: epoch")  # the table keeps epochs as int32
        skip_invalid = check_bool(skip_invalid, "ScoreTable.update: skip_invalid")
        number = self._count_call(epoch)
        if check_bool(defer, "ScoreTable.update: defer"):
            self._stage(indices, losses, correct, epoch, skip_invalid, number)
            return None
        self.flush()
        return self._apply(indices, losses, correct, epoch, skip_invalid)

    def flush(self) -> int:
        """Apply the staged (deferred) updates in the order they were made; return the number of
        entries skipped. One device-to-host copy per device and dtype, then one native update per
        run of calls of the same epoch, so the table ends bit for bit as if each call had been
        applied when it was made. An invalid value raises the error the immediate update would
        have raised, prefixed with the call at fault (``update() call 12 of epoch 3``); the calls
        before it are applied, it and the later ones dropped. An interrupt (Ctrl-C) leaves the calls
        not applied yet staged: it used to drop them all, and the next selection ranked without them."""
        pending, self._pending, self._pending_entries = self._pending, [], 0
        if not pending:
            return 0
        skipped = start = 0
        try:
            columns = [_to_host([getattr(call, name) for call in pending])
                       for name in ("indices", "losses", "correct")]
            calls = [_Staged(c.epoch, c.skip_invalid, c.number, i, l, k) for c, i, l, k in zip(pending, *columns)]
            while start < len(calls):  # runs of calls that one native update can apply together
                key = calls[start].key
                stop = start + 1
                while stop < len(calls) and calls[stop].key == key:
                    stop += 1
                with signals_deferred():  # applied and counted as one: a Ctrl-C between them re-applied it
                    skipped += self._apply_run(calls[start:stop])
                    start = stop
        except Exception:
            raise  # a bad value: the calls from the one at fault on are dropped, as documented
        except BaseException:  # KeyboardInterrupt, SystemExit: the updates were fine, keep them
            self._pending = pending[start:] + self._pending
            self._pending_entries = sum(len(call.indices) for call in self._pending)
            raise
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
        count = self.next_call_number(epoch)
        self._calls = (epoch, count)
        return count

    def next_call_number(self, epoch: int) -> int:
        """The number the next update() call of ``epoch`` will have (1 for its first)."""
        last, count = self._calls
        return count + 1 if last == epoch else 1

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
        native_decay = -1.0 if self.decay is None else float(self.decay)
        c, use_std = self.bandit_score or (0.0, True)
        # a 16-bit table's update takes the bits as uint16, and the storage type's name
        update, kind = (core.score_update, ()) if self.dtype == "float32" else (core.score_update_half, (self.dtype,))
        mean, var, score = (_bits(self._array(name)) for name in _FLOATS)
        try:
            return update(
                mean, var, score, self._arrays["seen"], self._array("last_epoch"), self._array("forgets"),
                self._array("last_correct"), self._array("ever_correct"), idx, loss, corr, native_decay,
                int(epoch), has_correct, bool(skip_invalid), c, use_std, *kind)
        except ValueError as exc:
            if str(exc).startswith("score update: losses["):  # the core's check of the losses
                raise InvalidLoss(str(exc)) from None
            raise

    def state_dict(self) -> dict:
        """The tracked fields (the score column is derived: recomputed on load); mean and var as
        tensors of the table's ``dtype`` (torch.float16, torch.bfloat16 in a 16-bit table)."""
        import torch  # tensors, so torch.load(weights_only=True) accepts checkpoints

        self.flush()

        def tensor(name):
            array = self._arrays[name].copy()
            if self.dtype == "bfloat16" and name in _FLOATS:
                # numpy holds the bits as uint16: reinterpret them (via int16: torch < 2.3 has no uint16)
                return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
            return torch.from_numpy(array)

        return {name: tensor(name) for name in _FIELDS if name in self._arrays}

    def load_state_dict(self, state: dict) -> None:
        """Load a state_dict of this version or an older one (which held all seven fields; the
        ones this table does not keep are ignored). The correctness group is loaded when present.
        mean and var may be float32, float16 or bfloat16 (of any table): they are rounded to this
        table's ``dtype`` as an update rounds. Staged updates are applied first (and then
        replaced, as they would have been)."""
        self.flush()
        names = list(self._kept)
        if self._correctness and all(name in state for name in _CORRECTNESS):
            names += _CORRECTNESS
        loaded = {name: self._checked(state, name) for name in names}
        for name in _CORRECTNESS:
            self._arrays.pop(name, None)
        self._arrays.update(loaded)
        if self.bandit_score is not None:  # the value updates give it: from the stored values, rounded
            c, use_std = self.bandit_score
            mean, var = (_widen(self._array(name), self.dtype) for name in ("mean", "var"))
            self._arrays["score"] = _narrow(core.bandit_scores(mean, var, loaded["seen"], c, use_std), self.dtype)

    # ---- helpers --------------------------------------------------------------------------

    def _initial(self, name: str) -> np.ndarray:
        dtype, init = _FIELDS.get(name, (np.float32, np.inf))  # score: +inf, every sample unseen
        if name in _FLOATS:  # the initial value in the storage type
            init = _narrow(np.array([init], dtype=np.float32), self.dtype)[0]
            dtype = init.dtype
        return np.full(self.num_samples, init, dtype=dtype)

    def _array(self, name: str) -> np.ndarray:
        """Field ``name`` as stored, or an empty array of its type when not kept."""
        dtype = DTYPES[self.dtype] if name in _FLOATS else np.dtype(_FIELDS[name][0])
        return self._arrays.get(name, _ABSENT[dtype])

    def _stored(self, name: str) -> np.ndarray:
        """Field ``name`` as stored, after the staged updates (every read sees every update made
        before it); AttributeError when the table does not keep it."""
        arrays = self._arrays
        if name in _CORRECTNESS and name not in arrays and self._correctness:
            self._allocate_correctness()
        if self.__dict__.get("_pending"):
            self.flush()
        if name not in arrays:
            what = "score column" if name == "score" else f"{name!r} field"
            raise AttributeError(f"this score table keeps no {what} (it tracks {', '.join(self.fields)}); "
                                 "the strategy does not read it")
        return arrays[name]

    def _tracks_correctness(self, name: str) -> bool:
        return name in _CORRECTNESS and self._correctness

    def _allocate_correctness(self) -> None:
        for name in _CORRECTNESS:
            self._arrays[name] = self._initial(name)

    def _checked(self, state: dict, name: str) -> np.ndarray:
        if name not in state:
            raise KeyError(f"score table state lacks {name!r}")
        array = to_numpy(state[name])  # a float16/bfloat16 tensor comes widened to float32 (exact)
        if array.shape != (self.num_samples,):
            raise ValueError(f"score table state {name!r} has shape {array.shape}, expected ({self.num_samples},)")
        if name in _FLOATS:
            return _narrow(array, self.dtype)
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


def _bits(stored: np.ndarray) -> np.ndarray:
    """A float field as the native update takes it: float32 as it is, a 16-bit type's bits as uint16."""
    return stored if stored.dtype == np.float32 else stored.view(np.uint16)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _widen(stored: np.ndarray, dtype: str) -> np.ndarray:
    """A float field stored in ``dtype`` as float32: itself when float32, else a new array (exact)."""
    if dtype == "float32":
        return stored
    return core.half_to_float32(_bits(stored), dtype)


def _narrow(values, dtype: str) -> np.ndarray:
    """``values`` (float32, or numbers numpy rounds to float32) as a new array of storage type
    ``dtype``: core.float32_to_half rounds to nearest even, saturating a finite value at the largest
    finite one."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "float32":
        return values.copy()
    return core.float32_to_half(values, dtype).view(DTYPES[dtype])


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
