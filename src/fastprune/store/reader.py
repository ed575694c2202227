"""``Store``: a read-only, memory-mapped view of a store file (fastprune's or ffcv's ``.beton``).

Opening validates the whole structure against the file size before anything is sized from the
file's contents: header, field descriptors, metadata table, allocation table and every pointer
in the metadata. Any inconsistency raises ``StoreError`` naming the file and the sample or table
at fault, so a truncated or corrupted file never makes a reader (ours, or the native gather built
on ``buffer`` + ``field_ranges``) touch memory outside the mapping.
"""

from __future__ import annotations

import mmap
import errno
import os
import stat
from pathlib import Path

import numpy as np

from .._args import check_path
from ..errors import StoreError, StoreNotFoundError
from . import format as fmt
from .checksums import VerifyReport, read_class_names, read_trailer, verify_store
from .fields import TYPE_ID_TO_FIELD, Field, FloatField, IntField, NDArrayField, RGBImageField, class_label_field


class Store:
    """A store file, memory-mapped read-only (the OS page cache holds the data, not this object).

    ``store[i]`` is sample i as a tuple in field order: images as H x W x 3 uint8 arrays, ints,
    floats, ndarrays and bytes. The arrays below stay valid (and the file mapped) as long as
    something references them, even after ``close()``.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = check_path(path, "Store: path")
        self._file, self._buffer = _map_file(self.path)
        self._absolute_path = _where(self.path)
        self._identity = _identity(os.fstat(self._file.fileno()))
        try:
            self._parse()
        except StoreError:
            self.close()
            raise

    # --- public API ------------------------------------------------------------------------------

    @property
    def buffer(self) -> np.ndarray:
        """The whole file as a read-only uint8 array (a view of the mapping, no copy). Like
        :attr:`metadata` and :attr:`alloc_table`, checked unchanged first (:meth:`check_unchanged`):
        reading a file shrunk in place past its new end is a SIGBUS, not an exception."""
        return self._checked_arrays()[0]

    @property
    def metadata(self) -> np.ndarray:
        """The per-sample metadata table: a read-only structured array, fields f0, f1, ..."""
        return self._checked_arrays()[1]

    @property
    def num_samples(self) -> int:
        return self._num_samples

    @property
    def fields(self) -> dict[str, Field]:
        return dict(self._fields)

    @property
    def page_size(self) -> int:
        return self._page_size

    @property
    def alloc_table(self) -> np.ndarray:
        table = self._alloc_table
        self._checked_arrays()
        if table is None:  # closed since the line above
            raise self._closed_error()
        return table

    @property
    def alloc_table_ptr(self) -> int:
        return self._alloc_table_ptr

    @property
    def metadata_end(self) -> int:
        return self._metadata_end

    @property
    def file_size(self) -> int:
        return self._file_size

    def __len__(self) -> int:
        return self._num_samples

    @property
    def class_names(self) -> list[str] | None:
        """The names of the classes of the label field (``fields.class_label_field``): label value i is
        ``class_names[i]``; None when the file keeps none (ffcv's files, stores written without
        names). StoreError, naming the file, when the names block is damaged."""
        return self.field_class_names.get(class_label_field(self._fields))

    @property
    def field_class_names(self) -> dict[str, list[str]]:
        """Every int field's class names kept in the file ({} when none; see class_names)."""
        names = read_class_names(self)
        if isinstance(names, str):
            self._fail(names)
        return names

    def field_ranges(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, sizes), uint64[num_samples] each: where field ``name`` of every sample lies in
        ``buffer``. Payload fields point into the data pages (image sizes come from the allocation
        table, as ffcv's memory manager looks them up); int and float fields point at their 8 bytes
        inside the metadata table. All ranges were checked against the file when it was opened."""
        if name not in self._ranges:
            raise KeyError(f"{self.path}: no field {name!r}; fields are {list(self._fields)}")
        offsets, sizes = self._ranges[name]
        return offsets, sizes

    def field_index(self, name: str) -> int:
        return list(self._fields).index(name)

    def __getitem__(self, index) -> tuple:
        i = self._check_index(index)
        buffer, metadata = self._checked_arrays()
        record = metadata[i]
        return tuple(self._decoded(i, k, name, field, record, buffer)
                     for k, (name, field) in enumerate(self._fields.items()))

    def field_value(self, index, name: str):
        """Field ``name`` of sample ``index``, decoded (``store[index]`` decodes every field)."""
        self.field_ranges(name)  # another name: a KeyError naming the fields
        i = self._check_index(index)
        buffer, metadata = self._checked_arrays()
        return self._decoded(i, self.field_index(name), name, self._fields[name], metadata[i], buffer)

    def _checked_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(buffer, metadata) of an open store whose file is unchanged. Held here: close() on another
        thread drops the store's own references (a read racing it met None: a TypeError)."""
        buffer, metadata = self._buffer, self._metadata
        if buffer is None or metadata is None:
            raise self._closed_error()
        self.check_unchanged()
        return buffer, metadata

    def _decoded(self, i: int, k: int, name: str, field: Field, record, buffer: np.ndarray):
        data = None
        if field.has_payload:
            offsets, sizes = self._ranges[name]
            data = buffer[int(offsets[i]):int(offsets[i]) + int(sizes[i])]
        try:
            return field.decode(record[k], data)
        except (ValueError, OSError, SyntaxError, RecursionError) as exc:  # PIL: bad JPEGs as OSError; JSON: nesting
            raise StoreError(f"{self.path}: sample {i}, field {name!r} cannot be decoded: {exc}") from exc

    def check_unchanged(self) -> None:
        """Raise StoreError if the file was changed in place since it was opened.

        Another program rewriting the file where it lies (``cp new.beton old.beton``) would change
        the mapped bytes under the reader, and shrinking it makes reads past the new end fault
        (SIGBUS). The loader calls this before every batch, so such a change stops training with
        an error instead. It cannot catch a change that happens *during* a batch: replace store
        files with a rename (as fastprune's writer does), never in place, while they are read.
        """
        file = self._file  # once: close() may run on another thread (a Loader's producers call this)
        if file is None or file.closed:
            raise self._closed_error()
        try:
            identity = _identity(os.fstat(file.fileno()))
        except ValueError:  # closed since the line above
            raise self._closed_error() from None
        except OSError as exc:  # EBADF: closed since; else the file itself (ESTALE on NFS, EIO)
            raise (self._closed_error() if exc.errno == errno.EBADF else
                   StoreError(f"{self.path}: cannot check the file: {exc.strerror or exc}")) from None
        if identity != self._identity:
            raise StoreError(f"{self.path}: the file was changed in place while open (size or "
                             "modification time differs); reopen it, and replace stores by renaming")

    def _closed_error(self) -> StoreError:
        # made only when raised: check_unchanged runs before every batch
        return StoreError(f"{self.path}: the store is closed")

    def verify(self) -> VerifyReport:
        """Check the structure and every checksum; returns a VerifyReport (see checksums.py)."""
        return verify_store(self)

    def close(self) -> None:
        """Drop this store's reference to the mapping; it is unmapped once no array uses it."""
        self._buffer = None
        self._metadata = None
        self._alloc_table = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __reduce__(self):
        """Pickled by path (a DataLoader worker started with "spawn" gets a copy): the other side
        maps the file again, and refuses it (StoreError) if it was changed in the meantime. The
        path as it was when opened: a relative one failed after os.chdir (Hydra's run folders)."""
        return _reopen, (self._absolute_path, self._identity)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {f!r}" for n, f in self._fields.items())
        closed = ", closed" if self._buffer is None else ""
        return f"Store({str(self.path)!r}, {self._num_samples} samples, {{{fields}}}{closed})"

    # --- parsing and validation ------------------------------------------------------------------

    def _fail(self, what: str):
        raise StoreError(f"{self.path}: {what}")

    def _check_index(self, index) -> int:
        try:
            i = index.__index__()
        except (AttributeError, TypeError):
            raise TypeError(f"store indices must be integers, got {type(index).__name__}") from None
        if i < 0:
            i += self._num_samples
        if not 0 <= i < self._num_samples:
            raise IndexError(f"{self.path}: sample {index} out of range for {self._num_samples} samples")
        return i

    def _parse(self) -> None:
        buffer = self._buffer
        self._file_size = size = buffer.size
        if size < fmt.HEADER_TYPE.itemsize:
            self._fail(f"file of {size} bytes is too small to be a store (the header alone is "
                       f"{fmt.HEADER_TYPE.itemsize} bytes)")
        if bytes(buffer[:4]) == b"PK\x03\x04":  # its version field read 19280: name what the file is instead
            self._fail("not a store: a zip archive (a torch checkpoint, .pt?)")
        header = buffer[: fmt.HEADER_TYPE.itemsize].view(fmt.HEADER_TYPE)[0]
        self._parse_header(header)
        self._parse_fields()
        self._parse_alloc_table()
        self._ranges = {name: self._compute_ranges(k, name, field)
                        for k, (name, field) in enumerate(self._fields.items())}

    def _parse_header(self, header) -> None:
        size = self._file_size
        version, num_fields = int(header["version"]), int(header["num_fields"])
        if version != fmt.VERSION:
            self._fail(f"not a store: format version {version} (expected {fmt.VERSION}; is this an "
                       "ffcv .beton file?)")
        if num_fields == 0:
            self._fail("header says 0 fields")
        self._page_size = int(header["page_size"])
        if not fmt.is_power_of_two(self._page_size):
            self._fail(f"header page_size {self._page_size} is not a power of two")
        meta_start = fmt.metadata_start(num_fields)
        if meta_start > size:
            self._fail(f"truncated: header says {num_fields} fields, whose descriptors end at byte "
                       f"{meta_start}, past the end of the file ({size} bytes)")
        self._num_fields = num_fields
        self._num_samples = int(header["num_samples"])
        self._alloc_table_ptr = int(header["alloc_table_ptr"])
        if not meta_start <= self._alloc_table_ptr <= size:
            self._fail(f"header alloc_table_ptr {self._alloc_table_ptr} lies outside "
                       f"[{meta_start}, {size}] (file truncated or header corrupted)")

    def _parse_fields(self) -> None:
        meta_start = fmt.metadata_start(self._num_fields)
        descriptors = self._buffer[fmt.HEADER_TYPE.itemsize:meta_start].view(fmt.FIELD_DESC_TYPE)
        types, names = [], []
        for k, desc in enumerate(descriptors):
            type_id, name = int(desc["type_id"]), fmt.decode_field_name(desc["name"])
            if type_id not in TYPE_ID_TO_FIELD:
                self._fail(f"field {k} ({name!r}) has type id {type_id}, which fastprune does not read "
                           f"(known: {sorted(TYPE_ID_TO_FIELD)})")
            if name in names:
                self._fail(f"field name {name!r} appears twice")
            types.append(TYPE_ID_TO_FIELD[type_id])
            names.append(name)
        meta_dtype = fmt.metadata_dtype([t.metadata_type for t in types])
        # Python ints: num_samples comes from the file and may be absurd; never overflow.
        self._metadata_end = meta_start + self._num_samples * meta_dtype.itemsize
        if self._metadata_end > self._alloc_table_ptr:
            self._fail(f"truncated or corrupted: {self._num_samples} samples of metadata "
                       f"({meta_dtype.itemsize} bytes each) would end at byte {self._metadata_end}, "
                       f"past the allocation table at {self._alloc_table_ptr} (file size {self._file_size})")
        self._metadata = self._buffer[meta_start:self._metadata_end].view(meta_dtype)
        self._fields = {}
        for k, (name, cls, desc) in enumerate(zip(names, types, descriptors)):
            try:
                self._fields[name] = cls.from_binary(np.array(desc["arguments"]), self._metadata[f"f{k}"])
            except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError, OverflowError,
                    RecursionError) as exc:  # whatever the descriptor's numbers and JSON make numpy raise
                self._fail(f"field {name!r}: bad arguments in its descriptor: {exc}")

    def _parse_alloc_table(self) -> None:
        table_bytes = self._file_size - self._alloc_table_ptr
        if table_bytes % fmt.ALLOC_TABLE_TYPE.itemsize:
            self._fail(f"the allocation table ({table_bytes} bytes from alloc_table_ptr "
                       f"{self._alloc_table_ptr} to the end) is not a whole number of "
                       f"{fmt.ALLOC_TABLE_TYPE.itemsize}-byte entries (file truncated?)")
        table = self._buffer[self._alloc_table_ptr:].view(fmt.ALLOC_TABLE_TYPE)
        bad = (table["sample_id"] >= self._num_samples) | ~_in_bounds(
            table["ptr"], table["size"], self._metadata_end, self._alloc_table_ptr)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            entry = table[k]
            self._fail(f"allocation table entry {k} (sample {int(entry['sample_id'])}, ptr "
                       f"{int(entry['ptr'])}, size {int(entry['size'])}) points outside the data "
                       f"region [{self._metadata_end}, {self._alloc_table_ptr}) or to a sample "
                       f">= {self._num_samples}; {int(bad.sum())} bad entries in all")
        self._alloc_table = table
        self._check_allocation_count()
        # Sorted by pointer for ffcv-style size look-ups; at equal pointers the largest first, so
        # an empty allocation never hides the real one.
        order = np.lexsort((-table["size"].astype(np.int64), table["ptr"]))
        self._sorted_ptrs = np.ascontiguousarray(table["ptr"][order])
        self._sorted_sizes = np.ascontiguousarray(table["size"][order])

    def _check_allocation_count(self) -> None:
        """Files with fastprune's checksum trailer record how many allocations they hold: a table
        cut at an entry boundary is caught here, not only by verify()."""
        trailer = read_trailer(self._buffer, self._alloc_table_ptr, self._metadata_end)
        if trailer is None or isinstance(trailer, str):
            return  # ffcv's file, or a damaged trailer (verify() reports it)
        expected = int(trailer["num_allocations"])
        if expected != len(self._alloc_table):
            self._fail(f"truncated or corrupted: the allocation table has {len(self._alloc_table)} "
                       f"entries, the checksum trailer says {expected}")

    def _compute_ranges(self, k: int, name: str, field: Field) -> tuple[np.ndarray, np.ndarray]:
        column = self._metadata[f"f{k}"]
        n = self._num_samples
        if isinstance(field, (IntField, FloatField)):
            start = fmt.metadata_start(self._num_fields) + self._metadata.dtype.fields[f"f{k}"][1]
            offsets = start + np.arange(n, dtype=np.uint64) * np.uint64(self._metadata.dtype.itemsize)
            return offsets, np.full(n, 8, dtype=np.uint64)
        if isinstance(field, RGBImageField):
            offsets, sizes = self._lookup_allocations(name, column["data_ptr"])
            self._check_images(name, column, sizes)
            return offsets, sizes
        # ffcv's decoders find every payload through the allocation table, so it must be there.
        if isinstance(field, NDArrayField):
            offsets, allocated = self._lookup_allocations(name, column)
            sizes = np.full(n, field.element_size, dtype=np.uint64)
        else:  # BytesField: pointer and size are both in the metadata
            offsets, allocated = self._lookup_allocations(name, column["ptr"])
            sizes = np.ascontiguousarray(column["size"], dtype=np.uint64)
        self._check_ranges(name, offsets, sizes, allocated)
        return offsets, sizes

    def _lookup_allocations(self, name: str, ptrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ptrs = np.ascontiguousarray(ptrs, dtype=np.uint64)
        pos = np.searchsorted(self._sorted_ptrs, ptrs)
        found = pos < self._sorted_ptrs.size
        found[found] = self._sorted_ptrs[pos[found]] == ptrs[found]
        if not found.all():
            i = int(np.flatnonzero(~found)[0])
            self._fail(f"sample {i}, field {name!r}: data pointer {int(ptrs[i])} is not in the "
                       f"allocation table ({int((~found).sum())} samples affected)")
        return ptrs, self._sorted_sizes[pos]

    def _check_images(self, name: str, column: np.ndarray, sizes: np.ndarray) -> None:
        mode, width, height = column["mode"], column["width"], column["height"]
        raw = mode == fmt.IMAGE_MODE_RAW
        expected = width.astype(np.uint64) * height.astype(np.uint64) * np.uint64(3)
        bad = ((mode != fmt.IMAGE_MODE_RAW) & (mode != fmt.IMAGE_MODE_JPG)) | (width == 0) | (height == 0) \
            | (raw & (sizes != expected)) | (sizes == 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self._fail(f"sample {i}, field {name!r}: inconsistent image metadata (mode "
                       f"{int(mode[i])}, {int(width[i])}x{int(height[i])}, {int(sizes[i])} bytes "
                       f"allocated); {int(bad.sum())} samples affected")

    def _check_ranges(self, name: str, offsets: np.ndarray, sizes: np.ndarray, allocated: np.ndarray) -> None:
        bad = (sizes > allocated) | ~_in_bounds(offsets, sizes, self._metadata_end, self._alloc_table_ptr)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self._fail(f"sample {i}, field {name!r}: data [{int(offsets[i])}, +{int(sizes[i])}) does not "
                       f"fit its allocation of {int(allocated[i])} bytes inside the data region "
                       f"[{self._metadata_end}, {self._alloc_table_ptr}); {int(bad.sum())} samples affected")


def _in_bounds(ptrs: np.ndarray, sizes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """ptr >= lo and ptr + size <= hi, without uint64 overflow."""
    ptrs = np.asarray(ptrs, dtype=np.uint64)
    sizes = np.asarray(sizes, dtype=np.uint64)
    hi_ = np.uint64(hi)
    size_ok = sizes <= hi_
    room = np.where(size_ok, hi_ - np.minimum(sizes, hi_), np.uint64(0))
    return size_ok & (ptrs >= np.uint64(lo)) & (ptrs <= room)


def _where(path: Path) -> str:
    """What a pickled copy of a store opened at ``path`` opens, wherever its process runs: the
    file's real path, or ``path`` itself where the working folder is gone (os.getcwd fails)."""
    try:
        return os.path.realpath(path)
    except OSError:
        return str(path)


def _reopen(path: str, identity: tuple[int, int]) -> Store:
    """A pickled Store on the other side: the same file, unchanged since it was pickled."""
    store = Store(path)
    if store._identity != tuple(identity):
        store.close()
        raise StoreError(f"{path}: the file changed (size or modification time) since the store was "
                         "pickled; reopen it by path instead")
    return store


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_size, info.st_mtime_ns


def _map_file(path: Path):
    """(open file, the file as a read-only uint8 array over mmap); StoreError for anything but a
    regular file. The file stays open so that ``check_unchanged`` can fstat it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise StoreNotFoundError(os.fspath(path)) from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot open store: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device could block or never end
        raise StoreError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise StoreError(f"{path}: empty file (0 bytes), not a store")
    try:
        file = open(path, "rb")
    except OSError as exc:
        raise StoreError(f"{path}: cannot open store: {exc.strerror or exc}") from exc
    try:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        file.close()
        raise StoreError(f"{path}: cannot map store: {exc}") from exc
    return file, np.frombuffer(mapping, dtype=np.uint8)


def store_name(store_or_path) -> str:
    """The path of a Store, or the path given, as text: how messages name a store either way."""
    return os.fspath(getattr(store_or_path, "path", store_or_path))


def verify_file(path) -> VerifyReport:
    """Open and verify ``path``; a file that does not even open gives a report, not an exception."""
    try:
        store = Store(path)
    except StoreError as exc:
        return VerifyReport(Path(path), structure_ok=False, has_checksums=False, problems=[str(exc)])
    with store:
        return verify_store(store)


__all__ = ["Store", "verify_file"]
