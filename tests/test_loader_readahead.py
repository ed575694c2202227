"""Read-ahead hints for stores the OS has not cached (csrc/readahead.cpp, loader/_readahead.py)."""

import mmap
import threading
import time

import numpy as np
import pytest

from fastprune import Loader, _core
from fastprune.convert.arrays import from_arrays
from fastprune.loader import _readahead
from fastprune.loader._readahead import GRANULE, Readahead
from fastprune.loader.loader import batch_bounds

PAGE = mmap.PAGESIZE


def _ranges_oracle(start_address: int, total: int, offsets, sizes, ids, granule: int) -> list[tuple[int, int]]:
    """The merged block ranges, one sample at a time (slow, obvious)."""
    block = max(PAGE, granule // PAGE * PAGE)
    skew = start_address % PAGE
    mapped_end = -(-(total + skew) // PAGE) * PAGE
    ranges = []
    for i in ids:
        start, end = int(offsets[i]), int(offsets[i]) + int(sizes[i])
        if start == end:
            continue
        ranges.append(((start + skew) // block * block, min(-(-(end + skew) // block) * block, mapped_end)))
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [tuple(r) for r in merged]


@pytest.mark.parametrize("granule", [0, 1, PAGE, 3 * PAGE + 5, 128 << 10])
@pytest.mark.parametrize("skew", [0, 1, 1000])
def test_page_ranges_match_the_oracle(granule, skew):
    rng = np.random.default_rng(granule + skew)
    backing = np.zeros(4 * (1 << 20) + PAGE, np.uint8)
    start = (-backing.ctypes.data) % PAGE + skew  # a buffer starting `skew` bytes into a page
    buffer = backing[start:start + 4 * (1 << 20)]
    sizes = rng.integers(0, 40_000, 300).astype(np.uint64)
    offsets = np.minimum(rng.integers(0, len(buffer), 300), len(buffer) - sizes).astype(np.uint64)
    sizes[:3] = 0  # empty payloads ask for nothing
    offsets[-1], sizes[-1] = len(buffer) - 5, 5  # the buffer's last bytes: no range past its last page
    for ids in (rng.integers(0, 300, 64), np.arange(300), np.array([], np.int64)):
        ids = ids.astype(np.int64)
        got = _core.testing.readahead_page_ranges(buffer, offsets, sizes, ids, granule)
        assert [tuple(r) for r in got.tolist()] == _ranges_oracle(buffer.ctypes.data, len(buffer), offsets, sizes,
                                                                   ids, granule)


def test_adjacent_samples_are_one_range():
    buffer = np.zeros(16 * PAGE, np.uint8)
    offsets = np.array([0, PAGE, 2 * PAGE, 10 * PAGE], np.uint64)
    sizes = np.full(4, PAGE, np.uint64)
    got = _core.testing.readahead_page_ranges(buffer, offsets, sizes, np.array([2, 0, 1, 3], np.int64), 0)
    assert [tuple(r) for r in got.tolist()] == _ranges_oracle(buffer.ctypes.data, len(buffer), offsets, sizes,
                                                               [0, 1, 2, 3], 0)
    assert len(got) == 2  # samples 0-2 are one run of pages, sample 3 another


@pytest.mark.parametrize("call", ["advise", "resident"])
def test_bad_ids_and_ranges_raise_instead_of_reading_outside(call):
    buffer = np.zeros(100, np.uint8)
    offsets, sizes = np.array([0, 90], np.uint64), np.array([10, 20], np.uint64)  # sample 1 runs past the end
    def hint(ids):
        ids = np.array(ids, np.int64)
        if call == "advise":
            return _core.advise_willneed(buffer, offsets, sizes, ids, 0)
        return _core.resident_fraction(buffer, np.array([0, 100], np.uint64), ids)
    with pytest.raises(IndexError, match="sample id 2 at row 1 is out of range for a store of 2 samples"):
        hint([0, 2])
    with pytest.raises(IndexError, match="sample id -1 at row 0"):
        hint([-1])
    with pytest.raises(IndexError, match="sample 1 (has byte range|starts at byte)"):
        hint([1])
    assert hint([0]) == (PAGE if call == "advise" else 1.0)


def test_offsets_and_sizes_must_pair():
    with pytest.raises(ValueError, match="one entry per sample"):
        _core.advise_willneed(np.zeros(10, np.uint8), np.zeros(2, np.uint64), np.zeros(3, np.uint64),
                              np.zeros(1, np.int64), 0)


# --- on a real file: a hint reads pages in, a resident store sends none ------------------------------

@pytest.fixture
def cold_store(tmp_path, benchmark_script):
    """A 12 MB raw store (1000 samples of 64 px), dropped from the page cache by the benchmark's
    own helpers (skipped where the file system cannot drop it)."""
    bench = benchmark_script("cold_read")
    path = bench.raw_store(tmp_path, 1000)
    bench.drop_from_cache(path)
    with Loader(path, 100, readahead=False) as loader:
        if loader._source.resident_fraction(np.arange(1000, dtype=np.int64)) > 0.5:
            pytest.skip("this file system keeps the file in memory (tmpfs?): nothing is cold")
    bench.drop_from_cache(path)
    return path


def _wait_resident(source, ids, timeout=20.0) -> float:
    end = time.monotonic() + timeout
    while (fraction := source.resident_fraction(ids)) < 1.0 and time.monotonic() < end:
        time.sleep(0.02)
    return fraction


def test_a_hint_reads_the_samples_pages_in(cold_store):
    with Loader(cold_store, 100, readahead=False) as loader:
        source = loader._source
        ids = np.arange(500, 520, dtype=np.int64)
        assert source.resident_fraction(ids) < 0.5
        assert source.advise(ids) >= 20 * 64 * 64 * 3
        assert _wait_resident(source, ids) == 1.0


def test_a_cold_pass_hints_every_batch_and_a_warm_one_none(cold_store, monkeypatch):
    made = []

    class Recorded(Readahead):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr("fastprune.loader.loader.Readahead", Recorded)
    with Loader(cold_store, 100, seed=1) as loader, Loader(cold_store, 100, seed=1, readahead=False) as plain:
        cold = [b.images.clone() for b in loader]
        assert len(made) == 1 and made[0].hinted_batches == 10  # every batch of the pass
        warm = [b.images.clone() for b in loader]  # the first pass read the whole store in
        assert len(made) == 2 and made[1].hinted_batches == 0
        expect = [b.images.clone() for _ in range(2) for b in plain]  # epochs 0 and 1
        assert len(made) == 2  # readahead=False: no thread at all
        assert len(expect) == 20 and all(a.equal(b) for a, b in zip(cold + warm, expect))


# --- the hint thread's schedule, with a stand-in source ---------------------------------------------

class _Source:
    def __init__(self, resident=0.0, fail_at=None):
        self.resident, self.fail_at = resident, fail_at
        self.advised: list[list[int]] = []
        self.granules = set()
        self.probes = None

    def resident_fraction(self, ids):
        self.probes = ids
        return self.resident

    def advise(self, ids, granule=0):
        if self.fail_at is not None and len(self.advised) == self.fail_at:
            raise IndexError("sample id 99 out of range")
        self.advised.append(ids.tolist())
        self.granules.add(granule)
        return 0


def _wait_for(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.005)
    return condition()


def test_hints_stay_at_most_ahead_batches_past_the_latest_started():
    ids = np.arange(100, dtype=np.int64)[::-1].copy()
    bounds = batch_bounds(100, 10)
    source, stop = _Source(), threading.Event()
    run = Readahead(source, ids, bounds, ahead=2, stop=stop)
    assert _wait_for(lambda: len(source.advised) == 2)  # batches 0 and 1 before any producer starts
    time.sleep(0.1)
    assert len(source.advised) == 2
    run.started(0)
    run.started(4)  # producers may start batches out of order: the latest one counts
    assert _wait_for(lambda: len(source.advised) == 7)
    run.started(3)  # an earlier batch does not move it back
    time.sleep(0.1)
    assert len(source.advised) == 7
    run.started(9)
    assert _wait_for(lambda: len(source.advised) == 10)
    run.join()
    assert source.advised == [ids[bounds[k]:bounds[k + 1]].tolist() for k in range(10)]
    assert source.granules == {GRANULE} and run.hinted_batches == 10


def test_the_residency_probe_spreads_over_the_pass_and_a_resident_pass_sends_nothing(monkeypatch):
    monkeypatch.setattr(_readahead, "RESIDENCY_PROBES", 5)
    ids = np.arange(1000, 2000, dtype=np.int64)
    source = _Source(resident=1.0)
    run = Readahead(source, ids, batch_bounds(1000, 100), ahead=2, stop=threading.Event())
    run.join()
    assert source.probes.tolist() == [1000, 1249, 1499, 1749, 1999] and source.advised == []


def test_a_stopped_pass_ends_the_thread_and_an_error_ends_it_quietly():
    stop = threading.Event()
    source = _Source()
    run = Readahead(source, np.arange(100, dtype=np.int64), batch_bounds(100, 10), ahead=1, stop=stop)
    assert _wait_for(lambda: len(source.advised) == 1)  # ahead=1: batch 0 until a producer starts one
    stop.set()
    run.join()  # returns: the thread saw the stop while waiting for producers
    assert len(source.advised) == 1
    failing = _Source(fail_at=1)
    run = Readahead(failing, np.arange(100, dtype=np.int64), batch_bounds(100, 10), ahead=5, stop=threading.Event())
    run.join()  # the gather raises the same error with its context; the hint thread only stops
    assert len(failing.advised) == 1 and not run._thread.is_alive()


def test_readahead_must_be_a_bool(tmp_path):
    path = from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), tmp_path / "s.beton", progress=False)
    with pytest.raises(TypeError, match="readahead"):
        Loader(path, 2, readahead="yes")
