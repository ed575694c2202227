"""fastprune.Loader: epochs, lengths, determinism, shards, shutdown, errors."""

import gc
import os
import sys
import threading
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fastprune
from fastprune.loader import (Batch, CenterCrop, Cutout, Loader, Normalize, RandomCrop, RandomHorizontalFlip,
                              RandomResizedCrop)
from fastprune.loader.transforms import BatchTransform
from fastprune.store.fields import IntField, RGBImageField

N = 300


class _Images:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, N)


@pytest.fixture(scope="module")
def raw_store(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("stores") / "raw.beton"
    return fastprune.write_dataset(path, _Images(*data), {"image": RGBImageField(write_mode="raw"),
                                                          "label": IntField()}, workers=1, progress=False)


@pytest.fixture(scope="module")
def jpeg_store_mixed_sizes(tmp_path_factory):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (12 + i % 7, 20 - i % 5, 3), dtype=np.uint8) for i in range(40)]
    path = tmp_path_factory.mktemp("stores") / "jpeg.beton"
    return fastprune.write_dataset(path, _Images(images, np.arange(40) % 3),
                                   {"image": RGBImageField(write_mode="jpg"), "label": IntField()},
                                   workers=1, progress=False)


class ShrinkingSampler:
    """Test double of the pruning sampler contract: keeps N - 50 * epoch samples, weight 2."""

    num_samples = N

    def _ids(self, epoch):
        keep = ShrinkingSampler.num_selected(self, epoch)
        return np.random.default_rng(epoch).permutation(N)[:keep].astype(np.int64)

    def select(self, epoch):
        ids = self._ids(epoch)
        return SimpleNamespace(indices=ids, weights=np.full(len(ids), 2.0, np.float32))

    def num_selected(self, epoch):
        return max(N - 50 * epoch, 10)


def _pipeline():
    return [RandomCrop(padding=2), RandomHorizontalFlip(), Cutout(4), Normalize((0.5,) * 3, (0.2,) * 3)]


def _epoch(loader):
    return [b for b in loader]


def test_full_epoch_yields_every_sample_once_with_its_label(raw_store, data):
    images, labels = data
    loader = Loader(raw_store, 64, seed=1)
    batches = _epoch(loader)
    assert len(batches) == len(loader.__class__(raw_store, 64)) == 5
    ids = torch.cat([b.indices for b in batches]).numpy()
    assert sorted(ids) == list(range(N)) and not (ids == np.arange(N)).all()  # shuffled
    first = batches[0]
    assert isinstance(first, Batch) and first.images.dtype == torch.uint8 and first.images.shape == (64, 16, 16, 3)
    np.testing.assert_array_equal(first.images.numpy(), images[first.indices.numpy()])
    np.testing.assert_array_equal(first.labels.numpy(), labels[first.indices.numpy()])
    assert first.weights.dtype == torch.float32 and (first.weights == 1).all()
    assert loader.epoch == 1


def test_a_resized_crop_not_first_is_warned_about(raw_store):
    """A flip (or a transform of the user's) before RandomResizedCrop silently lost the fused crop:
    whole images decoded, then cropped in numba, 3-30x slower (a performance audit)."""
    from fastprune.errors import UsageWarning

    with pytest.warns(UsageWarning, match=r"transforms\[1\]: RandomResizedCrop after RandomHorizontalFlip runs on "
                                          "the whole decoded images; placed first, it is fused") as warned:
        Loader(raw_store, 8, threads=1, transforms=[RandomHorizontalFlip(), RandomResizedCrop(8)]).close()
    assert [w.filename for w in warned if w.category is UsageWarning] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Loader(raw_store, 8, threads=1, transforms=[RandomResizedCrop(8), RandomHorizontalFlip()]).close()
        Loader(raw_store, 8, threads=1, transforms=[RandomResizedCrop(12), CenterCrop(8)]).close()  # fused first
    with pytest.warns(UsageWarning) as warned:  # only the first crop loses the fused decode
        Loader(raw_store, 8, threads=1, transforms=[RandomHorizontalFlip(), RandomResizedCrop(12), CenterCrop(8)])
    assert [str(w.message)[:64] for w in warned if w.category is UsageWarning] == [
        "transforms[1]: RandomResizedCrop after RandomHorizontalFlip runs"]


def test_a_notebook_shows_batches_loaders_and_stores_in_a_line(raw_store):
    """A cell ending in a batch printed every value (160 lines for 64 images); closed stores and
    loaders looked open (a notebook audit)."""
    store = fastprune.Store(raw_store)
    loader = Loader(store, 8, threads=1, transforms=_pipeline())
    batch = next(iter(loader))
    assert repr(batch) == ("Batch(images=float32[8, 3, 16, 16], labels=int64[8], indices=int64[8], "
                           "weights=float32[8])")
    assert repr(batch._replace(labels=None)).startswith("Batch(images=float32[8, 3, 16, 16], labels=None, ")
    assert "closed" not in repr(loader) and "closed" not in repr(store)
    loader.close()
    assert repr(loader).endswith(", closed)") and "closed" not in repr(store)  # a Store passed in stays open
    store.close()
    assert repr(store).endswith(", closed)")


def test_len_follows_the_sampler_when_the_subset_changes(raw_store):
    loader = Loader(raw_store, 64, sampler=ShrinkingSampler())
    for epoch in range(4):
        expected = -(-ShrinkingSampler().num_selected(epoch) // 64)
        assert len(loader) == expected
        batches = _epoch(loader)
        assert len(batches) == expected
        ids = torch.cat([b.indices for b in batches]).numpy()
        assert sorted(ids) == sorted(ShrinkingSampler()._ids(epoch))
        assert all((b.weights == 2).all() for b in batches)
    assert loader.epoch == 4
    assert loader.steps_for_epochs(0, 4) == sum(-(-ShrinkingSampler().num_selected(e) // 64) for e in range(4))
    loader.set_epoch(1)
    assert len(loader) == 4  # 250 samples


def test_drop_last(raw_store):
    loader = Loader(raw_store, 64, drop_last=True, sampler=ShrinkingSampler())
    assert len(loader) == N // 64
    assert all(len(b.indices) == 64 for b in _epoch(loader))


def test_even_batches_split_every_sample_into_near_equal_batches(raw_store):
    # ShrinkingSampler epochs hold 300, 250, 200, 150 samples: with batches of 64 the plain split
    # leaves remainders of 44, 58, 8 and 22 samples.
    plain = Loader(raw_store, 64, sampler=ShrinkingSampler(), seed=3)
    even = Loader(raw_store, 64, sampler=ShrinkingSampler(), seed=3, even_batches=True)
    for epoch in range(4):
        selected = ShrinkingSampler().num_selected(epoch)
        assert len(even) == len(plain) == -(-selected // 64)
        plain_batches, even_batches = _epoch(plain), _epoch(even)
        sizes = [len(b.indices) for b in even_batches]
        assert len(sizes) == len(plain_batches) and sum(sizes) == selected
        assert max(sizes) <= 64 and max(sizes) - min(sizes) <= 1
        # the same samples in the same order, only cut at other places
        assert torch.equal(torch.cat([b.indices for b in even_batches]), torch.cat([b.indices for b in plain_batches]))
    assert even.steps_for_epochs(0, 4) == plain.steps_for_epochs(0, 4)
    with pytest.raises(ValueError, match="drop_last and even_batches"):
        Loader(raw_store, 64, drop_last=True, even_batches=True)


def test_batch_bounds_match_a_slow_split():
    from fastprune.loader.loader import batch_bounds

    for n in (0, 1, 7, 64, 65, 300, 42_000):
        for size in (1, 8, 64, 512):
            plain, even = batch_bounds(n, size), batch_bounds(n, size, even=True)
            expected = [min(k * size, n) for k in range(-(-n // size) + 1)]
            assert plain.tolist() == expected
            sizes = np.diff(even)
            assert len(sizes) == len(expected) - 1 and sizes.sum() == n and even[0] == 0
            if n:
                assert sizes.max() <= size and sizes.max() - sizes.min() <= 1


def test_same_seed_same_epoch_bit_identical_across_thread_counts(raw_store):
    runs = []
    for threads in (1, 2, 3):
        loader = Loader(raw_store, 50, transforms=_pipeline(), seed=7, threads=threads)
        loader.set_epoch(2)
        runs.append(_epoch(loader))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    loader = Loader(raw_store, 50, transforms=_pipeline(), seed=7)
    loader.set_epoch(3)
    assert not torch.equal(_epoch(loader)[0].indices, runs[0][0].indices)


def test_augmentation_matches_transforms_applied_by_hand(raw_store, data):
    from fastprune.loader.transforms import stream_key

    images, _ = data
    loader = Loader(raw_store, 40, transforms=_pipeline(), seed=5, shuffle=False)
    batch = _epoch(loader)[1]
    ids = batch.indices.numpy()
    x = images[ids].copy()
    for salt, transform in enumerate(_pipeline()):
        x = transform(x, ids, stream_key(5, 0, salt))
    assert torch.equal(batch.images, x)


class _UnfusedFlip(RandomHorizontalFlip):
    """A subclass is not fused into the gather: the numba flip pass, the reference."""


@pytest.mark.parametrize("store, head", [
    ("raw_store", []),
    ("raw_store", [RandomResizedCrop(12)]),
    ("raw_store", [CenterCrop(16, ratio=1.0)]),  # a pure crop: copied, not resampled
    ("jpeg_store_mixed_sizes", [RandomResizedCrop((9, 13))]),
], ids=["raw", "raw-rrc", "raw-copy", "jpeg-rrc"])
def test_fused_flip_gives_the_bytes_of_the_flip_pass(request, store, head):
    """A flip right after the gather (first, or after a first resized crop) is done by the
    native gather as it writes: same batches as the separate numba pass."""
    path = request.getfixturevalue(store)
    fused, unfused = (Loader(path, 16, seed=3, threads=2, transforms=head + [flip(p=0.5), Cutout(3)])
                      for flip in (RandomHorizontalFlip, _UnfusedFlip))
    assert fused._batch_builder(0).fused == len(head) + 1 and unfused._batch_builder(0).fused == len(head)
    for epoch in (0, 1):
        fused.set_epoch(epoch), unfused.set_epoch(epoch)
        pairs = list(zip(fused, unfused))
        assert pairs and all(torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices) for a, b in pairs)


def test_default_threads_follow_the_store_kind(raw_store, jpeg_store_mixed_sizes, monkeypatch):
    """Every usable CPU for JPEGs; at most 4 for raw pixels (cheap batches: more threads only
    contend); an explicit count is kept."""
    from fastprune.loader import _source

    monkeypatch.setattr(_source, "rank_cpus", lambda: 16)
    assert Loader(raw_store, 64).threads == 4
    assert Loader(jpeg_store_mixed_sizes, 8, transforms=[RandomResizedCrop(8)]).threads == 16
    assert Loader(raw_store, 64, threads=9).threads == 9
    monkeypatch.setattr(_source, "rank_cpus", lambda: 2)
    assert Loader(raw_store, 64).threads == 2 and Loader(raw_store, 64)._source.gather.threads == 2


def _epoch_in_child(loader, results):
    results.put([(b.indices.tolist(), b.images.sum().item()) for b in loader])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_loader_made_before_a_fork_iterates_in_the_child(jpeg_store_mixed_sizes):
    """The native pool's workers are not copied into a forked child: there its gathers run on the
    calling thread (they would wait forever for workers), with the same batches."""
    import multiprocessing

    loader = Loader(jpeg_store_mixed_sizes, 8, threads=3, seed=4, transforms=[RandomResizedCrop(10)])
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_epoch_in_child, args=(loader, results))
    child.start()
    try:
        got = results.get(timeout=60)
        child.join(timeout=60)
    finally:
        if child.is_alive():  # hung: do not leave it behind
            child.kill()
    assert child.exitcode == 0
    assert got == [(b.indices.tolist(), b.images.sum().item()) for b in loader]


_FORK_THEN_EXIT = """
import gc, os, sys, fastprune
loader = fastprune.Loader(sys.argv[1], 8, threads=3)
if sys.argv[2] == "iterate":
    for batch in loader:
        pass
pid = os.fork()
if pid == 0:
    if sys.argv[3] == "del":
        del loader
        gc.collect()
    sys.exit(0)  # a normal exit: the interpreter's finalization destroys what is left
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("before, end", [("construct", "exit"), ("iterate", "del")])
def test_a_forked_child_that_drops_its_loader_or_exits_does_not_hang(raw_store, before, end):
    """The child's copy of the native pool destroyed condition variables the parent's sleeping
    workers were counted as waiting on: glibc's pthread_cond_destroy waited for them forever (a
    DataLoader worker_init_fn replacing an inherited Loader hung the whole job). A multiprocessing
    child (os._exit) never ran that destructor."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _FORK_THEN_EXIT, str(raw_store), before, end], timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "leaked" not in done.stderr, done.stderr


def test_a_half_read_pass_at_an_uncaught_exit_prints_nothing_more(raw_store):
    """The atexit hook closed a half-read pass, then its generator closed it again during module
    teardown, where `queue` was None: 'Exception ignored ... TypeError: catching classes that do
    not inherit from BaseException' followed the user's own error."""
    import subprocess

    script = ("import sys, fastprune, fastprune.convert\n"  # the converters' imports change the teardown order
              "loader = fastprune.Loader(sys.argv[1], 8, threads=2)\nbatches = iter(loader)\n"
              "first = next(batches)\nraise SystemExit('stopping here')\n")
    done = subprocess.run([sys.executable, "-c", script, str(raw_store)], timeout=120, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip() == "stopping here", done.stderr


def test_a_daemon_thread_still_prefetching_at_exit_raises_no_false_leak_alarm(raw_store):
    """A daemon thread's frames are never freed at exit, so the Loader it holds is not either:
    nanobind printed 'leaked 1 instances ... likely caused by a reference counting issue in the
    binding code', inviting bug reports for a clean exit."""
    import subprocess

    script = ("import queue, sys, threading, fastprune\nloader = fastprune.Loader(sys.argv[1], 8, threads=2)\n"
              "ready = queue.Queue(maxsize=2)\n"
              "def prefetch():\n    while True:\n        for batch in loader:\n            ready.put(batch)\n"
              "threading.Thread(target=prefetch, daemon=True).start()\nready.get()\n")
    done = subprocess.run([sys.executable, "-c", script, str(raw_store)], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0 and "leaked" not in done.stderr, done.stderr


def test_a_daemon_thread_waiting_for_a_batch_at_exit_ends_without_an_error_traceback(raw_store):
    """Exit stops and joins the producers; a daemon thread of the user's still iterating then found
    them gone and printed "RuntimeError: fastprune loader threads stopped without delivering a
    batch" as the script ended, a false report of a loader failure. It now waits for the end."""
    import subprocess

    script = ("import atexit, sys, threading, time\n"
              "atexit.register(time.sleep, 0.5)  # runs after fastprune's exit hook: the thread runs meanwhile\n"
              "import fastprune\nfrom fastprune.loader.transforms import BatchTransform\n"
              "class Slow(BatchTransform):\n    def __call__(self, images, ids, stream):\n"
              "        time.sleep(0.1)\n        return images\n"
              "loader = fastprune.Loader(sys.argv[1], 8, threads=1, transforms=[Slow()])\n"
              "def consume():\n    while True:\n        for batch in loader:\n            pass\n"
              "threading.Thread(target=consume, daemon=True).start()\ntime.sleep(0.3)\n")
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script, str(raw_store)], timeout=120, capture_output=True,
                              text=True)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr[-2000:]


class _RecordPriority(BatchTransform):
    def __init__(self):
        self.seen = set()

    def __call__(self, images, ids, stream):
        self.seen.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return images


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_producer_threads_run_thread_nice_steps_below_the_caller(raw_store):
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if base > 14:
        pytest.skip(f"this process already runs at nice {base}")
    for nice, expected in ((5, base + 5), (0, base), ("auto", base)):  # auto on the CPU: 0
        record = _RecordPriority()
        loader = Loader(raw_store, 64, threads=2, thread_nice=nice, transforms=[record])
        _epoch(loader)
        assert record.seen == {expected}, nice
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller's is untouched
    from fastprune.loader.loader import _check_thread_nice
    assert _check_thread_nice("auto", torch.device("cuda")) == 10
    for bad in (-1, 20, 2.0, True, "low"):
        with pytest.raises(ValueError, match="thread_nice must be"):
            Loader(raw_store, 64, thread_nice=bad)


def test_distributed_shards_are_disjoint_equal_and_cover_the_selection(raw_store):
    shards = []
    for rank in range(3):
        loader = Loader(raw_store, 32, sampler=ShrinkingSampler(), distributed=(rank, 3), seed=2)
        loader.set_epoch(1)  # 250 selected -> 83 per rank
        assert len(loader) == 3
        shards.append(torch.cat([b.indices for b in _epoch(loader)]).numpy())
    assert [len(s) for s in shards] == [83] * 3
    union = np.concatenate(shards)
    assert len(np.unique(union)) == 249 and set(union) <= set(ShrinkingSampler()._ids(1))
    with pytest.raises(ValueError, match="rank"):
        Loader(raw_store, 32, distributed=(3, 3))


def test_breaking_out_and_gc_leave_no_threads(raw_store):
    baseline = threading.active_count()
    loader = Loader(raw_store, 10, transforms=_pipeline(), threads=2, prefetch=2)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert threading.active_count() == baseline
    assert loader.epoch == 0  # an interrupted pass does not advance the epoch
    it = iter(loader)
    next(it)
    del it, loader
    gc.collect()
    assert threading.active_count() == baseline
    assert len(_epoch(Loader(raw_store, 100))) == 3  # starts cleanly again


class _Boom(BatchTransform):
    def __call__(self, images, ids, stream):
        if 123 in ids:
            raise ZeroDivisionError("boom in a user transform")
        return images


def test_exception_in_a_transform_reaches_the_caller_with_context(raw_store):
    baseline = threading.active_count()
    loader = Loader(raw_store, 20, transforms=[_Boom()], shuffle=False, threads=2)
    with pytest.raises(ZeroDivisionError, match="boom") as info:
        _epoch(loader)
    assert any("batch 6 of epoch 0" in note for note in getattr(info.value, "__notes__", []))
    assert threading.active_count() == baseline
    assert loader.epoch == 0


class _Returns(BatchTransform):
    def __init__(self, make):
        self.make = make

    def __call__(self, images, ids, stream):
        return self.make(images)

    def __repr__(self):
        return "Returns()"


@pytest.mark.parametrize("make, got", [
    (lambda images: None, "returned NoneType"),                             # forgot to return
    (lambda images: images[1:], r"returned ndarray uint8 \(19, 16, 16, 3\)"),  # dropped a row
    (lambda images: images.astype(np.float32), "returned ndarray float32"),  # before Normalize: numba's 20 lines
    (lambda images: torch.from_numpy(images), "returned Tensor"),            # a tensor, not last
])
def test_what_a_transform_returns_is_checked_in_one_line(raw_store, make, got):
    """A transform that forgot to return gave Batch.images None; one that dropped a row gave 19
    images with 20 labels; a float array reached Normalize as a 20-line numba typing error (loader
    audit). Each is one line naming the transform."""
    loader = Loader(raw_store, 20, transforms=[_Returns(make), Normalize()], shuffle=False, threads=1)
    with pytest.raises(TypeError, match=f"Returns\\(\\) {got}.*uint8 \\[B, H, W, 3\\]"):
        next(iter(loader))
    last = Loader(raw_store, 20, transforms=[_Returns(lambda images: torch.from_numpy(images).float())],
                  shuffle=False, threads=1)
    assert next(iter(last)).images.dtype == torch.float32  # a tensor from the last transform is fine


def test_mixed_size_jpegs_need_a_resized_crop(jpeg_store_mixed_sizes):
    with pytest.raises(ValueError, match="RandomResizedCrop or CenterCrop first"):
        Loader(jpeg_store_mixed_sizes, 8)
    loader = Loader(jpeg_store_mixed_sizes, 8, transforms=[RandomResizedCrop(10), RandomHorizontalFlip(),
                                                           Normalize(dtype=torch.bfloat16)])
    batches = _epoch(loader)
    assert [tuple(b.images.shape) for b in batches] == [(8, 3, 10, 10)] * 5
    assert batches[0].images.dtype == torch.bfloat16
    assert float(torch.cat([b.images.float() for b in batches]).std()) > 0.1


def test_device_handling(raw_store):
    batch = next(iter(Loader(raw_store, 8, device="cpu")))
    assert batch.images.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):  # a ConfigError, as elsewhere
            Loader(raw_store, 8, device="cuda")
    else:  # pinned memory + non_blocking copy path
        batch = next(iter(Loader(raw_store, 8, device="cuda", transforms=[Normalize()])))
        assert batch.images.is_cuda and batch.labels.is_cuda


@pytest.mark.parametrize("pipeline", [
    lambda: [RandomCrop(padding=2), RandomHorizontalFlip(), Normalize((0.5,) * 3, (0.2,) * 3)],
    lambda: [RandomHorizontalFlip(), Normalize((0.3, 0.4, 0.5), (0.2, 0.3, 0.4), dtype=torch.bfloat16,
                                              channels_last=True)],
    lambda: [RandomResizedCrop(10), Normalize(dtype=torch.float16)],   # fused into the gather
    lambda: [RandomHorizontalFlip()],                                   # uint8 batches
], ids=["crop-flip-f32", "flip-bf16-channels-last", "fused-crop-f16", "uint8"])
def test_normalize_on_the_device_gives_the_host_path_values(raw_store, pipeline):
    """The GPU hand-off (uint8 out of the producers, Normalize after the copy) run on CPU: every
    batch equals the host path's, bit for bit, in order, with the same layout."""
    def run(where):
        loader = Loader(raw_store, 37, sampler=ShrinkingSampler(), transforms=pipeline(), seed=4, threads=2,
                        prefetch=2, normalize_on=where)
        return [_epoch(loader) for _ in range(2)]

    host, device = run("host"), run("device")
    for epoch_host, epoch_device in zip(host, device):
        assert len(epoch_host) == len(epoch_device) > 2
        for a, b in zip(epoch_host, epoch_device):
            assert a.images.dtype == b.images.dtype and a.images.shape == b.images.shape
            assert a.images.stride() == b.images.stride()
            assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
            assert torch.equal(a.labels, b.labels) and torch.equal(a.weights, b.weights)


@pytest.mark.parametrize("where", ["host", "device"])
def test_a_failing_batch_is_raised_after_every_batch_before_it(raw_store, where):
    """The device hand-off reads ``prefetch`` batches ahead: batch 3's error was raised before
    batches 1 and 2 were handed out. Both paths hand out 0, 1, 2, then raise, naming batch 3."""
    from fastprune.loader.transforms import BatchTransform

    class FailOnFourth(BatchTransform):
        def __call__(self, images, ids, stream):
            if 60 in ids:  # batch 3 of batches of 20, unshuffled
                raise ValueError("bad sample")
            return images

    loader = Loader(raw_store, 20, shuffle=False, transforms=[FailOnFourth(), Normalize((0.5,) * 3, (0.2,) * 3)],
                    threads=2, prefetch=2, normalize_on=where)
    received = []
    with pytest.raises(ValueError, match="bad sample") as raised:
        for batch in loader:
            received.append(batch.indices[0].item())
    assert received == [0, 20, 40]
    assert any("building batch 3 of epoch 0" in note for note in raised.value.__notes__)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CPU twin above runs everywhere)")
def test_cuda_hand_off_copies_uint8_and_matches_the_host_path(raw_store):
    pipeline = [RandomCrop(padding=2), RandomHorizontalFlip(), Normalize((0.5,) * 3, (0.2,) * 3, channels_last=True)]
    host = _epoch(Loader(raw_store, 32, transforms=pipeline, seed=2, device="cpu"))
    gpu = Loader(raw_store, 32, transforms=pipeline, seed=2, device="cuda", prefetch=3)
    assert gpu.normalize_on == "device"
    for _ in range(2):  # the second epoch reuses the pinned buffers of the first
        batches = _epoch(gpu)
        gpu.set_epoch(0)
        for a, b in zip(host, batches):
            assert b.images.is_cuda and b.images.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(a.images, b.images.cpu()) and torch.equal(a.labels, b.labels.cpu())


def test_bad_arguments_name_the_argument(raw_store):
    with pytest.raises(ValueError, match="batch_size"):
        Loader(raw_store, 0)
    with pytest.raises(ValueError, match="threads"):
        Loader(raw_store, 8, threads=0)
    with pytest.raises(ValueError, match="image_field='label'"):
        Loader(raw_store, 8, image_field="label")
    with pytest.raises(ValueError, match="normalize_on must be"):
        Loader(raw_store, 8, normalize_on="gpu")
    with pytest.raises(ValueError, match="Normalize must be the last"):
        Loader(raw_store, 8, transforms=[Normalize(), RandomHorizontalFlip()])
    with pytest.raises(FileNotFoundError) as missing:  # names the path given, not the parameter
        Loader("/nonexistent/x.beton", 8)
    assert str(missing.value) == "/nonexistent/x.beton: no such store file"
    assert missing.value.filename == "/nonexistent/x.beton" and isinstance(missing.value, fastprune.StoreError)
    with pytest.raises(TypeError, match="^the store must be a fastprune.Store or a file path, got dict"):
        Loader({"image": []}, 8)

    class Liar(ShrinkingSampler):
        def num_selected(self, epoch):
            return super().num_selected(epoch) - 1  # one less than select() returns

    with pytest.raises(ValueError, match="num_selected"):
        _epoch(Loader(raw_store, 8, sampler=Liar()))

    for bad in (np.nan, -1.0, np.inf):  # they reached every weighted loss silently (loader audit)
        class BadWeight(ShrinkingSampler):
            def select(self, epoch, bad=bad):
                selection = super().select(epoch)
                selection.weights[7] = bad
                return selection

        with pytest.raises(ValueError, match=rf"gave sample \d+ the weight {bad} \(1 weights are NaN, negative"):
            _epoch(Loader(raw_store, 8, sampler=BadWeight()))


@pytest.mark.ffcv
def test_reads_a_file_written_by_ffcv(tmp_path, data):
    ffcv_writer = pytest.importorskip("ffcv.writer")
    from ffcv.fields import IntField as FfcvInt
    from ffcv.fields import RGBImageField as FfcvRGB

    images, labels = data
    path = str(tmp_path / "ffcv.beton")
    ffcv_writer.DatasetWriter(path, {"image": FfcvRGB(write_mode="raw"), "label": FfcvInt()},
                              num_workers=1).from_indexed_dataset(_Images(images[:50], labels[:50]))
    batch = next(iter(Loader(path, 50, shuffle=False)))
    np.testing.assert_array_equal(batch.images.numpy(), images[:50])
    np.testing.assert_array_equal(batch.labels.numpy(), labels[:50])


def test_fields_named_like_metadata_columns_are_found_by_position(tmp_path, data):
    """The metadata table's columns are f0, f1, ... in field order, whatever the fields' names:
    an image field named "f1" stored first is column f0."""
    images, labels = data
    path = fastprune.write_dataset(tmp_path / "f.beton", _Images(images[:20], labels[:20]),
                                   {"f1": RGBImageField(), "f0": IntField()}, workers=1, progress=False)
    batch = next(iter(Loader(path, 20, shuffle=False)))
    np.testing.assert_array_equal(batch.images.numpy(), images[:20])
    np.testing.assert_array_equal(batch.labels.numpy(), labels[:20])


def test_host_normalize_reuses_every_output_array_after_the_first_epoch(raw_store):
    """Host Normalize's output arrays are recycled once nothing uses them. Each Loader's copy of
    the Normalize has its own pool, as large as the loader can hold at once (threads x (prefetch +
    1) started ahead, plus those in use), which keeps its arrays across an epoch's short last
    batch and across the validation loader sharing the Normalize. With one pool of 8 whatever the
    loader, every full-size array dropped when the short one came, batches kept coming fresh."""
    import time

    from fastprune.loader import transforms as transforms_module

    fresh = []

    class Counting(transforms_module._RecycledBuffers):
        def take(self, shape, dtype):
            with self._lock:
                kept = [id(a) for a in self._arrays]
            array = super().take(shape, dtype)
            fresh.append(id(array) not in kept)
            return array

    normalize = Normalize((0.5,) * 3, (0.2,) * 3)
    train = Loader(raw_store, 23, transforms=[RandomCrop(padding=2), normalize], threads=4, prefetch=2)
    val = Loader(raw_store, 100, transforms=[normalize], threads=2, shuffle=False)  # as make_loaders shares it
    for loader in (train, val):
        assert loader.transforms[-1] is not normalize and loader.transforms[-1].mean == normalize.mean
        loader.transforms[-1]._buffers = Counting(keep=loader.transforms[-1]._buffers._keep)
    assert train.transforms[-1]._buffers._keep == 4 * 3 + 3
    for epoch in range(3):  # 14 batches of 23 (the last of 2), then 3 of 100
        fresh.clear()
        for batch in train:
            time.sleep(0.01)  # a consumer slower than the producers: they fill their 12 batches ahead
        for batch in val:
            time.sleep(0.01)  # (every epoch at its peak from the first: no later one can need more)
        assert len(fresh) == 17
        if epoch > 0:
            assert not any(fresh), f"epoch {epoch}: {sum(fresh)} of 17 output arrays allocated afresh"


def test_pinned_buffers_are_reused_only_after_their_copy_completed(monkeypatch):
    from fastprune.loader.device import PinnedBuffers

    class Event:
        def __init__(self, done):
            self.done = done

        def query(self):
            return self.done

    monkeypatch.setattr(PinnedBuffers, "_allocate", staticmethod(lambda shape: torch.empty(shape, dtype=torch.uint8)))
    pool = PinnedBuffers()
    a, b = pool.take((2, 4, 4, 3)), pool.take((2, 4, 4, 3))
    assert a.ctypes.data != b.ctypes.data
    pending = Event(False)
    pool.release(a, pending)
    assert pool.take((2, 4, 4, 3)).ctypes.data != a.ctypes.data     # its copy may still be reading it
    pending.done = True
    assert pool.take((2, 4, 4, 3)).ctypes.data == a.ctypes.data     # copy done: recycled
    pool.release(b, None)
    assert pool.take((3, 4, 4, 3)).shape == (3, 4, 4, 3)            # another shape: a new buffer


def test_pinned_buffers_of_alternating_shapes_are_all_reused(monkeypatch):
    """even_batches alternates batch sizes n and n + 1, and an epoch ends on a short batch: the
    pool dropped every buffer of another shape on each release, so nearly every batch allocated
    pinned memory again (40 allocations for 48 batches)."""
    from fastprune.loader.device import PinnedBuffers

    allocated = []

    def allocate(shape):
        allocated.append(shape)
        return torch.empty(shape, dtype=torch.uint8)

    monkeypatch.setattr(PinnedBuffers, "_allocate", staticmethod(allocate))
    pool = PinnedBuffers(keep=4)
    for epoch in range(4):
        for size in (8, 9) * 3 + (2,):  # in flight: one at a time
            pool.release(pool.take((size, 4, 4, 3)), None)
    assert sorted(allocated) == [(2, 4, 4, 3), (8, 4, 4, 3), (9, 4, 4, 3)]
    for _ in range(6):  # past keep: the oldest go, the pool stays bounded
        pool.release(np.empty((1, 4, 4, 3), np.uint8), None)
    assert len(pool._free) == 4


def test_recycled_pinned_buffers_do_not_chain_wrappers(monkeypatch):
    """The CUDA loader's cycle (take -> torch.from_numpy -> .numpy() -> release): release kept a new
    torch.from_numpy of the array it got back, whose base was the previous wrapper, so every batch
    added a link that nothing freed (130 MB of host memory per 100k batches; CUDA-path audit).
    Now the pool keeps the tensor it allocated, and wrappers die with their batch."""
    import gc
    import weakref

    from fastprune.loader.device import PinnedBuffers

    monkeypatch.setattr(PinnedBuffers, "_allocate", staticmethod(lambda shape: torch.empty(shape, dtype=torch.uint8)))
    pool = PinnedBuffers(keep=1)
    shape = (4, 8, 8, 3)
    first = pool.take(shape)
    allocated = pool._taken[first.ctypes.data][1]
    images = torch.from_numpy(first)  # the producer's batch tensor
    wrappers = [weakref.ref(images)]
    del first
    for _ in range(50):
        pool.release(images.numpy(), None)  # DeviceFeed._issue
        del images
        images = torch.from_numpy(pool.take(shape))
        wrappers.append(weakref.ref(images))
    gc.collect()
    assert pool._taken[images.numpy().ctypes.data][1] is allocated  # one buffer, always the same tensor
    assert sum(ref() is not None for ref in wrappers) == 1  # only the batch in hand is alive
    del images, allocated  # abandoned, never released: its entry goes at the next take
    gc.collect()
    pool.take((1, 8, 8, 3))
    assert len(pool._taken) == 1 and len(pool._free) == 0


def test_a_loader_copies_on_one_cuda_stream_across_epochs_and_checks_the_device_index(monkeypatch, tmp_path):
    """A new side stream each epoch left each epoch's batch memory cached on a stream no later
    epoch allocates on; Loader(device="cuda:5") on a 1-GPU machine failed only at the first batch.
    (CUDA pretended: the stream is any object, never used here.)"""
    import pickle

    from fastprune.convert import from_arrays

    store = from_arrays(np.zeros((8, 4, 4, 3), np.uint8), np.arange(8) % 2, tmp_path / "s.beton", progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device 'cuda:5': this machine has 1 CUDA device\(s\) \(cuda:0..cuda:0\)"):
        Loader(store, 4, device="cuda:5")
    # a plain "cuda" (or "auto") stays the current device, as torch's .to("cuda"): a Loader built
    # before torch.cuda.set_device(rank) must not pin cuda:0
    assert Loader(store, 4, device="cuda").device == Loader(store, 4, device="auto").device == torch.device("cuda")
    made = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: made.append(device) or object())
    loader = Loader(store, 4, device="cuda:0")
    stream = loader._side_stream()
    assert loader._side_stream() is stream and made == [torch.device("cuda:0")]
    assert pickle.loads(pickle.dumps(loader))._stream is None  # a stream is this process's own


def test_the_epoch_advances_when_its_last_batch_is_handed_out(tmp_path):
    """Lightning (and zip(range(len(loader)), loader)) stop after len() batches without asking for
    one more: the loader's epoch once stayed put, and every epoch repeated epoch 0's selection."""
    import fastprune
    from fastprune.convert import from_arrays

    store = from_arrays(np.zeros((40, 4, 4, 3), np.uint8), np.arange(40) % 2, tmp_path / "s.beton", progress=False)
    strategy = fastprune.UniformRandom(40, keep=0.5, seed=0)
    loader = fastprune.Loader(store, 8, sampler=strategy, seed=0)
    firsts = []
    for epoch in range(3):
        batches = [batch for _, batch in zip(range(len(loader)), loader)]  # never asks for a 4th
        assert loader.epoch == epoch + 1
        firsts.append(sorted(torch.cat([b.indices for b in batches]).tolist()))
        assert firsts[-1] == sorted(strategy.select(epoch).indices.tolist())
    assert firsts[0] != firsts[1] != firsts[2]
    for batch in loader:  # left before its last batch: the same epoch runs again
        break
    assert loader.epoch == 3


def test_set_epoch_during_a_pass_is_kept(tmp_path):
    """A pass that finished moved the epoch to its own + 1 whatever set_epoch() said meanwhile:
    set_epoch(5) after epoch 0's first batch left epoch 1 (loader audit; PrunedSampler keeps 5)."""
    import fastprune
    from fastprune.convert import from_arrays

    store = from_arrays(np.zeros((40, 4, 4, 3), np.uint8), np.arange(40) % 2, tmp_path / "s.beton", progress=False)
    loader = fastprune.Loader(store, 8, seed=0)
    for number, _ in enumerate(loader):
        if number == 0:
            loader.set_epoch(5)
    assert loader.epoch == 5
    list(loader)  # a pass without set_epoch still advances
    assert loader.epoch == 6
    one_batch = fastprune.Loader(store, 64, seed=0)  # an epoch of one batch advances when it starts
    for _ in one_batch:
        one_batch.set_epoch(3)
    assert one_batch.epoch == 3


def test_the_device_feed_hands_out_an_epochs_first_batch_after_one_host_batch():
    """The feed waited for prefetch + 1 host batches before the first step of every epoch; copies
    in flight now ramp up (batch k leaves once batch k + min(k, prefetch) is issued)."""
    from fastprune.loader.device import DeviceFeed
    from fastprune.loader.loader import Batch

    pulled = []

    def host_batches():
        for k in range(8):
            pulled.append(k)
            yield Batch(torch.full((1, 2, 2, 3), k, dtype=torch.uint8), torch.tensor([k]), torch.tensor([k]),
                        torch.ones(1))

    seen = []
    for batch in DeviceFeed(torch.device("cpu"), None, ahead=2, pinned=None).run(host_batches()):
        seen.append((int(batch.indices), len(pulled)))
    assert seen == [(0, 1), (1, 3), (2, 5), (3, 6), (4, 7), (5, 8), (6, 8), (7, 8)]


def test_a_cuda_feed_hands_out_a_batch_after_its_copy_and_keeps_its_memory_for_the_consumer(monkeypatch):
    """On CUDA the copies run on a side stream. Before a batch is handed out, the consuming stream
    must wait for the event recorded after its copy (else the step reads a half-copied batch), and
    each tensor must be recorded on that stream (else the caching allocator reuses its memory while
    the step still reads it). Checked with stand-ins for torch.cuda's streams and events, so the
    ordering is tested without a GPU (the mutation audit found dropping the wait passed the suite)."""
    import contextlib

    from fastprune.loader.device import DeviceFeed
    from fastprune.loader.loader import Batch

    recorded, waited, kept = [], [], []

    class Event:
        def record(self, stream):
            recorded.append((self, stream))

    class Consumer:
        def wait_event(self, event):
            waited.append(event)

    consumer = Consumer()

    class Part:
        def __init__(self, k):
            self.k = k

        def to(self, device, non_blocking):
            assert non_blocking
            return self

        def record_stream(self, stream):
            kept.append((self.k, stream))

    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: consumer)
    feed = DeviceFeed(torch.device("cuda"), None, ahead=2, pinned=None, stream="side stream")
    for k, batch in enumerate(feed.run(Batch(Part(i), Part(i), Part(i), None) for i in range(5))):
        assert batch.images.k == k
        assert waited[-1] is recorded[k][0] and recorded[k][1] == "side stream" and len(waited) == k + 1
        assert kept[-3:] == [(k, consumer)] * 3  # images, labels, indices; no weights


def test_producer_threads_that_cannot_start_raise_and_leave_nothing_running(raw_store, monkeypatch):
    """"can't start new thread" for the 2nd producer (a container's limit): the 1st kept decoding,
    and at exit closing the run raised "cannot join thread before it is started"."""
    import threading

    from fastprune.loader import loader as loader_module

    real_start, started = threading.Thread.start, []

    def start(thread):
        if thread.name.startswith("fastprune-loader-") and started:
            raise RuntimeError("can't start new thread")
        started.append(thread)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    loader = Loader(raw_store, 100, threads=3)
    with pytest.raises(RuntimeError, match=r"Loader: cannot start 3 producer threads \(can't start new thread\); "
                                           r"ask for fewer"):
        next(iter(loader))
    assert not started[0].is_alive()
    loader_module._close_live_runs()  # what runs at exit: no error
    monkeypatch.undo()
    assert sum(len(batch[1]) for batch in loader) == loader.num_samples


def _regression_store(path, n=64):
    from fastprune.store import FloatField, RGBImageField

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), np.uint8)
    targets = rng.normal(0, 1, n) * 3

    class Source:
        def __len__(self):
            return n

        def __getitem__(self, i):
            return images[i], float(targets[i])

    fastprune.write_dataset(path, Source(), {"image": RGBImageField(), "target": FloatField()},
                            workers=1, progress=False)
    return targets


def test_a_float_label_field_arrives_as_stored_not_cut_to_integers(tmp_path):
    """A regression target named as label_field was cast to int64: 2.395 became 2, every target in
    [0, 1) became 0, and a model trained on them reported perfect metrics."""
    targets = _regression_store(tmp_path / "reg.beton")
    batch = next(iter(fastprune.Loader(tmp_path / "reg.beton", 64, shuffle=False, label_field="target")))
    assert batch.labels.dtype.is_floating_point
    assert np.array_equal(batch.labels.numpy(), targets[batch.indices.numpy()])


def test_fit_refuses_a_float_label_field_before_training(tmp_path):
    """fit classifies (argmax accuracy, cross-entropy val_loss): on float targets it trained and
    reported val_acc 100.0 for targets cut to 0; now it says what it is for, in one line."""
    from fastprune.errors import ConfigError
    from fastprune.train import fit

    _regression_store(tmp_path / "reg.beton")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 1))
    loader = fastprune.Loader(tmp_path / "reg.beton", 32, label_field="target")
    with pytest.raises(ConfigError, match="label field 'target' holds float targets; fit trains classifiers"):
        fit(model, loader, None, epochs=1, criterion=lambda out, y: (out.squeeze(1) - y) ** 2,
            progress=False, log=None)
    with pytest.raises(ConfigError, match="val_loader's label field 'target'"):
        fit(model, fastprune.Loader(tmp_path / "reg.beton", 32), loader, epochs=1, progress=False, log=None)


def test_a_close_interrupted_while_joining_is_finished_by_the_next_close(raw_store):
    """close() marked the pass closed before joining: a second Ctrl-C during the join left every
    later close (the generator's finally, the atexit hook) returning at once, threads still running."""
    class Slow(BatchTransform):
        def __call__(self, images, ids, stream):
            time.sleep(0.2)
            return images

    batches = iter(Loader(raw_store, 4, threads=2, prefetch=1, transforms=[Slow()]))
    next(batches)
    run = batches.gi_frame.f_locals["run"]  # this pass's producers
    worker = run._workers[0]

    def interrupted_join(timeout=None):
        del worker.join  # the next close joins for real
        raise KeyboardInterrupt

    worker.join = interrupted_join
    with pytest.raises(KeyboardInterrupt):
        run.close()
    run.close()
    assert not any(w.is_alive() for w in run._workers)
    batches.close()


def test_a_ctrl_c_while_a_pass_starts_its_threads_leaves_none_running(raw_store, monkeypatch):
    """The run was created before the pass's try, and starting its threads caught only
    RuntimeError: a Ctrl-C there (a notebook's interrupt) left the started producers polling, with
    their batches and the file mapping, until the interpreter exited."""
    import threading

    real_start, started = threading.Thread.start, []

    def interrupted_start(thread):
        real_start(thread)
        started.append(thread)
        if len(started) == 2:
            raise KeyboardInterrupt

    loader = Loader(raw_store, 4, threads=3, prefetch=1)
    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    with pytest.raises(KeyboardInterrupt):
        next(iter(loader))
    monkeypatch.undo()
    for thread in started:
        thread.join(timeout=5)
    assert started and not any(t.is_alive() for t in started)
    assert len(list(loader)) == len(loader)  # and the loader still works, from the same epoch
