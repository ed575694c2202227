"""Read-ahead for a store the OS has not cached: a pass's next batches are requested in advance.

The gather reads samples through the file's memory map. When the pages are not in memory (the
first epoch after a reboot, or a store larger than RAM), each sample is a page fault that waits
for its own read, so only one read per loader thread is in flight, and random reads of a few tens
of kilobytes at that depth leave a disk mostly idle. The loader knows every batch of a pass
before it starts: this thread asks the OS for the bytes of the next batches (madvise
MADV_WILLNEED, csrc/readahead.cpp), so their reads are queued together, ahead of the producers.
A pass whose samples are all in memory (checked on a spread of them when it starts) sends no
hints: a hint costs a system call per sample even when there is nothing to read.
"""

from __future__ import annotations

import threading

import numpy as np

_POLL_S = 0.05  # how often the thread re-checks for the pass's end while it waits
RESIDENCY_PROBES = 256  # samples of a pass whose first page is checked when it starts
# Each sample's bytes are requested in the aligned 128 KiB blocks holding them, the size of
# Linux's default read-around on a page fault: a pass reads about the bytes the faults alone would
# (neighbours come along, and are usually needed later in the pass), in many reads at once rather
# than one per thread. Exact pages gave no gain for 12 KB samples on a 1 ms disk (3.6k img/s,
# as without hints) where 128 KiB blocks gave 5.6x (benchmarks/cold_read.py).
GRANULE = 128 << 10


class Readahead:
    """One pass's hint thread. Producers call :meth:`started` with each batch they begin; the
    thread keeps the batches up to ``ahead`` past the latest one started requested from the OS.
    Hints only: an error here would be raised by the gather of the same batch, with its context,
    so the thread stops quietly on one."""

    def __init__(self, source, ids: np.ndarray, bounds: np.ndarray, ahead: int, stop: threading.Event):
        self._source, self._ids, self._bounds, self._ahead, self._stop = source, ids, bounds, ahead, stop
        self._latest = -1  # the latest batch a producer has started
        self._cond = threading.Condition()
        self.hinted_batches = 0  # for tests and benchmarks: batches whose bytes were requested
        self._thread = threading.Thread(target=self._run, daemon=True, name="fastprune-readahead")
        self._thread.start()

    def started(self, k: int) -> None:
        with self._cond:
            if k > self._latest:
                self._latest = k
                self._cond.notify()

    def join(self) -> None:
        """Wait for the thread (its pass's stop event set first)."""
        with self._cond:
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        try:
            if not self._needed():
                return
            for k in range(len(self._bounds) - 1):
                with self._cond:
                    while k > self._latest + self._ahead and not self._stop.is_set():
                        self._cond.wait(_POLL_S)
                if self._stop.is_set():
                    return
                self._source.advise(self._ids[int(self._bounds[k]):int(self._bounds[k + 1])], GRANULE)
                self.hinted_batches += 1
        except (IndexError, ValueError):  # a bad id or byte range: the gather reports it
            return

    def _needed(self) -> bool:
        """Whether any of a spread of the pass's samples starts on a page not in memory."""
        n = len(self._ids)
        if n == 0:
            return False
        probes = self._ids[np.linspace(0, n - 1, min(n, RESIDENCY_PROBES)).astype(np.int64)]
        return self._source.resident_fraction(np.ascontiguousarray(probes)) < 1.0
