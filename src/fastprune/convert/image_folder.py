"""An image-folder tree (one subfolder per class, like torchvision's ImageFolder) -> store.

Rules:

* classes are the non-hidden subfolders of the root, sorted by name; label = position in that list;
* a class's images are the regular files below its folder (recursively) whose extension is .jpg,
  .jpeg or .png (any case), sorted by path; other files, hidden files/folders (".name") and
  anything that is not a regular file (a FIFO, a device, a dangling link) are ignored;
* symbolic links are followed, as torchvision's ImageFolder does, so a class folder or image may
  live elsewhere (datasets are often assembled from links into a shared copy); a folder reached
  twice (a link loop) is read once;
* a class folder without images is an error (its label id would silently go unused);
* files directly in the root are ignored (they belong to no class);
* an image whose header claims more than ``max_pixels`` pixels is refused before it is decoded
  (a few bytes can claim gigabytes), as is a truncated image.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
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
    """Image files below ``class_dir``, sorted; hidden entries, other extensions and anything
    that is not a regular file skipped; symbolic links followed, each real folder read once."""
    found, visited, pending = [], set(), [class_dir]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():  # follows links
                    pending.append(Path(entry.path))
                elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(Path(entry.path))  # is_file(): regular files only, links followed
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


def read_image(path: Path, max_pixels: int = _common.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one file to HxWx3 uint8; any decoding failure names the file.

    The size in the header is checked against ``max_pixels`` before any pixel is decoded.
    """
    from PIL import Image

    with _open_image(path) as image:
        _common.check_pixels(image.size[1], image.size[0], max_pixels, str(path))
        try:
            image.load()  # a truncated file raises here (PIL's LOAD_TRUNCATED_IMAGES is off)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ConversionError(f"{path}: cannot decode image: {exc}") from exc
        return _common.pil_to_rgb(image, str(path))


def read_size(path: Path, max_pixels: int = _common.DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    with _open_image(path) as image:
        width, height = image.size
    _common.check_pixels(height, width, max_pixels, str(path))
    return height, width


@contextlib.contextmanager
def _open_image(path: Path):
    """PIL's lazy open (header only), with its errors and size warnings turned into one-line
    ConversionErrors; fastprune checks the size itself, against its own limit."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice PIL's own limit: PIL refuses to open
        raise ConversionError(f"{path}: {exc} (PIL's own hard limit, above any --max-pixels; raise "
                              "PIL.Image.MAX_IMAGE_PIXELS if the image is genuine)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ConversionError(f"{path}: cannot read image: {exc}") from exc
    with image:
        yield image


def check_one_shape(paths: list[Path], *, max_side: int | None, resize: tuple[int, int] | None,
                    workers: int | None, max_pixels: int = _common.DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The one (H, W) all stored images will have, or an error naming two files that differ."""
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        sizes = list(pool.map(functools.partial(read_size, max_pixels=max_pixels), paths))
    shapes = [_common.fitted_shape(h, w, max_side=max_side, resize=resize) for h, w in sizes]
    for path, shape in zip(paths, shapes):
        if shape != shapes[0]:
            raise _common.mixed_shape_error((str(paths[0]), (*shapes[0], 3)), (str(path), (*shape, 3)))
    return shapes[0]


class ImageFolderSource:
    """Decodes (and resizes) one file per index; safe to call from several threads."""

    def __init__(self, paths: list[Path], labels: np.ndarray, *, max_side: int | None,
                 resize: tuple[int, int] | None, one_shape: tuple[int, int] | None = None,
                 max_pixels: int = _common.DEFAULT_MAX_PIXELS):
        self.paths, self.labels = paths, labels
        self.max_side, self.resize, self.max_pixels = max_side, resize, max_pixels
        self.one_shape = one_shape  # raw storage: the shape the header pass found for all files

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = self.paths[index]
        image = _common.fit_image(read_image(path, self.max_pixels), max_side=self.max_side, resize=self.resize)
        if self.one_shape is not None and image.shape[:2] != self.one_shape:  # header lied
            raise _common.mixed_shape_error((str(self.paths[0]), (*self.one_shape, 3)),
                                            (str(path), image.shape))
        return image, int(self.labels[index])


def from_image_folder(source: str | os.PathLike, out: str | os.PathLike, *, jpeg: bool = False,
                      quality: int = _common.DEFAULT_JPEG_QUALITY, max_side: int | None = None,
                      resize: tuple[int, int] | None = None, workers: int | None = None,
                      max_pixels: int = _common.DEFAULT_MAX_PIXELS, progress: bool = True) -> Path:
    """Convert an image-folder tree to a store at ``out``; returns the path.

    Raw storage (default) needs one image shape after resizing: give ``resize=(h, w)`` for
    folders of mixed sizes, or store JPEG (``jpeg=True``), which keeps each image's own size.
    ``max_side`` shrinks images whose longer side is larger, keeping the aspect ratio.
    ``max_pixels`` refuses images whose header claims more pixels (checked before decoding).
    """
    _common.check_size_options(max_side, resize)
    _common.check_max_pixels(max_pixels)
    paths, labels, _ = scan_image_folder(source)
    out = _common.check_output_path(out, inputs=paths)
    one_shape = None if jpeg else check_one_shape(paths, max_side=max_side, resize=resize,
                                                  workers=workers, max_pixels=max_pixels)
    fields = _common.image_label_fields(jpeg=jpeg, quality=quality)
    source = ImageFolderSource(paths, labels, max_side=max_side, resize=resize, one_shape=one_shape,
                               max_pixels=max_pixels)
    return _common.write(out, source, fields, workers=workers, progress=progress)
