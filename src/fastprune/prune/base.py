"""The strategy interface the loader drives, and the epoch policy all strategies share.

A strategy is the loader's sampler: ``select(epoch)`` returns the epoch's :class:`Selection`,
``num_selected(epoch)`` its size (for ``len(loader)``), ``update(indices, losses, correct)``
feeds per-sample results back. Everything random derives from ``(seed, epoch, stream)`` through
the native counter-based RNG, so a selection depends only on the seed, the epoch and the table.

Common options (defaults and why):

* ``warmup_epochs=0`` — no warm-up is needed: unseen samples score +inf, so the first epochs
  already visit every sample once (a uniform random order of first visits) before scores are
  exploited. Set it >0 to train on full data first, as some papers do.
* ``final_full_epochs=0`` (requires ``epochs``) — off for the bandit methods, which Raju et al.
  run pruned to the end; InfoBatch turns it on via ``delta``.
* ``keep_schedule=None`` — a kept fraction per epoch (epoch ``e`` keeps ``keep_schedule[e]``;
  epochs past its end keep ``keep``; 1.0 is a full epoch), to spend the same number of sample
  passes unevenly over the run, e.g. more of them late, where the learning rate is low. A
  subset kept over several epochs keeps the size of the epoch that chose it: with
  ``reselect_every`` > 1 each window takes its first epoch's fraction, and EL2N/Forgetting's fixed
  subset that of the epoch after scoring.
* ``reselect_every=1`` — the dynamic methods' point is to re-choose every epoch; a larger value
  keeps each subset for that many epochs (cheaper only if selection cost mattered, which at
  O(N) it does not).
* ``labels=None`` — when given, every class keeps the same fraction (quotas by largest
  remainder; the spare samples of equal classes rotate from epoch to epoch), guarding against a
  strategy that drops an easy class entirely. Labels are class ids: a continuous target is refused.
* ``skip_invalid=False`` — a NaN loss usually means a diverged model: fail loudly by default.

Scores that could poison a sample (the rule every strategy shares, in the score table's update):

* A loss must be finite and within +-1e18 (so that its squared deviation, the variance UCB's
  bonus reads, fits in float32). A larger loss counts as non-finite: refused, or skipped under
  ``skip_invalid``. A seen sample's bandit score saturates at the largest float32, so +inf always
  means "unseen" and every sample's score falls again once its losses do.
* Under ``skip_invalid``, a skipped loss leaves a seen sample's statistics as they were. A sample
  whose every loss so far was skipped is marked tried (``table.seen == -1``): it ranks last
  (score -inf) instead of staying "unseen" (+inf) and being chosen every epoch; InfoBatch counts
  it among the prunable below-mean samples. Only a random part (EpsilonGreedy's ``eps``,
  UniformRandom, InfoBatch's below-mean draw) revisits it; its first valid loss starts its
  statistics afresh. UCB, EL2N and Forgetting, which keep only the top scores, drop it for good.
* Duplicate indices in one ``update`` call are each one observation, applied in order (as
  several epochs' updates would be): the sample's mean moves once per occurrence and ``seen``
  counts every one. Under torch.distributed the ranks' updates are applied in rank order, so a
  sample two ranks both report (a padded sampler) counts twice on every rank alike.
* ``distributed="auto"`` — all-gather updates whenever a torch.distributed group is running
  (replicated: every rank holds the whole table).
* ``distributed="sharded"`` (or ``("sharded", rank, world_size)``) — owner computes: rank r holds
  only the scores of its shard (``fastprune.prune.sharding``), selects ``k // world_size`` of it
  (the same count on every rank, so DDP stays in step; a full epoch visits ``N // world_size``
  of each shard) and updates its own samples with no collective at all. The Loader,
  PrunedSampler and PrunedOrder then visit that selection whole. Checkpoints hold one shard:
  each rank saves and loads its own, and a resume on another world size is refused. For
  strategies with a fixed quota (EpsilonGreedy, UCB, UniformRandom, EL2N, Forgetting, Full;
  not InfoBatch, whose epoch size follows the scores).

What a rank holds per sample (``strategy.bytes_per_sample``), for tables of 1e8-1e9 samples:

* ``score_dtype="float32"`` — ``"bfloat16"`` or ``"float16"`` store the table's float fields (EMA
  loss, its variance, the bandit score) in 2 bytes instead of 4: EpsilonGreedy 12 -> 8 bytes,
  UCB 16 -> 10; selections read the 16-bit scores in place. bfloat16 keeps float32's range
  with about 3 significant digits; float16 has a little more precision but clips at 65504 (UCB's
  variance, in squared loss units, saturates once the losses spread by about 256) and loses
  values below 6e-5 (flushed to 0 below 6e-8: the variance of losses near 1e-4, as a small
  regression error's are, is 0): use bfloat16. How
  often the rounded tables select differently: ``benchmarks/scale.py`` (docs/guide.md, "Very
  large datasets").
* ``track_kept=True`` — times kept and last kept epoch per sample (8 bytes; ``sample_report``,
  ``fastprune scores``, the kept-images grid); False counts nothing and reports no such columns.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar, overload

import numpy as np
import torch
from numpy.typing import ArrayLike

try:
    from typing import Unpack  # Python 3.11+
except ImportError:  # 3.10: typing_extensions comes with torch
    from typing_extensions import Unpack


from .._args import MAX_EPOCH, check_bool, check_epoch, check_fraction, check_positive_int, check_real, check_seed
from ..errors import ConfigError, UsageWarning, user_stacklevel
from ..random_streams import tie_order
from ._inputs import as_indices, first_past_int64, to_numpy
from .distributed import Agreement, gather_updates, group_world_size
from .sharding import is_sharded, sharded_ranks, Sharding
from .table import ScoreTable

_STATE_FORMAT = "fastprune.strategy/1"
#: config() keys added after the first checkpoints: a checkpoint that lacks one predates it and is
#: not checked on it (its value then is unknown). keep_schedule is different: absent means None.
_LATER_KEYS = ("warmup_epochs", "reselect_every", "labels", "epochs", "final_full_epochs", "skip_invalid")
_ABSENT_MEANS = {"keep_schedule": None, "sharding": None, "score_dtype": "float32", "track_kept": True}


@dataclass(frozen=True)
class Selection:
    """One epoch's samples: ``indices`` (int64, any order) and ``weights`` (float32) to multiply
    each sample's loss by, so weighted strategies keep the expected gradient unbiased."""

    indices: np.ndarray
    weights: np.ndarray

    def __init__(self, indices: ArrayLike, weights: ArrayLike) -> None:
        # arrays as a sampler's select() may build them by hand (lists, other dtypes), no copy otherwise
        indices = np.asarray(indices)
        if indices.size and indices.dtype.kind not in "iu":  # 2.7 would be cut to 2 by a cast
            raise TypeError(f"Selection indices must be integers, got {indices.dtype}")
        past = first_past_int64(indices)
        if past is not None:
            raise IndexError(f"Selection index {int(indices[past])} is past int64 (it would wrap to a negative id)")
        object.__setattr__(self, "indices", indices.astype(np.int64, copy=False))
        object.__setattr__(self, "weights", np.asarray(weights, dtype=np.float32))
        if self.indices.shape != self.weights.shape or self.indices.ndim != 1:
            raise ValueError(f"Selection indices and weights must be 1-D of one length, got shapes "
                             f"{self.indices.shape} and {self.weights.shape}")

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def unweighted(cls, indices: ArrayLike) -> "Selection":
        indices = np.asarray(indices)  # not cast here: Selection refuses non-integer ids
        return cls(indices, np.ones(len(indices), dtype=np.float32))


def _warn_older_state(name: str, unchecked: list[str], counted_kept: bool) -> None:
    """Say what a state written by an older fastprune leaves unchecked or uncounted: it loads (its
    settings then were these defaults), but a difference in them would pass silently."""
    notes = []
    if unchecked:
        notes.append(f"its {', '.join(unchecked)} {'was' if len(unchecked) == 1 else 'were'} not recorded, so "
                     "this strategy's are taken as the run's")
    if not counted_kept:
        notes.append("times kept were not counted, so they count from here on")
    if notes:
        warnings.warn(f"{name}.load_state_dict: a state from an older fastprune: {'; '.join(notes)}",
                      UsageWarning, stacklevel=user_stacklevel())


def _quotas(sizes: np.ndarray, total: int, tie_order: np.ndarray) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``sizes``: largest remainder, equal
    remainders in ``tie_order`` (a permutation of the groups). Ties broken by group id would
    give the spare samples to the same classes every epoch: 1000 classes of 2 samples at keep
    0.3 never selected 400 of them."""
    exact = sizes * (total / sizes.sum())
    quotas = np.floor(exact).astype(np.int64)
    order = tie_order[np.argsort(-(exact - quotas)[tie_order], kind="stable")]
    quotas[order[: total - quotas.sum()]] += 1
    return np.minimum(quotas, sizes)


class SharedOptions(TypedDict, total=False):
    """The keyword options every strategy passes on to :class:`Strategy` (typed, so that IDEs
    complete them and type checkers catch a misspelt one; see ``_COMMON_OPTIONS``)."""

    seed: int
    keep_schedule: Sequence[float] | None
    labels: Any
    decay: float | None | str
    skip_invalid: bool
    distributed: bool | str | tuple
    score_dtype: str
    track_kept: bool


class StrategyOptions(SharedOptions, total=False):
    """:class:`SharedOptions` and the epoch phases (what InfoBatch and EL2N/Forgetting set themselves)."""

    warmup_epochs: int
    final_full_epochs: int
    epochs: int | None
    reselect_every: int


class InfoBatchOptions(SharedOptions, total=False):
    """InfoBatch sets ``epochs`` itself (a keyword of its own) and its final full epochs from ``delta``."""

    warmup_epochs: int
    reselect_every: int


class StaticOptions(SharedOptions, total=False):
    """EL2N and Forgetting set their warm-up from ``score_epochs`` and keep their subset."""

    final_full_epochs: int
    epochs: int | None


_COMMON_OPTIONS = """
    Options the strategies take (keywords; the module fastprune.prune.base says why each default):
        seed=0: every random draw derives from (seed, epoch, stream).
        warmup_epochs=0: full-data epochs before pruning starts (EL2N/Forgetting: score_epochs).
        final_full_epochs=0: full-data epochs at the end (needs epochs=, the run's length; InfoBatch
            sets them from delta).
        epochs=None: the run's total number of epochs.
        reselect_every=1: keep each selection for this many epochs (EL2N/Forgetting keep theirs).
        keep_schedule=None: a kept fraction per epoch (past its end: keep; 1.0: a full epoch).
        labels=None: class ids, one per sample: every class keeps the same fraction.
        decay="default": EMA decay of the scores (None: running mean).
        skip_invalid=False: skip NaN/infinite losses instead of raising.
        distributed="auto": all-gather updates under torch.distributed; False; "sharded".
        score_dtype="float32": or "bfloat16"/"float16" (2 bytes per table field).
        track_kept=True: count times kept and last kept epoch per sample (8 bytes).
"""


_Setting = TypeVar("_Setting")


class Fixed(Generic[_Setting]):
    """A strategy's setting, fixed once set in its constructor: the kept count, the score table's
    bonus and the epoch phases are derived from it there. Set later, ``strategy.keep = 0.2`` was
    ignored by the selection while repr, config() and a checkpoint reported 0.2 (and a resume into
    ``UCB(keep=0.2)`` then selected another size). Annotated ``Fixed[float]`` on the class, it
    reads as a float on a strategy (``strategy.keep * 2``) to a type checker too."""

    def __set_name__(self, owner, name: str) -> None:
        self.name, self.slot = name, f"_{name}_setting"

    @overload
    def __get__(self, strategy: None, owner: type | None = None) -> "Fixed[_Setting]": ...

    @overload
    def __get__(self, strategy: object, owner: type | None = None) -> _Setting: ...

    def __get__(self, strategy, owner=None):
        if strategy is None:
            return self
        try:
            return strategy.__dict__[self.slot]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, strategy, value) -> None:
        # the same value again is no change (a subclass may set it before calling the constructor)
        if self.slot in strategy.__dict__ and not _same(strategy.__dict__[self.slot], value):
            raise AttributeError(f"{type(strategy).__name__}.{self.name} is fixed at construction (the selection "
                                 f"is set up from it); build a new strategy with {self.name}={value!r}")
        strategy.__dict__[self.slot] = value


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # arrays and the like: compared as different
        return False


class Strategy:
    """Base class: epoch phases (warm-up / pruned / final full), reselection, class balance,
    caching, updates and checkpoints. Subclasses implement :meth:`_choose`.
    """ + _COMMON_OPTIONS

    # once-only warnings' flags, here too for a strategy pickled before a flag existed
    _warned_replay = _warned_past_plan = False
    keep: Fixed[float] = Fixed()
    seed: Fixed[int] = Fixed()
    warmup_epochs: Fixed[int] = Fixed()
    final_full_epochs: Fixed[int] = Fixed()
    epochs: Fixed[int | None] = Fixed()
    reselect_every: Fixed[int] = Fixed()
    keep_schedule: Fixed[tuple[float, ...] | None] = Fixed()

    def __init_subclass__(cls, **kwargs):
        # help(UCB) lists the options its **options passes here, not only the class's own
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and not cls.__name__.startswith("_") and _COMMON_OPTIONS not in cls.__doc__:
            cls.__doc__ = cls.__doc__.rstrip() + "\n" + _COMMON_OPTIONS

    #: EMA decay of the score table; subclasses override (None = running mean).
    default_decay: float | None = 0.7
    #: Optional score-table fields the strategy reads (table.OPTIONAL); mean and seen are always
    #: kept, and the correctness fields are allocated once an update passes `correct`.
    table_fields: tuple[str, ...] = ("correct",)
    #: Whether distributed="sharded" is supported: the selection size must be a fixed quota.
    shardable: bool = False
    #: Whether the selection reads the scores update() records (not for Full or UniformRandom).
    uses_scores: bool = True

    def __init__(self, num_samples: int, keep: float = 1.0, *, seed: int = 0, warmup_epochs: int = 0,
                 final_full_epochs: int = 0, epochs: int | None = None, reselect_every: int = 1,
                 keep_schedule=None, labels=None, decay: float | None | str = "default", skip_invalid: bool = False,
                 distributed: bool | str | tuple = "auto", score_dtype: str = "float32", track_kept: bool = True):
        num_samples = check_positive_int(num_samples, f"{type(self).__name__}: num_samples")
        self.keep = check_fraction(keep, "keep")
        self.seed = check_seed(seed)
        self.sharding, self.shard_rank = self._sharding_of(distributed, num_samples)
        entries = num_samples if self.sharding is None else self.sharding.shard_size(self.shard_rank)
        self.table = ScoreTable(entries, self.default_decay if decay == "default" else decay,
                                fields=self.table_fields, bandit_score=self._bandit_score(),
                                index_map=None if self.sharding is None else self._rows, dtype=score_dtype)
        self.num_samples = self.table.num_samples if self.sharding is None else self.sharding.num_samples
        self.num_kept = self._kept_count(self.keep, f"keep={keep}")
        self.keep_schedule = self._checked_schedule(keep_schedule)
        self.warmup_epochs = self._non_negative(warmup_epochs, "warmup_epochs")
        self.final_full_epochs = self._non_negative(final_full_epochs, "final_full_epochs")
        if self.final_full_epochs and epochs is None:
            raise ValueError("final_full_epochs needs epochs (the total number of training epochs)")
        self.epochs = None if epochs is None else self._positive(epochs, "epochs")
        self.reselect_every = self._positive(reselect_every, "reselect_every")
        self.skip_invalid = check_bool(skip_invalid, "skip_invalid")
        self._warn_if_never_pruned()
        self.distributed = distributed
        self._pools, self._pool_sizes, self._labels_digest = self._class_pools(labels)
        self._cache: tuple[int, Selection] | None = None  # (anchor epoch, its pruned selection)
        self._dense_weights = None  # (cached Selection, device, per-sample weights): weighted_loss's lookup
        self._epoch = 0  # the epoch updates are attributed to: the latest one selected
        # What the ranks' updates are checked to share (distributed.Agreement)
        self._settings_digest: int | None = None
        self._order_note = 0  # how the consumer orders the epoch (0: not noted)
        self._consumer_split, self._warned_alone = 1, False
        # What was kept: counted once per selected epoch (in select), not per step; per shard row
        # when sharded. 8 bytes per sample, as much as a float32 table: optional at scale.
        self.track_kept = check_bool(track_kept, "track_kept")
        rows = self.table.num_samples if self.track_kept else 0
        self._times_kept = np.zeros(rows, dtype=np.uint32)
        self._last_kept = np.full(rows, -1, dtype=np.int32)  # -1: never kept
        self._counted_through = -1  # the latest epoch counted (a repeated select counts once)
        # Losses update() got during the epoch this process saw start (its selection's size): a
        # loop scoring too few of them (one micro-batch in four, or none) is warned once
        self._started: tuple[int, int] | None = None  # (epoch, samples selected)
        self._losses_received = 0
        self._warned_unscored = False
        self._warned_replay = False
        self._warned_past_plan = False

    # ---- the interface the loader uses ----------------------------------------------------

    @property
    def current_epoch(self) -> int:
        """The latest epoch selected (0 before any): updates count toward it."""
        return self._epoch

    def select(self, epoch: int) -> Selection:
        """The samples of ``epoch``. Calling it again for the same epoch returns the same
        selection, even after updates (a pruned selection is cached until the next one). The
        arrays are the caller's own copies: writing to them changes nothing here.

        Selecting an epoch starts it: later updates count toward it, and its subset is fixed from
        the scores so far (to size an epoch ahead without that, ask :meth:`num_selected`). An
        earlier epoch than the latest selected is a look back, chosen from the current scores,
        which leaves the current epoch, its subset and its weights as they are."""
        epoch = self._non_negative(epoch, "epoch")
        self.table.flush()  # the previous epoch's deferred updates, even where no score is read
        if epoch < self._epoch:
            return self._looked_back(epoch)
        starting = self._started is None or epoch != self._started[0]
        self._epoch = epoch
        if self.is_full_epoch(epoch):
            ids = self._all_ids(epoch)
            # sharded, a full epoch leaves a larger shard's spare sample out: not counted as kept
            self._count_kept(epoch, None if self.sharding is None else ids)
            selection = Selection.unweighted(ids)
        else:
            cached = self._current_pruned(epoch)
            self._count_kept(epoch, cached.indices)
            selection = Selection(cached.indices.copy(), cached.weights.copy())
        if starting:
            self._started, self._losses_received = (epoch, len(selection)), 0
            self._warn_if_past_plan(epoch)
        return selection

    def _warn_if_past_plan(self, epoch: int) -> None:
        """Warn once when an epoch past ``epochs`` starts: the plan built on that count (InfoBatch's
        final full-data epochs, the epochs its schedule spans) no longer fits the run. A loop run
        longer than the strategy was built for (or run again after an interrupt, in a notebook)
        trained on, pruning or not, without a word."""
        if self.epochs is None or epoch < self.epochs or self._warned_past_plan:
            return
        self._warned_past_plan = True
        warnings.warn(f"{type(self).__name__}: epoch {epoch} starts, past the epochs={self.epochs} it was built for "
                      f"(epochs 0..{self.epochs - 1}), so its plan no longer fits the run"
                      f"{' (its final full-data epochs go on)' if self.final_full_epochs else ''}: build it with "
                      "epochs= the run's number of epochs", UsageWarning, stacklevel=user_stacklevel())

    def _warn_if_unscored(self, epoch: int) -> None:
        """Warn once when ``epoch``'s subset is chosen and update() got losses for fewer than half
        the samples of the epoch before it (as this process saw it start): unscored samples are
        kept first, so the strategy would prune by chance. Gradient accumulation scoring only the
        micro-batch that steps, or a loop without update(), did so silently."""
        if self._started is None or not self.uses_scores or self._warned_unscored or self._warned_alone:
            return
        previous, selected = self._started
        if self._losses_received >= selected / 2:
            return
        self._warned_unscored = True
        warnings.warn(f"{type(self).__name__}: epoch {epoch} starts, but update() got losses for "
                      f"{self._losses_received} of the {selected} samples selected for epoch {previous}: the "
                      "strategy keeps unscored samples first, so it prunes by chance; pass every batch's "
                      "per-sample losses to update() (or weighted_loss), every micro-batch under gradient "
                      "accumulation (an epoch cut short, as by Lightning's limit_train_batches, leaves the rest "
                      "unscored too)", UsageWarning, stacklevel=user_stacklevel())

    def _check_pass_epoch(self, epoch: int, consumer: str, *, chosen: bool = False, cause: str | None = None,
                          advice: str | None = None) -> None:
        """A sampler's, Loader's or ffcv order's pass over ``epoch`` starts: warn once when it
        repeats a subset chosen before. An epoch before the latest selected repeats one whoever
        chose it (a new process's Accelerate loader or a second Lightning Trainer counts epochs
        from 0 and sets them); the latest one, after update() got its losses, unless set_epoch
        chose it (``chosen``). ``cause``: why the consumer runs this epoch (default: a new one
        starts at epoch 0); ``advice``: what to do (default: one consumer, set to the run's epoch).
        Unwarned, a consumer built each epoch or over a loaded checkpoint trained epoch 0's subset
        again and again: the others never seen, or no pruning behind a warm-up."""
        latest = self._epoch
        trained = self._started is not None and self._started[0] == latest and self._losses_received > 0
        if self._warned_replay or not (epoch < latest or (epoch == latest and trained and not chosen)):
            return
        self._warned_replay = True
        name = type(self).__name__
        where = f"again ({name} got its losses)" if epoch == latest else f"but {name} is at epoch {latest}"
        if cause is None:
            cause = (f"set_epoch({epoch}) chose it, as a framework counting epochs from 0 in a new process does: "
                     "Accelerate's prepared loader, a second Lightning Trainer") if chosen else \
                f"a new {consumer} starts at epoch 0 unless set_epoch sets another"
        advice = advice or (f"use one {consumer} for the whole run and set the epoch the run is at (after "
                            "load_state_dict: the checkpoint's next epoch)")
        warnings.warn(f"{consumer}: this pass runs epoch {epoch} {where}, so it repeats a subset chosen before "
                      f"({cause}); {advice}", UsageWarning, stacklevel=user_stacklevel())

    def _looked_back(self, epoch: int) -> Selection:
        """``select`` of an epoch before the current one (``Loader.epoch_order(1)`` during epoch 4):
        it moved the current epoch back and evicted its cached subset, so the next epoch of a
        reselect_every=2 run was chosen anew, and weighted_loss read epoch 1's weights in epoch 3."""
        if self.is_full_epoch(epoch):
            return Selection.unweighted(self._all_ids(epoch))
        anchor = self._anchor(epoch)
        chosen = self._cache[1] if self._cache is not None and self._cache[0] == anchor \
            else self._select_pruned(anchor)
        return Selection(chosen.indices.copy(), chosen.weights.copy())

    def _count_kept(self, epoch: int, indices) -> None:
        """Count ``epoch``'s selection (None: every sample) into times kept and last kept epoch,
        once per epoch: only an epoch later than the last one counted is counted."""
        if epoch <= self._counted_through or not self.track_kept:
            return
        self._counted_through = epoch
        where = slice(None) if indices is None else self._rows(indices)
        self._times_kept[where] += 1
        self._last_kept[where] = epoch

    @property
    def times_kept(self) -> np.ndarray:
        """How many epochs each sample was selected in (read-only; see
        :meth:`sample_report`)."""
        return self._kept_view(self._times_kept, "times_kept")

    @property
    def last_kept_epoch(self) -> np.ndarray:
        """The latest epoch each sample was selected in (-1: never)."""
        return self._kept_view(self._last_kept, "last_kept_epoch")

    def _kept_view(self, array: np.ndarray, name: str) -> np.ndarray:
        if not self.track_kept:
            raise AttributeError(f"{name}: this strategy was built with track_kept=False, which counts "
                                 "no times kept")
        view = array.view()
        view.flags.writeable = False
        return view

    @property
    def bytes_per_sample(self) -> int:
        """Bytes this strategy holds per table row: the score table's fields, plus 8 for times
        kept and last kept epoch unless ``track_kept=False``."""
        return self.table.bytes_per_sample + (self._times_kept.itemsize + self._last_kept.itemsize) * self.track_kept

    def sample_report(self) -> dict[str, np.ndarray]:
        """Per-sample arrays, indexed by sample id: ``index``, ``score`` (what the strategy ranks
        by: see :func:`fastprune.prune.report.strategy_scores`), ``loss`` (the score table's EMA
        loss), ``seen`` (updates), ``times_kept`` and ``last_kept_epoch`` (-1: never).
        :func:`fastprune.prune.export_scores` writes it as CSV or .npz."""
        from .report import sample_report

        return sample_report(self)

    def _current_pruned(self, epoch: int) -> Selection:
        """The cached selection of a pruned ``epoch`` (chosen now if not cached): never handed out."""
        anchor = self._anchor(epoch)
        if self._cache is None or self._cache[0] != anchor:
            self._warn_if_unscored(epoch)  # a subset is chosen from the scores now
            self._cache = (anchor, self._select_pruned(anchor))
        return self._cache[1]

    def num_selected(self, epoch: int) -> int:
        """The exact size of ``select(epoch)`` given the current table; no side effects."""
        epoch = self._non_negative(epoch, "epoch")
        if self.is_full_epoch(epoch):
            return self.num_samples if self.sharding is None else self.sharding.min_shard_size
        anchor = self._anchor(epoch)
        if self._cache is not None and self._cache[0] == anchor:
            return len(self._cache[1])
        return self._count_pruned(anchor)

    def update(self, indices, losses, correct=None, *, defer: bool | None = None) -> int | None:
        """Record per-sample losses (and optionally correctness) of the current epoch. Accepts
        numpy arrays or torch tensors. Under torch.distributed every rank's updates are
        all-gathered first, so all ranks hold identical tables. Returns the number skipped.

        A duplicate index is one observation per occurrence, applied in order. A loss must be
        finite and within +-1e18; see the module docstring for ``skip_invalid``'s rule.

        Losses on a GPU (any non-CPU torch tensor) are not copied to the host here, which would
        make the CPU wait for the GPU every step: the update is staged on the device and applied
        before anything reads the scores (the next ``select``, ``num_selected``, ``state_dict``,
        ``self.table``'s fields) or at :meth:`flush`, with identical results; it then returns
        None, and an invalid value raises at that point, naming the call (``update() call 12 of
        epoch 3``). ``defer=True``/``False`` forces either path. Under a multi-rank
        torch.distributed group the gather still happens here, per call."""
        if defer is None:
            defer = hasattr(losses, "detach") and losses.device.type != "cpu"
        defer = check_bool(defer, "update: defer")  # "no" is truthy
        if self.distributed is not False and self.sharding is None:
            indices, losses, correct = gather_updates(indices, losses, correct, required=self.distributed is True,
                                                      agreement=self._agreement())
        skipped = self.table.update(indices, losses, correct, epoch=self._epoch, skip_invalid=self.skip_invalid,
                                    defer=defer)
        self._losses_received += len(indices)  # after the table's checks (a scalar id has no len); on the host
        return skipped

    def _agreement(self) -> Agreement:
        """What this rank's update() call must share with the other ranks' (checked in the gather);
        warns once when the consumer shards over ranks but no group gathers their losses."""
        if self._consumer_split > 1 and not self._warned_alone and group_world_size() == 1:
            self._warned_alone = True
            warnings.warn(f"{type(self).__name__}.update(): the selection is sharded over {self._consumer_split} "
                          "ranks but no torch.distributed group runs to gather their losses: each rank's scores "
                          "see its own shard only and the ranks' selections diverge (samples trained twice or "
                          "never); initialise the process group before the first update()", UsageWarning,
                          stacklevel=user_stacklevel())
        return Agreement(self._epoch, self.table.next_call_number(self._epoch), self._settings(),
                         self._order_note)

    def _settings(self) -> int:
        """A digest of config() (settings are fixed at construction), which every rank must share.
        A value JSON cannot hold counts by its type's name (its str() may hold an address, which
        differs between processes)."""
        if self._settings_digest is None:
            config = {k: v for k, v in self.config().items() if k != "sharding"}  # names this rank's shard
            named = json.dumps(config, sort_keys=True, default=lambda value: type(value).__qualname__)
            self._settings_digest = zlib.crc32(named.encode())
        return self._settings_digest

    def _note_order(self, seed: int | None, epoch: int, split: int) -> None:
        """A Loader or PrunedSampler sharding this strategy's selection over ``split`` ranks tells
        how it orders ``epoch`` (``seed``; None: unshuffled): the ranks' update() calls compare it."""
        self._consumer_split = split
        self._order_note = zlib.crc32(f"{seed}:{epoch}:{split}".encode()) or 1

    def flush(self) -> int:
        """Apply deferred updates now (see :meth:`update`); return the number of entries skipped.
        Reads of the scores do this themselves; call it to raise a deferred error early."""
        return self.table.flush()

    def weighted_loss(self, indices, losses, weights=None, *, correct=None) -> torch.Tensor:
        """One call for the end of a training step: ``update(indices, losses)`` and return
        ``(losses * weights).mean()``, the loss to backpropagate. ``losses``: per-sample (a torch
        tensor from ``reduction="none"``). ``weights``: the batch's loss weights (the Loader's
        ``weights``); by default they are looked up by sample id in the current epoch's selection
        (1 for a sample outside it), so a torch DataLoader loop needs only ``indices``.
        ``correct`` goes to ``update`` (Forgetting needs it)::

            loss = strategy.weighted_loss(indices, criterion(model(x), y))   # reduction="none"
            loss.backward()
        """
        if not hasattr(losses, "detach"):
            raise TypeError(f"losses must be a torch tensor (the per-sample loss to backpropagate), "
                            f"got {type(losses).__name__}")
        import torch

        if weights is not None:  # checked first: an error leaves the table untouched
            # float32 at least, as looked-up weights are: a bf16 loss rounded InfoBatch's 9.94 to 9.9375
            weights = torch.as_tensor(weights).to(losses.device, torch.promote_types(losses.dtype, torch.float32))
            if weights.shape != losses.shape:
                raise ValueError(f"weights has shape {tuple(weights.shape)} but losses {tuple(losses.shape)}")
        self.update(indices, losses, correct)  # deferred for a GPU loss: the weights read no scores
        if weights is None:
            weights = self._weights_of(indices, losses.device)
            if weights is None:  # all weights are 1
                return losses.mean()
        return (losses * weights).mean()

    def _weights_of(self, indices, device):
        """The current epoch's weights of ``indices`` on ``device``, or None when they are all 1."""
        if self.is_full_epoch(self._epoch):
            return None
        selection = self._current_pruned(self._epoch)
        dense = self._dense_weights
        if dense is None or dense[0] is not selection or dense[1] != device:
            if bool((selection.weights == 1).all()):
                self._dense_weights = (selection, device, None)
            else:
                import torch

                full = np.ones(self.table.num_samples, dtype=np.float32)
                full[self._rows(selection.indices)] = selection.weights
                self._dense_weights = (selection, device, torch.from_numpy(full).to(device))
            dense = self._dense_weights
        if dense[2] is None:
            return None
        import torch

        if self.sharding is not None:  # rows of this rank's shard (sharded strategies weigh 1 today)
            indices = torch.from_numpy(self._rows(as_indices(indices)))
        ids = indices.to(device) if isinstance(indices, torch.Tensor) else torch.from_numpy(as_indices(indices))
        return dense[2][ids.to(device).long()]

    def is_full_epoch(self, epoch: int) -> bool:
        epoch = check_epoch(epoch)
        if epoch < self.warmup_epochs or self._scheduled(epoch) == 1.0:
            return True
        return bool(self.final_full_epochs) and epoch >= self.epochs - self.final_full_epochs

    def _scheduled(self, epoch: int) -> float | None:
        schedule = self.keep_schedule
        return schedule[epoch] if schedule is not None and epoch < len(schedule) else None

    # ---- checkpoints ----------------------------------------------------------------------

    def __getstate__(self) -> dict:
        """The instance's state for pickle and copy, without the timing wrappers ``fit`` puts on
        its methods while it runs: a snapshot taken in an ``on_epoch_end`` (deepcopy) called the
        original's methods through them, and pickling one failed on them."""
        # object's own state (Python 3.11+): the __dict__, and a subclass's __slots__ beside it
        state = super().__getstate__() if hasattr(object, "__getstate__") else self.__dict__.copy()
        attributes = state[0] if isinstance(state, tuple) else state
        if not attributes:
            return state
        attributes = dict(attributes)
        for name, value in list(attributes.items()):
            if getattr(value, "fastprune_timed", False):
                if value.fastprune_masks is None:
                    del attributes[name]
                else:
                    attributes[name] = value.fastprune_masks
        return (attributes, state[1]) if isinstance(state, tuple) else attributes

    def _inert_settings(self) -> set[str]:
        """Settings ``config()`` records that have no effect in this strategy's mode: a resume
        does not compare them and the repr leaves them out."""
        return set()

    def config(self) -> dict:
        """The settings a checkpoint must agree with to be restored into this strategy."""
        config = {"strategy": type(self).__name__, "num_samples": self.num_samples, "keep": self.keep,
                  "seed": self.seed, "decay": self.table.decay, "warmup_epochs": self.warmup_epochs,
                  "reselect_every": self.reselect_every, "labels": self._labels_digest, "epochs": self.epochs,
                  "final_full_epochs": self.final_full_epochs, "skip_invalid": self.skip_invalid}
        if self.keep_schedule is not None:  # absent otherwise: checkpoints from before it still load
            config["keep_schedule"] = list(self.keep_schedule)
        if self.sharding is not None:  # absent when replicated, as in checkpoints from before it
            config["sharding"] = f"rank {self.shard_rank}'s shard of {self.sharding.describe()}"
        if self.table.dtype != "float32":  # absent at the default, as in checkpoints from before it
            config["score_dtype"] = self.table.dtype
        if not self.track_kept:
            config["track_kept"] = False
        return config

    def state_dict(self) -> dict:
        import torch

        cache = None
        if self._cache is not None:
            anchor, sel = self._cache
            cache = {"anchor": anchor, "indices": torch.from_numpy(sel.indices.copy()),
                     "weights": torch.from_numpy(sel.weights.copy())}
        kept = None if not self.track_kept else {
            "times": torch.from_numpy(self._times_kept.astype(np.int64)),
            "last_epoch": torch.from_numpy(self._last_kept.copy()), "counted_through": self._counted_through}
        state = {"format": _STATE_FORMAT, "config": self.config(), "epoch": self._epoch,
                 "table": self.table.state_dict(), "cache": cache, "kept": kept}
        if self.sharding is not None:  # which rows these are, for a report read from the checkpoint
            state["shard"] = {"rank": self.shard_rank, "world_size": self.sharding.world_size}
        return state

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):  # checkpoint.get("strategy") of a checkpoint without one: None
            raise TypeError(f"{type(self).__name__}.load_state_dict takes the dict state_dict() returned, "
                            f"got {type(state).__name__}")
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a fastprune strategy checkpoint (format {state.get('format')!r})")
        mine, theirs = self.config(), state["config"]
        if theirs.get("sharding") != mine.get("sharding"):
            raise ValueError(f"checkpoint holds {theirs.get('sharding') or 'a replicated table'} but this strategy "
                             f"is {mine.get('sharding') or 'replicated'}: a sharded run resumes with the same "
                             "world size, each rank from its own checkpoint (re-sharding is not supported)")
        differ, unchecked = {}, []
        for k in [*mine, *(k for k in theirs if k not in mine)]:
            if k in self._inert_settings():
                continue  # recorded, but without effect in this mode: any value resumes
            if k in _LATER_KEYS and k not in theirs:
                unchecked.append(k)  # a checkpoint from before the key existed
                continue
            a, b = theirs.get(k, _ABSENT_MEANS.get(k)), mine.get(k, _ABSENT_MEANS.get(k))
            if a != b:
                differ[k] = (a, b)
        if differ:
            raise ValueError("checkpoint was taken with different settings (checkpoint, this strategy): "
                             + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in differ.items()))
        self.table.load_state_dict(state["table"])
        _warn_older_state(type(self).__name__, unchecked, counted_kept="kept" in state or not self.track_kept)
        self._epoch = self._non_negative(state["epoch"], "checkpoint epoch")
        self._started = None  # the resumed epoch's updates so far are not counted here
        self._load_kept(state.get("kept"))
        cache = state["cache"]
        self._cache = None if cache is None else (
            self._non_negative(cache["anchor"], "checkpoint selection epoch"),
            self._checked_selection(np.asarray(cache["indices"]), np.asarray(cache["weights"])))

    def _load_kept(self, kept) -> None:
        """Times kept and last kept epochs from a checkpoint; one written before they were counted
        has none (\"kept\" absent): they restart at zero, counting from the next selection."""
        if not self.track_kept:
            return
        if kept is None:
            self._times_kept[:] = 0
            self._last_kept[:] = -1
            self._counted_through = self._epoch
            return
        times, last = (np.asarray(kept[name]) for name in ("times", "last_epoch"))
        rows = self.table.num_samples
        if times.shape != (rows,) or last.shape != (rows,):
            raise ValueError(f"checkpoint times kept / last kept epochs have shapes {times.shape}, "
                             f"{last.shape}, expected ({rows},)")
        if (times < 0).any() or (times > np.iinfo(np.uint32).max).any() or (last < -1).any():
            raise ValueError("checkpoint times kept or last kept epochs hold negative values")
        self._times_kept = times.astype(np.uint32)
        self._last_kept = last.astype(np.int32)
        self._counted_through = int(kept["counted_through"])

    def _checked_selection(self, indices: np.ndarray, weights: np.ndarray) -> Selection:
        """A cached selection from a checkpoint, refused unless it could have come from this
        strategy: the loader would gather these indices without another look."""
        if indices.ndim != 1 or weights.shape != indices.shape or indices.dtype.kind not in "iu":
            raise ValueError(f"checkpoint selection: indices {indices.dtype}{list(indices.shape)} and "
                             f"weights {weights.dtype}{list(weights.shape)} are not two matching 1-D arrays")
        outside = (indices < 0) | (indices >= self.num_samples)
        if outside.any():
            raise ValueError(f"checkpoint selection holds index {int(indices[outside][0])} outside "
                             f"[0, {self.num_samples}) ({int(outside.sum())} such indices)")
        if self.sharding is not None:
            self._rows(indices)  # every one this rank's, else an IndexError naming the first
        weights = weights.astype(np.float32)
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("checkpoint selection holds weights that are negative, NaN or infinite")
        return Selection(indices.astype(np.int64), weights)

    # ---- what subclasses provide ----------------------------------------------------------

    def _bandit_score(self) -> tuple[float, bool] | None:
        """(c, use_std) when the strategy ranks by the table's bandit score column, else None."""
        return None

    def _prepare(self, epoch: int):
        """Per-selection context shared by all class pools (e.g. the score array)."""
        return None

    def _choose(self, context, epoch: int, pool: np.ndarray | None, quota: int, stream: int) -> Selection:
        """Choose ``quota`` samples from ``pool`` (None: all samples); indices are pool positions."""
        raise NotImplementedError

    def _count_pruned(self, epoch: int) -> int:
        return self._quota(epoch)

    # ---- helpers --------------------------------------------------------------------------

    def _quota(self, epoch: int) -> int:
        """How many samples a pruned ``epoch`` keeps (at least one: checked at construction); a
        sharded strategy keeps an equal share of it on every rank (at least one)."""
        scheduled = self._scheduled(epoch)
        quota = self.num_kept if scheduled is None else self._kept_count(scheduled, f"keep_schedule[{epoch}]")
        return quota if self.sharding is None else max(1, quota // self.sharding.world_size)

    def _pool_quotas(self, epoch: int) -> np.ndarray:
        """Each class pool's share of the epoch's quota (class-balanced selection)."""
        return _quotas(self._pool_sizes, self._quota(epoch), self._tie_order(epoch, 0))

    def _tie_order(self, epoch: int, part: int) -> np.ndarray:
        """The epoch's order of the class pools for spare samples (``part``: which split; a
        sharded rank draws its own)."""
        stream = part if self.sharding is None else ((self.shard_rank + 1) << 32) + part
        return tie_order(self.seed, epoch, stream, len(self._pool_sizes))

    def _random_parts(self, quotas: np.ndarray, epoch: int) -> np.ndarray | None:
        """Per class pool, how many of its quota are drawn uniformly (a strategy that mixes in a
        uniform part); None for the others."""
        return None

    def _select_pruned(self, epoch: int) -> Selection:
        selection = self._select_rows(epoch)
        if self.sharding is None:
            return selection
        ids = self.sharding.global_ids(self.shard_rank, selection.indices)
        self._rows_of = (ids, selection.indices)  # so that counting them maps no id back
        return Selection(ids, selection.weights)

    def _select_rows(self, epoch: int) -> Selection:
        """The pruned selection as rows of the table (sample ids, unless sharded)."""
        context = self._prepare(epoch)
        # each rank of a sharded strategy draws from its own streams (rank + 1 in the high bits)
        base = 0 if self.sharding is None else (self.shard_rank + 1) << 32
        if self._pools is None:
            return self._choose(context, epoch, None, self._quota(epoch), stream=base)
        parts = []
        quotas = self._pool_quotas(epoch)
        random_parts = self._random_parts(quotas, epoch)
        for c, (pool, quota) in enumerate(zip(self._pools, quotas)):
            extra = {} if random_parts is None else {"k_rand": int(random_parts[c])}
            part = self._choose(context, epoch, pool, int(quota), stream=base + c + 1, **extra)
            parts.append(Selection(pool[part.indices], part.weights))
        return Selection(np.concatenate([p.indices for p in parts]),
                         np.concatenate([p.weights for p in parts]))

    # ---- sharding -------------------------------------------------------------------------

    def _sharding_of(self, distributed, num_samples) -> tuple[Sharding | None, int]:
        """(Sharding, rank) for distributed="sharded"; (None, 0) for the replicated modes."""
        if not is_sharded(distributed):
            # by identity: 1 == True and 0 == False, but distributed=1 is no setting
            if not (distributed is True or distributed is False or (isinstance(distributed, str)
                                                                     and distributed == "auto")):
                raise ValueError(f"distributed must be True, False, 'auto', 'sharded' or ('sharded', rank, "
                                 f"world_size), got {distributed!r}")
            return None, 0
        if not self.shardable:
            raise ValueError(f"distributed='sharded' is not supported by {type(self).__name__}: its selection "
                             "size is not a fixed quota, so ranks would fall out of step (EpsilonGreedy, UCB, "
                             "UniformRandom, EL2N, Forgetting and Full are)")
        rank, world = sharded_ranks(distributed)
        return Sharding(num_samples, world, self.seed), rank

    def _rows(self, ids) -> np.ndarray:
        """Table rows of sample ``ids`` (themselves unless sharded; an IndexError names the first
        id another rank owns)."""
        if self.sharding is None:
            return ids
        known = self.__dict__.get("_rows_of")
        if known is not None and known[0] is ids:  # the latest selection, whose rows are known
            return known[1]
        return self.sharding.local(ids, self.shard_rank)

    def _all_ids(self, epoch: int) -> np.ndarray:
        """A full epoch's samples: all of them; sharded, this rank's shard cut to the smallest
        shard's size (every rank the same steps), the spare row a different one each epoch."""
        if self.sharding is None:
            return np.arange(self.num_samples, dtype=np.int64)
        rows = np.arange(self.table.num_samples, dtype=np.int64)
        if len(rows) > self.sharding.min_shard_size:
            rows = np.delete(rows, epoch % len(rows))
        return self.sharding.global_ids(self.shard_rank, rows)

    def _anchor(self, epoch: int) -> int:
        """The epoch whose selection ``epoch`` reuses (reselection every k epochs)."""
        start = self.warmup_epochs
        return start + (epoch - start) // self.reselect_every * self.reselect_every

    def _class_pools(self, labels):
        """(pools, their sizes, a digest of the class partition for config()); Nones without labels."""
        if labels is None:
            return None, None, None
        labels = np.asarray(to_numpy(labels))
        if labels.shape != (self.num_samples,):
            raise ValueError(f"labels must have one entry per sample ({self.num_samples}), "
                             f"got shape {labels.shape}")
        if labels.dtype.kind in "fc":  # regression targets would make a class of every value
            bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels.real)))
            if len(bad):
                raise ValueError(f"labels must be class ids, got {labels[bad[0]]!r} for sample {int(bad[0])}: "
                                 "class-balanced selection needs classes, not a continuous target")
        classes, inverse = np.unique(labels, return_inverse=True)
        digest = hashlib.sha256(np.ascontiguousarray(inverse, dtype=np.int64).tobytes()).hexdigest()[:16]
        if self.sharding is not None:  # pools of this rank's rows
            inverse = inverse[self.sharding.ids(self.shard_rank)]
        order = np.argsort(inverse, kind="stable")
        sizes = np.bincount(inverse, minlength=len(classes))
        pools = np.split(order.astype(np.int64), np.cumsum(sizes)[:-1])
        return pools, sizes, f"{len(classes)} classes, sha256 {digest}"

    def _checked_schedule(self, schedule) -> tuple[float, ...] | None:
        if schedule is None:
            return None
        if isinstance(schedule, (str, bytes)) or not hasattr(schedule, "__iter__"):
            raise TypeError(f"keep_schedule must be a sequence of kept fractions, one per epoch, got "
                            f"{type(schedule).__name__} {schedule!r:.40}; for one fraction throughout, pass keep=")
        fractions = tuple(check_fraction(value, f"keep_schedule[{e}]") for e, value in enumerate(schedule))
        for e, fraction in enumerate(fractions):
            self._kept_count(fraction, f"keep_schedule[{e}]={fraction}")
        return fractions

    def _warn_if_never_pruned(self) -> None:
        """A run whose warm-up (or scoring) and final full epochs cover all ``epochs`` trains on
        all data every epoch: a costly Full, which a benchmark would report as this strategy."""
        if self.epochs is None or (not self.uses_scores and self.keep >= 1):  # Full
            return
        full = self.warmup_epochs + self.final_full_epochs
        if full >= self.epochs:
            warnings.warn(f"{type(self).__name__}: warm-up/scoring ({self.warmup_epochs}) and final full "
                          f"({self.final_full_epochs}) epochs cover all {self.epochs} epochs: it never prunes",
                          UsageWarning, stacklevel=user_stacklevel())

    def _kept_count(self, fraction: float, described: str) -> int:
        """round(fraction * N), refused with ``described`` when that keeps no sample."""
        count = int(round(fraction * self.num_samples))
        if count < 1:
            raise ConfigError(f"{described} keeps no sample out of {self.num_samples}")  # a ValueError too
        return count

    @staticmethod
    def _non_negative(value, name: str, low: int = 0) -> int:
        """An epoch count or index: an integer in [low, MAX_EPOCH] (the score table stores epochs as
        int32); integral floats such as 3.0 are accepted, 2.5 refused rather than cut."""
        try:  # True is no count of epochs
            ok = not isinstance(value, (bool, np.bool_)) and int(value) == value and low <= value <= MAX_EPOCH
        except (TypeError, ValueError, OverflowError):  # None, "3", nan, inf
            ok = False
        if not ok:
            raise ValueError(f"{name} must be an integer in [{low}, {MAX_EPOCH}], got {value!r}")
        return int(value)

    @classmethod
    def _positive(cls, value, name: str) -> int:
        """A count of epochs that cannot be 0 (a run's length, a selection's span): 0 is refused (a
        run of epochs=0 had warned 'epochs 0..-1' at its first epoch)."""
        return cls._non_negative(value, name, low=1)

    def __repr__(self) -> str:
        # the strategy's own settings (eps, c, delta...), then the epoch phases and reselection when set
        # (not every option: labels or a keep_schedule would not fit on a line)
        config, shared = self.config(), Strategy.config(self)
        shown = {"num_samples": self.num_samples, "keep": self.keep,
                 **{k: v for k, v in config.items() if k not in shared and k not in self._inert_settings()},
                 "seed": self.seed}
        shown.update({k: getattr(self, k) for k in ("epochs", "warmup_epochs", "final_full_epochs")
                      if getattr(self, k)})
        if self.reselect_every != 1:
            shown["reselect_every"] = self.reselect_every
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"
