"""Boundaries of the Loader that no other test pinned down: a mutation audit (one change at a time
to loader/*.py) found each of these changes passing the whole suite. When an epoch advances (one
batch, no batch, a pass left early), exact limits (max_image_pixels, a crop the size of the padded
image), which field is the label, and where a centre crop starts."""

import numpy as np
import pytest
import torch

import fastprune
from fastprune import Loader
from fastprune.convert import from_arrays
from fastprune.loader.transforms import CenterCrop, RandomCrop


@pytest.fixture
def store40(tmp_path):
    images = np.arange(40, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return from_arrays(images, np.arange(40) % 2, tmp_path / "s.beton", progress=False)


def test_a_single_batch_epoch_advances_when_it_is_read(store40):
    loader = Loader(store40, 64, seed=0)
    assert len(loader) == 1
    for expected in range(1, 4):
        list(loader)
        assert loader.epoch == expected


def test_a_pass_left_before_its_last_batch_does_not_advance(store40):
    loader = Loader(store40, 16, seed=0)  # 3 batches
    assert len(loader) == 3
    taken = [b for _, b in zip(range(2), loader)]  # stops after 2 of 3
    assert len(taken) == 2
    assert loader.epoch == 0  # "an epoch left before its last batch is run again"


def test_an_epoch_of_no_batches_still_advances(store40):
    loader = Loader(store40, 64, drop_last=True, seed=0)
    assert len(loader) == 0
    assert list(loader) == []
    assert loader.epoch == 1


def test_samples_in_epoch_counts_the_last_partial_batch_as_its_samples(store40):
    loader = Loader(store40, 16, seed=0)
    assert loader.samples_in_epoch(0) == 40 == sum(len(b.indices) for b in loader)
    assert Loader(store40, 16, drop_last=True).samples_in_epoch(0) == 32


def test_a_sampler_made_for_another_store_size_is_refused(store40):
    strategy = fastprune.UniformRandom(30, keep=0.5, seed=0)  # 30 samples; the store has 40
    with pytest.raises(ValueError, match="sampler.num_samples = 30"):
        Loader(store40, 8, sampler=strategy)


def test_epoch_order_refuses_a_sample_id_equal_to_the_store_size(store40):
    class OneTooFar:
        num_samples = 40

        def select(self, epoch):
            return np.array([0, 40]), np.ones(2, np.float32)

        def num_selected(self, epoch):
            return 2

    loader = Loader(store40, 8, sampler=OneTooFar(), shuffle=False)
    with pytest.raises(IndexError, match=r"outside \[0, 40\)"):
        loader.epoch_order(0)


def test_label_is_picked_even_beside_an_index_field(tmp_path):
    """from_arrays(index=True) adds a second int field, ``index``: the loader still finds ``label``."""
    labels = np.arange(12) % 3
    store = from_arrays(np.zeros((12, 4, 4, 3), np.uint8), labels, tmp_path / "s.beton", progress=False,
                        index=True)
    batch = next(iter(Loader(store, 12, shuffle=False)))
    assert batch.labels is not None
    assert batch.labels.tolist() == labels.tolist()


def test_an_image_of_exactly_max_image_pixels_is_accepted(store40):
    batch = next(iter(Loader(store40, 8, shuffle=False, max_image_pixels=16)))  # 4 x 4 images
    assert tuple(batch.images.shape) == (8, 4, 4, 3)
    with pytest.raises(fastprune.StoreError, match="max_image_pixels=15"):
        Loader(store40, 8, max_image_pixels=15)


def test_a_store_with_any_jpeg_gets_every_cpu(monkeypatch):
    from fastprune.loader import _source

    monkeypatch.setattr(_source, "rank_cpus", lambda: 16)
    assert _source.default_threads(np.array([0, 1, 1], np.uint8)) == 16  # mixed: decoding work
    assert _source.default_threads(np.array([1, 1], np.uint8)) == _source.RAW_THREADS


def test_random_crop_may_take_the_whole_padded_image(store40):
    assert RandomCrop(size=12, padding=4).output_size(4, 4) == (12, 12)
    batch = next(iter(Loader(store40, 8, transforms=[RandomCrop(size=12, padding=4)], shuffle=False)))
    assert tuple(batch.images.shape) == (8, 12, 12, 3)


def test_center_crop_is_centred_when_the_margin_is_odd(tmp_path):
    """33 x 32 images, ratio 1: the 32 x 32 window starts at row (33 - 32) // 2 = 0, as ffcv's
    get_center_crop; each row's value is its row number, so the batch shows the window."""
    rows = np.arange(33, dtype=np.uint8)[None, :, None, None] * np.ones((2, 1, 32, 3), np.uint8)
    store = from_arrays(rows, np.zeros(2, np.int64), tmp_path / "s.beton", progress=False)
    crop = CenterCrop(32, ratio=1.0)
    params = crop.crop_params(np.array([33]), np.array([32]), np.array([0]), 0)
    assert params.tolist() == [[0, 0, 32, 32]]
    batch = next(iter(Loader(store, 2, transforms=[crop], shuffle=False)))
    assert batch.images[0, :, 0, 0].tolist() == list(range(32))
