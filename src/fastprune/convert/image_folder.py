"""An image-folder tree (one subfolder per class, like torchvision's ImageFolder) -> store.

Rules:

* classes are the non-hidden subfolders of the root, sorted by name; label = position in that list;
* a class's images are the files below its folder (recursively) whose extension is .jpg, .jpeg or
  .png (any case), sorted by path; other files and hidden files/folders (".name") are ignored;
* a class folder without images is an error (its label id would silently go unused);
* files directly in the root are ignored (they belong to no class).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import ConversionError
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


def read_image(path: Path) -> np.ndarray:
    """Decode one file to HxWx3 uint8; any decoding failure names the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return _common.pil_to_rgb(image, str(path))
    except ConversionError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ConversionError(f"{path}: cannot decode image: {exc}") from exc


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
                 resize: tuple[int, int] | None, one_shape: tuple[int, int] | None = None):
        self.paths, self.labels = paths, labels
        self.max_side, self.resize = max_side, resize
        self.one_shape = one_shape  # raw storage: the shape the header pass found for all files

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = self.paths[index]
        image = _common.fit_image(read_image(path), max_side=self.max_side, resize=self.resize)
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
    source = ImageFolderSource(paths, labels, max_side=max_side, resize=resize, one_shape=one_shape)
    return _common.write(out, source, fields, workers=workers, progress=progress)
