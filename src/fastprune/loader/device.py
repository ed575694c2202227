"""The host-to-device hand-off: uint8 batches cross to the GPU, Normalize runs there.

Why: a float32 batch is 4x the bytes of its uint8 pixels (78 MB vs 20 MB for 256 images at
160 px), and copies issued with ``.to(non_blocking=True)`` on the default stream serialize with
the model's kernels. So, with ``Loader(device="cuda")`` (``normalize_on="device"``, the default
there):

* producer threads gather and augment into *pinned* uint8 buffers, recycled once the copy that
  read them has completed (a CUDA event per buffer);
* the consumer issues each batch's copies on a dedicated CUDA stream ``prefetch`` batches ahead
  of use, and runs ``Normalize`` (float conversion, normalization, layout) there too;
* a batch is handed out only after the consumer's stream waits on its event, and its tensors are
  ``record_stream``-ed onto that stream, so the caching allocator never reuses their memory while
  the model still reads it.

``Normalize.on_tensor`` gathers from the same per-channel lookup table as the CPU kernel, so the
values are bit-identical to the host path's (the tests run this two-stage path on CPU, where the
copy is a no-op and no stream exists).
"""

from __future__ import annotations

import collections
import threading
import weakref
from typing import Iterable, Iterator

import numpy as np
import torch

__all__ = ["DeviceFeed", "PinnedBuffers"]


class PinnedBuffers:
    """Page-locked uint8 host buffers, reused once the copy that last read each one is done.

    Pinned memory is slow to allocate (cudaHostAlloc maps and locks every page), so a buffer is
    kept and reused; :meth:`release` hands it back with the CUDA event of the copy reading it, and
    :meth:`take` reuses only buffers whose event has completed.
    """

    def __init__(self, keep: int = 16):
        self._free: list[tuple[torch.Tensor, object]] = []
        self._keep = keep
        self._lock = threading.Lock()
        # Each buffer handed out, by address: (a weak reference to the array take() returned, the
        # tensor allocated). release() keeps that tensor, not a new wrapper of the array it gets
        # back: each wrapper (torch.from_numpy of an array whose base reaches the previous wrapper)
        # kept the previous one alive, a chain one link longer per batch, ~8 KB of host memory per
        # batch for the Loader's life. An entry whose array died unreleased (an epoch broken off)
        # is dropped, and its buffer freed, at the next take().
        self._taken: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            for k, (buffer, event) in enumerate(self._free):
                if tuple(buffer.shape) == shape and (event is None or event.query()):
                    del self._free[k]
                    return self._hand_out(buffer)
        buffer = self._allocate(shape)
        with self._lock:
            return self._hand_out(buffer)

    def _hand_out(self, buffer: torch.Tensor) -> np.ndarray:
        self._taken = {ptr: entry for ptr, entry in self._taken.items() if entry[0]() is not None}
        array = buffer.numpy()
        self._taken[buffer.data_ptr()] = (weakref.ref(array), buffer)
        return array

    @staticmethod
    def _allocate(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.uint8, device="cpu", pin_memory=True)

    def release(self, array: np.ndarray, event) -> None:
        """Keep the buffer (the oldest one goes past ``keep``). Buffers of other shapes stay: with
        ``even_batches`` the sizes alternate between n and n + 1, and each epoch ends on a short one."""
        with self._lock:
            _, buffer = self._taken.pop(array.ctypes.data, (None, None))
            self._free.append((torch.from_numpy(array) if buffer is None else buffer, event))
            del self._free[:-self._keep]

    def __reduce__(self):  # copies and pickles start empty (a lock cannot be copied)
        return PinnedBuffers, (self._keep,)


class DeviceFeed:
    """Turns a stream of host batches into device batches, ``ahead`` copies in flight.

    ``normalize`` (a :class:`~fastprune.loader.transforms.Normalize`, or None to hand out uint8
    NHWC) runs on the device. On CPU the copy is skipped and the same code runs synchronously.
    """

    def __init__(self, device: torch.device, normalize, ahead: int, pinned: PinnedBuffers | None,
                 stream=None):
        self.device = device
        self.normalize = normalize
        self.ahead = max(1, int(ahead))
        self.pinned = pinned
        # The side stream: the loader's own, kept across epochs. The caching allocator reuses freed
        # memory only on the stream it was allocated on: a new stream each epoch would leave each
        # epoch's batch memory cached where no later epoch allocates.
        self.stream = stream if stream is not None or device.type != "cuda" else torch.cuda.Stream(device)

    def run(self, batches: Iterable) -> Iterator:
        """The batches in order. The copies in flight ramp up: batch k is handed out once batch
        ``k + min(k, ahead)`` is issued, so the epoch's first step waits for one host batch, not
        ``ahead + 1``, and later ones find their copy ``ahead`` batches old."""
        in_flight, handed_out, error = collections.deque(), 0, None
        batches = iter(batches)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as exc:  # a batch that failed to build: those issued before it are good,
                error = exc  # and the host path hands them out before raising too (Ctrl-C goes at once)
                break
            in_flight.append(self._issue(batch))
            if len(in_flight) > min(self.ahead, handed_out):
                handed_out += 1
                yield self._hand_out(*in_flight.popleft())
        while in_flight:
            yield self._hand_out(*in_flight.popleft())
        if error is not None:
            raise error

    def _issue(self, batch):
        """Queue the copies and the device-side transforms of one batch on the side stream."""
        if self.stream is None:
            return self._transfer(batch), None
        with torch.cuda.stream(self.stream):
            moved = self._transfer(batch)
            event = torch.cuda.Event()
            event.record(self.stream)
        if self.pinned is not None and batch.images.is_pinned():
            self.pinned.release(batch.images.numpy(), event)  # reusable once this copy has run
        return moved, event

    def _transfer(self, batch):
        moved = [None if t is None else t.to(self.device, non_blocking=True) for t in batch]
        if self.normalize is not None:
            moved[0] = self.normalize.on_tensor(moved[0])
        return type(batch)(*moved)

    def _hand_out(self, batch, event):
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in batch:
                if t is not None:
                    t.record_stream(current)
        return batch
