"""Any map-style Dataset returning ``(image, label)`` pairs or dicts -> store; and Hugging Face
``datasets.Dataset`` objects, whose rows are dicts.

``image`` may be a PIL image, an HxW / HxWxC numpy array or a uint8 CHW / HWC tensor; ``label``
an int, numpy integer or 0-d integer tensor. Dict samples are read by key (``image_key``,
``label_key``; by default "image" and "label"). Each sample is checked as the writer reads it, and a
bad one stops the conversion with an error naming its index (the writer then leaves no file).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import random
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._args import check_positive_int
from ..errors import ConversionError, LabelWarning, UnreadableSample, user_stacklevel
from ..store.encoding import LeftOut
from . import _common
from .open_files import workers_for_open_files


class DatasetSource:
    """Adapts a map-style dataset to the writer: (HxWx3 uint8, int label or target) per index, checked."""

    def __init__(self, dataset: Any, *, one_shape: bool, max_side: int | None = None,
                 resize: tuple[int, int] | None = None, image_key: str = "image", label_key: str = "label",
                 drop_unlabeled: bool = False, skip_unreadable: bool = False, image_mode: str | None = None,
                 uint8_arrays: bool = False, targets: bool = False, target_dtype: str | None = None,
                 max_pixels: int = _common.DEFAULT_MAX_PIXELS):
        _common.check_size_options(max_side, resize, max_pixels)
        self.dataset = dataset
        self.image_mode = image_mode  # a Hugging Face Image(mode=...) column's mode, for encoded images
        # a Hugging Face array column declared uint8 (Array3D, nested Sequence), which datasets
        # reads back as lists or int64 arrays: cast, losslessly (its values are uint8 by type)
        self.uint8_arrays = uint8_arrays
        self.keys = (image_key, label_key)
        self.targets = targets  # labels are targets (from_torch_dataset(targets=True)), not classes
        self.target_dtype = target_dtype  # arrays cast to it (a Hugging Face column's declared type)
        self.max_side, self.resize = max_side, resize
        self.max_pixels = max_pixels  # of an encoded image (a Hugging Face Image column), checked before decoding
        try:
            self.length = len(dataset)
        except TypeError as exc:
            raise ConversionError(f"{type(dataset).__name__} has no len(): a map-style dataset "
                                  "(with __len__ and __getitem__) is needed") from exc
        _common.check_not_empty(self.length, f"dataset {type(dataset).__name__}")
        self.skip_unreadable = skip_unreadable
        self.base_seed = _rng_fingerprint()  # before any sample is read
        # the first sample is checked now, so a wholly unsuitable dataset fails before the writer
        # starts; when raw storage needs one shape, its shape is the one every sample must have
        self.reference_index, self.reference_shape = 0, None
        # drop_unlabeled: unlabelled samples are left out as the writer reads them (LeftOut), not
        # found by reading every sample once more first; those known already are marked here
        self.left_out = self._unlabelled_by_column() if drop_unlabeled else None  # bool [length]
        first_image, self.first_label = self._first_readable()
        self.reference_shape = first_image.shape if one_shape else None

    def label_field(self):
        """The label's field: an IntField for classes; for targets, as sample 0's target is (a
        FloatField for a number, else an NDArrayField of its shape and dtype)."""
        from ..store.fields import IntField

        if not self.targets:
            return IntField()
        return _common.target_field(np.asarray(self.first_label)[None])

    def _first_readable(self) -> tuple[np.ndarray, Any]:
        """Sample 0, or the first sample that is labelled (with drop_unlabeled) and reads (with
        skip_unreadable; the writer names the ones before it). The unlabelled ones passed over are
        noted, so that the writer leaves them out without reading them again."""
        unreadable = None
        for index in range(self.length):
            try:
                self.reference_index = index
                return self[index]
            except LeftOut:
                self.left_out[index] = True  # read once: the writer leaves it out unread (forked workers too)
            except UnreadableSample as exc:
                if not self.skip_unreadable:
                    raise
                unreadable = exc
        if unreadable is not None:  # every labelled sample failed to read: the last one's error
            raise unreadable
        _common.check_not_empty(0, f"dataset {type(self.dataset).__name__} without its unlabelled samples")
        raise AssertionError("unreachable: check_not_empty raised")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        if self.left_out is not None and self.left_out[index]:
            raise LeftOut  # known unlabelled: a label column said so, or _first_readable read it
        what = f"sample {index} of {type(self.dataset).__name__}"
        item = self._pair(self._fetch(index, what), what)
        if self.targets:
            label = self._target(item[1], what)
        else:
            label = _label(item[1], f"{what}: label")
            if label is None or label < 0:
                if self.left_out is not None:  # drop_unlabeled
                    raise LeftOut  # before its image is decoded
                raise _common.unlabeled_error(what, label, _common.DROP_OPTION)
        image = self._image(item[0], f"{what}: image")
        if self.reference_shape is not None and image.shape != self.reference_shape:
            raise _common.mixed_shape_error((f"sample {self.reference_index}", self.reference_shape),
                                            (f"sample {index}", image.shape))
        return image, label

    def _target(self, value: Any, what: str) -> float | np.ndarray:
        """A sample's target, checked, in sample 0's shape and dtype (which set the field)."""
        target = _common.as_target(value, f"{what}: target", self.target_dtype)
        first = getattr(self, "first_label", None)
        if first is None:
            return target
        shape, first_shape, reference = np.shape(target), np.shape(first), f"sample {self.reference_index}'s"
        if shape != first_shape:
            raise ConversionError(f"{what}: target has shape {shape}, {reference} {first_shape}: every sample's "
                                  "target needs one shape (multi-label tags: a 0/1 vector of one length)")
        if shape and not np.can_cast(target.dtype, first.dtype, "safe"):
            raise ConversionError(f"{what}: target is {target.dtype}, {reference} {first.dtype}, which it does not "
                                  "cast to safely: give every sample's target one dtype")
        return target

    def _image(self, value: Any, what: str) -> np.ndarray:
        """A sample's image as fitted HxWx3 uint8: decoded here where it is still encoded (a
        Hugging Face image as {"bytes", "path"}), else converted."""
        if value is None:  # a scraped dataset's missing image: skip_unreadable may leave it out
            raise UnreadableSample(f"{what} is missing (None)")
        if _is_encoded_image(value):
            return _decode_encoded(value, what, self.max_side, self.resize, self.image_mode, self.max_pixels)
        if self.uint8_arrays and isinstance(value, (list, np.ndarray)):
            value = np.asarray(value, dtype=np.uint8)
        image = _common.any_image_to_rgb(value, what)
        return _common.fit_image(image, max_side=self.max_side, resize=self.resize)

    def _unlabelled_by_column(self) -> np.ndarray:
        """Which samples a Hugging Face dataset's label column says are unlabelled (-1 or None),
        read without fetching a row; none known for other datasets (found as they are read)."""
        unlabelled = np.zeros(self.length, dtype=bool)
        label_key = self.keys[1]
        if isinstance(getattr(self.dataset, "column_names", None), list) and label_key in self.dataset.column_names \
                and not _has_transform(self.dataset):  # a transform would run on every row for it
            labels = self.dataset[label_key][:]  # datasets 5's lazy Column took 8 us a row to step through
            labels = labels.tolist() if hasattr(labels, "tolist") else labels  # numpy / torch formats
            for i, value in enumerate(labels):
                label = _label(value, f"sample {i} of {type(self.dataset).__name__}: label")
                unlabelled[i] = label is None or label < 0
        return unlabelled

    def _pair(self, item: Any, what: str) -> tuple[Any, Any]:
        """(image, label) of a sample that is a pair or a dict."""
        if isinstance(item, dict):
            missing = [key for key in self.keys if key not in item]
            if missing:
                raise ConversionError(f"{what}: no key {missing[0]!r} in the sample (keys: {sorted(item)}); "
                                      "name the image and label keys (image_key=, label_key=)")
            return item[self.keys[0]], item[self.keys[1]]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConversionError(f"{what}: expected an (image, label) pair or a dict, got {type(item).__name__}"
                                  + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""))
        return item[0], item[1]

    def _fetch(self, index: int, what: str) -> Any:
        _seed_sample(self.base_seed, index)
        try:
            return self.dataset[index]
        except Exception as exc:  # the user's dataset code failed (a bad file?); say which sample
            raise UnreadableSample(f"{what}: the dataset raised {type(exc).__name__}: {exc}") from exc


# A dataset that draws random numbers (offline augmentation, synthetic data) would otherwise give
# results that depend on which forked worker read which chunk: every worker starts from the
# parent's RNG states, so workers repeated each other's draws (half the samples duplicated, at 2
# workers). Before each sample is read, torch's CPU generator, numpy's global one and Python's
# ``random`` are seeded from the states the conversion began with and the sample's index: the
# store is then the same at any number of workers, and the same again from the same states.
# (A generator object of the dataset's own is copied into each worker like any other state; its
# draws still depend on the worker.)

def _rng_fingerprint() -> int:
    """A 64-bit digest of the global RNG states now (none is advanced)."""
    import torch

    digest = hashlib.blake2b(digest_size=8)
    digest.update(torch.default_generator.get_state().numpy().tobytes())
    name, key, pos, *_ = np.random.get_state()
    digest.update(key.tobytes() + pos.to_bytes(8, "little"))
    digest.update(repr(random.getstate()).encode())
    return int.from_bytes(digest.digest(), "little")


def _seed_sample(base_seed: int, index: int) -> None:
    seed = int.from_bytes(hashlib.blake2b(f"{base_seed}:{index}".encode(), digest_size=8).digest(), "little")
    import torch

    torch.default_generator.manual_seed(seed)  # the CPU generator only: torch.manual_seed takes 250 us
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


@contextlib.contextmanager
def _global_rng_kept():
    """The caller's RNG states as they were, after a conversion that seeded them per sample."""
    import torch

    states = torch.default_generator.get_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.default_generator.set_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def _is_encoded_image(value: Any) -> bool:
    """A Hugging Face image not yet decoded: {"bytes": ..., "path": ...} (an ``Image(decode=False)``
    column, a parquet struct column, or what from_hf_dataset reads)."""
    return isinstance(value, dict) and set(value) == {"bytes", "path"} and \
        (value["bytes"] is not None or value["path"] is not None)


def _decode_encoded(value: dict, what: str, max_side, resize, mode: str | None,
                    max_pixels: int = _common.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a {"bytes", "path"} image as the image-folder converter decodes a file: only the
    formats it reads (PIL's EPS plugin would run Ghostscript), size checked before decoding, JPEGs
    DCT-downscaled where they shrink; and turned upright by its EXIF orientation, as ``datasets``
    decodes it (``ds[i]["image"]``), which the user sees."""
    from .image_folder import read_fitted

    data, path = value["bytes"], value["path"]
    name = f"{what} ({path})" if path else what
    if data is None:  # a path the row names: a regular file of an image's size, as in an image folder
        data = _common.read_image_file(path, name, max_pixels)
    return read_fitted(name, bytes(data), max_side, resize, max_pixels, mode=mode, exif_transpose=True)


def _has_transform(dataset: Any) -> bool:
    """Whether a Hugging Face dataset runs a transform of the user's on each row (``with_transform``
    / ``set_transform``): its rows are then whatever the transform returns."""
    return (getattr(dataset, "format", None) or {}).get("type") == "custom"


def _label(value: Any, what: str) -> int | None:
    """A sample's label as an int, or None where it has none (a Hugging Face column's missing value,
    as a ClassLabel reads -1 back), which drop_unlabeled leaves out like a negative label."""
    return None if value is None else _common.as_int_label(value, what, hint=_common.TARGETS_HINT)


def from_torch_dataset(dataset: Any, out: str | os.PathLike, *, jpeg: bool = False,
                       quality: int = _common.DEFAULT_JPEG_QUALITY, max_side: int | None = None,
                       resize: tuple[int, int] | None = None, workers: int | None = None,
                       progress: bool = True, image_key: str = "image", label_key: str = "label",
                       class_names: Sequence[str] | None = None, drop_unlabeled: bool = False,
                       index: bool = False, skip_unreadable: bool = False, targets: bool = False) -> Path:
    """Convert a map-style dataset of ``(image, int label)`` pairs (or dicts holding
    ``image_key`` and ``label_key``) to a store at ``out``.

    Raw storage (the default) needs every image to have one shape (``resize`` gives them one);
    JPEG storage (``jpeg=True``) accepts mixed shapes. ``max_side`` shrinks large images keeping
    their aspect. Pixels must be uint8: float tensors from ``ToTensor()`` are refused.
    ``class_names`` (label i -> name i) is kept in the store; by default the dataset's own
    ``.classes`` (torchvision's datasets, also through a ``Subset``); ``[]`` keeps none.
    A negative label (-1: "no label") stops the conversion naming its sample, unless
    ``drop_unlabeled=True`` leaves such samples out as they are read (once each), and later
    samples move up. Labels that are not 0..K-1 are written with a one-line LabelWarning (training
    refuses them).
    ``index=True`` adds an ``index`` field (each sample's id), which ffcv's own Loader needs to
    report a batch's samples (:class:`fastprune.integrations.ffcv.PrunedOrder`).
    ``skip_unreadable=True`` leaves out the samples whose ``dataset[i]`` raises (a bad file behind
    it) instead of stopping: one ``SkippedSamplesWarning`` names them, and later samples move up.
    More than 1% of the samples (and over 10) stops the conversion all the same.
    ``targets=True``: the labels are targets, not classes (regression, multi-label; see
    :func:`~fastprune.convert.from_arrays`): sample 0's decides the field, a number (float64) or
    an array, a tensor's included, whose shape and dtype every sample's must take.
    ``workers`` (default: every core) read the dataset in forked processes, which share any file
    it holds open: a dataset holding one (a file, a zip, an h5py file) is read in one process, with
    a warning; open such files on first use in ``__getitem__`` to convert on every core.
    """
    return _convert(dataset, out, jpeg=jpeg, quality=quality, max_side=max_side, resize=resize,
                    workers=workers, progress=progress, image_key=image_key, label_key=label_key,
                    class_names=class_names, drop_unlabeled=drop_unlabeled, index=index,
                    skip_unreadable=skip_unreadable, targets=targets)


def _convert(dataset: Any, out: str | os.PathLike, *, jpeg: bool, quality: int, max_side: int | None,
             resize: tuple[int, int] | None, workers: int | None, progress: bool, image_key: str,
             label_key: str, class_names: Sequence[str] | None, drop_unlabeled: bool, index: bool,
             skip_unreadable: bool, image_mode: str | None = None, uint8_arrays: bool = False,
             targets: bool = False, target_dtype: str | None = None,
             max_pixels: int = _common.DEFAULT_MAX_PIXELS) -> Path:
    # a Hugging Face dataset's Arrow files (converting onto one of them destroyed the source)
    out = _common.check_output_path(out, inputs=[f["filename"] for f in getattr(dataset, "cache_files", None) or ()
                                                 if isinstance(f, dict) and "filename" in f])
    _common.check_flags(jpeg=jpeg, drop_unlabeled=drop_unlabeled, skip_unreadable=skip_unreadable, progress=progress,
                        targets=targets, index=index)
    if targets:
        _common.check_target_options(class_names, drop_unlabeled, f"dataset {type(dataset).__name__}")
    if workers is not None:
        check_positive_int(workers, "workers")
    workers = workers_for_open_files(dataset, workers)
    names = _common.names_list(class_names, "class_names") if class_names is not None \
        else None if targets else _torchvision_classes(dataset)
    with _global_rng_kept():
        source = DatasetSource(dataset, one_shape=not jpeg, max_side=max_side, resize=resize,
                               image_key=image_key, label_key=label_key, drop_unlabeled=drop_unlabeled,
                               skip_unreadable=skip_unreadable, image_mode=image_mode, uint8_arrays=uint8_arrays,
                               targets=targets, target_dtype=target_dtype, max_pixels=max_pixels)
        fields = {**_common.image_label_fields(jpeg=jpeg, quality=quality), "label": source.label_field()}
        return _common.write(out, source, fields, workers=workers, progress=progress,
                             class_names={} if targets else {"label": names}, index=index,
                             skip_unreadable=skip_unreadable)


def _names_through(transform, classes: list, owner: str) -> list:
    """The names of the labels ``owner``'s target_transform makes of its ``classes``' labels: the
    same where it keeps each one (int, torch.tensor; a random relabelling, whose labels still name
    classes), reordered where it permutes them, none (a LabelWarning) where it does anything else
    (1 - y on 3 classes: a cat stored as 'dog')."""
    def mapped() -> list[int]:
        return [_common.as_int_label(transform(label), "") for label in range(len(classes))]

    try:
        labels, again = mapped(), mapped()
    except Exception:  # noqa: BLE001  the user's transform, on a label alone: anything
        labels = again = None
    if labels is not None and (labels != again or labels == list(range(len(classes)))):
        return classes
    if labels is not None and sorted(labels) == list(range(len(classes))):
        return [classes[labels.index(label)] for label in range(len(classes))]
    warnings.warn(f"{owner}.target_transform makes labels its .classes do not name, so no class names are stored; "
                  "give class_names= (label i -> name i) to store some", LabelWarning, stacklevel=user_stacklevel())
    return []


def _torchvision_classes(dataset: Any) -> list[str]:
    """The ``.classes`` of a torchvision-style dataset (or of the one a ``Subset`` wraps, whose
    labels are the same); [] when there is none, or it is not a list of names."""
    for candidate in (dataset, getattr(dataset, "dataset", None)):
        classes = getattr(candidate, "classes", None)
        transform = getattr(candidate, "target_transform", None)
        if isinstance(classes, (list, tuple)) and classes and transform is not None:
            classes = _names_through(transform, list(classes), type(candidate).__name__)
        if isinstance(classes, (list, tuple)) and classes:
            try:
                return _common.names_list(classes, f"{type(candidate).__name__}.classes")
            except ConversionError:
                return []  # something else called "classes": store no names rather than wrong ones
    return []


def from_hf_dataset(dataset: Any, out: str | os.PathLike, *, image_column: str = "image",
                    label_column: str = "label", max_pixels: int = _common.DEFAULT_MAX_PIXELS,
                    **options: Any) -> Path:
    """Convert a Hugging Face ``datasets.Dataset`` (one split, already loaded) to a store.

    Rows are read by column name; label columns must hold integers (a ``ClassLabel`` does, and its
    names are kept in the store). An ``Image`` column is decoded here from its bytes, as image
    folders are (JPEG, PNG, WebP, BMP, TIFF; PIL's other plugins are never reached), whatever
    ``set_format`` the dataset has (numpy/torch formats turn palette images into their indices).
    A dataset with ``with_transform``/``set_transform`` is read through the transform, and
    ``image_column``/``label_column`` then name keys of what it returns. ``max_pixels``: an encoded
    image whose header claims more pixels is refused before it is decoded (or skipped, with
    ``skip_unreadable=True``). Options as :func:`from_torch_dataset` (``jpeg``, ``resize``,
    ``max_side``, ``class_names``, ...).
    Nothing is downloaded here: load the dataset first.
    """
    _check_options(options)
    columns = getattr(dataset, "column_names", None)
    if not isinstance(columns, list):  # a DatasetDict maps split names to column lists
        raise ConversionError(f"expected a datasets.Dataset (one split), got {type(dataset).__name__}"
                              + ("; for a DatasetDict pick a split, e.g. dataset['train']"
                                 if isinstance(columns, dict) else ""))
    features = getattr(dataset, "features", None) or {}
    label_names = getattr(features.get(label_column), "names", None)
    if label_names and options.get("class_names") is None and not options.get("targets"):  # ClassLabel
        options["class_names"] = label_names
    image_mode, uint8_arrays, target_dtype = None, False, None
    if not _has_transform(dataset):  # with one, the keys are the transform's: checked per sample
        for what, column in (("image_column", image_column), ("label_column", label_column)):
            if column not in columns:
                raise ConversionError(f"{what}={column!r} is not a column of the dataset (columns: {columns}); "
                                      "name the image and label columns (fastprune convert: --columns IMAGE,LABEL)")
        dataset, image_mode = _encoded_rows(dataset, image_column)
        uint8_arrays = _declared_dtype(features[image_column]) == "uint8"
        # datasets reads a list column back as Python numbers (float64, int64): keep its own type
        target_dtype = _declared_dtype(features[label_column]) if options.get("targets") else None
    return _convert(dataset, out, image_key=image_column, label_key=label_column, image_mode=image_mode,
                    uint8_arrays=uint8_arrays, target_dtype=target_dtype,
                    max_pixels=check_positive_int(max_pixels, "max_pixels"), **{**_DEFAULTS, **options})


def _encoded_rows(dataset: Any, image_column: str) -> tuple[Any, str | None]:
    """The dataset read as plain Python rows (no numpy/torch format), its ``Image`` column left
    encoded ({"bytes", "path"}); and that column's mode, if it sets one."""
    import datasets

    feature = dataset.features[image_column]
    if isinstance(feature, datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset.with_format(None), getattr(feature, "mode", None)


def _declared_dtype(feature: Any) -> str | None:
    """The element type a Hugging Face array column declares (Array2D/3D's dtype, a nested
    Sequence's innermost Value), or None (an Image column, or no such type)."""
    while hasattr(feature, "feature"):  # Sequence / List of ...
        feature = feature.feature
    dtype = getattr(feature, "dtype", None)
    return dtype if isinstance(dtype, str) else None


# from_torch_dataset's options and their defaults, which from_hf_dataset passes on
_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(from_torch_dataset).parameters.items()
             if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("image_key", "label_key")}


def _check_options(options: dict) -> None:
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"from_hf_dataset() got an unexpected keyword argument {unknown[0]!r} "
                        f"(options: {', '.join(_DEFAULTS)})")
