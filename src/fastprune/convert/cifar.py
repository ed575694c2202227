"""CIFAR-10 / CIFAR-100 "python version" batch folders (or their .tar.gz archives) -> store.

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
import tarfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np

from ..errors import ConversionError
from . import _common

CIFAR10_FOLDER = "cifar-10-batches-py"  # the folder names inside the official archives
CIFAR100_FOLDER = "cifar-100-python"
META_FILE = {"cifar10": "batches.meta", "cifar100": "meta"}  # the class names
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")  # cifar-10-python.tar.gz, cifar-100-python.tar.gz
SIDE = 32
PIXELS_PER_IMAGE = 3 * SIDE * SIDE


class _NdarrayName:
    """What the name ``numpy.ndarray`` unpickles to: only :func:`_empty_array`'s first argument.
    The class itself would be callable, and ``ndarray((10**10,))`` allocates any size (uninitialised:
    a 240-byte file became a store of 1.9 GB of process memory)."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refused a call of numpy.ndarray(...): it allocates the size the file claims")


def _empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b"b")``, as every pickled array starts: an empty array
    whose BUILD state then brings its shape and bytes, checked against each other by numpy. Any
    other shape would allocate what the file claims, before its bytes are seen."""
    if not isinstance(subtype, _NdarrayName) or shape not in ((0,), 0):
        raise pickle.UnpicklingError(f"refused numpy array reconstruction with shape {shape!r:.40}: "
                                     "a pickled array starts empty")
    return np.empty(0, dtype=np.uint8)


def _allowed_numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle needs: how numpy rebuilds an array and its dtype (protocol
    5: from a buffer, whose size numpy checks against the shape), and how protocols 0-2 written by
    Python 3 spell a bytes object."""
    try:
        from numpy._core.numeric import _frombuffer  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return {
        ("numpy.core.multiarray", "_reconstruct"): _empty_array,  # name in the original files
        ("numpy._core.multiarray", "_reconstruct"): _empty_array,  # name numpy 2 writes
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): _NdarrayName(),
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocols 0-2 use it for bytes (``encode(text, "latin1")``): that
    codec only, not a door to every registered one."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r}): only latin1 spells bytes")
    return text.encode("latin1")


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


def unpickle(file: BinaryIO, name: str) -> Any:
    """Unpickle a CIFAR batch safely; bytes keys are kept as the Python 2 files have them."""
    try:
        return RestrictedUnpickler(file, encoding="bytes").load()
    except MemoryError:  # a length field claiming more bytes than there are memory (no message)
        raise ConversionError(f"{name}: cannot read as a CIFAR batch pickle: it claims more memory than there is "
                              "(a damaged file?)") from None
    except Exception as exc:  # any unpickling failure: corrupt, truncated or malicious file
        raise ConversionError(f"{name}: cannot read as a CIFAR batch pickle: {exc}") from exc


def load_pickle(path: str | os.PathLike) -> Any:
    path = _common.require_file(path, "CIFAR batch")
    with open(path, "rb") as file:
        return unpickle(file, str(path))


def _get(batch: dict, key: str, name: str) -> Any:
    """``batch[key]`` whether the file has str keys or the original Python 2 bytes keys."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
    raise ConversionError(f"{name}: CIFAR batch has no {key!r} entry (keys: {keys})")


def parse_batch(batch: Any, name: str, label_keys: tuple[str, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One unpickled batch as (N x 32 x 32 x 3 uint8 images, one int64 array per label key)."""
    if not isinstance(batch, dict):
        raise ConversionError(f"{name}: expected a dict in a CIFAR batch, got {type(batch).__name__}")
    data = _get(batch, "data", name)
    if not isinstance(data, np.ndarray):
        raise ConversionError(f"{name}: 'data' is a {type(data).__name__}, expected a numpy array")
    _common.check_uint8(data, f"{name}: 'data'")
    if data.ndim != 2 or data.shape[1] != PIXELS_PER_IMAGE:
        raise ConversionError(f"{name}: 'data' has shape {data.shape}, expected N x {PIXELS_PER_IMAGE}")
    _common.check_not_empty(len(data), name)
    labels = [_common.as_int_labels(_get(batch, key, name), f"{name}: {key!r}") for key in label_keys]
    for key, column in zip(label_keys, labels):
        _common.check_counts_match(len(data), len(column), f"{name} ({key!r})")
    images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)  # planes -> HxWxC
    return np.ascontiguousarray(images), labels


def select_batches(names: list[str], kind: str, split: str, where: str) -> list[str]:
    """Which of the file ``names`` (base names) hold ``split``, in the official loaders' order."""
    if split not in ("train", "test"):
        raise ConversionError(f"split must be 'train' or 'test', got {split!r}")
    wanted = split if kind == "cifar100" else "test_batch" if split == "test" else None
    if wanted is not None:
        if wanted not in names:
            raise ConversionError(f"{where}: CIFAR-{kind[5:]} batch {wanted!r} not found")
        return [wanted]
    numbered = [name for name in names if re.fullmatch(r"data_batch_\d+", name)]
    if not numbered:
        raise ConversionError(f"{where}: no CIFAR-10 training batches (data_batch_1 ...) found")
    return sorted(numbered, key=lambda name: int(name.rsplit("_", 1)[1]))


def _wanted_files(names: list[str], kind: str, split: str, where: str) -> list[str]:
    """The split's batches, then the meta file (class names) when the source has one."""
    meta = META_FILE[kind]
    return select_batches(names, kind, split, where) + ([meta] if meta in names else [])


def label_names(meta: Any, name: str, kind: str, coarse: bool) -> dict[str, list[str]]:
    """{field: class names} from an unpickled meta file; a name list the file lacks is left out."""
    if not isinstance(meta, dict):
        raise ConversionError(f"{name}: expected a dict in a CIFAR meta file, got {type(meta).__name__}")
    keys = {"label": "label_names"} if kind == "cifar10" else {"label": "fine_label_names"}
    if coarse:
        keys["coarse_label"] = "coarse_label_names"
    found = {}
    for field, key in keys.items():
        try:
            found[field] = _common.names_list(_get(meta, key, name), f"{name}: {key!r}")
        except ConversionError:
            if any(k in meta for k in (key, key.encode())):
                raise  # there, but not a list of names
    return found


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def folder_batches(source: Path, kind: str, split: str) -> Iterator[tuple[str, Any]]:
    """(name, unpickled batch) of a split in an unpacked folder, or the folder it was unpacked in."""
    source = _common.require_dir(source, f"{kind} folder")
    inner = source / (CIFAR10_FOLDER if kind == "cifar10" else CIFAR100_FOLDER)
    folder = inner if inner.is_dir() else source
    names = [p.name for p in folder.iterdir() if p.is_file()]
    for name in _wanted_files(names, kind, split, str(folder)):
        yield str(folder / name), load_pickle(folder / name)


def archive_batches(archive: Path, kind: str, split: str) -> Iterator[tuple[str, Any]]:
    """(name, unpickled batch) of a split read straight from the downloaded .tar.gz (no unpacking)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in _wanted_files(list(members), kind, split, str(archive)):
                member = members[name]
                with tar.extractfile(member) as file:
                    yield f"{archive}:{member.name}", unpickle(file, f"{archive}:{member.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ConversionError(f"{archive}: cannot read archive: {exc}") from exc


def input_files(source: Path) -> list[Path]:
    """Every file a conversion of ``source`` may read: the archive, or the files of the batch
    folder and of the official folders inside it (what the output must never replace)."""
    if source.is_file():
        return [source]
    folders = [source, source / CIFAR10_FOLDER, source / CIFAR100_FOLDER]
    return [path for folder in folders if folder.is_dir() for path in folder.iterdir() if path.is_file()]


def load_cifar(source: str | os.PathLike, kind: str, split: str = "train", coarse: bool = False,
               names: dict | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """All images and label columns of a split: ``label`` first, then ``coarse_label``.

    ``source``: the batch folder, the folder it was unpacked in, or the official .tar.gz archive.
    ``names``: a dict that receives {field: class names} from the source's meta file, if any.
    """
    if kind not in ("cifar10", "cifar100"):
        raise ConversionError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")
    if coarse and kind != "cifar100":
        raise ConversionError("coarse labels exist only in CIFAR-100")
    label_keys = ("labels",) if kind == "cifar10" else ("fine_labels", "coarse_labels")[:1 + coarse]
    source = Path(source)
    found = archive_batches(source, kind, split) if is_archive(source) else folder_batches(source, kind, split)
    batches = []
    for name, batch in found:
        if Path(name).name != META_FILE[kind]:
            batches.append(parse_batch(batch, name, label_keys))
        elif names is not None:
            names.update(label_names(batch, name, kind, coarse))
    images = np.concatenate([images for images, _ in batches])
    columns = [np.concatenate([labels[i] for _, labels in batches]) for i in range(len(label_keys))]
    return images, columns


def from_cifar(source: str | os.PathLike, out: str | os.PathLike, *, kind: str = "cifar10",
               split: str = "train", coarse: bool = False, jpeg: bool = False,
               quality: int = _common.DEFAULT_JPEG_QUALITY, workers: int | None = None,
               progress: bool = True, class_names: Sequence[str] | None = None, index: bool = False) -> Path:
    """Convert a CIFAR-10/100 python batch folder to a store at ``out``; returns the path.

    Fields: ``image`` (32x32 RGB), ``label`` (CIFAR-100: the fine label) and, for CIFAR-100 with
    ``coarse=True``, ``coarse_label``. The class names of the meta file (``batches.meta``,
    ``meta``) are kept in the store when the source has it; ``class_names`` replaces the
    label's. ``index=True`` adds an ``index`` field (each sample's id), which ffcv's own Loader needs to
    report a batch's samples (:class:`fastprune.integrations.ffcv.PrunedOrder`).
    """
    _common.check_flags(coarse=coarse, jpeg=jpeg, progress=progress, index=index)
    out = _common.check_output_path(out, inputs=input_files(Path(source)))
    names: dict[str, list[str]] = {}
    images, columns = load_cifar(source, kind, split, coarse, names=names)
    names.update(_common.label_names_option(class_names))
    fields = _common.image_label_fields(jpeg=jpeg, quality=quality,
                                        extra_int_fields=("coarse_label",) if coarse else ())
    return _common.write(out, _common.ArraySource(images, *columns), fields,
                         workers=workers, progress=progress, class_names=names, index=index)
