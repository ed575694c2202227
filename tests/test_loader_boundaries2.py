"""Loader and transform values a mutation audit (round 3: transforms.py, device.py, _source.py and
the Loader's non-ordering parts) found no test pinning down: the defaults users inherit from
torchvision/ffcv, RandomResizedCrop's draws and fallback crop, limits of the argument checks,
Normalize.from_255's keyword arguments, and how labels and fields are picked."""

import gc
import math
import os
import time

import numpy as np
import pytest
import torch

from fastprune.loader.transforms import (CenterCrop, Normalize, RandomCrop, RandomResizedCrop, stream_key,
                                         uniform_py)
from test_loader_transforms import STREAM, _randint_py


def _random_resized_crop_oracle(height, width, sample_id, stream, scale, ratio):
    """ffcv's get_random_crop (torchvision's RandomResizedCrop.get_params) with fastprune's draws:
    attempt a uses draws 4a..4a+3; after 10 misses, the central crop of the closest ratio."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * uniform_py(stream, sample_id, 4 * attempt))
        aspect = math.exp(log_lo + (log_hi - log_lo) * uniform_py(stream, sample_id, 4 * attempt + 1))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return (_randint_py(stream, sample_id, 4 * attempt + 2, height - h + 1),
                    _randint_py(stream, sample_id, 4 * attempt + 3, width - w + 1), h, w)
    w, h = width, height
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("shape, scale, ratio", [
    ((40, 64), (0.08, 1.0), (3 / 4, 4 / 3)),  # ImageNet's defaults on a wide image
    ((30, 30), (0.9, 1.0), (3 / 4, 4 / 3)),   # near-whole crops: attempts fail, whole-side crops hit
    ((20, 90), (0.95, 1.0), (0.9, 1.1)),      # a panorama: every attempt fails, fallback narrows w
    ((90, 20), (0.95, 1.0), (0.9, 1.1)),      # a tall image: fallback narrows h
])
def test_random_resized_crop_windows_match_the_ffcv_oracle(shape, scale, ratio):
    height, width = shape
    ids = np.arange(300, dtype=np.int64) * 7 + 3
    crops = RandomResizedCrop(8, scale=scale, ratio=ratio).crop_params(
        np.full(len(ids), height), np.full(len(ids), width), ids, STREAM)
    expected = [_random_resized_crop_oracle(height, width, int(s), STREAM, scale, ratio) for s in ids]
    np.testing.assert_array_equal(crops, np.array(expected, np.int32))


def test_transform_defaults_are_torchvisions_and_ffcvs():
    """A user writing RandomCrop(32) or RandomResizedCrop(224) gets the recipes' usual augmentation."""
    assert RandomCrop(32).padding == 4 and RandomCrop(32).fill == 0
    crop = RandomResizedCrop(224)
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3)) and crop.antialias is True
    assert CenterCrop(224).ratio == pytest.approx(224 / 256)


def test_a_reversed_ratio_range_is_refused_naming_ratio():
    with pytest.raises(ValueError, match=r"RandomResizedCrop: ratio must satisfy 0 < lo <= hi"):
        RandomResizedCrop(8, ratio=(4 / 3, 3 / 4))


def test_normalize_from_255_keeps_dtype_and_layout():
    images = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    norm = Normalize.from_255([123.7, 116.3, 103.5], [58.4, 57.1, 57.4], dtype=torch.bfloat16, channels_last=True)
    out = norm(images, np.arange(2, dtype=np.int64), 0)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 4, 5)
    assert out.is_contiguous(memory_format=torch.channels_last)


# ---- the Loader: sources, pickling, memory bounds ------------------------------------------------

import pickle  # noqa: E402

import fastprune  # noqa: E402
from fastprune import Loader  # noqa: E402
from fastprune.convert import from_arrays  # noqa: E402
from fastprune.store.fields import IntField, RGBImageField  # noqa: E402
from test_loader import _Images  # noqa: E402


def test_raw_images_of_one_height_but_different_widths_are_refused(tmp_path):
    images = [np.zeros((6, 6 + i % 2, 3), np.uint8) for i in range(8)]
    path = fastprune.write_dataset(tmp_path / "w.beton", _Images(images, np.zeros(8, np.int64)),
                                   {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                                   workers=1, progress=False)
    with pytest.raises(ValueError, match=r"^.*w\.beton: the store's images differ in size"):  # names the file
        Loader(path, 4)


def test_two_integer_fields_without_a_label_give_no_labels_rather_than_a_guess(tmp_path):
    """Docs: the label field is "label" or the only integer field, never "index" (the sample ids
    the converters' index= writes); of "target" and "other" neither, with a warning."""
    from fastprune.errors import UsageWarning

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)

    class Rows(_Images):
        def __getitem__(self, i):
            return self.images[i], i, int(self.labels[i]), 5 - i

    path = fastprune.write_dataset(tmp_path / "t.beton", Rows(images, np.arange(6) % 2),
                                   {"image": RGBImageField(), "index": IntField(), "target": IntField(),
                                    "other": IntField()}, workers=1, progress=False)
    with pytest.warns(UsageWarning, match="fields that could be: target, other"):
        assert next(iter(Loader(path, 6, shuffle=False))).labels is None
    labels = next(iter(Loader(path, 6, shuffle=False, label_field="target"))).labels
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]
    two = fastprune.write_dataset(tmp_path / "two.beton", [row[:3] for row in Rows(images, np.arange(6) % 2)],
                                  {"image": RGBImageField(), "index": IntField(), "target": IntField()},
                                  workers=1, progress=False)
    assert next(iter(Loader(two, 6, shuffle=False))).labels.tolist() == [0, 1, 0, 1, 0, 1]  # not the ids


def test_a_pickled_loader_keeps_its_thread_nice(tmp_path):
    store = from_arrays(np.zeros((16, 4, 4, 3), np.uint8), np.arange(16) % 2, tmp_path / "s.beton", progress=False)
    loader = Loader(store, 8, threads=2, thread_nice=5)
    copy = pickle.loads(pickle.dumps(loader))
    assert copy.thread_nice == 5 and copy._source.gather.nice == loader._source.gather.nice == 5


def test_prefetch_must_be_positive(tmp_path):
    store = from_arrays(np.zeros((16, 4, 4, 3), np.uint8), np.arange(16) % 2, tmp_path / "s.beton", progress=False)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="prefetch"):
            Loader(store, 8, prefetch=bad)


def test_producers_build_at_most_prefetch_batches_ahead(tmp_path):
    """``prefetch`` bounds memory: with nothing consumed, a producer stops after prefetch batches."""
    import threading
    import time

    from fastprune.loader.transforms import BatchTransform

    class Count(BatchTransform):
        def __init__(self):
            self.calls, self.lock = 0, threading.Lock()

        def __call__(self, images, ids, stream):
            with self.lock:
                self.calls += 1
            return images

    store = from_arrays(np.zeros((64, 4, 4, 3), np.uint8), np.arange(64) % 2, tmp_path / "s.beton", progress=False)
    count = Count()
    it = iter(Loader(store, 2, threads=1, prefetch=2, transforms=[count]))  # 32 batches
    next(it)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and count.calls < 32:
        time.sleep(0.05)
    assert count.calls <= 1 + 1 * (2 + 1)  # the one handed out, threads x (prefetch + 1) started ahead
    it.close()


def test_a_slow_batch_holds_up_only_its_own_producer(tmp_path):
    """A free producer takes the next unstarted batch: while batch 0 is stuck, the other producer
    builds batches 1.. up to the window (threads x (prefetch + 1) batches started and not taken),
    and no further. (With batch k fixed to producer k % threads it built only 1, 3, 5.)"""
    import threading
    import time

    from fastprune.loader.transforms import BatchTransform

    class StuckFirst(BatchTransform):
        def __init__(self):
            self.release, self.built, self.lock = threading.Event(), [], threading.Lock()

        def __call__(self, images, ids, stream):
            if 0 in ids:  # batch 0 (shuffle=False)
                self.release.wait(10)
            with self.lock:
                self.built.append(int(ids[0]) // 2)
            return images

    store = from_arrays(np.zeros((64, 4, 4, 3), np.uint8), np.arange(64) % 2, tmp_path / "s.beton", progress=False)
    stuck = StuckFirst()
    it = iter(Loader(store, 2, threads=2, prefetch=2, shuffle=False, transforms=[stuck]))  # 32 batches
    result = []
    consumer = threading.Thread(target=lambda: result.append(next(it)))
    consumer.start()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and len(stuck.built) < 5:
        time.sleep(0.02)
    time.sleep(0.2)  # had the window not held, more would be built by now
    assert sorted(stuck.built) == [1, 2, 3, 4, 5]
    stuck.release.set()
    consumer.join(10)
    assert result[0].indices.tolist() == [0, 1]
    assert [b.indices[0].item() for b in it] == list(range(2, 64, 2))  # delivered in order


def test_batches_finishing_out_of_order_arrive_in_order_and_identical(tmp_path):
    """Random build times shuffle which producer builds which batch and when it finishes; the
    batches handed out are the same as with one thread."""
    import time

    from fastprune.loader.transforms import BatchTransform, RandomHorizontalFlip

    class Jitter(BatchTransform):
        def __call__(self, images, ids, stream):
            time.sleep(np.random.default_rng().uniform(0, 0.004))
            return images

    images = np.random.default_rng(0).integers(0, 256, (300, 6, 6, 3), dtype=np.uint8)
    store = from_arrays(images, np.arange(300) % 3, tmp_path / "s.beton", progress=False)
    runs = [[(b.indices.clone(), b.images.clone()) for b in
             Loader(store, 7, threads=threads, seed=3, transforms=[Jitter(), RandomHorizontalFlip()])]
            for threads in (1, 4)]
    assert len(runs[0]) == len(runs[1]) == 43
    for (ids1, im1), (ids4, im4) in zip(*runs):
        assert torch.equal(ids1, ids4) and torch.equal(im1, im4)


def test_a_transform_that_makes_a_new_array_hands_the_pinned_gather_buffer_back(tmp_path, monkeypatch):
    """GPU hand-off: a crop after the gather copies into a new pinned buffer; the gather's buffer
    must return to the pool, else every batch allocates pinned memory again (slow: cudaHostAlloc).
    Pinned allocation is stood in for by plain tensors."""
    from fastprune.loader._source import open_source
    from fastprune.loader.device import PinnedBuffers
    from fastprune.loader.loader import _BatchBuilder

    allocated = []
    monkeypatch.setattr(PinnedBuffers, "_allocate",
                        staticmethod(lambda shape: allocated.append(shape) or torch.empty(shape, dtype=torch.uint8)))
    store = from_arrays(np.zeros((16, 6, 6, 3), np.uint8), np.arange(16) % 2, tmp_path / "s.beton", progress=False)
    pool = PinnedBuffers(keep=8)
    builder = _BatchBuilder(open_source(store, None, None, threads=1), [RandomCrop(4, padding=0)],
                            [stream_key(0, 0, 0)], 0, pool)
    ids, weights = np.arange(4, dtype=np.int64), np.ones(4, np.float32)
    for _ in range(10):  # as DeviceFeed._issue: the copy done, the batch's buffer goes back
        batch = builder(ids, weights)
        assert batch.images.shape == (4, 4, 4, 3)
        pool.release(batch.images.numpy(), None)
    assert sorted(allocated) == [(4, 4, 4, 3), (4, 6, 6, 3)]


def test_a_store_with_two_image_fields_needs_image_field(tmp_path):
    """Picking the first of two image fields silently (a photo, or its mask?) would train on the wrong one."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)

    class Pairs(_Images):
        def __getitem__(self, i):
            return self.images[i], 255 - self.images[i], int(self.labels[i])

    path = fastprune.write_dataset(tmp_path / "two.beton", Pairs(images, np.arange(4) % 2),
                                   {"photo": RGBImageField(write_mode="raw"), "mask": RGBImageField(write_mode="raw"),
                                    "label": IntField()}, workers=1, progress=False)
    with pytest.raises(ValueError, match=r"two\.beton: image_field must be given: the store has 2 image fields"):
        Loader(path, 4)
    labels_only = fastprune.write_dataset(tmp_path / "labels.beton", [(0,), (1,)], {"label": IntField()}, workers=1,
                                          progress=False)
    with pytest.raises(ValueError, match=r"labels\.beton: the store holds no image field \(its fields: label\)"):
        Loader(labels_only, 4)  # it said 'image_field must be given', which cannot help
    batch = next(iter(Loader(path, 4, shuffle=False, image_field="mask")))
    np.testing.assert_array_equal(batch.images.numpy(), 255 - images)


def test_label_field_naming_the_image_field_is_refused_naming_label_field(tmp_path):
    store = from_arrays(np.zeros((8, 4, 4, 3), np.uint8), np.arange(8) % 2, tmp_path / "s.beton", progress=False)
    with pytest.raises(ValueError, match=r"label_field='image' is not an int, float or array field of this store"):
        Loader(store, 4, label_field="image")


@pytest.mark.parametrize("cuda_device", [1, None])
def test_producer_threads_make_the_loaders_gpu_their_current_device(tmp_path, monkeypatch, cuda_device):
    """A new thread's CUDA device is 0: a producer's pinning and its queries of a copy's event
    could make a context on GPU 0 for a rank training on GPU 1. Each producer sets the loader's
    device once, before its first batch; a CPU loader's producers set none, and a failure reaches
    the consumer as an error. (torch.cuda.set_device is stood in for: this machine has no GPU.)"""
    import threading

    from fastprune.loader._source import open_source
    from fastprune.loader.loader import _BatchBuilder, _EpochRun, batch_bounds

    calls, built = [], set()
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append((threading.current_thread().name, d)))

    class Recording(_BatchBuilder):
        def __call__(self, *args, **kwargs):
            name = threading.current_thread().name
            assert (name in dict(calls)) == (cuda_device is not None), "a batch built before the device was set"
            built.add(name)
            return super().__call__(*args, **kwargs)

    store = from_arrays(np.zeros((64, 4, 4, 3), np.uint8), np.arange(64) % 2, tmp_path / "s.beton", progress=False)
    builder = Recording(open_source(store, None, None, threads=1), [], [], 0)
    ids, weights = np.arange(64, dtype=np.int64), np.ones(64, np.float32)
    run = _EpochRun(builder, ids, weights, batch_bounds(64, 4), threads=3, prefetch=1, cuda_device=cuda_device)
    try:
        assert sum(len(batch.indices) for batch in run.batches()) == 64
    finally:
        run.close()
    if cuda_device is None:
        assert calls == []
        return
    assert sorted(calls) == [(name, 1) for name in sorted(built)]  # once in each producer that built a batch

    def broken(device):
        raise RuntimeError("CUDA error: invalid device ordinal")

    monkeypatch.setattr(torch.cuda, "set_device", broken)
    run = _EpochRun(_BatchBuilder(builder.source, [], [], 0), ids, weights, batch_bounds(64, 4), threads=2,
                    prefetch=1, cuda_device=7)
    try:
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            list(run.batches())
    finally:
        run.close()


def _mappings_of(path) -> int:
    with open("/proc/self/maps") as maps:  # which names files by their real paths
        return sum(os.path.realpath(path) in line for line in maps)


def _native_threads(expect: int | None = None) -> int:
    """This process's thread count; given ``expect``, once it settles there (a pass's producer
    threads end just after its last batch), or after 5 s."""
    deadline = time.monotonic() + 5
    while (count := len(os.listdir("/proc/self/task"))) != expect and expect is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc")
def test_a_closed_loader_keeps_no_threads_and_no_mapping_of_its_store(tmp_path):
    """close() closed the file only: the native gather's threads and its view of the mapping
    lived as long as the closed Loader (a sweep keeping each run's loader kept them all), and a
    pickled copy never closed the Store reopened for it."""
    labels = np.random.default_rng(0).random((16, 3)).astype(np.float32)  # array labels: a view of their own
    path = from_arrays(np.zeros((16, 4, 4, 3), np.uint8), labels, tmp_path / "s.beton", targets=True, progress=False)

    def closed_loaders():
        loader = Loader(path, 4, threads=3)
        for _ in loader:
            pass
        copy = pickle.loads(pickle.dumps(loader))
        assert _mappings_of(path) >= 2  # the count sees them while open
        loader.close()
        copy.close()
        return loader, copy

    kept = [closed_loaders()]  # the first pass starts threads of torch's and numba's that stay
    gc.collect()  # what only a collection frees (a whole suite's garbage) is not what is asked here
    threads_before = _native_threads()
    kept += [closed_loaders() for _ in range(3)]
    gc.collect()
    assert _native_threads(threads_before) == threads_before and _mappings_of(path) == 0  # the kept loaders hold none
    loader = kept[-1][0]
    assert loader.threads == 3 and pickle.loads(pickle.dumps(loader)).threads == 3  # settings kept for copies
    with pytest.raises(fastprune.StoreError, match="s.beton: the store is closed"):
        next(iter(loader))
    store = fastprune.Store(path)
    with Loader(store, 4, threads=3) as loader:
        for _ in loader:
            pass
        assert _native_threads(threads_before + 2) == threads_before + 2  # the gather's 2 workers ...
    assert _native_threads(threads_before) == threads_before  # ... closed with the loader, not with the store
    store.check_unchanged()  # a Store passed in stays open: its caller's
    with pytest.raises(fastprune.StoreError, match="s.beton: this Loader is closed"):
        next(iter(loader))
    with pytest.raises(fastprune.StoreError, match="s.beton: this Loader is closed"):  # its array labels too
        loader._source.labels[[0]]
    with Loader(store, 4) as again:  # and serves the next loader
        assert len(list(again)) == 4
    store.close()
