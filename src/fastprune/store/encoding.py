"""Step 1 of ``write_dataset`` (see writer.py): samples read and encoded in chunks, in this process
or in forked worker processes, yielded in sample order as :class:`EncodedChunk`."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import warnings
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .._signals import signals_deferred
from ..errors import ConversionError, UnreadableSample
from .fields import Field

# Chunks submitted ahead per worker process: enough that no worker idles while the writer writes,
# few enough that the encoded chunks waiting to be written stay a few megabytes per worker.
CHUNKS_IN_FLIGHT_PER_WORKER = 2


class LeftOut(Exception):
    """Raised by a source's ``__getitem__`` to leave that sample out of the store on purpose (an
    unlabelled sample under ``drop_unlabeled``): neither an error nor a skipped unreadable sample,
    so the source is read once, not first scanned for what to leave out."""


@dataclass
class EncodedChunk:
    """The encoded samples [start, stop) of a source, less those in ``skipped`` and ``left_out``."""

    start: int
    stop: int
    scalars: list[list]  # per field: the metadata scalars of each sample (None for payload-only)
    sizes: np.ndarray  # uint64 [samples, payload fields]: payload sizes, field order
    blob: bytes  # every payload, sample-major then field order, back to back
    # uint32 [samples, payload fields]: each payload's CRC-32, computed where it was encoded (the
    # writer no longer reads the whole output back for them: minutes for a store larger than RAM)
    crcs: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (source index, why) unreadable
    left_out: list[int] = field(default_factory=list)  # source indices the source left out (LeftOut)

    def omitted(self) -> set[int]:
        """The source indices in [start, stop) that were not encoded."""
        return {index for index, _ in self.skipped} | set(self.left_out)


def encode_chunk(source, fields: Sequence[tuple[str, Field]], start: int, stop: int,
                 skip_unreadable: bool = False) -> EncodedChunk:
    """Read and encode samples [start, stop); errors name the sample and the field. With
    ``skip_unreadable``, a sample the source fails to read is left out and listed instead; one the
    source leaves out (LeftOut) is listed as such."""
    scalars: list[list] = [[] for _ in fields]
    payload_fields = [i for i, (_, f) in enumerate(fields) if f.has_payload]
    sizes = np.zeros((stop - start, len(payload_fields)), dtype=np.uint64)
    crcs = np.zeros((stop - start, len(payload_fields)), dtype=np.uint32)
    payloads: list = []
    skipped: list[tuple[int, str]] = []
    left_out: list[int] = []
    for index in range(start, stop):
        try:
            values = _read_sample(source, index, len(fields))
        except LeftOut:
            left_out.append(index)
            continue
        except UnreadableSample as exc:
            if not skip_unreadable:
                raise
            skipped.append((index, exc.why))
            continue
        row, col = index - start - len(skipped) - len(left_out), 0
        for i, ((name, field), value) in enumerate(zip(fields, values)):
            try:
                scalar, payload = field.encode(value)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ConversionError(f"sample {index}, field {name!r} ({type(field).__name__}): {exc}") from exc
            scalars[i].append(scalar)
            if payload is not None:
                if payload is value or not payload.flags.owndata:  # the caller's buffer (or a view of
                    payload = payload.copy()  # it), which the next sample may refill: a chunk held its last
                # an empty payload still takes one (zero) byte of the file: see layout_sizes
                payloads.append(payload if payload.size else EMPTY_PAYLOAD_PAD)
                sizes[row, col] = payload.size
                crcs[row, col] = zlib.crc32(payload)
                col += 1
    kept = stop - start - len(skipped) - len(left_out)
    return EncodedChunk(start, stop, scalars, sizes[:kept], b"".join(payloads), crcs[:kept], skipped, left_out)


# An empty payload (b"" in a BytesField) is recorded with size 0 but placed on a byte of its own:
# sharing its pointer with the next allocation made ffcv's Loader (which finds an allocation's
# size by sorting pointers, unstably) read the next field of such samples as 0 bytes: garbage.
EMPTY_PAYLOAD_PAD = b"\0"


def layout_sizes(sizes: np.ndarray) -> np.ndarray:
    """The bytes each payload takes in the file: its size, or 1 for an empty one."""
    return sizes + (sizes == 0).astype(sizes.dtype)


def _read_sample(source, index: int, num_fields: int) -> tuple:
    try:
        values = source[index]
    except LeftOut:
        raise
    except Exception as exc:
        # A converter's own errors name the file already; the one it calls unreadable, and any
        # error of a source of the user's own, is what skip_unreadable leaves out. Its other
        # errors (a label out of range, a second image shape) stop the write, skipping or not.
        own = isinstance(exc, ConversionError)  # a converter's message names its sample or file
        why = str(exc) if own else f"{type(exc).__name__}: {exc}"
        kind = ConversionError if own and not isinstance(exc, UnreadableSample) else UnreadableSample
        error = kind(why if own else f"reading sample {index} from the source failed: {why}")
        error.why = why
        raise error from exc
    if not isinstance(values, (tuple, list)) or len(values) != num_fields:
        got = f"{len(values)} values" if isinstance(values, (tuple, list)) else type(values).__name__
        raise ConversionError(f"sample {index}: the source returned {got}, expected a tuple of "
                              f"{num_fields} values (one per field)")
    return values


# Set in the parent right before forking the pool; the workers inherit them.
_WORKER_JOB: tuple | None = None

# Python 3.12+ warns on each fork of a process that has threads, and numpy's import alone starts
# OpenBLAS's: every conversion with workers warned, in users' test runs too. Fork it is all the
# same (as for torch's DataLoader): the workers must share the source as it is (a user's dataset
# may not pickle; arrays would be copied into each), and the threads there are libraries' pools
# that reset themselves in a fork's child (OpenBLAS, torch); the workers run no thread of ours.
FORK_WITH_THREADS = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: a worker must not outlive a parent killed with SIGKILL (nothing would
    read its results, and it would keep a core busy). ProcessPoolExecutor alone does not ensure
    it: a worker blocked on the task or result pipe never sees EOF, because its siblings hold
    copies of both ends. On Linux the kernel sends SIGKILL when the parent dies; the getppid
    check covers a parent that died between the fork and the request."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pipes are all there is
        pass
    if os.getppid() != parent_pid:
        os._exit(1)
    # Ctrl-C reaches the whole process group: the parent stops the workers itself (an interrupted
    # worker would send back an error and may block on a pipe nobody reads). SIGTERM from the
    # parent kills at once (not the parent's inherited handler that turns it into an exception).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # held back by the fork


def _encode_in_worker(bounds: tuple[int, int]) -> EncodedChunk:
    source, fields, skip_unreadable = _WORKER_JOB
    try:
        return encode_chunk(source, fields, *bounds, skip_unreadable)
    except ConversionError:
        raise
    except BaseException as exc:
        # A BaseException (SystemExit, KeyboardInterrupt) would kill the worker and the pool would
        # wait forever for its task: report it as an ordinary, picklable error instead.
        raise ConversionError(f"encoding samples {bounds[0]}..{bounds[1] - 1} failed in a worker: "
                              f"{type(exc).__name__}: {exc}") from None


def encoded_chunks(source, fields: dict[str, Field], num_samples: int, chunk_size: int,
                    workers: int, progress: bool, label: str = "writing", skip_unreadable: bool = False):
    """Yield EncodedChunks in sample order, updating a progress bar labelled ``label`` (none when
    ``progress`` is false; tqdm's own settings, such as TQDM_DISABLE=1, apply otherwise)."""
    from tqdm.auto import tqdm  # a notebook's widget bar (as fit's), a terminal's text one

    bounds = [(s, min(s + chunk_size, num_samples)) for s in range(0, num_samples, chunk_size)]
    items = list(fields.items())
    # disable= only when turning the bar off: passed at all, it would override TQDM_DISABLE
    with tqdm(total=num_samples, unit="sample", desc=label, **({} if progress else {"disable": True})) as bar:
        if workers == 1:
            for start, stop in bounds:
                yield encode_chunk(source, items, start, stop, skip_unreadable)
                bar.update(stop - start)
            return
        global _WORKER_JOB
        _WORKER_JOB = (source, items, skip_unreadable)
        # An executor, not multiprocessing.Pool: it notices a worker that dies (os._exit, a crash
        # in user code) and raises BrokenProcessPool instead of waiting for it forever.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_die_with_parent, initargs=(os.getpid(),))
        try:
            # The first submit forks the workers: with SIGINT and SIGTERM held back meanwhile, a
            # Ctrl-C cannot reach a worker before its initializer has set what it does there (it
            # raised KeyboardInterrupt in the fork's own handlers: a broken pool, not "interrupted").
            # Futures, not pool.map: map cancels the pending ones when the loop is left (Ctrl-C),
            # and the executor's thread then fails setting "broken" on a cancelled future (3.11).
            # A window of chunks in sample order, a new one submitted as the oldest is taken:
            # memory stays at a few chunks, and the writer writes while the workers encode. (All
            # submitted at once, in reverse, every finished chunk waited in memory for chunk 0,
            # which ran last: a 5.5 GB store held 5.4 GB in this process, the bar at 0%.)
            spans = iter(bounds)
            with signals_deferred(every=True), warnings.catch_warnings():
                warnings.filterwarnings("ignore", FORK_WITH_THREADS, DeprecationWarning)
                pending = deque(pool.submit(_encode_in_worker, span)
                                for span in itertools.islice(spans, CHUNKS_IN_FLIGHT_PER_WORKER * workers))
            while pending:
                chunk = pending.popleft().result()
                span = next(spans, None)
                if span is not None:
                    pending.append(pool.submit(_encode_in_worker, span))
                yield chunk
                bar.update(chunk.stop - chunk.start)
                del chunk  # a chunk written is not kept in memory while the next one is awaited
        except BrokenProcessPool as exc:
            raise ConversionError(f"an encoding worker process died: {exc}") from exc
        finally:
            _WORKER_JOB = None
            _stop_pool(pool)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now, even mid-task (after an error or KeyboardInterrupt).

    The processes are read before ``shutdown``, which forgets them (``_processes = None``): a
    worker left alive can block forever writing a result nobody reads, and the interpreter's
    exit would wait for it. Pending futures are not cancelled: the executor's own thread marks
    them broken once the workers are gone (cancelling them first makes it fail on a cancelled
    future, a traceback on Ctrl-C)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    results = getattr(pool, "_result_queue", None)
    pool.shutdown(wait=False)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():  # SIGTERM blocked or ignored by the user's source code
            process.kill()
            process.join()
    # A worker killed mid-way through sending a result leaves the executor's thread waiting for the
    # rest; this process holds the pipe's last write end (inherited by the workers, never written
    # here): closing it turns the wait into EOF, and the thread ends instead of blocking the exit.
    writer = getattr(results, "_writer", None)
    if writer is not None:
        writer.close()
    if manager is not None:
        manager.join(timeout=5)


__all__ = ["encode_chunk", "encoded_chunks", "EncodedChunk"]
