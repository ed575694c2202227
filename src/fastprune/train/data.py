"""What a run learns from, read off its two stores: the number of classes, the input channels,
the normalization statistics and whether the images need a crop to be batched.

Every check fails before training starts, in one line naming the store and the option that fixes
it (``--crop``, ``--mean/--std``...), instead of an IndexError deep inside the loss.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
from dataclasses import dataclass
from typing import Any, Sequence

import numba
import numpy as np

from ..errors import ConfigError, FastpruneError
from ..loader._source import OTHER_TASKS, targets_kind
from ..random_streams import statistics_sample
from ..store.fields import class_label_candidates
from ..store.names import label_gap, named_class_count
from ..store.reader import store_name

# Images the statistics are computed over: enough for the mean and std of a channel to be exact
# to about 0.3% of a pixel's range, and cheap for images of ordinary sizes (a few thousand
# decodes: about a second). Camera-size photos take minutes (each is decoded whole, as training
# would read them: the figures must stay those of the images, a checkpoint compares them on
# resume); train and bench warn of such images (recipe.oversize_warning).
STATISTICS_SAMPLES = 4096
# Pixels decoded per gather (24 MB): 256 images at once of 12 MP, copied to float64, asked for
# 75 GB (a performance audit: a 26.8 GiB MemoryError on 3000 x 2000 photos)
_PIXELS_AT_ONCE = 1 << 23


@dataclass(frozen=True)
class DataSpec:
    """The facts a run takes from its stores (or from the options that override them)."""

    num_classes: int
    channels: int  # 3: every image field of a .beton store is RGB (gray is stored replicated)
    mean: tuple[float, float, float]  # per channel, as fractions of 255
    std: tuple[float, float, float]
    image_size: str  # "28x28", or "mixed, 21 to 64 px a side"

    def json(self) -> dict[str, Any]:
        return {"classes": self.num_classes, "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std), "image_size": self.image_size}


def describe_stores(train, val, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    crop: int | None = None, label_field: str | None = None) -> DataSpec:
    """Check ``train`` and ``val`` (stores or paths) fit a run with these options; return the
    :class:`DataSpec`. ``mean``/``std``: None computes them from the training store.
    ``label_field``: the stores' field of class labels (None: as the Loader chooses)."""
    with _opened(train, val, label_field) as (training, validation):
        return _described({"training": training, "validation": validation}, train, val, mean, std, crop)


def check_classes(train, val, label_field: str | None = None) -> int:
    """The number of classes of ``train`` and ``val`` (stores or paths), their labels checked as
    :func:`describe_stores` checks them, and nothing else read: a command checks them before it
    prints its plan."""
    with _opened(train, val, label_field) as (training, validation):
        return _classes(training, validation, store_name(train), store_name(val))


@contextlib.contextmanager
def _opened(train, val, label_field: str | None = None):
    """The loader's views of the two stores, closed at the block's end: the training one decodes
    on the default threads (its statistics), the validation one on one."""
    from ..loader._source import open_source

    with contextlib.ExitStack() as stack:
        try:  # quiet: a store without labels is refused by _classes, naming --label-field, in one line
            training, validation = (stack.enter_context(open_source(store, None, label_field, threads=threads,
                                                                    quiet=True))
                                    for store, threads in ((train, None), (val, 1)))
        except FastpruneError:  # a damaged store stays a StoreError
            raise
        except ValueError as exc:  # a store that does not fit the options (--label-field): one line
            raise ConfigError(str(exc)) from None
        yield training, validation


def _described(sources: dict, train, val, mean, std, crop) -> DataSpec:
    from ..loader import Normalize

    for role, store in (("training", train), ("validation", val)):
        if sources[role].num_samples == 0:
            raise ConfigError(f"{store_name(store)}: the {role} store holds no samples")
        _check_batchable(sources[role], store_name(store), role, crop)
    num_classes = _classes(sources["training"], sources["validation"], store_name(train), store_name(val))
    if (mean is None) != (std is None):
        raise ConfigError("give both --mean and --std (mean= and std= in Python), or neither to compute "
                          "them from the training store")
    if mean is None:
        mean, std = channel_statistics(sources["training"])
    mean, std = _three(mean, "mean"), _three(std, "std")
    if max(map(abs, mean + std)) > 1:  # said in both forms: Normalize's own message gives only Python's
        # each list converted only where it is in 0-255 units: a mean in fractions stays as it is
        fixed = [[round(v / 255, 4) for v in values] if max(map(abs, values)) > 1 else list(values)
                 for values in (mean, std)]
        raise ConfigError(f"--mean/--std (mean=, std=) {list(mean)}, {list(std)}: values above 1 look like 0-255 "
                          f"pixel units, but they are fractions of 255: --mean {' '.join(map(str, fixed[0]))} --std "
                          f"{' '.join(map(str, fixed[1]))} (mean={fixed[0]}, std={fixed[1]} in Python)")
    try:  # the loader's own check (0-255 units...), before any work
        Normalize(mean, std)
    except ValueError as exc:
        raise ConfigError(f"--mean/--std (mean=, std=): {exc}") from None
    return DataSpec(num_classes, 3, mean, std, _size(sources["training"]))


def image_statistics(store, samples: int = STATISTICS_SAMPLES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of ``store``'s images (a store or path; a seeded sample of
    ``samples`` images), as fractions of 255, what ``Normalize`` takes: for a loop of one's own
    over a store of any labels (:func:`describe_stores` also checks class labels)."""
    from ..loader._source import open_source

    with open_source(store, None, False, threads=None) as source:  # decoded on the default threads
        return channel_statistics(source, samples)


def channel_statistics(source, samples: int = STATISTICS_SAMPLES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the pixels of a seeded sample of the store's images, as fractions
    of 255 (what ``Normalize`` takes). Every pixel counts once, whatever its image's size."""
    ids = statistics_sample(source.num_samples, samples)
    if len(ids) == 0:
        raise ValueError(f"{store_name(source.owner)}: no images to compute the channel statistics of")
    threads = max(1, source.gather.threads)  # each thread holds up to its share of the pixels, or one image
    chunks = _chunks_of_one_shape(ids, source.heights[ids], source.widths[ids], _PIXELS_AT_ONCE // threads,
                                  -(-len(ids) // threads))
    histogram = _count_in_threads(source, chunks, min(threads, len(chunks)))
    values = np.arange(256, dtype=np.float64)
    pixels = histogram[0].sum()
    mean = histogram @ values / pixels
    std = np.sqrt(np.maximum(histogram @ values**2 / pixels - mean**2, 0.0))
    # A constant channel carries nothing; dividing it by 1 keeps it finite (Normalize refuses 0).
    std = np.where(std < 1e-3, 255.0, std)
    return tuple(float(v) for v in mean / 255), tuple(float(v) for v in std / 255)


def _chunks_of_one_shape(ids: np.ndarray, heights: np.ndarray, widths: np.ndarray, pixels: int,
                         images: int) -> list[tuple[int, int, np.ndarray]]:
    """``ids`` cut into gathers (height, width, ids) of one image shape each, of at most ``images``
    images and ``pixels`` pixels (or one image)."""
    shapes = np.stack([heights, widths], axis=1).astype(np.int64)
    chunks = []
    for height, width in np.unique(shapes, axis=0).tolist():
        group = ids[(shapes == (height, width)).all(axis=1)]
        per_gather = max(1, min(images, pixels // (height * width)))
        chunks += [(height, width, group[start:start + per_gather]) for start in range(0, len(group), per_gather)]
    return chunks


def _count_in_threads(source, chunks: list[tuple[int, int, np.ndarray]], threads: int) -> np.ndarray:
    """Per-channel counts of the pixel values of ``chunks``' images, decoded and counted on
    ``threads`` threads, each with a gather and buffer of its own. One gather per shape held one
    image of a mixed-size store (photos), so the pool's threads sat idle (4,096 decodes in turn)."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for chunk in chunks:
        todo.put(chunk)
    largest = max(height * width * len(ids) for height, width, ids in chunks)

    def count() -> np.ndarray:
        gather, histogram = source.solo_gather(), np.zeros((3, 256), np.int64)  # exact counts, no float copy
        buffer = np.empty(largest * 3, np.uint8)  # reused by every chunk of this thread
        try:
            while (chunk := _next(todo)) is not None:
                height, width, ids = chunk
                images = buffer[:len(ids) * height * width * 3].reshape(len(ids), height, width, 3)
                gather.gather(ids, images)
                _count_channel_values(images.reshape(-1, 3), histogram)
        except BaseException:
            _drain(todo)  # the other threads stop at their next chunk
            raise
        return histogram

    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="fastprune-statistics") as pool:
        try:
            return sum(pool.map(lambda _: count(), range(threads)))
        finally:  # a Ctrl-C in the wait: the threads finish their chunk, not the whole sample
            _drain(todo)


def _next(todo: queue.SimpleQueue):
    try:
        return todo.get_nowait()
    except queue.Empty:
        return None


def _drain(todo: queue.SimpleQueue) -> None:
    while _next(todo) is not None:
        pass


@numba.njit(nogil=True, cache=True)
def _count_channel_values(pixels, histogram):
    """histogram[c, v] += how many of ``pixels`` (uint8 [N, 3]) have value v in channel c."""
    for i in range(pixels.shape[0]):
        for c in range(3):
            histogram[c, pixels[i, c]] += 1


def _classes(train, val, train_name: str, val_name: str) -> int:
    for source, name in ((train, train_name), (val, val_name)):
        if source.labels is None:
            ints = class_label_candidates(source.owner.fields)
            fix = (f"name one of {', '.join(ints)} with --label-field (label_field= in Python)"
                   if ints else "convert it with labels (fastprune convert writes 'label')")
            raise ConfigError(f"{name}: no label field (an integer field named 'label', or the only integer "
                              f"field other than 'index'); {fix}")
        kind = targets_kind(source.labels)
        if kind:
            raise ConfigError(f"{name}: its label field {source.label_field!r} holds {kind}, not class labels; "
                              f"fastprune train and bench train classifiers (other targets: {OTHER_TASKS})")
        if len(source.labels) and source.labels.min() < 0:
            raise ConfigError(f"{name}: label {int(source.labels.min())} is negative; classes must be "
                              "numbered 0, 1, 2, ...")
    # the training store's names count the classes where every label of both stores is below them
    names = train.owner.field_class_names.get(train.label_field)
    num_classes = named_class_count(names, train.labels, val.labels) or _dense_classes(train.labels, train_name)
    if len(val.labels) and int(val.labels.max()) >= num_classes:
        raise ConfigError(f"{val_name}: label {int(val.labels.max())}, but the training store {train_name} "
                          f"has classes 0..{num_classes - 1} only: convert both from the same classes")
    _check_same_names(train, val, train_name, val_name)
    return num_classes


def _dense_classes(labels: np.ndarray, name: str) -> int:
    """The number of classes, K, when the labels are exactly 0..K-1. Gaps and huge values are
    refused: the model gets one output per label value up to the largest, so labels {0, 2**40}
    would allocate a 2**40-class layer for 2 classes."""
    gap = label_gap(labels)
    if gap is None:
        return int(labels.max()) + 1
    distinct, top, missing = gap
    raise ConfigError(f"{name}: labels are not 0..K-1 ({distinct} distinct values up to {top}; none is {missing}), "
                      f"so the model would need {top + 1:,} outputs for {distinct} classes: relabel them "
                      f"0..{distinct - 1} and convert again, e.g. labels = np.unique(labels, return_inverse=True)[1]")


def _check_same_names(train, val, train_name: str, val_name: str) -> None:
    """Refuse stores that both name their classes, differently: a validation folder missing one
    class shifts every later label, and accuracy would be measured against the wrong classes."""
    names = [source.owner.field_class_names.get(source.label_field) for source in (train, val)]
    if not all(names):
        return  # one of them keeps no names: nothing to compare
    differ = next((i for i, (a, b) in enumerate(zip(*names)) if a != b), None)
    if differ is not None:
        raise ConfigError(f"{val_name}: label {differ} is class {names[1][differ]!r} there but {names[0][differ]!r} "
                          f"in the training store {train_name}: the stores number their classes differently "
                          "(a class folder missing from one?); convert both with one class list (--class-names)")


def _check_batchable(source, name: str, role: str, crop: int | None) -> None:
    if crop is None and source.uniform_shape is None:
        raise ConfigError(f"{name}: the {role} store's images differ in size ({_size(source)}): give "
                          "--crop N (crop=N in Python) to train and evaluate on N x N crops")


def _size(source) -> str:
    if source.uniform_shape is not None:
        return "x".join(map(str, source.uniform_shape))
    sides = np.concatenate([source.heights, source.widths])
    return f"mixed, {int(sides.min())} to {int(sides.max())} px a side"


def _three(values, name: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ConfigError(f"--{name} needs 3 values (R G B, fractions of 255), got {len(values)}")
    if not all(np.isfinite(values)):
        raise ConfigError(f"--{name} values must be finite numbers, got {values}")
    if name == "std" and min(values) <= 0:
        raise ConfigError(f"--std values must be positive, got {values}")
    return values  # type: ignore[return-value]
