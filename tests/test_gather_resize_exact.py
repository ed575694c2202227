"""gather_crops' resize (csrc/gather.cpp) byte for byte against numpy models of its fixed-point
formulas: the float oracles of test_loader_native.py / test_loader_jpeg.py allow 1 grey level, so
they would not notice a faster resize that rounds differently.

Two paths. The 2-tap bilinear one (resize_window: a window that enlarges, or any window with
antialias=False): taps computed in double exactly as the C++ does (pixel-centre sampling, clamped
to the pixels the window covers, weight f = lround(frac * 256)), a horizontal pass a * (256 - f) +
b * f (exact in 16 bits), then a vertical one (top * (256 - f) + bottom * f + 32768) >> 16; a
window at integral coordinates of the output's size is copied. The antialiased one
(resize_window_filtered: a window that shrinks, antialias=True): a triangle filter as wide as the
scale with 14-bit weights (PIL's tap range, renormalised at the window's edges), a vertical pass
to the pixel times 256, then a horizontal one."""

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from fastprune import _core

TURBO = _core.JPEG_BACKEND.startswith("libjpeg-turbo")
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # ships with matplotlib


def _lround(v):
    """C's lround (half away from zero) for v >= 0, without numpy's round-half-to-even."""
    f = np.floor(v)
    return (f + (v - f >= 0.5)).astype(np.int64)


def _taps(start, length, size, n):
    first, last = int(start), min(math.ceil(start + length) - 1, size - 1)
    s = start + (np.arange(n) + 0.5) * length / n - 0.5  # same operations, same order as the C++
    s = np.minimum(np.maximum(s, float(first)), float(last))
    i0 = np.minimum(s.astype(np.int64), last)
    return i0, i0 + (i0 < last), _lround((s - i0) * 256)


def _model(pixels, top, left, h, w, out_h, out_w):
    """The fixed-point resize of window (top, left, h, w) (floats allowed) of pixels [rows, cols, 3]."""
    if top == int(top) and left == int(left) and h == out_h and w == out_w:
        return pixels[int(top):int(top) + out_h, int(left):int(left) + out_w].copy()
    x0, x1, fx = _taps(left, w, pixels.shape[1], out_w)
    y0, y1, fy = _taps(top, h, pixels.shape[0], out_h)
    p = pixels.astype(np.int64)
    fx = fx[None, :, None]
    rows = p[:, x0] * (256 - fx) + p[:, x1] * fx  # [rows, out_w, 3], each < 2^16
    assert rows.max(initial=0) < 1 << 16
    fy = fy[:, None, None]
    return ((rows[y0] * (256 - fy) + rows[y1] * fy + 32768) >> 16).astype(np.uint8)


def _filter_taps(start, length, lo, hi, n):
    """make_filter_taps: (first, [weights]) per output pixel, in double as the C++ computes them."""
    scale = length / n
    support = max(scale, 1.0)
    taps = []
    for x in range(n):
        center = start + (x + 0.5) * scale
        k_lo, k_hi = max(math.floor(center - support + 0.5), lo), min(math.floor(center + support + 0.5), hi + 1)
        raw = [max(0.0, 1.0 - abs((k + 0.5 - center) / support)) for k in range(k_lo, k_hi)]
        total = 0.0
        for v in raw:  # summed in order, as the C++ does
            total += v
        exact = [v / total * (1 << 14) for v in raw]
        weights = [math.floor(v) for v in exact]
        lost = [v - f for v, f in zip(exact, weights)]
        for k in sorted(range(len(lost)), key=lambda k: (-lost[k], k))[:(1 << 14) - sum(weights)]:
            weights[k] += 1  # the largest remainders (ties: the first), as the C++
        assert min(weights) >= 0 and sum(weights) == 1 << 14
        taps.append((k_lo, weights))
    return taps


def _filtered_model(pixels, top, left, h, w, out_h, out_w):
    """The antialiased resize of window (top, left, h, w) (floats allowed) of pixels [rows, cols, 3]."""
    rows, cols = pixels.shape[:2]
    xt = _filter_taps(left, w, int(left), min(math.ceil(left + w) - 1, cols - 1), out_w)
    yt = _filter_taps(top, h, int(top), min(math.ceil(top + h) - 1, rows - 1), out_h)
    p = pixels.astype(np.int64)
    vertical = np.stack([(sum(p[first + k] * wk for k, wk in enumerate(weights)) + 32) >> 6
                         for first, weights in yt])  # [out_h, cols, 3]: the pixel times 256
    out = np.stack([sum(vertical[:, first + k] * wk for k, wk in enumerate(weights)) for first, weights in xt], 1)
    return ((out + (1 << 21)) >> 22).astype(np.uint8)


def _expected(pixels, top, left, h, w, out_h, out_w, antialias):
    if antialias and (h > out_h or w > out_w):
        return _filtered_model(pixels, top, left, h, w, out_h, out_w)
    return _model(pixels, top, left, h, w, out_h, out_w)


def _raw_gather(images):
    """ImageGather over raw images laid end to end in a buffer of exactly their size: the last
    image ends where the buffer does (reads past it would show under ASan)."""
    buffer = np.concatenate([im.reshape(-1) for im in images])
    sizes = np.array([im.size for im in images], np.uint64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    return _core.ImageGather(buffer, offsets, sizes, np.ones(len(images), np.uint8),
                             np.array([im.shape[0] for im in images], np.uint32),
                             np.array([im.shape[1] for im in images], np.uint32), 2)


def _image(rng, h, w):
    """Random pixels with runs of 0 and 255 (the extremes of the 16-bit intermediate)."""
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[rng.random((h, w)) < 0.15] = 255
    image[rng.random((h, w)) < 0.15] = 0
    return image


def _check_raw(images, crops, out_h, out_w, antialias=False):
    """Every crop, unflipped and mirrored (the fused flip: taps of the mirrored column, whose
    last rows' SIMD over-read guard then runs from the other end)."""
    gather = _raw_gather(images)
    ids = np.array([c[0] for c in crops], np.int64)
    windows = np.array([c[1:] for c in crops], np.int32)
    flips = np.arange(len(crops), dtype=np.uint8) % 2
    for flip in (None, flips, 1 - flips):
        out = np.empty((len(crops), out_h, out_w, 3), np.uint8)
        gather.gather_crops(ids, windows, out, flips=flip, antialias=antialias)
        for b, (s, top, left, h, w) in enumerate(crops):
            expected = _expected(images[s], top, left, h, w, out_h, out_w, antialias)
            if flip is not None and flip[b]:
                expected = expected[:, ::-1]
            assert np.array_equal(out[b], expected), (
                f"image {images[s].shape[:2]}, crop {(top, left, h, w)}, out {out_h}x{out_w}, flip "
                f"{flip is not None and flip[b]}: {np.argwhere(out[b] != expected)[:5]}")


# (out_h, out_w): square and not, odd widths (out_w * 3 not a multiple of 16: the vector loops'
# tails), one pixel, and the loader's sizes.
OUT_SIZES = [(7, 9), (9, 7), (1, 1), (1, 13), (13, 1), (16, 16), (31, 5), (64, 48), (160, 160), (224, 224)]


@pytest.mark.parametrize("antialias", [False, True], ids=["2-tap", "antialias"])
@pytest.mark.parametrize("out_size", OUT_SIZES, ids=str)
def test_random_windows_match_the_fixed_point_model(out_size, antialias):
    """Up- and downscaling, non-square windows and images, windows touching the edges, 1-pixel
    wide/high windows and images (a 1-column image's last pixel is the end of the buffer)."""
    rng = np.random.default_rng(sum(out_size))
    shapes = [(40, 30), (30, 41), (1, 17), (17, 1), (1, 1), (2, 2), (3, 5), (300, 260)]
    images = [_image(rng, *s) for s in shapes]
    crops = []
    for s, (rows, cols) in enumerate(shapes):
        crops += [(s, 0, 0, rows, cols), (s, rows - 1, cols - 1, 1, 1), (s, 0, cols - 1, rows, 1),
                  (s, rows - 1, 0, 1, cols)]
        for _ in range(12):
            top, left = int(rng.integers(0, rows)), int(rng.integers(0, cols))
            h, w = int(rng.integers(1, rows - top + 1)), int(rng.integers(1, cols - left + 1))
            crops.append((s, top, left, h, w))
            crops.append((s, rows - h, cols - w, h, w))  # touching the bottom-right corner
    _check_raw(images, crops, *out_size, antialias=antialias)


def test_weights_at_rounding_ties():
    """An odd-sized window upscaled to 256 (or a 2-pixel one to 512) puts taps at frac * 256 =
    k + 1/2 exactly, where lround rounds up (half away from zero, not to even)."""
    x = np.arange(256)
    assert (((3 * (x + 0.5) / 256 - 0.5) * 256) % 1 == 0.5).any()  # the case is reached
    rng = np.random.default_rng(5)
    images = [_image(rng, 9, 9), _image(rng, 2, 9)]
    _check_raw(images, [(0, 0, 0, 3, 5), (0, 2, 1, 7, 3), (0, 6, 6, 3, 3), (0, 0, 0, 9, 9)], 256, 256)
    _check_raw(images, [(1, 0, 0, 2, 2), (1, 0, 7, 2, 2)], 512, 512)


def test_pure_crops_are_copied():
    """A window of the output's size (no resampling): the pixels themselves."""
    rng = np.random.default_rng(7)
    images = [_image(rng, 40, 30), _image(rng, 9, 8)]
    crops = [(0, 0, 0, 9, 8), (0, 31, 22, 9, 8), (0, 5, 3, 9, 8), (1, 0, 0, 9, 8)]
    _check_raw(images, crops, 9, 8)
    gather = _raw_gather(images)
    out = np.empty((1, 9, 8, 3), np.uint8)
    gather.gather_crops(np.array([0]), np.array([[31, 22, 9, 8]], np.int32), out)
    assert np.array_equal(out[0], images[0][31:, 22:])


def test_flipped_whole_images_and_bad_flips():
    """gather (no resize) mirrors the rows whose flag is set; a flips array of the wrong length is
    refused before anything is written."""
    rng = np.random.default_rng(9)
    images = [_image(rng, 5, 7) for _ in range(3)]
    gather = _raw_gather(images)
    out = np.empty((3, 5, 7, 3), np.uint8)
    gather.gather(np.array([0, 1, 2]), out, flips=np.array([1, 0, 1], np.uint8))
    for b, flip in enumerate([1, 0, 1]):
        assert np.array_equal(out[b], images[b][:, ::-1] if flip else images[b])
    with pytest.raises(ValueError, match="flips must hold one uint8 per id"):
        gather.gather(np.array([0, 1, 2]), out, flips=np.ones(2, np.uint8))
    with pytest.raises(ValueError, match="gather_crops: flips"):
        gather.gather_crops(np.array([0]), np.array([[0, 0, 5, 7]], np.int32), out, flips=np.ones(3, np.uint8))


@pytest.mark.parametrize("antialias", [False, True], ids=["2-tap", "antialias"])
def test_loader_like_crops_of_photo_sized_images(antialias):
    """RandomResizedCrop-like windows of 256-pixel images to 224 and 160 (mostly upscaling) and of
    512-pixel ones (mostly downscaling)."""
    rng = np.random.default_rng(11)
    images = [_image(rng, 256, 256), _image(rng, 192, 256), _image(rng, 512, 384)]
    for out_h, out_w in [(224, 224), (160, 160), (112, 128)]:
        crops = []
        for _ in range(8):
            s = int(rng.integers(0, len(images)))
            rows, cols = images[s].shape[:2]
            h, w = int(rng.integers(16, rows + 1)), int(rng.integers(16, cols + 1))
            crops.append((s, int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1)), h, w))
        _check_raw(images, crops, out_h, out_w, antialias)


def _jpeg(image, **options):
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=90, **options)
    return np.frombuffer(out.getvalue(), np.uint8)


@pytest.mark.skipif(not TURBO, reason="stb_image decodes whole images: no fractional windows")
@pytest.mark.parametrize("antialias", [False, True], ids=["2-tap", "antialias"])
@pytest.mark.parametrize("options", [{"subsampling": 0}, {"subsampling": 2}, {"progressive": True}], ids=str)
def test_fractional_windows_of_idct_downscaled_jpegs(options, antialias):
    """A window >= 2x the output decodes at 1/2, 1/4 or 1/8 scale, where its edges fall between
    pixels. Against the model applied to the whole image decoded at the same scale (the windowed
    decode holds the same pixels; its origin in the scaled image is an integer shift)."""
    photo = Image.open(PHOTO).convert("RGB")
    rng = np.random.default_rng(3)
    blobs, shapes = [], [(317, 245), (256, 256), (199, 401)]
    for rows, cols in shapes:
        blobs.append(_jpeg(np.asarray(photo.resize((cols, rows))), **options))
    sizes = np.array([b.size for b in blobs], np.uint64)
    gather = _core.ImageGather(np.concatenate(blobs), np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64),
                               sizes, np.zeros(len(blobs), np.uint8), np.array([s[0] for s in shapes], np.uint32),
                               np.array([s[1] for s in shapes], np.uint32), 2)
    scaled = 0
    for out_h, out_w in [(24, 24), (17, 31), (40, 30)]:
        for _ in range(10):
            s = int(rng.integers(0, len(blobs)))
            rows, cols = shapes[s]
            h, w = int(rng.integers(out_h, rows + 1)), int(rng.integers(out_w, cols + 1))
            top, left = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
            out = np.empty((1, out_h, out_w, 3), np.uint8)
            gather.gather_crops(np.array([s]), np.array([[top, left, h, w]], np.int32), out, antialias=antialias)
            k = next((k for k in (8, 4, 2) if h // k >= out_h and w // k >= out_w), 1)  # the decoder's scale
            whole = _core.decode_jpeg(blobs[s], min_height=rows // k, min_width=cols // k)
            assert whole.shape[:2] == (math.ceil(rows / k), math.ceil(cols / k))
            expected = _expected(whole, top / k, left / k, h / k, w / k, out_h, out_w, antialias)
            assert np.array_equal(out[0], expected), f"image {s}, crop {(top, left, h, w)}, scale 1/{k}"
            gather.gather_crops(np.array([s]), np.array([[top, left, h, w]], np.int32), out, flips=np.ones(1, np.uint8),
                                antialias=antialias)
            assert np.array_equal(out[0], expected[:, ::-1]), f"flipped: image {s}, crop {(top, left, h, w)}"
            scaled += k > 1 and (top % k or left % k or h % k or w % k)
    assert scaled >= 10  # most windows had fractional edges


@pytest.mark.parametrize("antialias", [False, True], ids=["2-tap", "antialias"])
def test_an_empty_output_is_nothing_to_do(antialias):
    """A 0-pixel side: nothing written, nothing read (the filtered path indexed its taps at -1)."""
    gather = _raw_gather([_image(np.random.default_rng(0), 10, 10)])
    for shape in ((1, 0, 5, 3), (1, 5, 0, 3), (1, 0, 0, 3)):
        gather.gather_crops(np.array([0]), np.array([[0, 0, 10, 10]], np.int32), np.empty(shape, np.uint8),
                            antialias=antialias)


@pytest.mark.parametrize("rows, out", [(1280, 1), (2870, 2), (3058, 1)])
def test_extreme_shrinks_keep_their_weights_nonnegative(rows, out):
    """Shrinking 1000x and more: the rounding remainder, all put on the largest weight, made it
    negative and the 16-bit row sums wrapped: a black window with one white row there came out
    white (255 where ~0.2 is right), a white one with a black row black; the numba path wrapped
    where the native one saturated. A diagonal line puts the odd row at every tap position at
    once (column c of a square image has it at row c), shrunk along either axis."""
    from fastprune.loader import transforms

    for base, line in ((0, 255), (255, 0)):
        image = np.full((rows, rows, 3), base, np.uint8)
        image[np.arange(rows), np.arange(rows)] = line
        for size in ((out, rows), (rows, out)):
            window = np.array([[0, 0, rows, rows]], np.int32)
            native = np.empty((1, *size, 3), np.uint8)
            _raw_gather([image]).gather_crops(np.array([0]), window, native, antialias=True)
            assert np.abs(native.astype(int) - base).max() <= 1, (rows, size, base)
            assert np.array_equal(native[0], _filtered_model(image, 0, 0, rows, rows, *size))
            numba = transforms._resize_crops_kernel(image[None], window, np.empty((1, *size, 3), np.uint8), True)
            assert np.array_equal(numba, native)


@pytest.mark.skipif(_core.SIMD != "sse2+avx2",
                    reason="this CPU or build runs no AVX2 code: the tests above ran its paths")
def test_the_sse2_paths_match_the_models_too():
    """Every test above again with the AVX2 functions off (FASTPRUNE_DISABLE_AVX2): the SSE2
    paths a CPU without AVX2 runs, which the AVX2 ones call only for the ends of rows."""
    env = {**os.environ, "FASTPRUNE_DISABLE_AVX2": "1"}
    probe = subprocess.run([sys.executable, "-c", "from fastprune import _core; print(_core.SIMD)"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "sse2"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                             "-k", "not sse2_paths"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
