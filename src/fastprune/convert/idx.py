"""MNIST / Fashion-MNIST IDX files (gzipped or not) -> store.

IDX layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code (0x08 = uint8),
the number of dimensions, then one big-endian uint32 per dimension, then the values, row-major.
Images are ``idx3`` (N x H x W), labels ``idx1`` (N).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from ..errors import ConversionError
from . import _common

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
UINT8_TYPE_CODE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
# DEFLATE cannot expand data by more than ~1032:1, so a gzip file of n bytes holds at most this
# many times n bytes: a header claiming more is refused before anything is inflated.
MAX_GZIP_RATIO = 1100


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """The uint8 array stored in an IDX file with ``ndim`` dimensions; errors name the file.

    The header is checked before the values are read, and no more bytes are read (or inflated,
    for a gzipped file) than it promises: a small gzip file that inflates to gigabytes costs no
    more memory than its header claims, and a claim the file cannot hold is refused up front.
    """
    path = _common.require_file(path, "IDX file")
    with path.open("rb") as file:
        gzipped = file.read(2) == GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as file:
            return _read_idx_stream(file, path, ndim, gzipped)
    except (OSError, EOFError, zlib.error) as exc:
        if not gzipped:
            raise
        raise ConversionError(f"{path}: corrupt gzip data ({exc})") from exc


def _read_idx_stream(file: BinaryIO, path: Path, ndim: int, gzipped: bool) -> np.ndarray:
    head = file.read(4)
    if len(head) < 4:
        raise ConversionError(f"{path}: too short to be an IDX file ({len(head)} bytes)")
    zeros, type_code, file_ndim = head[0:2], head[2], head[3]
    if zeros != b"\x00\x00":
        raise ConversionError(f"{path}: not an IDX file (magic {head.hex()} does not start with 0000)")
    if type_code != UINT8_TYPE_CODE:
        raise ConversionError(f"{path}: IDX type code 0x{type_code:02x}, only 0x08 (uint8) is supported")
    if file_ndim != ndim:
        raise ConversionError(f"{path}: IDX file has {file_ndim} dimensions, expected {ndim}")
    dims_bytes = file.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ConversionError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", dims_bytes)
    header_size = 4 + 4 * ndim
    count = math.prod(dims)  # Python ints: no wrap-around, whatever the header claims
    expected = header_size + count
    stored = path.stat().st_size
    if not gzipped and stored != expected:
        raise _size_error(path, dims, expected, f"{stored} bytes")
    if gzipped and expected > stored * MAX_GZIP_RATIO:
        raise _size_error(path, dims, expected, f"a {stored}-byte gzip stream")
    data = file.read(count + 1)  # one byte more than promised tells a stream that holds more
    if len(data) != count:
        raise _size_error(path, dims, expected, f"{header_size + len(data)} bytes" if len(data) < count
                          else f"more than {expected} bytes")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _size_error(path: Path, dims: tuple[int, ...], expected: int, held: str) -> ConversionError:
    return ConversionError(f"{path}: IDX header says shape {dims} ({expected} bytes) but the file holds {held}")


def find_idx_files(folder: str | os.PathLike, split: str = "train") -> tuple[Path, Path]:
    """The (images, labels) IDX files of ``split`` in ``folder``, gzipped or not."""
    if split not in SPLIT_PREFIX:
        raise ConversionError(f"split must be one of {sorted(SPLIT_PREFIX)}, got {split!r}")
    folder = _common.require_dir(folder, "IDX folder")
    prefix = SPLIT_PREFIX[split]
    return (_find_one(folder, f"{prefix}-images-idx3-ubyte"),
            _find_one(folder, f"{prefix}-labels-idx1-ubyte"))


def _find_one(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise ConversionError(f"{folder}: neither {stem}.gz nor {stem} found")


def load_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x H x W uint8) and labels (N int64) from an IDX pair, counts checked."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise ConversionError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                              f"{len(labels)} labels")
    _common.check_not_empty(len(images), str(images_path))
    return images, labels.astype(np.int64)


def from_idx(source: str | os.PathLike | None, out: str | os.PathLike, *, split: str = "train",
             jpeg: bool = False, quality: int = _common.DEFAULT_JPEG_QUALITY,
             workers: int | None = None, progress: bool = True,
             class_names: Sequence[str] | None = None, index: bool = False) -> Path:
    """Convert an MNIST-style IDX folder (default: Debian's Fashion-MNIST) to a store at ``out``.

    Gray images are stored as RGB (the gray value in all three channels) so that ffcv's own
    RGB decoder reads the file; ``label`` is an int field. IDX files hold no class names: give
    them as ``class_names`` to keep them in the store. Returns the output path.
    ``index=True`` adds an ``index`` field (each sample's id), which ffcv's own Loader needs to
    report a batch's samples (:class:`fastprune.integrations.ffcv.PrunedOrder`).
    """
    _common.check_flags(jpeg=jpeg, progress=progress, index=index)
    images_path, labels_path = find_idx_files(FASHION_MNIST_DIR if source is None else source, split)
    out = _common.check_output_path(out, inputs=(images_path, labels_path))
    images, labels = load_idx(images_path, labels_path)
    fields = _common.image_label_fields(jpeg=jpeg, quality=quality)
    return _common.write(out, _common.ArraySource(images, labels), fields, workers=workers,
                         progress=progress, class_names=_common.label_names_option(class_names), index=index)
