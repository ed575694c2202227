"""The fused resized-crop JPEG path: decode only the crop window, downscaled in the IDCT when the
window is >= 2x the output (csrc/jpeg_turbo.cpp), against decode-everything oracles (PIL)."""

import io
import math
import os
import platform
import re
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageFilter

import fastprune
from fastprune import _core
from fastprune.bench.machine import cpu_flags
from fastprune.loader import CenterCrop, Loader, Normalize, RandomHorizontalFlip, RandomResizedCrop
from fastprune.loader.transforms import stream_key
from fastprune.store import IntField, RGBImageField, write_dataset

TURBO = _core.JPEG_BACKEND.startswith("libjpeg-turbo")
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # ships with matplotlib


def _photo_jpegs(count=24, seed=0):
    """Crops/resizes of a natural photo: varied sizes, chroma subsampling 4:4:4/4:2:2/4:2:0,
    baseline and progressive, some greyscale."""
    photo = Image.open(PHOTO).convert("RGB")
    rng = np.random.default_rng(seed)
    blobs = []
    for i in range(count):
        w, h = int(rng.integers(60, 512)), int(rng.integers(60, 600))
        image = photo.crop((0, 0, w, h)) if i % 2 else photo.resize((w, h))
        if i % 5 == 4:
            image = image.convert("L")
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90, subsampling=i % 3, progressive=i % 4 == 3)
        blobs.append(np.frombuffer(out.getvalue(), np.uint8))
    return blobs


def _gather(blobs, **kwargs):
    sizes = [Image.open(io.BytesIO(b.tobytes())).size for b in blobs]
    offsets = np.cumsum([0] + [b.size for b in blobs[:-1]]).astype(np.uint64)
    gather = _core.ImageGather(np.concatenate(blobs), offsets, np.array([b.size for b in blobs], np.uint64),
                               np.zeros(len(blobs), np.uint8), np.array([s[1] for s in sizes], np.uint32),
                               np.array([s[0] for s in sizes], np.uint32), 2, **kwargs)
    return gather, np.array([s[1] for s in sizes]), np.array([s[0] for s in sizes])


def _idct_scale(h, w, out_h, out_w):
    """The scale the decoder picks: the largest 1/s (s = 8, 4, 2) keeping the window >= the output."""
    return next((s for s in (8, 4, 2) if h // s >= out_h and w // s >= out_w), 1)


def _window_bilinear(image, top, left, h, w, out_h, out_w):
    """Pixel-centre bilinear of a (fractional) window, clamped to the pixels it covers: the
    documented resampling of gather_crops, in float."""
    def taps(start, length, n, size):
        first, last = int(math.floor(start)), min(int(math.ceil(start + length)) - 1, size - 1)
        s = np.clip(start + (np.arange(n) + 0.5) * length / n - 0.5, first, last)
        i0 = np.minimum(s.astype(int), last)
        return i0, np.minimum(i0 + 1, last), s - i0

    y0, y1, fy = taps(top, h, out_h, image.shape[0])
    x0, x1, fx = taps(left, w, out_w, image.shape[1])
    image, fx, fy = image.astype(float), fx[None, :, None], fy[:, None, None]
    upper = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    lower = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return np.floor(upper * (1 - fy) + lower * fy + 0.5)


def _window_filtered(image, top, left, h, w, out_h, out_w):
    """The antialiased resampling of a (fractional) window that shrinks, in float: a triangle filter
    as wide as the scale over the pixels the window covers, renormalised there (PIL's BILINEAR on
    the cropped image)."""
    def matrix(start, length, n, size):
        first, last = int(math.floor(start)), min(int(math.ceil(start + length)) - 1, size - 1)
        scale = length / n
        support = max(scale, 1.0)
        centers = start + (np.arange(n) + 0.5) * scale
        k = np.arange(first, last + 1)
        weights = np.maximum(0.0, 1.0 - np.abs((k[None, :] + 0.5 - centers[:, None]) / support))
        return k, weights / weights.sum(1, keepdims=True)

    ky, wy = matrix(top, h, out_h, image.shape[0])
    kx, wx = matrix(left, w, out_w, image.shape[1])
    window = image[ky][:, kx].astype(float)
    return np.floor(np.einsum("yjc,xj->yxc", np.einsum("yi,ijc->yjc", wy, window), wx) + 0.5)


def _window_resample(image, top, left, h, w, out_h, out_w):
    """gather_crops' documented resampling: antialiased where the window shrinks, else bilinear."""
    if h > out_h or w > out_w:
        return _window_filtered(image, top, left, h, w, out_h, out_w)
    return _window_bilinear(image, top, left, h, w, out_h, out_w)


def _pil_decode(blob, scale=1):
    """PIL's libjpeg decode of the whole image, DCT-scaled by 1/scale (PIL's draft mode)."""
    image = Image.open(io.BytesIO(blob.tobytes()))
    if scale > 1:
        image.draft("RGB", (image.width // scale, image.height // scale))
    return np.asarray(image.convert("RGB"))


CROPS = [RandomResizedCrop(64), RandomResizedCrop(32), RandomResizedCrop(160), CenterCrop(48), CenterCrop(200)]


@pytest.mark.parametrize("transform", CROPS, ids=repr)
def test_crop_window_decode_equals_the_whole_image_decoded_then_cropped(transform):
    """Per sample id: the window decode (crop + skip + IDCT scale) equals PIL's whole-image decode at
    the same DCT scale, cropped to the same window and resampled the same way, within rounding."""
    blobs = _photo_jpegs()
    gather, heights, widths = _gather(blobs)
    ids = np.arange(len(blobs), dtype=np.int64)
    crops = transform.crop_params(heights, widths, ids, stream_key(3, 1, 0))
    out = np.empty((len(ids), *transform.size, 3), np.uint8)
    gather.gather_crops(ids, crops, out)
    for b, (top, left, h, w) in enumerate(crops.tolist()):
        scale = _idct_scale(h, w, *transform.size) if TURBO else 1
        whole = _pil_decode(blobs[b], scale)
        assert whole.shape[:2] == (math.ceil(heights[b] / scale), math.ceil(widths[b] / scale))
        expected = _window_resample(whole, top / scale, left / scale, h / scale, w / scale, *transform.size)
        diff = np.abs(out[b] - expected)
        assert diff.max() <= (1 if TURBO else 8), f"sample {b}, crop {(top, left, h, w)}, scale 1/{scale}"


@pytest.mark.skipif(not TURBO, reason="stb_image decodes at full resolution: nothing is downscaled")
def test_downscaled_window_is_the_same_crop_at_full_resolution():
    """Against the full-resolution decode, cropped and box-filtered to the output size: the only
    differences are those of the two filters (compared after a light blur), so a window that were
    off by a few pixels or a wrong scale would fail."""
    blobs = _photo_jpegs(seed=1)
    gather, heights, widths = _gather(blobs)
    ids = np.arange(len(blobs), dtype=np.int64)
    transform = RandomResizedCrop(40, scale=(0.3, 1.0))
    crops = transform.crop_params(heights, widths, ids, stream_key(0, 0, 0))
    out = np.empty((len(ids), 40, 40, 3), np.uint8)
    gather.gather_crops(ids, crops, out)
    blur = lambda a: np.asarray(Image.fromarray(np.asarray(a, np.uint8)).filter(ImageFilter.BoxBlur(1)), float)
    for b, (top, left, h, w) in enumerate(crops.tolist()):
        window = _pil_decode(blobs[b])[top:top + h, left:left + w]
        expected = np.asarray(Image.fromarray(window).resize((40, 40), Image.Resampling.BOX))
        assert np.abs(blur(out[b]) - blur(expected)).mean() < 4, f"sample {b}, crop {(top, left, h, w)}"


def _photo_store(tmp_path, count=40):
    blobs = _photo_jpegs(count, seed=2)
    rows = [(np.asarray(Image.open(io.BytesIO(b.tobytes())).convert("RGB")), i % 3) for i, b in enumerate(blobs)]
    path = tmp_path / "photos.beton"
    write_dataset(path, rows, {"image": RGBImageField("jpg", jpeg_quality=90), "label": IntField()},
                  workers=1, progress=False)
    return path


@pytest.mark.parametrize("crop", [RandomResizedCrop(56), CenterCrop(72)], ids=repr)
def test_batches_are_identical_across_thread_counts(tmp_path, crop):
    path = _photo_store(tmp_path)
    epochs = []
    for threads in (1, 2, 3):
        loader = Loader(path, 7, threads=threads, seed=5, transforms=[crop, RandomHorizontalFlip(), Normalize()])
        loader.set_epoch(2)
        epochs.append([(b.images.clone(), b.indices.clone()) for b in loader])
    for other in epochs[1:]:
        for (images, ids), (images_1, ids_1) in zip(epochs[0], other):
            assert torch_equal(ids, ids_1) and torch_equal(images, images_1)


def test_first_round_in_turns_on_the_pool_gives_the_same_batches(tmp_path):
    """The first round of each epoch gathers in turns on the native pool, later batches on their
    producer alone: the bytes do not depend on who gathered them."""
    path = _photo_store(tmp_path)
    passes = []
    for pooled in (True, False):
        loader = Loader(path, 5, threads=3, seed=2, transforms=[RandomResizedCrop(40), RandomHorizontalFlip()])
        loader._pooled_gather = pooled  # what POOLED_FIRST_ROUND sets when a Loader is made
        passes.append([(b.images.clone(), b.indices.clone()) for _ in range(2) for b in loader])
    assert len(passes[0]) == 16
    assert all(torch_equal(a, c) and torch_equal(i, j) for (a, i), (c, j) in zip(*passes))


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def _with_sof_size(blob: np.ndarray, height: int, width: int) -> np.ndarray:
    data = bytearray(blob.tobytes())
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return np.frombuffer(bytes(data), np.uint8)


def test_header_claiming_too_many_pixels_is_refused_before_decoding():
    """A ~700-byte JPEG whose header (and metadata) claim 12000x12000: refused from the header by
    the pixel cap (default 2**27), naming the sample; a lower cap is honoured too."""
    small = np.frombuffer(_jpeg_bytes(np.zeros((16, 16, 3), np.uint8)), np.uint8)
    hostile = _with_sof_size(small, 12000, 12000)
    assert hostile.size < 1000
    buffer = np.concatenate([small, hostile])
    offsets = np.array([0, small.size], np.uint64)
    sizes = np.array([small.size, hostile.size], np.uint64)
    gather = _core.ImageGather(buffer, offsets, sizes, np.zeros(2, np.uint8), np.array([16, 12000], np.uint32),
                               np.array([16, 12000], np.uint32), 1)
    out = np.empty((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"sample 1 failed: JPEG header claims 12000x12000 = 144000000 pixels, "
                                         r"more than the limit of 134217728"):
        gather.gather_crops(np.array([1]), np.array([[0, 0, 100, 100]], np.int32), out)
    gather.gather_crops(np.array([0]), np.array([[0, 0, 16, 16]], np.int32), out)  # the good one still reads
    strict = _core.ImageGather(buffer, offsets, sizes, np.zeros(2, np.uint8), np.array([16, 12000], np.uint32),
                               np.array([16, 12000], np.uint32), 1, max_pixels=255)
    with pytest.raises(ValueError, match="sample 0 failed: JPEG header claims 16x16 = 256 pixels"):
        strict.gather(np.array([0]), np.empty((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="more than the limit"):
        _core.decode_jpeg(hostile)


def test_loader_passes_max_image_pixels(tmp_path):
    path = _photo_store(tmp_path, count=6)
    # refused where the Loader is built: its batches are allocated from the sizes the store claims
    with pytest.raises(fastprune.StoreError, match=r"photos.beton: sample 0's image is \d+x\d+ by the store's metadata, "
                                         r"more than max_image_pixels=100 \(6 such sample"):
        Loader(path, 3, transforms=[CenterCrop(16)], max_image_pixels=100)
    with pytest.raises(ValueError, match="max_image_pixels must be an integer >= 1"):
        Loader(path, 3, transforms=[CenterCrop(16)], max_image_pixels=0)


def _jpeg_bytes(image, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", **options)
    return out.getvalue()


@pytest.mark.parametrize("damage", ["truncated", "cut_in_scan", "garbage_scan", "cmyk"])
def test_damaged_jpegs_raise_naming_the_sample(damage):
    rng = np.random.default_rng(0)
    photo = np.asarray(Image.open(PHOTO).convert("RGB").resize((96, 80)))
    good = _jpeg_bytes(photo, quality=90)
    if damage == "truncated":
        bad = good[: len(good) // 2]
    elif damage == "cut_in_scan":
        bad = good[: len(good) - 200] + b"\xff\xd9"
    elif damage == "garbage_scan":
        scan = good.find(b"\xff\xda") + 20
        bad = good[:scan] + bytes(rng.integers(0, 256, 300, dtype=np.uint8)) + good[scan + 300:]
    else:
        bad = _jpeg_bytes_cmyk(photo)
    blobs = [np.frombuffer(good, np.uint8), np.frombuffer(bad, np.uint8)]
    gather = _core.ImageGather(np.concatenate(blobs), np.array([0, len(good)], np.uint64),
                               np.array([len(good), len(bad)], np.uint64), np.zeros(2, np.uint8),
                               np.array([80, 80], np.uint32), np.array([96, 96], np.uint32), 1)
    # the whole image, and a crop window covering it (a window decode reads only its rows, so
    # damage below a smaller window goes unnoticed, like damage in bytes a reader skips)
    calls = [lambda: gather.gather(np.array([1]), np.empty((1, 80, 96, 3), np.uint8)),
             lambda: gather.gather_crops(np.array([1]), np.array([[0, 0, 80, 96]], np.int32),
                                         np.empty((1, 20, 24, 3), np.uint8))]
    for call in calls:
        try:
            call()
        except ValueError as exc:
            assert "JPEG decode of sample 1 failed" in str(exc)
        else:  # libjpeg resynchronises on some damage inside the scan and decodes the image;
            # stb_image also pads a cut stream and converts CMYK (libjpeg refuses both)
            assert damage in ({"garbage_scan"} if TURBO else {"garbage_scan", "cut_in_scan", "cmyk"})


def _store_with_a_damaged_jpeg(tmp_path, damaged: int):
    """24 JPEG samples; sample ``damaged`` has its SOI marker overwritten (not a JPEG any more)."""
    path = _photo_store(tmp_path, count=24)
    offsets, _ = fastprune.Store(path).field_ranges("image")
    with open(path, "r+b") as f:
        f.seek(int(offsets[damaged]))
        f.write(b"\x00\x00")
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damaged", [5, 21], ids=["first-round", "later"])
def test_a_damaged_jpeg_stops_the_epoch_naming_it_without_hanging_the_producers(tmp_path, damaged):
    """Batch 1 (samples 4-7) is gathered in the first round, taking its turn on the pool while
    the other producers wait theirs; batch 5 (samples 20-23) by its producer alone. Either way
    the error reaches the consumer in its batch's place and the pass shuts down."""
    path = _store_with_a_damaged_jpeg(tmp_path, damaged)
    loader = Loader(path, 4, threads=3, shuffle=False, transforms=[RandomResizedCrop(32)])
    seen = []
    with pytest.raises(ValueError, match=f"JPEG decode of sample {damaged} failed"):
        for batch in loader:
            seen.append(batch.indices.tolist())
    assert seen == [list(range(4 * b, 4 * b + 4)) for b in range(damaged // 4)]
    assert not [t for t in threading.enumerate() if t.name.startswith("fastprune-loader")]


def _jpeg_bytes_cmyk(image) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).convert("CMYK").save(out, "JPEG", quality=90)
    return out.getvalue()


def test_build_info_names_the_decoder():
    info = fastprune.build_info()
    assert info["jpeg_decoder"] == _core.JPEG_BACKEND
    assert info["jpeg_decoder"].startswith(("libjpeg-turbo", "stb_image"))
    assert info["max_image_pixels"] == 2**27
    # the kernels' paths: SSE2 on every x86-64 build unless -DFASTPRUNE_SIMD=OFF (scripts/sanitize's
    # second build, which says so in FASTPRUNE_EXPECT_SIMD), AVX2 where this CPU has it
    expected = os.environ.get("FASTPRUNE_EXPECT_SIMD")
    if expected is None:
        x86 = platform.machine().lower() in ("x86_64", "amd64")
        expected = ("sse2+avx2" if "avx2" in cpu_flags() else "sse2") if x86 else "portable"
    assert info["simd"] == expected


# --- crafted streams whose cost the header's size does not bound (hostile-input audit) -----------

def _segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + len(payload + b"..").to_bytes(2, "big") + payload


def _progressive(height: int, width: int, scans: int, components: int = 1, data_bytes: int | None = None) -> bytes:
    """A progressive JPEG of AC scans whose one Huffman code is an EOB run: every scan walks all
    blocks, and each decode holds every block's coefficients."""
    frame = bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([components])
    frame += b"".join(bytes([c + 1, 0x11, 0]) for c in range(components))
    out = b"\xff\xd8" + _segment(0xDB, b"\x00" + b"\x01" * 64) + _segment(0xC2, frame)
    out += _segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\xe0")
    blocks = -(-height // 8) * -(-width // 8)
    data = b"\x00" * (data_bytes if data_bytes is not None else blocks // 8 + 16)
    for scan in range(scans):
        out += _segment(0xDA, bytes([1, scan % components + 1, 0, 1, 0x3F, 0])) + data
    return out + b"\xff\xd9"


def _dc_overflow(blocks_w: int, blocks_h: int) -> bytes:
    """A baseline gray JPEG (16-bit quantiser 65535) whose every block adds +32767 to the DC
    predictor: stb_image's int predictor overflowed (undefined behaviour; UBSan aborts)."""
    bits = ("0" + "1" * 15 + "0") * (blocks_w * blocks_h)
    bits += "1" * (-len(bits) % 8)
    data = bytearray()
    for i in range(0, len(bits), 8):
        data.append(int(bits[i:i + 8], 2))
        if data[-1] == 0xFF:
            data.append(0)  # byte stuffing
    frame = bytes([8]) + (8 * blocks_h).to_bytes(2, "big") + (8 * blocks_w).to_bytes(2, "big") + b"\x01\x01\x11\x00"
    return (b"\xff\xd8" + _segment(0xDB, b"\x10" + b"\xff\xff" * 64) + _segment(0xC0, frame)
            + _segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x0f")
            + _segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00")
            + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + bytes(data) + b"\xff\xd9")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, message", [
    # 1000 scans over 11584x11584 took 25 s a sample, uninterruptibly
    ("many_scans", r"JPEG has more than 500 scans \(a decoding-time bomb\?\)"),
    ("scans_times_pixels", r"JPEG has 20 scans over 11584x11584 pixels: decoding would take 20 passes"),
    # 3 components at 8000x8000: 549 MiB of coefficients and output for each decode
    ("coefficients", r"progressive JPEG of 8000x8000 needs 549 MiB to decode .* more than the 384 MiB"),
    # a 700-byte baseline stream claiming 65500x2049: stb_image padded it and "decoded" it
    ("too_few_bytes", r"JPEG holds \d+ bytes of image data, too few for a 65500x2049 image"),
])
def test_streams_that_would_cost_more_than_their_size_says_are_refused(case, message):
    if case == "many_scans":
        data = _progressive(64, 64, scans=600)
    elif case == "scans_times_pixels":
        data = _progressive(11584, 11584, scans=20, data_bytes=16)
    elif case == "coefficients":
        data = _progressive(8000, 8000, scans=3, components=3)
    else:
        data = _with_sof_size(np.frombuffer(_jpeg_bytes(np.full((1, 200, 3), 100, np.uint8)), np.uint8),
                              65500, 2049).tobytes()
    with pytest.raises(ValueError, match=message):
        _core.decode_jpeg(np.frombuffer(data, np.uint8))
    # a real progressive photo (~10 scans) still decodes, as does the baseline one
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    for progressive in (True, False):
        decoded = _core.decode_jpeg(np.frombuffer(_jpeg_bytes(photo, quality=90, progressive=progressive), np.uint8))
        assert decoded.shape == photo.shape


def test_dc_predictor_overflow_is_damage_not_undefined_behaviour():
    """65,537 blocks of DC difference +32767 overflow an int predictor (stb_image: undefined
    behaviour, an abort under UBSan in scripts/sanitize's stb pass); now a decode error there.
    libjpeg-turbo clamps such values and decodes."""
    data = np.frombuffer(_dc_overflow(blocks_w=512, blocks_h=130), np.uint8)
    try:
        image = _core.decode_jpeg(data)
    except ValueError as exc:
        assert not TURBO and "bad delta" in str(exc)
    else:
        assert TURBO and image.shape == (1040, 4096, 3)


def _run_in_2_gib(script: str) -> str:
    """stdout of ``script`` run by a child Python whose address space it caps at 2 GiB (so that
    about 1000 threads cannot start), after checking that it exited cleanly."""
    import subprocess
    import sys

    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("AddressSanitizer reserves terabytes of address space: no RLIMIT_AS under it")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_a_pool_whose_threads_cannot_start_raises_instead_of_hanging():
    """Loader(threads=N) past a container's limits: std::thread threw mid-construction and the
    pool hung in pthread_cond_destroy (or aborted with "terminate called"). In a child process
    with a 2 GiB address space, 1000 threads cannot start: a RuntimeError names the cause."""
    out = _run_in_2_gib("import resource, numpy as np\n"
                        "from fastprune import _core\n"
                        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
                        "one = np.ones(1, np.uint32)\n"
                        "try:\n"
                        "    _core.ImageGather(np.zeros(3, np.uint8), np.zeros(1, np.uint64), np.array([3], np.uint64),\n"
                        "                      np.ones(1, np.uint8), one, one, 1000)\n"
                        "except RuntimeError as exc:\n"
                        "    print('raised:', exc)\n")
    assert re.search(r"raised: cannot start 999 native loader threads \(\d+ started: .*\); ask for fewer "
                     r"threads", out), out


def test_checksums_whose_threads_cannot_start_are_computed_by_fewer():
    """Store.verify and the end of every conversion checksum on native threads: a thread that could
    not start (a container's limit) aborted the process ("terminate called without an active
    exception"), losing a whole conversion at its last step. With a 2 GiB address space 1000
    threads cannot start: the CRCs come back, equal to one thread's."""
    out = _run_in_2_gib("import resource, zlib, numpy as np\n"
                        "from fastprune import _core\n"
                        "buffer = np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8)\n"
                        "offsets = np.arange(100_000, dtype=np.uint64) % 60_000\n"
                        "sizes = np.arange(100_000, dtype=np.uint64) % 997\n"
                        "alone = _core.crc32_ranges(buffer, offsets, sizes, 1)\n"
                        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
                        "crowd = _core.crc32_ranges(buffer, offsets, sizes, 1000)\n"
                        "assert alone[12345] == zlib.crc32(buffer[offsets[12345]:][:sizes[12345]].tobytes())\n"
                        "print('equal:', np.array_equal(alone, crowd))\n")
    assert out.strip() == "equal: True"


def test_a_damaged_sample_and_a_missing_store_raise_the_same_errors_through_store_and_loader(tmp_path):
    """store[3] raised StoreError naming the file while the Loader raised a bare ValueError
    without it; a missing store was a StoreError from Store but a plain FileNotFoundError from
    Loader, and a missing converter input neither."""
    import fastprune
    from fastprune.convert import from_arrays, from_npz

    rng = np.random.default_rng(0)
    path = from_arrays(rng.integers(0, 256, (16, 32, 32, 3), np.uint8), np.arange(16) % 2,
                       tmp_path / "j.beton", jpeg=True, progress=False)
    with fastprune.Store(path) as store:
        offsets, sizes = store.field_ranges("image")
        start, size = int(offsets[3]), int(sizes[3])
    with open(path, "r+b") as f:  # keep SOI and EOI, zero the rest of sample 3's JPEG
        f.seek(start + 2)
        f.write(b"\0" * (size - 4))
    with fastprune.Store(path) as store:
        with pytest.raises(fastprune.StoreError, match=f"^{re.escape(str(path))}: sample 3"):
            store[3]
    with pytest.raises(fastprune.StoreError, match=f"^{re.escape(str(path))}: JPEG decode of sample 3 failed"):
        list(fastprune.Loader(path, 8, shuffle=False))
    for missing in (lambda: fastprune.Store(tmp_path / "none.beton"), lambda: fastprune.Loader(tmp_path / "none.beton", 8)):
        with pytest.raises(fastprune.StoreError, match="none.beton: no such store file") as caught:
            missing()
        assert isinstance(caught.value, FileNotFoundError) and caught.value.filename.endswith("none.beton")
    with pytest.raises(FileNotFoundError, match="npz file not found: .*none.npz") as caught:
        from_npz(tmp_path / "none.npz", tmp_path / "o.beton")
    assert isinstance(caught.value, fastprune.ConversionError)
    from fastprune.convert import convert  # the auto-detecting entry point (fastprune convert) too
    with pytest.raises(FileNotFoundError, match=r"source not found: .*none \(shortcuts: ") as caught:
        convert(tmp_path / "none", tmp_path / "o.beton")
    assert isinstance(caught.value, fastprune.ConversionError)


def test_a_transform_that_crops_outside_the_image_is_not_reported_as_a_damaged_store(tmp_path):
    """Only a sample the native core cannot decode is the store's fault (StoreError naming the
    file); a user's crop window past the image edge stays a plain ValueError about the crop."""
    import fastprune
    from fastprune.convert import from_arrays
    from fastprune.loader import CenterCrop

    class ShiftedCrop(CenterCrop):
        def crop_params(self, heights, widths, ids, stream):
            crops = super().crop_params(heights, widths, ids, stream)
            crops[:, 0] += 5  # windows past the bottom edge
            return crops

    path = from_arrays(np.zeros((8, 12, 12, 3), np.uint8), np.arange(8) % 2, tmp_path / "s.beton", progress=False)
    with pytest.raises(ValueError, match="gather_crops: crop") as caught:
        next(iter(fastprune.Loader(path, 4, threads=1, transforms=[ShiftedCrop(8, ratio=1.0)])))
    assert not isinstance(caught.value, fastprune.StoreError)
