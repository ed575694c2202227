"""Converter behaviour no other test pinned down (mutation audit, round 3, second pass over
convert/*.py): options refused for source kinds they do not apply to, class names naming only
some folders or given as bools, a non-bool ``index``, the error for mixed shapes when the first
file is unreadable, and an output path onto a batch inside CIFAR's official folder."""
from __future__ import annotations

import numpy as np
import pytest
from test_convert_arrays import random_images
from test_convert_cifar import make_cifar10
from test_convert_image_folder import random_image, save
from test_convert_image_folder_layout import _tree

from fastprune import ConversionError
from fastprune.convert import convert, from_arrays, from_image_folder


def test_columns_given_for_a_source_that_is_not_hf_is_refused(tmp_path):
    """detect.py:115: --columns names a Hugging Face dataset's (image, label) columns; given with
    an .npz file it must be refused (the user believes other columns are read), not ignored."""
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4))
    with pytest.raises(ConversionError, match="--columns applies to hf sources, not npz"):
        convert(tmp_path / "a.npz", tmp_path / "o.beton", columns=("img", "target"), progress=False)
    assert not (tmp_path / "o.beton").exists()


def test_drop_unlabeled_given_for_an_image_folder_is_refused(tmp_path):
    """detect.py:112: --drop-unlabeled applies to npz and hf sources (the only ones that can hold
    negative labels); with an image folder it is refused, naming the kind, not silently ignored."""
    save(tmp_path / "src" / "cat" / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ConversionError, match="--drop-unlabeled applies to npz and hf sources, not imagefolder"):
        convert(tmp_path / "src", tmp_path / "o.beton", drop_unlabeled=True, progress=False)
    assert not (tmp_path / "o.beton").exists()


def test_class_names_as_many_as_the_folders_but_naming_only_some_are_refused(tmp_path):
    """image_folder.py:169: a list naming some class folders but not all is ambiguous even when it
    has one name per folder: ["board", "cat"] for folders board/ and person/ must be refused, not
    taken as a rename (person photos silently stored as "cat")."""
    val = _tree(tmp_path / "val", ["board", "person"])
    with pytest.raises(ConversionError, match=r"must either name every class folder \('person' is missing\)"):
        from_image_folder(val, tmp_path / "x.beton", class_names=["board", "cat"], progress=False)
    assert not (tmp_path / "x.beton").exists()


def test_bool_class_names_are_refused_not_spelt_true_and_false(tmp_path):
    """_common.py:363: integers are spelt out as class names, but a bool (a mask or flag list
    passed where names belong) is refused, naming the value, not stored as "True"/"False"."""
    with pytest.raises(ConversionError, match="class_names: class name True is a bool, expected a string"):
        from_arrays(random_images(2, 4, 4, 3), [0, 1], tmp_path / "o.beton", class_names=[True, False],
                    progress=False)
    assert not (tmp_path / "o.beton").exists()


@pytest.mark.parametrize("index", ["no", 1, None])
def test_an_index_option_that_is_not_a_bool_is_refused(tmp_path, index):
    """_common.py:322: ``index`` adds a field to the file: "no" (a truthy string from a config
    file) must not silently add it, nor 1/None pass for True/False."""
    with pytest.raises(TypeError, match=f"index must be True or False, got {type(index).__name__} {index!r}"):
        from_arrays(random_images(2, 4, 4, 3), [0, 1], tmp_path / "o.beton", index=index, progress=False)
    assert not (tmp_path / "o.beton").exists()


def test_mixed_shapes_with_skip_unreadable_name_two_readable_files(tmp_path):
    """image_folder.py:345: the header pass refuses a second image shape up front, naming the
    first readable file: with skip_unreadable and a broken first file, the error must not claim
    that the broken file (which has no shape) is 8x8x3."""
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    (root / "a" / "0bad.png").write_bytes(b"not an image at all")
    save(root / "a" / "first.png", random_image(8, 8, 0))
    save(root / "b" / "other.png", random_image(9, 8, 1))
    with pytest.raises(ConversionError, match=r"first\.png is 8x8x3 and .*other\.png is 9x8x3") as raised:
        from_image_folder(root, tmp_path / "o.beton", skip_unreadable=True, workers=1, progress=False)
    assert "0bad.png" not in str(raised.value)
    assert not (tmp_path / "o.beton").exists()



@pytest.mark.parametrize("target", ["data_batch_2", "batches.meta"])
def test_output_onto_a_file_of_the_official_folder_inside_the_source_is_refused(tmp_path, target):
    """cifar.py:214: given the folder the archive was unpacked in, the batches read live in the
    cifar-10-batches-py folder inside it; an output path naming one of them must be refused like
    one naming a batch of the folder given, not replace the user's copy of the data set."""
    inner = tmp_path / "unpacked" / "cifar-10-batches-py"
    make_cifar10(inner)
    before = (inner / target).read_bytes()
    with pytest.raises(ConversionError, match="is the input file"):
        convert(tmp_path / "unpacked", inner / target, progress=False)
    assert (inner / target).read_bytes() == before
