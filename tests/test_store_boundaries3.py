"""Boundaries of the store's file layout, its checksum trailer and the signal deferral around
writes that no other test pinned down: a mutation audit (one change at a time to store/format.py,
store/checksums.py, store/_atomic.py) found each of these changes passing the suite."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from test_class_names import write
from test_store_boundaries import _patch

from fastprune.store import IntField, RGBImageField, Store, write_dataset
from fastprune.store import checksums
from fastprune.store import format as fmt
from fastprune._signals import sigterm_as_interrupt, signals_deferred


class _ExitingSource:
    """Rows of one label; sample ``exit_at`` calls sys.exit (module level: workers unpickle it)."""

    def __init__(self, n, exit_at):
        self.n, self.exit_at = n, exit_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.exit_at:
            raise SystemExit(f"source exits at {i}")
        return (i,)


def _trailer_at(path):
    with Store(path) as store:
        return store.alloc_table_ptr - fmt.CHECKSUM_TRAILER_TYPE.itemsize


def _rewrite_trailer(path, **values):
    """Set trailer fields and recompute the trailer's own CRC, as a later (or hostile) writer would."""
    at = _trailer_at(path)
    raw = path.read_bytes()
    trailer = np.frombuffer(raw[at:at + fmt.CHECKSUM_TRAILER_TYPE.itemsize], fmt.CHECKSUM_TRAILER_TYPE).copy()
    for name, value in values.items():
        trailer[name] = value
    trailer["trailer_crc"] = checksums._trailer_crc(trailer.tobytes())
    _patch(path, at, trailer.tobytes())


# --- checksum trailer -------------------------------------------------------------------------

def test_a_checksum_trailer_of_an_unknown_version_is_not_read_as_version_1(tmp_path):
    """A later fastprune's trailer (version 2, its own CRC valid) may lay its block out otherwise:
    verify() says it cannot read it instead of comparing CRCs it may misread."""
    path = write(tmp_path / "v.beton")
    _rewrite_trailer(path, version=fmt.CHECKSUM_VERSION + 1)
    with Store(path) as store:
        report = store.verify()
    assert not report.ok and report.has_checksums
    assert f"unknown checksum block version {fmt.CHECKSUM_VERSION + 1}" in str(report)


# --- signal deferral --------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_held_back_by_signals_deferred_is_delivered_once_the_block_ends(signum, ctrl_c_raises):
    """A Ctrl-C or a SIGTERM (as during a write: KeyboardInterrupt) that arrives inside the block,
    here through another thread as a terminal's may, neither cuts the block short nor is lost:
    KeyboardInterrupt comes when the block ends, and the signals' own handlers are back."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this process")
    other_thread_waits = threading.Event()
    helper = threading.Thread(target=other_thread_waits.wait)
    helper.start()
    finished = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigterm_as_interrupt(), signals_deferred():
                os.kill(os.getpid(), signum)
                for _ in range(100):  # room for Python to run a handler inside the block
                    time.sleep(0.002)
                finished = True
    finally:
        other_thread_waits.set()
        helper.join()
    assert finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_every_python_handled_signal_is_held_back_while_the_conversion_workers_fork(tmp_path, monkeypatch):
    """A user's SIGALRM timeout that raises, landing between a worker's fork and its registration
    in the pool, left the worker running and the interpreter's exit waiting for it (a leak audit:
    about 2% of 300 random alarms): the workers now fork with every Python-handled signal held."""
    from fastprune.store import encoding

    class Timeout(Exception):
        pass

    def timeout(signum, frame):
        raise Timeout

    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        finished = False
        with pytest.raises(Timeout):
            with signals_deferred(every=True):
                os.kill(os.getpid(), signal.SIGALRM)
                for _ in range(100):  # room for Python to run a handler inside the block
                    time.sleep(0.002)
                finished = True
        assert finished and signal.getsignal(signal.SIGALRM) is timeout
        with pytest.raises(Timeout):  # the default holds back SIGINT and SIGTERM only
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGALRM)
                for _ in range(100):
                    time.sleep(0.002)
                raise AssertionError("the alarm was held back")
    finally:
        signal.signal(signal.SIGALRM, previous)
    calls = []
    real = encoding.signals_deferred
    monkeypatch.setattr(encoding, "signals_deferred", lambda **kw: calls.append(kw) or real(**kw))
    rows = [(np.full((4, 4, 3), i % 256, np.uint8), i) for i in range(512)]  # 256 a worker
    write_dataset(tmp_path / "w.beton", rows, {"image": RGBImageField(), "label": IntField()}, workers=2,
                  progress=False, chunk_size=64)
    assert calls == [{"every": True}]


def test_a_damaged_trailer_is_reported_as_the_trailer_not_as_a_damaged_header(tmp_path):
    """One flipped bit in the trailer's layout CRC: verify() blames the trailer (its own CRC), not
    the header, descriptors and metadata, which are intact."""
    path = write(tmp_path / "t.beton")
    at = _trailer_at(path) + fmt.CHECKSUM_TRAILER_TYPE.fields["layout_crc"][1]
    _patch(path, at, bytes([path.read_bytes()[at] ^ 0x01]))
    with Store(path) as store:
        report = store.verify()
    assert not report.ok
    assert "the checksum trailer is corrupted (its own CRC does not match)" in str(report)
    assert "header, field descriptors or metadata" not in str(report)


def test_swapped_sample_ids_in_the_allocation_table_fail_verify(tmp_path):
    """ffcv finds a sample's pages through the sample ids of the allocation table; two ids swapped
    leave every payload's bytes intact (their CRCs match) and the file opening, so only the
    table's own CRC can tell: verify() must report it."""
    path = write(tmp_path / "a.beton")
    with Store(path) as store:
        table = store.alloc_table.copy()
        table_at = store.alloc_table_ptr
        assert store.verify().ok
    assert table["sample_id"][:2].tolist() == [0, 1]
    table["sample_id"][:2] = [1, 0]
    _patch(path, table_at, table.tobytes())
    with Store(path) as store:
        report = store.verify()
    assert not report.ok
    assert "allocation table corrupted (CRC mismatch)" in str(report)


# --- layout -----------------------------------------------------------------------------------

def test_a_grown_page_starts_right_after_the_pages_before_it_and_the_crc_block_after_the_last(
        tmp_path, monkeypatch):
    """Pages grow for a sample larger than the default page, at the next multiple of the new size:
    here 8 KiB, right where the first 4 KiB page ends (a whole empty page skipped there would cost
    up to 2 GiB of file). fastprune's CRC block then starts where the last page ends."""
    from test_store import ListSource

    from fastprune.store import BytesField, write_dataset

    monkeypatch.setattr(fmt, "DEFAULT_PAGE_SIZE", 1 << 12)
    rows = [(b"\x01" * 100,), (b"\x02" * 5000,)]
    path = write_dataset(tmp_path / "g.beton", ListSource(rows), {"blob": BytesField()}, workers=1,
                         progress=False)
    with Store(path) as store:
        assert store.page_size == 1 << 13
        assert store.alloc_table["ptr"].tolist() == [1 << 12, 1 << 13]  # first page at 4 KiB, then 8 KiB
        at = store.alloc_table_ptr - fmt.CHECKSUM_TRAILER_TYPE.itemsize
        trailer = store.buffer[at:store.alloc_table_ptr].view(fmt.CHECKSUM_TRAILER_TYPE)[0]
        assert int(trailer["block_ptr"]) == 2 * (1 << 13)  # the end of the 8 KiB page at 8 KiB
        assert [store[i] for i in range(2)] == rows


def test_page_size_4_kib_is_the_smallest_accepted(tmp_path):
    """page_size: "power of two from 4 KiB to 2 GiB": 4 KiB writes, 2 KiB is refused in one line
    naming the range, and leaves no file."""
    from test_store import ListSource

    from fastprune.store import IntField, write_dataset

    write_dataset(tmp_path / "ok.beton", ListSource([(1,)]), {"label": IntField()}, page_size=1 << 12,
                  workers=1, progress=False)
    with pytest.raises(ValueError, match=r"page_size.*\[4096, 2147483648\], got 2048"):
        write_dataset(tmp_path / "small.beton", ListSource([(1,)]), {"label": IntField()}, page_size=1 << 11,
                      workers=1, progress=False)
    assert not (tmp_path / "small.beton").exists()


# --- values read from the file ----------------------------------------------------------------

def _column_at(store, sample: int, field: int, member: str | None = None) -> int:
    """File offset of one sample's metadata for one field (of one member of it)."""
    k = f"f{field}"
    at = fmt.metadata_start(len(store.fields)) + sample * store.metadata.dtype.itemsize + store.metadata.dtype.fields[k][1]
    return at if member is None else at + store.metadata.dtype.fields[k][0].fields[member][1]


def test_an_allocation_for_a_sample_past_the_last_is_refused_when_opened(tmp_path):
    """ffcv maps each sample to its pages through the allocation table's sample ids: an id equal
    to num_samples (one past the last) is out of range, as any larger one."""
    from fastprune.errors import StoreError

    path = write(tmp_path / "s.beton")
    with Store(path) as store:
        n, table_at = len(store), store.alloc_table_ptr
    _patch(path, table_at + fmt.ALLOC_TABLE_TYPE.fields["sample_id"][1], np.uint64(n).tobytes())
    with pytest.raises(StoreError, match=rf"allocation table entry 0 \(sample {n},.*>= {n}"):
        Store(path)


def test_a_payload_pointing_into_the_header_is_refused_when_opened(tmp_path):
    """An allocation (and the metadata pointing at it) moved to byte 8, inside the header: data lies
    between the metadata and the allocation table, so the store must not open and hand out header
    bytes as sample 0's value."""
    from test_store_boundaries import _write

    from fastprune.errors import StoreError
    from fastprune.store import BytesField

    path = _write(tmp_path / "h.beton", [(b"0123456789",), (b"abcdefghij",)], {"b": BytesField()})
    with Store(path) as store:
        ptr_at = _column_at(store, 0, 0, "ptr")
        table_at = store.alloc_table_ptr
        assert int(store.alloc_table["sample_id"][0]) == 0
    _patch(path, ptr_at, np.uint64(8).tobytes())
    _patch(path, table_at + fmt.ALLOC_TABLE_TYPE.fields["ptr"][1], np.uint64(8).tobytes())
    with pytest.raises(StoreError, match="outside the data region"):
        Store(path)


@pytest.mark.parametrize("member, value, dtype, shown", [
    ("width", 0, np.uint16, "mode 0, 0x8"),
    ("mode", 2, np.uint8, "mode 2, 8x8"),  # neither 'jpg' (0) nor 'raw' (1)
], ids=["width-0", "mode-2"])
def test_a_jpeg_of_width_zero_or_an_unknown_mode_is_refused_when_opened(tmp_path, member, value, dtype, shown):
    """A JPEG sample whose metadata says width 0, or an image mode that is neither of ffcv's two
    (its payload intact): the loader sizes its buffers and picks its decoder from these numbers,
    so the store refuses them when it opens, as it does height 0."""
    from test_store_boundaries import _write

    from fastprune.errors import StoreError
    from fastprune.store import RGBImageField

    image = np.full((8, 8, 3), 100, np.uint8)
    path = _write(tmp_path / "w.beton", [(image,), (image,)], {"image": RGBImageField("jpg")})
    with Store(path) as store:
        at = _column_at(store, 1, 0, member)
        assert int(store.metadata["f0"]["mode"][1]) == fmt.IMAGE_MODE_JPG
    _patch(path, at, dtype(value).tobytes())
    with pytest.raises(StoreError, match=rf"sample 1, field 'image': inconsistent image metadata \({shown}"):
        Store(path)


def test_a_payload_size_larger_than_its_allocation_is_refused_when_opened(tmp_path):
    """A bytes value whose metadata claims 15 bytes in an allocation of 10 (the next sample's bytes
    follow): reading it would hand out another sample's data, so the store does not open."""
    from test_store_boundaries import _write

    from fastprune.errors import StoreError
    from fastprune.store import BytesField

    path = _write(tmp_path / "b.beton", [(b"0123456789",), (b"abcdefghij",)], {"b": BytesField()})
    with Store(path) as store:
        size_at = _column_at(store, 0, 0, "size")
    _patch(path, size_at, np.uint64(15).tobytes())
    with pytest.raises(StoreError, match=r"sample 0, field 'b': data \[\d+, \+15\) does not fit its allocation of 10"):
        Store(path)


# --- atomic writes and signals ------------------------------------------------------------------

def test_a_new_store_gets_the_mode_the_umask_gives(tmp_path):
    """A new store gets what open() would give it (0666 minus the umask): a private umask 077 keeps
    the file private (0600), a group umask 002 makes it group-writable (0664)."""
    from test_store_boundaries import _write

    from fastprune.store import IntField

    for umask, expected in ((0o077, 0o600), (0o002, 0o664)):
        previous = os.umask(umask)
        try:
            path = _write(tmp_path / f"u{umask:o}.beton", [(1,)], {"label": IntField()})
        finally:
            os.umask(previous)
        assert path.stat().st_mode & 0o777 == expected


def test_sigterm_is_turned_into_keyboard_interrupt_once_and_the_default_is_back_after_a_write(tmp_path):
    """Within sigterm_as_interrupt, a first SIGTERM raises KeyboardInterrupt and puts the default
    action back (a second one kills, as usual); after a write, SIGTERM's default action is back."""
    from test_store_boundaries import _write

    from fastprune.store import IntField

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this process")
    with sigterm_as_interrupt():
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):
                time.sleep(0.002)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    _write(tmp_path / "s.beton", [(1,), (2,)], {"label": IntField()})
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_source_calling_sys_exit_in_a_worker_is_a_conversion_error(tmp_path):
    """SystemExit raised by the source inside an encoding worker comes back as a ConversionError
    naming the samples, not as a SystemExit that would end the caller's program."""
    from fastprune.errors import ConversionError
    from fastprune.store import IntField, write_dataset

    with pytest.raises(ConversionError, match=r"failed in a worker: SystemExit: source exits at 700"):
        write_dataset(tmp_path / "x.beton", _ExitingSource(1024, 700), {"label": IntField()}, workers=2,
                      chunk_size=64, progress=False)
    assert not (tmp_path / "x.beton").exists()


def test_a_field_name_with_a_non_ascii_byte_opens_with_a_replacement_character(tmp_path):
    """A field name byte outside ASCII (another tool's file, or one damaged byte): the store still
    opens, the byte shown as U+FFFD, instead of a bare UnicodeDecodeError from the constructor."""
    from test_store_boundaries import _write

    from fastprune.store import IntField

    path = _write(tmp_path / "n.beton", [(5,)], {"label": IntField()})
    _patch(path, fmt.HEADER_TYPE.itemsize + fmt.FIELD_DESC_TYPE.fields["name"][1] + 1, b"\xe9")
    with Store(path) as store:
        assert list(store.fields) == ["l\ufffdbel"]
        assert store[0] == (5,)


def test_a_store_is_written_from_a_thread_other_than_the_main_one(tmp_path):
    """Signal handlers can be set in the main thread only: a write from another thread (a GUI's
    or a server's worker), with encoding workers, skips the SIGTERM and Ctrl-C handling instead
    of failing."""
    from test_store import ListSource

    from fastprune.store import IntField, write_dataset

    result = {}

    def work():
        try:
            result["path"] = write_dataset(tmp_path / "t.beton", ListSource([(i,) for i in range(1024)]),
                                           {"label": IntField()}, workers=2, chunk_size=64, progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(120)
    assert "error" not in result, result.get("error")
    with Store(result["path"]) as store:
        assert len(store) == 1024 and store[1023] == (1023,)
