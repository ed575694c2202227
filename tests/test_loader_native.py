"""The native batch gather/decode (fastprune._core.ImageGather) against numpy / PIL oracles."""

import io
import os
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from fastprune import _core


def _jpeg(image: np.ndarray, quality: int = 95) -> np.ndarray:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=quality)
    return np.frombuffer(out.getvalue(), np.uint8)


def _pack(blobs, shapes, modes, threads=2, pad=7):
    """Lay blobs out in one buffer with gaps (like pages of a store) and build an ImageGather."""
    offsets, parts, pos = [], [], 0
    for blob in blobs:
        parts.append(np.zeros(pad, np.uint8))
        pos += pad
        offsets.append(pos)
        parts.append(blob)
        pos += blob.size
    buffer = np.concatenate(parts)
    gather = _core.ImageGather(buffer, np.array(offsets, np.uint64), np.array([b.size for b in blobs], np.uint64),
                               np.array(modes, np.uint8), np.array([s[0] for s in shapes], np.uint32),
                               np.array([s[1] for s in shapes], np.uint32), threads)
    return gather, buffer


def _bilinear_oracle(image, top, left, h, w, out_h, out_w):
    crop = image[top:top + h, left:left + w].astype(np.float64)
    sy = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
    sx = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    y0, x0 = sy.astype(int), sx.astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (sy - y0)[:, None, None], (sx - x0)[None, :, None]
    top_row = crop[y0][:, x0] * (1 - fx) + crop[y0][:, x1] * fx
    bottom_row = crop[y1][:, x0] * (1 - fx) + crop[y1][:, x1] * fx
    return np.floor(top_row * (1 - fy) + bottom_row * fy + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def raw_images():
    return np.random.default_rng(1).integers(0, 256, (40, 12, 10, 3), dtype=np.uint8)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_raw_gather_matches_fancy_indexing(raw_images, threads):
    gather, _ = _pack([im.reshape(-1) for im in raw_images], [(12, 10)] * 40, [1] * 40, threads=threads)
    ids = np.random.default_rng(2).integers(0, 40, 33)
    out = np.empty((33, 12, 10, 3), np.uint8)
    gather.gather(ids, out)
    np.testing.assert_array_equal(out, raw_images[ids])


def test_gather_with_pool_and_inline_agree(raw_images):
    gather, _ = _pack([im.reshape(-1) for im in raw_images], [(12, 10)] * 40, [1] * 40, threads=2)
    ids = np.arange(40)[::-1].copy()
    pooled, inline = (np.empty((40, 12, 10, 3), np.uint8) for _ in range(2))
    gather.gather(ids, pooled, max_threads=0)
    gather.gather(ids, inline, max_threads=1)
    np.testing.assert_array_equal(pooled, inline)


def test_jpeg_decode_close_to_pil():
    rng = np.random.default_rng(3)
    # smooth content (gradients + noise) like photos, where JPEG decoders agree closely
    yy, xx = np.mgrid[0:48, 0:40]
    image = np.stack([yy * 5, xx * 6, (yy + xx) * 3], -1) + rng.integers(0, 20, (48, 40, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    data = _jpeg(image)
    ours = _core.decode_jpeg(data).astype(int)
    pil = np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB")).astype(int)
    assert ours.shape == pil.shape == (48, 40, 3)
    assert np.abs(ours - pil).max() <= 6
    assert np.abs(ours - pil).mean() < 1.0


def test_jpeg_and_raw_mixed_batch():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    blobs = [_jpeg(im) if i % 2 else im.reshape(-1) for i, im in enumerate(images)]
    gather, _ = _pack(blobs, [(16, 16)] * 6, [0 if i % 2 else 1 for i in range(6)])
    out = np.empty((6, 16, 16, 3), np.uint8)
    gather.gather(np.arange(6), out)
    for i in range(6):
        expected = images[i] if i % 2 == 0 else np.asarray(Image.open(io.BytesIO(blobs[i].tobytes())).convert("RGB"))
        assert np.abs(out[i].astype(int) - expected).max() <= 8


def test_gather_crops_matches_bilinear_oracle(raw_images):
    gather, _ = _pack([im.reshape(-1) for im in raw_images], [(12, 10)] * 40, [1] * 40)
    ids = np.array([0, 5, 9, 39])
    crops = np.array([[0, 0, 12, 10], [2, 1, 7, 9], [5, 3, 3, 4], [1, 1, 8, 8]], np.int32)
    out = np.empty((4, 9, 7, 3), np.uint8)
    gather.gather_crops(ids, crops, out, antialias=False)  # 2 taps (the filtered path: below)
    for b, (s, c) in enumerate(zip(ids, crops)):
        expected = _bilinear_oracle(raw_images[s], *c, 9, 7)
        assert np.abs(out[b].astype(int) - expected).max() <= 1


def test_gather_crops_of_decoded_jpegs_of_different_sizes():
    rng = np.random.default_rng(5)
    shapes = [(20, 30), (33, 17), (8, 8)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    blobs = [_jpeg(im) for im in images]
    gather, _ = _pack(blobs, shapes, [0, 0, 0])
    crops = np.array([[2, 4, 16, 20], [0, 0, 33, 17], [1, 1, 6, 6]], np.int32)
    out = np.empty((3, 10, 12, 3), np.uint8)
    gather.gather_crops(np.arange(3), crops, out, antialias=False)
    for b in range(3):
        decoded = _core.decode_jpeg(blobs[b])
        np.testing.assert_allclose(out[b], _bilinear_oracle(decoded, *crops[b], 10, 12), atol=1)


def test_shrinking_crops_are_antialiased_as_torchvision_does():
    """A user moving from torchvision's RandomResizedCrop (antialias=True) gets the same pixels
    within 1 grey level. The 2-tap resize, what gather_crops did for every window, turned fine
    3-pixel stripes shrunk 2-7x into stripes (torchvision, PIL: near-flat grey)."""
    tf = pytest.importorskip("torchvision.transforms.functional")
    import torch

    rng = np.random.default_rng(8)
    stripes = np.zeros((600, 500, 3), np.uint8)
    stripes[:, (np.arange(500) // 3) % 2 == 0] = 255
    images = [stripes, rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)]
    gather, _ = _pack([im.reshape(-1) for im in images], [im.shape[:2] for im in images], [1, 1])
    for s, crop, size in [(0, (10, 20, 500, 400), (224, 224)), (0, (0, 0, 600, 500), (64, 48)),
                          (1, (5, 7, 300, 100), (224, 160)), (1, (40, 30, 335, 470), (160, 160))]:
        out = np.empty((1, *size, 3), np.uint8)
        gather.gather_crops(np.array([s]), np.array([crop], np.int32), out)
        expected = tf.resized_crop(torch.from_numpy(images[s]).permute(2, 0, 1), *crop, list(size),
                                   antialias=True).permute(1, 2, 0).numpy()
        diff = np.abs(out[0].astype(int) - expected)
        assert diff.max() <= 1 and diff.mean() < 0.2, (s, crop, size, diff.max(), diff.mean())
        if s == 0 and size == (64, 48):  # 7.8x: flat grey, where 2 taps read stripes
            assert out[0].std() < 5
            aliased = np.empty_like(out)
            gather.gather_crops(np.array([s]), np.array([crop], np.int32), aliased, antialias=False)
            assert aliased[0].std() > 50


def test_errors_name_the_sample(raw_images):
    shapes = [(12, 10)] * 39 + [(10, 12)]
    gather, _ = _pack([im.reshape(-1) for im in raw_images], shapes, [1] * 40)
    out = np.empty((2, 12, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="sample 39 is 10x12 but the batch is 12x10"):
        gather.gather(np.array([0, 39]), out)
    with pytest.raises(IndexError, match="sample id 40 at batch row 1"):
        gather.gather(np.array([0, 40]), out)
    with pytest.raises(IndexError, match="sample id -1"):
        gather.gather(np.array([-1]), out)
    with pytest.raises(ValueError, match="out has room for 2 images but ids has 3"):
        gather.gather(np.arange(3), out)
    with pytest.raises(ValueError, match="outside sample 3"):
        gather.gather_crops(np.array([3]), np.array([[5, 0, 8, 10]], np.int32), out)


def test_corrupt_ranges_are_rejected_at_construction():
    buffer = np.zeros(100, np.uint8)
    ones = np.ones(1, np.uint32)
    with pytest.raises(IndexError, match="outside the 100-byte store"):
        _core.ImageGather(buffer, np.array([98], np.uint64), np.array([3], np.uint64), np.ones(1, np.uint8), ones, ones)
    with pytest.raises(IndexError, match="outside"):  # offset + size overflows 64 bits
        _core.ImageGather(buffer, np.array([2**63], np.uint64), np.array([2**63 + 5], np.uint64),
                          np.ones(1, np.uint8), ones, ones)
    with pytest.raises(ValueError, match="holds only 2 bytes"):
        _core.ImageGather(buffer, np.array([0], np.uint64), np.array([2], np.uint64), np.ones(1, np.uint8), ones, ones)
    with pytest.raises(ValueError, match="image mode 7"):
        _core.ImageGather(buffer, np.array([0], np.uint64), np.array([3], np.uint64), np.full(1, 7, np.uint8), ones, ones)
    with pytest.raises(ValueError, match="one entry per sample"):
        _core.ImageGather(buffer, np.zeros(2, np.uint64), np.zeros(1, np.uint64), np.ones(1, np.uint8), ones, ones)


def test_corrupt_jpeg_raises_instead_of_crashing():
    rng = np.random.default_rng(6)
    good = _jpeg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    garbage = rng.integers(0, 256, 300, dtype=np.uint8)
    truncated = good[: good.size // 3].copy()
    gather, _ = _pack([garbage, truncated], [(16, 16)] * 2, [0, 0])
    out = np.empty((1, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="JPEG decode of sample 0 failed"):
        gather.gather(np.array([0]), out)
    try:  # stb_image may pad a truncated stream; it must either decode or raise, never crash
        gather.gather(np.array([1]), out)
    except ValueError as exc:
        assert "sample 1" in str(exc)
    wrong_size, _ = _pack([good], [(15, 16)], [0])
    with pytest.raises(ValueError, match="decodes to 16x16 but the store's metadata says 15x16"):
        wrong_size.gather(np.array([0]), np.empty((1, 15, 16, 3), np.uint8))


def _thread_nices() -> dict[int, int]:
    """{thread id: nice} of this process's threads (Linux /proc)."""
    nices = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        nices[int(task)] = int(fields[16])  # field 19 of stat; fields[0] is field 3 (state)
    return nices


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_pool_workers_run_nice_steps_below_their_creator():
    """The workers of a Loader's native pool (Loader(thread_nice=...)) lower their own priority;
    the creating thread keeps its own. A value outside [0, 19] is refused."""
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if base > 15:
        pytest.skip(f"this process already runs at nice {base}")
    before = set(_thread_nices())
    buffer = np.zeros(12, np.uint8)
    gather = _core.ImageGather(buffer, np.array([0], np.uint64), np.array([12], np.uint64), np.ones(1, np.uint8),
                               np.array([2], np.uint32), np.array([2], np.uint32), 3, nice=4)
    assert gather.nice == 4 and gather.threads == 3
    for _ in range(100):  # the workers set their priority as they start
        new = {tid: nice for tid, nice in _thread_nices().items() if tid not in before}
        if len(new) == 2 and set(new.values()) == {base + 4}:
            break
        time.sleep(0.01)
    assert sorted(new.values()) == [base + 4, base + 4]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    with pytest.raises(ValueError, match="nice must be in"):
        _core.ImageGather(buffer, np.array([0], np.uint64), np.array([12], np.uint64), np.ones(1, np.uint8),
                          np.array([2], np.uint32), np.array([2], np.uint32), 2, nice=20)
