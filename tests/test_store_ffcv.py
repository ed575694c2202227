"""Interchange with the real ffcv 1.0.2, both directions: fastprune files load in ffcv's own
Loader, ffcv DatasetWriter files open in fastprune.Store with identical values."""

from __future__ import annotations

import gc

import numpy as np
import pytest

ffcv = pytest.importorskip("ffcv", reason="the ffcv extra is not installed")

from ffcv.fields import BytesField as FfcvBytes  # noqa: E402
from ffcv.fields import FloatField as FfcvFloat  # noqa: E402
from ffcv.fields import IntField as FfcvInt  # noqa: E402
from ffcv.fields import NDArrayField as FfcvNDArray  # noqa: E402
from ffcv.fields import RGBImageField as FfcvRGB  # noqa: E402
from ffcv.fields.bytes import BytesDecoder  # noqa: E402
from ffcv.fields.decoders import (FloatDecoder, IntDecoder, NDArrayDecoder,  # noqa: E402
                                  SimpleRGBImageDecoder)
from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.reader import Reader  # noqa: E402
from ffcv.writer import DatasetWriter  # noqa: E402

from fastprune.store import (BytesField, FloatField, IntField, NDArrayField, RGBImageField,  # noqa: E402
                             Store, write_dataset)

# ffcv's numba-compiled memcpy leaves a KeyError in a finalizer at teardown: ffcv's noise, not ours.
pytestmark = [pytest.mark.ffcv,
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


@pytest.fixture(autouse=True, scope="module")
def _collect_ffcv_dispatchers():
    """Run that finalizer here, at the end of this module, where the filter above applies.
    ffcv's dispatchers sit in reference cycles, so without this the next automatic collection
    runs it inside whichever later test happens to allocate (seen in test_loader_transforms, test_train)."""
    yield
    gc.collect()


N = 37  # not a multiple of the batch size: the last, partial batch is checked too
BATCH = 8


def make_rows(n=N, jpeg_friendly=False, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:24, 0:20]
    rows = []
    for i in range(n):
        if jpeg_friendly:  # smooth images, so JPEG error is small and comparable
            image = np.stack([(x * 9 + i) % 256, (y * 5) % 256, ((x + y) * 4) % 256], -1).astype(np.uint8)
        else:
            image = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
        rows.append((image, int(rng.integers(0, 10)), float(rng.normal()),
                     rng.normal(size=(3, 2)).astype(np.float32)))
    return rows


def load_with_ffcv(path, extra_pipelines=None):
    pipelines = {"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()],
                 "weight": [FloatDecoder()], "feat": [NDArrayDecoder()], **(extra_pipelines or {})}
    loader = Loader(str(path), batch_size=BATCH, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines=pipelines)
    batches = [[np.array(part) for part in batch] for batch in loader]
    return [np.concatenate([b[k] for b in batches]) for k in range(len(batches[0]))]


FASTPRUNE_FIELDS = {"image": RGBImageField(), "label": IntField(), "weight": FloatField(),
                    "feat": NDArrayField(np.float32, (3, 2))}


def test_fastprune_raw_file_loads_in_ffcv_loader(tmp_path):
    rows = make_rows()
    path = write_dataset(tmp_path / "fp.beton", rows, FASTPRUNE_FIELDS, workers=2,
                         page_size=1 << 13, progress=False, chunk_size=5)
    images, labels, weights, feats = load_with_ffcv(path)
    np.testing.assert_array_equal(images, np.stack([r[0] for r in rows]))
    np.testing.assert_array_equal(labels.ravel(), [r[1] for r in rows])
    np.testing.assert_array_equal(weights.ravel(), [r[2] for r in rows])
    np.testing.assert_array_equal(feats, np.stack([r[3] for r in rows]))


@pytest.mark.parametrize("os_cache", [False, True], ids=["page cache", "mmap"])
def test_samples_larger_than_the_default_page_grow_the_pages_and_load_in_ffcv(tmp_path, monkeypatch, os_cache):
    """A raw image over 8 MiB (1700 x 1700) stopped every converter: "larger than a page; pass a
    larger page_size", an option no converter or CLI flag has. From such a sample on, pages are
    the smallest power of two that holds it, at multiples of their size, so the pages before lie
    inside them: ffcv's page-reading cache (os_cache=False) and its mmap path read every sample,
    and the source is read once (scaled down here: 4 KiB default pages, blobs of 10,800 and 43,200
    bytes among 100-byte ones)."""
    from fastprune.store import format as fmt

    monkeypatch.setattr(fmt, "DEFAULT_PAGE_SIZE", 1 << 12)
    rng = np.random.default_rng(2)
    sizes = [100] * 10 + [10_800] + [100] * 10 + [43_200] + [100] * (N - 22)
    rows = [(rng.integers(0, 256, size, dtype=np.uint8).tobytes(), i) for i, size in enumerate(sizes)]
    reads = []

    class Source:
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            reads.append(i)
            return rows[i]

    path = write_dataset(tmp_path / "big.beton", Source(), {"blob": BytesField(), "label": IntField()},
                         workers=1, progress=False, chunk_size=5)
    assert sorted(reads) == list(range(N))  # once each: the pages grew in place
    assert [p.name for p in tmp_path.iterdir()] == ["big.beton"]
    with Store(path) as store:
        assert store.page_size == 1 << 16
        assert [store[i] for i in range(N)] == rows
    loader = Loader(str(path), batch_size=1, num_workers=1, order=OrderOption.SEQUENTIAL, os_cache=os_cache,
                    pipelines={"blob": [BytesDecoder()], "label": [IntDecoder()]})
    for (blob, label), (expected, i) in zip(loader, rows):
        assert np.asarray(blob)[0, :len(expected)].tobytes() == expected and int(np.asarray(label).ravel()[0]) == i


def test_fastprune_jpeg_file_loads_in_ffcv_loader(tmp_path):
    rows = make_rows(jpeg_friendly=True)
    fields = dict(FASTPRUNE_FIELDS, image=RGBImageField("jpg", jpeg_quality=90))
    path = write_dataset(tmp_path / "fpj.beton", rows, fields, workers=1, progress=False,
                         page_size=1 << 13)
    images = load_with_ffcv(path)[0]
    with Store(path) as store:
        ours = np.stack([store[i][0] for i in range(N)])
    original = np.stack([r[0] for r in rows])
    assert np.abs(images.astype(int) - original).mean() < 4
    # the same bytes through two JPEG decoders (ffcv's turbojpeg uses fast IDCT/upsampling):
    # equal up to rounding
    diff = np.abs(images.astype(int) - ours)
    assert diff.mean() < 1.5 and diff.max() <= 6


def test_fastprune_bytes_field_loads_in_ffcv_loader(tmp_path):
    rng = np.random.default_rng(1)
    blobs = [rng.integers(0, 256, int(rng.integers(1, 50)), dtype=np.uint8).tobytes() for _ in range(N)]
    path = write_dataset(tmp_path / "b.beton", [(b, i) for i, b in enumerate(blobs)],
                         {"blob": BytesField(), "label": IntField()}, workers=1, progress=False,
                         page_size=1 << 12)
    loader = Loader(str(path), batch_size=BATCH, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={"blob": [BytesDecoder()], "label": [IntDecoder()]})
    got = np.concatenate([np.array(b[0]) for b in loader])
    for i, blob in enumerate(blobs):  # ffcv pads each row to the longest blob
        assert got[i, :len(blob)].tobytes() == blob


def test_an_empty_bytes_value_leaves_the_next_field_intact_in_ffcv(tmp_path):
    """b"" shared its pointer with the next allocation, and ffcv's Loader (sizes found by an
    unstable sort of pointers) read the image after it as 0 bytes: garbage pixels in exactly those
    samples. Empty payloads now take a byte of their own (their recorded size stays 0)."""
    rows = [(b"" if i % 2 == 0 else b"xyz", np.full((4, 4, 3), 10 * i, np.uint8)) for i in range(8)]
    path = write_dataset(tmp_path / "e.beton", rows, {"b": BytesField(), "image": RGBImageField()},
                         workers=1, progress=False, page_size=1 << 12)
    with Store(path) as store:
        assert [store[i][0] for i in range(8)] == [b for b, _ in rows]
        assert store.verify().ok
    loader = Loader(str(path), batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"b": [BytesDecoder()], "image": [SimpleRGBImageDecoder()]})
    images = np.concatenate([np.array(batch[1]) for batch in loader])
    for i, (_, image) in enumerate(rows):
        np.testing.assert_array_equal(images[i], image)


def test_ffcv_reader_sees_the_same_tables(tmp_path):
    rows = make_rows()
    path = write_dataset(tmp_path / "fp.beton", rows, FASTPRUNE_FIELDS, workers=1,
                         progress=False, page_size=1 << 13)
    reader = Reader(str(path))
    with Store(path) as store:
        assert int(reader.num_samples) == store.num_samples and int(reader.page_size) == store.page_size
        assert reader.field_names == list(store.fields)
        np.testing.assert_array_equal(reader.metadata, store.metadata)
        np.testing.assert_array_equal(reader.alloc_table, store.alloc_table)


def test_a_file_with_class_names_loads_in_ffcv_unchanged(tmp_path):
    """The names block lies where ffcv never reads: its Loader and Reader see the same samples and
    tables with names as without, in a file with several pages (workers=2) and a JPEG variant."""
    rows = make_rows()
    names = [f"class {i} — ñame" for i in range(10)]
    for fields in (FASTPRUNE_FIELDS, dict(FASTPRUNE_FIELDS, image=RGBImageField("jpg", jpeg_quality=90))):
        plain = write_dataset(tmp_path / "plain.beton", rows, fields, workers=2, page_size=1 << 13,
                              progress=False, chunk_size=5)
        named = write_dataset(tmp_path / "named.beton", rows, fields, workers=2, page_size=1 << 13,
                              progress=False, chunk_size=5, class_names=names)
        assert named.stat().st_size > plain.stat().st_size
        for got, want in zip(load_with_ffcv(named), load_with_ffcv(plain)):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(load_with_ffcv(named)[1].ravel(), [r[1] for r in rows])
        reader = Reader(str(named))
        with Store(named) as store:
            assert store.class_names == names and store.verify().ok
            np.testing.assert_array_equal(reader.metadata, store.metadata)
            np.testing.assert_array_equal(reader.alloc_table, store.alloc_table)


def write_with_ffcv(path, rows, fields):
    writer = DatasetWriter(str(path), fields, num_workers=1)
    writer.from_indexed_dataset(rows, chunksize=10)
    return path


def test_ffcv_raw_file_opens_in_store(tmp_path):
    rng = np.random.default_rng(2)
    rows = [(*row, rng.integers(0, 256, int(rng.integers(1, 30)), dtype=np.uint8))
            for row in make_rows(seed=2)]
    fields = {"image": FfcvRGB(write_mode="raw"), "label": FfcvInt(), "weight": FfcvFloat(),
              "feat": FfcvNDArray(np.dtype("float32"), (3, 2)), "blob": FfcvBytes()}
    path = write_with_ffcv(tmp_path / "ffcv.beton", rows, fields)
    with Store(path) as store:
        assert list(store.fields) == list(fields)
        assert store.fields["feat"] == NDArrayField(np.float32, (3, 2))
        for i, row in enumerate(rows):
            image, label, weight, feat, blob = store[i]
            np.testing.assert_array_equal(image, row[0])
            assert label == row[1] and weight == row[2]
            np.testing.assert_array_equal(feat, row[3])
            assert blob == row[4].tobytes()
        report = store.verify()
        assert report.ok and not report.has_checksums and "no checksums" in str(report)
        assert store.class_names is None and store.field_class_names == {}  # ffcv keeps none


def test_an_ffcv_files_float_and_array_fields_reach_batches_as_ffcvs_decoders_read_them(tmp_path):
    """Targets that are not classes, in a file ffcv wrote: fastprune's Loader, naming the field as
    label_field, hands out per sample what ffcv's own Loader decodes (FloatDecoder, NDArrayDecoder)."""
    import fastprune

    rows = make_rows(seed=4)
    fields = {"image": FfcvRGB(write_mode="raw"), "label": FfcvInt(), "weight": FfcvFloat(),
              "feat": FfcvNDArray(np.dtype("float32"), (3, 2))}
    path = write_with_ffcv(tmp_path / "targets.beton", rows, fields)
    _, _, weights, feats = load_with_ffcv(path)  # sequential: row i is sample i
    for name, expected in (("weight", weights.ravel()), ("feat", feats)):
        for batch in fastprune.Loader(path, BATCH, label_field=name, seed=0):
            np.testing.assert_array_equal(batch.labels.numpy(), expected[batch.indices.numpy()])


def test_ffcv_jpeg_file_opens_in_store(tmp_path):
    rows = make_rows(jpeg_friendly=True, seed=3)
    path = write_with_ffcv(tmp_path / "ffcvj.beton", [(r[0], r[1]) for r in rows],
                           {"image": FfcvRGB(write_mode="jpg", jpeg_quality=90), "label": FfcvInt()})
    loader = Loader(str(path), batch_size=BATCH, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    ffcv_images = np.concatenate([np.array(b[0]) for b in loader])
    with Store(path) as store:
        assert store.fields["image"].write_mode == "jpg"  # inferred from the samples
        # ffcv records no settings: info showed fastprune's defaults (quality 90) for a file of any quality
        assert repr(store.fields["image"]) == ("RGBImageField(written by ffcv: JPEG samples, quality and "
                                               "max_resolution not recorded)")
        ours = np.stack([store[i][0] for i in range(N)])
        assert [store[i][1] for i in range(N)] == [r[1] for r in rows]
    assert np.abs(ours.astype(int) - np.stack([r[0] for r in rows])).mean() < 4
    diff = np.abs(ours.astype(int) - ffcv_images)
    assert diff.mean() < 1.5 and diff.max() <= 6


def test_ffcv_json_and_tensor_fields_open_in_store(tmp_path):
    import torch
    from ffcv.fields import JSONField as FfcvJSON
    from ffcv.fields import TorchTensorField as FfcvTensor
    rows = [({"id": i, "tags": ["a"] * i}, torch.full((2, 2), float(i))) for i in range(12)]
    path = write_with_ffcv(tmp_path / "json.beton", rows,
                           {"meta": FfcvJSON(), "t": FfcvTensor(torch.float32, (2, 2))})
    with Store(path) as store:
        for i, (meta, tensor) in enumerate(rows):
            got_meta, got_tensor = store[i]
            assert got_meta == meta and torch.equal(got_tensor, tensor)
