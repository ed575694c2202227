"""Boundaries of the native core (csrc/gather.cpp, jpeg_decode.hpp, jpeg_turbo.cpp,
store_checks.cpp) that no other test pinned down: a mutation audit (one change at a time to csrc/)
found each of these changes passing the whole suite. A sample whose width disagrees with the batch
or with its JPEG header, crop windows outside the image on the left/right or empty, an exactly 2x
window at an odd offset of a DCT-downscaled JPEG, the scan limit's exact value, junk bytes between
segments (which libjpeg skips), and a CRC range past the buffer."""

import numpy as np
import pytest
from test_gather_resize_exact import PHOTO, _expected, _image, _raw_gather
from test_gather_resize_exact import _jpeg as _photo_jpeg
from test_loader_jpeg import _progressive
from test_loader_native import _jpeg, _pack

from fastprune import _core

TURBO = _core.JPEG_BACKEND.startswith("libjpeg-turbo")


def test_gather_refuses_a_sample_of_the_batch_height_but_another_width():
    """gather() copies h*w*3 bytes per row of the batch: a sample of the same height but another
    width is refused by name (a check of the height alone would read 12x8 as 12x10, sheared, and
    past its own bytes, and cut 12x12)."""
    rng = np.random.default_rng(0)
    images = [_image(rng, 12, 10), _image(rng, 12, 8), _image(rng, 12, 12)]
    gather = _raw_gather(images)
    out = np.empty((2, 12, 10, 3), np.uint8)
    gather.gather(np.array([0, 0]), out)  # the batch's own shape reads
    for s, shape in ((1, "12x8"), (2, "12x12")):
        with pytest.raises(ValueError, match=f"sample {s} is {shape} but the batch is 12x10"):
            gather.gather(np.array([0, s]), out)


@pytest.mark.parametrize("crop", [(0, 5, 4, 6), (0, -1, 4, 4), (0, 0, 4, 0), (0, 0, 0, 4), (2, 9, 3, 2)], ids=str)
def test_gather_crops_refuses_windows_past_the_left_or_right_edge(crop):
    """A crop transform's window is checked on every side before a pixel is read: left < 0,
    left + w > width, and empty windows raise ValueError naming the batch row and the sample
    (checks of top and bottom alone would let a raw image's window past its right edge read the
    next rows' pixels, silently)."""
    rng = np.random.default_rng(1)
    gather = _raw_gather([_image(rng, 8, 10), _image(rng, 8, 10)])
    out = np.empty((2, 4, 4, 3), np.uint8)
    crops = np.array([[0, 0, 8, 10], crop], np.int32)
    with pytest.raises(ValueError, match=r"crop \(top=.*\) of batch row 1 is outside sample 0 \(8x10\)"):
        gather.gather_crops(np.array([1, 0]), crops, out)


def test_a_jpeg_whose_header_width_differs_from_the_metadata_is_refused():
    """The header is checked against the store's metadata on both sides: a JPEG 16 wide recorded
    as 15 wide (a damaged store) is a ValueError naming the sample, not a batch copied with the
    wrong row stride (as it would be with the height alone compared)."""
    good = _jpeg(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    gather, _ = _pack([good], [(16, 15)], [0])
    with pytest.raises(ValueError, match="sample 0 failed: decodes to 16x16 but the store's metadata says 16x15"):
        gather.gather(np.array([0]), np.empty((1, 16, 15, 3), np.uint8))
    with pytest.raises(ValueError, match="decodes to 16x16 but the store's metadata says 16x15"):
        gather.gather_crops(np.array([0]), np.array([[0, 0, 16, 15]], np.int32), np.empty((1, 8, 8, 3), np.uint8))


@pytest.mark.skipif(not TURBO, reason="stb_image decodes whole images: no fractional windows")
@pytest.mark.parametrize("antialias", [False, True], ids=["2-tap", "antialias"])
def test_an_exact_2x_window_at_an_odd_offset_is_resampled_not_copied(antialias):
    """A window exactly 2x (4x, 8x) the output decodes at 1/2 (1/4, 1/8) scale to the output's
    size, but at an odd offset its edges fall between scaled pixels: it is resampled (half a pixel
    over), not copied as if it started on a pixel (the copy shortcut is for integral windows)."""
    from PIL import Image

    photo = np.ascontiguousarray(np.asarray(Image.open(PHOTO).convert("RGB").resize((256, 256))))
    blob = _photo_jpeg(photo)
    gather, _ = _pack([blob], [(256, 256)], [0])
    for (top, left, h, w), (out_h, out_w), k in [((1, 3, 48, 64), (24, 32), 2), ((6, 2, 96, 64), (24, 16), 4),
                                                 ((5, 8, 128, 64), (16, 8), 8)]:
        out = np.empty((1, out_h, out_w, 3), np.uint8)
        gather.gather_crops(np.array([0]), np.array([[top, left, h, w]], np.int32), out, antialias=antialias)
        whole = _core.decode_jpeg(blob, min_height=256 // k, min_width=256 // k)
        expected = _expected(whole, top / k, left / k, h / k, w / k, out_h, out_w, antialias)
        assert np.array_equal(out[0], expected), (top, left, h, w, k)


def test_crc32_ranges_refuses_a_range_past_the_buffer():
    """crc32_ranges bounds-checks every range before reading (IndexError naming the first bad
    one), so a damaged allocation table cannot make it read outside the mapped file."""
    buffer = np.arange(100, dtype=np.uint8)
    assert list(_core.crc32_ranges(buffer, np.array([90], np.uint64), np.array([10], np.uint64))) == [
        __import__("zlib").crc32(buffer[90:].tobytes())]  # a range ending at the buffer's end is fine
    for offsets, sizes, bad in (([0, 90], [10, 11], 1), ([101, 0], [0, 1], 0), ([2**63, 0], [2**63 + 5, 1], 0)):
        with pytest.raises(IndexError, match=f"crc32_ranges: range {bad} .* lies outside the buffer of 100 bytes"):
            _core.crc32_ranges(buffer, np.array(offsets, np.uint64), np.array(sizes, np.uint64), 2)


def test_the_scan_limit_allows_exactly_500_scans():
    """'More than 500 scans' is refused; 500 is not (the limit is inclusive, as its message says),
    both by the loader's decoder and by check_jpeg_cost, which the converter uses."""
    at_limit, over = (np.frombuffer(_progressive(64, 64, scans=n), np.uint8) for n in (500, 501))
    assert _core.check_jpeg_cost(at_limit) == ""
    assert _core.decode_jpeg(at_limit).shape == (64, 64, 3)
    assert "JPEG has more than 500 scans" in _core.check_jpeg_cost(over)
    with pytest.raises(ValueError, match="JPEG has more than 500 scans"):
        _core.decode_jpeg(over)


def test_junk_between_segments_is_skipped_as_libjpeg_does():
    """Stray bytes between two marker segments (some writers pad after APPn) are a warning to
    libjpeg, which skips them: the stream check leaves such a file to the decoder instead of
    refusing it, and the image decodes to the same pixels (a camera folder's odd file is not lost)."""
    clean = _jpeg(np.random.default_rng(4).integers(0, 256, (16, 24, 3), dtype=np.uint8)).tobytes()
    assert clean[2:4] == b"\xff\xe0"  # PIL writes APP0 (JFIF) first
    end_of_app0 = 4 + int.from_bytes(clean[4:6], "big")
    padded = np.frombuffer(clean[:end_of_app0] + b"\x00\x12\x34" + clean[end_of_app0:], np.uint8)
    assert _core.check_jpeg_cost(padded) == ""
    expected = _core.decode_jpeg(np.frombuffer(clean, np.uint8))
    assert np.array_equal(_core.decode_jpeg(padded), expected)
    gather, _ = _pack([padded], [(16, 24)], [0])
    out = np.empty((1, 16, 24, 3), np.uint8)
    gather.gather(np.array([0]), out)
    assert np.array_equal(out[0], expected)
