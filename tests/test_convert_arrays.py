"""numpy arrays, .npz files and map-style torch Datasets as sources."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import fastprune
from fastprune import ConversionError
from fastprune.convert import from_arrays, from_npz, from_torch_dataset


def stored(path):
    store = fastprune.Store(path)
    return [store[i] for i in range(len(store))]


def random_images(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ----------------------------------------------------------------------------------- arrays / npz


def test_rgb_arrays_round_trip(tmp_path):
    images, labels = random_images(7, 5, 4, 3), np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.int32)
    out = from_arrays(images, labels, tmp_path / "a.beton", progress=False)
    samples = stored(out)
    assert [label for _, label in samples] == labels.tolist()
    for i, (image, _) in enumerate(samples):
        np.testing.assert_array_equal(image, images[i])


@pytest.mark.parametrize("shape", [(4, 6, 5), (4, 6, 5, 1)])
def test_gray_arrays_are_stored_as_rgb(tmp_path, shape):
    images = random_images(*shape)
    out = from_arrays(images, [0, 1, 2, 3], tmp_path / "g.beton", progress=False)
    image, _ = stored(out)[2]
    assert image.shape == (6, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], images[2].reshape(6, 5))


def test_npz_round_trip_and_jpeg(tmp_path):
    images = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (3, 16, 1))[..., None].repeat(3, -1)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 1, 2]))
    out = from_npz(tmp_path / "d.npz", tmp_path / "d.beton", jpeg=True, quality=95, progress=False)
    samples = stored(out)
    assert [label for _, label in samples] == [0, 1, 2]
    assert np.abs(samples[0][0].astype(int) - images[0]).max() <= 8


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((2, 4, 4, 3), np.float32), [0, 1], "dtype float32.*does not rescale"),
    # integers got the float recipe, (x * 255), which wraps pixels already in 0..255
    (np.zeros((2, 4, 4, 3), np.uint16), [0, 1], r"dtype uint16.*x.astype\(np.uint8\) for integers already in 0..255"),
    (np.zeros((2, 4, 4, 3), np.int64), [0, 1], r"dtype int64.*\(x >> 8\).astype\(np.uint8\) for 16-bit"),
    (np.zeros((2, 3, 4, 5), np.uint8), [0, 1], r"shape \(2, 3, 4, 5\).*channels first\? images.transpose\(0, 2, 3, 1\)"),
    (np.zeros((2, 4, 4, 4), np.uint8), [0, 1], r"RGBA\? drop the alpha channel: images\[\.\.\., :3\]"),
    # a ragged list raised numpy's own "inhomogeneous shape" ValueError
    ([np.zeros((4, 4, 3), np.uint8), np.zeros((2, 4, 3), np.uint8)], [0, 1],
     "images are not all of one shape .* from_torch_dataset"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0.0, 1.0], "labels must be integers, got dtype float64"),
    (np.zeros((2, 4, 4, 3), np.uint8), ["cat", "dog"], "labels must be integers"),
    (np.zeros((2, 4, 4, 3), np.uint8), [True, False], "labels must be integers, got dtype bool"),
    (np.zeros((2, 4, 4, 3), np.uint8), [0, 1, 2], "2 images but 3 labels"),
    (np.zeros((2, 4, 4, 3), np.uint8), [[0], [1]], "must be 1-D"),
    (np.zeros((2, 4, 4, 4), np.uint8), [0, 1], r"shape \(2, 4, 4, 4\)"),
    (np.zeros((2, 4), np.uint8), [0, 1], r"shape \(2, 4\)"),
    (np.zeros((0, 4, 4, 3), np.uint8), [], "no samples"),
    # uint64 labels past int64 were stored as -1 without a word
    (np.zeros((3, 4, 4, 3), np.uint8), np.array([0, 1, 2**64 - 1], np.uint64),
     "sample 2 has label 18446744073709551615, which does not fit in a 64-bit signed label"),
    # -1 ("no label" in Hugging Face datasets) was stored, and only training refused it
    (np.zeros((3, 4, 4, 3), np.uint8), [0, -1, 1],
     r"sample 1: label -1 is negative .* pass drop_unlabeled=True \(convert --drop-unlabeled\) .*\(1 such sample\)"),
    (np.zeros((2, 4, 4, 3), np.uint8), [-1, -1], "sample 0: label -1 is negative"),
])
def test_bad_arrays_leave_no_file(tmp_path, images, labels, message):
    out = tmp_path / "o.beton"
    with pytest.raises(ConversionError, match=message):
        from_arrays(images, labels, out, progress=False)
    assert not out.exists()


def test_a_list_of_pil_images_is_refused_not_stored_as_palette_indices(tmp_path):
    """np.asarray of a palette ("P") image is its palette indices, which were stored as gray pixels."""
    from PIL import Image

    palette = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).convert("P")
    out = tmp_path / "p.beton"
    with pytest.raises(ConversionError, match=r"images\[1\] is a PIL image \(mode 'P'\).*from_torch_dataset"):
        from_arrays([np.zeros((4, 4, 3), np.uint8), palette], [0, 1], out, progress=False)
    assert not out.exists()


def test_unlabelled_samples_can_be_dropped_and_sparse_labels_warn(tmp_path, capsys):
    from fastprune.cli import main
    from fastprune.errors import LabelWarning

    images = random_images(4, 4, 4, 3)
    out = from_arrays(images, [2, -1, 0, 1], tmp_path / "d.beton", progress=False, drop_unlabeled=True)
    assert [(int(image[0, 0, 0]), label) for image, label in stored(out)] == \
        [(int(images[i, 0, 0, 0]), label) for i, label in ((0, 2), (2, 0), (3, 1))]
    with pytest.raises(ConversionError, match="no samples"):
        from_arrays(images, [-1] * 4, tmp_path / "none.beton", progress=False, drop_unlabeled=True)
    with pytest.warns(LabelWarning, match=r"s.beton: labels are sparse \(2 distinct values up to 1099511627776; "
                                          r"none is 1\); training needs 0..K-1") as warned:
        out = from_arrays(images, [0, 2**40, 0, 2**40], tmp_path / "s.beton", progress=False)
    assert len(warned) == 1 and "\n" not in str(warned[0].message) and len(fastprune.Store(out)) == 4
    assert warned[0].filename == __file__  # the user's line (it was arrays.py's: a re-run cell was silent)
    with warnings.catch_warnings():  # class names count the classes: a subset of them is not sparse
        warnings.simplefilter("error", LabelWarning)
        from_arrays(images, [1, 2, 2, 1], tmp_path / "named.beton", progress=False, class_names=["x", "y", "z"])
    # the command line: an error naming the sample, --drop-unlabeled, one-line warnings
    np.savez(tmp_path / "u.npz", images=images, labels=np.array([0, 1, -1, 5]))
    arguments = ["convert", str(tmp_path / "u.npz"), "-o", str(tmp_path / "u.beton"), "--no-progress"]
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{tmp_path / 'u.npz'}: labels: sample 2: label -1 is negative" in error
    assert not (tmp_path / "u.beton").exists()
    assert main([*arguments, "--drop-unlabeled"]) == 0
    assert [label for _, label in stored(tmp_path / "u.beton")] == [0, 1, 5]
    out, error = capsys.readouterr()
    assert error.count("\n") == 1 and error.startswith("fastprune convert: warning: ") and "labels are sparse" in error
    assert f"wrote {tmp_path / 'u.beton'}: 3 samples (" in out  # what the drop left, seen


def test_bad_npz_files_are_named(tmp_path):
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((1, 2, 2), np.uint8))
    np.savez(tmp_path / "objects.npz", images=np.zeros((1, 2, 2), np.uint8), labels=np.array([None]))
    (tmp_path / "junk.npz").write_text("not a zip")
    for name, message in [("nolabels.npz", r"missing array\(s\) \['labels'\]"),
                          ("objects.npz", "cannot read as .npz"), ("junk.npz", "cannot read as .npz"),
                          ("absent.npz", "npz file not found")]:
        with pytest.raises(ConversionError, match=f"{name}.*{message}|{message}.*{name}"):
            from_npz(tmp_path / name, tmp_path / "o.beton", progress=False)
    assert not (tmp_path / "o.beton").exists()


# ----------------------------------------------------------------------------------- torch datasets


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_dataset_of_mixed_image_kinds(tmp_path):
    rgb = random_images(6, 5, 3, seed=1)
    gray = random_images(6, 5, seed=2)
    items = [
        (Image.fromarray(rgb), 0),                                  # PIL RGB
        (Image.fromarray(gray), np.int64(1)),                       # PIL gray, numpy label
        (torch.from_numpy(rgb).permute(2, 0, 1), torch.tensor(2)),  # CHW tensor, tensor label
        (torch.from_numpy(rgb), 3),                                 # HWC tensor (6 and 5 are not channels)
        (rgb.transpose(2, 0, 1), 4),                                # CHW array
        (gray, 5),                                                  # HW array
        (Image.fromarray(np.dstack([rgb, gray])), 6),               # RGBA: alpha dropped
    ]
    out = from_torch_dataset(ListDataset(items), tmp_path / "t.beton", progress=False)
    samples = stored(out)
    assert [label for _, label in samples] == list(range(7))
    gray_rgb = np.repeat(gray[..., None], 3, axis=2)
    for index, expected in enumerate([rgb, gray_rgb, rgb, rgb, rgb, gray_rgb, rgb]):
        np.testing.assert_array_equal(samples[index][0], expected, err_msg=f"sample {index}")


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_rgba_arrays_are_refused_whatever_their_height(tmp_path, rows):
    """An HxWx4 array 1 or 3 rows high was read as channels-first and stored as a Wx4 image of
    other pixels; 8 rows high it was refused (converter audit). Now always refused, naming it."""
    rgba = random_images(rows, 9, 4, seed=3)
    with pytest.raises(ConversionError, match=rf"has shape \({rows}, 9, 4\); expected HxW"):
        from_torch_dataset(ListDataset([(rgba, 0)]), tmp_path / "t.beton", progress=False)
    assert not (tmp_path / "t.beton").exists()


def test_torchvision_fake_data(tmp_path):
    from torchvision.datasets import FakeData

    dataset = FakeData(size=12, image_size=(3, 10, 8), num_classes=4, random_offset=5)
    out = from_torch_dataset(dataset, tmp_path / "f.beton", progress=False)
    samples = stored(out)
    assert len(samples) == 12
    image, label = dataset[7]
    np.testing.assert_array_equal(samples[7][0], np.asarray(image))
    assert samples[7][1] == int(label)


def test_dataset_jpeg_accepts_mixed_shapes_and_max_side(tmp_path):
    items = [(random_images(20, 10), 0), (random_images(8, 8), 1)]
    out = from_torch_dataset(ListDataset(items), tmp_path / "t.beton", jpeg=True, max_side=10,
                             progress=False)
    assert [image.shape for image, _ in stored(out)] == [(10, 5, 3), (8, 8, 3)]


@pytest.mark.parametrize("items, message", [
    ([(torch.rand(3, 4, 4), 0)], "sample 0.*torch.float32 tensor.*ToTensor"),
    ([(random_images(4, 4, 3), 0), (random_images(4, 4, 3), 1.0)], "sample 1.*label must be an integer, got float"),
    ([(random_images(4, 4, 3), 0), (random_images(4, 4, 3), torch.tensor(True))], "sample 1.*label.*bool"),
    ([(random_images(4, 4, 3), 0), (random_images(4, 5, 3), 1)], "sample 0 is 4x4x3 and sample 1 is 4x5x3"),
    ([(random_images(4, 4, 3), 0), (random_images(4, 4, 3),)], "sample 1.*expected an \\(image, label\\) pair"),
    ([(random_images(4, 4, 3), 0), ("path.png", 1)], "sample 1.*image is a str"),
    ([], "no samples"),
])
def test_bad_dataset_samples_are_named_and_leave_no_file(tmp_path, items, message):
    out = tmp_path / "o.beton"
    with pytest.raises(ConversionError, match=message):
        from_torch_dataset(ListDataset(items), out, progress=False, workers=1)
    assert not out.exists()


def test_dataset_that_raises_is_reported_with_the_index(tmp_path):
    class Failing(ListDataset):
        def __getitem__(self, index):
            if index == 2:
                raise FileNotFoundError("/data/img2.png")
            return super().__getitem__(index)

    out = tmp_path / "o.beton"
    with pytest.raises(ConversionError, match=r"sample 2 of Failing.*FileNotFoundError: /data/img2\.png"):
        from_torch_dataset(Failing([(random_images(2, 2, 3), 0)] * 4), out, progress=False)
    assert not out.exists()


def test_iterable_dataset_without_len_is_refused(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield random_images(2, 2, 3), 0

    with pytest.raises(ConversionError, match="Stream has no len"):
        from_torch_dataset(Stream(), tmp_path / "o.beton", progress=False)


def test_an_npz_claiming_more_than_memory_is_one_clear_error(tmp_path):
    """A 200-byte .npz whose header claims 3 TiB of images: numpy's MemoryError, named and one line."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (2**20, 1024, 1024, 3)})
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w") as archive:
        archive.writestr("images.npy", header.getvalue())
        archive.writestr("labels.npy", header.getvalue())
    with pytest.raises(ConversionError, match=r"bomb\.npz: (its arrays do not fit in memory|cannot read)"):
        from_npz(bomb, tmp_path / "o.beton")
    assert not (tmp_path / "o.beton").exists()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python 3.12 added the warning on a fork with threads")
def test_a_conversion_with_workers_does_not_warn_of_forking_a_process_with_threads(tmp_path):
    """numpy alone starts OpenBLAS's threads, so on Python 3.12+ every conversion with workers
    warned that fork() may deadlock (shown in users' pytest runs): the workers fork on purpose."""
    import threading

    idle = threading.Event()
    thread = threading.Thread(target=idle.wait)  # a thread of the user's, alive during the fork
    thread.start()
    rng = np.random.default_rng(0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = from_arrays(rng.integers(0, 256, (1024, 8, 8, 3), dtype=np.uint8), np.arange(1024) % 4,
                              tmp_path / "s.beton", workers=2, progress=False)
    finally:
        idle.set()
        thread.join()
    assert not [w for w in caught if "multi-threaded" in str(w.message)], [str(w.message) for w in caught]
    with fastprune.Store(out) as store:
        assert len(store) == 1024 and store.verify().ok


def test_too_few_class_names_name_the_option(tmp_path):
    images = np.zeros((4, 4, 4, 3), np.uint8)
    with pytest.raises(ConversionError, match=r"^sample 2, field 'label': label 2 but only 2 class names were given "
                                              r"\(class_names=, convert --class-names\); pass names"):
        from_arrays(images, [0, 1, 2, 1], tmp_path / "n.beton", progress=False, class_names=["a", "b"])
    assert not (tmp_path / "n.beton").exists()
