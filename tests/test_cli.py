"""The ``fastprune`` command line: convert (real Fashion-MNIST and generated sources) and info."""

from __future__ import annotations

import gzip
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fastprune
from fastprune.cli import main


def idx_payload(path, header_size):
    """The raw values of an IDX file, read independently of the converter."""
    return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=header_size)


@pytest.fixture(scope="module")
def fashion_train_store(fashion_mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "fashion-train.beton"
    assert main(["convert", "fashion-mnist", "--out", str(out), "--no-progress"]) == 0
    return out


def test_fashion_mnist_train_split_converts_completely(fashion_train_store, fashion_mnist_dir):
    store = fastprune.Store(fashion_train_store)
    assert len(store) == 60000
    assert list(store.fields) == ["image", "label"]
    labels = np.array([store[i][1] for i in range(len(store))])
    assert np.bincount(labels).tolist() == [6000] * 10

    expected_labels = idx_payload(fashion_mnist_dir / "train-labels-idx1-ubyte.gz", 8)
    np.testing.assert_array_equal(labels, expected_labels)
    pixels = idx_payload(fashion_mnist_dir / "train-images-idx3-ubyte.gz", 16).reshape(60000, 28, 28)
    for index in (0, 1, 31337, 59999):
        image = store[index][0]
        assert image.shape == (28, 28, 3)
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel], pixels[index])


def test_info_describes_and_verifies(fashion_train_store, capsys):
    assert main(["info", str(fashion_train_store), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "60000" in printed
    assert "RGBImageField" in printed and "IntField" in printed
    assert printed.count("6000 ") >= 10  # one histogram row per class
    assert "verify:" in printed and "OK" in printed


def test_info_on_damaged_file_fails_with_one_line(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(4))
    out = tmp_path / "d.beton"
    assert main(["convert", str(tmp_path / "d.npz"), "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    out.write_bytes(out.read_bytes()[:-100])  # lose the end of the file
    assert main(["info", str(out), "--verify"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("fastprune info: error: ") and str(out) in error
    assert error.count("\n") == 1


def test_python_m_fastprune_reports_errors_without_traceback(tmp_path):
    missing = tmp_path / "missing.beton"
    result = subprocess.run([sys.executable, "-m", "fastprune", "info", str(missing)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(missing) in result.stderr


def test_info_and_convert_do_not_import_torch(tmp_path):
    # train/bench parsers import torch (~2 s); only those subcommands may pay for it.
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(2))
    out = tmp_path / "d.beton"
    script = (f"import sys; from fastprune.cli import main\n"
              f"assert main(['convert', {str(tmp_path / 'd.npz')!r}, '-o', {str(out)!r}, '--no-progress']) == 0\n"
              f"assert main(['info', {str(out)!r}]) == 0\n"
              f"print('torch imported:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout


def test_loading_and_training_do_not_import_opencv(tmp_path):
    """OpenCV (optional; ffcv's encoder) is imported at the first resize or JPEG encode, not by
    `import fastprune`: importing it starts its BLAS threads in every process that only trains.
    A resize (what a conversion that shrinks images runs) imports it where it is installed."""
    pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), labels=np.arange(8) % 2)
    store = tmp_path / "d.beton"
    script = ("import sys; import fastprune, fastprune.prune, fastprune.train\n"
              "from fastprune.cli import main; from fastprune.loader import Loader, RandomCrop\n"
              f"assert main(['convert', {str(tmp_path / 'd.npz')!r}, '-o', {str(store)!r}, '--no-progress']) == 0\n"
              f"assert main(['info', {str(store)!r}]) == 0\n"
              f"loader = Loader({str(store)!r}, 4, transforms=[RandomCrop(padding=2)])\n"
              "assert sum(len(b.images) for b in loader) == 8\n"
              "print('before a resize:', 'cv2' in sys.modules)\n"
              "from fastprune.store.images import resize_image\n"
              "resize_image(__import__('numpy').zeros((8, 8, 3), 'uint8'), 4, 4)\n"
              "print('after a resize:', 'cv2' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "before a resize: False" in result.stdout and "after a resize: True" in result.stdout


def test_help_lists_every_command_and_builds_the_one_asked_for(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    for command in ("convert", "info", "train", "bench"):
        assert re.search(rf"^\s+{command}\s+\S", listing, re.M), command
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--strategy" in capsys.readouterr().out  # the full parser, not the stub
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--quick" in capsys.readouterr().out


def test_image_folder_via_cli_with_jpeg_and_max_side(tmp_path, capsys):
    for name, shape in [("b/x.png", (30, 60)), ("a/y.jpg", (12, 12))]:
        (tmp_path / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*shape, 3), 90, np.uint8)).save(tmp_path / "tree" / name)
    out = tmp_path / "f.beton"
    code = main(["convert", str(tmp_path / "tree"), "--out", str(out), "--jpeg", "--quality", "80",
                 "--max-side", "20", "--workers", "1", "--no-progress"])
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    store = fastprune.Store(out)
    assert [(store[i][0].shape, store[i][1]) for i in range(2)] == [((12, 12, 3), 0), ((10, 20, 3), 1)]
    assert store.fields["image"].jpeg_quality == 80


def test_cifar10_folder_is_detected(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    images = np.random.default_rng(1).integers(0, 256, (2, 3072), dtype=np.uint8)
    (batches / "test_batch").write_bytes(pickle.dumps({"data": images, "labels": [4, 2]}))
    out = tmp_path / "c.beton"
    assert main(["convert", str(tmp_path), "-o", str(out), "--split", "test", "--no-progress"]) == 0
    store = fastprune.Store(out)
    assert [store[i][1] for i in range(len(store))] == [4, 2]
    np.testing.assert_array_equal(store[1][0], images[1].reshape(3, 32, 32).transpose(1, 2, 0))


@pytest.mark.parametrize("arguments, message", [
    (["--split", "test"], "--split applies to cifar10/cifar100/hf/idx sources, not imagefolder"),
    (["--kind", "cifar10"], "no CIFAR-10 training batches"),
    ([], r"raw storage needs one image shape, but .*a[/\\]1\.png is 4x4x3 and .*b[/\\]2\.png is 5x4x3"),
    # a resize target is bounded like a source image (99999x99999 drove a 24 GiB machine out of memory)
    (["--resize", "99999x99999"], r"resize 99999x99999 = 9,999,800,001 pixels exceeds the limit of 67,108,864; "
                                  "raise it with --max-pixels"),
    (["--resize", "8x8", "--max-pixels", "63"], "resize 8x8 = 64 pixels exceeds the limit of 63"),
])
def test_convert_errors_are_one_line_and_leave_no_file(tmp_path, capsys, arguments, message):
    for name, height in [("a/1.png", 4), ("b/2.png", 5)]:
        (tmp_path / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((height, 4, 3), np.uint8)).save(tmp_path / "tree" / name)
    out = tmp_path / "o.beton"
    assert main(["convert", str(tmp_path / "tree"), "-o", str(out), "--no-progress", *arguments]) == 1
    error = capsys.readouterr().err
    assert error.startswith("fastprune convert: error: ") and error.count("\n") == 1
    assert re.search(message, error), error
    assert not out.exists()


def test_unknown_source_and_bad_arguments(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nothing"), "-o", str(tmp_path / "o.beton")]) == 1
    assert "source not found" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["convert", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "o.beton")]) == 1
    assert "cannot tell what this file is" in capsys.readouterr().err
    for bad in (["--quality", "0"], ["--max-side", "-3"], ["--resize", "32"], ["--max-side", "4", "--resize", "4x4"]):
        with pytest.raises(SystemExit) as exit_:
            main(["convert", str(tmp_path), "-o", str(tmp_path / "o.beton"), *bad])
        assert exit_.value.code == 2
    assert main([]) == 2
    capsys.readouterr()
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.arange(2))
    with pytest.raises(SystemExit) as exit_:  # it was accepted, and did nothing
        main(["convert", str(tmp_path / "a.npz"), "-o", str(tmp_path / "o.beton"), "--quality", "50"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith("fastprune convert: error: --quality applies with --jpeg (raw pixels "
                                            "are stored without loss)\n")
    assert not (tmp_path / "o.beton").exists()


@pytest.mark.ffcv
def test_converted_fashion_mnist_loads_in_ffcvs_own_loader(fashion_train_store, fashion_mnist_dir):
    """Gray is stored as RGB precisely so that ffcv's RGB decoder can read the file."""
    pytest.importorskip("ffcv.loader")
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(fashion_train_store), batch_size=256, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, labels = next(iter(loader))
    pixels = idx_payload(fashion_mnist_dir / "train-images-idx3-ubyte.gz", 16).reshape(60000, 28, 28)
    expected_labels = idx_payload(fashion_mnist_dir / "train-labels-idx1-ubyte.gz", 8)
    np.testing.assert_array_equal(np.asarray(images)[..., 1], pixels[:256])
    np.testing.assert_array_equal(np.asarray(labels).ravel(), expected_labels[:256])


def test_options_are_never_abbreviated(capsys):
    from fastprune.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser("bench").parse_args(["bench", "--train-lim", "100"])   # not --train-limit
    assert "unrecognized arguments: --train-lim" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "x", "--out", "y", "--qual", "9"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # said by the command's own parser, with its usage
        main(["bench", "--train-lim", "100"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fastprune bench") and err.endswith(
        "fastprune bench: error: unrecognized arguments: --train-lim 100\n")


def test_convert_index_writes_each_samples_id_and_fastprune_still_finds_image_and_label(tmp_path, capsys):
    """--index (index=True) adds an 'index' IntField after label; the Loader, training's label
    detection and Store.class_names still take 'label' (not the extra integer field)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 40)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    out = tmp_path / "d.beton"
    assert main(["convert", str(tmp_path / "d.npz"), "-o", str(out), "--index", "--class-names", "a,b,c",
                 "--no-progress"]) == 0
    store = fastprune.Store(out)
    assert list(store.fields) == ["image", "label", "index"]
    assert [store[i][1:] for i in (0, 39)] == [(labels[0], 0), (labels[39], 39)]
    assert store.class_names == ["a", "b", "c"]
    seen = {}
    for batch in fastprune.Loader(out, batch_size=16, seed=1):
        seen.update(zip(batch.indices.tolist(), batch.labels.tolist()))
    assert seen == dict(enumerate(labels.tolist()))
    from fastprune.train.data import describe_stores

    assert describe_stores(out, out).num_classes == 3
    assert main(["info", str(out)]) == 0
    assert "index" in capsys.readouterr().out


def test_a_reader_that_leaves_the_pipe_early_is_not_an_error(tmp_path):
    """`fastprune info FILE | head -3` once ended on "error: [Errno 32] Broken pipe"."""
    import os
    import subprocess
    import sys

    from fastprune.convert import from_arrays

    store = from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), tmp_path / "s.beton", progress=False)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first line
    try:
        proc = subprocess.run([sys.executable, "-m", "fastprune", "info", str(store)], stdout=writer,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert proc.stderr == "" and proc.returncode == 1


def test_a_small_stores_sparse_size_is_said_beside_its_length(tmp_path, capsys):
    """A 2 MiB photo set converted to "16.0 MiB": data starts on an 8 MiB page and the last page's
    tail is a hole. convert and info now say what the file takes on disk, where it is sparse."""
    np.savez(tmp_path / "a.npz", images=np.zeros((40, 8, 8, 3), np.uint8), labels=np.arange(40) % 2)
    out = tmp_path / "s.beton"
    assert main(["convert", str(tmp_path / "a.npz"), "--out", str(out)]) == 0
    wrote = capsys.readouterr().out
    if out.stat().st_blocks * 512 >= 0.9 * out.stat().st_size:
        pytest.skip("this filesystem does not keep the file sparse")
    assert re.search(r"wrote .*s\.beton: 40 samples \(16\.0 MiB, [\d.]+ KiB on disk \(sparse: the pages' zero tails take no "
                     r"space\)\)", wrote), wrote
    assert main(["info", str(out)]) == 0
    assert "on disk (sparse" in capsys.readouterr().out
