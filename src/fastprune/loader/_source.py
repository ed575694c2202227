"""The loader's view of a store: one image field (native gather) and one label field.

Accepts a ``fastprune.Store`` or the path of a .beton-compatible file (ffcv's own files included:
``Store`` reads them).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import numpy as np

from .._cpus import rank_cpus
from .._native import core
from ..errors import StoreError, UsageWarning
from ..store.fields import FloatField, IntField, NDArrayField, class_label_field
from ..store.reader import Store

_RGB_METADATA_NAMES = {"mode", "width", "height", "data_ptr"}
_LABEL_FIELD_TYPES = (IntField, FloatField, NDArrayField)


@dataclass
class ImageSource:
    gather: "core.ImageGather"
    heights: np.ndarray  # uint32 [N]
    widths: np.ndarray  # uint32 [N]
    # int64 [N] (an IntField), float64 [N] (a FloatField), ArrayLabels (an NDArrayField) or None
    labels: "np.ndarray | ArrayLabels | None"
    image_field: str
    label_field: str | None
    owner: Store  # keeps the store (and its mmap) alive as long as the loader
    owns_store: bool = False  # opened from a path here: close() closes it
    buffer: np.ndarray | None = None  # the mapped file, offsets and sizes of the image field: read-ahead hints
    offsets: np.ndarray | None = None  # uint64 [N]
    sizes: np.ndarray | None = None  # uint64 [N]
    modes: np.ndarray | None = None  # uint8 [N]: the samples' image modes (MODE_JPEG or raw)
    # mincore's word on the file's pages holds only for a file this process may write (Linux 5.0+)
    mincore_trusted: bool = True

    def close(self) -> None:
        """Release the native gather (its threads) and the views of the mapping, and close the
        store file if this source opened it (a Store passed in is its caller's, and stays open).
        A file left to the garbage collector is closed by a finalizer that swallows exceptions: a
        Ctrl-C landing while `fastprune train` dropped one was lost, and training ran on. The
        gather and the views had lived as long as the closed loader, so a sweep keeping each
        run's loader kept every run's threads and mapped file. (A gather running on another
        thread keeps its own reference.)"""
        if self.owns_store:
            self.owner.close()
        why = "the store is closed" if self.owns_store else "this Loader is closed (its Store, passed in, is not)"
        if not isinstance(self.gather, _ClosedGather):
            self.gather = _ClosedGather(self.gather, self.owner.path, why)
        self.buffer = None
        if isinstance(self.labels, ArrayLabels):
            self.labels.close(why)

    def solo_gather(self) -> "core.ImageGather":
        """Another gather over the same samples that runs on its caller's thread alone: the pool's
        gathers run one at a time, so work spread over threads of one's own gives each its own."""
        if isinstance(self.gather, _ClosedGather):
            self.gather.gather()  # raises, naming the store
        return core.ImageGather(self.buffer, self.offsets, self.sizes, self.modes, self.heights, self.widths, 1,
                                self.gather.max_pixels, self.gather.nice)

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def num_samples(self) -> int:
        return len(self.heights)

    @property
    def closed(self) -> bool:
        return isinstance(self.gather, _ClosedGather)

    def check_unchanged(self) -> None:
        """Raise StoreError if the store's file was changed in place, or this source was closed."""
        if self.closed:
            self.gather.gather()  # raises, naming the store and why
        self.owner.check_unchanged()

    def advise(self, ids: np.ndarray, granule: int = 0) -> int:
        """Ask the OS to read samples ``ids``' bytes, each rounded out to ``granule``-byte aligned
        blocks (0: pages), into memory in the background (a hint: see csrc/readahead.cpp);
        returns the bytes hinted."""
        buffer = self.buffer
        return 0 if buffer is None else core.advise_willneed(buffer, self.offsets, self.sizes, ids, granule)

    def resident_fraction(self, ids: np.ndarray) -> float:
        """The share of samples ``ids`` whose first page is in memory (1.0 where that cannot be
        told), asked without reading the file (see csrc/readahead.cpp)."""
        file, buffer = getattr(self.owner, "_file", None), self.buffer  # None once the store is closed
        if buffer is None:
            return 1.0
        fd = file.fileno() if file is not None else -1
        return core.resident_fraction(buffer, self.offsets, ids, fd, self.mincore_trusted)

    @functools.cached_property
    def uniform_shape(self) -> tuple[int, int] | None:
        """(H, W) when every image has the same size, else None. Cached: every batch of a
        fixed-size store asks, and the scan holds the GIL (2.6M comparisons for ImageNet)."""
        if self.num_samples == 0:
            return None
        h, w = int(self.heights[0]), int(self.widths[0])
        same = (self.heights == h).all() and (self.widths == w).all()
        return (h, w) if same else None


# Raw pixels are copied, not decoded: a batch is little native work next to the Python each
# producer runs per batch (holding the GIL), and past a few threads they only contend (the H200's
# 16 cores fed raw 28 px batches at 528k img/s with 4 threads, 205k with 8, 144-244k with 16;
# 40-batch windows that also timed the producers' start-up, which costs more threads more:
# benchmarks/gpu.py now times from the first batch, and the next GPU run re-measures this).
RAW_THREADS = 4
MODE_JPEG = 0  # ffcv's IMAGE_MODES: 'jpg' = 0, 'raw' = 1


def default_threads(modes: np.ndarray) -> int:
    """Loader threads for a store whose samples have these image modes: this process's share of
    the CPUs (:func:`rank_cpus`: a distributed rank's share) when any image is a JPEG, at most
    RAW_THREADS when all are raw pixels."""
    cpus = rank_cpus()
    return cpus if (modes == MODE_JPEG).any() else min(cpus, RAW_THREADS)


def open_source(store_or_path, image_field: str | None, label_field: str | None | bool, threads: int | None,
                max_pixels: int = core.DEFAULT_MAX_PIXELS, nice: int = 0, quiet: bool = False) -> ImageSource:
    """The loader's view of one image field (and label field) of a store. ``threads``/``nice``:
    the native gather's pool (its workers run ``nice`` steps below their creator); None:
    :func:`default_threads`. ``label_field`` None chooses one (``quiet``: without warning when none
    fits, for a caller that refuses that itself); False: no labels. Opened from a
    path, the source holds the file open until its ``close()`` (or the end of a ``with`` block)."""
    store = _open(store_or_path)
    opened_here = store is not store_or_path
    try:
        return _source_of(store, image_field, label_field, threads, max_pixels, nice, owns_store=opened_here,
                          quiet=quiet)
    except BaseException:
        if opened_here:  # for nothing
            store.close()
        raise


def _source_of(store: Store, image_field, label_field, threads, max_pixels, nice, owns_store: bool,
               quiet: bool = False) -> ImageSource:
    columns = _columns(store)
    image_field = image_field or _pick_image_field(columns, store.path)
    if image_field not in columns or not _RGB_METADATA_NAMES <= set(columns[image_field].dtype.names or ()):
        raise ValueError(f"{store.path}: image_field={image_field!r} is not an RGB image field of this store "
                         f"(fields: {sorted(columns)})")
    if label_field is None:
        label_field = _pick_label_field(store, warn=not quiet)
    elif label_field is False:  # no labels wanted (image statistics): none chosen, nothing warned
        label_field = None
    if label_field is not None and not isinstance(store.fields.get(label_field), _LABEL_FIELD_TYPES):
        raise ValueError(f"{store.path}: label_field={label_field!r} is not an int, float or array field of this "
                         f"store (fields: {_field_kinds(store)})")
    meta = columns[image_field]
    offsets, sizes = (np.ascontiguousarray(a, np.uint64) for a in store.field_ranges(image_field))
    heights = np.ascontiguousarray(meta["height"], np.uint32)
    widths = np.ascontiguousarray(meta["width"], np.uint32)
    modes = np.ascontiguousarray(meta["mode"], np.uint8)
    _check_claimed_sizes(store, image_field, heights, widths, int(max_pixels))
    threads = default_threads(modes) if threads is None else max(1, threads)
    gather = core.ImageGather(store.buffer, offsets, sizes, modes, heights, widths, threads, int(max_pixels), int(nice))
    labels = None if label_field is None else _labels(store, label_field, columns[label_field])
    return ImageSource(gather, heights, widths, labels, image_field, label_field, store, owns_store,
                       store.buffer, offsets, sizes, modes, mincore_trusted=os.access(store.path, os.W_OK))


def _check_claimed_sizes(store: Store, field: str, heights: np.ndarray, widths: np.ndarray, max_pixels: int) -> None:
    """Batches are allocated from the sizes the store's metadata claims, before any JPEG header is
    read: a damaged (or crafted) entry of 65535x65535 made the first batch a 48 GiB MemoryError
    instead of the error the decoder gives, naming the file and sample."""
    too_big = np.flatnonzero(heights.astype(np.uint64) * widths > max_pixels)
    if len(too_big):
        i = int(too_big[0])
        raise StoreError(f"{store.path}: sample {i}'s {field} is {widths[i]}x{heights[i]} by the store's metadata, "
                         f"more than max_image_pixels={max_pixels:,} ({len(too_big)} such sample(s)); a damaged "
                         "store (fastprune info --verify), or raise Loader(max_image_pixels=)")


def _open(store_or_path) -> Store:
    if isinstance(store_or_path, Store):
        return store_or_path
    if not isinstance(store_or_path, (str, os.PathLike)):
        raise TypeError(f"the store must be a fastprune.Store or a file path, got {type(store_or_path).__name__}")
    return Store(store_or_path)  # a missing file: StoreNotFoundError, a FileNotFoundError naming the path


def _columns(store: Store) -> dict[str, np.ndarray]:
    """{field name: its metadata column}; the table's columns are f0, f1, ... in field order."""
    return {name: store.metadata[f"f{i}"] for i, name in enumerate(store.fields)}


def _pick_image_field(columns, path) -> str:
    images = [n for n, c in columns.items() if _RGB_METADATA_NAMES <= set(c.dtype.names or ())]
    if not images:  # naming one cannot help
        raise ValueError(f"{path}: the store holds no image field (its fields: {', '.join(columns)}); the Loader "
                         "reads images")
    if len(images) > 1:
        raise ValueError(f"{path}: image_field must be given: the store has {len(images)} image fields ({images})")
    return images[0]


def _labels(store: Store, name: str, column: np.ndarray):
    """A label field as batches carry it: integer (class) labels as int64; float targets (a
    regression user's FloatField) as stored, never cut to integers; an NDArrayField's arrays
    (multi-label or multi-output targets) read from the file per batch."""
    field = store.fields[name]
    if isinstance(field, NDArrayField):
        return ArrayLabels(store, name, field)
    if isinstance(field, FloatField):
        return np.ascontiguousarray(column)
    return np.ascontiguousarray(column, np.int64)


#: Where the guide shows a loop of one's own for targets that are not class labels.
OTHER_TASKS = "docs/guide.md#other-tasks-regression-multi-label"


def targets_kind(labels) -> str | None:
    """What labels that are not class labels hold ("float targets", "arrays of shape (5,)"), for
    the classifiers' refusals; None for integer class labels (or no labels)."""
    if isinstance(labels, ArrayLabels):
        return f"arrays of shape {labels.shape[1:]} ({labels.dtype})"
    if isinstance(labels, np.ndarray) and labels.dtype.kind == "f":
        return "float targets"
    return None


def _pick_label_field(store: Store, warn: bool = True) -> str | None:
    """``label`` if it is an int, float or array field (of a dtype torch holds), else the class
    labels' field (:func:`class_label_field`: the only int field other than ``index``, the
    sample ids; ``write_dataset(index_field=)`` beside a float target had made them the labels,
    and a classifier trained on them). An array field's metadata is a pointer (an unsigned
    integer): its type, not its column, tells them apart. Candidates left unchosen warn once."""
    fields = store.fields
    label = fields.get("label")
    if isinstance(label, (IntField, FloatField)) or (isinstance(label, NDArrayField) and _torch_holds(label.dtype)):
        return "label"
    chosen = class_label_field(fields)
    if chosen is None and warn:
        candidates = [name for name, field in fields.items() if isinstance(field, _LABEL_FIELD_TYPES)
                      and name != "index"]
        if candidates:
            warnings.warn(f"{store.path}: batches carry no labels (no field is named 'label'; fields that could "
                          f"be: {', '.join(candidates)}): name one as the Loader's label_field", UsageWarning,
                          stacklevel=5)
    return chosen


def _torch_holds(dtype: np.dtype) -> bool:
    import torch

    try:
        torch.from_numpy(np.zeros(1, dtype.newbyteorder("=")))
    except TypeError:
        return False
    return True


def _field_kinds(store: Store) -> str:
    return ", ".join(f"{name} ({type(field).__name__})" for name, field in store.fields.items())


class _ClosedGather:
    """What a closed source keeps of its native gather: the settings a pickled copy of its loader
    reopens the store with, not the threads or the view of the mapping."""

    def __init__(self, gather, path, why: str):
        self.threads, self.max_pixels, self.nice = gather.threads, gather.max_pixels, gather.nice
        self._path, self._why = path, why

    def gather(self, *args, **kwargs):
        raise StoreError(f"{self._path}: {self._why}")

    gather_crops = gather


class ArrayLabels:
    """An NDArrayField's values as a batch's labels: ``labels[ids]`` is ``[len(ids), *shape]`` in
    the field's dtype (native byte order), copied from the mapped file. Each sample's range was
    checked against the file when the store was opened."""

    def __init__(self, store: Store, name: str, field: NDArrayField):
        dtype = field.dtype.newbyteorder("=")
        if not _torch_holds(dtype):  # refused now, not at the first batch
            raise ValueError(f"label_field={name!r}: torch has no tensors of its dtype, {field.dtype}")
        self.dtype, self.shape = dtype, (store.num_samples, *field.shape)
        self.ndim = len(self.shape)
        self._field, self._buffer, self._path, self._why = field, store.buffer, store.path, None
        self._offsets = np.ascontiguousarray(store.field_ranges(name)[0], np.int64)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self, why: str = "the store is closed") -> None:
        self._buffer, self._why = None, why  # the mapping is released once no view holds it

    def __getitem__(self, ids) -> np.ndarray:
        buffer = self._buffer
        if buffer is None:
            raise StoreError(f"{self._path}: {self._why}")
        offsets = self._offsets[np.asarray(ids, np.int64)]
        out = np.empty((len(offsets), self._field.element_size), np.uint8)
        _copy_ranges(buffer, offsets, out)
        return out.view(self._field.dtype).reshape(len(offsets), *self._field.shape).astype(self.dtype, copy=False)


def _copy_ranges(buffer: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """out[r] = buffer[offsets[r]:offsets[r] + out.shape[1]]: numba, as a fancy index of every
    byte would build an index array 8x the batch's size."""
    global _copy_ranges_kernel
    if _copy_ranges_kernel is None:
        import numba

        @numba.njit(nogil=True, cache=True)
        def kernel(buffer, offsets, out):
            width = out.shape[1]
            for r in range(len(offsets)):
                out[r, :] = buffer[offsets[r]:offsets[r] + width]

        _copy_ranges_kernel = kernel
    _copy_ranges_kernel(buffer, offsets, out)


_copy_ranges_kernel = None
