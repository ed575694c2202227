"""Converting datasets as users hold them (an audit of 2026-12-07): a Dataset that refills one
buffer, one that reads from a file it keeps open, a target_transform, a Hugging Face image over
the pixel limit, a class folder behind a dangling link, class names respelt, photos shrunk from
JPEG, an Excel names file, a column of encoded bytes, datasets saved one per split, a panorama."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import fastprune
from fastprune.cli import main
from fastprune.convert import from_hf_dataset, from_image_folder, from_torch_dataset
from fastprune.convert.open_files import open_files
from fastprune.errors import ConversionError, LabelWarning, UsageWarning


class _RefilledBuffer(torch.utils.data.Dataset):
    """Fills one preallocated array per sample and returns it (a common way to avoid allocations)."""

    def __init__(self, n=40):
        self.n, self.image, self.target = n, np.zeros((6, 6, 3), np.uint8), np.zeros(3, np.float32)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.image[:] = i
        self.target[:] = i
        return self.image, self.target


def test_a_source_that_refills_one_owned_array_for_a_bytes_field_stores_each_samples_bytes(tmp_path):
    """BytesField hands its value back as the payload: an array owning its data was not copied."""
    from fastprune.store.fields import BytesField, IntField
    from fastprune.store.writer import write_dataset

    class Refill:
        buffer = np.zeros(8, np.uint8)

        def __len__(self):
            return 20

        def __getitem__(self, i):
            self.buffer[:] = i
            return self.buffer, i

    store = fastprune.Store(write_dataset(tmp_path / "b.beton", Refill(), {"x": BytesField(), "label": IntField()},
                                          workers=1, progress=False))
    assert [int(np.frombuffer(store[i][0], np.uint8)[0]) for i in range(20)] == list(range(20))


def test_a_dataset_that_refills_one_buffer_stores_each_samples_own_pixels(tmp_path):
    """Raw payloads were views of the caller's buffer until the chunk was joined: every sample of a
    chunk held the last one's pixels (and targets), under a 'wrote' and valid-looking sizes."""
    store = fastprune.Store(from_torch_dataset(_RefilledBuffer(), tmp_path / "s.beton", progress=False,
                                               workers=1, targets=True))
    for i in (0, 17, 39):
        image, target = store[i]
        assert (image == i).all() and (target == i).all()
    assert store.verify().ok


class _OpenFile(torch.utils.data.Dataset):
    def __init__(self, path, n):
        self.n, self.path, self.file = n, path, open(path, "rb")  # noqa: SIM115  the pattern under test

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.file.seek(i * 48)
        return np.frombuffer(self.file.read(48), np.uint8).reshape(4, 4, 3), i % 3


class _OpensPerRead(_OpenFile):
    """The advice followed: the file it opened first is closed, each read opens its own."""

    def __init__(self, path, n):
        super().__init__(path, n)
        self.file.close()

    def __getitem__(self, i):
        with open(self.path, "rb") as file:
            file.seek(i * 48)
            return np.frombuffer(file.read(48), np.uint8).reshape(4, 4, 3), i % 3


def test_a_dataset_holding_an_open_file_converts_in_one_process_and_says_so(tmp_path):
    """Forked workers share an open file's position: 2 workers stored 18 of 2000 samples with
    another's pixels, under valid checksums."""
    n = 600
    (tmp_path / "records.bin").write_bytes(np.repeat(np.arange(n) % 251, 48).astype(np.uint8).tobytes())
    dataset = _OpenFile(tmp_path / "records.bin", n)
    with pytest.warns(UsageWarning, match=r"dataset _OpenFile.file is an open file, which forked workers share.*"
                                          r"converting in one process"):
        store = fastprune.Store(from_torch_dataset(dataset, tmp_path / "s.beton", progress=False))
    assert all((store[i][0] == i % 251).all() for i in range(n))
    wrapped = torch.utils.data.Subset(dataset, range(10))  # too few samples for a second worker
    with pytest.warns(UsageWarning, match=r"dataset Subset.dataset.file is an open file.*converting with 2 workers; "
                                          "unless its reads"):
        from_torch_dataset(wrapped, tmp_path / "sub.beton", progress=False, workers=2)  # the user's choice
    for held in (io.BytesIO(b"x"), open(tmp_path / "out.txt", "w"), open(tmp_path / "log.txt", "a")):  # noqa: SIM115
        dataset.file = held  # a fork copies a BytesIO; a file open for writing shares no reads
        assert open_files(dataset) == []
    dataset.file = {"train": open(tmp_path / "records.bin", "rb")}  # noqa: SIM115  one per split, in a dict
    assert open_files(dataset) == ["dataset _OpenFile.file"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UsageWarning)  # a closed file is no one's to share
        store = fastprune.Store(from_torch_dataset(_OpensPerRead(tmp_path / "records.bin", n), tmp_path / "n.beton",
                                                   progress=False))
    assert all((store[i][0] == i % 251).all() for i in range(n))


def _folder(root, classes, size=(8, 8)):
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (40 * (k + 1),) * 3).save(root / name / "1.png")
    return root


def test_a_target_transform_names_the_labels_it_makes_or_none(tmp_path):
    """ImageFolder(target_transform=lambda y: 1 - y) stored the cat image as label 1 named 'dog'."""
    datasets = pytest.importorskip("torchvision.datasets")
    root = _folder(tmp_path / "photos", ["cat", "dog", "eel"])

    def converted(transform, name):
        folder = datasets.ImageFolder(str(root), target_transform=transform)
        return fastprune.Store(from_torch_dataset(folder, tmp_path / name, progress=False))

    swapped = converted(lambda y: 2 - y, "swapped.beton")  # a permutation: the names follow their labels
    assert swapped.class_names == ["eel", "dog", "cat"] and swapped[0][1] == 2  # the cat image
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelWarning)
        assert converted(torch.tensor, "kept.beton").class_names == ["cat", "dog", "eel"]  # each label kept
    with pytest.warns(LabelWarning, match=r"ImageFolder.target_transform makes labels its .classes do not name"):
        grouped = converted(lambda y: int(y > 0), "grouped.beton")  # cat vs the rest
    assert not grouped.class_names and [grouped[i][1] for i in range(3)] == [0, 1, 1]


def test_a_hugging_face_image_over_the_pixel_limit_can_be_let_through_or_skipped(tmp_path):
    """The refusal said 'raise it with --max-pixels / max_pixels=', which hf sources refused."""
    hf = pytest.importorskip("datasets")
    encoded = []
    for side in (20, 4, 4):
        data = io.BytesIO()
        Image.new("RGB", (side, side), (side,) * 3).save(data, "PNG")
        encoded.append({"bytes": data.getvalue(), "path": None})
    dataset = hf.Dataset.from_dict({"image": encoded, "label": [0, 1, 0]},
                                   features=hf.Features({"image": hf.Image(), "label": hf.Value("int64")}))
    with pytest.raises(ConversionError, match=r"20x20 = 400 pixels exceeds the limit of 100"):
        from_hf_dataset(dataset, tmp_path / "a.beton", max_pixels=100, resize=(4, 4), progress=False)
    assert len(fastprune.Store(from_hf_dataset(dataset, tmp_path / "b.beton", max_pixels=400, resize=(4, 4),
                                               progress=False))) == 3
    with pytest.warns(fastprune.errors.SkippedSamplesWarning, match="skipped 1 unreadable sample of 3"):
        skipped = fastprune.Store(from_hf_dataset(dataset, tmp_path / "c.beton", max_pixels=100, resize=(4, 4),
                                                  skip_unreadable=True, progress=False))
    assert [skipped[i][1] for i in range(2)] == [1, 0]
    with pytest.raises(ConversionError, match=r"resize 20x20 = 400 pixels exceeds the limit of 100"):
        from_hf_dataset(dataset, tmp_path / "e.beton", max_pixels=100, resize=(20, 20), progress=False)
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert main(["convert", str(tmp_path / "saved"), "--resize", "4x4", "--max-pixels", "400", "--out",
                 str(tmp_path / "d.beton"), "--no-progress"]) == 0


def test_a_class_folder_behind_a_dangling_link_is_refused_not_left_out(tmp_path):
    """Left out, it moved every later class's label down by one, without a word."""
    root = _folder(tmp_path / "photos", ["ant", "cow"])
    (root / "bee").symlink_to(tmp_path / "moved" / "bee")
    with pytest.raises(ConversionError, match=r"bee: a link to '.*moved/bee', which does not exist"):
        from_image_folder(root, tmp_path / "s.beton", progress=False)
    assert not (tmp_path / "s.beton").exists()
    (root / "bee").unlink()
    (root / "notes.txt").symlink_to(tmp_path / "moved" / "notes.txt")  # a file's link: no class, ignored
    assert len(fastprune.Store(from_image_folder(root, tmp_path / "s.beton", progress=False))) == 2


def test_class_names_respelt_in_another_order_are_refused_and_in_the_same_order_rename(tmp_path):
    """Folders cat, dog with 'Dog,Cat' (meant to put dog first) labelled the cat images 'Dog'."""
    root = _folder(tmp_path / "photos", ["cat", "dog"])
    with pytest.raises(ConversionError, match=r"spell folders' names otherwise, in another order.*folder 'cat' named "
                                              "'Dog'"):
        from_image_folder(root, tmp_path / "s.beton", class_names=["Dog", "Cat"], progress=False)
    more = _folder(tmp_path / "more", ["cat", "dog", "sea_lion"])  # one name off, '_' for a space: as ambiguous
    for names in (["Dog", "Cat", "Horses"], ["Sea Lion", "Cat", "Dog"]):
        with pytest.raises(ConversionError, match="in another order"):
            from_image_folder(more, tmp_path / "m.beton", class_names=names, progress=False)
    renamed = fastprune.Store(from_image_folder(root, tmp_path / "r.beton", class_names=["Cat", "Dog"], progress=False))
    assert renamed.class_names == ["Cat", "Dog"]
    ordered = fastprune.Store(from_image_folder(root, tmp_path / "o.beton", class_names=["dog", "cat"], progress=False))
    assert ordered.class_names == ["dog", "cat"] and ordered[0][1] == 1  # the cat image


def test_a_jpeg_shrunk_on_conversion_is_close_to_a_full_decode(tmp_path):
    """A DCT-scaled decode just above the target, then resampled by a few percent, was 2.7 grey
    levels from a full decode on photos (1.2 here); at twice the target, 1.1 (0.7 here)."""
    from fastprune.convert.image_folder import read_fitted
    from fastprune.store.images import resize_image

    y, x = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([128 + 100 * np.sin(x / 37.0) * np.cos(y / 23.0), x * 255 // 1600, y * 255 // 1200], -1)
    pixels = np.clip(pixels + np.random.default_rng(0).normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "JPEG", quality=90)
    full = np.asarray(Image.open(encoded).convert("RGB"))
    for max_side in (256, 160):
        shrunk = read_fitted("photo.jpg", encoded.getvalue(), max_side, None)
        reference = resize_image(full, *shrunk.shape[:2])
        assert np.abs(shrunk.astype(int) - reference).mean() < 0.9


def test_a_class_names_file_saved_by_excel_loses_its_byte_order_mark(tmp_path):
    root = _folder(tmp_path / "photos", ["a", "b"])
    (tmp_path / "names.txt").write_text("\ufeffa\nb\n", encoding="utf-8")  # Excel's "CSV UTF-8"
    assert main(["convert", str(root), "--class-names", f"@{tmp_path / 'names.txt'}", "--out",
                 str(tmp_path / "s.beton"), "--no-progress"]) == 0
    assert fastprune.Store(tmp_path / "s.beton").class_names == ["a", "b"]


def test_a_column_of_encoded_bytes_names_the_cast(tmp_path):
    hf = pytest.importorskip("datasets")
    data = io.BytesIO()
    Image.new("RGB", (4, 4)).save(data, "PNG")
    dataset = hf.Dataset.from_dict({"image": [data.getvalue()], "label": [0]})
    with pytest.raises(ConversionError, match=r"image is a bytes; .*dataset.cast_column\(COLUMN, datasets.Image\(\)\)"):
        from_hf_dataset(dataset, tmp_path / "s.beton", progress=False)


def test_datasets_saved_one_per_split_are_named_not_taken_for_class_folders(tmp_path, capsys):
    hf = pytest.importorskip("datasets")
    for split in ("train", "test"):
        hf.Dataset.from_dict({"label": [0]}).save_to_disk(str(tmp_path / "saved" / split))
    assert main(["convert", str(tmp_path / "saved"), "--out", str(tmp_path / "s.beton"), "--no-progress"]) == 1
    assert (f"holds Hugging Face datasets saved one per folder (test, train): convert one of them, e.g. "
            f"{tmp_path / 'saved' / 'test'}") in capsys.readouterr().err


def test_a_panorama_too_wide_for_a_store_is_named_and_skippable(tmp_path):
    root = _folder(tmp_path / "photos", ["a"])
    Image.new("RGB", (70000, 1)).save(root / "a" / "panorama.png")
    with pytest.raises(ConversionError, match=r"panorama.png: 70000x1 would be stored with a side over 65535 px"):
        from_image_folder(root, tmp_path / "s.beton", progress=False, jpeg=True)
    with pytest.warns(fastprune.errors.SkippedSamplesWarning, match="panorama.png"):
        from_image_folder(root, tmp_path / "s.beton", progress=False, jpeg=True, skip_unreadable=True)
    assert len(fastprune.Store(tmp_path / "s.beton")) == 1
    from_image_folder(root, tmp_path / "shrunk.beton", progress=False, jpeg=True, max_side=1000)  # shrunk: stored
    assert os.path.getsize(tmp_path / "shrunk.beton") > 0
    with pytest.raises(ConversionError, match=r"^resize 1x70000: a store holds image sides of at most 65535"):
        from_image_folder(root, tmp_path / "r.beton", progress=False, resize=(1, 70000))  # the option, not a file


class _Config:
    """A settings object whose __getattr__ raises KeyError (the open-file scan asked it for __len__)."""

    def __init__(self):
        self._values = {}

    def __getattr__(self, name):
        return self._values[name]


def test_the_open_file_scan_reads_past_a_getattr_that_raises(tmp_path):
    dataset = _RefilledBuffer(4)
    dataset.config = _Config()
    store = fastprune.Store(from_torch_dataset(dataset, tmp_path / "s.beton", progress=False, targets=True))
    assert len(store) == 4
