"""Read-ahead hints for stores the OS has not cached (csrc/readahead.cpp, loader/_readahead.py)."""

import mmap
import os
import shutil
import subprocess
import sys
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


def test_a_cold_pass_sends_hints_and_a_warm_one_none(cold_store, monkeypatch):
    made = []

    class Recorded(Readahead):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def start(self):
            # the producers start only once the thread has hinted its first batch or decided
            # not to: otherwise their own page faults (an 8 MiB read-around on some disks) may
            # bring a 12 MB store in before the thread probes it
            started = super().start()
            assert _wait_for(lambda: self.hinted_batches >= 1 or not self._thread.is_alive())
            return started

    monkeypatch.setattr("fastprune.loader.loader.Readahead", Recorded)
    with Loader(cold_store, 100, seed=1) as loader, Loader(cold_store, 100, seed=1, readahead=False) as plain:
        cold = [b.images.clone() for b in loader]
        # hinted, up to the batches whose pages earlier hints' 128 KiB blocks already brought in
        assert len(made) == 1 and 1 <= made[0].hinted_batches <= 10
        warm = [b.images.clone() for b in loader]  # the first pass read the whole store in
        assert len(made) == 2 and made[1].hinted_batches == 0
        expect = [b.images.clone() for _ in range(2) for b in plain]  # epochs 0 and 1
        assert len(made) == 2  # readahead=False: no thread at all
        assert len(expect) == 20 and all(a.equal(b) for a, b in zip(cold + warm, expect))


# --- the hint thread's schedule, with a stand-in source ---------------------------------------------

class _Source:
    """A stand-in source: records hints; answers residency from ``answers`` in turn (then ``resident``)."""

    def __init__(self, resident=0.0, fail_at=None, answers=()):
        self.resident, self.fail_at, self.answers = resident, fail_at, list(answers)
        self.advised: list[list[int]] = []
        self.granules = set()
        self.probes: list[list[int]] = []
        self.priorities: set[int] = set()

    def resident_fraction(self, ids):
        self.probes.append(ids.tolist())
        self.priorities.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return self.answers.pop(0) if self.answers else self.resident

    def advise(self, ids, granule=0):
        if self.fail_at is not None and len(self.advised) == self.fail_at:
            raise IndexError("sample id 99 out of range")
        self.advised.append(ids.tolist())
        self.granules.add(granule)
        return 0


def _started(source, ids, bounds, ahead, stop=None, nice=0):
    run = Readahead(source, ids, bounds, ahead=ahead, stop=stop or threading.Event(), nice=nice)
    assert run.start()
    return run


def _wait_for(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.005)
    return condition()


def test_hints_stay_ahead_of_the_producers_and_skip_batches_they_started():
    ids = np.arange(100, dtype=np.int64)[::-1].copy()
    bounds = batch_bounds(100, 10)
    source = _Source()
    run = _started(source, ids, bounds, ahead=2)
    batch = lambda k: ids[bounds[k]:bounds[k + 1]].tolist()  # noqa: E731
    assert _wait_for(lambda: len(source.advised) == 2)  # batches 0 and 1 before any producer starts
    time.sleep(0.1)
    assert source.advised == [batch(0), batch(1)]
    run.started(0)
    run.started(4)  # producers start batches out of order; 2-4 are being read by their producers now
    assert _wait_for(lambda: len(source.advised) == 4)
    run.started(3)  # an earlier batch does not move it back
    time.sleep(0.1)
    assert source.advised == [batch(0), batch(1), batch(5), batch(6)]
    run.started(7)
    assert _wait_for(lambda: len(source.advised) == 6)
    run.started(9)
    run.join()  # nothing past the last batch
    assert source.advised == [batch(k) for k in (0, 1, 5, 6, 8, 9)]
    assert source.granules == {GRANULE} and run.hinted_batches == 6


def test_a_batch_mostly_in_memory_is_not_hinted(monkeypatch):
    monkeypatch.setattr(_readahead, "BATCH_PROBES", 4)
    ids = np.arange(100, dtype=np.int64)
    # the pass probe finds pages missing; then batches 0..3's own probes: in memory, at the
    # threshold (not below it), just below it, none in memory; later batches: none in memory
    source = _Source(answers=[0.99, 1.0, 0.9, 0.89, 0.0])
    run = _started(source, ids, batch_bounds(100, 10), ahead=20)
    run.join()
    assert source.probes[1] == [0, 3, 6, 9]  # a spread of batch 0's samples
    assert [a[0] for a in source.advised] == [20, 30, 40, 50, 60, 70, 80, 90]
    assert run.hinted_batches == 8


def test_the_thread_stops_after_a_streak_of_batches_in_memory(monkeypatch):
    monkeypatch.setattr(_readahead, "RESIDENT_STREAK", 3)
    ids = np.arange(200, dtype=np.int64)
    # pass probe: pages missing; batches 0-1 in memory, 2 not (the streak starts again), 3-5 in
    # memory: the thread stops there, and batches 6-19 are neither probed nor hinted
    source = _Source(answers=[0.5, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0], resident=0.0)
    run = _started(source, ids, batch_bounds(200, 10), ahead=30)
    run.join()
    assert [a[0] for a in source.advised] == [20] and len(source.probes) == 7


def test_the_pass_probe_spreads_over_the_pass_and_a_resident_pass_sends_nothing(monkeypatch):
    monkeypatch.setattr(_readahead, "PASS_PROBES", 5)
    ids = np.arange(1000, 2000, dtype=np.int64)
    source = _Source(resident=1.0)
    run = _started(source, ids, batch_bounds(1000, 100), ahead=2)
    run.join()
    assert source.probes == [[1000, 1249, 1499, 1749, 1999]] and source.advised == []


def test_the_thread_runs_below_its_creator_as_the_producers_do():
    if not sys.platform.startswith("linux"):
        pytest.skip("thread priorities are Linux's")
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    source = _Source(resident=1.0)
    _started(source, np.arange(10, dtype=np.int64), batch_bounds(10, 5), ahead=2, nice=3).join()
    assert source.priorities == {min(19, base + 3)}


def test_a_stopped_pass_ends_the_thread_and_an_error_ends_it_quietly():
    stop = threading.Event()
    source = _Source()
    run = _started(source, np.arange(100, dtype=np.int64), batch_bounds(100, 10), ahead=1, stop=stop)
    assert _wait_for(lambda: len(source.advised) == 1)  # ahead=1: batch 0 until a producer starts one
    stop.set()
    run.join()  # returns: the thread saw the stop while waiting for producers
    assert len(source.advised) == 1
    failing = _Source(fail_at=1)
    run = _started(failing, np.arange(100, dtype=np.int64), batch_bounds(100, 10), ahead=5)
    run.join()  # the gather raises the same error with its context; the hint thread only stops
    assert len(failing.advised) == 1 and not run._thread.is_alive()


def test_a_pass_without_a_thread_to_spare_runs_without_hints(cold_store, monkeypatch):
    """Hints are optional: a hint thread that cannot start (a container's thread limit) leaves
    the pass as it was, instead of failing it as a producer that cannot start does."""
    start = threading.Thread.start

    def refuse_readahead(thread):
        if thread.name == "fastprune-readahead":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse_readahead)
    with Loader(cold_store, 100, seed=1) as loader, Loader(cold_store, 100, seed=1, readahead=False) as plain:
        assert all(a.images.equal(b.images) for a, b in zip(loader, plain))
        assert loader.epoch == 1


_NOT_OWNER = """
import sys, numpy as np
from fastprune import Loader
with Loader(sys.argv[1], 100, readahead=False) as loader:
    print(loader._source.mincore_trusted, loader._source.resident_fraction(np.arange(1000, dtype=np.int64)))
"""


def test_a_store_this_process_may_not_write_is_still_seen_cold(cold_store, tmp_path):
    """Since Linux 5.0 mincore calls every page of a file the caller may not write resident (a
    shared dataset owned by another account): the probe asks the file itself instead."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root (to hand the file to another owner) and setpriv")
    os.chmod(tmp_path, 0o755)
    os.chown(cold_store, 65534, 65534)  # nobody's, readable by all
    os.chmod(cold_store, 0o644)
    got = subprocess.run([setpriv, "--bounding-set", "-dac_override,-fowner", sys.executable, "-c", _NOT_OWNER,
                          str(cold_store)], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    trusted, fraction = got.stdout.split()
    assert trusted == "False" and float(fraction) < 0.5


def test_readahead_must_be_a_bool(tmp_path):
    path = from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), tmp_path / "s.beton", progress=False)
    with pytest.raises(TypeError, match="readahead"):
        Loader(path, 2, readahead="yes")


@pytest.mark.parametrize("way", [1, 2, 3], ids=["cachestat", "mincore", "nowait read"])
def test_each_way_of_asking_tells_a_dropped_store_from_a_read_one(cold_store, way):
    """The probe's three ways (csrc/readahead.cpp: cachestat, mincore, a 1-byte RWF_NOWAIT read)
    each see the dropped store as not in memory and, once it is read, as in memory; a way this
    kernel lacks answers 1.0 (no hints on a guess) and is skipped here."""
    ids = np.arange(0, 1000, 50, dtype=np.int64)
    with Loader(cold_store, 100, readahead=False) as loader:
        source = loader._source
        fd = source.owner._file.fileno()
        ask = lambda: _core.testing.resident_fraction_one_way(source.buffer, source.offsets, ids, fd, way)  # noqa: E731
        cold = ask()
        if cold == 1.0:
            pytest.skip("this kernel cannot answer this way")
        assert cold < 0.5
        for _ in loader:
            pass
        assert ask() == 1.0
