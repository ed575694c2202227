"""fastprune's checksums, in one place: the trailer the writer appends, how it is read back,
and the verification of a store against it.

fastprune writes a checksum block between the data pages and the allocation table (see
format.py), and the class names (names.py) between that block and the trailer; ffcv never looks
there. Verification covers the names too. Files written by ffcv have no such block: their structure is
checked (when the store opens) and the report says that no checksums could be compared.
This module works on an open store's buffer and layout; it never opens files itself.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._cpus import usable_cpus
from .._native import core
from ..errors import StoreError
from . import format as fmt
from . import names as class_names_block

_MAX_LISTED = 10  # bad samples named in the summary line


@dataclass
class VerifyReport:
    path: Path
    structure_ok: bool
    has_checksums: bool
    problems: list[str] = field(default_factory=list)
    bad_samples: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    checked_allocations: int = 0

    @property
    def ok(self) -> bool:
        return self.structure_ok and not self.problems

    def raise_if_bad(self) -> "VerifyReport":
        if not self.ok:
            raise StoreError(str(self))
        return self

    def __str__(self) -> str:
        if not self.structure_ok:
            return f"{self.path}: CORRUPT: " + "; ".join(self.problems)
        if not self.has_checksums:
            return (f"{self.path}: structure OK; no checksums in this file (written by ffcv?), so the "
                    "data itself could not be verified")
        if self.ok:
            return (f"{self.path}: OK (structure, header/metadata, allocation table and "
                    f"{self.checked_allocations} data checksums)")
        return f"{self.path}: CORRUPT: " + "; ".join(self.problems)


def verify_store(store) -> VerifyReport:
    report = VerifyReport(store.path, structure_ok=True, has_checksums=False)
    trailer = read_trailer(store.buffer, store.alloc_table_ptr, store.metadata_end)
    if trailer is None:
        if has_checksum_marker(store):
            report.has_checksums = True
            report.problems.append("the checksum trailer is missing or destroyed (the field "
                                   "descriptors say this file was written with checksums)")
        return report
    if isinstance(trailer, str):
        report.has_checksums = True
        report.problems.append(trailer)
        return report
    report.has_checksums = True
    _check_layout(store, trailer, report)
    _check_alloc_table(store, trailer, report)
    crcs = _read_block(store, trailer, report)
    if crcs is not None:
        _check_allocations(store, crcs, report)
    names = class_names_block.read_block(store.buffer, trailer, _trailer_start(store))
    if isinstance(names, str):
        report.problems.append(names)
    return report


def read_class_names(store):
    """{int field: class names} kept in the file ({} when it has none, as ffcv's files); a
    message (str) when they are there but cannot be read (names.py has the block's layout)."""
    trailer = read_trailer(store.buffer, store.alloc_table_ptr, store.metadata_end)
    if trailer is None:
        return ("the checksum trailer is missing or destroyed, so the class names cannot be found"
                if has_checksum_marker(store) else {})
    if isinstance(trailer, str):
        return f"{trailer}, so the class names cannot be found"
    return class_names_block.read_block(store.buffer, trailer, _trailer_start(store))


def _trailer_start(store) -> int:
    return store.alloc_table_ptr - fmt.CHECKSUM_TRAILER_TYPE.itemsize


def mark_checksummed(args: np.ndarray) -> np.ndarray:
    """A field descriptor's argument bytes with the marker saying "this file has a checksum
    trailer" in their unused tail, so that a destroyed trailer cannot pass for ffcv's file."""
    if not args[fmt.CHECKSUM_MARKER_OFFSET:].any():  # free (always, unless a huge dtype)
        args[fmt.CHECKSUM_MARKER_OFFSET:] = np.frombuffer(fmt.CHECKSUM_MAGIC, dtype="<u1")
    return args


def has_checksum_marker(store) -> bool:
    """True if the field descriptors carry the mark of a file written with a checksum block."""
    descriptors = store.buffer[fmt.HEADER_TYPE.itemsize:fmt.metadata_start(len(store.fields))]
    args = descriptors.view(fmt.FIELD_DESC_TYPE)["arguments"]
    return any(row[fmt.CHECKSUM_MARKER_OFFSET:].tobytes() == fmt.CHECKSUM_MAGIC for row in args)


def store_identity(store) -> str:
    """A cheap identity of a store's contents, for a checkpoint to record which store its run
    trained on: sample count, size and the CRCs of fastprune's trailer (which cover the header,
    metadata, allocation table and, through the CRC block, every sample's bytes); for a file
    without a trailer (ffcv's), a CRC-32 of its header, metadata and allocation table. It does
    not depend on the file's name or place, so a moved store resumes and another one does not."""
    trailer = read_trailer(store.buffer, store.alloc_table_ptr, store.metadata_end)
    if trailer is None or isinstance(trailer, str):
        crc = zlib.crc32(store.buffer[:store.metadata_end])
        crc = f"{zlib.crc32(store.buffer[store.alloc_table_ptr:], crc):08x}"
    else:
        crc = "".join(f"{int(trailer[k]):08x}" for k in ("layout_crc", "alloc_table_crc", "block_crc"))
    return f"{store.num_samples} samples, {store.file_size} bytes, crc {crc}"


def read_trailer(buffer: np.ndarray, alloc_table_ptr: int, metadata_end: int):
    """The checksum trailer; None if the file has none; a message if it is present but damaged."""
    start = alloc_table_ptr - fmt.CHECKSUM_TRAILER_TYPE.itemsize
    if start < metadata_end:
        return None
    raw = buffer[start:alloc_table_ptr]
    trailer = raw.view(fmt.CHECKSUM_TRAILER_TYPE)[0]
    if raw[:8].tobytes() != fmt.CHECKSUM_MAGIC:
        # Either ffcv's file (no trailer) or ours with a damaged magic: a corrupted byte there
        # must not silently turn verification off. Our trailer's position is fixed by its own
        # fields (block_ptr + 4 * num_allocations, aligned to 8, ends where it starts or where a
        # class-names block starts, and num_allocations is the table's length), which ffcv's page
        # bytes match by chance only.
        entries = (buffer.size - alloc_table_ptr) // fmt.ALLOC_TABLE_TYPE.itemsize
        count, block_ptr = int(trailer["num_allocations"]), int(trailer["block_ptr"])
        block_end = fmt.align_up(block_ptr + count * fmt.CHECKSUM_DTYPE.itemsize, 8)
        names_follow = block_end < start and buffer[block_end:block_end + 8].tobytes() == class_names_block.MAGIC
        if count == entries and (block_end == start or names_follow):
            return "the checksum trailer is corrupted (its magic bytes do not match)"
        return None
    if _trailer_crc(raw) != int(trailer["trailer_crc"]):
        return "the checksum trailer is corrupted (its own CRC does not match)"
    if int(trailer["version"]) != fmt.CHECKSUM_VERSION:
        return f"unknown checksum block version {int(trailer['version'])}"
    return trailer


def make_trailer(layout_crc: int, alloc_table_crc: int, block_crc: int, block_ptr: int,
                 num_allocations: int) -> np.ndarray:
    """The trailer the writer puts right before the allocation table."""
    trailer = np.zeros(1, dtype=fmt.CHECKSUM_TRAILER_TYPE)
    trailer["magic"] = fmt.CHECKSUM_MAGIC
    trailer["version"] = fmt.CHECKSUM_VERSION
    trailer["layout_crc"] = layout_crc
    trailer["alloc_table_crc"] = alloc_table_crc
    trailer["block_crc"] = block_crc
    trailer["block_ptr"] = block_ptr
    trailer["num_allocations"] = num_allocations
    trailer["trailer_crc"] = _trailer_crc(trailer.tobytes())
    return trailer


def _trailer_crc(raw) -> int:
    """The trailer's own CRC, over every field before ``trailer_crc``."""
    covered = fmt.CHECKSUM_TRAILER_TYPE.fields["trailer_crc"][1]
    return zlib.crc32(bytes(raw[:covered]))


def _check_layout(store, trailer, report: VerifyReport) -> None:
    if zlib.crc32(store.buffer[: store.metadata_end]) != int(trailer["layout_crc"]):
        report.problems.append("header, field descriptors or metadata table corrupted (CRC mismatch "
                               f"over bytes [0, {store.metadata_end}))")


def _check_alloc_table(store, trailer, report: VerifyReport) -> None:
    table = store.buffer[store.alloc_table_ptr:]
    if zlib.crc32(table) != int(trailer["alloc_table_crc"]):
        report.problems.append("allocation table corrupted (CRC mismatch)")


def _read_block(store, trailer, report: VerifyReport):
    count, block_ptr = int(trailer["num_allocations"]), int(trailer["block_ptr"])
    trailer_start = _trailer_start(store)
    if count != len(store.alloc_table):
        report.problems.append(f"checksum block has {count} entries but the allocation table has "
                               f"{len(store.alloc_table)}")
        return None
    block_end = block_ptr + count * fmt.CHECKSUM_DTYPE.itemsize
    if not store.metadata_end <= block_ptr <= block_end <= trailer_start:
        report.problems.append(f"checksum block [{block_ptr}, {block_end}) lies outside "
                               f"[{store.metadata_end}, {trailer_start})")
        return None
    raw = store.buffer[block_ptr:block_end]
    if zlib.crc32(raw) != int(trailer["block_crc"]):
        report.problems.append("checksum block corrupted (CRC mismatch)")
        return None
    return raw.view(fmt.CHECKSUM_DTYPE)


def _check_allocations(store, expected: np.ndarray, report: VerifyReport) -> None:
    table = store.alloc_table
    actual = core.crc32_ranges(store.buffer, np.ascontiguousarray(table["ptr"]),
                               np.ascontiguousarray(table["size"]), usable_cpus())
    report.checked_allocations = len(table)
    bad = np.flatnonzero(actual != expected)
    if bad.size == 0:
        return
    samples = np.unique(table["sample_id"][bad]).astype(np.int64)
    report.bad_samples = samples
    names = ", ".join(str(s) for s in samples[:_MAX_LISTED])
    more = f" and {samples.size - _MAX_LISTED} more" if samples.size > _MAX_LISTED else ""
    report.problems.append(f"data of {samples.size} sample(s) corrupted (CRC mismatch): samples "
                           f"{names}{more}")


__all__ = ["VerifyReport", "verify_store", "make_trailer", "mark_checksummed", "read_trailer",
           "has_checksum_marker", "read_class_names"]
