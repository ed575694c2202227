"""``write_dataset``: convert any indexable source into a store file (an ffcv ``.beton``).

How a file is written:

1. samples are encoded in chunks (in worker processes when ``workers > 1``; encoding.py): every
   field value is validated and split into metadata scalars and a payload (see fields.py);
2. the main process lays the payloads out in pages as ffcv's allocator does (all allocations of a
   sample in one page, in field order; a sample that does not fit in what is left of a page starts
   the next page) and appends them to a temporary file in the destination folder;
3. it then writes the metadata table, the per-allocation CRC-32 block (each payload's CRC-32 is
   computed where it was encoded: the file is never read back), the checksum trailer, the
   allocation table and finally the header, and renames the temporary file to ``path``.

Any exception (including KeyboardInterrupt) removes the temporary file: a failed conversion leaves
no file at ``path`` (an existing file there is left untouched) and nothing else behind. A link at
``path`` is followed: its target is replaced and the link kept, and a file replaced keeps its
permissions (as logs and reports do: _outputs.written_atomically). SIGTERM (what
``kill``, ``timeout`` and job schedulers send) is treated like Ctrl-C while a write runs in the main
thread of a process that has not set its own SIGTERM handler.

A process killed outright (SIGKILL, power loss) cannot clean up: it leaves no file at ``path``, but
its temporary file ``.NAME.HOST.PID.XXXXXXXX.tmp`` stays in the folder. The next write to the same
``path`` removes such leftovers: a writer holds a lock on its temporary file while it runs, which
the kernel drops however it dies (_atomic.py). Temporary files of live writers are never touched,
and on a network file system, where a lock may be one host's alone, neither are other hosts'.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import warnings
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np

from .._args import check_bool, check_path, check_positive_int
from .._cpus import usable_cpus
from .._signals import sigterm_as_interrupt
from .._text import counted
from ..errors import ConversionError, SkippedSamplesWarning, user_stacklevel
from . import format as fmt
from . import names as class_names_block
from ._atomic import replaced_when_done
from .checksums import make_trailer, mark_checksummed
from .encoding import EncodedChunk, encoded_chunks, layout_sizes
from .fields import Field, IntField, RGBImageField
from .info import printable


def write_dataset(path, source, fields: Mapping[str, Field], *, jpeg_quality: int | None = None,
                  workers: int | None = None, progress: bool = True,
                  page_size: int | None = None, chunk_size: int | None = None,
                  class_names=None, index_field: str | None = None, skip_unreadable: bool = False) -> Path:
    """Write ``source`` to a store file at ``path`` and return the path.

    source: any object with ``__len__`` and ``__getitem__(i)`` returning a tuple of values in the
        order of ``fields`` (like ffcv's ``DatasetWriter.from_indexed_dataset``).
    fields: name -> Field, in order (names: ASCII, 1..16 characters, unique).
    jpeg_quality: if given, overrides the quality of every JPEG image field.
    workers: encoding processes (default: the CPUs this process may use, its affinity capped by a
        container's CPU quota; 1 encodes in this process). Workers are forked, so the source need
        not be picklable.
    progress: show a tqdm progress bar ("writing NAME"; tqdm's TQDM_* environment settings apply).
    page_size: power of two from 4 KiB to 2 GiB; ffcv's own writer needs >= 2 MiB, its reader any.
        A sample's data must fit in one page. Default (None): 8 MiB, ffcv's, and from a sample
        that is larger (a raw image over ~1670 x 1670, a large camera JPEG kept as is) on, the
        smallest power of two that holds it (the file's page size is then that).
    class_names: the classes' names, kept in the file (``Store.class_names``; see names.py): a
        list (label value i -> names[i]) for the first IntField, or {int field name: list}.
        A label >= the number of names stops the write.
    index_field: the name of an IntField added after ``fields``, holding each sample's position in
        the store (what ffcv's own Loader reports a batch's samples by); the source does not
        return it.
    skip_unreadable: leave out the samples the source fails to read (``source[i]`` raises: a file
        that cannot be read or decoded) instead of stopping; later samples move up. They are
        named in one ``SkippedSamplesWarning``; more than 1% of the samples (and over 10) stops
        the write all the same, as something other than a few bad files. Samples the source
        leaves out on purpose (``encoding.LeftOut``: a converter's unlabelled ones) do not count.
    """
    # the output comes first here, second in every converter: a swapped call is named as such
    path = check_path(path, "write_dataset(path, source, fields): path")
    fields = _check_fields(fields, jpeg_quality)
    num_samples = _check_source(source)
    if page_size is not None:
        _check_page_size(page_size)
    skip_unreadable = check_bool(skip_unreadable, "write_dataset: skip_unreadable")
    progress = check_bool(progress, "write_dataset: progress")
    stored_fields = _with_index_field(fields, index_field)
    names = class_names_block.check_class_names(class_names, stored_fields)
    workers = _resolve_workers(workers, num_samples)
    chunk_size = (int(np.clip(num_samples // (workers * 8) or 1, 64, 2048)) if chunk_size is None
                  else check_positive_int(chunk_size, "write_dataset: chunk_size"))  # -1 wrote no sample

    writer = _write_file(path, source, fields, stored_fields, num_samples, page_size or fmt.DEFAULT_PAGE_SIZE,
                         names, index_field, chunk_size, workers, progress, skip_unreadable,
                         grow_pages=page_size is None)
    if writer.skipped:
        left_out = f" ({writer.left_out} others left out by the source)" if writer.left_out else ""
        warnings.warn(SkippedSamplesWarning(f"{path}: {_skipped_summary(writer.skipped, writer.to_write)}; "
                                            f"{writer.written} samples written{left_out}"),
                      stacklevel=user_stacklevel())
    return path


def _page_for(nbytes: int) -> int:
    """The smallest power of two >= nbytes."""
    return 1 << max(0, nbytes - 1).bit_length()


def _page_advice(needed: int) -> str:
    if needed > fmt.MAX_PAGE_SIZE:
        return f": a store's pages are at most {fmt.MAX_PAGE_SIZE} bytes (ffcv's format); store it smaller"
    return f"; pass page_size={needed} or more"


def _write_file(path: Path, source, fields, stored_fields, num_samples: int, page_size: int, names,
                index_field, chunk_size: int, workers: int, progress: bool, skip_unreadable: bool,
                grow_pages: bool) -> "_FileWriter":
    """Write the file to a temporary, renamed to ``path`` when complete; removed on any error."""
    landing = Path(os.path.realpath(path))  # through a link its target is replaced, as for logs
    with sigterm_as_interrupt():
        try:
            # a store re-converted keeps its permissions; on disk before it takes the name (a power
            # loss after a conversion of hours left an empty or partial file under it)
            with replaced_when_done(landing, open_mode="wb", fsync=True) as out:
                writer = _FileWriter(out, stored_fields, num_samples, page_size, names, index_field, grow_pages)
                chunks = encoded_chunks(source, fields, num_samples, chunk_size, workers, progress,
                                        label=f"writing {printable(path.name)}", skip_unreadable=skip_unreadable)
                with contextlib.closing(chunks):  # its workers stop here, whatever ended the loop
                    for chunk in chunks:
                        writer.add_chunk(chunk)
                        _check_skipped(writer.skipped, writer.to_write)
                if not writer.written:  # every sample left out (a converter's source refuses this first)
                    raise ConversionError(f"{path}: no sample to write: the source left out all {num_samples}")
                writer.finish()
        except OSError as exc:
            if _about_output(exc, landing):
                # disk full, a read-only folder: named by the output asked for, not the hidden temp
                raise ConversionError(f"cannot write {path}: {exc.strerror or exc}") from None
            raise
    return writer


# The most samples skip_unreadable leaves out before it stops: a few bad files in a large set are
# expected, a source failing everywhere (a wrong path, a missing codec) is not.
_SKIP_FRACTION, _SKIP_ALWAYS_ALLOWED = 0.01, 10
_SKIPS_NAMED = 5


def _check_skipped(skipped: list[tuple[int, str]], to_write: int) -> None:
    """Stop the write when too many samples are unreadable. ``to_write``: the samples the source
    means to store (exact once every chunk is in, an upper bound before)."""
    if skipped and len(skipped) == to_write:
        raise ConversionError(f"{_skipped_summary(skipped, to_write)}: not one sample could be read; the write "
                              "stopped: fix the source")
    if len(skipped) > max(_SKIP_ALWAYS_ALLOWED, _SKIP_FRACTION * to_write):
        raise ConversionError(f"{_skipped_summary(skipped, to_write)}: more than 1% of the samples (and "
                              "over 10), so not a few bad files; the write stopped: fix the source")


def _skipped_summary(skipped: list[tuple[int, str]], num_samples: int) -> str:
    named = "; ".join(f"sample {index} ({why})" for index, why in skipped[:_SKIPS_NAMED])
    more = f"; and {len(skipped) - _SKIPS_NAMED} more" if len(skipped) > _SKIPS_NAMED else ""
    return f"skipped {counted(len(skipped), 'unreadable sample')} of {num_samples}: {named}{more}"


def _with_index_field(fields: dict[str, Field], index_field: str | None) -> dict[str, Field]:
    if index_field is None:
        return fields
    if index_field in fields:
        raise ValueError(f"write_dataset: index_field {index_field!r} is already one of the fields")
    return _check_fields({**fields, index_field: IntField()}, None)


def _about_output(exc: OSError, path: Path) -> bool:
    """Whether ``exc`` came from writing the output (no file named, or the temporary twin),
    not from reading a source file, whose name the error keeps."""
    return exc.filename is None or Path(os.fsdecode(exc.filename)).name.startswith(f".{path.name}.")


# --- argument checks -----------------------------------------------------------------------------

def _check_fields(fields: Mapping[str, Field], jpeg_quality: int | None) -> dict[str, Field]:
    if not isinstance(fields, Mapping) or not fields:
        raise ValueError("write_dataset: fields must be a non-empty dict name -> Field")
    if len(fields) > 0xFFFF:
        raise ValueError(f"write_dataset: at most 65535 fields, got {len(fields)}")
    checked = {}
    for name, field in fields.items():
        if not isinstance(name, str) or not name.isascii() or not 1 <= len(name) <= fmt.FIELD_NAME_BYTES \
                or "\x00" in name:
            raise ValueError(f"write_dataset: field name {name!r} must be 1..16 ASCII characters "
                             "(the format stores 16 bytes)")
        if not isinstance(field, Field):
            raise TypeError(f"write_dataset: field {name!r} is {type(field).__name__}, expected a "
                            "fastprune.store.fields Field")
        if jpeg_quality is not None and isinstance(field, RGBImageField) and field.write_mode == "jpg":
            field = RGBImageField("jpg", jpeg_quality, field.max_resolution)
        checked[name] = field
    return checked


def _check_source(source) -> int:
    try:
        num_samples = len(source)
    except TypeError:
        raise ConversionError(f"write_dataset: the source ({type(source).__name__}) has no len()") from None
    if num_samples == 0:
        raise ConversionError("write_dataset: the source is empty (0 samples)")
    if not hasattr(source, "__getitem__"):
        raise ConversionError(f"write_dataset: the source ({type(source).__name__}) is not indexable")
    return num_samples


def _check_page_size(page_size: int) -> None:
    page_size = check_positive_int(page_size, "write_dataset: page_size")
    if not fmt.is_power_of_two(page_size) or not fmt.MIN_PAGE_SIZE <= page_size <= fmt.MAX_PAGE_SIZE:
        raise ValueError(f"write_dataset: page_size must be a power of two in "
                         f"[{fmt.MIN_PAGE_SIZE}, {fmt.MAX_PAGE_SIZE}], got {page_size}")


def _resolve_workers(workers: int | None, num_samples: int) -> int:
    workers = usable_cpus() if workers is None else check_positive_int(workers, "write_dataset: workers")
    if "fork" not in multiprocessing.get_all_start_methods():
        workers = 1  # workers inherit the source by forking; elsewhere encode in this process
    return max(1, min(workers, num_samples // 256 or 1))




# --- layout --------------------------------------------------------------------------------------

class _FileWriter:
    """Appends encoded chunks to the open temporary file, then writes tables and header."""

    def __init__(self, out, fields: dict[str, Field], num_samples: int, page_size: int,
                 class_names: dict[str, list[str]], index_field: str | None = None, grow_pages: bool = False):
        self.out = out
        self.grow_pages = grow_pages  # a sample larger than a page: larger pages from there on
        self.fields = list(fields.items())
        self.index_field = index_field  # filled with the samples' positions, not read from the source
        self.written = 0  # samples written so far (fewer than the source's when some are skipped)
        self.skipped: list[tuple[int, str]] = []
        self.left_out = 0  # samples the source left out on purpose (encoding.LeftOut)
        self.class_names = class_names
        self.num_samples = num_samples
        self.source_samples = num_samples  # num_samples becomes what was written at finish()
        self.page_size = page_size
        self.payload_fields = [i for i, (_, f) in enumerate(self.fields) if f.has_payload]
        self.payload_column = {field_index: col for col, field_index in enumerate(self.payload_fields)}
        self.metadata = np.zeros(num_samples, dtype=fmt.metadata_dtype([f.metadata_type for _, f in self.fields]))
        self.metadata_end = fmt.metadata_start(len(self.fields)) + self.metadata.nbytes
        self.data_start = fmt.align_up(self.metadata_end, page_size)
        num_allocs = num_samples * len(self.payload_fields)
        self.alloc_table = np.zeros(num_allocs, dtype=fmt.ALLOC_TABLE_TYPE)
        self.alloc_crcs = np.zeros(num_allocs, dtype=np.uint32)  # from the chunks, in table order
        self.next_alloc = 0
        self.page_end = self.data_start  # end of the current page (none opened yet)
        # next free byte in the current page; before the first page, empty allocations point at
        # the end of the metadata (inside the file, like every pointer must be)
        self.cursor = self.metadata_end
        self.any_data = False
        out.seek(self.data_start)

    @property
    def to_write(self) -> int:
        """The samples the source means to store: all but those it left out so far (exact once
        every chunk is in). skip_unreadable's 1% is of these: unlabelled samples a converter
        leaves out must not widen it."""
        return self.source_samples - self.left_out

    def add_chunk(self, chunk: EncodedChunk) -> None:
        omitted = chunk.omitted()
        sources = [i for i in range(chunk.start, chunk.stop) if i not in omitted]  # errors name these
        first, n = self.written, len(sources)
        layout = layout_sizes(chunk.sizes)  # empty payloads on a byte of their own (recorded as 0)
        totals = layout.sum(axis=1, dtype=np.uint64)
        starts = self._place_samples(totals, sources)
        self._write_blob(chunk.blob, starts, totals)
        ptrs = starts[:, None] + np.cumsum(layout, axis=1, dtype=np.uint64) - layout
        self._record_allocations(first, n, ptrs, chunk.sizes, chunk.crcs)
        rows = self.metadata[first:first + n]
        for i, (name, field) in enumerate(self.fields):
            scalars = list(range(first, first + n)) if name == self.index_field else chunk.scalars[i]
            self._check_labels(name, scalars, sources)
            col = self.payload_column.get(i)
            field_ptrs = None if col is None else ptrs[:, col]
            field_sizes = None if col is None else chunk.sizes[:, col]
            field.fill_metadata(rows[f"f{i}"], scalars, field_ptrs, field_sizes)
        self.written += n
        self.skipped += chunk.skipped
        self.left_out += len(chunk.left_out)

    def _check_labels(self, field: str, labels: list, sources: list[int]) -> None:
        """Every label of a field with class names must name one (caught per chunk, early)."""
        names = self.class_names.get(field)
        bad = None if names is None else class_names_block.label_out_of_range(labels, len(names))
        if bad is not None:
            raise ConversionError(f"sample {sources[bad]}, field {field!r}: label {labels[bad]} "
                                  f"but only {len(names)} class names were given (class_names=, convert "
                                  "--class-names); pass names that cover every label (or none)")

    def _place_samples(self, totals: np.ndarray, sources: list[int]) -> np.ndarray:
        """File offset of each sample's first allocation (ffcv's page rule)."""
        starts = np.zeros(len(totals), dtype=np.uint64)
        page_size, cursor, page_end = self.page_size, self.cursor, self.page_end
        for row, total in enumerate(totals.tolist()):
            if total > page_size:
                if not self.grow_pages or total > fmt.MAX_PAGE_SIZE:
                    raise ConversionError(f"sample {sources[row]}: its data ({total} bytes) is larger than a page "
                                          f"({page_size} bytes){_page_advice(_page_for(total))}")
                # Larger pages from here on, each at a multiple of its size: every smaller page
                # written so far lies inside one of them (ffcv's page cache reads the page at
                # offset // page_size), so the header's final page_size holds for the whole file.
                page_size = self.page_size = _page_for(total)
                cursor = fmt.align_up(page_end if self.any_data else self.data_start, page_size)
                page_end = cursor + page_size
                self.any_data = True
            if total == 0:
                starts[row] = cursor
                continue
            if cursor + total > page_end or not self.any_data:
                # open the next page (the first one starts at data_start)
                cursor = page_end if self.any_data else self.data_start
                page_end = cursor + page_size
                self.any_data = True
            starts[row] = cursor
            cursor += total
        self.cursor, self.page_end = cursor, page_end
        return starts

    def _write_blob(self, blob: bytes, starts: np.ndarray, totals: np.ndarray) -> None:
        """Write the samples' payloads at their offsets, skipping (zero-filled) page tails."""
        if not blob:
            return
        view = memoryview(blob)
        ends = starts + totals
        # Samples are contiguous except where a new page begins: split the blob there.
        breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        blob_offsets = np.concatenate([[0], np.cumsum(totals, dtype=np.uint64)])
        run_bounds = np.concatenate([[0], breaks, [len(starts)]]).astype(np.int64)
        for a, b in zip(run_bounds[:-1], run_bounds[1:]):
            lo, hi = int(blob_offsets[a]), int(blob_offsets[b])
            if hi == lo:
                continue
            self.out.seek(int(starts[a]))
            self.out.write(view[lo:hi])

    def _record_allocations(self, first: int, n: int, ptrs: np.ndarray, sizes: np.ndarray,
                            crcs: np.ndarray) -> None:
        count = n * len(self.payload_fields)
        if count == 0:
            return
        table = self.alloc_table[self.next_alloc:self.next_alloc + count]
        table["sample_id"] = np.repeat(np.arange(first, first + n, dtype=np.uint64), len(self.payload_fields))
        table["ptr"] = ptrs.reshape(-1)
        table["size"] = sizes.reshape(-1)
        self.alloc_crcs[self.next_alloc:self.next_alloc + count] = crcs.reshape(-1)
        self.next_alloc += count

    def finish(self) -> None:
        # Skipped samples: the tables shrink to what was written. The metadata keeps its place
        # (the pages start where the full table would have ended): a gap, which readers never read.
        self.num_samples = self.written
        self.metadata = self.metadata[:self.written]
        self.alloc_table = self.alloc_table[:self.next_alloc]
        self.alloc_crcs = self.alloc_crcs[:self.next_alloc]
        out = self.out
        data_end = self.page_end if self.any_data else self.metadata_end
        block_ptr = fmt.align_up(data_end, 8)
        out.truncate(block_ptr)  # zero-fills the last page's tail, as ffcv writes full pages
        header, descriptors = self._header(), self._descriptors()
        out.seek(0)
        out.write(header.tobytes())
        out.write(descriptors.tobytes())
        out.write(self.metadata.tobytes())
        out.flush()
        block = self.alloc_crcs.astype(fmt.CHECKSUM_DTYPE).tobytes()
        names_ptr = fmt.align_up(block_ptr + len(block), 8)
        names = class_names_block.encode_block(self.class_names)  # between CRCs and trailer
        trailer_ptr = names_ptr + len(names)
        alloc_table_ptr = trailer_ptr + fmt.CHECKSUM_TRAILER_TYPE.itemsize
        header["alloc_table_ptr"] = alloc_table_ptr
        layout_crc = zlib.crc32(self.metadata, zlib.crc32(descriptors, zlib.crc32(header.tobytes())))
        trailer = make_trailer(layout_crc, zlib.crc32(self.alloc_table), zlib.crc32(block),
                               block_ptr, len(self.alloc_table))
        out.seek(block_ptr)
        out.write(block)
        out.write(b"\x00" * (names_ptr - block_ptr - len(block)))
        out.write(names)
        out.write(trailer.tobytes())
        out.write(self.alloc_table.tobytes())
        out.seek(0)
        out.write(header.tobytes())
        out.flush()

    def _header(self) -> np.ndarray:
        header = np.zeros(1, dtype=fmt.HEADER_TYPE)
        header["version"] = fmt.VERSION
        header["num_fields"] = len(self.fields)
        header["page_size"] = self.page_size
        header["num_samples"] = self.num_samples
        return header

    def _descriptors(self) -> np.ndarray:
        descriptors = np.zeros(len(self.fields), dtype=fmt.FIELD_DESC_TYPE)
        for i, (name, field) in enumerate(self.fields):
            descriptors[i]["type_id"] = field.type_id
            descriptors[i]["name"] = fmt.encode_field_name(name)
            descriptors[i]["arguments"] = mark_checksummed(field.to_binary())
        return descriptors


__all__ = ["write_dataset"]
