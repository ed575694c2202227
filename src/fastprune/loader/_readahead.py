"""Read-ahead for a store the OS has not cached: a pass's next batches are requested in advance.

The gather reads samples through the file's memory map. When the pages are not in memory (the
first epoch after a reboot, or a store larger than RAM), each sample is a page fault that waits
for its own read, so only one read per loader thread is in flight, and random reads of a few tens
of kilobytes at that depth leave a disk mostly idle. The loader knows every batch of a pass
before it starts: this thread asks the OS for the bytes of the next batches (madvise
MADV_WILLNEED, csrc/readahead.cpp), so their reads are queued together, ahead of the producers.

A hint costs CPU even when there is nothing to read (about 2.6 us per sample of cached 128 KiB
blocks, a third of a raw 64 px batch's gather), so the thread asks first: a pass whose samples
are all in memory (a spread of them, checked when it starts) sends no hints, each batch is
hinted only when a spread of its own samples is not mostly in memory, and the thread stops once
several batches in a row were.
"""

from __future__ import annotations

import threading

import numpy as np

from .._cpus import lower_thread_priority

_POLL_S = 0.05  # how often the thread re-checks for the pass's end while it waits
PASS_PROBES = 256  # samples of a pass whose first page is checked when it starts
BATCH_PROBES = 16  # samples of a batch checked before it is hinted
HINT_BELOW = 0.9  # a batch is hinted when less than this share of its probes is in memory
# After this many batches in a row found in memory the thread stops for the pass: waking for
# every batch of a mostly cached store cost its producers ~10% (raw 64 px, 2 threads, 97% cached).
RESIDENT_STREAK = 8
# Each sample's bytes are requested in the aligned 128 KiB blocks holding them, the size of
# Linux's default read-around on a page fault: a pass reads about the bytes the faults alone would
# (neighbours come along, and are usually needed later in the pass), in many reads at once rather
# than one per thread. Exact pages gave no gain for 12 KB samples on a 1 ms disk (3.6k img/s,
# as without hints) where 128 KiB blocks gave 5.6x (benchmarks/cold_read.py).
GRANULE = 128 << 10


class Readahead:
    """One pass's hint thread. Producers call :meth:`started` with each batch they begin; the
    thread keeps the batches up to ``ahead`` past the latest one started requested from the OS,
    skipping any a producer has already started (its page faults are reading it). It runs
    ``nice`` steps below its creator, as the producers do. Hints only: an error here would be
    raised by the gather of the same batch, with its context, so the thread stops quietly on one."""

    def __init__(self, source, ids: np.ndarray, bounds: np.ndarray, ahead: int, stop: threading.Event,
                 nice: int = 0):
        self._source, self._ids, self._bounds, self._ahead, self._stop = source, ids, bounds, ahead, stop
        self._nice = nice
        self._latest = -1  # the latest batch a producer has started
        self._cond = threading.Condition()
        self.hinted_batches = 0  # for tests and benchmarks: batches whose bytes were requested
        self._thread = threading.Thread(target=self._run, daemon=True, name="fastprune-readahead")

    def start(self) -> bool:
        """Start the thread; False if it cannot start (a container's thread or memory limit)."""
        try:
            self._thread.start()
        except RuntimeError:
            return False
        return True

    def started(self, k: int) -> None:
        with self._cond:
            if k > self._latest:
                self._latest = k
                self._cond.notify()

    def join(self) -> None:
        """Wait for the thread, if it started (its pass's stop event set first)."""
        with self._cond:
            self._cond.notify()
        if self._thread.ident is not None and self._thread is not threading.current_thread():  # (a gc run there)
            self._thread.join()

    def _run(self) -> None:
        lower_thread_priority(self._nice)
        try:
            if self._in_memory(self._ids, PASS_PROBES) == 1.0:
                return
            k, batches, streak = 0, len(self._bounds) - 1, 0
            while streak < RESIDENT_STREAK:
                with self._cond:
                    while k > self._latest + self._ahead and not self._stop.is_set():
                        self._cond.wait(_POLL_S)
                    k = max(k, self._latest + 1)
                if self._stop.is_set() or k >= batches:
                    return
                batch = self._ids[int(self._bounds[k]):int(self._bounds[k + 1])]
                if self._in_memory(batch, BATCH_PROBES) < HINT_BELOW:
                    self._source.advise(batch, GRANULE)
                    self.hinted_batches += 1
                    streak = 0
                else:
                    streak += 1
                k += 1
        except (IndexError, ValueError):  # a bad id or byte range: the gather reports it
            return

    def _in_memory(self, ids: np.ndarray, probes: int) -> float:
        """The share of a spread of ``probes`` of ``ids`` whose first page is in memory."""
        if len(ids) == 0:
            return 1.0
        picks = ids[np.linspace(0, len(ids) - 1, min(len(ids), probes)).astype(np.int64)]
        return self._source.resident_fraction(np.ascontiguousarray(picks))
