"""Round-3 mutation audit of store/ (images, info, format, encoding, names, fields, checksums,
_atomic): behaviour the suite did not pin down. Helpers come from the existing test files."""

from __future__ import annotations

import numpy as np
import pytest
from test_class_names import PAGE, write
from test_store import ListSource

from fastprune.cli import main
from fastprune.errors import ConversionError, StoreError
from fastprune.store import IntField, RGBImageField, Store, write_dataset
from fastprune.store import format as fmt
from fastprune.store.info import describe, summary


def _field_line(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"  {name} "))


# --- fastprune info ---------------------------------------------------------------------------

def test_info_gives_the_size_range_of_images_of_several_shapes(tmp_path):
    """Images of one width but several heights: the field line gives both ranges, not the first
    image's shape as if all were alike."""
    source = [(np.zeros((h, 5, 3), np.uint8), 0) for h in (6, 9, 7)]
    path = write(tmp_path / "mixed.beton", source=source)
    with Store(path) as store:
        line = _field_line(describe(store), "image")
    assert "6..9 x 5..5 px" in line, line


def test_info_counts_all_image_bytes_and_splits_jpeg_from_raw(tmp_path):
    """'N of image data' is the sum over all samples (4 raw 8x8 RGB images: 768 B)."""
    source = [(np.zeros((8, 8, 3), np.uint8), i % 2) for i in range(4)]
    path = write(tmp_path / "raw.beton", source=source)
    with Store(path) as store:
        line = _field_line(describe(store), "image")
    assert "8x8 px, 0 JPEG / 4 raw, 768 B of image data" in line, line


def test_info_draws_a_bar_for_every_class_however_small(tmp_path):
    """A class with 1 sample beside one with 100 still gets one '#': an empty bar reads as 0."""
    source = [(np.zeros((2, 2, 3), np.uint8), 0)] + [(np.zeros((2, 2, 3), np.uint8), 1)] * 100
    path = write(tmp_path / "skew.beton", source=source)
    with Store(path) as store:
        text = describe(store)
    rows = [line for line in text.splitlines() if line.startswith("       0 ") or line.startswith("       1 ")]
    assert len(rows) == 2 and all(line.rstrip().endswith("#") for line in rows), rows


def _flip_data_byte(path, sample=0):
    with Store(path) as store:
        table = store.alloc_table
        ptr = int(table["ptr"][np.flatnonzero(table["sample_id"] == sample)[0]])
    with open(path, "r+b") as f:
        f.seek(ptr)
        byte = f.read(1)
        f.seek(ptr)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_info_json_verify_fails_on_a_damaged_sample(tmp_path, capsys):
    """`fastprune info --json --verify` is what a script runs to check a store: a damaged sample
    must end in exit status 1 naming the file, not in exit 0 with "ok": false buried in the JSON."""
    path = write(tmp_path / "bad.beton")
    _flip_data_byte(path, sample=3)
    assert main(["info", str(path), "--json", "--verify"]) == 1
    captured = capsys.readouterr()
    assert "bad.beton" in captured.err and "sample" in captured.err
    with Store(path) as store, pytest.raises(StoreError, match="samples 3"):
        summary(store, verify=True)


def test_info_json_counts_jpeg_and_raw_images_apart(tmp_path):
    """A JPEG store's summary says all images are JPEG and none raw (the two counts add up)."""
    source = [(np.full((8, 8, 3), 7 * i, np.uint8), i % 2) for i in range(5)]
    path = write(tmp_path / "jpeg.beton", source=source,
                 fields={"image": RGBImageField("jpg"), "label": IntField()})
    with Store(path) as store:
        image = summary(store)["fields"][0]
        _, sizes = store.field_ranges("image")
    assert (image["jpeg"], image["raw"]) == (5, 0)
    assert image["image_bytes"] == int(sizes.sum()) and image["height"] == image["width"] == [8, 8]


def _as_ffcv_wrote_it(path):
    """``path`` as ffcv 1.0.2 would have written it: no checksum trailer or CRC block contents and
    no checksum marker in the field descriptors (the bytes are zeros in ffcv's files)."""
    with Store(path) as store:
        fields, trailer_end, block_start = len(store.fields), store.alloc_table_ptr, store.metadata_end
        trailer = store.buffer[trailer_end - fmt.CHECKSUM_TRAILER_TYPE.itemsize:trailer_end]
        block_start = int(trailer.view(fmt.CHECKSUM_TRAILER_TYPE)[0]["block_ptr"])
    with open(path, "r+b") as f:
        for k in range(fields):
            f.seek(fmt.HEADER_TYPE.itemsize + k * fmt.FIELD_DESC_TYPE.itemsize
                   + fmt.FIELD_DESC_TYPE.fields["arguments"][1] + fmt.CHECKSUM_MARKER_OFFSET)
            f.write(bytes(len(fmt.CHECKSUM_MAGIC)))
        f.seek(block_start)
        f.write(bytes(trailer_end - block_start))
    return path


def test_info_says_a_file_without_checksums_has_none(tmp_path, capsys):
    """A file ffcv wrote has no checksum trailer: `info` must say so (text and JSON), not claim
    CRCs that `--verify` never compared."""
    path = _as_ffcv_wrote_it(write(tmp_path / "ffcv.beton"))
    with Store(path) as store:
        assert "checksums:   none (file written by ffcv?)" in describe(store).splitlines()
        record = summary(store, verify=True)
    assert record["checksums"] is False and record["verify"]["ok"] is True
    assert "no checksums" in record["verify"]["report"]
    assert main(["info", str(path), "--verify"]) == 0
    assert "no checksums in this file" in capsys.readouterr().out


# --- image encoding ---------------------------------------------------------------------------

def test_jpeg_quality_defaults_to_ffcvs_90(tmp_path):
    """Without --quality, JPEGs are encoded at ffcv's default quality 90, and that is recorded."""
    from fastprune.convert import from_arrays
    from fastprune.store.images import encode_jpeg

    images = np.stack([np.full((8, 8, 3), 40 * i, np.uint8) for i in range(3)])
    images[:, 2:5, 3:7] = 200
    assert RGBImageField("jpg").jpeg_quality == 90
    path = from_arrays(images, np.arange(3), tmp_path / "j.beton", jpeg=True, progress=False)
    with Store(path) as store:
        assert store.fields["image"].jpeg_quality == 90
        ptrs, sizes = store.field_ranges("image")
        stored = bytes(store.buffer[int(ptrs[1]):int(ptrs[1]) + int(sizes[1])])
    assert stored == encode_jpeg(images[1], 90).tobytes()


def test_a_resize_that_grows_one_side_uses_lanczos_not_area_averaging():
    """resize_image: area averaging only when no side grows; a 10x40 -> 20x20 resize (one side
    grows, one shrinks) is PIL's Lanczos, as documented."""
    from PIL import Image

    from fastprune.store.images import resize_image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 40, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((20, 20), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(resize_image(image, 20, 20), expected)


def test_max_resolution_truncates_the_shorter_side_as_ffcv_does(tmp_path):
    """ffcv's resizer truncates (ratio * size).astype(int): 35x47 at max_resolution 32 is 23x32
    (23.83 truncated), so a store holds the shapes an ffcv-written one would."""
    source = [(np.full((35, 47, 3), 9, np.uint8),)]
    path = write(tmp_path / "r.beton", source=source, fields={"image": RGBImageField(max_resolution=32)})
    with Store(path) as store:
        assert store[0][0].shape == (23, 32, 3)
        assert (int(store.metadata["f0"]["height"][0]), int(store.metadata["f0"]["width"][0])) == (23, 32)


def test_an_encoded_jpeg_given_to_a_raw_field_is_stored_as_raw_pixels(tmp_path):
    """EncodedJpeg is stored byte for byte only by a 'jpg' field; a 'raw' field decodes it, so a
    raw store never holds JPEG bytes (its readers expect pixels: mode RAW)."""
    from fastprune.store.fields import EncodedJpeg
    from fastprune.store.images import decode_jpeg, encode_jpeg

    image = np.zeros((8, 12, 3), np.uint8)
    image[2:6, 3:9] = (200, 30, 90)
    data = encode_jpeg(image, 90)
    path = write(tmp_path / "raw.beton", source=[(EncodedJpeg(data.tobytes(), 8, 12),)],
                 fields={"image": RGBImageField("raw")})
    with Store(path) as store:
        assert int(store.metadata["f0"]["mode"][0]) == fmt.IMAGE_MODE_RAW
        assert int(store.field_ranges("image")[1][0]) == 8 * 12 * 3
        np.testing.assert_array_equal(store[0][0], decode_jpeg(data))


def test_an_image_side_over_65535_is_refused_naming_the_sample(tmp_path):
    """ffcv's metadata keeps each side in a uint16: a 65536-wide image must be refused (naming
    the sample), not stored with its width wrapped to 0."""
    source = [(np.zeros((2, 2, 3), np.uint8),), (np.zeros((1, 65536, 3), np.uint8),)]
    with pytest.raises(ConversionError, match=r"sample 1.*65535"):
        write_dataset(tmp_path / "wide.beton", source, {"image": RGBImageField()}, workers=1, progress=False,
                      page_size=1 << 18)  # a page that holds it: the side is what must be refused
    assert not (tmp_path / "wide.beton").exists()


# --- checksums --------------------------------------------------------------------------------

def test_verify_names_the_first_ten_damaged_samples_and_counts_the_rest(tmp_path):
    """Twelve damaged samples: the report lists ten, says "and 2 more", and bad_samples has all."""
    path = write(tmp_path / "d.beton", source=[(np.full((6, 5, 3), i, np.uint8), i % 6) for i in range(14)])
    for sample in range(12):
        _flip_data_byte(path, sample)
    with Store(path) as store:
        report = store.verify()
    assert not report.ok and report.bad_samples.tolist() == list(range(12))
    assert "data of 12 sample(s) corrupted (CRC mismatch): samples 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more" \
        in str(report)


def test_a_raw_image_read_back_is_the_callers_own_array(tmp_path):
    """store[i] hands out a writable copy, not a view of the file's mapping: a transform may
    change it in place, and it outlives the closed store."""
    source = [(np.full((6, 5, 3), 10 + i, np.uint8), i) for i in range(3)]
    path = write(tmp_path / "own.beton", source=source)
    store = Store(path)
    image = store[1][0]
    image[0, 0] = 255  # in place, as a user's augmentation may
    store.close()
    assert image.flags.writeable
    assert image[0, 0].tolist() == [255] * 3 and int(image[5, 4, 2]) == 11
    with Store(path) as again:
        assert int(again[1][0][0, 0, 0]) == 11  # the file is unchanged


# --- labels and class names -------------------------------------------------------------------

def test_the_sparse_label_warning_names_the_smallest_missing_label(tmp_path):
    """Labels 0 and 4 only (the dense path: 4 < 6 samples): the warning says none is 1, the
    first class to look for, not 3."""
    from fastprune.convert import from_arrays
    from fastprune.errors import LabelWarning

    images = np.zeros((6, 4, 4, 3), np.uint8)
    with pytest.warns(LabelWarning, match=r"labels are sparse \(2 distinct values up to 4; none is 1\)"):
        from_arrays(images, [0, 4, 0, 4, 0, 4], tmp_path / "s.beton", progress=False)


def test_a_names_block_of_an_unknown_version_is_not_read_as_version_1(tmp_path):
    """A later fastprune's names block (version 2, valid CRCs) may mean something else: this one
    says it cannot read it instead of showing names it may misread."""
    import zlib

    from test_class_names import NAMES, names_region

    from fastprune.store import names as names_block

    path = write(tmp_path / "n.beton", NAMES)
    start, _ = names_region(path)
    data = bytearray(path.read_bytes())
    header = np.frombuffer(bytes(data[start:start + names_block.HEADER_TYPE.itemsize]), names_block.HEADER_TYPE).copy()
    header["version"] = 2
    header["header_crc"] = zlib.crc32(header.tobytes()[:names_block.HEADER_TYPE.fields["header_crc"][1]])
    data[start:start + names_block.HEADER_TYPE.itemsize] = header.tobytes()
    path.write_bytes(bytes(data))
    with Store(path) as store:
        with pytest.raises(StoreError, match="unknown class-names block version 2"):
            store.class_names
        assert "unknown class-names block version 2" in str(store.verify())


# --- atomic replacement ---------------------------------------------------------------------

def test_a_write_keeps_the_callers_own_sigterm_handler(tmp_path):
    """write_dataset turns SIGTERM into KeyboardInterrupt only over the default action: a program
    with its own SIGTERM handler (a job scheduler's graceful stop) keeps it during the write."""
    import signal

    def mine(signum, frame):
        pass

    seen = []

    class Source(ListSource):
        def __getitem__(self, i):
            seen.append(signal.getsignal(signal.SIGTERM))
            return super().__getitem__(i)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        write_dataset(tmp_path / "s.beton", Source([(1,), (2,)]), {"label": IntField()}, workers=1,
                      progress=False)
        assert seen and all(handler is mine for handler in seen)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_only_whole_temp_file_names_of_dead_writers_are_removed(tmp_path):
    """Leftovers are matched by their whole name: a user's copy named like a temp file plus a
    suffix (".bak") is not a leftover and survives the next write."""
    import subprocess
    import sys

    from fastprune.store._atomic import temp_prefix

    path = tmp_path / "d.beton"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / (temp_prefix(path, dead.pid) + "abc123.tmp")
    kept = tmp_path / (temp_prefix(path, dead.pid) + "abc123.tmp.bak")
    for p in (stale, kept):
        p.write_bytes(b"partial")
    write_dataset(path, [(1,), (2,)], {"label": IntField()}, workers=1, progress=False)
    assert not stale.exists() and kept.read_bytes() == b"partial"
