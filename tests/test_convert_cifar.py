"""CIFAR-10/100 python batches: generated in the originals' exact pickle format, converted, read back."""

from __future__ import annotations

import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

import fastprune
from fastprune import ConversionError
from fastprune.convert import convert, from_cifar
from fastprune.convert.cifar import RestrictedUnpickler, load_pickle


class Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for CIFAR: protocol 2, ``str`` as 8-bit strings
    (SHORT_BINSTRING / BINSTRING, which ``encoding='bytes'`` loads as bytes), and numpy's array
    rebuild function under its old name ``numpy.core.multiarray._reconstruct``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def as_rows(images: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 -> the files' N x 3072 layout (all red, then green, then blue)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072).copy()


def write_py2_pickle(path, obj) -> None:
    with open(path, "wb") as file:
        Python2Pickler(file, protocol=2).dump(obj)


def make_cifar10(folder, batch_sizes=(5, 4), test_size=3):
    """A cifar-10-batches-py folder; returns {split: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    parts = []
    for number, size in enumerate(batch_sizes, start=1):
        images, labels = cifar_images(size, seed=number), [int(x) for x in np.arange(size) % 10]
        write_py2_pickle(folder / f"data_batch_{number}", {
            b"batch_label": f"training batch {number} of {len(batch_sizes)}".encode(),
            b"labels": labels, b"data": as_rows(images),
            b"filenames": [f"img_{number}_{i}.png".encode() for i in range(size)]})
        parts.append((images, labels))
    splits["train"] = (np.concatenate([p[0] for p in parts]), sum((p[1] for p in parts), []))
    test_images, test_labels = cifar_images(test_size, seed=99), [9, 0, 5][:test_size]
    write_py2_pickle(folder / "test_batch", {b"labels": test_labels, b"data": as_rows(test_images)})
    splits["test"] = (test_images, test_labels)
    write_py2_pickle(folder / "batches.meta", {b"label_names": [b"airplane"] * 10})
    return splits


def stored(path):
    store = fastprune.Store(path)
    return [store[i] for i in range(len(store))]


def test_cifar10_train_batches_are_concatenated_in_order(tmp_path):
    expected = make_cifar10(tmp_path / "cifar-10-batches-py")
    out = from_cifar(tmp_path, tmp_path / "c10.beton", kind="cifar10", progress=False, workers=1)
    samples = stored(out)
    images, labels = expected["train"]
    assert len(samples) == 9
    for i, (image, label) in enumerate(samples):
        np.testing.assert_array_equal(image, images[i])
        assert label == labels[i]


def test_cifar10_test_split(tmp_path):
    expected = make_cifar10(tmp_path)
    out = from_cifar(tmp_path, tmp_path / "t.beton", kind="cifar10", split="test", progress=False)
    samples = stored(out)
    assert [label for _, label in samples] == expected["test"][1]
    np.testing.assert_array_equal(samples[2][0], expected["test"][0][2])


def test_cifar100_fine_and_coarse_labels_with_str_keys(tmp_path):
    """Files re-pickled by Python 3 have str keys; both spellings are read."""
    images = cifar_images(6, seed=7)
    fine, coarse = [0, 99, 42, 7, 13, 64], [0, 19, 3, 4, 5, 6]
    for split in ("train", "test"):
        with open(tmp_path / split, "wb") as file:
            pickle.dump({"data": as_rows(images), "fine_labels": fine, "coarse_labels": coarse}, file)
    (tmp_path / "meta").write_bytes(pickle.dumps({"fine_label_names": []}))

    out = from_cifar(tmp_path, tmp_path / "c100.beton", kind="cifar100", coarse=True, progress=False)
    samples = stored(out)
    assert [s[1] for s in samples] == fine
    assert [s[2] for s in samples] == coarse
    np.testing.assert_array_equal(samples[1][0], images[1])
    assert list(fastprune.Store(out).fields) == ["image", "label", "coarse_label"]


def test_cifar100_without_coarse_has_image_and_label_only(tmp_path):
    write_py2_pickle(tmp_path / "train", {b"data": as_rows(cifar_images(2, 1)), b"fine_labels": [3, 4],
                                          b"coarse_labels": [1, 1]})
    out = from_cifar(tmp_path, tmp_path / "o.beton", kind="cifar100", progress=False)
    assert list(fastprune.Store(out).fields) == ["image", "label"]
    assert [s[1] for s in stored(out)] == [3, 4]


class RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": RunsShellCommand(marker), "labels": [0]}, protocol=4))
    write_py2_pickle(tmp_path / "test_batch", {b"data": as_rows(cifar_images(1, 0)), b"labels": [0]})
    out = tmp_path / "o.beton"

    with pytest.raises(ConversionError, match=r"data_batch_1.*refused global (posix|nt)\.system"):
        from_cifar(tmp_path, out, kind="cifar10", progress=False)
    assert not marker.exists()
    assert not out.exists()


def test_unpickler_allows_only_numpy_array_rebuild():
    unpickler = RestrictedUnpickler(open(os.devnull, "rb"))
    assert unpickler.find_class("numpy.core.multiarray", "_reconstruct") is \
        unpickler.find_class("numpy._core.multiarray", "_reconstruct")
    for module, name in [("builtins", "eval"), ("numpy", "load"), ("subprocess", "Popen"),
                         ("numpy.core.multiarray", "scalar")]:
        with pytest.raises(pickle.UnpicklingError, match=f"refused global {module}.{name}"):
            unpickler.find_class(module, name)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_batches_repickled_by_python3_at_any_protocol(tmp_path, protocol):
    """Protocols 0-2 spell bytes through _codecs.encode(text, "latin1"), protocol 5 rebuilds arrays
    with numpy's _frombuffer: "CIFAR-format" re-exports use them, and neither is a threat."""
    images = cifar_images(3, seed=protocol)
    for name in ("data_batch_1", "test_batch"):
        (tmp_path / name).write_bytes(pickle.dumps({b"labels": [2, 0, 1], b"data": as_rows(images)}, protocol=protocol))
    out = from_cifar(tmp_path, tmp_path / "c.beton", kind="cifar10", progress=False, workers=1)
    samples = stored(out)
    assert [label for _, label in samples] == [2, 0, 1]
    np.testing.assert_array_equal(samples[1][0], images[1])
    unpickler = RestrictedUnpickler(open(os.devnull, "rb"))
    with pytest.raises(pickle.UnpicklingError, match="only latin1"):
        unpickler.find_class("_codecs", "encode")("x", "hex_codec")


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "dtype float32"),
    ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"shape \(2, 1024\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.0, 1.0]}, "must be integers"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
    ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "no samples"),
    ([1, 2, 3], "expected a dict"),
])
def test_bad_batches_name_the_file_and_leave_no_output(tmp_path, batch, message):
    write_py2_pickle(tmp_path / "test_batch", batch)
    out = tmp_path / "o.beton"
    with pytest.raises(ConversionError, match=message) as error:
        from_cifar(tmp_path, out, kind="cifar10", split="test", progress=False)
    assert "test_batch" in str(error.value)
    assert not out.exists()


def test_truncated_pickle_and_missing_folder(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"labels": [1, 2]}, protocol=2)[:-5])
    with pytest.raises(ConversionError, match="test_batch.*cannot read"):
        from_cifar(tmp_path, tmp_path / "o.beton", split="test", progress=False)
    with pytest.raises(ConversionError, match="no CIFAR-10 training batches"):
        from_cifar(tmp_path, tmp_path / "o.beton", split="train", progress=False)
    with pytest.raises(FileNotFoundError, match="folder not found: .*missing$"):  # a ConversionError too
        from_cifar(tmp_path / "missing", tmp_path / "o.beton", progress=False)
    assert not (tmp_path / "o.beton").exists()


def test_python2_pickle_loads_as_real_cifar_files_do(tmp_path):
    """The fixture format itself: bytes keys, and the old global name in the stream."""
    make_cifar10(tmp_path, batch_sizes=(2,), test_size=1)
    raw = (tmp_path / "data_batch_1").read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    batch = load_pickle(tmp_path / "data_batch_1")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (2, 3072)


def pack(folder, archive):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def test_downloaded_archive_is_read_without_unpacking(tmp_path):
    expected = make_cifar10(tmp_path / "cifar-10-batches-py", batch_sizes=(2, 3, 1))
    archive = pack(tmp_path / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    out = convert(archive, tmp_path / "a.beton", progress=False)  # kind detected from the name
    samples = stored(out)
    images, labels = expected["train"]
    assert [label for _, label in samples] == labels
    np.testing.assert_array_equal(np.stack([image for image, _ in samples]), images)


def test_bad_archives_are_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": RunsShellCommand(tmp_path / "pwned"),
                                                      "labels": [0]}))
    archive = pack(folder, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(ConversionError, match=r"cifar-10-python\.tar\.gz:cifar-10-batches-py/test_batch.*refused"):
        from_cifar(archive, tmp_path / "o.beton", split="test", progress=False)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ConversionError, match=r"tar\.gz: no CIFAR-10 training batches"):
        from_cifar(archive, tmp_path / "o.beton", split="train", progress=False)
    archive.write_bytes(archive.read_bytes()[:40])
    with pytest.raises(ConversionError, match=r"cifar-10-python\.tar\.gz: cannot read archive"):
        from_cifar(archive, tmp_path / "o.beton", split="test", progress=False)
    assert not (tmp_path / "o.beton").exists()
