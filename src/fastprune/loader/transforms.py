"""Batch transforms: numba kernels over a whole uint8 NHWC batch.

Every transform sees the batch being assembled, ``images`` (uint8 ``[B, H, W, 3]``), the store
sample ids of its rows, ``ids`` (int64 ``[B]``), and ``stream``, a 64-bit key (a Python int;
pass ``np.uint64(stream)`` to a numba kernel: half the keys overflow the signed int64 numba
reads an int as) derived from (loader seed, epoch, position of the transform in the pipeline). Random choices come from
``uniform(stream, ids[b], k)`` -- a counter-based hash of (stream, sample id, draw number) -- so
a sample's augmentation depends only on (seed, epoch, sample id): not on the thread count, the
batch size, or which other samples share its batch.

The last transform may be :class:`Normalize`, which turns the uint8 batch into a float32 /
float16 / bfloat16 torch tensor (NCHW or channels_last). Without it the loader yields the uint8
NHWC batch as a torch tensor.

Writing your own transform takes a few lines: a ``nogil`` numba kernel plus a
:class:`BatchTransform` subclass whose ``__call__`` runs it and returns the batch::

    import numba
    import numpy as np
    from fastprune.loader.transforms import BatchTransform, uniform

    @numba.njit(nogil=True, cache=True)
    def _invert(images, ids, stream, p):
        for b in range(images.shape[0]):
            if uniform(stream, ids[b], 0) < p:
                images[b] = 255 - images[b]

    class RandomInvert(BatchTransform):
        def __init__(self, p=0.5):
            self.p = p

        def __call__(self, images, ids, stream):
            _invert(images, ids, np.uint64(stream), self.p)   # the key as numba's uint64
            return images            # in place; return a new array if the shape changes

    loader = Loader(store, 256, transforms=[RandomInvert(), Normalize(MEAN, STD)])

A transform that changes the image size overrides ``output_size(height, width)``.
"""

from __future__ import annotations

import copy
import math
import sys
import threading
from typing import Sequence

import numba
import numpy as np
import torch

from .._args import check_bool, check_int_range, check_positive_int, check_real

__all__ = [
    "BatchTransform", "RandomCrop", "RandomResizedCrop", "CenterCrop", "RandomHorizontalFlip",
    "Cutout", "Normalize", "uniform", "stream_key",
]

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64_py(z: int) -> int:
    """splitmix64's finaliser on Python ints (the reference for the numba version)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, epoch: int, salt: int) -> int:
    """The 64-bit random stream of one transform (salt = its position) in one epoch."""
    return _mix64_py(_mix64_py(_mix64_py(int(seed)) ^ int(epoch)) ^ (int(salt) + 0x5851F42D4C957F2D))


def uniform_py(stream: int, sample_id: int, k: int) -> float:
    """Pure-Python twin of :func:`uniform` (used by tests as the oracle)."""
    z = _mix64_py(int(stream) ^ _mix64_py((int(sample_id) * 0x9E3779B97F4A7C15 + int(k)) & _MASK64))
    return (z >> 11) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always", nogil=True, cache=True)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always", nogil=True, cache=True)
def uniform(stream, sample_id, k):
    """Uniform float in [0, 1): draw number k for one sample in one transform's stream."""
    z = _mix64(np.uint64(stream) ^ _mix64(np.uint64(sample_id) * _GOLDEN + np.uint64(k)))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always", nogil=True, cache=True)
def _randint(stream, sample_id, k, n):
    """Uniform integer in [0, n)."""
    return min(int(uniform(stream, sample_id, k) * n), n - 1)


class BatchTransform:
    """Base class of batch transforms (see the module docstring)."""

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def __call__(self, images: np.ndarray, ids: np.ndarray, stream: int) -> np.ndarray | torch.Tensor:
        # uint8 [B, H, W, 3] in; the same (or a new array) out, or a tensor from a final Normalize
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------------------------
# Random crop with zero padding (torchvision RandomCrop(size, padding) / ffcv RandomTranslate).

@numba.njit(nogil=True, cache=True)
def _random_crop_kernel(images, out, ids, stream, padding, fill):
    in_h, in_w = images.shape[1], images.shape[2]
    out_h, out_w = out.shape[1], out.shape[2]
    for b in range(images.shape[0]):
        # top-left of the window in padded coordinates, then shifted back to image coordinates
        dy = _randint(stream, ids[b], 0, in_h + 2 * padding - out_h + 1) - padding
        dx = _randint(stream, ids[b], 1, in_w + 2 * padding - out_w + 1) - padding
        for y in range(out_h):
            sy = y + dy
            if sy < 0 or sy >= in_h:
                out[b, y, :, :] = fill
                continue
            x0 = max(0, -dx)
            x1 = min(out_w, in_w - dx)
            out[b, y, :x0, :] = fill
            out[b, y, x1:, :] = fill
            for x in range(x0, x1):
                for c in range(3):
                    out[b, y, x, c] = images[b, sy, x + dx, c]
    return out


class RandomCrop(BatchTransform):
    """Pad by ``padding`` (with ``fill``) and take a random ``size`` crop (default: input size)."""

    def __init__(self, size: int | tuple[int, int] | None = None, padding: int = 4, fill: int = 0):
        self.size = _pair(size, "RandomCrop", "size") if size is not None else None
        self.padding = check_int_range(padding, "RandomCrop: padding", 0, 2**30)
        self.fill = check_int_range(fill, "RandomCrop: fill (a uint8 value)", 0, 255)

    def output_size(self, height, width):
        out = self.size or (height, width)
        if out[0] > height + 2 * self.padding or out[1] > width + 2 * self.padding:
            raise ValueError(f"RandomCrop: size {out} is larger than the padded image "
                             f"{height + 2 * self.padding}x{width + 2 * self.padding}")
        return out

    def __call__(self, images, ids, stream):
        h, w = self.output_size(images.shape[1], images.shape[2])
        out = np.empty((images.shape[0], h, w, 3), np.uint8)
        return _random_crop_kernel(images, out, ids, np.uint64(stream), self.padding, np.uint8(self.fill))


# ---------------------------------------------------------------------------------------------
# Resized crops. Used as the *first* transform, the loader fuses them into the native
# gather/decode (csrc/gather.cpp: read or decode, crop, bilinear resize), which is what makes
# datasets with several image sizes batchable; later in a pipeline they run in numba here.

@numba.njit(nogil=True, cache=True)
def _random_resized_crop_params(heights, widths, ids, stream, scale_lo, scale_hi, log_r_lo, log_r_hi, crops):
    """ffcv's get_random_crop with counter-based draws: crops[b] = (top, left, h, w)."""
    for b in range(ids.shape[0]):
        height, width, s = heights[b], widths[b], ids[b]
        area = height * width
        found = False
        for attempt in range(10):
            target_area = area * (scale_lo + (scale_hi - scale_lo) * uniform(stream, s, 4 * attempt))
            aspect = math.exp(log_r_lo + (log_r_hi - log_r_lo) * uniform(stream, s, 4 * attempt + 1))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                crops[b, 0] = _randint(stream, s, 4 * attempt + 2, height - h + 1)
                crops[b, 1] = _randint(stream, s, 4 * attempt + 3, width - w + 1)
                crops[b, 2] = h
                crops[b, 3] = w
                found = True
                break
        if not found:  # fall back to the central crop with the closest allowed aspect ratio
            in_ratio = width / height
            w, h = width, height
            if in_ratio < math.exp(log_r_lo):
                h = int(round(width / math.exp(log_r_lo)))
            elif in_ratio > math.exp(log_r_hi):
                w = int(round(height * math.exp(log_r_hi)))
            crops[b, 0] = (height - h) // 2
            crops[b, 1] = (width - w) // 2
            crops[b, 2] = h
            crops[b, 3] = w
    return crops


@numba.njit(nogil=True, cache=True)
def _center_crop_params(heights, widths, ratio, crops):
    for b in range(heights.shape[0]):
        c = max(1, int(ratio * min(heights[b], widths[b])))
        crops[b, 0] = (heights[b] - c) // 2
        crops[b, 1] = (widths[b] - c) // 2
        crops[b, 2] = c
        crops[b, 3] = c
    return crops


@numba.njit(nogil=True, cache=True)
def _resize_crops_kernel(images, crops, out, antialias):
    """Bilinear, pixel-centre sampling; a crop that shrinks is filtered when ``antialias``. The
    same fixed-point arithmetic as csrc/gather.cpp (resize_window_filtered, resize_window): equal
    bytes, so a crop's place in the pipeline (fused first, or here) does not change its pixels."""
    out_h, out_w = out.shape[1], out.shape[2]
    for b in range(images.shape[0]):
        top, left, h, w = crops[b, 0], crops[b, 1], crops[b, 2], crops[b, 3]
        if antialias and (h > out_h or w > out_w):
            _filtered_crop(images[b], top, left, h, w, out[b])
        else:
            _two_tap_crop(images[b], top, left, h, w, out[b])
    return out


@numba.njit(nogil=True, cache=True)
def _two_taps(start, length, out_size):
    """make_taps in csrc/gather.cpp: output x blends source x0[x] and x1[x] with the 8-bit weight
    frac[x] of x1 (pixel-centre sampling, clamped to the window; the same double operations)."""
    last = start + length - 1
    x0 = np.empty(out_size, np.int64)
    x1 = np.empty(out_size, np.int64)
    frac = np.empty(out_size, np.int64)
    for x in range(out_size):
        s = start + (x + 0.5) * length / out_size - 0.5
        s = min(max(s, float(start)), float(last))
        i0 = min(int(s), last)
        x0[x], x1[x] = i0, (i0 + 1 if i0 < last else i0)
        v = (s - i0) * 256
        f = math.floor(v)
        frac[x] = int(f) + (1 if v - f >= 0.5 else 0)  # C's lround, exactly (v + 0.5 can round up)
    return x0, x1, frac


@numba.njit(nogil=True, cache=True)
def _two_tap_crop(image, top, left, h, w, out):
    """resize_window's 2-tap bilinear resize: rows a * (256 - f) + b * f (exact in 16 bits),
    then (upper * (256 - f) + lower * f + 32768) >> 16."""
    out_h, out_w = out.shape[0], out.shape[1]
    x0, x1, fx = _two_taps(left, w, out_w)
    y0, y1, fy = _two_taps(top, h, out_h)
    for y in range(out_h):
        for x in range(out_w):
            for c in range(3):
                upper = np.int64(image[y0[y], x0[x], c]) * (256 - fx[x]) + np.int64(image[y0[y], x1[x], c]) * fx[x]
                lower = np.int64(image[y1[y], x0[x], c]) * (256 - fx[x]) + np.int64(image[y1[y], x1[x], c]) * fx[x]
                out[y, x, c] = np.uint8((upper * (256 - fy[y]) + lower * fy[y] + 32768) >> 16)


_FILTER_BITS = 14  # csrc/gather.cpp's FILTER_BITS


@numba.njit(nogil=True, cache=True)
def _filter_taps(start, length, lo, hi, out_size):
    """(first, count, weights [out_size, width]) of make_filter_taps in csrc/gather.cpp: a triangle
    filter stretched to the scale, 14-bit weights summing to 2**14 per output pixel."""
    scale = length / out_size
    support = max(scale, 1.0)
    width = int(math.ceil(2 * support)) + 2
    first = np.empty(out_size, np.int64)
    count = np.empty(out_size, np.int64)
    weights = np.zeros((out_size, width), np.int64)
    raw = np.empty(width, np.float64)
    for x in range(out_size):
        center = start + (x + 0.5) * scale
        k_lo = max(int(math.floor(center - support + 0.5)), lo)
        k_hi = min(int(math.floor(center + support + 0.5)), hi + 1)
        total = 0.0
        n = 0
        for k in range(k_lo, k_hi):
            raw[n] = max(0.0, 1.0 - abs((k + 0.5 - center) / support))
            total += raw[n]
            n += 1
        weight_sum = 0
        for k in range(n):  # largest remainders, as the C++: floors, then +1 where most was lost
            raw[k] = raw[k] / total * (1 << _FILTER_BITS)
            weights[x, k] = int(math.floor(raw[k]))
            raw[k] -= weights[x, k]
            weight_sum += weights[x, k]
        for _ in range((1 << _FILTER_BITS) - weight_sum):
            most = 0
            for k in range(1, n):
                if raw[k] > raw[most]:
                    most = k
            weights[x, most] += 1
            raw[most] = -1.0
        first[x] = k_lo
        count[x] = n
    return first, count, weights


@numba.njit(nogil=True, cache=True)
def _filtered_crop(image, top, left, h, w, out):
    """resize_window_filtered's arithmetic: a vertical pass to the pixel times 256, then a
    horizontal one, both with 14-bit weights."""
    out_h, out_w = out.shape[0], out.shape[1]
    xf, xc, xw = _filter_taps(float(left), float(w), left, left + w - 1, out_w)
    yf, yc, yw = _filter_taps(float(top), float(h), top, top + h - 1, out_h)
    col_first = xf[0]
    row = np.empty((xf[out_w - 1] + xc[out_w - 1] - col_first, 3), np.int64)
    for y in range(out_h):
        for i in range(row.shape[0]):
            for c in range(3):
                acc = 32
                for k in range(yc[y]):
                    acc += np.int64(image[yf[y] + k, col_first + i, c]) * yw[y, k]
                row[i, c] = acc >> 6
        for x in range(out_w):
            for c in range(3):
                acc = 1 << (_FILTER_BITS + 7)
                for k in range(xc[x]):
                    acc += row[xf[x] + k - col_first, c] * xw[x, k]
                out[y, x, c] = np.uint8(acc >> (_FILTER_BITS + 8))


class _ResizedCrop(BatchTransform):
    def __init__(self, size, antialias=True):
        self.size = _pair(size, type(self).__name__, "size")
        self.antialias = check_bool(antialias, f"{type(self).__name__}: antialias")

    def output_size(self, height, width):
        return self.size

    def crop_params(self, heights, widths, ids, stream) -> np.ndarray:
        """int32 [B, 4] crop windows (top, left, h, w) for images of the given sizes."""
        raise NotImplementedError

    def __call__(self, images, ids, stream):
        b, h, w = images.shape[:3]
        crops = self.crop_params(np.full(b, h, np.int64), np.full(b, w, np.int64), ids, stream)
        out = np.empty((b, *self.size, 3), np.uint8)
        return _resize_crops_kernel(images, crops, out, self.antialias)


class RandomResizedCrop(_ResizedCrop):
    """Random area fraction in ``scale`` and aspect ratio in ``ratio``, resized to ``size``.

    A crop larger than ``size`` is shrunk with antialiasing (``antialias=True``, the default): a
    bilinear (triangle) filter as wide as the scale, as PIL's ``BILINEAR`` and torchvision's
    ``antialias=True`` do (equal to within 1 grey level). ``antialias=False`` reads 2 pixels per
    output pixel whatever the scale, as torchvision's ``antialias=False``: faster, but aliased
    (fine patterns shrunk a few times turn into moire). Crops that enlarge are bilinear either way.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias: bool = True):
        super().__init__(size, antialias)
        scale, ratio = _range(scale, "scale"), _range(ratio, "ratio")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"RandomResizedCrop: scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop: ratio must satisfy 0 < lo <= hi, got {ratio}")
        self.scale = scale
        self.ratio = ratio

    def crop_params(self, heights, widths, ids, stream):
        crops = np.empty((len(ids), 4), np.int32)
        return _random_resized_crop_params(
            heights.astype(np.int64), widths.astype(np.int64), ids, np.uint64(stream), self.scale[0],
            self.scale[1], math.log(self.ratio[0]), math.log(self.ratio[1]), crops)


class CenterCrop(_ResizedCrop):
    """Central square of side ``ratio * min(h, w)``, resized to ``size`` (ffcv's CenterCrop);
    ``antialias`` as in :class:`RandomResizedCrop`."""

    def __init__(self, size, ratio: float = 224 / 256, antialias: bool = True):
        super().__init__(size, antialias)
        ratio = check_real(ratio, "CenterCrop: ratio")
        if not 0 < ratio <= 1:
            raise ValueError(f"CenterCrop: ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio

    def crop_params(self, heights, widths, ids, stream):
        crops = np.empty((len(heights), 4), np.int32)
        return _center_crop_params(heights.astype(np.int64), widths.astype(np.int64), self.ratio, crops)


# ---------------------------------------------------------------------------------------------
# Flip and cutout, in place.

@numba.njit(nogil=True, cache=True)
def _flip_kernel(images, flags):
    w = images.shape[2]
    for b in range(images.shape[0]):
        if flags[b]:
            for y in range(images.shape[1]):
                for x in range(w // 2):
                    for c in range(3):
                        t = images[b, y, x, c]
                        images[b, y, x, c] = images[b, y, w - 1 - x, c]
                        images[b, y, w - 1 - x, c] = t
    return images


@numba.njit(nogil=True, cache=True)
def _flip_flags_kernel(ids, stream, p, flags):
    for b in range(ids.shape[0]):
        flags[b] = uniform(stream, ids[b], 0) < p
    return flags


class RandomHorizontalFlip(BatchTransform):
    """Mirror each image left-right with probability ``p``.

    Placed right after the gather (first, or after a first resized crop) the loader fuses it into
    the native gather, which mirrors as it writes: the same bytes, without a pass of its own.
    """

    def __init__(self, p: float = 0.5):
        p = check_real(p, "RandomHorizontalFlip: p")
        if not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def flags(self, ids, stream) -> np.ndarray:
        """uint8 [B]: 1 where this transform mirrors sample ``ids[b]`` (what ``__call__`` does)."""
        return _flip_flags_kernel(ids, np.uint64(stream), self.p, np.empty(len(ids), np.uint8))

    def __call__(self, images, ids, stream):
        return _flip_kernel(images, self.flags(ids, stream))


@numba.njit(nogil=True, cache=True)
def _cutout_kernel(images, ids, stream, size, fill):
    h, w = images.shape[1], images.shape[2]
    for b in range(images.shape[0]):
        cy = _randint(stream, ids[b], 0, h)
        cx = _randint(stream, ids[b], 1, w)
        y0, y1 = max(0, cy - size // 2), min(h, cy - size // 2 + size)
        x0, x1 = max(0, cx - size // 2), min(w, cx - size // 2 + size)
        images[b, y0:y1, x0:x1, :] = fill
    return images


class Cutout(BatchTransform):
    """Fill a ``size`` x ``size`` square centred at a random pixel (clipped at the borders)."""

    def __init__(self, size: int, fill: int = 0):
        self.size = check_positive_int(size, "Cutout: size")
        self.fill = check_int_range(fill, "Cutout: fill (a uint8 value)", 0, 255)

    def __call__(self, images, ids, stream):
        return _cutout_kernel(images, ids, np.uint64(stream), self.size, np.uint8(self.fill))


# ---------------------------------------------------------------------------------------------
# Normalize + conversion to a torch tensor, through a per-channel lookup table: a uint8 input
# has only 256 values per channel, so torch computes the 3x256 outputs once in the target
# dtype (exact rounding, bfloat16 included) and the kernel is a pure gather + layout change.

@numba.njit(nogil=True, cache=True)
def _lut_nchw_kernel(images, lut, out):
    for b in range(images.shape[0]):
        for c in range(3):
            table = lut[c]
            for y in range(images.shape[1]):
                for x in range(images.shape[2]):
                    out[b, c, y, x] = table[images[b, y, x, c]]
    return out


@numba.njit(nogil=True, cache=True)
def _lut_nhwc_kernel(images, lut, out):
    for b in range(images.shape[0]):
        for y in range(images.shape[1]):
            for x in range(images.shape[2]):
                for c in range(3):
                    out[b, y, x, c] = lut[c, images[b, y, x, c]]
    return out


_LUT_STORAGE = {torch.float32: (np.float32, torch.float32), torch.float16: (np.uint16, torch.float16),
                torch.bfloat16: (np.uint16, torch.bfloat16)}


def _references(items: list, k: int) -> int:
    """``sys.getrefcount`` of ``items[k]``, read the same way for a pool's arrays and for its probe."""
    item = items[k]
    return sys.getrefcount(item)


class _RecycledBuffers:
    """Output arrays reused once the caller has dropped every tensor that uses them.

    Why: a float32 batch of 128 x 3 x 224 x 224 is 77 MB, and memory that large comes fresh
    from mmap and is page-faulted in on first write, which cost as much as decoding the batch.
    ``torch.from_numpy`` keeps its array alive as long as any tensor or view of that storage
    lives, so an array whose reference count is down to the pool's own is free to reuse.

    What "the pool's own" reads as depends on the interpreter: 3 on Python 3.10-3.13 (the list,
    the local, getrefcount's argument), 2 on 3.14, whose compiler passes a local to a call as a
    borrowed reference. A fixed 3 there reused an array that one tensor still held. So each take
    compares with a probe array that only the pool's probe list holds, read by the same function.
    """

    def __init__(self, keep: int = 8):
        self._arrays: list[np.ndarray] = []
        self._probe = [np.empty(0)]  # referenced by this list alone: the count of a free array
        self._keep = keep
        self._lock = threading.Lock()

    def _free_index(self, shape: tuple, dtype) -> int | None:
        """The index of a kept array of this shape and dtype that nothing else holds (call with
        the lock held)."""
        free, arrays = _references(self._probe, 0), self._arrays
        # No local may hold a candidate while it is counted (enumerate's reused tuple would too)
        for k in range(len(arrays)):
            if arrays[k].shape == shape and arrays[k].dtype == dtype and _references(arrays, k) <= free:
                return k
        return None

    def take(self, shape: tuple, dtype) -> np.ndarray:
        with self._lock:
            k = self._free_index(shape, dtype)
            if k is not None:
                array = self._arrays.pop(k)
                self._arrays.append(array)  # the most recently used go last
                return array
            array = np.empty(shape, dtype)
            # The most recently used stay, whatever their shape: an epoch's short last batch dropped
            # every full-size array when it dropped the other shapes, and each epoch began by allocating
            self._arrays = [*self._arrays[max(0, len(self._arrays) - self._keep + 1):], array]
            return array

    def __reduce__(self):  # copies and pickles start empty (a lock cannot be copied)
        return _RecycledBuffers, (self._keep,)


class Normalize(BatchTransform):
    """``(x / 255 - mean) / std`` per channel into a torch tensor of ``dtype``, shape [B, 3, H, W].

    ``mean`` and ``std`` are fractions of 255, as in torchvision (ImageNet: mean (0.485, 0.456,
    0.406), std (0.229, 0.224, 0.225)). Statistics in 0-255 units, FFCV's convention, are refused
    (any value above 1): pass them through :meth:`from_255`. ``channels_last=True`` returns the
    same logical shape stored NHWC (``torch.channels_last``). ``pin_memory`` is set by the loader
    when it copies to CUDA.
    """

    def __init__(self, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 dtype: torch.dtype = torch.float32, channels_last: bool = False):
        if dtype not in _LUT_STORAGE:
            raise ValueError(f"Normalize: dtype must be torch.float32, float16 or bfloat16, got {dtype}")
        mean, std = _rgb(mean, "mean"), _rgb(std, "std")
        if any(s == 0 for s in std):
            raise ValueError(f"Normalize: std must not contain 0, got {std}")
        _check_fraction_units(mean, std)
        self.mean = mean
        self.std = std
        self.dtype = dtype
        self.channels_last = check_bool(channels_last, "Normalize: channels_last")  # "False" is truthy
        self.pin_memory = False
        # on the CPU whatever torch.set_default_device says: the table is a numpy array
        values = torch.arange(256, dtype=torch.float64, device="cpu") / 255.0
        mean, std = (torch.tensor(per_channel, device="cpu")[:, None] for per_channel in (self.mean, self.std))
        table = (values[None, :] - mean) / std
        storage, _ = _LUT_STORAGE[dtype]
        self._buffers = _RecycledBuffers()
        self._lut = table.to(dtype).view(torch.int16 if storage is np.uint16 else dtype).numpy().view(storage).copy()

    def on_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The same normalization on a uint8 NHWC tensor on any device (the GPU hand-off: uint8
        crosses PCIe, then this runs there). It gathers from the CPU kernel's lookup table, so the
        values are bit-identical to :meth:`__call__`'s."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"Normalize.on_tensor needs a uint8 [B, H, W, 3] tensor, got {images.dtype} "
                             f"{tuple(images.shape)}")
        lut = self._device_lut(images.device)
        out = lut[images.to(torch.int32) + self._channel_offsets(images.device)]  # [B, H, W, 3]
        out = out.permute(0, 3, 1, 2)  # NCHW shape over NHWC storage: channels_last as is
        return out if self.channels_last else out.contiguous()

    def _device_lut(self, device: torch.device) -> torch.Tensor:
        cache = self.__dict__.setdefault("_luts", {})
        if device not in cache:
            storage, torch_dtype = _LUT_STORAGE[self.dtype]
            table = torch.from_numpy(self._lut.view(np.int16) if storage is np.uint16 else self._lut)
            cache[device] = table.reshape(-1).view(torch_dtype).to(device)
        return cache[device]

    def _channel_offsets(self, device: torch.device) -> torch.Tensor:
        cache = self.__dict__.setdefault("_offsets", {})
        if device not in cache:
            cache[device] = torch.tensor([0, 256, 512], dtype=torch.int32, device=device)
        return cache[device]

    def __getstate__(self) -> dict:  # device tables are rebuilt where the object lands
        return {k: v for k, v in self.__dict__.items() if k not in ("_luts", "_offsets")}

    @classmethod
    def from_255(cls, mean: Sequence[float], std: Sequence[float], **kwargs) -> "Normalize":
        """Normalize with statistics in 0-255 pixel units (FFCV's convention): divides them by 255."""
        return cls([m / 255 for m in _rgb(mean, "mean")], [s / 255 for s in _rgb(std, "std")], **kwargs)

    def _for_loader(self, in_flight: int, pin: bool) -> "Normalize":
        """This Normalize as a Loader runs it: writing pinned memory (``pin``, float batches bound
        for CUDA), else recycled arrays of a pool of its own, sized for a Loader that holds up to
        ``in_flight`` batches (started ahead of its consumer and in use). With the 8 arrays kept
        before, 26-29 of an epoch's 32 batches came fresh from mmap at 8 threads (2 cores,
        unrecorded count); and one pool shared by a training and a validation loader
        (``make_loaders``) had the two batch shapes evict each other."""
        own = copy.copy(self)
        own.pin_memory = self.pin_memory or pin
        own._buffers = _RecycledBuffers(keep=max(8, in_flight))
        return own

    def __call__(self, images, ids, stream) -> torch.Tensor:
        b, h, w, _ = images.shape
        storage, torch_dtype = _LUT_STORAGE[self.dtype]
        shape = (b, h, w, 3) if self.channels_last else (b, 3, h, w)
        # pinned memory (for CUDA) comes from torch; CPU batches from recycled arrays
        if self.pin_memory:
            out = torch.empty(shape, dtype=torch.int16 if storage is np.uint16 else torch_dtype, device="cpu",
                              pin_memory=True)
        else:
            out = torch.from_numpy(self._buffers.take(shape, np.int16 if storage is np.uint16 else storage))
        target = out.numpy().view(storage)
        if self.channels_last:
            _lut_nhwc_kernel(images, self._lut, target)
        else:
            _lut_nchw_kernel(images, self._lut, target)
        out = out.view(torch_dtype)
        return out.permute(0, 3, 1, 2) if self.channels_last else out


def _rgb(values, name: str) -> tuple[float, float, float]:
    if not isinstance(values, Sequence) and not hasattr(values, "__array__") or isinstance(values, str):
        raise TypeError(f"Normalize: {name} needs 3 values (R, G, B; fractions of 255), got {values!r:.60}")
    values = tuple(check_real(v, f"Normalize: {name}") for v in values)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"Normalize: {name} needs 3 finite values (RGB), got {list(values)}")
    return values


def _check_fraction_units(mean, std) -> None:
    """Refuse statistics in 0-255 units: (x/255 - 72.9)/90 squeezes every pixel into [-0.81, -0.80],
    and a model trained on that stays at chance without any error."""
    if max(map(abs, mean + std)) > 1:
        fixed = lambda v: "[" + ", ".join(f"{x / 255:.4g}" for x in v) + "]"  # noqa: E731
        raise ValueError(f"Normalize: mean={list(mean)}, std={list(std)} look like 0-255 pixel units, but "
                         f"Normalize computes (x/255 - mean)/std and takes fractions of 255: use "
                         f"mean={fixed(mean)}, std={fixed(std)}, or Normalize.from_255(mean, std)")


def _pair(value, owner: str, name: str) -> tuple[int, int]:
    """A size: one positive int, or (height, width). Strings, floats and bools are refused, not
    coerced ("16" is not (1, 6), 16.7 is not 16)."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{owner}: {name} must be a positive int or (height, width), got {value!r}")
    height, width = (check_int_range(v, f"{owner}: {name}", 1, MAX_SIDE) for v in pair)
    return height, width


# The largest output side: the native kernels index rows and columns with int, and a batch of
# (1, 2**31) crops would first allocate gigabytes (JPEG itself stops at 65535).
MAX_SIDE = 1 << 20


def _range(value, name: str) -> tuple[float, float]:
    """RandomResizedCrop's (lo, hi) pairs."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"RandomResizedCrop: {name} must be a pair (lo, hi), got {value!r:.60}")
    return check_real(value[0], f"RandomResizedCrop: {name}"), check_real(value[1], f"RandomResizedCrop: {name}")
