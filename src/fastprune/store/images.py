"""Pixels in and out of a store: the one resize every path uses, JPEG encode/decode, JPEG quality.

Shrinking (``max_side``, ``resize`` to a smaller size, ``RGBImageField(max_resolution=...)``) is
always area averaging: each output pixel is the mean of the source area it covers. That is
ffcv's filter (so a ``max_resolution`` field stores what ffcv's would), it cannot alias at any
ratio, and unlike Lanczos it never overshoots at edges. OpenCV's ``INTER_AREA`` computes it when
OpenCV is importable (about 7x faster); without OpenCV the same filter is computed exactly in numpy
(:func:`_area_shrink`), so a store does not depend on whether OpenCV is installed beyond
rounding: the two agree to within 1 grey level (tests/test_store.py checks this).
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import warnings
from collections.abc import Iterator

import numpy as np

# Quality of every JPEG fastprune encodes unless told otherwise (converters, the CLI's --quality,
# RGBImageField): ffcv's own default.
DEFAULT_JPEG_QUALITY = 90


# warnings.catch_warnings swaps the process's whole filter list: two threads inside it at once can
# restore each other's list (an 'ignore' outliving the call). fastprune's own PIL opens take turns.
_FILTERS_LOCK = threading.Lock()


@contextlib.contextmanager
def bomb_warning_ignored() -> Iterator[None]:
    """PIL's DecompressionBombWarning silenced around a PIL open (fastprune checks image sizes
    against its own limit), safe to use from several threads at once."""
    from PIL import Image

    with _FILTERS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


@functools.cache
def _opencv():
    """OpenCV's module, or None where it is not installed. Imported at the first resize or encode,
    not with fastprune: importing it starts its own BLAS threads and maps its libraries into every
    process that only trains. OpenCV is ffcv's own JPEG encoder; it releases the GIL and is faster
    on tiny images."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return cv2


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W x 3 uint8 -> height x width x 3 uint8: area averaging when no side grows (see the
    module docstring); PIL's Lanczos when a side grows (area averaging is defined only for shrinking)."""
    if (height, width) == image.shape[:2]:
        return image
    if height <= image.shape[0] and width <= image.shape[1]:
        cv2 = _opencv()
        if cv2 is not None:
            return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)
        return _area_shrink(image, height, width)
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def _area_shrink(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's INTER_AREA for shrinking, in numpy: rows, then columns, each by :func:`_area_rows`."""
    rows, cols, channels = image.shape
    out = _area_rows(image.reshape(rows, cols * channels), height).reshape(height, cols, channels)
    out = _area_rows(out.transpose(1, 0, 2).reshape(cols, height * channels), width)
    out = out.reshape(width, height, channels).transpose(1, 0, 2)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)  # round half up, as OpenCV


_BLOCK_VALUES = 1 << 23  # float64 running sums held at once (64 MiB), whatever the image size


def _area_rows(x: np.ndarray, n_out: int) -> np.ndarray:
    """(n, m) -> (n_out, m) float64: row i is the mean of x over the rows [i, i + 1) * n / n_out,
    partly covered rows weighted by their covered fraction. The running sum along axis 0, read at
    the (fractional) interval ends, gives each mean with two lookups, whatever the ratio."""
    n = x.shape[0]
    edges = np.arange(n_out + 1) * n / n_out
    lo = np.minimum(edges.astype(np.intp), n - 1)
    frac = (edges - lo)[:, None]
    out = np.empty((n_out, x.shape[1]))
    step = max(1, _BLOCK_VALUES // (n + 1))  # columns per block of running sums
    for j in range(0, x.shape[1], step):
        block = x[:, j:j + step]
        running = np.zeros((n + 1, block.shape[1]))
        np.cumsum(block, axis=0, out=running[1:])
        at_edges = running[lo] + frac * block[lo]  # the running sum at each fractional interval end
        out[:, j:j + step] = np.diff(at_edges, axis=0)
    return out * (n_out / n)


def encode_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    cv2 = _opencv()
    if cv2 is not None:
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                   [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        if not ok:
            raise ValueError("OpenCV failed to encode the image as JPEG")
        return encoded.reshape(-1)
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return np.frombuffer(out.getbuffer(), dtype=np.uint8).copy()


def decode_jpeg(data: np.ndarray, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """JPEG bytes -> H x W x 3 uint8. With ``expected_shape`` (height, width), a header that
    disagrees is rejected before any pixel is decoded, so a corrupted header cannot make PIL
    allocate a huge image (or raise its DecompressionBombError, which is not a ValueError)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with bomb_warning_ignored():  # the size check follows
            img = Image.open(io.BytesIO(data.tobytes()), formats=("JPEG",))  # no other plugin: EPS runs Ghostscript
    except Image.DecompressionBombError as exc:
        raise ValueError(f"JPEG header claims an implausibly large image: {exc}") from None
    except UnidentifiedImageError:
        raise ValueError("not a JPEG (PIL reads a JPEG field's bytes only as JPEG)") from None
    with img:
        if expected_shape is not None and (img.height, img.width) != tuple(expected_shape):
            raise ValueError(f"JPEG header says {img.height}x{img.width}, metadata says "
                             f"{expected_shape[0]}x{expected_shape[1]}")
        return np.asarray(img.convert("RGB")).copy()
