"""Boundaries of the store's writer, fields and reader that no other test pinned down: a mutation
audit (one change at a time to store/*.py) found each of these changes passing the whole suite.
Exact fits (a sample filling its page, a JPEG at max_resolution, an allocation ending at the
table), ffcv's layout rules, and refusals that keep a file readable."""

import numpy as np
import pytest
from test_store import ListSource

from fastprune.errors import ConversionError, StoreError
from fastprune.store import format as fmt
from fastprune.store.fields import BytesField, EncodedJpeg, FloatField, IntField, NDArrayField, RGBImageField
from fastprune.store.images import encode_jpeg
from fastprune.store.reader import Store
from fastprune.store.writer import write_dataset


def _write(path, rows, fields, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return write_dataset(path, ListSource(rows), fields, **kw)


def _patch(path, offset, data: bytes):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


# --- writer: layout -------------------------------------------------------------------------------

def test_a_sample_that_exactly_fills_the_rest_of_a_page_stays_in_it(tmp_path):
    """ffcv's allocator (memory_allocator.py: `if size > self.space_left_in_page`) keeps a sample
    that fits exactly; four 2 KiB samples take two 4 KiB pages, back to back."""
    path = _write(tmp_path / "s.beton", [(bytes([i]) * 2048,) for i in range(4)], {"b": BytesField()},
                  page_size=4096)
    with Store(path) as store:
        offsets, _ = store.field_ranges("b")
        start = int(offsets[0])
        assert [int(o) - start for o in offsets] == [0, 2048, 4096, 6144]
        assert [store[i][0] for i in range(4)] == [bytes([i]) * 2048 for i in range(4)]


def test_the_page_size_asked_for_is_the_smallest_power_of_two_that_holds_the_sample(tmp_path):
    with pytest.raises(ConversionError, match=r"pass page_size=8192 or more"):
        _write(tmp_path / "s.beton", [(b"x" * 8192,)], {"b": BytesField()}, page_size=4096)
    # default pages grow to exactly the sample's size when it is a power of two
    path = _write(tmp_path / "g.beton", [(b"y" * (1 << 24),)], {"b": BytesField()})
    with Store(path) as store:
        assert store.page_size == 1 << 24
        assert store[0][0] == b"y" * (1 << 24)


def test_page_size_2_gib_is_in_the_documented_range(tmp_path):
    """page_size: "power of two from 4 KiB to 2 GiB": 2**31 passes the argument check (the source's
    own error is what stops this write, before any page is written)."""

    class Boom:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise RuntimeError("sentinel from the source")

    with pytest.raises(ConversionError, match="sentinel from the source"):
        write_dataset(tmp_path / "s.beton", Boom(), {"label": IntField()}, page_size=1 << 31,
                      workers=1, progress=False)
    with pytest.raises(ValueError, match="page_size"):
        write_dataset(tmp_path / "s.beton", Boom(), {"label": IntField()}, page_size=1 << 32,
                      workers=1, progress=False)


def test_default_page_size_is_ffcvs_8_mib(tmp_path):
    path = _write(tmp_path / "s.beton", [(1,), (2,)], {"label": IntField()})
    with Store(path) as store:
        assert store.page_size == 1 << 23


# --- writer: argument checks ----------------------------------------------------------------------

def test_a_field_name_with_a_nul_byte_is_refused(tmp_path):
    """The format NUL-pads names and readers (ffcv's too) stop at the first NUL: "a\\0b" would be
    read back as "a" (and "a\\0b", "a\\0c" as two fields named "a": an unreadable file)."""
    with pytest.raises(ValueError, match="field name"):
        _write(tmp_path / "s.beton", [(1, 2)], {"a\x00b": IntField(), "a\x00c": IntField()})
    assert not (tmp_path / "s.beton").exists()


def test_an_index_field_named_like_an_existing_field_is_refused(tmp_path):
    """Otherwise the index silently replaces that field's values (the labels)."""
    with pytest.raises(ValueError, match="already one of the fields"):
        _write(tmp_path / "s.beton", [(7,), (7,)], {"label": IntField()}, index_field="label")


# --- fields ---------------------------------------------------------------------------------------

def test_int64_minimum_round_trips(tmp_path):
    values = [-(1 << 63), (1 << 63) - 1, 0]
    path = _write(tmp_path / "s.beton", [(v,) for v in values], {"x": IntField()})
    with Store(path) as store:
        assert [store[i][0] for i in range(3)] == values


def test_float_field_refuses_a_bool(tmp_path):
    with pytest.raises(ConversionError, match="sample 0, field 'y'"):
        _write(tmp_path / "s.beton", [(True,)], {"y": FloatField()})


def test_a_jpeg_exactly_max_resolution_is_stored_as_is(tmp_path):
    """EncodedJpeg larger than max_resolution is decoded and shrunk; one whose longer side equals it
    needs no shrinking and must keep its bytes (no second lossy encode)."""
    rng = np.random.default_rng(0)
    data = bytes(encode_jpeg(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8), 75))
    path = _write(tmp_path / "s.beton", [(EncodedJpeg(data, 8, 16),)],
                  {"image": RGBImageField("jpg", jpeg_quality=90, max_resolution=16)})
    with Store(path) as store:
        offsets, sizes = store.field_ranges("image")
        assert store.buffer[int(offsets[0]):int(offsets[0]) + int(sizes[0])].tobytes() == data


def test_ffcv_field_with_mixed_modes_is_not_reported_as_jpg():
    """Judgement call: ffcv's RGBImageField keeps no write mode; fastprune infers 'jpg' only when
    every sample is a JPEG."""
    metadata = np.zeros(2, dtype=fmt.RGB_METADATA)
    metadata["mode"] = [fmt.IMAGE_MODE_JPG, fmt.IMAGE_MODE_RAW]
    assert RGBImageField.from_binary(np.zeros(fmt.FIELD_ARGS_BYTES, np.uint8), metadata).write_mode == "raw"
    metadata["mode"] = fmt.IMAGE_MODE_JPG
    assert RGBImageField.from_binary(np.zeros(fmt.FIELD_ARGS_BYTES, np.uint8), metadata).write_mode == "jpg"


# --- reader: validation ---------------------------------------------------------------------------

def test_a_header_page_size_of_zero_is_refused(tmp_path):
    path = _write(tmp_path / "s.beton", [(1,)], {"label": IntField()})
    _patch(path, fmt.HEADER_TYPE.fields["page_size"][1], np.uint32(0).tobytes())
    with pytest.raises(StoreError, match="page_size 0"):
        Store(path)


def test_a_field_name_is_read_up_to_its_first_nul_as_ffcv_does(tmp_path):
    path = _write(tmp_path / "s.beton", [(1,)], {"abc": IntField()})
    name_at = fmt.HEADER_TYPE.itemsize + fmt.FIELD_DESC_TYPE.fields["name"][1]
    _patch(path, name_at, b"a\x00c")
    with Store(path) as store:
        assert list(store.fields) == ["a"]  # ffcv.utils.decode_null_terminated_string


def test_duplicate_field_names_are_refused(tmp_path):
    path = _write(tmp_path / "s.beton", [(1, 2)], {"aa": IntField(), "bb": IntField()})
    second = fmt.HEADER_TYPE.itemsize + fmt.FIELD_DESC_TYPE.itemsize + fmt.FIELD_DESC_TYPE.fields["name"][1]
    _patch(path, second, b"aa")
    with pytest.raises(StoreError, match="appears twice"):
        Store(path)


def test_a_jpeg_with_an_empty_allocation_is_refused_when_opened(tmp_path):
    image = np.full((8, 8, 3), 100, np.uint8)
    path = _write(tmp_path / "s.beton", [(image,), (image,)], {"image": RGBImageField("jpg")})
    with Store(path) as store:
        table_at = store.alloc_table_ptr
    _patch(path, table_at + fmt.ALLOC_TABLE_TYPE.fields["size"][1], np.uint64(0).tobytes())
    with pytest.raises(StoreError, match="inconsistent image metadata"):
        Store(path)


def test_an_empty_allocation_sharing_its_pointer_does_not_hide_the_next_field(tmp_path):
    """ffcv's writer gives an empty BytesField value the pointer of the sample's next allocation
    (fastprune pads it to a byte of its own). Such an ffcv file must still read the next field."""
    rows = [(b"", np.arange(4, dtype=np.uint8)), (b"zz", np.arange(4, 8, dtype=np.uint8))]
    path = _write(tmp_path / "s.beton", rows, {"b": BytesField(), "x": NDArrayField(np.uint8, (4,))})
    with Store(path) as store:
        meta_start = fmt.metadata_start(2)
        x_ptr = int(store.alloc_table["ptr"][1])  # sample 0's x, right after b's pad byte
        assert int(store.alloc_table["ptr"][0]) == x_ptr - 1
        table_at = store.alloc_table_ptr
    # as ffcv writes it: sample 0's empty b points where its x starts
    _patch(path, meta_start + 0 + fmt.BYTES_METADATA.fields["ptr"][1], np.uint64(x_ptr).tobytes())
    _patch(path, table_at + fmt.ALLOC_TABLE_TYPE.fields["ptr"][1], np.uint64(x_ptr).tobytes())
    with Store(path) as store:
        assert store[0][0] == b""
        assert store[0][1].tolist() == [0, 1, 2, 3]


def test_an_allocation_ending_exactly_at_the_allocation_table_is_in_bounds(tmp_path):
    """An ffcv file (no checksum block) whose last page is filled exactly: its last allocation ends
    where the allocation table begins."""
    path = _write(tmp_path / "s.beton", [(b"\x07" * 4096,)], {"b": BytesField()}, page_size=4096)
    with Store(path) as store:
        data_end = int(store.alloc_table["ptr"][0]) + 4096
        table = store.alloc_table.tobytes()
    raw = bytearray(path.read_bytes()[:data_end] + table)  # drop fastprune's CRC block and trailer
    at = fmt.HEADER_TYPE.fields["alloc_table_ptr"][1]
    raw[at:at + 8] = np.uint64(data_end).tobytes()
    ffcv_like = tmp_path / "ffcv_like.beton"
    ffcv_like.write_bytes(bytes(raw))
    with Store(ffcv_like) as store:
        assert store[0][0] == b"\x07" * 4096


# --- checksums ------------------------------------------------------------------------------------

def test_a_sample_with_two_damaged_fields_is_counted_once(tmp_path):
    rows = [(bytes([i]) * 32, np.full(4, i, np.uint8)) for i in range(3)]
    path = _write(tmp_path / "s.beton", rows, {"b": BytesField(), "x": NDArrayField(np.uint8, (4,))})
    with Store(path) as store:
        b_at, x_at = int(store.field_ranges("b")[0][1]), int(store.field_ranges("x")[0][1])
    _patch(path, b_at, b"\xff")
    _patch(path, x_at, b"\xff")
    with Store(path) as store:
        report = store.verify()
    assert report.bad_samples.tolist() == [1]
    assert "data of 1 sample(s) corrupted" in str(report)


# --- names ----------------------------------------------------------------------------------------

def test_labels_at_the_name_count_are_not_covered_by_the_names():
    from fastprune.store.names import named_class_count

    assert named_class_count(["a", "b"], np.array([0, 1])) == 2
    assert named_class_count(["a", "b"], np.array([0, 2])) is None
