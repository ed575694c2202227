"""convert STORE --index: a .beton (ffcv's writer adds no index field) copied with the index field
ffcv's own Loader needs to name a batch's samples, every value kept as stored: JPEG bytes copied,
not re-encoded (a rewrite through write_dataset changed pixels by up to 64 grey levels), raw
images raw, class names and other fields as they were."""

import numpy as np
import pytest

import fastprune
from fastprune.cli import main
from fastprune.convert import from_arrays, from_store
from fastprune.errors import ConversionError


def _same_store_plus_index(source, copy):
    with fastprune.Store(source) as a, fastprune.Store(copy) as b:
        assert list(b.fields) == [*a.fields, "index"] and len(a) == len(b)
        image = next(name for name, field in a.fields.items() if isinstance(field, fastprune.store.RGBImageField))
        k = a.field_index(image)
        np.testing.assert_array_equal(a.metadata[f"f{k}"]["mode"], b.metadata[f"f{k}"]["mode"])
        (offsets_a, sizes_a), (offsets_b, sizes_b) = a.field_ranges(image), b.field_ranges(image)
        for i in range(len(a)):
            assert bytes(a.buffer[offsets_a[i]:offsets_a[i] + sizes_a[i]]) == \
                bytes(b.buffer[offsets_b[i]:offsets_b[i] + sizes_b[i]]), i  # payloads as stored
            for x, y in zip(a[i], b[i][:-1]):
                assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
            assert b[i][-1] == i
        assert b.field_class_names == a.field_class_names
        assert b.verify().ok
        return repr(b.fields[image])


def test_a_fastprune_store_is_copied_with_an_index_its_jpegs_and_names_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    source = from_arrays(rng.integers(0, 256, (30, 12, 10, 3), dtype=np.uint8), np.arange(30) % 3,
                         tmp_path / "a.beton", jpeg=True, quality=70, class_names=["x", "y", "z"], progress=False)
    assert main(["convert", str(source), "--index", "--out", str(tmp_path / "b.beton"), "--no-progress"]) == 0
    with fastprune.Store(source) as store:
        assert _same_store_plus_index(source, tmp_path / "b.beton") == repr(store.fields["image"])
        assert store.field_value(-1, "label") == 29 % 3 and store.field_value(2, "image").shape == (12, 10, 3)
        with pytest.raises(KeyError, match="no field 'nope'"):
            store.field_value(0, "nope")


def test_many_samples_copy_alike_through_two_workers(tmp_path):
    rng = np.random.default_rng(2)
    source = from_arrays(rng.integers(0, 256, (700, 6, 5, 3), dtype=np.uint8), np.arange(700) % 7,
                         tmp_path / "a.beton", progress=False)
    _same_store_plus_index(source, from_store(source, tmp_path / "b.beton", workers=2, progress=False))


def test_an_ffcv_store_of_jpeg_and_raw_samples_keeps_each_and_feeds_ffcvs_loader_ids(tmp_path):
    ffcv = pytest.importorskip("ffcv")
    from ffcv.fields import FloatField, IntField, NDArrayField, RGBImageField
    from ffcv.fields.decoders import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.writer import DatasetWriter

    rng = np.random.default_rng(1)

    class Rows:
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return (rng.integers(0, 256, (16 + i % 3, 20, 3), dtype=np.uint8), i % 4, i / 3,
                    np.full(3, i, np.float32))

    source = tmp_path / "ffcv.beton"
    DatasetWriter(str(source), {"image": RGBImageField(write_mode="proportion", compress_probability=0.5),
                                "label": IntField(), "w": FloatField(), "v": NDArrayField(np.dtype("float32"), (3,))},
                  num_workers=1).from_indexed_dataset(Rows())
    with fastprune.Store(source) as store:
        modes = set(store.metadata["f0"]["mode"].tolist())
    assert len(modes) == 2  # both JPEG and raw samples: each is kept in its own mode
    copy = from_store(source, tmp_path / "copy.beton", progress=False)
    assert "written by ffcv" in _same_store_plus_index(source, copy)  # its settings stay unrecorded
    loader = Loader(str(copy), batch_size=7, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": None, "label": [IntDecoder()], "w": None, "v": None, "index": [IntDecoder()]})
    batches = [tuple(np.array(part) for part in batch) for batch in loader]  # ffcv reuses its buffers: copies
    labels, ids = (np.concatenate(part).ravel() for part in zip(*batches))
    np.testing.assert_array_equal(ids, np.arange(40))
    np.testing.assert_array_equal(labels, np.arange(40) % 4)


def test_a_store_converts_only_to_add_an_index(tmp_path):
    source = from_arrays(np.zeros((4, 4, 4, 3), np.uint8), np.arange(4) % 2, tmp_path / "a.beton", progress=False)
    with pytest.raises(ConversionError, match=r"a\.beton: a store is already converted; converting it again adds an "
                                              r"index field \(for ffcv's own Loader\): pass --index"):
        fastprune.convert.convert(source, tmp_path / "b.beton")
    with pytest.raises(ConversionError, match=r"a\.beton: --jpeg does not apply to a store source"):
        fastprune.convert.convert(source, tmp_path / "b.beton", index=True, jpeg=True)
    with pytest.raises(ConversionError, match=r"a\.beton: --resize does not apply to a store source: its values "
                                              r"are copied as stored"):  # not 'its images share one shape'
        fastprune.convert.convert(source, tmp_path / "b.beton", index=True, resize=(4, 4))
    before = source.read_bytes()
    link = tmp_path / "link.beton"
    link.symlink_to(source)
    for out in (source, link):  # it replaced the source with its copy
        with pytest.raises(ConversionError, match="is the input file"):
            from_store(source, out, progress=False)
    assert source.read_bytes() == before
    indexed = from_arrays(np.zeros((4, 4, 4, 3), np.uint8), np.arange(4) % 2, tmp_path / "i.beton", index=True,
                          progress=False)
    with pytest.raises(ConversionError, match=r"i\.beton: the store already has an 'index' field"):
        from_store(indexed, tmp_path / "b.beton")
    assert not (tmp_path / "b.beton").exists()


def test_a_damaged_source_is_refused_not_copied_under_new_checksums(tmp_path):
    """The copy's fresh checksums would vouch for the damaged bytes: the source is verified first."""
    rng = np.random.default_rng(3)
    source = from_arrays(rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), np.arange(6) % 2,
                         tmp_path / "a.beton", progress=False)
    with fastprune.Store(source) as store:
        offsets, _ = store.field_ranges("image")
        at = int(offsets[2])
    data = bytearray(source.read_bytes())
    data[at] ^= 1
    source.write_bytes(bytes(data))
    with pytest.raises(fastprune.StoreError, match=r"a\.beton: CORRUPT: data of 1 sample\(s\) corrupted"):
        from_store(source, tmp_path / "b.beton", progress=False)
    assert not (tmp_path / "b.beton").exists()
