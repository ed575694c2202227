"""Class names in a store: fastprune's names block, which ffcv never reads.

A store can keep the names of its classes (``"airplane"`` for label 0 ...) for each int field
(``label``, CIFAR-100's ``coarse_label``); ``Store.class_names`` reads those of the label field,
``fastprune info`` shows them. Where they are kept, and why there:

* not in a field: ffcv would see (and its loaders would have to decode) an extra field, and a
  per-sample field repeats what is one list per file;
* not in the label field's descriptor: its 1024 argument bytes hold a few dozen names, not
  ImageNet's thousand, and ffcv owns their layout;
* not in a file beside the store: it would be lost when the store is copied or renamed;
* but in the gap between fastprune's CRC block and its checksum trailer (see format.py), which
  ffcv never reads (it reads the header, descriptors, metadata and the allocation table only),
  and which every earlier fastprune left empty and already accepts (it checks only that the CRC
  block ends before the trailer): so a file with names still opens in ffcv 1.0.2 and in older
  fastprune, and a file without them (older, or written without names) opens here unchanged.

Layout, from the trailer's own (CRC-protected) ``block_ptr`` and ``num_allocations``::

    block_ptr                        CRC block: uint32[num_allocations]
    names_ptr = align8(block end)    NAMES_HEADER_TYPE (magic, version, json_size, json_crc,
                                     header_crc)
    names_ptr + 24                   JSON, UTF-8: {"label": ["airplane", ...], ...}
                                     (int field name -> one name per label value 0, 1, ...)
    ...                              zeros up to the trailer (8-byte alignment)
    trailer_ptr                      the checksum trailer, unchanged (version 1)

The gap is empty exactly when the file has no names; otherwise it must hold one whole, valid
block. So the block's place never depends on its own bytes, and damage to it can never pass for
"no names": it gives a StoreError naming the file (when the names are read) and a problem in
``verify()``. The JSON is limited to MAX_JSON_BYTES and checked against the header's CRC before
it is parsed.
"""

from __future__ import annotations

import json
import zlib
from typing import Mapping, Sequence

import numpy as np

from . import format as fmt

MAGIC = b"FPRNNAM1"
VERSION = 1
# 4 MiB of JSON: ~100k names of 30 characters (ImageNet-21k has 21,841 classes).
MAX_JSON_BYTES = 1 << 22
HEADER_TYPE = np.dtype([
    ("magic", "S8"),
    ("version", "<u4"),
    ("json_size", "<u4"),  # bytes of JSON after the header
    ("json_crc", "<u4"),  # CRC-32 of those bytes
    ("header_crc", "<u4"),  # CRC-32 of this header's bytes before this field
])


# --- writing -------------------------------------------------------------------------------------

def check_class_names(class_names, fields: Mapping) -> dict[str, list[str]]:
    """``write_dataset``'s ``class_names`` as {int field name: [names]}; a plain list names the
    classes of the first int field. ValueError/TypeError say what is wrong."""
    from .fields import IntField

    if class_names is None:
        return {}
    if not isinstance(class_names, Mapping):
        first = next((n for n, f in fields.items() if isinstance(f, IntField)), None)
        if first is None:
            raise ValueError("write_dataset: class_names given but no IntField holds the labels")
        class_names = {first: class_names}
    checked = {}
    for name, names in class_names.items():
        if not isinstance(fields.get(name), IntField):
            raise ValueError(f"write_dataset: class_names for {name!r}, which is not an IntField "
                             f"of this store (fields: {list(fields)})")
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) \
                or not all(isinstance(n, str) for n in names):
            raise TypeError(f"write_dataset: class_names[{name!r}] must be a list of strings")
        if names:
            checked[name] = [_encodable(n) for n in names]
    if len(encode_json(checked)) > MAX_JSON_BYTES:
        raise ValueError(f"write_dataset: the class names take more than {MAX_JSON_BYTES} bytes "
                         "of JSON; store shorter names")
    return checked


def _encodable(name: str) -> str:
    """``name`` as UTF-8 can store it: a folder named in another encoding (Latin-1 "caf\xe9") reaches
    Python with its stray bytes as lone surrogates, which UTF-8 refuses; they are kept as ``\xe9``
    escapes, so the name still shows which folder it was."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no file name decodes to ("\ud800"): escaped as such
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def label_out_of_range(labels: Sequence[int], count: int) -> int | None:
    """Position of the first label that names no class (>= ``count``), or None. Negative labels
    (-1 marks unlabelled test samples in Hugging Face datasets) name none and are left alone."""
    values = np.asarray(labels, dtype=np.int64)
    bad = np.flatnonzero(values >= count)
    return int(bad[0]) if bad.size else None


def label_gap(labels) -> tuple[int, int, int] | None:
    """(distinct values, largest, smallest value >= 0 absent) of non-negative ``labels`` that are
    not exactly 0..K-1, or None when they are (or there are none). O(N) for dense labels; a
    largest value >= N leaves a gap by itself and is counted with a sort."""
    labels = np.asarray(labels, dtype=np.int64)
    labels = labels[labels >= 0]
    if not labels.size:
        return None
    top = int(labels.max())
    if top < labels.size:
        missing = np.flatnonzero(np.bincount(labels, minlength=top + 1) == 0)
        return None if not missing.size else (top + 1 - int(missing.size), top, int(missing[0]))
    values = np.unique(labels)
    return len(values), top, int(np.flatnonzero(values != np.arange(len(values)))[0])


def named_class_count(names, *label_arrays) -> int | None:
    """The number of classes ``names`` counts, when there are names and every label of the arrays
    is below their count: a subset (a filtered split, a class folder left out) need not use every
    named class, and its labels still mean what the names say. None otherwise."""
    if not names:
        return None
    top = max((int(np.max(labels)) for labels in label_arrays if len(labels)), default=-1)
    return len(names) if top < len(names) else None


class ClassNames(list):
    """A store's class names: label i is ``names[i]``. A negative label names no class, so
    ``names[-1]`` raises IndexError instead of answering with the last class's name (-1 marks
    unlabelled samples in Hugging Face datasets); slices work as for any list."""

    def __getitem__(self, index):
        if not isinstance(index, slice) and index.__index__() < 0:
            raise IndexError(f"label {index.__index__()} names no class: class names are indexed by "
                             f"labels 0..{len(self) - 1}")
        return super().__getitem__(index)


def encode_json(names: dict[str, list[str]]) -> bytes:
    return json.dumps(names, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_block(names: dict[str, list[str]]) -> bytes:
    """The whole block (header, JSON, zero padding to 8 bytes); empty when there are no names."""
    if not names:
        return b""
    body = encode_json(names)
    header = np.zeros(1, dtype=HEADER_TYPE)
    header["magic"], header["version"] = MAGIC, VERSION
    header["json_size"], header["json_crc"] = len(body), zlib.crc32(body)
    header["header_crc"] = _header_crc(header.tobytes())
    raw = header.tobytes() + body
    return raw + b"\x00" * (fmt.align_up(len(raw), 8) - len(raw))


# --- reading -------------------------------------------------------------------------------------

def read_block(buffer: np.ndarray, trailer, trailer_start: int):
    """{field: [names]} from the block between the CRC block and the trailer; {} when the gap is
    empty; a message (str) when the block is damaged. Never raises on any bytes."""
    start = fmt.align_up(int(trailer["block_ptr"]) + int(trailer["num_allocations"]) * 4, 8)
    if start >= trailer_start:
        return {}
    gap = trailer_start - start
    if gap < HEADER_TYPE.itemsize:
        return f"the class-names block [{start}, {trailer_start}) is too short ({gap} bytes)"
    header = buffer[start:start + HEADER_TYPE.itemsize].view(HEADER_TYPE)[0]
    if header["magic"] != MAGIC or _header_crc(buffer[start:start + HEADER_TYPE.itemsize]) != int(header["header_crc"]):
        return "the class-names block's header is corrupted (magic or CRC mismatch)"
    if int(header["version"]) != VERSION:
        return f"unknown class-names block version {int(header['version'])}"
    size = int(header["json_size"])
    if size > MAX_JSON_BYTES or fmt.align_up(HEADER_TYPE.itemsize + size, 8) != gap:
        return f"the class-names block says {size} bytes of JSON, which do not fill its {gap}-byte place"
    body_end = start + HEADER_TYPE.itemsize + size
    body = buffer[start + HEADER_TYPE.itemsize:body_end]
    if zlib.crc32(body) != int(header["json_crc"]) or buffer[body_end:trailer_start].any():
        return "the class names are corrupted (CRC mismatch, or bytes after them that are not zeros)"
    return _parse(bytes(body))


def _parse(body: bytes):
    try:
        names = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return f"the class names are not valid JSON: {exc}"
    if not isinstance(names, dict) or not all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in names.values()):
        return "the class names are not a JSON object of string lists"
    return {field: ClassNames(values) for field, values in names.items()}


def _header_crc(raw) -> int:
    covered = HEADER_TYPE.fields["header_crc"][1]
    return zlib.crc32(bytes(raw[:covered]))


__all__ = ["ClassNames", "check_class_names", "label_gap", "named_class_count", "label_out_of_range", "encode_block", "read_block", "MAX_JSON_BYTES"]
