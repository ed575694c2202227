"""fastprune.Loader: batches of an epoch's selected samples, assembled natively, prefetched.

Per epoch the loader asks the sampler for the epoch's selection (sample ids + weights), shuffles
its order from (seed, epoch), takes this rank's shard, and hands the batches to ``threads``
producer threads. A producer builds whole batches: native gather/decode (GIL released) then the
numba transforms (nogil). A free producer takes the next unstarted batch, and batches are
delivered in order; a batch's pixels depend only on its samples, the seed and the epoch, so
results are identical whatever the thread count. At most ``threads x (prefetch + 1)`` batches are
started and not yet handed out, which bounds memory.

Why producer threads rather than one producer and the native thread pool inside each gather:
the producers also run the transforms in parallel. Measured on 2 cores (2026-12-03, 2 threads,
images/s): raw 32 px 180k vs 156k with the pool; 256 px JPEG RandomResizedCrop 224 2,084 vs 1,862,
CenterCrop 2,527 vs 2,241.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import math
import os
import threading
import warnings
import weakref
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from .._args import check_bool, check_epoch, check_positive_int, check_seed
from .._cpus import lower_thread_priority
from .._devices import resolve_device
from ..errors import StoreError, UsageWarning, user_stacklevel
from ..prune.distributed import alone_when_built, check_still_alone, resolve_ranks, shard
from ..prune import selections
from ..prune.sharding import consumer_shard
from ..random_streams import epoch_permutation
from ._readahead import Readahead
from ._source import open_source
from .device import DeviceFeed, PinnedBuffers
from .transforms import BatchTransform, Normalize, RandomHorizontalFlip, _ResizedCrop, stream_key

__all__ = ["Loader", "Batch"]

_POLL_S = 0.05  # how often blocked producers/consumers re-check for shutdown
_DECODE_FAILURE = "JPEG decode of "  # how the native gather's errors about a stored sample begin
# The first round of each epoch's batches gathers in turns on the whole native pool (see
# _GatherTurns). False: each producer gathers alone; for A/B measurements only
# (benchmarks/epoch_start.py, benchmarks/gpu.py --fit-first-round), read when a Loader is made.
POOLED_FIRST_ROUND = True


class Batch(NamedTuple):
    images: torch.Tensor  # [B, 3, H, W] float (after Normalize) or uint8 [B, H, W, 3]
    labels: torch.Tensor | None  # int64 [B]; a FloatField's float64 [B]; an NDArrayField's [B, *shape]
    indices: torch.Tensor  # int64 [B] sample ids in the store
    weights: torch.Tensor  # float32 [B] per-sample loss weights from the sampler

    def __repr__(self) -> str:
        """Shapes, types and devices: a notebook cell ending in a batch printed every value of
        every tensor (160 lines for 64 small images)."""
        parts = ", ".join(f"{name}={_tensor_summary(value)}" for name, value in zip(self._fields, self))
        return f"Batch({parts})"


def _tensor_summary(value) -> str:
    """'uint8[64, 28, 28, 3]' (plus ' cuda:0' off the CPU); anything else as its repr."""
    if not isinstance(value, torch.Tensor):
        return repr(value)
    dtype = str(value.dtype).removeprefix("torch.")
    where = "" if value.device.type == "cpu" else f" {value.device}"
    return f"{dtype}[{', '.join(map(str, value.shape))}]{where}"


class _AllSamples:
    """The default sampler: every sample, weight 1."""

    def __init__(self, num_samples: int):
        self.num_samples = num_samples

    def select(self, epoch: int):
        return np.arange(self.num_samples, dtype=np.int64), np.ones(self.num_samples, np.float32)

    def num_selected(self, epoch: int) -> int:
        return self.num_samples


class Loader:
    """Iterate an epoch of a store as :class:`Batch` es.

    Args:
        store_or_path: a ``fastprune.Store`` or the path of a .beton-compatible file.
        batch_size: samples per batch.
        sampler: ``select(epoch) -> Selection(indices, weights)`` and ``num_selected(epoch)``;
            None = all samples, weight 1.
        transforms: list of :mod:`fastprune.loader.transforms`; a resized crop placed first is
            fused into the native decode (needed when images differ in size).
        shuffle: shuffle each epoch's selection from (seed, epoch).
        drop_last: drop the last, incomplete batch.
        even_batches: split the epoch into the same number of batches, ``ceil(n / batch_size)``,
            of near-equal size (they differ by at most one sample) instead of full batches and a
            remainder. A pruned epoch's remainder can be tiny (42,000 samples in batches of 512
            leave 16), and one 16-sample step at a high learning rate measurably set the model
            back (see ``fastprune.train.make_loaders``). Excludes ``drop_last``.
        seed: seeds the order and every augmentation.
        threads: producer threads, each building whole batches, and the threads of the native
            pool a pass's first ``threads`` batches are gathered on, in turns (so that an epoch's
            first batch is not one core's work). Default: the CPUs this process may use when the
            store holds JPEGs (a distributed rank's share of them: the machine's ranks, as its
            launcher counts them in ``LOCAL_WORLD_SIZE``, MPI's, DeepSpeed's or Slurm's variables,
            split the CPUs they may run on); at most 4 when it holds raw pixels only, whose
            batches cost little native work next to each producer's Python (on the H200's 16
            cores, raw 28 px batches fed 528k img/s with 4 threads and 244k with 16, in windows
            that also timed the producers' start-up: benchmarks/results/gpu_h200.md; to be
            re-measured).
        prefetch: how far producers may run ahead of the consumer: at most ``threads x (prefetch
            + 1)`` batches are started and not yet handed out (being built or finished), which
            bounds memory.
        thread_nice: how many nice steps (0-19) below the iterating thread's priority the
            producer threads (and the pool's) run, so that the training loop's own thread, which launches the
            GPU's work, is not queued behind decoding when every core is busy (Linux; ignored
            elsewhere). "auto" (default): 10 when ``device`` is CUDA, else 0 (a CPU-trained
            model's threads and the decoding then share the cores evenly).
        device: "cpu" (default), "cuda", "cuda:N", a torch.device, or "auto" (CUDA when
            available): batches are handed out on it (see ``normalize_on``). CUDA where there is
            none is a ConfigError.
        normalize_on: where a final :class:`Normalize` runs. "device": the host builds uint8
            batches in pinned, recycled buffers, copies them on a dedicated CUDA stream
            ``prefetch`` batches ahead of use, and normalizes on the device (4x fewer bytes over
            PCIe, copies overlap compute; values identical to "host"). "host": normalize on the
            CPU and copy float batches. "auto" (default): "device" for CUDA, "host" for CPU.
        distributed: "auto" (default: shard across the running torch.distributed group, if
            any), False or None (no sharding), True (the group must exist) or (rank, world_size).
            Every rank shuffles identically and takes a disjoint, equal-length shard (the
            remainder of the selection past a multiple of world_size is dropped that epoch).
            A sharded strategy (``distributed="sharded"``) selects this rank's own samples:
            the loader then visits that selection whole, on the strategy's rank.
        image_field / label_field: field names (default: the only image field; "label" if it is
            an int, float or array field, else the only integer field other than ``index`` (the
            sample ids); where several fields could be the labels, none, with a warning). Integer
            labels arrive as int64; targets that are not classes as stored: a FloatField (a
            regression target) as float64 [B], an NDArrayField (multi-label, several outputs) as
            [B, *shape] in its dtype (docs/guide.md, "Other tasks").
        max_image_pixels: a JPEG whose header claims more pixels is refused (``StoreError``, a
            ValueError, naming the file and the sample) before anything is allocated; default
            2**27 (a 403 MB RGB image), so a damaged or hostile header cannot make the loader
            allocate gigabytes. A transform making larger images is refused when the loader
            is built.
        readahead: when a pass starts and some of its samples are not in memory (the first
            epoch after a reboot, a store larger than RAM), a thread asks the OS for the next
            batches' bytes ahead of the producers, so their reads are in flight together rather
            than one page fault per thread at a time (benchmarks/cold_read.py). A pass over a
            store in memory sends no hints. False: never.

    ``len(loader)`` is the number of batches of the next epoch (``loader.epoch``), computed from
    ``sampler.num_selected``. A complete pass advances the epoch by one; breaking out of a pass
    does not (the next iteration repeats that epoch unless you call ``set_epoch``).

    Frameworks that inspect a torch ``DataLoader`` (PyTorch Lightning, for train, val, test and
    predict loaders) find ``sampler`` (the sampler given, or the loader's all-samples default)
    and ``batch_sampler = None``, as on a DataLoader that batches by itself: they leave the
    Loader as it is and never wrap or replace its sampler.
    """

    batch_sampler = None  # DataLoader's attribute; Lightning reads it for every non-training loader

    def __init__(self, store_or_path, batch_size: int, *, sampler=None,
                 transforms: Sequence[BatchTransform] = (), shuffle: bool = True, drop_last: bool = False,
                 even_batches: bool = False, seed: int = 0, threads: int | None = None, prefetch: int = 2,
                 thread_nice: int | str = "auto", device: str | torch.device = "cpu", normalize_on: str = "auto",
                 distributed: bool | str | tuple[int, int] | None = "auto",
                 image_field: str | None = None, label_field: str | None = None, max_image_pixels: int = 1 << 27,
                 readahead: bool = True):
        batch_size = check_positive_int(batch_size, "batch_size")
        if threads is not None:
            threads = check_positive_int(threads, "threads")
        prefetch = check_positive_int(prefetch, "prefetch")
        self.batch_size = int(batch_size)
        self.shuffle = check_bool(shuffle, "shuffle")
        self.drop_last = check_bool(drop_last, "drop_last")
        self.even_batches = check_bool(even_batches, "even_batches")
        self.readahead = check_bool(readahead, "readahead")
        if self.drop_last and self.even_batches:
            raise ValueError("drop_last and even_batches exclude each other: drop_last keeps only full "
                             "batches, even_batches splits every sample into near-equal batches")
        self.seed = check_seed(seed)
        self.prefetch = int(prefetch)
        # as every entry point reads it; a plain "cuda" stays the current device (DDP: set_device(rank) later)
        self.device = resolve_device(device, pin_index=False)
        self.thread_nice = _check_thread_nice(thread_nice, self.device)
        self.rank, self.world_size = resolve_ranks(distributed)
        self._alone = alone_when_built(distributed, self.world_size)
        self.normalize_on = _check_normalize_on(normalize_on, self.device)
        self.transforms = _check_transforms(transforms)
        max_image_pixels = check_positive_int(max_image_pixels, "max_image_pixels")
        self._source = open_source(store_or_path, image_field, label_field, threads=threads,
                                   max_pixels=max_image_pixels, nice=self.thread_nice)
        self.threads = self._source.gather.threads  # threads=None: default_threads of the store
        # Every buffer that can be in flight stays in its pool (batches started ahead of the consumer,
        # copying ahead, the one in use and the one before it): allocating pinned memory again costs
        # milliseconds, a large array fresh from mmap its page faults.
        in_flight = self.threads * (self.prefetch + 1)
        self._pinned = PinnedBuffers(keep=in_flight + self.prefetch + 2) \
            if self.device.type == "cuda" and self.normalize_on == "device" else None
        pin = self.device.type == "cuda" and self.normalize_on == "host"  # float batches copied from pinned memory
        self.transforms = [t._for_loader(in_flight + 3, pin) if isinstance(t, Normalize) else t for t in self.transforms]
        self._stream = None  # the CUDA stream batches are copied on (_side_stream)
        self._pooled_gather = POOLED_FIRST_ROUND
        if self._source.num_samples == 0:
            raise ValueError(f"the store {_store_name(store_or_path)} holds no samples: nothing to load")
        # Any: a strategy, a PrunedSampler-like object of the user's, or every sample in order
        self.sampler: Any = sampler if sampler is not None else _AllSamples(self._source.num_samples)
        _check_sampler(self.sampler, self._source.num_samples)
        # a sharded strategy (distributed="sharded") selects this rank's samples: visit them whole
        sharding, self.rank, self.world_size = consumer_shard(self.sampler, self.rank, self.world_size, "Loader")
        self._split = 1 if sharding is not None else self.world_size
        self._alone = self._alone and sharding is None
        _check_batchable(self._source, self.transforms, max_image_pixels)
        self._epoch = 0

    # -- epochs and lengths ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next iteration will run."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        self._epoch = check_epoch(epoch)
        # counted, so that a pass running now does not move the epoch on past this one
        self._epochs_set = getattr(self, "_epochs_set", 0) + 1
        self._epoch_chosen = True  # the next pass runs the epoch asked for: no replay warning

    @property
    def num_samples(self) -> int:
        return self._source.num_samples

    def samples_in_epoch(self, epoch: int) -> int:
        """Samples this rank loads in ``epoch``."""
        per_rank = selections.num_selected(self.sampler, check_epoch(epoch)) // self._split
        if self.drop_last:
            return per_rank // self.batch_size * self.batch_size
        return per_rank

    def batches_in_epoch(self, epoch: int) -> int:
        per_rank = selections.num_selected(self.sampler, check_epoch(epoch)) // self._split
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __len__(self) -> int:
        return self.batches_in_epoch(self._epoch)

    def steps_for_epochs(self, start: int, stop: int) -> int:
        """Total batches of epochs [start, stop): the step count an LR schedule needs."""
        if not 0 <= start <= stop:
            raise ValueError(f"steps_for_epochs needs 0 <= start <= stop, got {start}, {stop}")
        return sum(self.batches_in_epoch(e) for e in range(start, stop))

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample ids, weights) this rank visits in ``epoch``, in order. With a pruning sampler
        this is its ``select(epoch)``: the subset is chosen from the scores so far and the strategy
        moves to ``epoch``, so ask for the epoch about to run, not one ahead (its subset would
        miss the losses of the epochs between)."""
        epoch = check_epoch(epoch)
        ids, weights = selections.checked_selection(self.sampler, epoch, self._source.num_samples)
        if self.shuffle:
            order = epoch_permutation(self.seed, epoch, len(ids))
            ids, weights = ids[order], weights[order]
        if self._split > 1:
            ids, weights = (shard(a, self.rank, self.world_size) for a in (ids, weights))
        if self.drop_last:
            keep = len(ids) // self.batch_size * self.batch_size
            ids, weights = ids[:keep], weights[:keep]
        return np.ascontiguousarray(ids), np.ascontiguousarray(weights)

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        if self._alone:
            check_still_alone("Loader")
        epoch = self._epoch
        self._check_replay(epoch)
        ids, weights = self.epoch_order(epoch)
        if self._split > 1 and hasattr(self.sampler, "_note_order"):  # a pass: the ranks' update() calls check it
            self.sampler._note_order(self.seed if self.shuffle else None, epoch, self._split)
        bounds = batch_bounds(len(ids), self.batch_size, self.even_batches)
        last = len(bounds) - 1  # batches in the epoch
        set_before = getattr(self, "_epochs_set", 0)

        def advance():  # unless set_epoch was called during the pass: the epoch it set stands
            if getattr(self, "_epochs_set", 0) == set_before:
                self._epoch = epoch + 1

        run = _EpochRun(self._batch_builder(epoch), ids, weights, bounds, self.threads, self.prefetch, self.thread_nice,
                        pooled=self._pooled_gather, readahead=self.readahead,  # closes itself if interrupted starting
                        cuda_device=self.device.index if self.device.type == "cuda" else None)
        try:  # right after the run exists: a Ctrl-C before the try left its threads polling until exit
            if last == 0:
                advance()
            if self.normalize_on == "device":
                normalize = self._pipeline()[1]
                batches = DeviceFeed(self.device, normalize, self.prefetch, self._pinned,
                                     self._side_stream()).run(run.batches())
            else:
                batches = map(self._to_device, run.batches())
            for number, batch in enumerate(batches, 1):
                if number == last:
                    # Handed out in full: the epoch is over even for a consumer that stops after
                    # len() batches without asking for more (Lightning, zip); an epoch left
                    # before its last batch is run again.
                    advance()
                yield batch
        finally:  # no module globals here: at interpreter teardown they may be None already
            try:
                run.close()
            except KeyboardInterrupt:  # a second Ctrl-C, in close(): nothing else closes the pass before
                run.close()  # the process exits, and its producers would poll on, holding their batches
                raise

    def _check_replay(self, epoch: int) -> None:
        """A pass over ``epoch`` starts: the strategy warns if it repeats a subset chosen before (a
        Loader built anew starts at epoch 0; a pass of this one left early runs its epoch again)."""
        chosen, self._epoch_chosen = getattr(self, "_epoch_chosen", False), False
        again, self._last_pass_epoch = getattr(self, "_last_pass_epoch", None) == epoch, epoch
        if hasattr(self.sampler, "_check_pass_epoch"):
            self.sampler._check_pass_epoch(epoch, "Loader", chosen=chosen, cause=None if not again else (
                "this Loader's pass over it stopped before its last batch; a loop leaving epochs early sets them"))

    def _pipeline(self) -> tuple[list, Normalize | None]:
        """(transforms the producer threads run, the Normalize run after the copy or None): with
        normalize_on="device" a final Normalize moves to the device stage."""
        last = self.transforms[-1] if self.transforms else None
        if self.normalize_on == "device" and isinstance(last, Normalize):
            return self.transforms[:-1], last
        return self.transforms, None

    def _batch_builder(self, epoch: int) -> "_BatchBuilder":
        host = self._pipeline()[0]
        streams = [stream_key(self.seed, epoch, salt) for salt in range(len(host))]
        return _BatchBuilder(self._source, host, streams, epoch, self._pinned)

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        return Batch(*(None if t is None else t.to(self.device, non_blocking=True) for t in batch))

    def __repr__(self) -> str:
        sampler = "" if isinstance(self.sampler, _AllSamples) else f"sampler={self.sampler!r}, "  # what prunes it
        return (f"Loader({self.num_samples} samples, batch_size={self.batch_size}, epoch={self._epoch}, {sampler}"
                f"threads={self.threads}, transforms={list(self.transforms)}, device={self.device}"
                f"{', closed' if self._source.closed else ''})")

    def close(self) -> None:
        """Stop this loader's native threads, and close the store file it opened from a path (a
        ``Store`` passed in stays open: it is its caller's). A pass started afterwards raises
        StoreError. ``with Loader(...) as loader:`` closes it at the block's end."""
        self._source.close()

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _side_stream(self):
        """The CUDA stream this loader copies on, made once (see DeviceFeed); None on the CPU."""
        if self.device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    # -- pickling: by the store's path and the settings; the other side reopens the file --------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stream"] = None  # a CUDA stream is this process's: the copy makes its own
        source = state.pop("_source")  # a native gather over this process's mapping: not picklable
        # the store by path and identity (Store.__reduce__): every copy reopens a Store of its own,
        # which it closes; sharing the original's (copy.copy, or pickled beside it) closed the
        # caller's store with the copy
        state["_source_settings"] = (source.owner.__reduce__(), source.image_field, source.label_field,
                                     source.gather.threads, source.gather.max_pixels, source.gather.nice)
        return state

    def __setstate__(self, state: dict) -> None:
        (reopen, args), image_field, label_field, threads, max_pixels, nice = state.pop("_source_settings")
        self.__dict__.update(state)
        self._source = open_source(reopen(*args), image_field, label_field, threads=threads, max_pixels=max_pixels,
                                   nice=nice)
        self._source.owns_store = True  # reopened for this copy alone


def batch_bounds(num_samples: int, batch_size: int, even: bool = False) -> np.ndarray:
    """Start offsets of an epoch's ``ceil(num_samples / batch_size)`` batches, plus the end:
    full batches and a remainder, or (``even``) sizes that differ by at most one."""
    count = math.ceil(num_samples / batch_size)
    if even:
        return np.arange(count + 1, dtype=np.int64) * num_samples // max(count, 1)
    return np.minimum(np.arange(count + 1, dtype=np.int64) * batch_size, num_samples)


class _BatchBuilder:
    """Builds one batch from its sample ids: native gather/decode, then the transforms."""

    def __init__(self, source, transforms, streams, epoch, pinned=None):
        self.source, self.transforms, self.streams, self.epoch = source, transforms, streams, epoch
        # The native gather also does a first resized crop and a flip right after it (or first).
        self.fused_crop = bool(transforms) and isinstance(transforms[0], _ResizedCrop)
        at = int(self.fused_crop)
        self.fused_flip = len(transforms) > at and type(transforms[at]) is RandomHorizontalFlip  # not a subclass
        self.fused = at + int(self.fused_flip)
        self.pin = any(getattr(t, "pin_memory", False) for t in transforms)
        self.pinned = pinned  # uint8 batches end in these recycled pinned buffers (GPU hand-off)

    def __call__(self, ids: np.ndarray, weights: np.ndarray, turn=None) -> Batch:
        """``turn``: None gathers on this thread alone; a context manager (the epoch's
        :class:`_GatherTurns`) gathers on the whole native pool, inside it."""
        self.source.check_unchanged()  # a file rewritten in place would fault (SIGBUS) in the gather
        gathered = images = self._gather(ids, turn)
        pipeline = list(zip(self.transforms[self.fused:], self.streams[self.fused:]))
        for number, (transform, stream) in enumerate(pipeline, 1):
            images = _checked_output(transform, transform(images, ids, stream), len(ids),
                                     final=number == len(pipeline))
        if isinstance(images, np.ndarray):
            if self.pinned is not None and images is not gathered:  # a transform made a new array
                pinned = self.pinned.take(images.shape)
                np.copyto(pinned, images)
                self.pinned.release(gathered, None)
                images = pinned
            images = torch.from_numpy(images)
            if self.pin:
                images = images.pin_memory()
        labels = None if self.source.labels is None else torch.from_numpy(self.source.labels[ids])
        return Batch(images, labels, torch.from_numpy(ids), torch.from_numpy(weights))

    def _gather(self, ids: np.ndarray, turn) -> np.ndarray:
        source = self.source
        flips = None
        if self.fused_flip:
            flips = self.transforms[self.fused - 1].flags(ids, self.streams[self.fused - 1])
        threads = 1 if turn is None else 0  # 0: every thread of the pool
        try:
            return self._gather_on(ids, threads, flips, turn)
        except ValueError as exc:  # a sample that cannot be decoded (a bad JPEG, a header past max_image_pixels)
            if not str(exc).startswith(_DECODE_FAILURE):  # a transform's bad crop window is not the file's fault
                raise
            raise StoreError(f"{source.owner.path}: {exc}") from None  # as store[i] names the file

    def _gather_on(self, ids: np.ndarray, threads: int, flips, turn) -> np.ndarray:
        source = self.source
        with turn if turn is not None else contextlib.nullcontext():
            if self.fused_crop:
                crop = self.transforms[0]
                crops = crop.crop_params(source.heights[ids], source.widths[ids], ids, self.streams[0])
                out = self._empty((len(ids), *crop.size, 3))
                source.gather.gather_crops(ids, crops, out, max_threads=threads, flips=flips,
                                          antialias=crop.antialias)
            else:
                out = self._empty((len(ids), *source.uniform_shape, 3))
                source.gather.gather(ids, out, max_threads=threads, flips=flips)
        return out

    def _empty(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, np.uint8) if self.pinned is None else self.pinned.take(shape)


def _checked_output(transform, images, count: int, final: bool):
    """What a transform returned, if the next one (or the batch) can take it: the batch's
    ``count`` images as uint8 [B, H, W, 3], or, from the last transform only, a tensor of
    ``count`` rows (Normalize's). A transform that forgot to return gave Batch.images None, one
    that dropped a row misaligned images and labels, and a float array reached the next numba
    kernel as a 20-line typing error (loader audit)."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        if len(images) == count:
            return images
    elif final and isinstance(images, torch.Tensor) and images.dim() >= 1 and len(images) == count:
        return images
    got = (f"{type(images).__name__} {images.dtype} {tuple(images.shape)}" if hasattr(images, "shape")
           else type(images).__name__)
    raise TypeError(f"{transform!r} returned {got}: a transform returns the batch's {count} images as uint8 "
                    f"[B, H, W, 3] (a tensor only from the last one, as Normalize)")


class _Stopped(Exception):
    """A producer waiting for its gather turn when the pass was closed."""


class _GatherTurns:
    """An epoch's first batches gather in order, one at a time, each on the whole native pool.

    Why: each producer gathers its own batches on its own core, so all of them start their first
    batch at once and batch 0 is ready only after one core has decoded a whole batch (256 JPEGs:
    ~0.2 s on the H200, with the GPU idle, every epoch). Taking turns on the pool, batch k of the
    first round is ready after k + 1 batch-times of the pool (~1/threads of that). Later batches
    are gathered by their producer alone again: one batch per core is what keeps every core busy
    (the pool waits for its slowest chunk, and costs a wake-up per batch: 15% of the throughput
    of RandomResizedCrop + Normalize on the CPU, 35% of raw 28 px batches).
    """

    def __init__(self, stop: threading.Event):
        self._next, self._stop, self._cond = 0, stop, threading.Condition()

    @contextlib.contextmanager
    def turn(self, k: int):
        with self._cond:
            while self._next != k:
                if self._stop.is_set():
                    raise _Stopped
                self._cond.wait(_POLL_S)
        try:
            yield
        finally:  # also after an error: the error reaches the consumer in its batch's place
            with self._cond:
                self._next = k + 1
                self._cond.notify_all()


# Passes whose producers may still run. Closed at interpreter exit, before finalization: a daemon
# producer coming back from a native gather while Python finalizes aborts the process
# ("terminate called without an active exception"), e.g. when a half-read iterator is still
# referenced at exit (a traceback's frames keep it).
_LIVE_RUNS: "weakref.WeakSet[_EpochRun]" = weakref.WeakSet()


@atexit.register
def _close_live_runs() -> None:
    for run in list(_LIVE_RUNS):
        run.exiting = True  # a daemon thread still iterating it waits for the process to end
        try:
            run.close()
        except Exception:  # noqa: BLE001  one pass's failure must not leave the others' producers running
            pass


class _EpochRun:
    """Producer threads for one pass; close() stops and joins them and drops finished batches.

    A producer that is free takes the pass's next unstarted batch, so a slow batch (a large
    photo, a producer preempted) holds up only its own thread; the consumer still receives batch
    k as the k-th. At most ``threads x (prefetch + 1)`` batches are started and not yet taken by
    the consumer, which bounds memory. Why not batch k on producer k % threads, each with its own
    queue (the first design, the same bound): one late batch then stalls the whole pass once the
    other producers' queues fill, and with threads = cores a stalled producer is an idle core
    (benchmarks/producer_order.py).

    ``pooled``: the first round of batches takes turns on the native pool (:class:`_GatherTurns`).
    ``readahead``: a thread requests the next batches' bytes from the OS while the store is not in
    memory (:class:`Readahead`). ``cuda_device``: a CUDA loader's GPU, which each producer makes
    its thread's current device before its first batch: a new thread's device is 0, and its CUDA
    calls (pinning a batch, asking whether a pinned buffer's copy has run) could make a context
    there, ~300-500 MB on GPU 0 for every rank training on another GPU (torch's DataLoader sets
    its pin-memory thread's device alike)."""

    def __init__(self, build, ids, weights, bounds, threads, prefetch, nice=0, pooled=False, readahead=False,
                 cuda_device: int | None = None):
        self._build, self._ids, self._weights, self._bounds, self._nice = build, ids, weights, bounds, nice
        self._cuda_device = cuda_device
        self.num_batches = len(bounds) - 1
        self._threads = max(1, min(threads, self.num_batches))
        self._window = self._threads * (prefetch + 1)  # batches started and not yet taken
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # producers wait here for the window to move
        self._ready = threading.Condition(self._lock)  # the consumer waits here for its next batch
        self._next = 0  # the next batch a producer will start
        self._taken = 0  # batches the consumer has taken
        self._finished: dict[int, tuple] = {}  # batch number -> ("batch", Batch) or ("error", exc)
        self._stop = threading.Event()
        self._closed = False
        self.exiting = False  # closed by the interpreter's exit, not by its consumer
        self._turns = _GatherTurns(self._stop) if pooled else None
        self._readahead = None
        self._workers = [threading.Thread(target=self._produce, daemon=True, name=f"fastprune-loader-{t}")
                         for t in range(self._threads)]
        self._pid = os.getpid()  # a pass continued in a fork()ed child has no producers there
        _LIVE_RUNS.add(self)  # once close() can run: the exit hook met a half-made pass (no _closed yet)
        try:
            if readahead:  # first: its hints for the first batches go out before their page faults
                self._readahead = Readahead(build.source, ids, bounds, ahead=max(2, self._threads), stop=self._stop,
                                            nice=nice)
                if not self._readahead.start():  # no thread to spare (a container's limit): hints are optional
                    self._readahead = None
            for w in self._workers:
                w.start()
        except RuntimeError as exc:  # "can't start new thread": a container's thread or memory limit
            self.close()
            raise RuntimeError(f"Loader: cannot start {self._threads} producer threads ({exc}); ask for "
                               "fewer (Loader(threads=N))") from exc
        except BaseException:  # Ctrl-C while starting them: the ones started polled on, forever
            self.close()
            raise

    def batches(self) -> Iterator[Batch]:
        for k in range(self.num_batches):
            kind, value = self._take(k)
            if kind == "error":
                raise value
            yield value
            value = None  # not held while the next one is waited for (recycled buffers reuse it)

    def close(self) -> None:
        # Once done, not again: the atexit hook closes a half-read pass, and its generator's
        # finally closes it again during module teardown, when module globals may be None. Marked
        # done only after the joins: a close interrupted by a second Ctrl-C is finished by the next.
        if self._closed:
            return
        self._stop.set()
        with self._lock:  # wake producers waiting for room: they see the stop and return
            self._room.notify_all()
            self._finished.clear()
        current = threading.current_thread()  # a producer, when the cycle collector finalizes the pass there
        for w in self._workers:
            if w.ident is not None and w is not current:  # started (one that failed to start cannot be joined)
                w.join()
        if self._readahead is not None:
            self._readahead.join()
        with self._lock:
            self._finished.clear()  # what a producer finished while the first clear ran
        self._closed = True

    def _produce(self) -> None:
        lower_thread_priority(self._nice)
        bound = self._cuda_device is None
        while True:
            k = self._start_next()
            if k is None:
                return
            rows = slice(int(self._bounds[k]), int(self._bounds[k + 1]))
            if self._readahead is not None:
                self._readahead.started(k)
            try:
                if not bound:  # in the try: a failure reaches the consumer as this batch's error
                    torch.cuda.set_device(self._cuda_device)
                    bound = True
                turn = None if self._turns is None or k >= self._threads else self._turns.turn(k)
                item = ("batch", self._build(self._ids[rows], self._weights[rows], turn))
            except _Stopped:
                return
            except BaseException as exc:  # handed to the consumer, which re-raises it
                with contextlib.suppress(Exception):  # (a MemoryError here left batch k never delivered)
                    _add_note(exc, f"raised by a fastprune loader thread while building batch {k} of epoch "
                                   f"{self._build.epoch} (sample ids {self._ids[rows][:8].tolist()}...)")
                item = ("error", exc)
            with self._lock:
                if self._stop.is_set():
                    return
                self._finished[k] = item
                self._ready.notify()
            failed, item = item[0] == "error", None  # the consumer's now: held here, it outlived its use
            if failed:
                return

    def _start_next(self) -> int | None:
        """The number of the batch this producer starts next, once the window has room; None
        when the pass is over or closed."""
        with self._lock:
            while not self._stop.is_set() and self._next < self.num_batches \
                    and self._next >= self._taken + self._window:
                self._room.wait(_POLL_S)
            if self._stop.is_set() or self._next >= self.num_batches:
                return None
            self._next += 1
            return self._next - 1

    def _take(self, k: int):
        while True:
            with self._lock:
                if k in self._finished:
                    self._taken = k + 1
                    self._room.notify()  # one more batch may start
                    return self._finished.pop(k)
                if any(w.is_alive() for w in self._workers):  # (one putting k holds the lock)
                    self._ready.wait(_POLL_S)
                    continue
            if self.exiting and threading.current_thread() is not threading.main_thread():
                threading.Event().wait()  # a daemon thread's pass, stopped at exit: no error, the process ends
            if os.getpid() != self._pid:
                raise RuntimeError("this pass was started before os.fork(): its loader threads are in the parent "
                                   "process; start a new pass in the child (a new `for batch in loader`)")
            raise RuntimeError("fastprune loader threads stopped without delivering a batch")


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10: the attribute 3.11's add_note sets (pytest shows it; 3.10's own tracebacks do not)
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


# -- argument checks ----------------------------------------------------------------------------

def _store_name(store_or_path) -> str:
    return repr(str(getattr(store_or_path, "path", store_or_path)))


def _check_thread_nice(thread_nice, device: torch.device) -> int:
    if thread_nice == "auto":
        return 10 if device.type == "cuda" else 0
    if isinstance(thread_nice, (bool, np.bool_)) or not isinstance(thread_nice, (int, np.integer)) \
            or not 0 <= thread_nice <= 19:
        raise ValueError(f"thread_nice must be 'auto' or an int in [0, 19], got {thread_nice!r}")
    return int(thread_nice)


def _check_normalize_on(normalize_on: str, device: torch.device) -> str:
    if normalize_on not in ("auto", "host", "device"):
        raise ValueError(f"normalize_on must be 'auto', 'host' or 'device', got {normalize_on!r}")
    if normalize_on == "auto":
        return "device" if device.type == "cuda" else "host"
    return normalize_on


def _check_transforms(transforms) -> list:
    if transforms is None:  # as the default (): none
        return []
    if isinstance(transforms, (str, bytes)) or not hasattr(transforms, "__iter__"):
        raise TypeError(f"transforms must be a list of transforms, got {type(transforms).__name__} "
                        f"{transforms!r:.60}; a single one goes in a list: transforms=[t]")
    transforms = list(transforms)
    for i, t in enumerate(transforms):
        if isinstance(t, type):  # callable, but calling it builds a transform: fails later, deep inside
            raise TypeError(f"transforms[{i}] is the class {t.__name__}; pass an instance: {t.__name__}(...)")
        if not callable(t):
            raise TypeError(f"transforms[{i}] is not callable: {t!r}")
        _check_batch_transform(t, i)
        if isinstance(t, Normalize) and i != len(transforms) - 1:
            raise ValueError(f"transforms[{i}]: Normalize must be the last transform (it returns a torch tensor)")
    # A resized crop after others is allowed (it then runs in numba on the uint8 batch), but the
    # first one loses the fused decode; a later one crops the first one's small output
    first_crop = next((i for i, t in enumerate(transforms) if isinstance(t, _ResizedCrop)), 0)
    if first_crop:
        warnings.warn(f"transforms[{first_crop}]: {type(transforms[first_crop]).__name__} after "
                      f"{type(transforms[first_crop - 1]).__name__} runs on the whole decoded images; placed first, "
                      "it is fused into the decode, which reads only the crop's window (3-30x faster): put it "
                      "first unless the transforms before it need the whole image", UsageWarning,
                      stacklevel=user_stacklevel())
    return transforms


def _check_batch_transform(t, i: int) -> None:
    """Refuse what cannot be called as ``t(images, ids, stream)``, the way a producer calls it: a
    torchvision transform (or a one-argument lambda) was accepted, and the first batch failed in a
    loader thread with 'forward() takes 2 positional arguments but 4 were given'."""
    # torchvision's by their module (a v2 transform's forward takes any arguments); the others by
    # signature below. torch.compile(t) is judged by the t it wraps (its own forward takes anything).
    t = getattr(t, "_orig_mod", t)
    if type(t).__module__.split(".")[0] == "torchvision":
        raise TypeError(f"transforms[{i}] is torchvision's {type(t).__name__}, which transforms one image or "
                        "tensor; the Loader's transforms take a uint8 batch with its sample ids and random "
                        "stream: fastprune.loader's RandomResizedCrop, RandomCrop, RandomHorizontalFlip, Normalize... "
                        "or one of your own (guide: 'Your own augmentation'); torchvision's go on the batch in "
                        "your loop")
    try:  # a module of one's own is called through forward (its __call__ takes anything)
        inspect.signature(t.forward if isinstance(t, torch.nn.Module) else t).bind(None, None, None)
    except ValueError:  # no signature to read (a builtin, some compiled callables): it may fit
        pass
    except TypeError:
        raise TypeError(f"transforms[{i}] {t!r:.60} cannot be called as t(images, ids, stream), the way the Loader "
                        "calls a transform (images: uint8 [batch, H, W, 3]; ids: the samples; stream: a "
                        "random stream key); guide: 'Your own augmentation'") from None


def _check_batchable(source, transforms, max_pixels: int) -> None:
    """Every batch gets one shape, and a crop that cannot fit the store's images, or makes images
    larger than ``max_pixels`` (RandomResizedCrop(2**20): a MemoryError at the first batch), fails
    here, not in the first batch's producer thread."""
    fused_crop = bool(transforms) and isinstance(transforms[0], _ResizedCrop)
    if not fused_crop and source.num_samples and source.uniform_shape is None:
        raise ValueError(f"{source.owner.path}: the store's images differ in size: put a RandomResizedCrop or "
                         "CenterCrop first in transforms so that every batch has one shape")
    size = source.uniform_shape if not fused_crop else transforms[0].output_size(0, 0)
    if fused_crop:
        _check_output_pixels(0, size, max_pixels)
    for i, t in enumerate(transforms[1:] if fused_crop else transforms, start=int(fused_crop)):
        if size is None or isinstance(t, Normalize) or not hasattr(t, "output_size"):
            continue
        try:
            size = tuple(t.output_size(*size))
        except ValueError as exc:
            raise ValueError(f"transforms[{i}]: {exc} (its input: {size[0]}x{size[1]} images)") from None
        _check_output_pixels(i, size, max_pixels)


def _check_output_pixels(i: int, size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise ValueError(f"transforms[{i}] makes {size[0]}x{size[1]} images, more than max_image_pixels "
                         f"({max_pixels}) pixels each; choose a smaller size (or raise max_image_pixels)")


def _check_sampler(sampler, num_samples: int) -> None:
    if isinstance(sampler, type):  # its select(epoch) is unbound: the first pass failed on a missing argument
        raise TypeError(f"sampler must be a strategy, not the class: {sampler.__name__}(len(store), ...)")
    if not callable(getattr(sampler, "select", None)):
        raise TypeError(f"sampler must have select(epoch) -> Selection(indices, weights), got {sampler!r}")
    declared = getattr(sampler, "num_samples", num_samples)
    if declared != num_samples:
        raise ValueError(f"sampler.num_samples = {declared} but the store has {num_samples} samples")
