"""Image-folder trees: class discovery, raw and JPEG storage, resizing, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import fastprune
from fastprune import ConversionError
from fastprune.convert import from_image_folder
from fastprune.convert.image_folder import scan_image_folder
from fastprune.store.images import resize_image


def save(path, array, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return array


def random_image(height, width, seed, channels=3):
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def smooth_image(height, width):
    """A gradient: JPEG keeps it close, unlike noise."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     np.full_like(x, 128)], axis=-1).astype(np.uint8)


def stored(path):
    store = fastprune.Store(path)
    return [store[i] for i in range(len(store))]


@pytest.fixture
def png_tree(tmp_path):
    """root/{cat,dog}/... PNGs of one shape, plus files that must be ignored."""
    root = tmp_path / "tree"
    images = {
        "dog/b.png": save(root / "dog/b.png", random_image(8, 6, 1)),
        "cat/z.PNG": save(root / "cat/z.PNG", random_image(8, 6, 2)),
        "cat/a.png": save(root / "cat/a.png", random_image(8, 6, 3)),
        "dog/sub/c.png": save(root / "dog/sub/c.png", random_image(8, 6, 4)),
        "cat/gray.png": np.repeat(save(root / "cat/gray.png", random_image(8, 6, 5, channels=1))[..., None], 3, 2),
    }
    (root / "cat/notes.txt").write_text("not an image")
    (root / "cat/.hidden.png").write_bytes(b"garbage")
    (root / ".git").mkdir()
    (root / "README.png").write_bytes(b"not in a class folder")
    return root, images


def test_classes_are_sorted_subfolders_and_other_files_ignored(png_tree):
    root, _ = png_tree
    paths, labels, classes = scan_image_folder(root)
    assert classes == ["cat", "dog"]
    assert [p.relative_to(root).as_posix() for p in paths] == [
        "cat/a.png", "cat/gray.png", "cat/z.PNG", "dog/b.png", "dog/sub/c.png"]
    assert labels.tolist() == [0, 0, 0, 1, 1]


def test_raw_storage_keeps_pixels_exactly(png_tree, tmp_path):
    root, images = png_tree
    out = from_image_folder(root, tmp_path / "raw.beton", progress=False, workers=1)
    samples = stored(out)
    order = ["cat/a.png", "cat/gray.png", "cat/z.PNG", "dog/b.png", "dog/sub/c.png"]
    assert [label for _, label in samples] == [0, 0, 0, 1, 1]
    for (image, _), name in zip(samples, order):
        np.testing.assert_array_equal(image, images[name])


def test_jpeg_storage_with_max_side_keeps_aspect(tmp_path):
    root = tmp_path / "tree"
    save(root / "a/wide.jpg", smooth_image(40, 80), quality=95)
    save(root / "a/small.png", smooth_image(10, 12))
    save(root / "b/tall.jpeg", smooth_image(64, 16), quality=95)
    out = from_image_folder(root, tmp_path / "j.beton", jpeg=True, quality=90, max_side=32, progress=False)
    samples = stored(out)
    shapes = [image.shape for image, _ in samples]
    assert shapes == [(10, 12, 3), (16, 32, 3), (32, 8, 3)]  # small.png is never enlarged
    assert [label for _, label in samples] == [0, 0, 1]
    expected = resize_image(smooth_image(40, 80), 16, 32)
    assert np.abs(samples[1][0].astype(int) - expected).mean() < 4  # JPEG of a JPEG: close, not equal
    assert fastprune.Store(out).fields["image"].write_mode == "jpg"


def test_mixed_shapes_in_raw_mode_name_two_files(tmp_path):
    root = tmp_path / "tree"
    save(root / "a/first.png", random_image(8, 8, 0))
    save(root / "b/other.png", random_image(9, 8, 1))
    out = tmp_path / "o.beton"
    with pytest.raises(ConversionError, match=r"first\.png is 8x8x3 and .*other\.png is 9x8x3.*--resize"):
        from_image_folder(root, out, progress=False)
    assert not out.exists()


def test_resize_gives_mixed_shapes_one_shape(tmp_path):
    root = tmp_path / "tree"
    save(root / "a/first.png", random_image(8, 8, 0))
    save(root / "b/other.png", random_image(20, 10, 1))
    out = from_image_folder(root, tmp_path / "o.beton", resize=(6, 4), progress=False)
    assert [image.shape for image, _ in stored(out)] == [(6, 4, 3), (6, 4, 3)]


def test_max_side_that_leaves_shapes_different_is_still_refused_raw(tmp_path):
    root = tmp_path / "tree"
    save(root / "a/wide.png", random_image(10, 20, 0))
    save(root / "a/tall.png", random_image(20, 10, 1))
    with pytest.raises(ConversionError, match="raw storage needs one image shape"):
        from_image_folder(root, tmp_path / "o.beton", max_side=8, progress=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_image_is_named_and_leaves_no_file(tmp_path, workers):
    root = tmp_path / "tree"
    for i in range(520):  # enough samples (>= 2 x 256) for the writer to fork two workers
        save(root / f"a/{i:03d}.png", random_image(4, 4, i))
    good = (root / "a/150.png").read_bytes()
    (root / "a/150.png").write_bytes(good[: len(good) // 2])  # header intact, pixels cut off
    out = tmp_path / "o.beton"
    with pytest.raises(ConversionError, match=r"150\.png"):
        from_image_folder(root, out, jpeg=True, progress=False, workers=workers)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [root]  # no temporary file left behind either


def test_file_that_is_not_an_image_is_named(tmp_path):
    root = tmp_path / "tree"
    save(root / "a/good.png", random_image(4, 4, 0))
    (root / "a/bad.jpg").write_text("this is text")
    with pytest.raises(ConversionError, match=r"bad\.jpg.*cannot"):
        from_image_folder(root, tmp_path / "o.beton", progress=False)
    assert not (tmp_path / "o.beton").exists()


def test_sixteen_bit_pngs_keep_their_high_byte_gray_as_rgb(tmp_path):
    """Pillow reads a 16-bit RGB PNG as 8-bit RGB (the high bytes); a 16-bit gray one ("I;16") was
    refused instead. Both now store the high byte; 32-bit images (range unknown) are refused."""
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    gray = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000 + 123
    Image.fromarray(gray).save(root / "a/deep.png")
    assert Image.open(root / "a/deep.png").mode.startswith("I;16")
    out = from_image_folder(root, tmp_path / "o.beton", progress=False)
    image, _ = fastprune.Store(out)[0]
    np.testing.assert_array_equal(image, np.repeat((gray >> 8).astype(np.uint8)[:, :, None], 3, axis=2))
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(root / "a/wide.tif")
    (root / "a/deep.png").unlink()
    (root / "a/wide.tif").rename(root / "a/wide.png")  # a TIFF by content: scanned by its name
    with pytest.raises(ConversionError, match=r"wide\.png.*not 8 bits"):
        from_image_folder(root, tmp_path / "o2.beton", progress=False)


def test_eight_bit_data_in_a_sixteen_bit_png_is_kept_as_torchvision_reads_it(tmp_path):
    """A 16-bit gray PNG holding only 0-255 (8-bit data saved as 16 bits) was stored black, its
    high byte 0 everywhere (converter audit). Such an image keeps its values, which is also what
    torchvision's loader gives (it clips at 255); a real 16-bit image keeps its high byte."""
    from torchvision.datasets.folder import default_loader

    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    low = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 4).astype(np.uint16)  # 0..252
    Image.fromarray(low).save(root / "a/low.png")
    assert Image.open(root / "a/low.png").mode.startswith("I;16")
    image, _ = fastprune.Store(from_image_folder(root, tmp_path / "o.beton", progress=False))[0]
    np.testing.assert_array_equal(image, np.asarray(default_loader(str(root / "a/low.png"))))
    assert image.max() == 252


def test_empty_inputs(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    with pytest.raises(ConversionError, match="no class subfolders"):
        from_image_folder(root, tmp_path / "o.beton", progress=False)
    (root / "a").mkdir()
    (root / "a/readme.txt").write_text("x")
    with pytest.raises(ConversionError, match=r"a: class folder holds no \.jpg/\.jpeg/\.png"):
        from_image_folder(root, tmp_path / "o.beton", progress=False)
    with pytest.raises(FileNotFoundError, match="folder not found: .*missing$"):  # a ConversionError too
        from_image_folder(tmp_path / "missing", tmp_path / "o.beton", progress=False)
    assert not (tmp_path / "o.beton").exists()


def test_conflicting_size_options_and_bad_output_folder(png_tree, tmp_path):
    root, _ = png_tree
    with pytest.raises(ConversionError, match="either max_side"):
        from_image_folder(root, tmp_path / "o.beton", max_side=4, resize=(2, 2), progress=False)
    with pytest.raises(ConversionError, match="output folder .*nowhere does not exist"):
        from_image_folder(root, tmp_path / "nowhere/o.beton", progress=False)
    (tmp_path / "a.beton").write_bytes(b"")  # said to not exist, as a folder
    with pytest.raises(ConversionError, match=r"output .*a.beton/o.beton: .*a.beton is a file, not a folder$"):
        from_image_folder(root, tmp_path / "a.beton/o.beton", progress=False)


def test_fitting_baseline_jpegs_are_stored_byte_for_byte(tmp_path):
    """--jpeg keeps a baseline JPEG that needs no resizing as it is (no re-encode); progressive
    files, PNGs and files that must shrink are re-encoded; a damaged JPEG is still named."""
    root = tmp_path / "tree"
    save(root / "a/baseline.jpg", smooth_image(30, 40), quality=95)
    save(root / "a/grey.jpg", smooth_image(20, 20)[:, :, 0], quality=95)
    save(root / "a/progressive.jpg", smooth_image(30, 40), quality=95, progressive=True)
    save(root / "b/large.jpg", smooth_image(60, 80), quality=95)
    save(root / "b/small.png", smooth_image(10, 12))
    out = from_image_folder(root, tmp_path / "j.beton", jpeg=True, quality=80, max_side=48, progress=False)
    with fastprune.Store(out) as store:
        offsets, sizes = store.field_ranges("image")
        stored_bytes = [store.buffer[int(o):int(o) + int(n)].tobytes() for o, n in zip(offsets, sizes)]
        shapes = [image.shape[:2] for image, _ in store]
    names = ["baseline.jpg", "grey.jpg", "progressive.jpg", "large.jpg", "small.png"]
    kept = [stored_bytes[i] == (root / ("a" if i < 3 else "b") / name).read_bytes() for i, name in enumerate(names)]
    assert kept == [True, True, False, False, False]
    assert shapes == [(30, 40), (20, 20), (30, 40), (36, 48), (10, 12)]
    (root / "a/baseline.jpg").write_bytes((root / "a/baseline.jpg").read_bytes()[:300])  # cut in the scan
    with pytest.raises(ConversionError, match=r"baseline\.jpg"):
        from_image_folder(root, tmp_path / "k.beton", jpeg=True, max_side=48, progress=False)


def test_baseline_jpeg_size_reads_only_baseline_frames():
    from io import BytesIO

    from fastprune.convert.image_folder import baseline_jpeg_size

    def encoded(**options):
        out = BytesIO()
        Image.fromarray(smooth_image(9, 14)).save(out, "JPEG", **options)
        return out.getvalue()

    assert baseline_jpeg_size(encoded()) == (9, 14)
    assert baseline_jpeg_size(encoded(progressive=True)) is None
    for junk in (b"", b"\xff\xd8", b"\xff\xd8\xff\xc0\x00", b"not a jpeg", encoded()[:20]):
        assert baseline_jpeg_size(junk) is None


def _tiny_class_tree(root, classes=("a", "b", "c"), per_class=2):
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((4, 4, 3), 40 * label + i, np.uint8)).save(root / name / f"{i}.png")


def test_a_link_into_another_class_or_the_root_is_refused_not_relabelled(tmp_path):
    """c/loop -> .. read a/ and b/ again as class c: 6 image files gave 10 samples, 4 of them under
    the wrong label, silently (the promise was 'each real folder once')."""
    root = tmp_path / "src"
    _tiny_class_tree(root)
    (root / "c" / "loop").symlink_to("..")
    with pytest.raises(ConversionError, match=r"c/loop: a link back to the dataset root .*src; its images "
                                              r"would also be labelled as class 'c'"):
        scan_image_folder(root)
    (root / "c" / "loop").unlink()
    (root / "c" / "more_a").symlink_to(root / "a")
    with pytest.raises(ConversionError, match=r"c/more_a and .*src/a are one folder \(a symbolic link\): its images "
                                              r"would be labelled both as class 'c' and as class 'a'"):
        from_image_folder(root, tmp_path / "out.beton", progress=False, workers=1)
    assert not (tmp_path / "out.beton").exists()
    (root / "c" / "more_a").unlink()
    (root / "b" / "sub").mkdir()  # a link from an earlier class into a later class's subfolder:
    (root / "a" / "to_b").symlink_to(root / "b" / "sub")  # both paths named, whichever is walked first
    with pytest.raises(ConversionError, match=r"b/sub and .*a/to_b are one folder"):
        scan_image_folder(root)
    (root / "a" / "to_b").unlink()
    (root / "b" / "sub").rmdir()
    (root / "d").symlink_to(root / "b")  # a second class folder that is b itself
    with pytest.raises(ConversionError, match=r"d and .*src/b are one folder .* both as class 'd' and as class 'b'"):
        scan_image_folder(root)
    (root / "d").unlink()
    (root / "c" / "self").symlink_to(".")  # a loop inside one class: read once, as before
    paths, labels, names = scan_image_folder(root)
    assert len(paths) == 6 and list(np.bincount(labels)) == [2, 2, 2]


def test_a_sixteen_bit_gray_png_opened_as_mode_i_keeps_its_high_byte():
    """Pillow 9.2-10.2 open a 16-bit gray PNG as mode "I", not "I;16": it was refused as 'not 8
    bits per channel' there. This Pillow says "I;16", so the older one's image is made here."""
    from fastprune.convert._common import pil_to_rgb

    gray = np.arange(16, dtype=np.int32).reshape(4, 4) * 4000 + 123
    image = Image.fromarray(gray)  # mode "I"
    image.format = "PNG"  # what Image.open sets
    np.testing.assert_array_equal(pil_to_rgb(image, "deep.png"),
                                  np.repeat((gray >> 8).astype(np.uint8)[:, :, None], 3, axis=2))
    image = Image.fromarray(np.full((4, 4), 70000, dtype=np.int32))
    image.format = "PNG"  # past 16 bits: not a PNG's range, refused as before
    with pytest.raises(ConversionError, match="not 8 bits"):
        pil_to_rgb(image, "wide.png")
    image = Image.fromarray(gray)  # a 32-bit TIFF's mode "I": range unknown, refused
    image.format = "TIFF"
    with pytest.raises(ConversionError, match="not 8 bits"):
        pil_to_rgb(image, "wide.tif")


def test_the_size_pass_reads_headers_a_slice_at_a_time_and_stops_at_the_first_mismatch(tmp_path, monkeypatch):
    """Raw storage checks that every image has one shape. The pass queues a slice of files at a
    time (one future per file queued at once held ~2 KB per file: 0.6 GB for 300k images) and stops
    at the first file that differs, naming it and the first file; under resize it reads nothing."""
    from fastprune.convert import image_folder

    root = tmp_path / "tree"
    for i in range(12):
        save(root / f"c/{i:02d}.png", random_image(9 if i == 7 else 8, 6, i))
    paths, _, _ = scan_image_folder(root)
    reads = []
    real = image_folder.read_size
    monkeypatch.setattr(image_folder, "read_size",
                        lambda path, max_pixels: reads.append(path) or real(path, max_pixels))
    monkeypatch.setattr(image_folder, "_SIZES_AT_ONCE", 3)
    with pytest.raises(ConversionError, match=r"00\.png.*07\.png"):
        image_folder.check_one_shape(paths, max_side=None, resize=None, workers=2)
    assert len(reads) == 9  # the slices up to the one holding 07.png; 09-11 never read
    reads.clear()
    assert image_folder.check_one_shape(paths, max_side=None, resize=(5, 4), workers=2) == (5, 4)
    assert reads == []  # every image gets the resize's shape: no header to read
    assert image_folder.check_one_shape(paths[:7], max_side=None, resize=None, workers=2) == (8, 6)


def test_converting_shows_a_bar_while_the_files_are_listed(png_tree, tmp_path, capsys):
    """Listing ImageNet's 1.28M files takes a minute or more: a bar over the class folders says so
    (nothing was printed until the next stage)."""
    root, _ = png_tree
    from_image_folder(root, tmp_path / "out.beton", progress=True)
    assert "listing files" in capsys.readouterr().err
    from_image_folder(root, tmp_path / "quiet.beton", progress=False)
    assert "listing files" not in capsys.readouterr().err


def test_header_sizes_of_jpegs_read_from_their_frame_header_agree_with_pil(tmp_path):
    """read_size takes a baseline JPEG's size from its frame header (the size pass's speed); it
    must agree with PIL's for every kind of file, fall back to PIL for the others, and name an
    unreadable file as before."""
    import io

    from fastprune.convert.image_folder import _jpeg_head_size, read_size

    image = Image.fromarray(smooth_image(37, 53))
    exif = image.getexif()
    exif[0x010E] = "x" * 20000  # an APP1 segment pushing the frame header past the first 4 KiB
    cases = {"plain.jpg": {"quality": 90}, "grey.jpeg": {"quality": 90, "mode": "L"},
             "progressive.jpg": {"quality": 90, "progressive": True}, "exif.JPG": {"exif": exif.tobytes()},
             "png.png": {}}
    for name, options in cases.items():
        mode = options.pop("mode", "RGB")
        path = tmp_path / name
        image.convert(mode).save(path, **options)
        with Image.open(path) as opened:
            assert read_size(path) == (37, 53) == opened.size[::-1], name
    assert _jpeg_head_size(tmp_path / "exif.JPG") == (37, 53)  # found past 4 KiB
    assert _jpeg_head_size(tmp_path / "progressive.jpg") is None  # PIL's open reads it
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    (tmp_path / "png_named.jpg").write_bytes(buffer.getvalue())  # a PNG under a .jpg name: PIL
    assert read_size(tmp_path / "png_named.jpg") == (37, 53)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ConversionError, match="empty.jpg: cannot read image"):
        read_size(tmp_path / "empty.jpg")
    with pytest.raises(ConversionError, match=r"53x37 = 1,961 pixels exceeds the limit of 1,000"):
        read_size(tmp_path / "plain.jpg", max_pixels=1000)


def test_threads_opening_images_at_once_leave_the_warning_filters_as_they_were(tmp_path, monkeypatch):
    """The size pass opens files from several threads, each silencing PIL's DecompressionBombWarning
    with warnings.catch_warnings, which swaps the process's filter list: two threads inside it at
    once restored each other's lists, and an 'ignore' outlived the pass."""
    import threading
    import time
    import warnings

    from PIL import Image

    from fastprune.convert.image_folder import read_size

    save(tmp_path / "a.png", random_image(4, 4, 0))
    real_open = Image.open

    def slow_open(*args, **kwargs):  # both threads inside the silenced block at once, if allowed
        time.sleep(0.2)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", slow_open)
    with warnings.catch_warnings():
        before = list(warnings.filters)
        threads = [threading.Thread(target=read_size, args=(tmp_path / "a.png",)) for _ in range(2)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        assert warnings.filters == before
