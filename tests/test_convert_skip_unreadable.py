"""``skip_unreadable`` / ``--skip-unreadable``: a few bad files among many are left out and named
in one warning; the store stays whole (checksums verify, ffcv reads it, later samples move up and
the ``index`` field counts positions); a source failing broadly still stops with no file left; and
only failures to *read* a sample are skipped, never a second image shape or a bad label."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from fastprune import ConversionError
from fastprune.cli import main
from fastprune.convert import from_image_folder, from_torch_dataset
from fastprune.errors import SkippedSamplesWarning
from fastprune.store import Store


def _folder(root, per_class=300, side=12):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).save(root / name / f"{i:03d}.jpg")
    return root


def _spoil(folder, count=2):
    """Files no decoder reads: one that is not an image, then truncated ones."""
    bad = [folder / "a" / "005.jpg"] + [folder / "b" / f"{7 + i:03d}.jpg" for i in range(count - 1)]
    bad[0].write_bytes(b"not an image at all")
    for path in bad[1:]:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    return bad


def _samples(path):
    with Store(path) as store:
        assert store.verify().ok
        return [store[i] for i in range(len(store))], store.class_names


@pytest.mark.parametrize("jpeg", [False, True], ids=["raw", "jpeg"])
@pytest.mark.parametrize("workers", [1, 2])
def test_unreadable_files_are_left_out_named_and_the_rest_is_the_clean_folders_store(tmp_path, jpeg, workers):
    folder = _folder(tmp_path / "photos")
    bad = _spoil(folder)
    clean = shutil.copytree(folder, tmp_path / "clean")
    for path in bad:
        (clean / path.parent.name / path.name).unlink()
    with pytest.raises(ConversionError, match=r"a/005.jpg: cannot read image: not an image of a format read here \(JPEG, PNG, WEBP, BMP, TIFF\)"):
        from_image_folder(folder, tmp_path / "stopped.beton", jpeg=jpeg, workers=workers, progress=False)
    assert not (tmp_path / "stopped.beton").exists()

    with pytest.warns(SkippedSamplesWarning) as warned:
        out = from_image_folder(folder, tmp_path / "o.beton", jpeg=jpeg, workers=workers, index=True,
                                skip_unreadable=True, progress=False)
    message = str(warned[0].message)
    assert len(warned) == 1 and "skipped 2 unreadable samples of 600: sample 5 (" in message
    assert f"sample 307 ({bad[1]}: cannot read image" in message and message.endswith("; 598 samples written")
    got, names = _samples(out)
    want, want_names = _samples(from_image_folder(clean, tmp_path / "clean.beton", jpeg=jpeg, workers=1,
                                                  progress=False))
    assert len(got) == len(want) == 598 and names == want_names == ["a", "b"]
    for position, (mine, theirs) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(mine[0], theirs[0])
        assert mine[1] == theirs[1] and mine[2] == position  # label; index = position in the store


def test_ffcv_reads_a_store_with_skipped_samples(tmp_path):
    pytest.importorskip("ffcv")
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    folder = _folder(tmp_path / "photos")
    _spoil(folder, count=3)
    with pytest.warns(SkippedSamplesWarning):
        out = from_image_folder(folder, tmp_path / "o.beton", index=True, skip_unreadable=True, progress=False)
    loader = Loader(str(out), batch_size=64, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()],
                               "index": [IntDecoder()]})
    images, labels, index = (np.concatenate(part) for part in zip(*[[np.array(x) for x in b] for b in loader]))
    ours, _ = _samples(out)
    assert len(images) == len(ours) == 597
    np.testing.assert_array_equal(images, np.stack([sample[0] for sample in ours]))
    np.testing.assert_array_equal(labels.ravel(), [sample[1] for sample in ours])
    np.testing.assert_array_equal(index.ravel(), np.arange(597))


def test_more_than_one_percent_unreadable_stops_the_conversion(tmp_path):
    folder = _folder(tmp_path / "photos", per_class=150)  # 300 files: 1% is 3, so 10 are allowed
    _spoil(folder, count=10)
    with pytest.warns(SkippedSamplesWarning, match="skipped 10 unreadable samples of 300"):
        ten = from_image_folder(folder, tmp_path / "ten.beton", skip_unreadable=True, progress=False)
    assert len(_samples(ten)[0]) == 290
    _spoil(folder, count=11)
    with pytest.raises(ConversionError, match=r"skipped 11 unreadable samples of 300: sample 5 .*; and 6 more: "
                                              r"more than 1% of the samples \(and over 10\), so not a few bad files"):
        from_image_folder(folder, tmp_path / "eleven.beton", skip_unreadable=True, progress=False, workers=2)
    assert not (tmp_path / "eleven.beton").exists()


class _Photos:
    """A dataset whose some samples raise, as a Dataset over files with a bad one does."""

    def __init__(self, bad, shapes=None):
        self.bad, self.shapes = bad, shapes or {}

    def __len__(self):
        return 40

    def __getitem__(self, index):
        if index in self.bad:
            raise OSError(f"image file is truncated (photo {index})")
        side = self.shapes.get(index, 8)
        return np.full((side, side, 3), index, np.uint8), index % 4


def test_a_dataset_that_raises_for_some_samples(tmp_path):
    with pytest.raises(ConversionError, match=r"sample 0 of _Photos: the dataset raised OSError: image file is "
                                              r"truncated \(photo 0\)"):
        from_torch_dataset(_Photos({0, 9}), tmp_path / "stopped.beton", progress=False)
    with pytest.warns(SkippedSamplesWarning, match=r"skipped 2 unreadable samples of 40: sample 0 \(sample 0 of "
                                                   r"_Photos: the dataset raised OSError"):
        out = from_torch_dataset(_Photos({0, 9}), tmp_path / "o.beton", progress=False, skip_unreadable=True)
    got, _ = _samples(out)
    kept = [i for i in range(40) if i not in (0, 9)]
    assert [int(sample[0][0, 0, 0]) for sample in got] == kept and [sample[1] for sample in got] == [i % 4 for i in kept]
    # not reading failures: a second image shape (raw storage) stops the write, skipping or not
    with pytest.raises(ConversionError, match=r"sample 1 .* sample 5"):
        from_torch_dataset(_Photos({0}, shapes={5: 9}), tmp_path / "shapes.beton", progress=False,
                           skip_unreadable=True)


def test_the_command_line_option(tmp_path, capsys):
    folder = _folder(tmp_path / "photos", per_class=20)
    _spoil(folder)
    assert main(["convert", str(folder), "--out", str(tmp_path / "o.beton"), "--skip-unreadable", "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastprune convert: warning: {tmp_path / 'o.beton'}: skipped 2 "
                                                "unreadable samples of 40: sample 5 (")
    assert len(_samples(tmp_path / "o.beton")[0]) == 38
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4))
    assert main(["convert", str(tmp_path / "a.npz"), "--out", str(tmp_path / "n.beton"), "--skip-unreadable"]) == 1
    assert "--skip-unreadable applies to image folders and hf sources, not npz" in capsys.readouterr().err
