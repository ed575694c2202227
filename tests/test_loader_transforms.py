"""numba batch transforms against slow numpy oracles; randomness keyed by (seed, epoch, id)."""

import numpy as np
import pytest
import torch

from fastprune.loader.transforms import (CenterCrop, Cutout, Normalize, RandomCrop, RandomHorizontalFlip,
                                         RandomResizedCrop, stream_key, uniform, uniform_py)

STREAM = stream_key(seed=3, epoch=1, salt=0)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 10, 12, 3), dtype=np.uint8), rng.permutation(1000)[:24].astype(np.int64)


def _randint_py(stream, sample_id, k, n):
    return min(int(uniform_py(stream, sample_id, k) * n), n - 1)


def test_numba_rng_matches_python_reference_and_is_uniform():
    draws = np.array([uniform(np.uint64(STREAM), s, k) for s in range(200) for k in range(5)])
    reference = np.array([uniform_py(STREAM, s, k) for s in range(200) for k in range(5)])
    np.testing.assert_array_equal(draws, reference)
    assert 0 <= draws.min() and draws.max() < 1
    assert abs(draws.mean() - 0.5) < 0.03
    assert len(np.unique(draws)) == len(draws)
    assert stream_key(3, 1, 0) != stream_key(3, 2, 0) != stream_key(4, 1, 0) != stream_key(3, 1, 1)


def test_random_crop_matches_padded_numpy_oracle(batch):
    images, ids = batch
    out = RandomCrop(padding=3)(images, ids, STREAM)
    padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    for b, s in enumerate(ids):
        dy, dx = _randint_py(STREAM, s, 0, 7), _randint_py(STREAM, s, 1, 7)
        np.testing.assert_array_equal(out[b], padded[b, dy:dy + 10, dx:dx + 12])


def test_random_crop_to_smaller_size_and_fill(batch):
    images, ids = batch
    out = RandomCrop(size=(8, 9), padding=2, fill=77)(images, ids, STREAM)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=77)
    for b, s in enumerate(ids):
        dy, dx = _randint_py(STREAM, s, 0, 7), _randint_py(STREAM, s, 1, 8)
        np.testing.assert_array_equal(out[b], padded[b, dy:dy + 8, dx:dx + 9])


def test_flip_matches_oracle_and_flips_about_half(batch):
    images, ids = batch
    original = images.copy()
    out = RandomHorizontalFlip()(images, ids, STREAM)
    flipped = [uniform_py(STREAM, s, 0) < 0.5 for s in ids]
    for b in range(len(ids)):
        np.testing.assert_array_equal(out[b], original[b, :, ::-1] if flipped[b] else original[b])
    assert 0 < sum(flipped) < len(ids)


def test_cutout_matches_oracle(batch):
    images, ids = batch
    original = images.copy()
    out = Cutout(size=5, fill=9)(images, ids, STREAM)
    for b, s in enumerate(ids):
        expected = original[b].copy()
        cy, cx = _randint_py(STREAM, s, 0, 10), _randint_py(STREAM, s, 1, 12)
        expected[max(0, cy - 2):max(0, cy + 3), max(0, cx - 2):max(0, cx + 3)] = 9
        np.testing.assert_array_equal(out[b], expected)


def test_augmentation_depends_only_on_sample_id(batch):
    """Same id -> same result whatever the rest of the batch (so thread count cannot matter)."""
    images, ids = batch
    transform = RandomCrop(padding=4)
    whole = transform(images, ids, STREAM)
    part = transform(images[5:9][::-1].copy(), ids[5:9][::-1].copy(), STREAM)
    np.testing.assert_array_equal(whole[5:9][::-1], part)


def test_random_resized_crop_params_are_valid_and_varied():
    ids = np.arange(500, dtype=np.int64)
    heights, widths = np.full(500, 40), np.full(500, 64)
    crops = RandomResizedCrop(16, scale=(0.2, 1.0)).crop_params(heights, widths, ids, STREAM)
    top, left, h, w = crops.T
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= 40).all() and (left + w <= 64).all()
    area = h * w / (40 * 64)
    assert area.min() >= 0.15 and area.max() <= 1.0 and area.std() > 0.1
    assert ((w / h) >= 0.7).all() and ((w / h) <= 1.4).all()


def test_center_crop_params_match_ffcv_formula():
    crops = CenterCrop(8, ratio=0.5).crop_params(np.array([40, 20]), np.array([64, 21]), np.arange(2), STREAM)
    # side = int(0.5 * min(h, w)); offsets = (h - side) // 2, (w - side) // 2
    np.testing.assert_array_equal(crops, [[10, 22, 20, 20], [5, 5, 10, 10]])


def test_resized_crop_in_numba_matches_native_decoder_path(batch):
    from fastprune import _core

    images, ids = batch
    transform = RandomResizedCrop((7, 9))
    numba_out = transform(images.copy(), ids, STREAM)
    n = len(images)
    gather = _core.ImageGather(images.reshape(-1), np.arange(n, dtype=np.uint64) * 360, np.full(n, 360, np.uint64),
                               np.ones(n, np.uint8), np.full(n, 10, np.uint32), np.full(n, 12, np.uint32), 2)
    crops = transform.crop_params(np.full(n, 10), np.full(n, 12), ids, STREAM)
    native_out = np.empty_like(numba_out)
    gather.gather_crops(np.arange(n, dtype=np.int64), crops, native_out)
    np.testing.assert_array_equal(numba_out, native_out)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [40, 30, 24, 20, 16, (31, 17)])
def test_enlarging_crops_in_numba_equal_the_native_path(antialias, size):
    """The 2-tap path (every enlarging crop) in numba used floats where the native one uses 8-bit
    fixed point: ~10% of bytes differed by 1 when CenterCrop enlarged 24-px images behind another
    transform (loader audit). Now both compute the same integers."""
    from fastprune import _core

    rng = np.random.default_rng(5)
    n, rows, cols = 12, 24, 24
    images = rng.integers(0, 256, (n, rows, cols, 3), dtype=np.uint8)
    ids = np.arange(n, dtype=np.int64)
    for transform in (CenterCrop(size, ratio=1.0, antialias=antialias), RandomResizedCrop(size, antialias=antialias)):
        numba_out = transform(images.copy(), ids, STREAM)
        gather = _core.ImageGather(images.reshape(-1), np.arange(n, dtype=np.uint64) * rows * cols * 3,
                                   np.full(n, rows * cols * 3, np.uint64), np.ones(n, np.uint8),
                                   np.full(n, rows, np.uint32), np.full(n, cols, np.uint32), 2)
        crops = transform.crop_params(np.full(n, rows), np.full(n, cols), ids, STREAM)
        native_out = np.empty_like(numba_out)
        gather.gather_crops(ids, crops, native_out, antialias=antialias)
        np.testing.assert_array_equal(numba_out, native_out)


@pytest.mark.parametrize("antialias", [True, False])
def test_shrinking_crops_in_numba_equal_the_native_path(antialias):
    """A resized crop that is not first runs in numba: it gives the native fused path's bytes, so
    the place of a crop in the pipeline does not change the pixels."""
    from fastprune import _core

    rng = np.random.default_rng(12)
    n, rows, cols = 16, 45, 61
    images = rng.integers(0, 256, (n, rows, cols, 3), dtype=np.uint8)
    ids = np.arange(n, dtype=np.int64)
    transform = RandomResizedCrop((11, 13), antialias=antialias)
    numba_out = transform(images.copy(), ids, STREAM)
    gather = _core.ImageGather(images.reshape(-1), np.arange(n, dtype=np.uint64) * rows * cols * 3,
                               np.full(n, rows * cols * 3, np.uint64), np.ones(n, np.uint8),
                               np.full(n, rows, np.uint32), np.full(n, cols, np.uint32), 2)
    crops = transform.crop_params(np.full(n, rows), np.full(n, cols), ids, STREAM)
    assert (crops[:, 2] > 11).sum() >= n // 2  # most windows shrink
    native_out = np.empty_like(numba_out)
    gather.gather_crops(ids, crops, native_out, antialias=antialias)
    np.testing.assert_array_equal(numba_out, native_out)
    assert repr(transform).startswith(f"RandomResizedCrop(size=(11, 13), antialias={antialias}")
    with pytest.raises(TypeError, match="RandomResizedCrop: antialias must be True or False"):
        RandomResizedCrop(8, antialias="no")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_matches_torch_oracle(batch, dtype, channels_last):
    images, ids = batch
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    out = Normalize(mean, std, dtype=dtype, channels_last=channels_last)(images, ids, STREAM)
    expected = ((torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).view(1, 3, 1, 1))
                / torch.tensor(std).view(1, 3, 1, 1)).to(dtype)
    assert out.dtype == dtype and out.shape == (24, 3, 10, 12)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="padding"):
        RandomCrop(padding=-1)
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(p=2)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="dtype"):
        Normalize(dtype=torch.int32)
    with pytest.raises(ValueError, match="std"):
        Normalize(std=(1, 0, 1))
    with pytest.raises(ValueError, match="size"):
        Cutout(0)


@pytest.mark.parametrize("mean, std", [([72.9] * 3, [90.0] * 3), ([127.5] * 3, [74.0] * 3),
                                       ([0.5] * 3, [64.0] * 3), ([123.7, 0.4, 0.4], [0.2] * 3)])
def test_normalize_refuses_statistics_in_255_units_and_names_the_fix(mean, std):
    """(x/255 - 72.9)/90 lands every pixel in [-0.81, -0.80]: a model trained on it stays at chance."""
    with pytest.raises(ValueError, match=r"0-255 pixel units.*from_255"):
        Normalize(mean, std)


def test_normalize_from_255_equals_fractions_of_255():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3) * 5
    ids = np.arange(2, dtype=np.int64)
    a = Normalize.from_255([72.9, 80.0, 90.0], [90.0, 60.0, 30.0])(images, ids, 0)
    b = Normalize([72.9 / 255, 80 / 255, 90 / 255], [90 / 255, 60 / 255, 30 / 255])(images, ids, 0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(a.min()) < -0.5 and float(a.max()) > 2  # spread out, not squeezed near one value
    with pytest.raises(ValueError, match="3 finite values"):
        Normalize([0.5, 0.5], [0.2] * 3)
    with pytest.raises(ValueError, match="3 finite values"):
        Normalize([0.5] * 3, [float("nan")] * 3)


def test_normalize_reuses_output_memory_only_after_every_tensor_on_it_is_gone():
    import copy
    import pickle

    norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ids = np.arange(2, dtype=np.int64)
    images = [np.full((2, 4, 5, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    first = norm(images[0], ids, 0)
    kept = first.clone()
    view = first[1]  # a view keeps the storage alive after `first` is dropped
    pointer = first.data_ptr()
    del first
    second = norm(images[1], ids, 0)
    assert second.data_ptr() != pointer
    assert torch.equal(view, kept[1])
    del view
    third = norm(images[2], ids, 0)
    assert third.data_ptr() == pointer  # recycled once nothing used it
    assert torch.equal(second, torch.full_like(second, (20 / 255 - 0.5) / 0.25))
    assert torch.equal(third, torch.full_like(third, (30 / 255 - 0.5) / 0.25))
    for clone in (copy.deepcopy(norm), pickle.loads(pickle.dumps(norm))):
        assert torch.equal(clone(images[3], ids, 0), norm(images[3], ids, 0))


def test_recycled_arrays_stay_apart_from_held_ones_after_the_interpreter_warms_up():
    """The pool tells a free array from a held one by its reference count, whose reading differs
    between interpreters (Python 3.14 passes locals to calls borrowed: a fixed count of 3 there
    reused an array one tensor still held). Many rounds, so specialized bytecode is covered too."""
    from fastprune.loader.transforms import _RecycledBuffers

    pool = _RecycledBuffers(keep=4)
    for _ in range(300):
        held = torch.from_numpy(pool.take((3, 2), np.float32))[1:]  # a view: the storage holds the array
        other = pool.take((3, 2), np.float32)
        assert not np.shares_memory(other, held.numpy())
        address = other.__array_interface__["data"][0]
        del other
        again = pool.take((3, 2), np.float32)
        assert again.__array_interface__["data"][0] == address  # freed: reused, not allocated
        del held, again
    assert len(pool._arrays) <= 4


@pytest.mark.parametrize("make, message", [
    (lambda: RandomCrop("16"), "size must be an integer"),            # once (1, 6)
    (lambda: RandomCrop(True), "got the bool"),                        # once (1, 1)
    (lambda: RandomCrop((16.7, 16)), "size must be an integer"),       # once (16, 16)
    (lambda: RandomCrop(8, padding=1.5), "padding must be an integer"),
    (lambda: Cutout(2.7), "size must be an integer"),
    (lambda: Normalize(mean=0.5), "needs 3 values"),
    (lambda: RandomResizedCrop(8, scale=(0.5,)), "scale must be a pair"),
    (lambda: RandomHorizontalFlip("0.5"), "p must be a real number"),
])
def test_transform_arguments_are_refused_not_coerced(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_transform_arguments_take_numpy_and_torch_numbers():
    assert RandomCrop(np.int64(8), padding=np.int32(2)).size == (8, 8)
    assert Normalize(torch.tensor([0.5, 0.4, 0.3]), np.array([0.2, 0.2, 0.2])).mean == pytest.approx((0.5, 0.4, 0.3))
    assert RandomHorizontalFlip(np.float32(0.25)).p == 0.25


def test_a_crop_larger_than_the_stores_images_fails_when_the_loader_is_built(tmp_path):
    import fastprune
    from fastprune.convert import from_arrays

    store = from_arrays(np.zeros((8, 16, 16, 3), np.uint8), np.arange(8) % 2, tmp_path / "s.beton", progress=False)
    with pytest.raises(ValueError, match=r"transforms\[0\]: RandomCrop: size \(40, 40\) is larger"):
        fastprune.Loader(store, 4, transforms=[RandomCrop(40, padding=0)])
    with pytest.raises(ValueError, match=r"transforms\[1\].*8x8"):  # after a crop: its output size
        fastprune.Loader(store, 4, transforms=[CenterCrop(8), RandomCrop(10, padding=0)])
    with pytest.raises(TypeError, match="drop_last must be True or False"):
        fastprune.Loader(store, 4, drop_last="False")
    assert len(fastprune.Loader(store, 4, transforms=[RandomCrop(12, padding=0)])) == 2


def test_the_guide_s_own_transform_takes_keys_past_2_63(tmp_path):
    """The guide's own-augmentation example raised OverflowError at epoch 5 of seed 0: it gave its
    numba kernel the key as a Python int, numba compiled the kernel for the int64 of the first
    keys, and that epoch's key is past 2**63 (a performance audit). The example now passes
    np.uint64(stream); keys stay Python ints (random.Random(stream) takes them). Run here as the
    guide writes it, over a small key then a large one."""
    import random
    import re
    from pathlib import Path

    import fastprune
    from fastprune.loader import Loader
    from fastprune.store.fields import IntField, RGBImageField

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", guide, flags=re.S) if "class RandomInvert" in b)
    images = np.random.default_rng(0).integers(0, 256, (64, 4, 4, 3), dtype=np.uint8)
    store = fastprune.write_dataset(tmp_path / "s.beton", [(image, 0) for image in images],
                                    {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                                    workers=1, progress=False)
    names = {"fastprune": fastprune, "store": store}
    exec(compile(block.split("images, labels, indices, weights")[0], "guide.md", "exec"), names)  # its definitions
    small = next(e for e in range(100) if stream_key(0, e, 0) < 2**63)
    epoch = next(e for e in range(small, 100) if stream_key(0, e, 0) >= 2**63)
    loader = Loader(store, 64, transforms=[names["RandomInvert"]()], shuffle=False, seed=0, threads=1)
    loader.set_epoch(small)  # numba compiles the kernel for the first key's type
    next(iter(loader))
    loader.set_epoch(epoch)
    batch = next(iter(loader))
    inverted = [uniform_py(stream_key(0, epoch, 0), i, 0) < 0.5 for i in range(64)]
    expected = np.where(np.array(inverted)[:, None, None, None], 255 - images, images)
    np.testing.assert_array_equal(batch.images.numpy(), expected)
    seen = []

    class Keys(fastprune.loader.transforms.BatchTransform):
        def __call__(self, images, ids, stream):
            seen.append(random.Random(stream).random())  # a Python int, as before
            return images

    next(iter(Loader(store, 64, transforms=[Keys()], threads=1)))
    assert len(seen) == 1
