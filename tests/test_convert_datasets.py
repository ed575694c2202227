"""Dict-shaped samples and Hugging Face datasets (built in memory: nothing is downloaded)."""

from __future__ import annotations

import inspect
import io
import re

import numpy as np
import pytest
from PIL import Image

import fastprune
from fastprune import ConversionError
from fastprune.errors import SkippedSamplesWarning, UnreadableSample
from fastprune.convert import from_hf_dataset, from_torch_dataset


def _images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (10, 8, 3), dtype=np.uint8) for _ in range(n)]


def test_dict_samples_are_read_by_key(tmp_path):
    images = _images()
    rows = [{"img": image, "y": i % 4, "extra": "ignored"} for i, image in enumerate(images)]
    out = from_torch_dataset(rows, tmp_path / "d.beton", image_key="img", label_key="y", progress=False)
    store = fastprune.Store(out)
    for i in (0, 11):
        np.testing.assert_array_equal(store[i][0], images[i])
        assert store[i][1] == i % 4
    with pytest.raises(ConversionError, match="sample 0 of list: no key 'image' in the sample .*image_key="):
        from_torch_dataset(rows, tmp_path / "e.beton", progress=False)
    assert not (tmp_path / "e.beton").exists()


def test_a_hugging_face_dataset_converts_by_column_name(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = _images()
    features = datasets.Features({"picture": datasets.Image(),
                                  "kind": datasets.ClassLabel(names=["cat", "dog", "owl"])})
    dataset = datasets.Dataset.from_dict(
        {"picture": [Image.fromarray(image) for image in images], "kind": [i % 3 for i in range(12)]},
        features=features)
    out = from_hf_dataset(dataset, tmp_path / "hf.beton", image_column="picture", label_column="kind",
                          progress=False)
    store = fastprune.Store(out)
    assert len(store) == 12
    np.testing.assert_array_equal(store[5][0], images[5])   # PNG-encoded in memory: lossless
    assert [store[i][1] for i in range(4)] == [0, 1, 2, 0]
    with pytest.raises(ConversionError, match=r"label_column='label' is not a column .*\['picture', 'kind'\]"):
        from_hf_dataset(dataset, tmp_path / "x.beton", image_column="picture", progress=False)
    with pytest.raises(ConversionError, match="pick a split"):
        from_hf_dataset(datasets.DatasetDict({"train": dataset}), tmp_path / "x.beton", progress=False)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_hugging_face_images_are_stored_upright_as_datasets_decodes_them(tmp_path, orientation):
    """datasets (2.19+) turns an Image column's photos upright by their EXIF orientation, so
    ds[i]["image"] is what the user sees; the store kept them as stored (a 20x40 photo tagged
    "rotate 90" came back 20x40 where the user sees 40x20; converter audit). Image folders stay
    as stored, as torchvision's ImageFolder reads them."""
    datasets = pytest.importorskip("datasets")
    if "exif_transpose" not in inspect.getsource(datasets.features.image.Image.decode_example):
        pytest.skip("this datasets decodes photos as stored (before 2.19)")
    pixels = np.zeros((200, 400, 3), np.uint8)
    pixels[:, :100] = 255
    pixels[:50, :, 1] = 200
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x"])})
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": buffer.getvalue(), "path": None}], "label": [0]},
                                         features=features)
    seen = np.asarray(dataset[0]["image"].convert("RGB"))
    store = fastprune.Store(from_hf_dataset(dataset, tmp_path / "hf.beton", progress=False, workers=1))
    np.testing.assert_array_equal(store[0][0], seen)
    small = fastprune.Store(from_hf_dataset(dataset, tmp_path / "small.beton", max_side=100, progress=False,
                                            workers=1))  # DCT-downscaled while decoding, then turned
    assert small[0][0].shape[:2] == (seen.shape[0] // 4, seen.shape[1] // 4)
    shrunk = np.asarray(Image.fromarray(seen).resize((seen.shape[1] // 4, seen.shape[0] // 4), Image.BILINEAR))
    assert np.abs(small[0][0].astype(int) - shrunk).mean() < 8


def test_hugging_face_pngs_damaged_are_refused_and_tagged_ones_turned():
    """Asking a PNG its EXIF orientation before decoding made Pillow decode it inside getexif(),
    where the error was swallowed: a PNG with one flipped byte was stored with blank pixels,
    not refused (review). A PNG's orientation is read after decoding now; a tagged one is still
    turned upright, and an exact resize= applies to the upright image."""
    from fastprune.convert.torch_dataset import _decode_encoded
    from fastprune.errors import UnreadableSample

    pixels = np.random.default_rng(0).integers(1, 256, (64, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    damaged = bytearray(buffer.getvalue())
    damaged[228] ^= 0xFF
    with pytest.raises(UnreadableSample, match="cannot decode image"):
        _decode_encoded({"bytes": bytes(damaged), "path": "bad.png"}, "sample 0", None, None, None)
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees: seen 48 high, 64 wide
    tagged = io.BytesIO()
    Image.fromarray(pixels).save(tagged, "PNG", exif=exif.tobytes())
    upright = _decode_encoded({"bytes": tagged.getvalue(), "path": None}, "sample 0", None, None, None)
    np.testing.assert_array_equal(upright, np.rot90(pixels, -1))
    resized = _decode_encoded({"bytes": tagged.getvalue(), "path": None}, "sample 0", None, (24, 32), None)
    assert resized.shape == (24, 32, 3)


def test_hugging_face_uint8_array_columns_convert(tmp_path):
    """An image column of type Array3D(dtype="uint8") or nested Sequence(Value("uint8")) was
    refused ("image is a list"): datasets reads such columns back as lists, or int64 arrays in
    numpy format (converter audit). Declared uint8, they are cast losslessly; other integer
    columns are still refused (their range is unknown)."""
    datasets = pytest.importorskip("datasets")
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 6, 3), np.uint8)
    nested = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))))
    for name, feature in (("array", datasets.Array3D((8, 6, 3), "uint8")), ("nested", nested)):
        dataset = datasets.Dataset.from_dict({"image": list(images), "label": [0, 1, 2]},
                                             features=datasets.Features({"image": feature,
                                                                         "label": datasets.Value("int64")}))
        for formatted in (dataset, dataset.with_format("numpy")):
            store = fastprune.Store(from_hf_dataset(formatted, tmp_path / f"{name}.beton", progress=False))
            np.testing.assert_array_equal(np.stack([store[i][0] for i in range(3)]), images)
            store.close()
            (tmp_path / f"{name}.beton").unlink()
    wide = datasets.Dataset.from_dict({"image": list(images.astype(np.int64)), "label": [0, 1, 2]},
                                      features=datasets.Features({"image": datasets.Array3D((8, 6, 3), "int64"),
                                                                  "label": datasets.Value("int64")}))
    with pytest.raises(ConversionError, match="sample 0 .*image has dtype int64.*for integers already in 0..255"):
        from_hf_dataset(wide, tmp_path / "wide.beton", progress=False)
    # a float column inferred by from_dict comes back as nested lists: it said only "image is a list"
    floats = datasets.Dataset.from_dict({"image": list(images / 255.0), "label": [0, 1, 2]})
    with pytest.raises(ConversionError, match=r"sample 0 .*image has dtype float64.*\(x \* 255\)"):
        from_hf_dataset(floats, tmp_path / "floats.beton", progress=False)


def test_negative_labels_are_refused_naming_the_sample_or_dropped(tmp_path, monkeypatch):
    """-1 is Hugging Face's "no label": it was stored (and named the last class). Now it stops
    the conversion, naming the sample, unless drop_unlabeled=True leaves those samples out."""
    datasets = pytest.importorskip("datasets")
    images = _images(6)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    dataset = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image) for image in images], "label": [0, 1, -1, 1, -1, 0]}, features=features)
    with pytest.raises(ConversionError, match=r"sample 2 of Dataset: label -1 is negative .*drop_unlabeled=True"):
        from_hf_dataset(dataset, tmp_path / "hf.beton", progress=False)
    assert not (tmp_path / "hf.beton").exists()
    from fastprune.convert import torch_dataset

    fetched = []
    fetch = torch_dataset.DatasetSource._fetch
    monkeypatch.setattr(torch_dataset.DatasetSource, "_fetch",
                        lambda self, index, what: fetched.append(index) or fetch(self, index, what))
    store = fastprune.Store(from_hf_dataset(dataset, tmp_path / "hf.beton", progress=False, drop_unlabeled=True,
                                            workers=1))
    assert 2 not in fetched and 4 not in fetched  # the label column said so: their rows are not read
    assert [store[i][1] for i in range(len(store))] == [0, 1, 1, 0] and store.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(store[2][0], images[3])
    rows = [(image, -1 if i == 4 else i % 2) for i, image in enumerate(images)]  # a plain torch-style dataset
    with pytest.raises(ConversionError, match="sample 4 of list: label -1 is negative"):
        from_torch_dataset(rows, tmp_path / "t.beton", progress=False)
    store = fastprune.Store(from_torch_dataset(rows, tmp_path / "t.beton", progress=False, drop_unlabeled=True))
    assert len(store) == 5 and store[4][1] == 1


class _CountingDataset:
    """A map-style dataset that counts how often each sample is read; unlabelled: the samples
    ``unlabelled(i)`` says; ``bad``: samples whose reading raises."""

    def __init__(self, images, unlabelled=lambda i: i % 3 == 0, bad=()):
        self.images, self.reads, self.unlabelled, self.bad = images, [0] * len(images), unlabelled, set(bad)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.reads[index] += 1
        if index in self.bad:
            raise OSError(f"cannot open file_{index}.png")
        return self.images[index], -1 if self.unlabelled(index) else index % 2


def test_drop_unlabeled_reads_each_sample_once(tmp_path):
    """Unlabelled samples were found by reading every sample once before the write read them
    again: twice the time of a dataset that decodes its images. Now they are left out as the
    writer reads them; only the reference sample (the first labelled one) is read twice. The
    unlabelled ones before it are read once, by the search for it, also where most samples lead
    with no label (an unlabelled set and a labelled one concatenated)."""
    images = _images(10)
    dataset = _CountingDataset(images)
    store = fastprune.Store(from_torch_dataset(dataset, tmp_path / "t.beton", progress=False, drop_unlabeled=True,
                                               workers=1))
    assert dataset.reads == [1, 2] + [1] * 8
    leading = _CountingDataset(images, unlabelled=lambda i: i < 7)
    assert len(fastprune.Store(from_torch_dataset(leading, tmp_path / "l.beton", progress=False, drop_unlabeled=True,
                                                  workers=1))) == 3
    assert leading.reads == [1] * 7 + [2, 1, 1]
    kept = [i for i in range(10) if i % 3]
    assert len(store) == len(kept) == 6
    for position, index in enumerate(kept):
        image, label = store[position]
        np.testing.assert_array_equal(image, images[index])
        assert label == index % 2


def test_a_dataset_with_no_labelled_sample_is_refused(tmp_path):
    rows = [(image, -1) for image in _images(3)]
    with pytest.raises(ConversionError, match="dataset list without its unlabelled samples has no samples"):
        from_torch_dataset(rows, tmp_path / "t.beton", progress=False, drop_unlabeled=True)
    assert not (tmp_path / "t.beton").exists()
    # labelled samples that all fail to read: their error, not "no labelled samples"
    failing = _CountingDataset(_images(12), unlabelled=lambda i: i not in (4, 9), bad=(4, 9))
    with pytest.raises(UnreadableSample, match=r"sample 9 of _CountingDataset: .*OSError: cannot open file_9\.png"):
        from_torch_dataset(failing, tmp_path / "f.beton", progress=False, drop_unlabeled=True, skip_unreadable=True)


def test_skip_unreadable_s_limit_counts_the_labelled_samples_only(tmp_path):
    """skip_unreadable stops past 1% (and 10) unreadable samples. Measured against every sample,
    unlabelled ones left out included, a source with few labels passed with 8% of its labelled samples
    broken: 16 of the 200 labelled ones, among 1,800 unlabelled (a helper's audit)."""
    images = _images(2000)
    bad = range(1800, 2000, 13)  # 16 of the 200 labelled samples
    dataset = _CountingDataset(images, unlabelled=lambda i: i < 1800, bad=bad)
    with pytest.raises(ConversionError, match=r"skipped 16 unreadable samples of 200: sample 1800 .*more than 1% of "
                                              r"the samples"):
        from_torch_dataset(dataset, tmp_path / "t.beton", progress=False, drop_unlabeled=True, skip_unreadable=True,
                           workers=1)
    few = _CountingDataset(images[:1900], unlabelled=lambda i: i < 1800, bad=[1850])
    with pytest.warns(SkippedSamplesWarning, match=r"skipped 1 unreadable sample of 100: sample 1850 .*; 99 samples "
                                                   r"written \(1800 others left out by the source\)") as warned:
        from_torch_dataset(few, tmp_path / "f.beton", progress=False, drop_unlabeled=True, skip_unreadable=True,
                           workers=1)
    assert [w.filename for w in warned] == [__file__]  # the user's line


def test_missing_labels_none_are_unlabelled_too(tmp_path):
    """A Hugging Face int column with missing values reads back None: it was refused as "must be an
    integer" even with drop_unlabeled=True."""
    datasets = pytest.importorskip("datasets")
    images = _images(4)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    dataset = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image) for image in images], "label": [1, None, 0, 1]}, features=features)
    with pytest.raises(ConversionError, match=r"sample 1 of Dataset: label is missing \(None\).*drop_unlabeled=True"):
        from_hf_dataset(dataset, tmp_path / "hf.beton", progress=False)
    store = fastprune.Store(from_hf_dataset(dataset, tmp_path / "hf.beton", progress=False, drop_unlabeled=True))
    assert [store[i][1] for i in range(len(store))] == [1, 0, 1]
    np.testing.assert_array_equal(store[1][0], images[2])


def test_a_dataset_drawing_random_numbers_converts_the_same_at_any_number_of_workers(tmp_path):
    """Forked workers all started from the parent's RNG states: at 2 workers half the samples
    repeated others (sample 0 == sample 75) and the file changed from run to run. Each sample is
    now read with the RNGs seeded from the starting states and its index; the caller's states are
    left as they were."""
    import hashlib
    import random

    import torch

    from fastprune.convert import from_torch_dataset

    class Augmented:  # offline augmentation through all three global RNGs
        def __len__(self):
            return 1200

        def __getitem__(self, index):
            noise = torch.randint(0, 200, (8, 8, 3), dtype=torch.uint8).numpy()
            return noise + np.random.randint(0, 50, (8, 8, 3), dtype=np.uint8) + random.randrange(6), index % 3

    def convert(name, workers, seed=0):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        before = torch.rand(1), np.random.rand(), random.random()
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        path = from_torch_dataset(Augmented(), tmp_path / name, workers=workers, progress=False)
        after = torch.rand(1), np.random.rand(), random.random()
        assert (before[0] == after[0]).all() and before[1:] == after[1:]  # the caller's RNGs untouched
        with fastprune.Store(path) as store:
            images = np.stack([store[i][0] for i in range(len(store))])
        return hashlib.md5(path.read_bytes()).hexdigest(), images

    one, images = convert("w1.beton", 1)
    assert convert("w2.beton", 2)[0] == convert("w2again.beton", 2)[0] == one
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == 1200  # no sample repeats another
    assert convert("seed1.beton", 2, seed=1)[0] != one


def _palette_dataset(datasets, n=4):
    """Palette ("P") PNGs, common on the hub: numpy/torch formats read them as their indices."""
    rgb = _images(1)[0]
    images = [Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16) for _ in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    dataset = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)
    return dataset, np.asarray(images[0].convert("RGB"))


@pytest.mark.parametrize("fmt", [None, "numpy", "torch"])
def test_a_formatted_dataset_converts_to_the_same_pixels(tmp_path, fmt):
    """with_format("torch") made a palette image's pixels its palette indices, stored as gray
    without a word; the image column is now decoded by fastprune whatever the format."""
    datasets = pytest.importorskip("datasets")
    dataset, colours = _palette_dataset(datasets)
    with fastprune.Store(from_hf_dataset(dataset.with_format(fmt), tmp_path / "f.beton", progress=False)) as store:
        np.testing.assert_array_equal(store[0][0], colours)
        assert [store[i][1] for i in range(4)] == [0, 1, 0, 1] and store.class_names == ["a", "b"]


def test_encoded_images_are_decoded_with_the_image_folder_formats_only(tmp_path):
    """An Image(decode=False) column (or a parquet struct of bytes and path) was refused ("image is
    a dict"); an Image(mode="L") column keeps its mode; an EPS file in the bytes never reaches PIL's
    EPS plugin (which runs Ghostscript); a missing image is unreadable (skip_unreadable drops it)."""
    import io
    import warnings

    from fastprune.errors import SkippedSamplesWarning, UnreadableSample

    datasets = pytest.importorskip("datasets")
    dataset, colours = _palette_dataset(datasets)
    undecoded = dataset.cast_column("image", datasets.Image(decode=False))
    with fastprune.Store(from_hf_dataset(undecoded, tmp_path / "u.beton", progress=False)) as store:
        np.testing.assert_array_equal(store[1][0], colours)
    gray = dataset.cast_column("image", datasets.Image(mode="L"))
    with fastprune.Store(from_hf_dataset(gray, tmp_path / "g.beton", progress=False)) as store:
        expected = np.asarray(Image.fromarray(colours).convert("L"))
        np.testing.assert_array_equal(store[0][0], np.repeat(expected[:, :, None], 3, axis=2))
    eps = io.BytesIO()
    Image.fromarray(colours).save(eps, "EPS")
    hostile = datasets.Dataset.from_dict(
        {"image": [{"bytes": eps.getvalue(), "path": "cat.jpg"}], "label": [0]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    with pytest.raises(UnreadableSample, match=r"sample 0 of Dataset: image \(cat.jpg\): cannot read image: "
                                               r"not an image of a format read here \(JPEG, PNG"):
        from_hf_dataset(hostile, tmp_path / "e.beton", progress=False)
    holes = datasets.Dataset.from_dict({"image": [Image.fromarray(colours), None, Image.fromarray(colours)],
                                        "label": [0, 1, 0]}, features=dataset.features)
    with pytest.raises(UnreadableSample, match=r"^sample 1 of Dataset: image is missing \(None\)$"):
        from_hf_dataset(holes, tmp_path / "h.beton", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fastprune.Store(from_hf_dataset(holes, tmp_path / "h.beton", progress=False, workers=1,
                                             skip_unreadable=True)) as store:
            assert len(store) == 2
    assert [w for w in caught if issubclass(w.category, SkippedSamplesWarning)]


def test_a_transform_is_read_through_with_its_own_keys(tmp_path):
    """with_transform returning pixel_values/labels: the default keys failed per sample, and the
    keys it asked for were refused as "not a column"; its labels were read by running the
    transform on every row twice (drop_unlabeled)."""
    datasets = pytest.importorskip("datasets")
    dataset, colours = _palette_dataset(datasets, n=6)
    calls = []

    def transform(batch):
        calls.append(len(batch["label"]))
        return {"pixel_values": [np.asarray(image.convert("RGB")) for image in batch["image"]],
                "labels": batch["label"]}

    out = from_hf_dataset(dataset.with_transform(transform), tmp_path / "t.beton", image_column="pixel_values",
                          label_column="labels", progress=False, workers=1, drop_unlabeled=True)
    with fastprune.Store(out) as store:
        np.testing.assert_array_equal(store[5][0], colours)
        assert [store[i][1] for i in range(6)] == [0, 1, 0, 1, 0, 1]
    assert sum(calls) <= 2 * 6 + 1  # labels once per row, then each row's image once (and sample 0's check)


def test_option_mistakes_name_the_option(tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset, _ = _palette_dataset(datasets)
    for options, error, message in (
            ({"jpg": True}, TypeError, r"from_hf_dataset\(\) got an unexpected keyword argument 'jpg'"),
            ({"quality": "90"}, TypeError, "quality must be an integer from 1 to 100, got str '90'"),
            ({"resize": 8}, ConversionError, r"resize must be \(height, width\)"),
            ({"workers": 0}, ValueError, "workers must be an integer >= 1, got 0"),
            ({"jpeg": "yes"}, TypeError, "jpeg must be True or False, got str 'yes'")):
        with pytest.raises(error, match=message):
            from_hf_dataset(dataset, tmp_path / "x.beton", progress=False, **options)
    assert not (tmp_path / "x.beton").exists()


def test_hugging_face_datasets_on_disk_convert_from_the_command_line(tmp_path, capsys):
    """`fastprune convert` of a save_to_disk folder (one split, or a DatasetDict with --split) or a
    .parquet file: "cannot tell what this folder holds" before; a DatasetDict's split folders even
    looked like class folders."""
    from fastprune.cli import main

    datasets = pytest.importorskip("datasets")
    images = _images(6)
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b", "c"])})
    dataset = datasets.Dataset.from_dict({"img": [Image.fromarray(image) for image in images],
                                          "y": [i % 3 for i in range(6)]}, features=features)
    dataset.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": dataset, "validation": dataset.select([4, 5])}).save_to_disk(str(tmp_path / "dd"))
    dataset.to_parquet(str(tmp_path / "one.parquet"))

    def convert(source, *extra):
        out = tmp_path / "out.beton"
        code = main(["convert", str(tmp_path / source), "-o", str(out), "--no-progress", *extra])
        return code, capsys.readouterr()

    for source, extra, rows in (("one", [], [0, 5]), ("dd", ["--split", "validation"], [4, 5]),
                                ("one.parquet", [], [0, 5])):
        code, output = convert(source, "--columns", "img,y", *extra)
        assert code == 0, output.err
        with fastprune.Store(tmp_path / "out.beton") as store:
            assert len(store) == (2 if source == "dd" else 6)
            np.testing.assert_array_equal(store[len(store) - 1][0], images[rows[1]])
            assert store.class_names == ["a", "b", "c"] and store[len(store) - 1][1] == rows[1] % 3
    for source, extra, message in (
            ("one", [], r"image_column='image' is not a column .*--columns IMAGE,LABEL"),
            ("dd", ["--columns", "img,y"], r"dd holds the splits train, validation: pick one with --split"),
            ("dd", ["--columns", "img,y", "--split", "test"], r"it has no split 'test'"),
            ("one", ["--columns", "img,y", "--split", "train"], r"holds one split .*drop --split")):
        code, output = convert(source, *extra)
        assert code == 1 and output.err.count("\n") == 1 and re.search(message, output.err), output.err
    assert main(["convert", "/usr/share/datasets/fashion-mnist", "--split", "validation", "-o",
                 str(tmp_path / "f.beton")]) == 1
    assert "--split of idx sources is train or test, not 'validation'" in capsys.readouterr().err
    # onto its own source: the parquet (or an Arrow file of the saved folder) became the store
    for source, out in (("one.parquet", "one.parquet"), ("one", "one/data-00000-of-00001.arrow")):
        before = (tmp_path / out).read_bytes()
        code = main(["convert", str(tmp_path / source), "-o", str(tmp_path / out), "--columns", "img,y",
                     "--no-progress"])
        assert code == 1 and "is the input file" in capsys.readouterr().err
        assert (tmp_path / out).read_bytes() == before
    for _ in range(2):  # a store kept inside the saved folder is no input of the next conversion
        assert main(["convert", str(tmp_path / "one"), "-o", str(tmp_path / "one" / "train.beton"), "--columns",
                     "img,y", "--no-progress"]) == 0, capsys.readouterr().err
    loaded = datasets.load_from_disk(str(tmp_path / "one"))
    with pytest.raises(ConversionError, match="is the input file"):  # a loaded dataset's own Arrow file
        from_hf_dataset(loaded, loaded.cache_files[0]["filename"], image_column="img", label_column="y",
                        progress=False)
