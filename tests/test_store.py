"""The packed store on its own: round trips, input validation, atomic writes, corrupt files, verify."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from fastprune import ConversionError, StoreError
from fastprune.errors import SkippedSamplesWarning
from fastprune.store import (BytesField, FloatField, IntField, JSONField, NDArrayField, RGBImageField,
                             Store, TorchTensorField, write_dataset)
from fastprune.store import format as fmt
from fastprune.store.encoding import LeftOut
from fastprune.store.info import describe, verify
from fastprune.store.reader import verify_file

SMALL_PAGE = 1 << 13  # 8 KiB: a few images per page, so page boundaries are exercised


class ListSource:
    """The smallest valid source: a list of tuples."""

    def __init__(self, rows, fail_at=None, exc=RuntimeError):
        self.rows, self.fail_at, self.exc = rows, fail_at, exc

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise self.exc(f"boom at {i}")
        return self.rows[i]


def mixed_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (int(rng.integers(1, 40)), int(rng.integers(1, 40)), 3), dtype=np.uint8),
             int(rng.integers(-5, 1000)),
             float(rng.normal()),
             rng.normal(size=(2, 3)).astype(np.float32),
             rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes())
            for _ in range(n)]


MIXED_FIELDS = {"image": RGBImageField(), "label": IntField(), "weight": FloatField(),
                "feat": NDArrayField(np.float32, (2, 3)), "blob": BytesField()}


def assert_rows_equal(store, rows):
    assert len(store) == len(rows)
    for i, expected in enumerate(rows):
        got = store[i]
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1] == expected[1] and type(got[1]) is int
        assert got[2] == expected[2] and type(got[2]) is float
        np.testing.assert_array_equal(got[3], expected[3])
        assert got[3].dtype == np.float32
        assert got[4] == expected[4]


@pytest.mark.parametrize("workers", [1, 2])
def test_round_trip_all_field_types(tmp_path, workers):
    rows = mixed_rows(300)
    path = write_dataset(tmp_path / "d.beton", ListSource(rows), MIXED_FIELDS, workers=workers,
                         page_size=SMALL_PAGE, progress=False, chunk_size=37)
    with Store(path) as store:
        assert_rows_equal(store, rows)
        assert list(store.fields) == list(MIXED_FIELDS)
        assert store.fields == MIXED_FIELDS
        assert store.page_size == SMALL_PAGE and store.num_samples == 300
        assert store[-1][1] == rows[-1][1]


@pytest.mark.parametrize("workers", [1, 2])
def test_checksums_are_computed_as_samples_are_encoded_not_read_back(tmp_path, workers, monkeypatch):
    """The per-allocation CRC-32s come from the encoded payloads: the writer maps nothing back
    (reading a whole store back cost minutes where it is larger than RAM), and verify() agrees
    with them, empty payloads and skipped samples included."""
    rows = mixed_rows(200, seed=3)
    rows[5] = (*rows[5][:4], b"")  # an empty payload (recorded as size 0, on a pad byte)

    def no_mapping(*args, **kwargs):
        raise AssertionError("the writer mapped a file")

    monkeypatch.setattr(np, "memmap", no_mapping)
    path = write_dataset(tmp_path / "d.beton", ListSource(rows, fail_at=17), MIXED_FIELDS, workers=workers,
                         page_size=SMALL_PAGE, progress=False, chunk_size=37, skip_unreadable=True)
    monkeypatch.undo()
    with Store(path) as store:
        report = store.verify()
        assert report.ok and report.checked_allocations == 199 * 3, report  # image, feat, blob: each checked
        assert_rows_equal(store, rows[:17] + rows[18:])


class LeavingOut(ListSource):
    """Leaves out every sample whose index is in ``left_out`` (a converter's drop_unlabeled)."""

    def __init__(self, rows, left_out, fail_at=None):
        super().__init__(rows, fail_at)
        self.left_out = set(left_out)

    def __getitem__(self, i):
        if i in self.left_out:
            raise LeftOut
        return super().__getitem__(i)


@pytest.mark.parametrize("workers", [1, 2])
def test_samples_the_source_leaves_out_are_not_written_nor_counted_as_skipped(tmp_path, workers):
    """LeftOut: samples left out on purpose, in any chunk (a whole chunk too), beside unreadable
    ones; the rest move up, the index field numbers what was written, checksums verify."""
    rows = mixed_rows(200, seed=4)
    left_out = {0, 1, 36, 37, 38, *range(74, 111), 199}  # chunk edges and chunk 2 (74..110) whole
    kept = [row for i, row in enumerate(rows) if i not in left_out and i != 50]
    with pytest.warns(SkippedSamplesWarning, match=rf"skipped 1 unreadable sample of 157: sample 50 .*; {len(kept)} "
                                                   r"samples written \(43 others left out by the source\)$"):
        path = write_dataset(tmp_path / "d.beton", LeavingOut(rows, left_out, fail_at=50), MIXED_FIELDS,
                             workers=workers, page_size=SMALL_PAGE, progress=False, chunk_size=37,
                             skip_unreadable=True, index_field="index")
    with Store(path) as store:
        assert store.verify().ok
        assert_rows_equal(store, kept)
        assert [store[i][5] for i in range(len(store))] == list(range(len(kept)))
    # a source that leaves out everything writes nothing; one whose only sample kept fails to read, too
    with pytest.raises(ConversionError, match=r"e\.beton: no sample to write: the source left out all 200$"):
        write_dataset(tmp_path / "e.beton", LeavingOut(rows, range(200)), MIXED_FIELDS, workers=workers,
                      progress=False, chunk_size=37, skip_unreadable=True)
    with pytest.raises(ConversionError, match=r"^skipped 1 unreadable sample of 1: sample 50 \(RuntimeError: boom at "
                                              r"50\): not one sample could be read; the write stopped"):
        write_dataset(tmp_path / "e.beton", LeavingOut(rows, set(range(200)) - {50}, fail_at=50), MIXED_FIELDS,
                      workers=workers, progress=False, chunk_size=37, skip_unreadable=True)
    assert not (tmp_path / "e.beton").exists()


def test_a_page_size_given_too_small_names_the_sample_and_the_size_that_fits(tmp_path):
    rows = [(np.zeros((4, 4, 3), np.uint8),), (np.zeros((40, 40, 3), np.uint8),)]
    with pytest.raises(ConversionError, match=r"^sample 1: its data \(4800 bytes\) is larger than a page "
                                              r"\(4096 bytes\); pass page_size=8192 or more$"):
        write_dataset(tmp_path / "s.beton", ListSource(rows), {"image": RGBImageField()}, page_size=1 << 12,
                      workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_store_closed_while_a_loader_reads_it_says_so(tmp_path):
    """Store.close() on one thread while a Loader's producer checks the file on another: the
    producer saw the file object, then close() ran, and fstat raised a bare OSError (Bad file
    descriptor; 5 of 20 tries) instead of the StoreError a closed store gives."""
    import fastprune

    path = write_dataset(tmp_path / "c.beton", ListSource([(np.zeros((4, 4, 3), np.uint8),)] * 32),
                         {"image": RGBImageField()}, progress=False, workers=1)
    store = Store(path)
    store.check_unchanged()
    store._file.close()  # the interleaving: closed, not yet dropped
    with pytest.raises(StoreError, match=r"c\.beton: the store is closed$"):
        store.check_unchanged()
    store.close()
    with pytest.raises(StoreError, match=r"the store is closed$"):
        store.check_unchanged()
    # any other failure to stat the file (ESTALE after another NFS host renamed a new store over
    # it, EIO) is said as such, not as a close the user never made
    import errno
    from unittest import mock

    store = Store(path)
    with mock.patch("os.fstat", side_effect=OSError(errno.ESTALE, "Stale file handle")):
        with pytest.raises(StoreError, match=r"c\.beton: cannot check the file: Stale file handle$"):
            store.check_unchanged()
    store.close()
    reading = Store(path)
    batches = iter(fastprune.Loader(reading, 1, prefetch=1))  # 32 batches: most still to make
    next(batches)
    reading.close()
    with pytest.raises(StoreError, match="the store is closed"):
        for _ in batches:
            pass


def test_written_file_gets_normal_permissions(tmp_path):
    path = write_dataset(tmp_path / "p.beton", ListSource([(1,)]), {"label": IntField()}, progress=False)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_parallel_and_serial_files_are_identical(tmp_path):
    rows = mixed_rows(500, seed=3)
    a = write_dataset(tmp_path / "a.beton", ListSource(rows), MIXED_FIELDS, workers=1,
                      page_size=SMALL_PAGE, progress=False)
    b = write_dataset(tmp_path / "b.beton", ListSource(rows), MIXED_FIELDS, workers=2,
                      page_size=SMALL_PAGE, progress=False, chunk_size=50)
    assert a.read_bytes() == b.read_bytes()


def test_field_ranges_point_at_the_payload_bytes(tmp_path):
    rows = mixed_rows(120, seed=1)
    path = write_dataset(tmp_path / "d.beton", ListSource(rows), MIXED_FIELDS, workers=1,
                         page_size=SMALL_PAGE, progress=False)
    with Store(path) as store:
        buf = store.buffer
        for name, k in [("image", 0), ("feat", 3), ("blob", 4)]:
            offsets, sizes = store.field_ranges(name)
            assert offsets.dtype == np.uint64 and sizes.dtype == np.uint64 and offsets.shape == (120,)
            for i, row in enumerate(rows):
                expected = np.ascontiguousarray(row[k]).tobytes() if k != 4 else row[k]
                assert buf[int(offsets[i]):int(offsets[i] + sizes[i])].tobytes() == expected
        offsets, sizes = store.field_ranges("label")  # scalars: the 8 bytes inside the metadata
        labels = np.array([buf[int(o):int(o) + 8].view("<i8")[0] for o in offsets])
        np.testing.assert_array_equal(labels, [r[1] for r in rows])
        with pytest.raises(KeyError, match="nope"):
            store.field_ranges("nope")


def test_every_sample_stays_inside_one_page(tmp_path):
    rows = mixed_rows(400, seed=2)
    path = write_dataset(tmp_path / "d.beton", ListSource(rows), MIXED_FIELDS, workers=1,
                         page_size=SMALL_PAGE, progress=False)
    with Store(path) as store:
        table = store.alloc_table
        data_start = fmt.align_up(store.metadata_end, SMALL_PAGE)
        first = (table["ptr"].astype(np.int64) - data_start) // SMALL_PAGE
        last = (table["ptr"].astype(np.int64) + table["size"].astype(np.int64) - 1 - data_start) // SMALL_PAGE
        nonempty = table["size"] > 0
        assert (first[nonempty] == last[nonempty]).all()
        for sid in np.unique(table["sample_id"]):
            pages = first[(table["sample_id"] == sid) & nonempty]
            assert len(set(pages.tolist())) <= 1
        assert (first[nonempty] >= 0).all() and first.max() >= 5  # several pages were used


def test_buffer_and_metadata_are_read_only_views(tmp_path):
    path = write_dataset(tmp_path / "d.beton", ListSource(mixed_rows(10)), MIXED_FIELDS, workers=1,
                         progress=False, page_size=SMALL_PAGE)
    with Store(path) as store:
        assert not store.buffer.flags.writeable and not store.metadata.flags.writeable
        assert store.buffer.size == os.path.getsize(path)
        assert store.metadata.base is not None  # a view of the mapping, not a copy
        with pytest.raises(ValueError):
            store.metadata["f1"][0] = 3
    with pytest.raises(StoreError, match="closed"):
        store[0]


def test_index_errors(tmp_path):
    path = write_dataset(tmp_path / "d.beton", ListSource(mixed_rows(4)), MIXED_FIELDS, workers=1,
                         progress=False, page_size=SMALL_PAGE)
    with Store(path) as store:
        with pytest.raises(IndexError, match="sample 4"):
            store[4]
        with pytest.raises(IndexError):
            store[-5]
        with pytest.raises(TypeError):
            store[1.0]


def smooth_images(n, h=32, w=40):
    y, x = np.mgrid[0:h, 0:w]
    return [np.stack([(x * 6 + i) % 256, (y * 7) % 256, ((x + y) * 3 + 5 * i) % 256], -1).astype(np.uint8)
            for i in range(n)]


def test_jpeg_round_trip_within_tolerance(tmp_path):
    images = smooth_images(20)
    path = write_dataset(tmp_path / "j.beton", ListSource([(im, i) for i, im in enumerate(images)]),
                         {"image": RGBImageField("jpg", jpeg_quality=95), "label": IntField()},
                         workers=1, progress=False, page_size=SMALL_PAGE)
    with Store(path) as store:
        assert store.fields["image"].write_mode == "jpg"
        assert (store.metadata["f0"]["mode"] == fmt.IMAGE_MODE_JPG).all()
        _, sizes = store.field_ranges("image")
        assert (sizes < images[0].nbytes).all()  # actually compressed
        for i, image in enumerate(images):
            got = store[i][0]
            assert got.shape == image.shape and got.dtype == np.uint8
            assert np.abs(got.astype(int) - image).mean() < 4


def test_jpeg_quality_override_is_applied_and_recorded(tmp_path):
    rows = [(im,) for im in smooth_images(10)]
    sizes = {}
    for q in (30, 95):
        path = write_dataset(tmp_path / f"q{q}.beton", ListSource(rows), {"image": RGBImageField("jpg")},
                             jpeg_quality=q, workers=1, progress=False, page_size=SMALL_PAGE)
        with Store(path) as store:
            assert store.fields["image"].jpeg_quality == q
            sizes[q] = int(store.field_ranges("image")[1].sum())
    assert sizes[30] < sizes[95]


def test_grey_and_pil_images_become_rgb(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    rows = [(grey,), (grey[:, :, None],), (Image.fromarray(grey),), (Image.fromarray(rgb),)]
    path = write_dataset(tmp_path / "g.beton", ListSource(rows), {"image": RGBImageField()},
                         workers=1, progress=False, page_size=SMALL_PAGE)
    with Store(path) as store:
        for i in range(3):
            np.testing.assert_array_equal(store[i][0], np.repeat(grey[:, :, None], 3, axis=2))
        np.testing.assert_array_equal(store[3][0], rgb)


def test_max_resolution_shrinks_the_longer_side(tmp_path):
    rows = [(np.zeros((50, 100, 3), np.uint8),), (np.zeros((10, 12, 3), np.uint8),)]
    path = write_dataset(tmp_path / "m.beton", ListSource(rows), {"image": RGBImageField(max_resolution=20)},
                         workers=1, progress=False, page_size=SMALL_PAGE)
    with Store(path) as store:
        assert store[0][0].shape == (10, 20, 3)
        assert store[1][0].shape == (10, 12, 3)  # already small enough: untouched
        assert store.fields["image"].max_resolution == 20


@pytest.mark.parametrize("fields, row, pattern", [
    ({"image": RGBImageField()}, (np.zeros((4, 4, 3), np.float32),), "uint8"),
    ({"image": RGBImageField()}, (np.zeros((4, 4, 4), np.uint8),), "shape"),
    ({"image": RGBImageField()}, ("not an image",), "expected an image"),
    ({"label": IntField()}, (True,), "bool"),
    ({"label": IntField()}, (2.5,), "expected an integer"),
    ({"label": IntField()}, ("3",), "expected an integer"),
    ({"label": IntField()}, (1 << 70,), "int64"),
    ({"x": FloatField()}, ("1.0",), "real number"),
    ({"a": NDArrayField(np.float32, (2, 3))}, (np.zeros((3, 2), np.float32),), "shape"),
    ({"a": NDArrayField(np.int16, (2,))}, (np.zeros(2, np.int64),), "cast"),
    ({"b": BytesField()}, ("text",), "bytes"),
])
def test_bad_values_name_sample_and_field(tmp_path, fields, row, pattern):
    name = next(iter(fields))
    good = {"image": (np.zeros((4, 4, 3), np.uint8),), "label": (1,), "x": (1.0,),
            "a": (np.zeros(fields[name].shape if hasattr(fields[name], "shape") else (1,),
                           getattr(fields[name], "dtype", np.float32)),),
            "b": (b"ok",)}[name]
    rows = [good, good, row, good]
    with pytest.raises(ConversionError, match=pattern) as info:
        write_dataset(tmp_path / "bad.beton", ListSource(rows), fields, workers=1, progress=False,
                      page_size=SMALL_PAGE)
    assert "sample 2" in str(info.value) and repr(name) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_accepts_numpy_and_tensor_scalars(tmp_path):
    import torch
    rows = [(np.int32(3), np.float32(0.5)), (torch.tensor(7), 2), (np.array(9), np.float64(1.25))]
    path = write_dataset(tmp_path / "s.beton", ListSource(rows), {"label": IntField(), "x": FloatField()},
                         workers=1, progress=False, page_size=SMALL_PAGE)
    with Store(path) as store:
        assert [store[i] for i in range(3)] == [(3, 0.5), (7, 2.0), (9, 1.25)]


def test_source_errors(tmp_path):
    out = tmp_path / "x.beton"
    with pytest.raises(ConversionError, match="empty"):
        write_dataset(out, ListSource([]), {"label": IntField()}, progress=False)
    with pytest.raises(ConversionError, match="sample 1: the source returned 2 values"):
        write_dataset(out, ListSource([(1,), (1, 2)]), {"label": IntField()}, workers=1, progress=False)
    with pytest.raises(ValueError, match="field name"):
        write_dataset(out, ListSource([(1,)]), {"a_name_longer_than_16": IntField()}, progress=False)
    with pytest.raises(ValueError, match="page_size"):
        write_dataset(out, ListSource([(1,)]), {"label": IntField()}, page_size=3000, progress=False)
    with pytest.raises(ConversionError, match="sample 0: its data .* larger than a page"):
        write_dataset(out, ListSource([(np.zeros((64, 64, 3), np.uint8),)]), {"image": RGBImageField()},
                      workers=1, page_size=4096, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failing_source_leaves_no_file_and_no_temp(tmp_path, workers, exc):
    rows = mixed_rows(700, seed=4)
    if workers == 2 and exc is KeyboardInterrupt:
        exc = SystemExit  # a BaseException raised inside a pool worker
    expected = ConversionError if exc is RuntimeError else (KeyboardInterrupt, SystemExit, Exception)
    with pytest.raises(expected) as info:
        write_dataset(tmp_path / "d.beton", ListSource(rows, fail_at=613, exc=exc), MIXED_FIELDS,
                      workers=workers, progress=False, page_size=SMALL_PAGE, chunk_size=64)
    if exc is RuntimeError:
        assert "sample 613" in str(info.value) and "boom" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_an_existing_file(tmp_path):
    out = tmp_path / "d.beton"
    write_dataset(out, ListSource([(1,), (2,)]), {"label": IntField()}, progress=False)
    before = out.read_bytes()
    with pytest.raises(ConversionError):
        write_dataset(out, ListSource([(1,), (2,)], fail_at=1), {"label": IntField()}, progress=False)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["d.beton"]


# --- corrupt and foreign files ---------------------------------------------------------------------

@pytest.fixture
def good_file(tmp_path):
    return write_dataset(tmp_path / "good.beton", ListSource(mixed_rows(60, seed=7)), MIXED_FIELDS,
                         workers=1, progress=False, page_size=SMALL_PAGE)


def corrupted_copy(src, dst, offset, value: bytes):
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(value)
    return dst


def test_truncated_files_raise_store_error(good_file, tmp_path):
    data = good_file.read_bytes()
    with Store(good_file) as store:
        cuts = [10, 30, fmt.metadata_start(5) + 50, store.metadata_end + 100, store.alloc_table_ptr + 7,
                len(data) - 24]
    for cut in cuts:
        bad = tmp_path / f"cut{cut}.beton"
        bad.write_bytes(data[:cut])
        with pytest.raises(StoreError, match=str(bad)):
            Store(bad)


def test_non_store_files_raise_store_error(tmp_path):
    cases = {"empty": b"", "text": b"hello, this is not a store file at all" * 10,
             "random": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(StoreError, match=name):
            Store(tmp_path / name)
    with pytest.raises(StoreError, match="not a regular file"):
        Store(tmp_path)
    with pytest.raises(StoreError, match="missing"):
        Store(tmp_path / "missing.beton")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StoreError, match="not a regular file"):  # must not block on open
        Store(tmp_path / "fifo")


def test_corrupted_header_and_pointers_raise_store_error(good_file, tmp_path):
    with Store(good_file) as store:
        meta_start = fmt.metadata_start(5)
        image_ptr_offset = meta_start + 3 * store.metadata.dtype.itemsize + 5  # sample 3's data_ptr
        blob_size_offset = meta_start + 9 * store.metadata.dtype.itemsize + \
            store.metadata.dtype.fields["f4"][1] + 8  # sample 9's blob size
        table_ptr = store.alloc_table_ptr
    huge = np.uint64(1 << 60).tobytes()
    cases = [
        ("version", 0, b"\x07\x00", "version"),
        ("fields0", 2, b"\x00\x00", "0 fields"),
        ("fieldsmany", 2, b"\xff\xff", "descriptors end"),
        ("pagesize", 4, b"\x00\x30\x00\x00", "power of two"),
        ("samples", 8, huge, "samples of metadata"),
        ("tableptr", 16, huge, "alloc_table_ptr"),
        ("typeid", fmt.HEADER_TYPE.itemsize, b"\x09", "type id 9"),
        ("imageptr", image_ptr_offset, huge, "sample 3, field 'image'"),
        ("blobsize", blob_size_offset, huge, "sample 9, field 'blob'"),
        ("allocentry", table_ptr + 8, huge, "allocation table entry 0"),
    ]
    for name, offset, value, pattern in cases:
        bad = corrupted_copy(good_file, tmp_path / f"{name}.beton", offset, value)
        with pytest.raises(StoreError, match=pattern):
            Store(bad)


def test_verify_clean_file(good_file):
    with Store(good_file) as store:
        report = store.verify()
        assert report.ok and report.has_checksums and report.checked_allocations == 60 * 3
        assert verify(store) is not None
        assert "OK" in str(report)


def test_verify_names_the_sample_with_a_flipped_data_byte(good_file, tmp_path):
    with Store(good_file) as store:
        offsets, _ = store.field_ranges("feat")
        target = int(offsets[41]) + 2
        original = store.buffer[target]
    bad = corrupted_copy(good_file, tmp_path / "flip.beton", target, bytes([original ^ 0x10]))
    with Store(bad) as store:
        report = store.verify()
        assert not report.ok and report.bad_samples.tolist() == [41]
        assert "samples 41" in str(report)
        with pytest.raises(StoreError, match="samples 41"):
            verify(store)
    assert verify_file(bad).bad_samples.tolist() == [41]


def test_verify_detects_a_changed_label(good_file, tmp_path):
    with Store(good_file) as store:
        offset = int(store.field_ranges("label")[0][5])
        value = store.buffer[offset]
    bad = corrupted_copy(good_file, tmp_path / "label.beton", offset, bytes([value ^ 1]))
    report = verify_file(bad)
    assert not report.ok and "metadata" in str(report)


def test_verify_file_reports_unopenable_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"junk" * 100)
    report = verify_file(tmp_path / "junk")
    assert not report.ok and not report.structure_ok and "junk" in str(report)


def test_describe_lists_fields_histogram_and_size(tmp_path):
    rows = [(np.zeros((8, 9, 3), np.uint8), i % 3, 0.0) for i in range(30)]
    path = write_dataset(tmp_path / "d.beton", ListSource(rows),
                         {"image": RGBImageField(), "label": IntField(), "w": FloatField()},
                         workers=1, progress=False, page_size=SMALL_PAGE)
    with Store(path) as store:
        text = describe(store, verify=True)
    assert "samples:     30" in text and "8x9 px" in text and "classes (label): 3" in text
    for value in range(3):
        assert f"     {value}        10" in text
    assert str(os.path.getsize(path)) in text and "OK" in text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=40), seed=st.integers(0, 2**16))
def test_variable_bytes_round_trip_property(tmp_path, sizes, seed):
    rng = np.random.default_rng(seed)
    rows = [(rng.integers(0, 256, n, dtype=np.uint8).tobytes(), n) for n in sizes]
    path = write_dataset(tmp_path / "p.beton", ListSource(rows), {"blob": BytesField(), "n": IntField()},
                         workers=1, progress=False, page_size=SMALL_PAGE, chunk_size=7)
    with Store(path) as store:
        assert [store[i] for i in range(len(rows))] == rows
        assert store.verify().ok


class DyingSource(ListSource):
    def __getitem__(self, i):
        if i == self.fail_at:
            os._exit(3)  # a worker that vanishes without reporting anything
        return self.rows[i]


def test_a_worker_that_dies_fails_the_write_instead_of_hanging(tmp_path):
    rows = [(i,) for i in range(2000)]
    with pytest.raises(ConversionError, match="worker process died"):
        write_dataset(tmp_path / "d.beton", DyingSource(rows, fail_at=1500), {"label": IntField()},
                      workers=2, progress=False, chunk_size=100)
    assert list(tmp_path.iterdir()) == []


class ChunkLoggingSource(ListSource):
    """Appends each chunk's first sample to a file as a (forked) worker starts encoding it."""

    def __init__(self, rows, log, chunk_size):
        super().__init__(rows)
        self.log, self.chunk_size = log, chunk_size

    def __getitem__(self, i):
        if i % self.chunk_size == 0:
            with open(self.log, "a") as f:
                f.write(f"{i}\n")
        return super().__getitem__(i)


def test_workers_encode_in_sample_order_a_bounded_window_ahead_of_the_writer(tmp_path, monkeypatch):
    """Chunks were submitted all at once in reverse order, so chunk 0 (the one the writer waits
    for) was encoded last and every encoded chunk waited in memory: a 5.5 GB store held 5.4 GB in
    the writing process, with the progress bar at 0% until the end."""
    from fastprune.store import encoding, writer

    log = tmp_path / "started.txt"
    log.write_text("")
    started_at_write = []
    add_chunk = writer._FileWriter.add_chunk

    def recording_add_chunk(self, chunk):
        started_at_write.append(len(log.read_text().split()))
        return add_chunk(self, chunk)

    monkeypatch.setattr(writer._FileWriter, "add_chunk", recording_add_chunk)
    rows = [(i,) for i in range(2000)]
    path = write_dataset(tmp_path / "d.beton", ChunkLoggingSource(rows, log, 50), {"label": IntField()},
                         workers=2, progress=False, chunk_size=50)
    window = encoding.CHUNKS_IN_FLIGHT_PER_WORKER * 2
    started = [int(x) for x in log.read_text().split()]
    assert sorted(started) == list(range(0, 2000, 50)) and started[0] in (0, 50)  # sample order, give or take a race
    # when chunk k is written, chunks up to k + window (the window, refilled) may have started
    assert len(started_at_write) == 40 and all(n <= k + window + 1 for k, n in enumerate(started_at_write))
    with Store(path) as store:
        assert [store[i][0] for i in (0, 999, 1999)] == [0, 999, 1999]


def test_json_and_torch_tensor_fields_round_trip(tmp_path):
    import torch
    rows = [({"box": [i, i + 1], "name": f"n{i}"}, torch.arange(4, dtype=torch.int32) * i) for i in range(5)]
    path = write_dataset(tmp_path / "j.beton", ListSource(rows),
                         {"meta": JSONField(), "t": TorchTensorField(np.int32, (4,))},
                         workers=1, progress=False, page_size=SMALL_PAGE)
    with Store(path) as store:
        for i, (meta, tensor) in enumerate(rows):
            got_meta, got_tensor = store[i]
            assert got_meta == meta and torch.equal(got_tensor, tensor)
    with pytest.raises(ConversionError, match="sample 0, field 'meta'.*JSON"):
        write_dataset(tmp_path / "bad.beton", ListSource([(object(),)]), {"meta": JSONField()},
                      workers=1, progress=False)
    # a payload nested 100,000 deep (a crafted file) raised a bare RecursionError naming nothing
    deep = write_dataset(tmp_path / "deep.beton", ListSource([("x" * 100_010,)]), {"meta": JSONField()},
                         workers=1, progress=False)
    with Store(deep) as store:
        offsets, _ = store.field_ranges("meta")
    with open(deep, "r+b") as f:
        f.seek(int(offsets[0]))
        f.write(b"[" * 100_000)
    with Store(deep) as store, pytest.raises(StoreError, match=r"deep.beton: sample 0, field 'meta' cannot be decoded"):
        store[0]


def test_native_crc32_equals_zlib_on_every_tail_length_and_range():
    """The slicing-by-8 CRC kernel (csrc/store_checks.cpp) that verify() and the writer use for
    per-sample checksums: the same value as zlib.crc32 for every length mod 8, chained starts, and
    byte ranges at any offset (the checksums are compared with values zlib wrote elsewhere)."""
    import zlib

    from fastprune._native import core

    data = np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8)
    for n in list(range(20)) + [63, 64, 65, 299, 300]:
        assert core.testing.crc32(data[:n]) == zlib.crc32(data[:n].tobytes()), n
        start = zlib.crc32(b"prefix")
        assert core.testing.crc32(data[:n], start) == zlib.crc32(data[:n].tobytes(), start), n
    offsets = np.array([0, 1, 7, 8, 13, 299, 300], np.uint64)
    sizes = np.array([300, 9, 0, 17, 250, 1, 0], np.uint64)
    got = core.crc32_ranges(data, offsets, sizes, 2)
    assert list(got) == [zlib.crc32(data[o:o + s].tobytes()) for o, s in zip(offsets.astype(int), sizes.astype(int))]


def _photo_and_noise():
    import matplotlib
    from PIL import Image

    photo = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
    noise = np.random.default_rng(0).integers(0, 256, (257, 383, 3), dtype=np.uint8)
    return [np.asarray(photo.convert("RGB")), noise]


@pytest.mark.parametrize("block", [1 << 23, 1000])  # one block of running sums, and many
def test_area_shrink_without_opencv_matches_opencv(monkeypatch, block):
    """Every shrink goes through store.images.resize_image: OpenCV's INTER_AREA when importable,
    else the numpy computation of the same filter, which must agree to within 1 grey level."""
    cv2 = pytest.importorskip("cv2")
    from fastprune.store import images

    monkeypatch.setattr(images, "_BLOCK_VALUES", block)
    for image in _photo_and_noise():
        rows, cols = image.shape[:2]
        for height, width in [(rows // 2, cols // 2), (rows // 3, cols // 3), (int(rows * 0.7), int(cols * 0.7)),
                              (int(rows * 0.37), int(cols * 0.9)), (rows - 1, cols - 1), (rows, cols // 4), (1, 1)]:
            expected = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA).astype(int)
            got = images._area_shrink(image, height, width).astype(int)
            assert got.shape == expected.shape
            diff = np.abs(got - expected)
            assert diff.max() <= 1 and diff.mean() < 0.2, (image.shape, height, width)
    monkeypatch.setattr(images, "_opencv", lambda: None)
    image = _photo_and_noise()[0]
    np.testing.assert_array_equal(images.resize_image(image, 200, 170), images._area_shrink(image, 200, 170))


def test_store_and_converters_shrink_with_the_same_filter(tmp_path):
    """RGBImageField(max_resolution) and the converters' max_side give identical pixels for the
    same target size: both call store.images.resize_image."""
    from fastprune.convert._common import fit_image
    from fastprune.store.images import resize_image

    image = _photo_and_noise()[0]  # 600 x 512: both round to 100 x 85 for a longer side of 100
    path = write_dataset(tmp_path / "m.beton", ListSource([(image,)]), {"image": RGBImageField(max_resolution=100)},
                         workers=1, progress=False)
    with Store(path) as store:
        stored = store[0][0]
    np.testing.assert_array_equal(stored, resize_image(image, 100, 85))
    np.testing.assert_array_equal(fit_image(image, max_side=100), stored)
