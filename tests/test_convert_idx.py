"""MNIST-style IDX files: parsing (gzipped or not), validation, conversion."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import fastprune
from fastprune import ConversionError
from fastprune.convert import from_idx, read_idx
from fastprune.convert.idx import find_idx_files


def idx_bytes(array: np.ndarray) -> bytes:
    """What the IDX writers of MNIST produced: 0, 0, 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_pair(folder, images, labels, prefix="train", gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    pack = gzip.compress if gz else (lambda b: b)
    (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(pack(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(pack(idx_bytes(labels)))


@pytest.fixture
def mnist_like():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 4, 3), dtype=np.uint8), np.array([7, 0, 3, 3, 9], dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_gzipped_or_not(tmp_path, mnist_like, gz):
    images, labels = mnist_like
    write_idx_pair(tmp_path, images, labels, gz=gz)
    images_path, labels_path = find_idx_files(tmp_path, "train")
    np.testing.assert_array_equal(read_idx(images_path, ndim=3), images)
    np.testing.assert_array_equal(read_idx(labels_path, ndim=1), labels)


def test_gzip_is_detected_by_content_not_name(tmp_path, mnist_like):
    path = tmp_path / "images-without-suffix"
    path.write_bytes(gzip.compress(idx_bytes(mnist_like[0])))
    np.testing.assert_array_equal(read_idx(path, ndim=3), mnist_like[0])


def test_from_idx_stores_gray_as_rgb(tmp_path, mnist_like):
    images, labels = mnist_like
    write_idx_pair(tmp_path / "src", images, labels, prefix="t10k", gz=False)
    out = from_idx(tmp_path / "src", tmp_path / "o.beton", split="test", progress=False)
    store = fastprune.Store(out)
    assert len(store) == 5
    image, label = store[3]
    assert label == 3 and image.shape == (4, 3, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], images[3])


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b"\x01" + b[1:], "not an IDX file"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "type code 0x0d"),
    (lambda b: b[:3] + b"\x02" + b[4:], "2 dimensions, expected 3"),
    (lambda b: b[:-1], r"shape \(5, 4, 3\) \(76 bytes\) but the file holds 75 bytes"),
    (lambda b: b + b"\x00", "holds 77 bytes"),
    (lambda b: b[:10], "truncated IDX header"),
    (lambda b: b[:2], "too short"),
])
def test_malformed_images_file_is_named(tmp_path, mnist_like, corrupt, message):
    write_idx_pair(tmp_path, *mnist_like, gz=False)
    images_path = tmp_path / "train-images-idx3-ubyte"
    images_path.write_bytes(corrupt(images_path.read_bytes()))
    out = tmp_path / "o.beton"
    with pytest.raises(ConversionError, match=message) as error:
        from_idx(tmp_path, out, progress=False)
    assert "train-images-idx3-ubyte" in str(error.value)
    assert not out.exists()


def test_count_mismatch_missing_files_and_bad_gzip(tmp_path, mnist_like):
    images, labels = mnist_like
    write_idx_pair(tmp_path, images, labels[:4])
    out = tmp_path / "o.beton"
    with pytest.raises(ConversionError, match="holds 5 images but .*labels-idx1-ubyte.gz holds 4 labels"):
        from_idx(tmp_path, out, progress=False)
    with pytest.raises(ConversionError, match="neither t10k-images-idx3-ubyte.gz nor t10k-images-idx3-ubyte"):
        from_idx(tmp_path, out, split="test", progress=False)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"broken")
    with pytest.raises(ConversionError, match="images-idx3-ubyte.gz: corrupt gzip"):
        from_idx(tmp_path, out, progress=False)
    with pytest.raises(ConversionError, match="split must be one of"):
        from_idx(tmp_path, out, split="valid", progress=False)
    assert not out.exists()


def test_empty_idx_files(tmp_path):
    write_idx_pair(tmp_path, np.zeros((0, 4, 4), np.uint8), np.zeros(0, np.uint8))
    with pytest.raises(ConversionError, match="no samples"):
        from_idx(tmp_path, tmp_path / "o.beton", progress=False)
    assert not (tmp_path / "o.beton").exists()
