"""CIFAR-10 / CIFAR-100 "python version" batch folders -> store.

The batches are pickles written by Python 2's cPickle: dicts with (byte-)string keys, lists of
ints and strings, and one numpy uint8 array ``data`` of N x 3072 (1024 red, 1024 green, 1024 blue
values per image, row-major 32x32). Unpickling runs code named by the file, so they are read with
:class:`RestrictedUnpickler`, which can build only those plain types.

CIFAR-10: ``data_batch_1`` .. ``data_batch_5`` (train) and ``test_batch`` with ``labels``.
CIFAR-100: ``train`` and ``test`` with ``fine_labels`` (stored as ``label``) and ``coarse_labels``
(stored as ``coarse_label`` when ``coarse=True``).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError
from . import _common

CIFAR10_FOLDER = "cifar-10-batches-py"  # the folder names inside the official archives
CIFAR100_FOLDER = "cifar-100-python"
SIDE = 32
PIXELS_PER_IMAGE = 3 * SIDE * SIDE


def _allowed_numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle needs: how numpy rebuilds an array and its dtype."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # name in the original files
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # name numpy 2 writes
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings, numbers and numpy arrays; refuses every other global.

    A pickle can name any importable callable (``os.system``...) and have it called; refusing in
    ``find_class`` stops that before anything runs.
    """

    allowed = _allowed_numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: CIFAR batches contain only plain data and numpy "
                "arrays") from None


def load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a CIFAR batch safely; bytes keys are kept as the Python 2 files have them."""
    path = _common.require_file(path, "CIFAR batch")
    try:
        with open(path, "rb") as file:
            return RestrictedUnpickler(file, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure: corrupt, truncated or malicious file
        raise ConversionError(f"{path}: cannot read as a CIFAR batch pickle: {exc}") from exc


def _get(batch: dict, key: str, path: Path) -> Any:
    """``batch[key]`` whether the file has str keys or the original Python 2 bytes keys."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
    raise ConversionError(f"{path}: CIFAR batch has no {key!r} entry (keys: {keys})")


def read_batch(path: str | os.PathLike, label_keys: tuple[str, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One batch file as (N x 32 x 32 x 3 uint8 images, one int64 array per label key)."""
    path = Path(path)
    batch = load_pickle(path)
    if not isinstance(batch, dict):
        raise ConversionError(f"{path}: expected a dict in a CIFAR batch, got {type(batch).__name__}")
    data = _get(batch, "data", path)
    if not isinstance(data, np.ndarray):
        raise ConversionError(f"{path}: 'data' is a {type(data).__name__}, expected a numpy array")
    _common.check_uint8(data, f"{path}: 'data'")
    if data.ndim != 2 or data.shape[1] != PIXELS_PER_IMAGE:
        raise ConversionError(f"{path}: 'data' has shape {data.shape}, expected N x {PIXELS_PER_IMAGE}")
    _common.check_not_empty(len(data), str(path))
    labels = [_common.as_int_labels(_get(batch, key, path), f"{path}: {key!r}") for key in label_keys]
    for key, column in zip(label_keys, labels):
        _common.check_counts_match(len(data), len(column), f"{path} ({key!r})")
    images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)  # planes -> HxWxC
    return np.ascontiguousarray(images), labels


def cifar_folder(source: str | os.PathLike, kind: str) -> Path:
    """The batch folder itself, accepting its parent (where the archive was unpacked) too."""
    source = _common.require_dir(source, f"{kind} folder")
    inner = source / (CIFAR10_FOLDER if kind == "cifar10" else CIFAR100_FOLDER)
    return inner if inner.is_dir() else source


def batch_files(folder: Path, kind: str, split: str) -> list[Path]:
    """The batch files of ``split``, in the order the official loaders use."""
    if split not in ("train", "test"):
        raise ConversionError(f"split must be 'train' or 'test', got {split!r}")
    if kind == "cifar100":
        return [_common.require_file(folder / split, "CIFAR-100 batch")]
    if split == "test":
        return [_common.require_file(folder / "test_batch", "CIFAR-10 batch")]
    numbered = [p for p in folder.iterdir() if re.fullmatch(r"data_batch_\d+", p.name)]
    if not numbered:
        raise ConversionError(f"{folder}: no CIFAR-10 training batches (data_batch_1 ...) found")
    return sorted(numbered, key=lambda p: int(p.name.rsplit("_", 1)[1]))


def load_cifar(source: str | os.PathLike, kind: str, split: str = "train",
               coarse: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """All images and label columns of a split: ``label`` first, then ``coarse_label``."""
    if kind not in ("cifar10", "cifar100"):
        raise ConversionError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")
    if coarse and kind != "cifar100":
        raise ConversionError("coarse labels exist only in CIFAR-100")
    label_keys = ("labels",) if kind == "cifar10" else ("fine_labels", "coarse_labels")[:1 + coarse]
    batches = [read_batch(path, label_keys) for path in batch_files(cifar_folder(source, kind), kind, split)]
    images = np.concatenate([images for images, _ in batches])
    columns = [np.concatenate([labels[i] for _, labels in batches]) for i in range(len(label_keys))]
    return images, columns


def from_cifar(source: str | os.PathLike, out: str | os.PathLike, *, kind: str = "cifar10",
               split: str = "train", coarse: bool = False, jpeg: bool = False,
               quality: int = _common.DEFAULT_JPEG_QUALITY, workers: int | None = None,
               progress: bool = True) -> Path:
    """Convert a CIFAR-10/100 python batch folder to a store at ``out``; returns the path.

    Fields: ``image`` (32x32 RGB), ``label`` (CIFAR-100: the fine label) and, for CIFAR-100 with
    ``coarse=True``, ``coarse_label``.
    """
    out = _common.check_output_path(out)
    images, columns = load_cifar(source, kind, split, coarse)
    fields = _common.image_label_fields(jpeg=jpeg, quality=quality,
                                        extra_int_fields=("coarse_label",) if coarse else ())
    return _common.write(out, _common.ArraySource(images, *columns), fields,
                         workers=workers, progress=progress)
