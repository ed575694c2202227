"""Converter behaviour no other test pinned down: a mutation audit (one change at a time to
convert/*.py; 34 mutants, 8 survived the suite, 1 equivalent, 1 a judgement call) found each of
these changes passing. CIFAR batch order past 9 and the class_names option, options refused where
they would be ignored, 16-bit gray at its boundary, and max_side's rounding."""
from __future__ import annotations

import numpy as np
import pytest
from test_convert_cifar import make_cifar10, stored

import fastprune
from fastprune import ConversionError
from fastprune.convert import convert, from_cifar


def test_class_names_option_replaces_the_cifar_meta_names(tmp_path):
    """The user's names must win over batches.meta
    (documented: "class_names replaces the label's")."""
    make_cifar10(tmp_path / "cifar-10-batches-py")  # its meta says "airplane" x 10
    mine = [f"c{i}" for i in range(10)]
    out = from_cifar(tmp_path, tmp_path / "c.beton", kind="cifar10", class_names=mine, progress=False)
    assert fastprune.Store(out).class_names == mine


def test_coarse_is_refused_for_cifar10_from_the_python_api(tmp_path):
    """from_cifar(kind='cifar10', coarse=True) must be refused up front."""
    make_cifar10(tmp_path / "cifar-10-batches-py")
    with pytest.raises(ConversionError, match="coarse labels exist only in CIFAR-100"):
        from_cifar(tmp_path, tmp_path / "c.beton", kind="cifar10", coarse=True, progress=False)
    assert not (tmp_path / "c.beton").exists()


def test_cifar_training_batches_are_read_in_numeric_order_past_nine(tmp_path):
    """data_batch_10 comes after data_batch_9, not after data_batch_1 (the official
    loaders' order); a lexicographic sort would reorder samples and labels."""
    expected = make_cifar10(tmp_path / "cifar-10-batches-py", batch_sizes=(1,) * 11)
    out = from_cifar(tmp_path, tmp_path / "c.beton", kind="cifar10", progress=False, workers=1)
    images, _ = expected["train"]
    for i, (image, _) in enumerate(stored(out)):
        np.testing.assert_array_equal(image, images[i])


def test_max_pixels_is_refused_for_a_non_image_folder_source(tmp_path):
    """--max-pixels only acts on image folders; elsewhere it must be refused rather
    than silently ignored."""
    source = tmp_path / "a.npz"
    np.savez(source, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(ConversionError, match="--max-pixels applies to image folders"):
        convert(source, tmp_path / "o.beton", max_pixels=10, progress=False)


def test_sixteen_bit_gray_whose_maximum_is_256_keeps_its_high_byte():
    """Only data that fits in 8 bits (max < 256) is kept as is; max == 256 is
    16-bit data and must be shifted (256 -> 1), not wrapped by astype(uint8) (256 -> 0)."""
    from PIL import Image

    from fastprune.convert._common import pil_to_rgb

    image = Image.fromarray(np.array([[0, 255, 256]], dtype=np.uint16))
    assert image.mode.startswith("I;16")
    assert pil_to_rgb(image, "x")[0, :, 0].tolist() == [0, 0, 1]


def test_max_side_rounds_the_short_side_to_nearest():
    """45x100 shrunk to a long side of 64 is 28.8 -> 29 rows, not 28 (truncation
    would drift the aspect ratio and differ from the rounding documented in fitted_shape)."""
    from fastprune.convert._common import fitted_shape

    assert fitted_shape(45, 100, max_side=64) == (29, 64)
