"""Hostile inputs and destructive paths: unsafe checkpoints, outputs that would overwrite sources
or special files, non-regular files and symlinks in image folders, decompression bombs, damaged
field descriptors, stores changed under a reader, SIGTERM, and out-of-range API values.

Every refusal must leave the sources (and any existing output) byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastprune
from fastprune import CheckpointError, ConversionError, StoreError
from fastprune.convert import convert, from_cifar, from_idx, from_image_folder, from_npz
from fastprune.store import IntField, NDArrayField, Store, write_dataset
from fastprune.store import format as fmt


def _digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _npz(path: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), labels=np.arange(n) % 3)
    return path


def _jpeg_bytes(height: int = 16, width: int = 16, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _claim_size(jpeg: bytes, height: int, width: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming height x width; the data stays tiny."""
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _image_folder(root: Path, classes=("a", "b"), per_class: int = 2) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(_jpeg_bytes(seed=10 * c + i))
    return root


# --- 1. checkpoints never execute code ------------------------------------------------------------

class _Payload:
    """Pickles to a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    from fastprune.train import load_checkpoint, make_optimizer

    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.pt"
    torch.save({"format": "fastprune-checkpoint-2", "model": _Payload(marker)}, checkpoint)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="evil.pt: not a loadable fastprune checkpoint") as error:
        load_checkpoint(checkpoint, model, make_optimizer(model))
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_resume_refuses_other_settings_and_models_in_one_line(tmp_path):
    from fastprune.train import load_checkpoint, make_optimizer, save_checkpoint

    model = torch.nn.Linear(2, 2)
    checkpoint = tmp_path / "run.pt"
    history = [{"epoch": 0}]
    save_checkpoint(checkpoint, model, make_optimizer(model), None, None, None, history,
                    settings={"lr": 1.2, "epochs": 10})
    with pytest.raises(CheckpointError, match=r"other settings \(lr=1.2 in the checkpoint, 0.4 now\)") as error:
        load_checkpoint(checkpoint, model, make_optimizer(model), settings={"lr": 0.4, "epochs": 10})
    assert "\n" not in str(error.value)
    other = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match="does not fit this run's model") as error:
        load_checkpoint(checkpoint, other, make_optimizer(other), settings={"lr": 1.2, "epochs": 10})
    assert "\n" not in str(error.value)
    assert load_checkpoint(checkpoint, model, make_optimizer(model),
                           settings={"lr": 1.2, "epochs": 10}) == (1, history)


def test_fit_refuses_to_resume_with_another_epoch_count_or_strategy(tmp_path):
    from fastprune.train import fit

    store = tmp_path / "s.beton"
    rng = np.random.default_rng(0)
    fastprune.convert.from_arrays(rng.integers(0, 256, (64, 4, 4, 3), dtype=np.uint8), np.arange(64) % 2,
                                  store, progress=False)
    loader = fastprune.Loader(store, 32, threads=1, transforms=[fastprune.loader.Normalize()])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    checkpoint = tmp_path / "run.pt"
    fit(model, loader, None, fastprune.UCB(64, keep=0.5), 1, checkpoint=checkpoint, progress=False, log=None)
    with pytest.raises(CheckpointError, match=r"epochs=1 in the checkpoint, 2 now"):
        fit(model, loader, None, fastprune.UCB(64, keep=0.5), 2, checkpoint=checkpoint, resume=True,
            progress=False, log=None)
    with pytest.raises(CheckpointError, match=r"strategy.*'UCB' vs 'EpsilonGreedy'"):
        fit(model, loader, None, fastprune.EpsilonGreedy(64, keep=0.5), 1, checkpoint=checkpoint,
            resume=True, progress=False, log=None)


# --- 2. --out never destroys data ----------------------------------------------------------------

def test_output_that_is_the_input_is_refused_and_nothing_changes(tmp_path):
    source = _npz(tmp_path / "src.npz")
    link = tmp_path / "link.beton"
    link.symlink_to(source)
    hard = tmp_path / "hard.beton"
    os.link(source, hard)
    before = _digest([source])
    for out in (source, link, hard, tmp_path / "." / "src.npz"):
        with pytest.raises(ConversionError, match="is the input file"):
            from_npz(source, out, progress=False)
    assert _digest([source]) == before and link.is_symlink()


def test_output_onto_an_idx_cifar_or_image_folder_input_is_refused(tmp_path, fashion_mnist_dir):
    idx = tmp_path / "idx"
    idx.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (idx / name).write_bytes((fashion_mnist_dir / name).read_bytes())
    before = _digest(idx.iterdir())
    with pytest.raises(ConversionError, match="is the input file"):
        from_idx(idx, idx / "t10k-labels-idx1-ubyte.gz", split="test", progress=False)
    assert _digest(idx.iterdir()) == before

    folder = _image_folder(tmp_path / "photos")
    target = folder / "b" / "1.jpg"
    before = _digest([target])
    for jpeg in (False, True):
        with pytest.raises(ConversionError, match="is the input file"):
            from_image_folder(folder, target, jpeg=jpeg, progress=False)
    assert _digest([target]) == before

    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    (cifar / "data_batch_1").write_bytes(b"not really a batch")
    with pytest.raises(ConversionError, match="is the input file"):
        convert(cifar, cifar / "data_batch_1", progress=False)
    assert (cifar / "data_batch_1").read_bytes() == b"not really a batch"


def test_a_store_written_through_a_link_replaces_its_target_and_keeps_its_mode(tmp_path, monkeypatch):
    """The store writer and the log writer share one atomic write (store/_atomic.replaced_when_done):
    a store re-converted through a link (current.beton -> v2/data.beton) used to replace the link
    with a plain file and reset a 0640 store to 0644; logs already followed links and kept modes."""
    from fastprune.store import _atomic

    (tmp_path / "v2").mkdir()
    target = _raw_store(tmp_path / "v2" / "data.beton", n=8)
    target.chmod(0o640)
    link = tmp_path / "current.beton"
    link.symlink_to(target)
    _raw_store(link, n=16)
    assert link.is_symlink() and len(Store(target)) == 16 and target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in (tmp_path / "v2").iterdir()) == ["data.beton"]

    # Unlike a log, a store is never rewritten in place where its folder takes no new file: a reader
    # mapping it would see it change under it.
    def folder_takes_no_new_file(name):
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(_atomic, "create_exclusive", folder_takes_no_new_file)
    with pytest.raises(ConversionError, match=f"cannot write {link}: Permission denied"):
        _raw_store(link, n=4)
    assert len(Store(target)) == 16


def test_output_that_is_a_fifo_or_device_is_left_alone(tmp_path):
    source = _npz(tmp_path / "src.npz")
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConversionError, match="exists and is not a regular file \\(a FIFO\\)"):
        from_npz(source, fifo, progress=False)
    assert fifo.is_fifo()
    if os.geteuid() == 0:  # a private twin of /dev/null: never point a test at the real one
        device = tmp_path / "null"
        os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))
        with pytest.raises(ConversionError, match="a character device"):
            from_npz(source, device, progress=False)
        assert device.is_char_device()


# --- 3. image folders: regular files only, symlinks followed ------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("jpeg", [False, True])
def test_a_fifo_named_like_an_image_is_skipped_not_waited_for(tmp_path, jpeg):
    folder = _image_folder(tmp_path / "photos")
    os.mkfifo(folder / "a" / "stuck.jpg")
    (folder / "a" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.warns(fastprune.errors.SourceWarning, match="a/dangling.jpg"):  # the FIFO goes unsaid
        out = from_image_folder(folder, tmp_path / "o.beton", jpeg=jpeg, progress=False)
    assert len(Store(out)) == 4


def test_symlinked_class_folders_and_loops_are_followed_once(tmp_path):
    elsewhere = _image_folder(tmp_path / "shared", classes=("c",), per_class=3)
    folder = _image_folder(tmp_path / "photos")
    (folder / "c").symlink_to(elsewhere / "c", target_is_directory=True)
    (folder / "a" / "loop").symlink_to(folder / "a", target_is_directory=True)
    paths, labels, classes = fastprune.convert.image_folder.scan_image_folder(folder)
    assert classes == ["a", "b", "c"]
    assert np.bincount(labels).tolist() == [2, 2, 3]


def test_a_dangling_link_named_like_an_image_is_left_out_with_a_warning(tmp_path):
    """A dataset assembled from links whose target is gone has lost that image: it was dropped with
    no word, while files of other extensions are counted in a warning."""
    from fastprune.errors import SourceWarning

    folder = _image_folder(tmp_path / "photos")
    (folder / "a" / "gone.jpg").symlink_to(tmp_path / "missing" / "photo.jpg")
    (folder / "a" / "notes").symlink_to(tmp_path / "missing" / "notes")  # not named like an image: not counted
    with pytest.warns(SourceWarning, match=r"left out 1 link named like an image that points to nothing "
                                           r"\(e.g. a/gone.jpg -> .*missing/photo.jpg\)"):
        paths, labels, _ = fastprune.convert.image_folder.scan_image_folder(folder)
    assert np.bincount(labels).tolist() == [2, 2] and all(path.name != "gone.jpg" for path in paths)


# --- 4. decompression bombs ---------------------------------------------------------------------

@pytest.mark.parametrize("jpeg", [False, True])
@pytest.mark.parametrize("side", [12000, 65000])
def test_an_image_claiming_huge_dimensions_is_refused_before_decoding(tmp_path, jpeg, side):
    folder = _image_folder(tmp_path / "photos")
    bomb = folder / "b" / "bomb.jpg"
    bomb.write_bytes(_claim_size(_jpeg_bytes(), side, side))
    out = tmp_path / "o.beton"
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match="bomb.jpg: .*exceeds") as error:
            from_image_folder(folder, out, jpeg=jpeg, workers=1, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if side == 12000:  # under PIL's own hard limit (2 x 89.5 Mpx): fastprune's limit refuses it
        assert "12000x12000 = 144,000,000 pixels exceeds the limit of 67,108,864" in str(error.value)
    assert "--max-pixels" in str(error.value) and "\n" not in str(error.value)
    assert peak < 64 * 2**20 and not out.exists()


def test_the_pixel_limit_is_an_option_and_truncated_images_are_errors(tmp_path):
    folder = _image_folder(tmp_path / "photos")  # 16x16 images: 256 pixels
    with pytest.raises(ConversionError, match="exceeds the limit of 255"):
        from_image_folder(folder, tmp_path / "o.beton", max_pixels=255, progress=False)
    assert len(Store(from_image_folder(folder, tmp_path / "o.beton", max_pixels=256, progress=False))) == 4
    whole = _jpeg_bytes(128, 128)
    (folder / "a" / "0.jpg").write_bytes(whole[:len(whole) * 3 // 5])  # header intact, data cut
    with pytest.raises(ConversionError, match="0.jpg: cannot decode image: image file is truncated"):
        from_image_folder(folder, tmp_path / "t.beton", jpeg=True, progress=False)
    assert not (tmp_path / "t.beton").exists()


def test_the_cli_takes_the_pixel_limit(tmp_path, capsys):
    from fastprune.cli import main

    folder = _image_folder(tmp_path / "photos")
    assert main(["convert", str(folder), "--out", str(tmp_path / "c.beton"), "--max-pixels", "100"]) == 1
    assert "exceeds the limit of 100 " in capsys.readouterr().err
    assert not (tmp_path / "c.beton").exists()
    assert main(["convert", str(folder), "--out", str(tmp_path / "c.beton"), "--max-pixels", "256",
                 "--no-progress"]) == 0


def _idx_header(dims) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def test_a_gzip_idx_bomb_is_not_inflated_past_its_header(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    labels = np.arange(10, dtype=np.uint8) % 3
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx_header((10,)) + labels.tobytes())
    images = folder / "train-images-idx3-ubyte.gz"
    zeros = bytes(2**20)
    with gzip.open(images, "wb", compresslevel=9) as file:  # says 10 images, inflates to 256 MiB
        file.write(_idx_header((10, 28, 28)))
        for _ in range(256):
            file.write(zeros)
    assert images.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match=r"shape \(10, 28, 28\) \(7856 bytes\) but the file holds more"):
            from_idx(folder, tmp_path / "o.beton", progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20

    with gzip.open(images, "wb") as file:  # claims 60000 x 60000 x 60000 bytes in a tiny stream
        file.write(_idx_header((60000, 60000, 60000)))
    with pytest.raises(ConversionError, match="but the file holds a [0-9]+-byte gzip stream"):
        from_idx(folder, tmp_path / "o.beton", progress=False)


def test_idx_dimensions_whose_product_wraps_are_a_size_error(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx_header((4,)) + bytes(4))
    big = 2**32 - 1  # (2^32-1)^3 wraps to a small number in int64 arithmetic
    (folder / "train-images-idx3-ubyte").write_bytes(_idx_header((big, big, big)) + bytes(64))
    with pytest.raises(ConversionError, match="IDX header says shape"):
        from_idx(folder, tmp_path / "o.beton", progress=False)


# --- 5. damaged stores raise StoreError only ---------------------------------------------------------

def _ndarray_store(path: Path) -> tuple[Path, int]:
    """A store with one NDArray field; returns it and the offset of that field's descriptor args."""
    rows = [(np.arange(6, dtype=np.float32).reshape(2, 3) + i, i) for i in range(4)]
    write_dataset(path, rows, {"x": NDArrayField(np.float32, (2, 3)), "y": IntField()}, workers=1,
                  progress=False)
    args = fmt.HEADER_TYPE.itemsize + fmt.FIELD_DESC_TYPE.fields["arguments"][1]
    return path, args


@pytest.mark.parametrize("sides", [(2**63 - 1, 2), (2**62, 4), (2**32, 2**32), (2**64 - 1,)])
def test_an_ndarray_shape_near_2_to_the_63_is_a_store_error(tmp_path, sides):
    path, args = _ndarray_store(tmp_path / "s.beton")
    data = bytearray(path.read_bytes())
    for k, side in enumerate(sides):
        data[args + 8 * k:args + 8 * k + 8] = struct.pack("<Q", side)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="field 'x'"):
        Store(path)


# --- 6. a store changed in place under a reader ---------------------------------------------------------

def _raw_store(path: Path, n: int = 64) -> Path:
    rng = np.random.default_rng(0)
    return fastprune.convert.from_arrays(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                                         np.arange(n) % 4, path, progress=False)


PROBE = textwrap.dedent("""
    import os, sys, shutil
    import fastprune
    path, how = sys.argv[1], sys.argv[2]
    store = fastprune.Store(path)
    loader = fastprune.Loader(store, 16, threads=1, shuffle=False)
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, size // 3)
    else:  # what `cp other.beton store.beton` does: rewrite the same file in place
        data = open(sys.argv[3], "rb").read()
        with open(path, "r+b") as f:
            f.write(data)
        os.utime(path, ns=(0, 0))
    try:
        for batch in loader:
            pass
    except fastprune.StoreError as exc:
        print("StoreError:", exc)
        try:
            store[0]
        except fastprune.StoreError:
            print("getitem refused too")
        sys.exit(3)
    print("no error")
""")


@pytest.mark.parametrize("how", ["truncate", "overwrite"])
def test_a_store_changed_in_place_stops_with_a_store_error_not_sigbus(tmp_path, how):
    path = _raw_store(tmp_path / "s.beton")
    other = _raw_store(tmp_path / "other.beton")
    result = subprocess.run([sys.executable, "-c", PROBE, str(path), how, str(other)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr[-2000:])
    assert "changed in place while open" in result.stdout and "getitem refused too" in result.stdout


# --- 7. SIGTERM, API ranges, checkpointed selections -----------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_during_a_conversion_removes_the_temp_file(fashion_mnist_dir, tmp_path):
    out = tmp_path / "fm.beton"
    command = [sys.executable, "-m", "fastprune", "convert", "fashion-mnist", "--split", "train", "--jpeg",
               "--workers", "1", "--no-progress", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".fm.beton.*.tmp")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    assert list(tmp_path.glob(".fm.beton.*.tmp")), "the conversion never started writing"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.strip() == "fastprune convert: terminated"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_during_training_ends_in_one_line_and_the_run_resumes(tmp_path):
    """SIGTERM (a scheduler's stop) killed `fastprune train` with no message; it now ends as
    Ctrl-C does, and --resume continues from the last checkpoint."""
    from fastprune.convert import from_arrays
    rng = np.random.default_rng(0)
    store = from_arrays(rng.integers(0, 256, (8192, 16, 16, 3), dtype=np.uint8), np.arange(8192) % 4,
                        tmp_path / "s.beton", progress=False)  # epochs of seconds: the signal comes within one
    checkpoint = tmp_path / "run.pt"
    command = [sys.executable, "-m", "fastprune", "train", "--train", str(store), "--val", str(store),
               "--epochs", "3", "--width", "8", "--threads", "1", "--no-progress", "--checkpoint", str(checkpoint)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 200
    while not checkpoint.exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "fastprune train: terminated" and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt", "s.beton"]  # no .partial left
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=200)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr, resumed.stderr


def test_a_crop_larger_than_max_image_pixels_is_refused_when_the_loader_is_built(tmp_path):
    """RandomResizedCrop(2**20) was accepted and the first batch raised MemoryError (a terapixel
    per image); the size now stays within what a decoded image may have."""
    from fastprune.loader import transforms as T

    store = _raw_store(tmp_path / "s.beton")
    with pytest.raises(ValueError, match=r"transforms\[0\] makes 1048576x1048576 images, more than "
                                         r"max_image_pixels \(134217728\) pixels each"):
        fastprune.Loader(store, 8, transforms=[T.RandomResizedCrop(2**20)])
    with pytest.raises(ValueError, match=r"transforms\[1\] makes 64x64 images, more than max_image_pixels \(1100\)"):
        fastprune.Loader(store, 8, transforms=[T.CenterCrop(16), T.RandomResizedCrop(64)], max_image_pixels=1100)
    with pytest.raises(ValueError, match=r"transforms\[0\] makes 40x40 images"):  # padding grows a raw image
        fastprune.Loader(store, 8, transforms=[T.RandomCrop(40, padding=4)], max_image_pixels=40 * 40 - 1)
    batch = next(iter(fastprune.Loader(store, 8, transforms=[T.RandomResizedCrop(32)], max_image_pixels=32 * 32)))
    assert tuple(batch[0].shape[1:3]) == (32, 32)  # exactly the limit is allowed


def test_out_of_range_seeds_and_epochs_fail_where_they_are_given(tmp_path):
    store = _raw_store(tmp_path / "s.beton")
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 18446744073709551615\], got -1"):
        fastprune.Loader(store, 8, seed=-1)
    with pytest.raises(ValueError, match="seed must be an integer in"):
        fastprune.Loader(store, 8, seed=2**64)
    with pytest.raises(ValueError, match="seed must be an integer in"):
        fastprune.UCB(10, keep=0.5, seed=2**64)
    strategy = fastprune.EpsilonGreedy(10, keep=0.5, seed=2**64 - 1)
    assert len(strategy.select(2**31 - 1)) == 5
    for call in (strategy.select, strategy.num_selected, fastprune.Loader(store, 8).set_epoch):
        with pytest.raises(ValueError, match=r"epoch must be an integer in \[0, 2147483647\]"):
            call(2**31)
        with pytest.raises(ValueError, match="epoch must be an integer in"):
            call(2**64)


def test_an_empty_update_is_a_no_op():
    strategy = fastprune.UCB(10, keep=0.5)
    before = strategy.state_dict()["table"]
    assert strategy.update([], []) == 0
    assert strategy.update(np.array([], dtype=np.float64), torch.tensor([])) == 0
    for name, value in strategy.state_dict()["table"].items():
        assert torch.equal(value, before[name])


def test_a_checkpointed_selection_with_indices_out_of_range_is_refused():
    strategy = fastprune.UCB(10, keep=0.5)
    strategy.select(0)
    state = strategy.state_dict()
    state["cache"]["indices"][0] = 10
    with pytest.raises(ValueError, match=r"index 10 outside \[0, 10\)"):
        fastprune.UCB(10, keep=0.5).load_state_dict(state)
    state["cache"]["indices"][0] = -1
    with pytest.raises(ValueError, match="index -1 outside"):
        fastprune.UCB(10, keep=0.5).load_state_dict(state)


def test_a_full_disk_names_the_output_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """ENOSPC while writing said only "[Errno 28] No space left on device"; a read-only folder
    named the hidden temporary file. Both now name the output asked for."""
    import errno

    from fastprune.convert import from_arrays
    from fastprune.store import _atomic, writer

    def full(self, chunk):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer._FileWriter, "add_chunk", full)
    out = tmp_path / "x.beton"
    with pytest.raises(ConversionError, match=r"cannot write .*x\.beton: No space left on device"):
        from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), out, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []

    def read_only(name):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)

    monkeypatch.setattr(_atomic, "create_exclusive", read_only)
    with pytest.raises(ConversionError, match=r"cannot write .*x\.beton: Permission denied$"):
        from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), out, progress=False, workers=1)


def test_hand_built_selections_samplers_and_options_fail_in_one_line_naming_the_argument():
    """Seen as AttributeError ('list' object has no attribute 'shape'), a raw '<=' TypeError, and
    an id past int64 reported as -9223372036854775803."""
    import numpy as np
    import pytest

    from fastprune import UCB, PrunedSampler, Selection, WithIndices

    selection = Selection([2, 0], [1.0, 0.5])  # lists, as a hand-written sampler may return
    assert selection.indices.dtype == np.int64 and selection.weights.dtype == np.float32 and len(selection) == 2
    with pytest.raises(TypeError, match="Selection indices must be integers, got float64"):
        Selection([2.7], [1.0])
    with pytest.raises(TypeError, match="Selection indices must be integers, got float64"):
        Selection.unweighted([2.7])  # it cast to int64 first, cutting 2.7 to 2
    assert Selection.unweighted(range(3)).weights.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(IndexError, match="Selection index 9223372036854775813 is past int64"):
        Selection(np.array([2**63 + 5], np.uint64), [1.0])
    with pytest.raises(ValueError, match=r"1-D of one length, got shapes \(2,\) and \(1,\)"):
        Selection([1, 2], [1.0])
    with pytest.raises(TypeError, match="^PrunedSampler takes a strategy .*got list"):
        PrunedSampler([1, 2, 3])
    with pytest.raises(TypeError, match="decay must be a number in \\[0, 1\\) or None .*got 'x'"):
        UCB(10, decay="x")
    with pytest.raises(IndexError, match="indices\\[1\\] = 18446744073709551615 is out of range"):
        UCB(10).update(np.array([1, 2**64 - 1], np.uint64), np.ones(2))
    import torch.utils.data
    assert isinstance(WithIndices([1, 2]), torch.utils.data.Dataset)  # what DataLoader's annotations expect
    assert repr(WithIndices([1, 2])) == "WithIndices(list of 2, key='index')"


def test_reprs_name_what_tells_one_strategy_sampler_or_table_from_another():
    """Strategy reprs showed num_samples, keep and seed only (two UCBs of other c looked alike);
    ScoreTable and PrunedSampler had object's default repr."""
    from fastprune import UCB, EpsilonGreedy, InfoBatch, PrunedSampler

    assert repr(UCB(100, c=2.0, bonus="var", seed=3)) == "UCB(num_samples=100, keep=0.5, c=2.0, bonus='var', seed=3)"
    assert repr(EpsilonGreedy(10, 0.3, eps=0.1, reselect_every=2)) == \
        "EpsilonGreedy(num_samples=10, keep=0.3, eps=0.1, seed=0, reselect_every=2)"
    assert "delta=0.875" in repr(InfoBatch(50, epochs=10)) and "epochs=10" in repr(InfoBatch(50, epochs=10))
    strategy = UCB(100, score_dtype="bfloat16")
    assert repr(strategy.table) == "ScoreTable(num_samples=100, decay=0.7, dtype='bfloat16')"
    assert repr(PrunedSampler(strategy)) == f"PrunedSampler({strategy!r}, epoch=0, seed=0, shuffle=True)"


# --- 5. untrusted files claiming more than they hold (security audit) ---------------------------------

class _ClaimedArray:
    """Pickles as a call of an allowed numpy global with a shape and no data."""

    def __init__(self, call, shape):
        self.call, self.shape = call, shape

    def __reduce__(self):
        return (self.call, self.shape)


@pytest.mark.parametrize("route", ["ndarray", "reconstruct"])
def test_a_cifar_pickle_cannot_claim_memory_it_does_not_hold(tmp_path, route):
    """numpy.ndarray((N, 3072)) or _reconstruct(ndarray, (N, 3072), ...) in a 240-byte batch
    allocated N x 3 KB of uninitialised memory and stored it as images."""
    from numpy._core.multiarray import _reconstruct
    n = 200_000  # 586 MiB claimed
    claim = (_ClaimedArray(np.ndarray, ((n, 3072), np.dtype("u1"))) if route == "ndarray"
             else _ClaimedArray(_reconstruct, (np.ndarray, (n, 3072), b"b")))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": claim, b"labels": [0]}, protocol=2))
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match="data_batch_1: cannot read as a CIFAR batch pickle: refused"):
            from_cifar(tmp_path, tmp_path / "o.beton", kind="cifar10", progress=False, workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20 and not (tmp_path / "o.beton").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("special", ["device", "fifo"])
def test_a_hugging_face_image_path_must_be_a_regular_file(tmp_path, special):
    """An encoded image's "path" (a parquet row's) naming /dev/zero read until memory ran out; a
    FIFO blocked forever."""
    from fastprune.convert import from_torch_dataset
    path = "/dev/zero" if special == "device" else tmp_path / "pipe.png"
    if special == "fifo":
        os.mkfifo(path)
    rows = [{"image": {"bytes": _jpeg_bytes(), "path": None}, "label": 0},
            {"image": {"bytes": None, "path": str(path)}, "label": 1}]
    with pytest.raises(ConversionError, match=f"{path}.*not a regular file"):
        from_torch_dataset(rows, tmp_path / "o.beton", jpeg=True, progress=False, workers=1)
    assert not (tmp_path / "o.beton").exists()


@pytest.mark.parametrize("jpeg", [False, True])
def test_an_image_file_larger_than_any_allowed_image_is_not_read(tmp_path, jpeg):
    """A valid PNG followed by GiBs of (sparse) zeros was read whole before any check."""
    folder = _image_folder(tmp_path / "photos")
    padded = folder / "b" / "padded.png"
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "PNG")  # the folder's size: raw storage takes it
    padded.write_bytes(buf.getvalue())
    os.truncate(padded, 1 << 30)  # 1 GiB, sparse: a few KB on disk
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match=r"padded.png: 1,073,741,824 bytes is more than an image of at "
                                                  r"most 256 pixels takes"):
            from_image_folder(folder, tmp_path / "o.beton", jpeg=jpeg, max_pixels=256, workers=1, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def _progressive_jpeg(side: int, scans: int) -> bytes:
    """A gray progressive JPEG of ``scans`` AC scans that each skip every block (EOB runs): tiny,
    and every scan is a pass over the whole image for a decoder without a scan limit."""
    def segment(marker: int, body: bytes) -> bytes:
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body

    def huffman(table: int, symbol: int) -> bytes:  # one 1-bit code
        return segment(0xC4, bytes([table]) + bytes([1] + [0] * 15) + bytes([symbol]))

    bits, left = "", (side // 8) ** 2
    while left > 0:  # EOB-run codes (symbol 0xE0: 14 more bits), each skipping up to 32767 blocks
        run = min(left, 32767)
        bits, left = bits + "0" + format(run - 16384, "014b"), left - run
    bits += "1" * (-len(bits) % 8)
    data = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    head = (b"\xff\xd8" + segment(0xDB, b"\x00" + b"\x01" * 64)
            + segment(0xC2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00")
            + huffman(0x00, 0x00) + huffman(0x10, 0xE0))
    return head + (segment(0xDA, b"\x01\x01\x00" + bytes([1, 63, 0])) + data) * scans + b"\xff\xd9"


def test_the_converter_keeps_the_loaders_limit_on_jpeg_scans(tmp_path):
    """PIL decodes any number of scans: 5000 in a 485 KB file took 20 s of CPU to convert, while
    the loader's decoder refuses more than 500."""
    folder = _image_folder(tmp_path / "photos")
    (folder / "b" / "scans.jpg").write_bytes(_progressive_jpeg(1024, 501))
    with pytest.raises(ConversionError, match="scans.jpg: JPEG has more than 500 scans"):
        from_image_folder(folder, tmp_path / "o.beton", resize=(16, 16), workers=1, progress=False)
    buf = io.BytesIO()  # a real progressive JPEG (about 10 scans) is converted
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
        buf, "JPEG", progressive=True)
    (folder / "b" / "scans.jpg").write_bytes(buf.getvalue())
    out = from_image_folder(folder, tmp_path / "o.beton", resize=(16, 16), workers=1, progress=False)
    assert len(Store(out)) == 5


def test_the_converter_checks_decode_time_not_the_loaders_coefficient_memory():
    """The converter's PIL decode holds no coefficients the loader's limit is about: a genuine
    6800x6800 progressive 4:4:4 photo (46 Mpx, under the converter's pixel limit) was refused for
    needing 396 MiB of them, naming max_image_pixels, a Loader option."""
    from fastprune._native import core
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buf, "JPEG", progressive=True, subsampling=0)  # 4:4:4: 3 x 64 blocks of 128 bytes + 3 per pixel
    data = np.frombuffer(buf.getvalue(), np.uint8)
    with pytest.raises(ValueError, match="needs .* MiB to decode .* max_image_pixels"):
        core.decode_jpeg(data, max_pixels=4096)  # the loader's decoder: 36,864 bytes > 3 x 4096
    assert core.check_jpeg_cost(data, 4096) == ""
    assert "more than 500 scans" in core.check_jpeg_cost(np.frombuffer(_progressive_jpeg(1024, 501), np.uint8))


def test_a_class_folder_named_in_another_encoding_converts(tmp_path):
    """A Latin-1 folder name ("caf\\xe9") reached the store's UTF-8 names as lone surrogates and
    stopped the conversion with a UnicodeEncodeError traceback."""
    root = tmp_path / "photos"
    for name in (b"caf\xe9", b"tea"):
        folder = Path(os.fsdecode(bytes(root) + b"/" + name))
        folder.mkdir(parents=True)
        (folder / "0.jpg").write_bytes(_jpeg_bytes())
    store = Store(from_image_folder(root, tmp_path / "o.beton", progress=False))
    assert store.class_names == ["caf\\xe9", "tea"]
    from fastprune.convert import from_arrays  # a lone surrogate no file name decodes to
    names = Store(from_arrays(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], tmp_path / "n.beton",
                              class_names=["x\ud800", "y"], progress=False)).class_names
    assert names == ["x\\ud800", "y"]


def test_a_npy_or_junk_named_npz_is_refused_in_one_line(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 4, 3), np.uint8))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    with pytest.raises(ConversionError, match=r"a.npz: a .npy file \(one array\), not a .npz archive"):
        from_npz(tmp_path / "a.npz", tmp_path / "o.beton", progress=False)
    (tmp_path / "b.npz").write_bytes(b"not an archive")  # numpy took it for a pickle and said allow_pickle
    with pytest.raises(ConversionError, match="b.npz: cannot read as .npz: not a zip archive"):
        from_npz(tmp_path / "b.npz", tmp_path / "o.beton", progress=False)


def test_class_names_are_text_in_plots_and_distinct_in_accuracies(tmp_path):
    """A class named "$\\bad$" made the kept-images grid a matplotlib parse error; two classes
    sharing a name (ImageNet's two "crane"s) shared one val_class_acc entry."""
    pytest.importorskip("matplotlib")
    from fastprune.convert import from_arrays
    from fastprune.prune import kept_grid
    from fastprune.train.loop import class_accuracies
    rng = np.random.default_rng(0)
    store = from_arrays(rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), np.arange(12) % 3, tmp_path / "s.beton",
                        class_names=["$\\bad$", "crane", "crane"], progress=False)
    strategy = fastprune.UCB(12, keep=0.5)
    strategy.select(0)
    strategy.update(np.arange(12), np.linspace(0.1, 1.2, 12))
    assert kept_grid(strategy, store, tmp_path / "g.png").stat().st_size > 0
    accuracies = class_accuracies(torch.tensor([1, 2, 0]), torch.tensor([4, 4, 4]), ["$\\bad$", "crane", "crane"])
    assert accuracies == {"$\\bad$": 25.0, "crane (1)": 50.0, "crane (2)": 0.0}
