"""Fuzzing the store reader, verify() and the loader's native gather with corrupted files.

Every mutated file must end in ``fastprune.StoreError`` (when opened, when any sample is read, or
from ``verify()``) or in a read whose every value equals what was written — never a crash, a hang,
another exception type, or an allocation far beyond the file's size.

The runs are deterministic (hypothesis ``derandomize=True``, no example database) and bounded, so
CI stays fast; the number of cases each test ran is printed in pytest's terminal summary
("fastprune fuzz cases", see conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastprune import StoreError
from fastprune.store import (BytesField, FloatField, IntField, JSONField, NDArrayField, RGBImageField,
                             Store, write_dataset)
from fastprune.store import format as fmt
from fastprune.store import names as names_block

PAGE = 1 << 12  # 4 KiB pages: several pages and page boundaries in a ~50 KB file


def _settings(n: int):
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


# --- the files being mutated (a list of rows is a valid source) -------------------------------

def _mixed_rows(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), int(rng.integers(0, 10)), float(rng.normal()),
             rng.normal(size=(3,)).astype(np.float32),
             rng.integers(0, 256, int(rng.integers(0, 90)), dtype=np.uint8).tobytes(),
             {"k": int(i)}) for i in range(n)]


MIXED_FIELDS = {"image": RGBImageField(), "label": IntField(), "w": FloatField(),
                "feat": NDArrayField(np.float32, (3,)), "blob": BytesField(), "meta": JSONField()}


def _jpeg_rows(n=16, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        rows.append((np.kron(base, np.ones((4, 4, 1), np.uint8)).astype(np.uint8), i % 10))
    return rows


JPEG_FIELDS = {"image": RGBImageField("jpg", jpeg_quality=90), "label": IntField()}


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    return type(a) is type(b) and a == b


class Pristine:
    """A valid store file, its bytes, layout and the values every sample must read back as."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        with Store(path) as store:
            self.values = [store[i] for i in range(len(store))]
            self.meta_start = fmt.metadata_start(len(store.fields))
            self.metadata_end = store.metadata_end
            self.alloc_table_ptr = store.alloc_table_ptr
            self.num_allocs = len(store.alloc_table)
            self.first_page = fmt.align_up(store.metadata_end, store.page_size)
            self.names = store.field_class_names
        trailer = self.alloc_table_ptr - fmt.CHECKSUM_TRAILER_TYPE.itemsize
        block_ptr = int(np.frombuffer(self.data[trailer:self.alloc_table_ptr], fmt.CHECKSUM_TRAILER_TYPE)[0]["block_ptr"])
        self.names_start = fmt.align_up(block_ptr + 4 * self.num_allocs, 8)
        self.regions = {  # name -> [start, stop) of the file
            "header": (0, fmt.HEADER_TYPE.itemsize),
            "descriptors": (fmt.HEADER_TYPE.itemsize, self.meta_start),
            "metadata": (self.meta_start, self.metadata_end),
            "pages": (self.first_page, block_ptr),
            "checksums": (block_ptr, self.names_start),
            "names": (self.names_start, trailer),  # empty in files without class names
            "trailer": (trailer, self.alloc_table_ptr),
            "alloc_table": (self.alloc_table_ptr, len(self.data)),
        }


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Pristine:
    path = tmp_path_factory.mktemp("fuzz") / "mixed.beton"
    write_dataset(path, _mixed_rows(), MIXED_FIELDS, workers=1, page_size=PAGE, progress=False)
    return Pristine(path)


# label i % 10 -> one of these (non-ASCII and JSON escapes included)
CLASS_NAMES = {"label": ["zero", "één", 'q"uote', "back\\slash", "tab\t", "猫", "", "7", "eight", "nine"]}


@pytest.fixture(scope="module")
def named(tmp_path_factory) -> Pristine:
    path = tmp_path_factory.mktemp("fuzz") / "named.beton"
    write_dataset(path, _mixed_rows(), MIXED_FIELDS, workers=1, page_size=PAGE, progress=False,
                  class_names=CLASS_NAMES)
    return Pristine(path)


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory) -> Pristine:
    path = tmp_path_factory.mktemp("fuzz") / "jpeg.beton"
    write_dataset(path, _jpeg_rows(), JPEG_FIELDS, workers=1, page_size=PAGE, progress=False)
    return Pristine(path)


# --- the oracle -------------------------------------------------------------------------------

def check_file(path: Path, expected: list[tuple], *, gather: bool = True, names: dict | None = None) -> str:
    """Open, read every sample and the class names, verify and (for image stores) gather natively.

    Returns "error" when a StoreError was raised somewhere, "ok" when everything (class names
    included: ``names``, {} when the file has none) read back equal to what was written; anything
    else (another exception, a verified file with wrong values) fails.
    """
    try:
        store = Store(path)
    except StoreError:
        return "error"
    with store:
        try:
            values = [store[i] for i in range(len(store))]
            report = store.verify()
        except StoreError:
            return "error"
        if gather:
            _gather_everything(store)
        try:
            got_names = store.field_class_names
        except StoreError:  # damaged names: verify() must have said so too
            assert not report.ok, f"verify() passed a file whose class names raise: {store.path}"
            return "error"
        if not report.ok:
            with pytest.raises(StoreError):
                report.raise_if_bad()
            return "error"
        # verified: the file must read back exactly as written
        assert got_names == (names or {}), f"verified file has class names {got_names!r:.200}"
        assert len(values) == len(expected), f"verified file has {len(values)} samples, wrote {len(expected)}"
        for i, (got, want) in enumerate(zip(values, expected)):
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert _equal(g, w), f"sample {i}: verified file reads {g!r}, wrote {w!r}"
        return "ok"


def _gather_everything(store: Store) -> None:
    """The loader's native path over the (possibly corrupted) store: raise or return, never crash.

    Metadata and ranges were validated by Store; a damaged JPEG payload can only be found by
    decoding it, which the native core reports as ValueError naming the sample."""
    from fastprune.loader._source import open_source

    images = [n for n, f in store.fields.items() if isinstance(f, RGBImageField)]
    if len(images) != 1:
        return
    try:
        source = open_source(store, images[0], None, threads=1)
    except (StoreError, ValueError, IndexError):
        return
    ids = np.arange(source.num_samples, dtype=np.int64)
    for i in ids:
        out = np.empty((1, int(source.heights[i]), int(source.widths[i]), 3), np.uint8)
        try:
            source.gather.gather(ids[i:i + 1], out, max_threads=1)
        except (ValueError, IndexError):
            pass


def _write_variant(tmp_path: Path, data: bytes | bytearray) -> Path:
    """Write a mutated file under a fresh name (old mappings of earlier cases stay valid)."""
    tmp = tmp_path / "case.tmp"
    tmp.write_bytes(bytes(data))
    path = tmp_path / "case.beton"
    os.replace(tmp, path)
    return path


class Tally:
    def __init__(self, request, name):
        counts = request.config.__dict__.setdefault("fastprune_fuzz_counts", {})
        self.entry = counts.setdefault(name, {"ok": 0, "error": 0})

    def add(self, outcome):
        self.entry[outcome] += 1


@pytest.fixture
def tally(request):
    return Tally(request, request.node.name)


# --- mutations --------------------------------------------------------------------------------

REGIONS = ["header", "descriptors", "metadata", "pages", "checksums", "trailer", "alloc_table"]

ABSURD_U64 = [0, 1, 2, 7, 8, 24, 4095, 4096, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63,
              (1 << 64) - 24, (1 << 64) - 1]


@pytest.mark.timeout(120)
@_settings(600)
@given(data=st.data())
def test_fuzz_flipped_bytes(mixed, tmp_path_factory, tally, data):
    """1..8 bytes changed, each in a chosen region of the file (header to allocation table)."""
    buf = flip_bytes(mixed, REGIONS, 8, data)
    tally.add(check_file(_write_variant(tmp_path_factory.mktemp("c"), buf), mixed.values))


def flip_bytes(pristine: Pristine, regions: list[str], most: int, data) -> bytearray:
    """The file with 1..``most`` bytes changed, each in a region drawn from ``regions``."""
    buf = bytearray(pristine.data)
    for _ in range(data.draw(st.integers(1, most), label="flips")):
        lo, hi = pristine.regions[data.draw(st.sampled_from(regions), label="region")]
        buf[data.draw(st.integers(lo, hi - 1), label="pos")] ^= data.draw(st.integers(1, 255), label="xor")
    return buf


@pytest.mark.timeout(120)
@_settings(300)
@given(cut=st.integers(0, 10**9), data=st.data())
def test_fuzz_truncated_and_extended(mixed, tmp_path_factory, tally, cut, data):
    """Truncated anywhere (or extended by junk): always an error, never a verified read."""
    size = len(mixed.data)
    if data.draw(st.booleans(), label="extend"):
        junk = data.draw(st.binary(min_size=1, max_size=64), label="junk")
        buf = mixed.data + junk
    else:
        buf = mixed.data[: cut % size]
    path = _write_variant(tmp_path_factory.mktemp("c"), buf)
    if len(buf) == 0:
        with pytest.raises(StoreError):
            Store(path)
        tally.add("error")
        return
    outcome = check_file(path, mixed.values)
    # whole 24-byte entries appended to the alloc table are the one change a CRC can't see, but
    # the trailer's entry count catches them; a truncated file never verifies either
    assert outcome == "error", f"{len(buf)}-byte variant of a {size}-byte file read as valid"
    tally.add(outcome)


HEADER_FIELDS = {name: fmt.HEADER_TYPE.fields[name] for name in fmt.HEADER_TYPE.names}


@pytest.mark.timeout(120)
@_settings(400)
@given(data=st.data())
def test_fuzz_absurd_header_table_and_metadata_values(mixed, tmp_path_factory, tally, data):
    """Header fields, allocation-table entries and metadata pointers set to absurd integers."""
    buf = bytearray(mixed.data)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        value = data.draw(st.sampled_from(ABSURD_U64) | st.integers(0, (1 << 64) - 1)
                          | st.integers(0, len(buf) + 64), label="value")
        where = data.draw(st.sampled_from(["header", "alloc", "meta"]), label="where")
        if where == "header":
            name = data.draw(st.sampled_from(list(HEADER_FIELDS)), label="field")
            dtype, offset = HEADER_FIELDS[name][:2]
            put(buf, offset, dtype, value)
        elif where == "alloc":
            k = data.draw(st.integers(0, mixed.num_allocs - 1), label="entry")
            column = data.draw(st.sampled_from(["sample_id", "ptr", "size"]), label="column")
            dtype, offset = fmt.ALLOC_TABLE_TYPE.fields[column][:2]
            put(buf, mixed.alloc_table_ptr + k * fmt.ALLOC_TABLE_TYPE.itemsize + offset, dtype, value)
        else:
            pos = data.draw(st.integers(mixed.meta_start, mixed.metadata_end - 8), label="pos")
            put(buf, pos, np.dtype("<u8"), value)
    tally.add(check_file(_write_variant(tmp_path_factory.mktemp("c"), buf), mixed.values))


DESC_TYPE_ID = fmt.FIELD_DESC_TYPE.fields["type_id"]
DESC_ARGS = fmt.FIELD_DESC_TYPE.fields["arguments"][1]
NDARRAY_SHAPE, NDARRAY_TYPE_LENGTH = (fmt.NDARRAY_ARGS_TYPE.fields[n][1] for n in ("shape", "type_length"))
FEAT = list(MIXED_FIELDS).index("feat")  # the NDArrayField, whose descriptor holds a shape and JSON
HOSTILE_DTYPE_JSON = [
    '[["", "<f8"]]', '[["", "|O"]]', '[["", "|V0"]]', '[["", "<f4", [1000000000, 1000000000]]]',
    '[["", "<f4", [4611686018427387904]]]', '[["a", "<f4"], ["b", "<i4"]]', '[]', 'null', '"<f4"',
    '[[1, 2, 3]]', '[["", "<f4"]', "[" * 200 + "]" * 200, '[["", "<U99999999999"]]', '\u00e9\ud800',
]


@pytest.mark.timeout(120)
@_settings(400)
@given(data=st.data())
def test_fuzz_field_descriptors(mixed, tmp_path_factory, tally, data):
    """Field descriptors: type ids, an NDArray field's shape sides and dtype length set to absurd
    integers, its dtype JSON replaced by hostile or arbitrary text."""
    buf = bytearray(mixed.data)
    args = fmt.HEADER_TYPE.itemsize + FEAT * fmt.FIELD_DESC_TYPE.itemsize + DESC_ARGS
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        what = data.draw(st.sampled_from(["type_id", "shape", "type_length", "json"]), label="what")
        value = data.draw(st.sampled_from(ABSURD_U64) | st.integers(0, (1 << 64) - 1), label="value")
        if what == "type_id":
            k = data.draw(st.integers(0, len(MIXED_FIELDS) - 1), label="field")
            dtype, offset = DESC_TYPE_ID[:2]
            put(buf, fmt.HEADER_TYPE.itemsize + k * fmt.FIELD_DESC_TYPE.itemsize + offset, dtype, value % 256)
        elif what == "shape":
            side = data.draw(st.integers(0, 31), label="side")
            put(buf, args + NDARRAY_SHAPE + 8 * side, np.dtype("<u8"), value)
        elif what == "type_length":
            put(buf, args + NDARRAY_TYPE_LENGTH, np.dtype("<u8"), value)
        else:
            text = data.draw(st.sampled_from(HOSTILE_DTYPE_JSON) | st.text(max_size=80), label="json")
            raw = text.encode("utf8", "surrogatepass")[:fmt.FIELD_ARGS_BYTES - fmt.NDARRAY_ARGS_TYPE.itemsize]
            start = args + fmt.NDARRAY_ARGS_TYPE.itemsize
            buf[start:start + len(raw)] = raw
            put(buf, args + NDARRAY_TYPE_LENGTH, np.dtype("<u8"), len(raw))
    tally.add(check_file(_write_variant(tmp_path_factory.mktemp("d"), buf), mixed.values))


def put(buf: bytearray, offset: int, dtype: np.dtype, value: int) -> None:
    dtype = np.dtype(dtype)
    value &= (1 << (8 * dtype.itemsize)) - 1
    buf[offset:offset + dtype.itemsize] = value.to_bytes(dtype.itemsize, "little")


@pytest.mark.timeout(120)
@_settings(300)
@given(data=st.data())
def test_fuzz_corrupted_jpeg_payloads(jpeg, tmp_path_factory, tally, data):
    """Damaged JPEG bytes (flips, zeroed runs, cut markers) through Store, verify and the native
    decoder: StoreError from the reader, ValueError from the gather — never a crash."""
    buf = bytearray(jpeg.data)
    lo, hi = jpeg.regions["pages"]
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        pos = data.draw(st.integers(lo, hi - 1), label="pos")
        if data.draw(st.booleans(), label="zero_run"):
            n = data.draw(st.integers(1, 64), label="run")
            buf[pos:pos + n] = bytes(len(buf[pos:pos + n]))
        else:
            buf[pos] ^= data.draw(st.integers(1, 255), label="xor")
    tally.add(check_file(_write_variant(tmp_path_factory.mktemp("c"), buf), jpeg.values))


def _pil_jpegs() -> list[bytes]:
    """Baseline, progressive, greyscale and 4:4:4 JPEGs (PIL-encoded) as decoder fuzz seeds."""
    import io

    from PIL import Image

    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (19, 23, 3), dtype=np.uint8))
    out = []
    for options in ({}, {"progressive": True}, {"subsampling": 0}, {"progressive": True, "optimize": True}):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85, **options)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    image.convert("L").save(buf, format="JPEG", progressive=True)
    out.append(buf.getvalue())
    return out


def _damaged(payload: bytearray, data) -> bytearray:
    """Flipped bytes, a cut, a frame header claiming a huge (or empty) image, or garbage."""
    kind = data.draw(st.sampled_from(["flip", "truncate", "huge", "garbage"]), label="kind")
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(payload) - 1))
            payload[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        payload = payload[: data.draw(st.integers(0, len(payload) - 1))]
    elif kind == "huge":  # SOF0 height/width set to 65535 or large values
        sof = payload.find(b"\xff\xc0")
        assume_found = sof >= 0
        if assume_found:
            h = data.draw(st.sampled_from([0, 1, 65535, 40000]))
            w = data.draw(st.sampled_from([0, 1, 65535, 40000]))
            payload[sof + 5:sof + 7] = h.to_bytes(2, "big")
            payload[sof + 7:sof + 9] = w.to_bytes(2, "big")
    else:
        payload = bytearray(data.draw(st.binary(min_size=0, max_size=300)))
        if data.draw(st.booleans()):
            payload[:2] = b"\xff\xd8"
    return payload


PIL_JPEGS = _pil_jpegs()
# scripts/sanitize runs the decoder fuzz longer: memory errors there are what ASan/UBSan find
DECODER_CASES = 5000 if os.environ.get("FASTPRUNE_SANITIZED") else 1000


@pytest.mark.timeout(300)
@_settings(DECODER_CASES)
@given(data=st.data())
def test_fuzz_native_decoder_on_damaged_jpegs(jpeg, tally, data):
    """The native JPEG decoder directly: damaged baseline/progressive streams, including headers
    claiming huge images."""
    from fastprune._native import core

    if data.draw(st.booleans(), label="pil_seed"):
        payload = bytearray(data.draw(st.sampled_from(PIL_JPEGS), label="seed"))
    else:
        with Store(jpeg.path) as store:
            offsets, sizes = store.field_ranges("image")
            i = data.draw(st.integers(0, len(store) - 1), label="sample")
            payload = bytearray(store.buffer[int(offsets[i]):int(offsets[i]) + int(sizes[i])].tobytes())
    payload = _damaged(payload, data)
    try:
        image = core.decode_jpeg(np.frombuffer(bytes(payload), dtype=np.uint8))
    except ValueError:
        tally.add("error")
        return
    assert image.ndim == 3 and image.shape[2] == 3
    tally.add("ok")


def _photo_jpegs() -> list[bytes]:
    """A 72x96 natural photo (matplotlib's sample) as baseline 4:2:0 / 4:2:2 / 4:4:4, progressive
    and grey JPEGs: large enough for crop windows and every IDCT scale."""
    import io

    import matplotlib
    from PIL import Image

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    photo = photo.resize((96, 72))
    out = []
    for image, options in ((photo, {}), (photo, {"subsampling": 1}), (photo, {"subsampling": 0}),
                           (photo, {"progressive": True}), (photo.convert("L"), {})):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85, **options)
        out.append(buf.getvalue())
    return out


PHOTO_JPEGS = _photo_jpegs()


@pytest.mark.timeout(300)
@_settings(DECODER_CASES)
@given(data=st.data())
def test_fuzz_crop_window_decode_on_damaged_jpegs(tally, data):
    """The loader's fused-crop path: damaged streams decoded through a random crop window and
    output size (so crop_scanline, skip_scanlines and every IDCT scale run on bad data)."""
    from fastprune._native import core

    payload = _damaged(bytearray(data.draw(st.sampled_from(PHOTO_JPEGS), label="seed")), data)
    if not payload:
        payload = bytearray(b"\0")  # an empty range is refused when the gather is built
    top, left = data.draw(st.integers(0, 71), label="top"), data.draw(st.integers(0, 95), label="left")
    crop = [top, left, data.draw(st.integers(1, 72 - top), label="h"), data.draw(st.integers(1, 96 - left), label="w")]
    out = np.empty((1, data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40)), 3), np.uint8)
    gather = core.ImageGather(np.frombuffer(bytes(payload), np.uint8), np.zeros(1, np.uint64),
                              np.array([len(payload)], np.uint64), np.zeros(1, np.uint8), np.array([72], np.uint32),
                              np.array([96], np.uint32), 1)
    try:
        gather.gather_crops(np.zeros(1, np.int64), np.array([crop], np.int32), out)
    except ValueError as exc:
        assert "JPEG decode of sample 0 failed" in str(exc)
        tally.add("error")
        return
    tally.add("ok")


def test_pristine_files_read_back_exactly(mixed, jpeg, named):
    assert check_file(mixed.path, mixed.values) == "ok"
    assert check_file(jpeg.path, jpeg.values) == "ok"
    assert named.names == CLASS_NAMES and mixed.names == {}
    assert check_file(named.path, named.values, names=CLASS_NAMES) == "ok"


# --- the class-names block (names.py) ---------------------------------------------------------

NAMES_REGIONS = ["names"] * 4 + ["checksums", "trailer", "alloc_table", "header", "pages"]
NAMES_HEADER = {n: names_block.HEADER_TYPE.fields[n][:2] for n in names_block.HEADER_TYPE.names}
HOSTILE_NAMES_JSON = ['{"label": "zero"}', '{"label": [0, 1]}', "[]", "null", '{"label": [[]]}', "{" * 300,
                      "[" * 5000 + "]" * 5000, '{"label": ["\ud800"]}', "\u0000", '{"a": 1e999}', ""]


@pytest.mark.timeout(120)
@_settings(300)
@given(data=st.data())
def test_fuzz_flipped_bytes_in_a_file_with_class_names(named, tmp_path_factory, tally, data):
    """1..6 bytes changed, mostly in the class-names block, the rest around it."""
    buf = flip_bytes(named, NAMES_REGIONS, 6, data)
    tally.add(check_file(_write_variant(tmp_path_factory.mktemp("n"), buf), named.values, names=CLASS_NAMES))


@pytest.mark.timeout(120)
@_settings(300)
@given(data=st.data())
def test_fuzz_class_names_block_with_valid_crcs(named, tmp_path_factory, tally, data):
    """The block's header fields set to absurd values, or its JSON replaced by hostile text, with
    both CRCs recomputed, so the checks behind them (size, version, JSON, types) are reached."""
    buf = bytearray(named.data)
    start, stop = named.regions["names"]
    header_size = names_block.HEADER_TYPE.itemsize
    size = int(np.frombuffer(buf[start:start + header_size], names_block.HEADER_TYPE)[0]["json_size"])
    if data.draw(st.booleans(), label="json"):
        text = data.draw(st.sampled_from(HOSTILE_NAMES_JSON) | st.text(max_size=60), label="text")
        body = text.encode("utf8", "surrogatepass")[:size].ljust(size, b" ")  # fills the same place
        buf[start + header_size:start + header_size + size] = body
        put(buf, start + NAMES_HEADER["json_crc"][1], np.dtype("<u4"), zlib.crc32(body))
    else:
        name = data.draw(st.sampled_from(["version", "json_size", "magic"]), label="field")
        dtype, offset = NAMES_HEADER[name]
        value = data.draw(st.sampled_from(ABSURD_U64) | st.integers(0, size + 64), label="value")
        put(buf, start + offset, dtype if name != "magic" else np.dtype("<u8"), value)
    put(buf, start + NAMES_HEADER["header_crc"][1], np.dtype("<u4"),
        zlib.crc32(bytes(buf[start:start + NAMES_HEADER["header_crc"][1]])))
    outcome = check_file(_write_variant(tmp_path_factory.mktemp("h"), buf), named.values, names=CLASS_NAMES)
    tally.add(outcome)


# --- memory: absurd sizes must not allocate beyond the file -----------------------------------

_MEMORY_PROBE = textwrap.dedent(r"""
    import json, os, resource, sys, tracemalloc
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from fastprune import StoreError
    from fastprune.store import Store
    from fastprune.store import format as fmt
    import fastprune.loader._source  # import everything before measuring
    import test_fuzz_store as T

    cases = json.loads(open(sys.argv[2]).read())
    pristine = T.Pristine(__import__("pathlib").Path(sys.argv[3]))
    size = len(pristine.data)
    # Address-space limit: whatever is mapped now plus 1 GiB; a multi-GB allocation fails here
    # with MemoryError (which the oracle does not accept) instead of quietly succeeding.
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    if sys.argv[5] == "limit":
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    outcomes = {"ok": 0, "error": 0}
    workdir = __import__("pathlib").Path(sys.argv[4])
    for edits in cases:
        buf = bytearray(pristine.data)
        for offset, width, value in edits:
            buf[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        outcomes[T.check_file(T._write_variant(workdir, buf), pristine.values)] += 1
    peak = tracemalloc.get_traced_memory()[1]
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"outcomes": outcomes, "traced_peak": peak, "rss_growth": rss1 - rss0, "file_size": size}))
""")


def _absurd_cases(p: Pristine) -> list:
    """(offset, width, value) edits: every header field and some table/metadata words set to
    every absurd value, singly."""
    cases = []
    for name in fmt.HEADER_TYPE.names:
        dtype, offset = fmt.HEADER_TYPE.fields[name][:2]
        for v in ABSURD_U64 + [len(p.data) + 24, len(p.data) - 24, p.alloc_table_ptr - 24]:
            cases.append([[offset, dtype.itemsize, v]])
    for k in (0, p.num_allocs - 1):
        for column in ("sample_id", "ptr", "size"):
            dtype, offset = fmt.ALLOC_TABLE_TYPE.fields[column][:2]
            for v in ABSURD_U64:
                cases.append([[p.alloc_table_ptr + k * 24 + offset, dtype.itemsize, v]])
    for pos in range(p.meta_start, p.metadata_end - 8, 8):
        for v in (1 << 63, (1 << 64) - 1, 1 << 32, (1 << 16) - 1):
            cases.append([[pos, 8, v]])
    # num_samples 2^63 with alloc_table_ptr at EOF and a zero page size, together
    cases.append([[8, 8, 1 << 63], [16, 8, len(p.data)], [4, 4, 0]])
    return cases


def _run_probe(pristine: Pristine, cases: list, tmp_path: Path, limit_address_space: bool) -> dict:
    case_file = tmp_path / "cases.json"
    case_file.write_text(json.dumps(cases))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(Path(__file__).parent), str(case_file),
                           str(pristine.path), str(work), "limit" if limit_address_space else "measure"],
                          capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sum(result["outcomes"].values()) == len(cases)
    return result


@pytest.mark.timeout(240)
def test_absurd_sizes_allocate_no_more_than_the_file(mixed, tmp_path, request):
    """Run in a subprocess whose address space is capped at its size after imports + 1 GiB."""
    result = _run_probe(mixed, _absurd_cases(mixed), tmp_path, limit_address_space=True)
    # a few MB of bookkeeping (numpy temporaries), never GBs
    limit = 64 * result["file_size"] + (32 << 20)
    assert result["traced_peak"] < limit, result
    assert result["rss_growth"] < limit, result
    _record(request, result)


@pytest.mark.timeout(240)
def test_jpeg_headers_claiming_huge_images_are_rejected_before_decoding(jpeg, tmp_path, request):
    """A store whose JPEG header (SOF) claims 12000x12000 pixels while the metadata says 16x16:
    the reader (PIL) and the native gather (stb_image) must refuse it from the header, not decode
    a 432 MB image. No address-space cap here: the RSS growth itself is measured."""
    cases = []
    sof_positions = [m for m in _find_all(jpeg.data, b"\xff\xc0")]
    assert sof_positions
    for h, w in [(12000, 12000), (16, 12000), (12000, 16), (60000, 60000), (16, 17)]:
        for sof in sof_positions[:4]:
            cases.append([[sof + 5, 2, int.from_bytes(h.to_bytes(2, "big"), "little")],
                          [sof + 7, 2, int.from_bytes(w.to_bytes(2, "big"), "little")]])
    result = _run_probe(jpeg, cases, tmp_path, limit_address_space=False)
    assert result["outcomes"]["ok"] == 0, result
    assert result["rss_growth"] < (64 << 20), result
    _record(request, result)


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, pos = [], data.find(needle)
    while pos >= 0:
        out.append(pos)
        pos = data.find(needle, pos + 1)
    return out


def _record(request, result: dict) -> None:
    counts = request.config.__dict__.setdefault("fastprune_fuzz_counts", {})
    counts[request.node.name] = dict(result["outcomes"])
    counts[request.node.name]["peak_traced_MB"] = round(result["traced_peak"] / 2**20, 2)
    counts[request.node.name]["rss_growth_MB"] = round(result["rss_growth"] / 2**20, 2)


@pytest.mark.parametrize("damage", ["flip_magic", "zero_trailer", "zero_trailer_and_block", "zero_tail_sector"])
def test_a_damaged_checksum_trailer_never_passes_for_a_file_without_checksums(mixed, tmp_path, damage):
    """Found by the fuzzer: a zeroed trailer magic made verify() report 'no checksums (ffcv
    file?)' and ok=True, so corrupted data went unnoticed."""
    buf = bytearray(mixed.data)
    trailer = mixed.alloc_table_ptr - fmt.CHECKSUM_TRAILER_TYPE.itemsize
    block = mixed.regions["checksums"][0]
    if damage == "flip_magic":
        buf[trailer + 3] ^= 0x20
    elif damage == "zero_trailer":
        buf[trailer:mixed.alloc_table_ptr] = bytes(mixed.alloc_table_ptr - trailer)
    elif damage == "zero_trailer_and_block":
        buf[block:mixed.alloc_table_ptr] = bytes(mixed.alloc_table_ptr - block)
    else:  # a 512-byte sector of zeros ending at the alloc table, plus a changed data byte
        buf[mixed.alloc_table_ptr - 512:mixed.alloc_table_ptr] = bytes(512)
        buf[mixed.first_page + 5] ^= 0xFF
    path = _write_variant(tmp_path, buf)
    assert check_file(path, mixed.values) == "error"
