"""The store's file format, described once, as numpy dtypes.

A store is an FFCV ``.beton`` file (format version 2), byte for byte, so ffcv 1.0.2 reads files
written here and fastprune reads files written by ffcv::

    offset 0                 HEADER_TYPE               version, num_fields, page_size, num_samples,
                                                       alloc_table_ptr
    HEADER_TYPE.itemsize     FIELD_DESC_TYPE[num_fields]   type id, name, 1024 argument bytes
    metadata_start           metadata[num_samples]     one aligned struct of the fields' metadata
                                                       dtypes per sample (see metadata_dtype)
    align(page_size)         data pages                page_size bytes each; every allocation of
                                                       one sample lies inside one page
    ...                      checksum block            fastprune only, unreferenced by ffcv:
                                                       CHECKSUM_DTYPE[num_allocations]
    (aligned to 8)           class-names block         fastprune only, optional (see names.py)
    alloc_table_ptr - 48     CHECKSUM_TRAILER_TYPE     fastprune only (magic, crcs, block_ptr)
    alloc_table_ptr          ALLOC_TABLE_TYPE[...]     (sample_id, ptr, size) per allocation;
                                                       runs to the END OF THE FILE (ffcv reads it
                                                       with np.fromfile up to EOF)

Everything is little-endian whatever the machine (the ``<`` in every dtype).
"""

from __future__ import annotations

import numpy as np

VERSION = 2

# --- ffcv's layout (ffcv/types.py, ffcv 1.0.2) -------------------------------------------------
HEADER_TYPE = np.dtype(
    [
        ("version", "<u2"),
        ("num_fields", "<u2"),
        ("page_size", "<u4"),
        ("num_samples", "<u8"),
        ("alloc_table_ptr", "<u8"),
    ],
    align=True,
)

FIELD_NAME_BYTES = 16
FIELD_ARGS_BYTES = 1024
FIELD_DESC_TYPE = np.dtype(
    [
        ("type_id", "<u1"),
        ("name", ("<u1", FIELD_NAME_BYTES)),  # ASCII, NUL-padded (not terminated when 16 long)
        ("arguments", ("<u1", (FIELD_ARGS_BYTES,))),  # field-specific, see fields.py
    ],
    align=True,
)

ALLOC_TABLE_TYPE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])

# Per-field metadata dtypes, one per type id (ffcv/fields/*.py).
FLOAT_METADATA = np.dtype("<f8")
INT_METADATA = np.dtype("<i8")
RGB_METADATA = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
BYTES_METADATA = np.dtype([("ptr", "<u8"), ("size", "<u8")])
NDARRAY_METADATA = np.dtype("<u8")  # pointer to element_size bytes

# Image storage modes (ffcv's IMAGE_MODES).
IMAGE_MODE_JPG = 0
IMAGE_MODE_RAW = 1

# Header of NDArrayField's argument bytes, followed by a JSON dtype description.
NDARRAY_ARGS_TYPE = np.dtype([("shape", "<u8", 32), ("type_length", "<u8")])

# ffcv's writer refuses pages below 2 MiB; its reader accepts any power of two. fastprune writes
# any power of two from 4 KiB (small pages keep test files small) below 4 GiB (page_size is u4).
MIN_PAGE_SIZE = 1 << 12
MAX_PAGE_SIZE = 1 << 31
DEFAULT_PAGE_SIZE = 1 << 23  # ffcv's default (4 * 2 MiB)

# --- fastprune's checksum block (invisible to ffcv) --------------------------------------------
CHECKSUM_MAGIC = b"FPRNCRC1"
CHECKSUM_VERSION = 1
CHECKSUM_DTYPE = np.dtype("<u4")  # CRC-32 (zlib) of each allocation, in alloc-table order
CHECKSUM_TRAILER_TYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("layout_crc", "<u4"),  # CRC-32 of bytes [0, metadata_end): header, descriptors, metadata
        ("alloc_table_crc", "<u4"),  # CRC-32 of the alloc table bytes
        ("block_crc", "<u4"),  # CRC-32 of the per-allocation CRC block
        ("block_ptr", "<u8"),  # file offset of the per-allocation CRC block
        ("num_allocations", "<u8"),  # entries in the block (== alloc table entries)
        ("trailer_crc", "<u4"),  # CRC-32 of this trailer's bytes before this field
        ("reserved", "<u4"),
    ]
)
# The header's alloc_table_ptr is zero while the file is written; layout_crc is computed over the
# header with its final value.
#
# Files with a checksum block also carry CHECKSUM_MAGIC in the last 8 bytes of every field
# descriptor's arguments (zeros in ffcv's files, and bytes no field type reads), so a damaged or
# zeroed trailer cannot pass for an ffcv file without checksums: verify() then reports it.
CHECKSUM_MARKER_OFFSET = FIELD_ARGS_BYTES - len(CHECKSUM_MAGIC)


def metadata_dtype(metadata_types: list[np.dtype]) -> np.dtype:
    """The per-sample metadata struct: fields f0, f1, ... aligned exactly as ffcv aligns them."""
    return np.dtype([("", t) for t in metadata_types], align=True)


def metadata_start(num_fields: int) -> int:
    return HEADER_TYPE.itemsize + num_fields * FIELD_DESC_TYPE.itemsize


def align_up(offset: int, alignment: int) -> int:
    return -(-offset // alignment) * alignment


def is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def encode_field_name(name: str) -> np.ndarray:
    raw = name.encode("ascii")
    out = np.zeros(FIELD_NAME_BYTES, dtype="<u1")
    out[: len(raw)] = np.frombuffer(raw, dtype="<u1")
    return out


def decode_field_name(raw: np.ndarray) -> str:
    return bytes(raw).split(b"\x00", 1)[0].decode("ascii", errors="replace")
