"""Converter behaviour no other test pinned down (mutation audit, round 3, of convert/*.py):
source-kind detection, 16-bit TIFFs and one-channel images, negative labels, max_side/resize
bounds, a .parquet's --split, errors naming the file or sample at fault, skip_unreadable with
max_pixels, and datasets' progress bars."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_convert_detect import touch
from test_convert_image_folder import save, stored

from fastprune import ConversionError
from fastprune.convert import convert, detect_kind, from_image_folder


@pytest.mark.parametrize("name, kind", [("cifar-100-python.tar.gz", "cifar100"), ("cifar-10-python.tar.gz", "cifar10"),
                                        ("CIFAR-100-python.tgz", "cifar100")])
def test_the_official_archives_are_told_apart_by_name(tmp_path, name, kind):
    """detect.py:44: "cifar-10" is a prefix of "cifar-100": the CIFAR-100 archive must be matched
    first, or it is read as CIFAR-10 (and refused for want of data_batch_1)."""
    assert detect_kind(touch(tmp_path / name, b"x")) == kind


def test_a_folder_holding_only_cifar10s_test_batch_is_cifar10(tmp_path):
    """detect.py:60: the test batch alone (copied out of cifar-10-batches-py) is CIFAR-10 too;
    without it the folder is "cannot tell what this folder holds"."""
    touch(tmp_path / "test_batch")
    touch(tmp_path / "batches.meta")
    assert detect_kind(tmp_path) == "cifar10"


def test_an_image_folder_whose_classes_are_train_and_test_is_not_cifar100(tmp_path):
    """detect.py:62: CIFAR-100's train/test files are recognised with their meta file; a folder
    of image subfolders named train/ and test/ (a split layout) is an image folder, not CIFAR-100."""
    for split in ("train", "test"):
        save(tmp_path / split / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert detect_kind(tmp_path) == "imagefolder"


def test_a_folder_holding_only_hidden_folders_is_not_an_image_folder(tmp_path):
    """detect.py:64: hidden folders (.git, .cache) are not classes: such a folder is refused by
    detection, naming --kind, rather than taken as an image folder without classes."""
    touch(tmp_path / ".git" / "HEAD")
    touch(tmp_path / "README")
    with pytest.raises(ConversionError, match="cannot tell what this folder holds"):
        detect_kind(tmp_path)


def test_a_big_endian_sixteen_bit_tiff_keeps_its_high_byte_like_a_png(tmp_path):
    """_common.py:196: Pillow opens a big-endian 16-bit gray TIFF (scientific cameras, macOS) as
    "I;16B", not "I;16": it is 16-bit gray all the same, stored as its high byte, not refused as
    'not 8 bits per channel'."""
    values = np.array([[0, 1000, 40000], [65535, 256, 30000]], np.uint16)
    path = tmp_path / "src" / "a" / "deep.tif"
    path.parent.mkdir(parents=True)
    Image.frombytes("I;16B", (3, 2), values.astype(">u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16B"
    (image, label), = stored(from_image_folder(tmp_path / "src", tmp_path / "o.beton", progress=False))
    np.testing.assert_array_equal(image, np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2))


def test_a_one_channel_chw_tensor_is_gray(tmp_path):
    """_common.py:233: a 1 x H x W uint8 tensor (MNIST through PILToTensor()) is channels-first gray,
    stored as H x W x 3; it was refused as an H x W x C image with C = W."""
    import torch
    from test_convert_arrays import ListDataset, random_images

    from fastprune.convert import from_torch_dataset

    gray = random_images(6, 5, seed=2)
    out = from_torch_dataset(ListDataset([(torch.from_numpy(gray)[None], 0), (gray[None], 1)]),
                             tmp_path / "t.beton", progress=False)
    for image, _ in stored(out):
        np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=2))


def test_any_negative_label_is_unlabelled_not_only_minus_one(tmp_path):
    """_common.py:137/141: -2 (or any negative) names no class either: refused naming the FIRST
    such sample (and how many there are), or left out with drop_unlabeled; a mutant catching only
    -1 stored -2 as a label, one naming the last sample sent the user to the wrong row."""
    from fastprune.convert import from_arrays

    images = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2)
    labels = [0, 1, -2, 1, -1]
    with pytest.raises(ConversionError, match=r"sample 2: label -2 is negative.*\(2 such samples\)"):
        from_arrays(images, labels, tmp_path / "a.beton", progress=False)
    out = from_arrays(images, labels, tmp_path / "b.beton", progress=False, drop_unlabeled=True)
    assert [label for _, label in stored(out)] == [0, 1, 1]
    np.testing.assert_array_equal(stored(out)[2][0][..., 0], images[3])


def test_max_side_never_makes_a_side_zero(tmp_path):
    """_common.py:260: a 1 x 300 strip shrunk to a long side of 10 is 1 x 10 (0.03 rows rounds to
    0: at least one row is kept)."""
    from fastprune.convert._common import fitted_shape

    assert fitted_shape(1, 300, max_side=10) == (1, 10)
    assert fitted_shape(300, 2, max_side=10) == (10, 1)
    save(tmp_path / "src" / "a" / "strip.png", np.full((1, 300, 3), 77, np.uint8))
    (image, _), = stored(from_image_folder(tmp_path / "src", tmp_path / "o.beton", max_side=10, progress=False))
    assert image.shape == (1, 10, 3) and (image == 77).all()


def test_a_dataset_image_with_one_trailing_channel_is_gray(tmp_path):
    """_common.py:177: an H x W x 1 array or tensor (a gray image kept with its channel axis) is
    stored as gray RGB, like an H x W one."""
    import torch
    from test_convert_arrays import ListDataset, random_images

    from fastprune.convert import from_torch_dataset

    gray = random_images(6, 5, seed=4)
    out = from_torch_dataset(ListDataset([(gray[..., None], 0), (torch.from_numpy(gray[..., None]), 1)]),
                             tmp_path / "t.beton", progress=False)
    for image, _ in stored(out):
        np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=2))


def test_a_split_asked_of_a_parquet_file_is_refused_not_ignored(tmp_path):
    """hf_files.py:39: a .parquet file holds one split; --split there (the user believes they pick
    "test") must be refused, not silently ignored while the whole file is converted."""
    datasets = pytest.importorskip("datasets")
    from test_convert_datasets import _images

    dataset = datasets.Dataset.from_dict({"image": [Image.fromarray(image) for image in _images(2)], "label": [0, 1]},
                                         features=datasets.Features({"image": datasets.Image(),
                                                                     "label": datasets.Value("int64")}))
    dataset.to_parquet(str(tmp_path / "one.parquet"))
    with pytest.raises(ConversionError, match=r"one\.parquet: a \.parquet file holds one split; drop --split"):
        convert(tmp_path / "one.parquet", tmp_path / "o.beton", split="test", progress=False)
    assert not (tmp_path / "o.beton").exists()


def test_mixed_shapes_after_dropping_unlabelled_samples_name_the_dataset_indices(tmp_path):
    """torch_dataset.py:85: with drop_unlabeled the first kept sample is the shape reference; the
    error names it by its dataset index (1), not by its place among the kept samples (0, which is
    the unlabelled sample the user has no shape complaint about)."""
    from test_convert_arrays import ListDataset, random_images

    from fastprune.convert import from_torch_dataset

    items = [(random_images(4, 4, 3), -1), (random_images(4, 4, 3), 0), (random_images(5, 5, 3), 1)]
    with pytest.raises(ConversionError, match=r"sample 1 is 4x4x3 and sample 2 is 5x5x3"):
        from_torch_dataset(ListDataset(items), tmp_path / "t.beton", progress=False, drop_unlabeled=True)
    assert not (tmp_path / "t.beton").exists()


def test_a_dataset_none_of_whose_samples_reads_names_the_last_failure(tmp_path):
    """torch_dataset.py:69: with skip_unreadable, a dataset whose every sample raises still ends in
    a ConversionError naming a sample and the dataset's own error (not an internal AssertionError)."""
    class Broken:
        def __len__(self):
            return 3

        def __getitem__(self, index):
            raise FileNotFoundError(f"missing-{index}.png")

    from fastprune.convert import from_torch_dataset

    with pytest.raises(ConversionError, match=r"sample 2 of Broken: the dataset raised FileNotFoundError: missing-2"):
        from_torch_dataset(Broken(), tmp_path / "t.beton", progress=False, skip_unreadable=True)
    assert not (tmp_path / "t.beton").exists()


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((2, 4, 4), np.float32), [0, 1], "images has dtype float32"),
    (np.zeros((2, 4, 4), np.uint8), [0, 1, 1], "2 images but 3 labels"),
    (np.zeros((2, 4, 4, 4), np.uint8), [0, 1], r"images have shape \(2, 4, 4, 4\)"),
])
def test_a_bad_array_in_an_npz_file_is_named_with_its_file(tmp_path, images, labels, message):
    """arrays.py:80: the arrays' own problems (dtype, count, shape) name the .npz they came from,
    not "arrays", which says nothing to a command-line user converting several files."""
    np.savez(tmp_path / "bad-one.npz", images=images, labels=np.array(labels))
    with pytest.raises(ConversionError, match=rf"bad-one\.npz: {message}"):
        convert(tmp_path / "bad-one.npz", tmp_path / "o.beton", progress=False)


@pytest.mark.parametrize("jpeg", [False, True], ids=["raw", "jpeg"])
def test_skip_unreadable_also_leaves_out_an_image_over_max_pixels(tmp_path, jpeg):
    """image_folder.py:376 (documented: "leaves out the files that cannot be read or decoded (or
    exceed max_pixels)"): the size refusal is a ConversionError that the source must turn into a
    skippable one, else the whole conversion stops on it."""
    from fastprune.errors import SkippedSamplesWarning

    for i in range(3):
        save(tmp_path / "src" / "a" / f"{i}.png", np.full((4, 4, 3), i, np.uint8))
    save(tmp_path / "src" / "a" / "big.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.warns(SkippedSamplesWarning, match=r"skipped 1 unreadable sample.*big\.png.*exceeds the limit of 20"):
        out = from_image_folder(tmp_path / "src", tmp_path / "o.beton", max_pixels=20, jpeg=jpeg,
                                skip_unreadable=True, progress=False)
    assert [int(image[0, 0, 0]) for image, _ in stored(out)] == [0, 1, 2]


def test_a_quiet_hf_file_conversion_leaves_datasets_progress_bars_on(tmp_path):
    """hf_files.py:67: progress=False silences datasets' bars only while the file is read; they
    must be on again afterwards, as the user's session had them."""
    datasets = pytest.importorskip("datasets")
    from test_convert_datasets import _images

    datasets.Dataset.from_dict({"image": [Image.fromarray(image) for image in _images(2)], "label": [0, 1]},
                               features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
                               ).to_parquet(str(tmp_path / "one.parquet"))
    assert datasets.is_progress_bar_enabled()
    convert(tmp_path / "one.parquet", tmp_path / "o.beton", progress=False)
    assert datasets.is_progress_bar_enabled()


def test_a_resize_target_above_max_pixels_is_refused_up_front(tmp_path):
    """_common.py:275: max_pixels bounds what a sample may cost; --resize must not get round it
    (a 4x4 image resized to 99999x99999 is 30 GB a sample): refused before anything is read."""
    save(tmp_path / "src" / "a" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ConversionError, match=r"resize 100x60 = 6,000 pixels exceeds the limit of 5,000"):
        from_image_folder(tmp_path / "src", tmp_path / "o.beton", resize=(100, 60), max_pixels=5000, progress=False)
    assert not (tmp_path / "o.beton").exists()
    out = from_image_folder(tmp_path / "src", tmp_path / "o.beton", resize=(50, 100), max_pixels=5000, progress=False)
    assert stored(out)[0][0].shape == (50, 100, 3)
