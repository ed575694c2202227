"""numpy arrays (in memory or in a .npz with ``images`` and ``labels``) -> store."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._args import check_bool
from ..errors import ConversionError
from . import _common


def check_arrays(images: Any, labels: Any, what: str = "arrays",
                 targets: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``images`` as N x H x W (gray) or N x H x W x 3 uint8, ``labels`` as N int64 (``targets``:
    as :func:`_common.as_targets` checks them)."""
    images = _as_pixel_array(images, what)
    _common.check_uint8(images, f"{what}: images")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        hint = ""
        if images.ndim == 4 and images.shape[3] == 4:
            hint = " (RGBA? drop the alpha channel: images[..., :3])"
        elif images.ndim == 4 and images.shape[1] in (1, 3):
            hint = " (channels first? images.transpose(0, 2, 3, 1))"
        raise ConversionError(f"{what}: images have shape {images.shape}; expected N x H x W (gray), "
                              f"N x H x W x 1 or N x H x W x 3 (RGB){hint}")
    if targets:
        labels = _common.as_targets(labels, f"{what}: labels")
    else:
        labels = _common.as_int_labels(labels, f"{what}: labels", hint=_common.TARGETS_HINT)
    _common.check_counts_match(len(images), len(labels), what)
    _common.check_not_empty(len(images), what)
    return images, labels


def _as_pixel_array(images: Any, what: str) -> np.ndarray:
    """``images`` as one numpy array. A sequence of PIL images is refused: np.asarray reads a
    palette image as its palette indices, which were stored as gray pixels; and a sequence of
    images of several shapes gets one line instead of numpy's."""
    if isinstance(images, (list, tuple)):
        for i, image in enumerate(images):
            if _common.is_pil_image(image):
                raise ConversionError(f"{what}: images[{i}] is a PIL image (mode {image.mode!r}); from_arrays takes "
                                      "pixel arrays: pass a list of (image, label) pairs to from_torch_dataset, "
                                      "which converts each to RGB")
    try:
        return np.asarray(images)
    except ValueError as exc:  # "inhomogeneous shape": a ragged sequence
        raise ConversionError(f"{what}: images are not all of one shape ({exc}); from_arrays takes one "
                              "N x H x W x 3 array: images of several sizes convert with from_torch_dataset "
                              "(jpeg=True or resize=)") from None


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``images`` and ``labels`` from a .npz; object arrays (pickles) are refused."""
    path = _common.require_file(path, "npz file")
    with open(path, "rb") as file:  # np.load reads a .npy (one array, loaded whole) as readily
        magic = file.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise ConversionError(f"{path}: a .npy file (one array), not a .npz archive; save both with "
                              "np.savez(path, images=..., labels=...)")
    if not magic.startswith(b"PK"):  # else numpy takes it for a pickle, and its error invites the user to allow pickles
        raise ConversionError(f"{path}: cannot read as .npz: not a zip archive (np.savez writes one)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"images", "labels"} - set(archive.files)
            if missing:
                raise ConversionError(f"{path}: missing array(s) {sorted(missing)}; found {archive.files}")
            return archive["images"], archive["labels"]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ConversionError(f"{path}: cannot read as .npz: {exc}") from exc
    except MemoryError as exc:  # a header may claim any shape; numpy's message says which
        raise ConversionError(f"{path}: its arrays do not fit in memory: {exc}") from None


def from_arrays(images: Any, labels: Any, out: str | os.PathLike, *, jpeg: bool = False,
                quality: int = _common.DEFAULT_JPEG_QUALITY, workers: int | None = None,
                progress: bool = True, class_names: Sequence[str] | None = None,
                drop_unlabeled: bool = False, index: bool = False, targets: bool = False) -> Path:
    """Convert ``images`` (N x H x W[x C] uint8) and integer ``labels`` to a store at ``out``.

    Gray images are stored as RGB. Pixels must already be uint8: floats are refused, not rescaled.
    ``class_names`` (label i -> name i), if given, is kept in the store. A negative label (-1:
    "no label") is refused naming its sample, or with ``drop_unlabeled=True`` its sample is left
    out. Labels that are not 0..K-1 are written with a one-line LabelWarning (training refuses them).
    ``index=True`` adds an ``index`` field (each sample's id), which ffcv's own Loader needs to
    report a batch's samples (:class:`fastprune.integrations.ffcv.PrunedOrder`).

    ``targets=True``: ``labels`` are targets, not classes: a real number per sample (regression;
    stored as float64) or an array of one shape per sample, N x ... (multi-label 0/1 vectors,
    several outputs; stored in its dtype). The Loader's batches carry them as ``labels``; train
    in a loop of your own (``fit`` and ``fastprune train`` classify). NaN and infinities are refused.
    """
    _common.check_flags(jpeg=jpeg, progress=progress, drop_unlabeled=drop_unlabeled, index=index, targets=targets)
    out = _common.check_output_path(out)
    return _from_arrays(images, labels, out, what="arrays", jpeg=jpeg, quality=quality, workers=workers,
                        progress=progress, class_names=class_names, drop_unlabeled=drop_unlabeled, index=index,
                        targets=targets)


def _from_arrays(images, labels, out: Path, *, what: str, jpeg=False, quality=_common.DEFAULT_JPEG_QUALITY,
                 workers=None, progress=True, class_names=None, drop_unlabeled=False, index=False,
                 targets=False) -> Path:
    """:func:`from_arrays`, its messages naming ``what`` (the arrays, or the .npz file holding them)."""
    if targets:
        return _from_targets(images, labels, out, what=what, jpeg=jpeg, quality=quality, workers=workers,
                             progress=progress, class_names=class_names, drop_unlabeled=drop_unlabeled, index=index)
    images, labels = check_arrays(images, labels, what=what)
    kept = _common.labelled_samples(labels, f"{what}: labels", drop_unlabeled)
    if kept is not None:
        images, labels = images[kept], labels[kept]
    fields = _common.image_label_fields(jpeg=jpeg, quality=quality)
    return _common.write(out, _common.ArraySource(images, labels), fields, workers=workers,
                         progress=progress, class_names=_common.label_names_option(class_names), index=index)


def _from_targets(images, targets, out: Path, *, what, jpeg, quality, workers, progress, class_names, drop_unlabeled,
                  index) -> Path:
    _common.check_target_options(class_names, drop_unlabeled, "from_arrays")
    images, targets = check_arrays(images, targets, what=what, targets=True)
    fields = {**_common.image_label_fields(jpeg=jpeg, quality=quality), "label": _common.target_field(targets)}
    return _common.write(out, _common.TargetSource(images, targets), fields, workers=workers, progress=progress,
                         index=index)


def from_npz(source: str | os.PathLike, out: str | os.PathLike, **options: Any) -> Path:
    """Convert a .npz holding ``images`` and ``labels`` (see :func:`from_arrays`)."""
    out = _common.check_output_path(out, inputs=(source,))
    images, labels = load_npz(source)
    options["targets"] = check_bool(options.get("targets", False), "from_npz: targets")
    return _from_arrays(images, labels, out, what=str(source), **options)  # its messages name the file
