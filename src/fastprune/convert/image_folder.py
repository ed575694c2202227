"""An image-folder tree (one subfolder per class, like torchvision's ImageFolder) -> store.

Rules:

* classes are the non-hidden subfolders of the root, sorted by name; label = position in that list;
* a class's images are the files below its folder (recursively) whose extension is .jpg, .jpeg or
  .png (any case), sorted by path; other files and hidden files/folders (".name") are ignored;
* a class folder without images is an error (its label id would silently go unused);
* files directly in the root are ignored (they belong to no class).

JPEG storage (``jpeg=True``) keeps a file's own bytes when it needs no resizing and is a
baseline 8-bit JPEG (grey or YCbCr) that decodes cleanly: no decode/re-encode, no generation
loss, and the conversion costs only a check (a 1/8-scale decode). Other files are decoded (a
JPEG that must shrink by 2x or more is decoded already DCT-downscaled), fitted and re-encoded.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._native import core
from ..errors import ConversionError
from ..store.fields import EncodedJpeg
from . import _common

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def list_classes(root: Path) -> list[str]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        raise ConversionError(f"{root}: no class subfolders (expected root/<class>/<image files>)")
    return classes


def list_images(class_dir: Path) -> list[Path]:
    """Image files below ``class_dir``, sorted; hidden entries and other extensions skipped."""
    found = []
    for folder, subfolders, files in os.walk(class_dir):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(folder) / name for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    if not found:
        raise ConversionError(f"{class_dir}: class folder holds no .jpg/.jpeg/.png images")
    return sorted(found)


def scan_image_folder(root: str | os.PathLike) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, int64 labels, class names) of an image-folder tree."""
    root = _common.require_dir(root, "image folder")
    classes = list_classes(root)
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        images = list_images(root / name)
        paths += images
        labels += [label] * len(images)
    return paths, np.asarray(labels, dtype=np.int64), classes


def baseline_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a baseline (SOF0/SOF1, 8-bit, 1 or 3 components) JPEG, from its
    markers; None for anything else (progressive, arithmetic, 12-bit, CMYK, not a JPEG)."""
    pos = 2 if data[:2] == b"\xff\xd8" else len(data)
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame
            frame = data[pos + 4:pos + 10]
            if marker not in (0xC0, 0xC1) or len(frame) < 6 or frame[0] != 8 or frame[5] not in (1, 3):
                return None
            height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
            return (height, width) if height and width else None
        if marker == 0xDA or length < 2:  # scan before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def _stored_as_is(path: Path, data: bytes, max_side, resize) -> EncodedJpeg | None:
    """The file's own bytes, when they can be stored unchanged (see the module docstring)."""
    size = baseline_jpeg_size(data) if path.suffix.lower() in (".jpg", ".jpeg") else None
    if size is None or _common.fitted_shape(*size, max_side=max_side, resize=resize) != size:
        return None
    try:  # the loader must be able to decode every stored byte: check it now, cheaply
        core.decode_jpeg(np.frombuffer(data, np.uint8), min_height=1, min_width=1)
    except ValueError:
        return None  # let PIL decode it (and name the file if it cannot)
    return EncodedJpeg(data, *size)


def read_fitted(path: Path, data: bytes, max_side, resize) -> np.ndarray:
    """Decode and fit one file; a JPEG that shrinks by 2x or more is decoded DCT-downscaled."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            target = _common.fitted_shape(image.height, image.width, max_side=max_side, resize=resize)
            if image.format == "JPEG" and target != (image.height, image.width):
                image.draft("RGB", (target[1], target[0]))  # keeps at least the target size
            image.load()
            pixels = _common.pil_to_rgb(image, str(path))
    except ConversionError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ConversionError(f"{path}: cannot decode image: {exc}") from exc
    return _common.fit_image(pixels, resize=target)


def read_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            return height, width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ConversionError(f"{path}: cannot read image: {exc}") from exc


def check_one_shape(paths: list[Path], *, max_side: int | None, resize: tuple[int, int] | None,
                    workers: int | None) -> tuple[int, int]:
    """The one (H, W) all stored images will have, or an error naming two files that differ."""
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        sizes = list(pool.map(read_size, paths))
    shapes = [_common.fitted_shape(h, w, max_side=max_side, resize=resize) for h, w in sizes]
    for path, shape in zip(paths, shapes):
        if shape != shapes[0]:
            raise _common.mixed_shape_error((str(paths[0]), (*shapes[0], 3)), (str(path), (*shape, 3)))
    return shapes[0]


class ImageFolderSource:
    """Decodes (and resizes) one file per index; safe to call from several threads."""

    def __init__(self, paths: list[Path], labels: np.ndarray, *, max_side: int | None,
                 resize: tuple[int, int] | None, one_shape: tuple[int, int] | None = None,
                 keep_jpeg: bool = False):
        self.paths, self.labels = paths, labels
        self.max_side, self.resize = max_side, resize
        self.one_shape = one_shape  # raw storage: the shape the header pass found for all files
        self.keep_jpeg = keep_jpeg  # JPEG storage: store fitting baseline JPEGs unchanged

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = self.paths[index]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConversionError(f"{path}: cannot read image: {exc}") from exc
        as_is = _stored_as_is(path, data, self.max_side, self.resize) if self.keep_jpeg else None
        if as_is is not None:
            return as_is, int(self.labels[index])
        image = read_fitted(path, data, self.max_side, self.resize)
        if self.one_shape is not None and image.shape[:2] != self.one_shape:  # header lied
            raise _common.mixed_shape_error((str(self.paths[0]), (*self.one_shape, 3)),
                                            (str(path), image.shape))
        return image, int(self.labels[index])


def from_image_folder(source: str | os.PathLike, out: str | os.PathLike, *, jpeg: bool = False,
                      quality: int = _common.DEFAULT_JPEG_QUALITY, max_side: int | None = None,
                      resize: tuple[int, int] | None = None, workers: int | None = None,
                      progress: bool = True) -> Path:
    """Convert an image-folder tree to a store at ``out``; returns the path.

    Raw storage (default) needs one image shape after resizing: give ``resize=(h, w)`` for
    folders of mixed sizes, or store JPEG (``jpeg=True``), which keeps each image's own size.
    ``max_side`` shrinks images whose longer side is larger, keeping the aspect ratio.
    """
    out = _common.check_output_path(out)
    _common.check_size_options(max_side, resize)
    paths, labels, _ = scan_image_folder(source)
    one_shape = None if jpeg else check_one_shape(paths, max_side=max_side, resize=resize,
                                                  workers=workers)
    fields = _common.image_label_fields(jpeg=jpeg, quality=quality)
    source = ImageFolderSource(paths, labels, max_side=max_side, resize=resize, one_shape=one_shape,
                               keep_jpeg=jpeg)
    return _common.write(out, source, fields, workers=workers, progress=progress)
