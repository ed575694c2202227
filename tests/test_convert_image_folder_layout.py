"""Image folders as users hand them over: class names that order the labels of a split lacking a
class, files the converter leaves out (said in a warning), a parent of split folders converted by
mistake, the formats torchvision's ImageFolder reads, and content that only claims an extension:
never handed to one of PIL's other plugins (EPS runs Ghostscript)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from fastprune import ConversionError
from fastprune.cli import main
from fastprune.convert import from_image_folder
from fastprune.errors import SourceWarning
from fastprune.store import RGBImageField, Store, write_dataset
from fastprune.store.fields import EncodedJpeg

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"


def _tree(root, classes, per_class=2, suffix=".png"):
    for value, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((6, 6, 3), 40 * value + i, np.uint8)).save(root / name / f"{i}{suffix}")
    return root


def _labels_and_names(path):
    with Store(path) as store:
        return [store[i][1] for i in range(len(store))], store.class_names


def test_class_names_naming_every_folder_order_the_labels_of_a_split_lacking_a_class(tmp_path):
    """fastprune train's refusal said "convert both with one class list (--class-names)"; doing
    so renamed a 2-class val folder's labels by position: person photos became 'pattern'."""
    names = ["board", "pattern", "person"]
    val = _tree(tmp_path / "val", ["board", "person"])
    labels, stored = _labels_and_names(from_image_folder(val, tmp_path / "v.beton", class_names=names,
                                                         progress=False))
    assert labels == [0, 0, 2, 2] and stored == names
    # names matching no folder rename the sorted folders (ImageNet's wnids -> readable names)
    labels, stored = _labels_and_names(from_image_folder(val, tmp_path / "r.beton", class_names=["B", "P"],
                                                         progress=False))
    assert labels == [0, 0, 1, 1] and stored == ["B", "P"]
    with pytest.raises(ConversionError, match=r"must either name every class folder \('person' is missing\)"):
        from_image_folder(val, tmp_path / "x.beton", class_names=["board", "cat", "dog"], progress=False)
    with pytest.raises(ConversionError, match="or rename the 2 folders in sorted order"):
        from_image_folder(val, tmp_path / "x.beton", class_names=["B", "P", "Q"], progress=False)


def test_left_out_files_and_a_parent_of_splits_are_warned_about(tmp_path):
    root = _tree(tmp_path / "photos" / "train", ["cat", "dog"])
    _tree(tmp_path / "photos" / "val", ["cat", "dog"])
    (root / "cat" / "notes.gif").write_bytes(b"GIF89a")
    with pytest.warns(SourceWarning) as warned:
        labels, names = _labels_and_names(from_image_folder(tmp_path / "photos", tmp_path / "p.beton",
                                                            progress=False))
    messages = [str(w.message) for w in warned]
    assert {w.filename for w in warned} == {__file__}  # the user's line: a notebook cell re-run warns again
    assert names == ["train", "val"] and any("ignored 1 file that is not .jpg/.jpeg/.png/.webp/.bmp/.tif/.tiff "
                                             "(e.g. train/cat/notes.gif)" in m for m in messages)
    assert any("its class folders (train, val) hold the same subfolders (cat, dog) and no image directly: "
               "they look like splits" in m for m in messages)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real classes: no layout warning (the .gif still is one)
        (root / "cat" / "notes.gif").unlink()
        from_image_folder(root, tmp_path / "t.beton", progress=False)


@pytest.mark.parametrize("suffix", [".webp", ".bmp", ".tif", ".tiff"])
def test_the_formats_torchvisions_image_folder_reads(tmp_path, suffix):
    root = _tree(tmp_path / "tree", ["a", "b"], suffix=suffix)
    with Store(from_image_folder(root, tmp_path / "o.beton", progress=False)) as store:
        assert len(store) == 4 and int(store[2][0][0, 0, 0]) == 40 and store[2][1] == 1


def test_a_file_whose_content_is_not_a_listed_format_is_never_decoded_by_another_plugin(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: ran.append(args))
    root = _tree(tmp_path / "tree", ["a", "b"])
    (root / "a" / "poster.jpg").write_bytes(EPS)
    (root / "b" / "empty.jpg").write_bytes(b"")
    for jpeg in (False, True):
        with pytest.raises(ConversionError, match=r"poster.jpg: cannot read image: not an image of a format "
                                                  r"read here \(JPEG, PNG, WEBP, BMP, TIFF\)"):
            from_image_folder(root, tmp_path / "o.beton", jpeg=jpeg, progress=False)
    (root / "a" / "poster.jpg").unlink()
    with pytest.raises(ConversionError, match="empty.jpg: cannot read image: the file is empty"):
        from_image_folder(root, tmp_path / "o.beton", jpeg=True, progress=False)
    # a store's JPEG field holding EPS bytes (a hostile file): read back as a JPEG or not at all
    path = write_dataset(tmp_path / "hostile.beton", [(EncodedJpeg(EPS, 8, 8),)], {"image": RGBImageField("jpg")},
                         workers=1, progress=False)
    with Store(path) as store, pytest.raises(Exception, match="not a JPEG"):
        store[0]
    assert ran == []


def test_the_command_line_names_the_option_that_skips_a_bad_file(tmp_path, capsys):
    root = _tree(tmp_path / "tree", ["a", "b"])
    (root / "a" / "cut.png").write_bytes(io.BytesIO(b"\x89PNG\r\n\x1a\n").getvalue())
    assert main(["convert", str(root), "--out", str(tmp_path / "o.beton"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cut.png: cannot" in err and err.strip().endswith("(--skip-unreadable leaves out files that cannot be "
                                                              "read, naming them)")


def test_names_store_each_images_path_and_scores_name_their_files(tmp_path, capsys):
    """Scores and the kept grid named samples by store index only; with --skip-unreadable those
    ids no longer follow the sorted listing. convert --names stores each image's path."""
    import csv

    import fastprune
    from fastprune.errors import SkippedSamplesWarning
    from fastprune.prune import export_scores

    root = _tree(tmp_path / "tree", ["cat", "dog"], per_class=3)
    (root / "cat" / "1.png").write_bytes(b"")
    with pytest.warns(SkippedSamplesWarning):
        out = from_image_folder(root, tmp_path / "o.beton", names=True, index=True, skip_unreadable=True,
                                progress=False)
    expected = ["cat/0.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    with Store(out) as store:
        assert list(store.fields) == ["image", "label", "name", "index"]
        assert [store[i][2].decode() for i in range(len(store))] == expected
    strategy = fastprune.UCB(5, keep=0.4, seed=0)
    strategy.update(strategy.select(0).indices, np.arange(2, dtype=np.float64))
    with open(export_scores(strategy, tmp_path / "s.csv", store=out), newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["name"] for row in rows] == expected and [row["class"] for row in rows] == ["cat"] * 2 + ["dog"] * 3
    assert main(["convert", str(root), "--out", str(tmp_path / "p.npz.beton"), "--names", "--skip-unreadable",
                 "--no-progress"]) == 0
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4))
    assert main(["convert", str(tmp_path / "a.npz"), "--out", str(tmp_path / "n.beton"), "--names"]) == 1
    assert "--names applies to image folders, not npz" in capsys.readouterr().err


def test_ffcv_reads_a_store_with_names(tmp_path):
    pytest.importorskip("ffcv")
    from ffcv.fields.bytes import BytesDecoder
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    root = _tree(tmp_path / "tree", ["cat", "dog"], per_class=3)
    out = from_image_folder(root, tmp_path / "o.beton", names=True, progress=False)
    loader = Loader(str(out), batch_size=6, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()], "name": [BytesDecoder()]})
    images, labels, names = next(iter(loader))
    assert np.array(labels).ravel().tolist() == [0, 0, 0, 1, 1, 1]
    assert bytes(np.array(names)[4][:9].astype(np.uint8)).decode() == "dog/1.png"


def test_the_kept_grid_captions_name_the_files_of_a_store_with_names(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    import fastprune
    from fastprune.prune import kept_grid

    titles = []
    original = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, text, *a, **k: titles.append(text) or original(self, text, *a, **k))
    root = _tree(tmp_path / "tree", ["cat", "dog"], per_class=2, suffix=".jpg")
    (root / "dog" / "1.jpg").rename(root / "dog" / "a_very_long_file_name_indeed.jpg")
    out = from_image_folder(root, tmp_path / "o.beton", names=True, progress=False)
    strategy = fastprune.UCB(4, keep=0.5, seed=0)
    strategy.update(strategy.select(0).indices, np.arange(2, dtype=np.float64))
    kept_grid(strategy, out, tmp_path / "grid.png", per_class=1)
    files = [t.split("\n")[1] for t in titles]
    assert len(files) == 4 and set(files) <= {"0.jpg", "1.jpg", "a_very_long_fil…"} and "a_very_long_fil…" in files


def test_nested_class_folders_keep_torchvision_image_folder_order(tmp_path):
    """Store index i is torchvision's ImageFolder sample i, nested folders included: sorting whole
    paths gave cat/sub/a, cat/sub/deeper/a, cat/sub-2/a, cat/z where ImageFolder gives cat/z,
    cat/sub/a, cat/sub-2/a, cat/sub/deeper/a (converter audit), so per-sample scores joined by
    index landed on other images."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "tree"
    files = ["cat/z.png", "cat/sub/a.png", "cat/sub/deeper/a.png", "cat/sub-2/a.png", "cat/sub/B.png",
             "dog/x.png", "dog/a b/c.png", "dog/a/c.png"]
    for value, name in enumerate(files):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), 10 * value, np.uint8)).save(root / name)
    out = from_image_folder(root, tmp_path / "o.beton", progress=False)
    reference = ImageFolder(str(root))
    with Store(out) as store:
        assert len(store) == len(reference)
        for i, (path, label) in enumerate(reference.samples):
            image, stored_label = store[i]
            assert stored_label == label and image[0, 0, 0] == 10 * files.index(str(Path(path).relative_to(root)))
