"""Class names kept in the store: written by write_dataset and every converter that knows them,
read by Store.class_names, shown by `fastprune info`, covered by verify(), and damaged names give a
StoreError naming the file (the fuzz tests in test_fuzz_store.py go further)."""

from __future__ import annotations

import pickle
import zlib

import numpy as np
import pytest
from PIL import Image

from fastprune import ConversionError, StoreError
from fastprune.cli import main
from fastprune.convert import convert, from_arrays, from_cifar, from_hf_dataset, from_idx, from_image_folder, \
    from_torch_dataset
from fastprune.store import IntField, RGBImageField, Store, write_dataset
from fastprune.store import format as fmt
from fastprune.store import names as names_block
from fastprune.store.info import describe

PAGE = 1 << 12
FIELDS = {"image": RGBImageField(), "label": IntField()}
# names with what JSON must escape, non-ASCII, and a comma (why the CLI also reads @FILE)
NAMES = ["cat", "dög", 'say "hi"\\', "T-shirt/top", "airplane, jet", "猫"]


def rows(n=12, classes=len(NAMES)):
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), i % classes) for i in range(n)]


def write(path, class_names=None, source=None, fields=FIELDS):
    return write_dataset(path, source or rows(), fields, workers=1, progress=False, page_size=PAGE,
                         class_names=class_names)


def names_region(path):
    """[start, stop) of the names block, from the trailer (as names.py finds it)."""
    with Store(path) as store:
        trailer_start = store.alloc_table_ptr - fmt.CHECKSUM_TRAILER_TYPE.itemsize
        trailer = store.buffer[trailer_start:store.alloc_table_ptr].view(fmt.CHECKSUM_TRAILER_TYPE)[0]
        start = fmt.align_up(int(trailer["block_ptr"]) + 4 * int(trailer["num_allocations"]), 8)
    return start, trailer_start


# --- the store --------------------------------------------------------------------------------

def test_names_round_trip_and_verify_covers_them(tmp_path):
    path = write(tmp_path / "n.beton", NAMES)
    with Store(path) as store:
        assert store.class_names == NAMES
        assert store.field_class_names == {"label": NAMES}
        assert store.verify().ok
        assert [store[i][1] for i in range(3)] == [0, 1, 2]


def test_a_store_without_names_has_none_and_the_same_layout_as_before(tmp_path):
    path = write(tmp_path / "plain.beton")
    start, trailer_start = names_region(path)
    assert start == trailer_start  # no gap: byte for byte the layout of earlier versions
    with Store(path) as store:
        assert store.class_names is None and store.field_class_names == {}
        assert store.verify().ok
    # names cost only the block: everything before the CRC block is the same
    named = write(tmp_path / "named.beton", NAMES)
    plain_bytes, named_bytes = path.read_bytes(), named.read_bytes()
    with Store(path) as a:
        data_end = a.alloc_table_ptr - fmt.CHECKSUM_TRAILER_TYPE.itemsize - 4 * len(a.alloc_table)
    assert plain_bytes[24:data_end] == named_bytes[24:data_end]  # past the header's alloc_table_ptr


def test_names_for_several_int_fields(tmp_path):
    fields = {"image": RGBImageField(), "label": IntField(), "coarse": IntField()}
    source = [(image, label, label % 2) for image, label in rows()]
    path = write(tmp_path / "two.beton", {"label": NAMES, "coarse": ["even", "odd"]}, source, fields)
    with Store(path) as store:
        assert store.class_names == NAMES
        assert store.field_class_names["coarse"] == ["even", "odd"]


@pytest.mark.parametrize("class_names, error, match", [
    (["a", "b"], ConversionError, r"sample 2, field 'label': label 2 but only 2 class names"),
    ("abc", TypeError, "list of strings"),
    ([1, 2, 3, 4, 5, 6], TypeError, "list of strings"),
    ({"image": ["x"]}, ValueError, "'image', which is not an IntField"),
    ({"nope": ["x"]}, ValueError, "'nope', which is not an IntField"),
    (["x" * 1000] * 5000, ValueError, "more than 4194304 bytes"),
])
def test_bad_class_names_are_refused_and_leave_no_file(tmp_path, class_names, error, match):
    with pytest.raises(error, match=match):
        write(tmp_path / "bad.beton", class_names)
    assert not (tmp_path / "bad.beton").exists()


def test_negative_labels_need_no_name(tmp_path):
    """-1 marks unlabelled samples (Hugging Face test splits): allowed, it names no class."""
    source = [(image, -1 if i == 3 else label) for i, (image, label) in enumerate(rows())]
    path = write(tmp_path / "u.beton", NAMES, source)
    assert Store(path).class_names == NAMES
    assert "      -1 ?" in describe(Store(path))
    with pytest.raises(IndexError, match="label -1 names no class"):  # was the last class's name
        Store(path).class_names[-1]
    assert Store(path).class_names[-2:] == NAMES[-2:] and Store(path).field_class_names["label"][5] == NAMES[5]


@pytest.mark.parametrize("damage", ["json_byte", "header_size", "magic", "trailing_zeros"])
def test_damaged_names_give_a_store_error_naming_the_file_and_data_stays_readable(tmp_path, damage):
    path = write(tmp_path / "n.beton", NAMES)
    start, stop = names_region(path)
    data = bytearray(path.read_bytes())
    if damage == "json_byte":
        data[start + names_block.HEADER_TYPE.itemsize + 3] ^= 0x01
    elif damage == "header_size":
        data[start + 12] ^= 0x04
    elif damage == "magic":
        data[start] ^= 0x20
    else:  # a byte of the zero padding after the JSON: outside the JSON's CRC, yet caught
        assert len(names_block.encode_json({"label": NAMES})) % 8, "these names leave no padding"
        data[stop - 1] = 0x7D
    bad = tmp_path / "bad.beton"
    bad.write_bytes(bytes(data))
    with Store(bad) as store:
        assert store[4][1] == 4  # the samples do not depend on the names
        with pytest.raises(StoreError, match=f"{bad}: .*class"):
            store.class_names
        report = store.verify()
        assert not report.ok and "class" in str(report)
        assert "class names: damaged" in describe(store)


def test_crafted_names_with_valid_crcs_but_bad_json_are_store_errors(tmp_path):
    path = write(tmp_path / "n.beton", NAMES)
    start, stop = names_region(path)
    for body in [b'{"label": "not a list"}', b'[1, 2]', b'{"label": [1]}', b"\xff\xfe", b"[" * 900 + b"]" * 900]:
        data = bytearray(path.read_bytes())
        header = np.zeros(1, names_block.HEADER_TYPE)
        header["magic"], header["version"] = names_block.MAGIC, 1
        header["json_size"], header["json_crc"] = len(body), zlib.crc32(body)
        header["header_crc"] = zlib.crc32(header.tobytes()[:20])
        block = header.tobytes() + body
        block += bytes(fmt.align_up(len(block), 8) - len(block))
        # rebuild the file around a block of this size: the gap must fit it exactly
        tail = data[stop:]
        new = data[:start] + block + tail
        alloc_table_ptr = start + len(block) + fmt.CHECKSUM_TRAILER_TYPE.itemsize
        new[16:24] = alloc_table_ptr.to_bytes(8, "little")
        crafted = tmp_path / "crafted.beton"
        crafted.write_bytes(bytes(new))
        with Store(crafted) as store:
            with pytest.raises(StoreError, match="class names"):
                store.class_names


# --- info -------------------------------------------------------------------------------------

def test_info_shows_names_beside_the_histogram(tmp_path, capsys):
    path = write(tmp_path / "n.beton", NAMES)
    assert main(["info", str(path), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "classes (label): 6, 6 names stored" in out
    assert "       1 dög " in out and "       5 猫 " in out and "OK" in out


def test_info_cuts_long_names_and_lists_thousands_of_classes_in_part(tmp_path):
    count = 3000
    names = [f"class number {i} with a rather long descriptive name" for i in range(count)]
    source = [(np.zeros((2, 2, 3), np.uint8), i) for i in range(count)]
    path = write(tmp_path / "many.beton", names, source)
    text = describe(Store(path))
    assert "classes (label): 3000, 3000 names stored" in text
    assert "class number 0 with a r…" in text
    assert "... 2970 more classes" in text
    assert len(text.splitlines()) < 60


def test_info_escapes_control_characters_in_names_fields_and_path(tmp_path, capsys):
    """A crafted store must not reach the terminal: ESC (clear screen, retitle), BEL and a
    right-to-left mark in a class name, a field name and the file name are printed escaped."""
    hostile = "\x1b]0;x\x07\x1b[2J"
    fields = {"image": RGBImageField(), f"l\x1b[31m": IntField()}
    path = write(tmp_path / "evil\u202e.beton", [f"cat{hostile}", "dog\u200e"] + NAMES[2:], fields=fields)
    assert main(["info", str(path), "--verify"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\u200e\u202e"), repr(out)
    assert "cat\\x1b]0;x\\x07\\x1b[2J" in out and "dog\\u200e" in out
    assert "l\\x1b[31m" in out and "evil\\u202e.beton" in out


# --- converters -------------------------------------------------------------------------------

def test_a_label_to_name_mapping_names_classes_in_label_order(tmp_path):
    """Hugging Face's id2label is a {label: name} dict (string keys in a JSON config): iterated,
    it gave the labels, stored as the names ('0', '1'), and a dict in another order named label 0
    '1'. Now its names go in label order; keys that are not the labels 0..K-1 are refused."""
    images, labels = np.zeros((3, 4, 4), np.uint8), np.array([0, 2, 1], np.uint8)
    out = from_arrays(images, labels, tmp_path / "a.beton", class_names={2: "cow", 0: "ant", 1: "bee"}, progress=False)
    assert Store(out).class_names == ["ant", "bee", "cow"]
    out = from_arrays(images, labels, tmp_path / "b.beton", class_names={"1": "b", "0": "a", "2": "c"}, progress=False)
    assert Store(out).class_names == ["a", "b", "c"]
    # torchvision's class_to_idx, {name: label}, the other way round (iterated it gave the names)
    out = from_arrays(images, labels, tmp_path / "d.beton", class_names={"ant": 0, "cow": 2, "bee": 1}, progress=False)
    assert Store(out).class_names == ["ant", "bee", "cow"]
    # folders named "0".."10": the keys look like labels, but the values are (sorted as text)
    folders = sorted(str(i) for i in range(11))
    labels11 = np.arange(11, dtype=np.uint8)
    out = from_arrays(np.zeros((11, 4, 4), np.uint8), labels11, tmp_path / "e.beton",
                      class_names={name: i for i, name in enumerate(folders)}, progress=False)
    assert Store(out).class_names == folders
    for keys in ([1, 2, 3], ["ant", "bee", "cow"], [0, 1, 1.5], ["0", "1", "\u00b2"]):
        with pytest.raises(ConversionError, match=r"class_names: a mapping of class names needs the labels 0\.\.2"):
            from_arrays(images, labels, tmp_path / "c.beton", class_names=dict(zip(keys, "xyz")), progress=False)
    assert not (tmp_path / "c.beton").exists()


def test_image_folder_keeps_its_folder_names(tmp_path):
    for i, name in enumerate(["zebra", "ant", "émeu"]):
        (tmp_path / "tree" / name).mkdir(parents=True)
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / "tree" / name / "a.png")
    out = from_image_folder(tmp_path / "tree", tmp_path / "f.beton", progress=False)
    store = Store(out)
    assert store.class_names == ["ant", "zebra", "émeu"]
    assert store.class_names[store[0][1]] == "ant" and store[0][0][0, 0, 0] == 1
    out = convert(tmp_path / "tree", tmp_path / "g.beton", class_names=["A", "Z", "E"], progress=False)
    assert Store(out).class_names == ["A", "Z", "E"]


def test_hugging_face_class_label_names_are_kept(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"]),
                                  "n": datasets.Value("int64")})
    images = [Image.fromarray(np.full((4, 4, 3), i, np.uint8)) for i in range(4)]
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1, 0], "n": [5, 6, 7, 8]},
                                         features=features)
    assert Store(from_hf_dataset(dataset, tmp_path / "a.beton", progress=False)).class_names == ["cat", "dog"]
    # a plain integer column has no names; explicit names win over the ClassLabel's
    assert Store(from_hf_dataset(dataset, tmp_path / "b.beton", label_column="n",
                                 progress=False)).class_names is None
    assert Store(from_hf_dataset(dataset, tmp_path / "c.beton", class_names=["C", "D"],
                                 progress=False)).class_names == ["C", "D"]
    assert Store(from_hf_dataset(dataset, tmp_path / "d.beton", class_names=[],
                                 progress=False)).class_names is None


def test_torchvision_classes_are_kept_also_through_a_subset(tmp_path):
    import torch
    from torchvision.datasets import ImageFolder

    for name in ("bee", "wasp"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "tree" / name / "x.png")
    dataset = ImageFolder(tmp_path / "tree", transform=np.asarray)
    assert Store(from_torch_dataset(dataset, tmp_path / "a.beton", progress=False)).class_names == ["bee", "wasp"]
    subset = torch.utils.data.Subset(dataset, [1])
    store = Store(from_torch_dataset(subset, tmp_path / "b.beton", progress=False))
    assert store.class_names == ["bee", "wasp"] and store[0][1] == 1


def test_imagenet_style_synonym_tuples_are_joined_and_odd_classes_ignored(tmp_path):
    class Synonyms(list):
        classes = [("tench", "Tinca tinca"), ("goldfish",)]

    class Odd(list):
        classes = [{"not": "a name"}]

    items = [(np.zeros((4, 4, 3), np.uint8), 1)]
    assert Store(from_torch_dataset(Synonyms(items), tmp_path / "a.beton", progress=False)).class_names == \
        ["tench, Tinca tinca", "goldfish"]
    assert Store(from_torch_dataset(Odd(items), tmp_path / "b.beton", progress=False)).class_names is None


def test_cifar_meta_names_from_folders_and_archives(tmp_path):
    from test_convert_cifar import as_rows, cifar_images, make_cifar10, pack, write_py2_pickle

    folder = tmp_path / "c10" / "cifar-10-batches-py"
    make_cifar10(folder)
    names10 = [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                    "ship", "truck"]]
    write_py2_pickle(folder / "batches.meta", {b"label_names": names10, b"num_vis": 3072})
    assert Store(from_cifar(tmp_path / "c10", tmp_path / "a.beton", progress=False)).class_names[9] == "truck"
    archive = pack(folder, tmp_path / "cifar-10-python.tar.gz")
    store = Store(convert(archive, tmp_path / "b.beton", split="test", progress=False))
    assert store.class_names[store[0][1]] == "truck"  # the test batch's first label is 9

    c100 = tmp_path / "c100"
    c100.mkdir()
    write_py2_pickle(c100 / "train", {b"data": as_rows(cifar_images(2, 1)), b"fine_labels": [3, 99],
                                      b"coarse_labels": [1, 19]})
    fine, coarse = [f"f{i}".encode() for i in range(100)], [f"c{i}".encode() for i in range(20)]
    write_py2_pickle(c100 / "meta", {b"fine_label_names": fine, b"coarse_label_names": coarse})
    store = Store(from_cifar(c100, tmp_path / "c.beton", kind="cifar100", coarse=True, progress=False))
    assert store.class_names[99] == "f99" and store.field_class_names["coarse_label"][19] == "c19"
    (c100 / "meta").write_bytes(pickle.dumps({"fine_label_names": "not a list"}))
    with pytest.raises(ConversionError, match=r"meta: 'fine_label_names'.*list of strings"):
        from_cifar(c100, tmp_path / "d.beton", kind="cifar100", progress=False)


def test_idx_and_arrays_take_names_from_the_caller_and_the_cli(tmp_path, capsys):
    from test_convert_idx import write_idx_pair

    images, labels = np.zeros((3, 4, 4), np.uint8), np.array([0, 2, 1], np.uint8)
    write_idx_pair(tmp_path / "idx", images, labels)
    assert Store(from_idx(tmp_path / "idx", tmp_path / "a.beton", progress=False)).class_names is None
    assert Store(from_idx(tmp_path / "idx", tmp_path / "b.beton", class_names=["x", "y", "z"],
                          progress=False)).class_names == ["x", "y", "z"]
    assert Store(from_arrays(images, labels, tmp_path / "c.beton", class_names=("p", "q", "r"),
                             progress=False)).class_names == ["p", "q", "r"]

    assert main(["convert", str(tmp_path / "idx"), "-o", str(tmp_path / "d.beton"), "--no-progress",
                 "--class-names", "zero, one,two"]) == 0
    assert Store(tmp_path / "d.beton").class_names == ["zero", "one", "two"]
    (tmp_path / "names.txt").write_text("a, with comma\nb\nc\n")
    assert main(["convert", str(tmp_path / "idx"), "-o", str(tmp_path / "e.beton"), "--no-progress",
                 "--class-names", f"@{tmp_path / 'names.txt'}"]) == 0
    assert Store(tmp_path / "e.beton").class_names == ["a, with comma", "b", "c"]
    assert main(["convert", str(tmp_path / "idx"), "-o", str(tmp_path / "f.beton"), "--no-progress",
                 "--class-names", "a,b"]) == 1
    assert "sample 1, field 'label': label 2 but only 2 class names" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "idx"), "-o", str(tmp_path / "g.beton"), "--class-names", "a,,c"])
    assert "empty class name" in capsys.readouterr().err
    assert not (tmp_path / "f.beton").exists() and not (tmp_path / "g.beton").exists()
