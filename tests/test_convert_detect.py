"""Source-kind detection and the ``convert`` dispatcher's option checks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fastprune
from fastprune import ConversionError
from fastprune.convert import FASHION_MNIST_DIR, convert, detect_kind
from fastprune.convert.detect import resolve_source


def touch(path, data=b""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("files, kind", [
    (["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"], "idx"),
    (["t10k-images-idx3-ubyte"], "idx"),
    (["cifar-10-batches-py/test_batch"], "cifar10"),
    (["data_batch_1", "batches.meta"], "cifar10"),
    (["cifar-100-python/train"], "cifar100"),
    (["train", "test", "meta"], "cifar100"),
    (["cats/1.png", "notes.txt"], "imagefolder"),
])
def test_folder_kinds_are_detected_by_names(tmp_path, files, kind):
    for name in files:
        touch(tmp_path / name)
    assert detect_kind(tmp_path) == kind


@pytest.mark.parametrize("files", [["data_batch_1.bin", "batches.meta.txt"], ["cifar-10-batches-bin/test_batch.bin"],
                                   ["train.bin", "test.bin", "coarse_label_names.txt"]])
def test_cifars_binary_version_is_named_as_unsupported(tmp_path, files):
    for name in files:
        touch(tmp_path / name)
    with pytest.raises(ConversionError, match="binary version .* not supported: use the python version"):
        detect_kind(tmp_path)


def test_file_kinds(tmp_path):
    assert detect_kind(touch(tmp_path / "data.NPZ")) == "npz"
    with pytest.raises(ConversionError, match=r"x\.csv: cannot tell what this file is"):
        detect_kind(touch(tmp_path / "x.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="empty: cannot tell what this folder holds"):
        detect_kind(tmp_path / "empty")


def test_fashion_mnist_shortcut_unless_a_path_has_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_source("fashion-mnist") == FASHION_MNIST_DIR
    (tmp_path / "fashion-mnist").mkdir()
    assert resolve_source("fashion-mnist").resolve() == (tmp_path / "fashion-mnist").resolve()


def test_cifar100_through_convert_with_coarse(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    batch = {b"data": data, b"fine_labels": [5, 6, 7], b"coarse_labels": [0, 1, 0]}
    touch(tmp_path / "cifar-100-python/test", pickle.dumps(batch))
    out = convert(tmp_path, tmp_path / "o.beton", split="test", coarse=True, progress=False)
    store = fastprune.Store(out)
    assert [tuple(store[i][1:]) for i in range(3)] == [(5, 0), (6, 1), (7, 0)]


@pytest.mark.parametrize("options, message", [
    (dict(kind="npz", split="test"), "--split applies to cifar10/cifar100/hf/idx sources, not npz"),
    (dict(kind="npz", max_side=8), "--max-side/--resize apply to image folders and hf sources, not npz"),
    (dict(kind="idx", resize=(8, 8)), "apply to image folders and hf sources, not idx"),
    (dict(kind="npz", coarse=True), "--coarse applies to cifar100 sources, not npz"),
    (dict(kind="tfrecord"), "unknown source kind 'tfrecord'"),
])
def test_options_that_do_not_apply_are_refused(tmp_path, options, message):
    source = touch(tmp_path / "d.npz")
    with pytest.raises(ConversionError, match=message):
        convert(source, tmp_path / "o.beton", progress=False, **options)
    assert not (tmp_path / "o.beton").exists()
