"""An image-folder tree (one subfolder per class, like torchvision's ImageFolder) -> store.

Rules:

* classes are the non-hidden subfolders of the root, sorted by name; label = position in that list,
  or, with ``class_names`` that name every folder, the folder's position in those (so stores of
  splits that lack a class get the same labels); names that match no folder rename them in order;
* a class's images are the regular files below its folder (recursively) whose extension is .jpg,
  .jpeg, .png, .webp, .bmp, .tif or .tiff (any case), sorted by path; other files (counted in a
  warning), hidden files/folders (".name") and anything that is not a regular file (a FIFO, a
  device, a dangling link) are ignored; a dangling link named like an image is counted in a warning
  (a dataset assembled from links has lost that image);
* a file is decoded only as one of those formats, whatever its bytes claim: never as one of PIL's
  other formats (EPS would run Ghostscript on the file's PostScript);
* symbolic links are followed, as torchvision's ImageFolder does, so a class folder or image may
  live elsewhere (datasets are often assembled from links into a shared copy); a folder reached
  twice (a link loop) is read once;
* a class folder without images is an error (its label id would silently go unused);
* files directly in the root are ignored (they belong to no class; image files there with a warning);
* an image whose header claims more than ``max_pixels`` pixels is refused before it is decoded
  (a few bytes can claim gigabytes), as is a truncated image;
* pixels are stored as the file holds them: EXIF orientation is not applied (torchvision's
  ImageFolder does not either, and a kept JPEG's bytes could not carry the rotation), so a photo
  a camera stored sideways stays sideways; rotate such files first (``ImageOps.exif_transpose``);
* a 16-bit gray image (a 16-bit PNG) is stored as its high byte (``v >> 8``, where torchvision's
  loader clips at 255), unless all its values are below 256 (8-bit data saved as 16 bits: kept as
  is, as torchvision gives it); 12-bit data in 16 bits then comes out dark: scale such images
  yourself and convert them with ``from_arrays``.

JPEG storage (``jpeg=True``) keeps a file's own bytes when it needs no resizing and is a
baseline 8-bit JPEG (grey or YCbCr) that decodes cleanly: no decode/re-encode, no generation
loss, and the conversion costs only a check (a 1/8-scale decode). Other files are decoded (a
JPEG that must shrink by 4x or more is decoded already DCT-downscaled, to twice the target at
least), fitted and re-encoded.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from .._cpus import usable_cpus
from .._native import core
from ..errors import ConversionError, SourceWarning, UnreadableSample, user_stacklevel
from ..store.fields import MAX_IMAGE_SIDE, BytesField, EncodedJpeg
from ..store.images import bomb_warning_ignored
from . import _common

_JPEG_SUFFIXES = (".jpg", ".jpeg")
_EXTENSIONS = (*_JPEG_SUFFIXES, ".png", ".webp", ".bmp", ".tif", ".tiff")
IMAGE_EXTENSIONS = frozenset(_EXTENSIONS)
# The PIL formats a file may be decoded as: the extensions' own, and no other (EPS runs
# Ghostscript; a file's content, not its name, picks PIL's plugin).
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
_EXTENSIONS_TEXT = "/".join(_EXTENSIONS)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def list_classes(root: Path) -> list[str]:
    entries = [p for p in root.iterdir() if _visible(p)]
    # a dangling link named like a folder (no suffix: a link to a file was always ignored here)
    dangling = next((p for p in entries if not p.suffix and p.is_symlink() and not p.exists()), None)
    if dangling is not None:  # left out, it shifted the labels of every class after it
        raise ConversionError(f"{dangling}: a link to {os.readlink(dangling)!r}, which does not exist (a class folder "
                              "moved or unmounted?); restore it, or remove the link to convert without that class")
    classes = sorted(p.name for p in entries if p.is_dir())
    if not classes:
        raise ConversionError(f"{root}: no class subfolders (expected root/<class>/<image files>)")
    return classes


def list_images(class_dir: Path, ignored: list[Path] | None = None,
                owners: dict[str, tuple[str, Path]] | None = None, broken: list[Path] | None = None) -> list[Path]:
    """Image files below ``class_dir``, in torchvision's ImageFolder order; hidden entries, other
    extensions (appended to ``ignored``) and anything that is not a regular file skipped (dangling
    links named like images appended to ``broken``); symbolic
    links followed, each real folder read once. ``owners``: real folder -> (whose it is, the path
    it was first reached by), shared across the classes by :func:`scan_image_folder` (the root and
    the class folders preset): a folder reached from two classes (a link into another class, a
    folder two classes link to) or back to the root is refused, since its images would get two
    labels."""
    this_class = f"class {class_dir.name!r}"
    found, visited, pending = [], set(), [class_dir]
    owners = {} if owners is None else owners
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        owner, first = owners.setdefault(real, (this_class, folder))
        if owner != this_class:
            raise ConversionError(_two_labels(folder, this_class, owner, first))
        visited.add(real)
        where = str(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():  # follows links
                    pending.append(Path(entry.path))
                elif entry.is_file():  # regular files only, links followed
                    if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                        found.append((where, entry.name))  # strings: a Path per file is made once, below
                    elif ignored is not None:
                        ignored.append(Path(entry.path))
                elif broken is not None and entry.is_symlink() and not os.path.exists(entry.path) \
                        and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    broken.append(Path(entry.path))
    if not found:
        raise ConversionError(f"{class_dir}: class folder holds no {_EXTENSIONS_TEXT} images")
    # torchvision's ImageFolder order (sorted(os.walk(...)): folders by their path as a string,
    # then each folder's files by name), so that store index i is ImageFolder's sample i also in
    # nested class folders; sorting whole paths put cat/sub/deeper/a before cat/sub-2/a and cat/z
    found.sort()
    return [Path(where, name) for where, name in found]


_ROOT = "the dataset root"


def _two_labels(path: Path, this: str, owner: str, first: Path) -> str:
    """The one-line refusal of a folder reached as ``path`` from ``this`` class and as ``first``
    (``owner``'s)."""
    if owner == _ROOT:
        return (f"{path}: a link back to the dataset root {first}; its images would also be labelled as {this} "
                "(remove the link)")
    return (f"{path} and {first} are one folder (a symbolic link): its images would be labelled both as {this} "
            f"and as {owner} (remove the link)")


def _folder_owners(root: Path, classes: list[str]) -> dict[str, tuple[str, Path]]:
    """Real folder -> (whose it is, its path), for the root and each class folder; two class
    folders that are one folder (a link) are refused: each image would have two labels."""
    owners = {os.path.realpath(root): (_ROOT, root)}
    for name in classes:
        this = f"class {name!r}"
        owner, first = owners.setdefault(os.path.realpath(root / name), (this, root / name))
        if owner != this:
            raise ConversionError(_two_labels(root / name, this, owner, first))
    return owners


def scan_image_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None, *,
                      progress: bool = False) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, int64 labels, class names) of an image-folder tree; ``class_names`` as
    :func:`_label_order` reads them. ``progress``: a bar over the class folders (listing
    ImageNet's 1.28M files takes a minute or more)."""
    from tqdm.auto import tqdm  # a notebook's widget bar (as fit's), a terminal's text one

    root = _common.require_dir(root, "image folder")
    classes = list_classes(root)
    names, label_of = _label_order(root, classes, class_names)
    paths: list[Path] = []
    labels: list[int] = []
    ignored: list[Path] = []
    broken: list[Path] = []
    owners = _folder_owners(root, classes)
    for name in tqdm(classes, unit="folder", desc="listing files", disable=not progress):
        images = list_images(root / name, ignored, owners, broken)
        paths += images
        labels += [label_of[name]] * len(images)
    _warn_if_layout_unexpected(root, classes, paths, ignored, broken)
    return paths, np.asarray(labels, dtype=np.int64), names


def _label_order(root: Path, classes: list[str], class_names) -> tuple[list[str], dict[str, int]]:
    """(the names of labels 0, 1, ..., each class folder's label) given ``class_names``: none keeps
    the sorted folders; a list naming every class folder orders the labels (a folder's label is
    its name's place, so a split lacking a class gets the same labels as the others); a list
    naming none renames the sorted folders one for one (ImageNet's wnid folders -> readable
    names). Anything between is ambiguous: refused."""
    in_order = {name: label for label, name in enumerate(classes)}
    if class_names is None:
        return classes, in_order
    names = _common.names_list(class_names, "class_names")
    place: dict[str, int] = {}
    for label, name in enumerate(names):  # a dict, not names.index: 20k classes took 8 s
        place.setdefault(name, label)
    listed = [name for name in classes if name in place]
    if len(listed) == len(classes):
        return names, {name: place[name] for name in classes}
    if not listed and len(names) == len(classes):
        _check_not_respelt(root, classes, names)
        return names, in_order
    missing = next(name for name in classes if name not in place)
    raise ConversionError(f"{root}: class names ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}) "
                          f"must either name every class folder ({missing!r} is missing), which orders "
                          f"the labels, or rename the {len(classes)} folders in sorted order")


def _check_not_respelt(root: Path, classes: list[str], names: list[str]) -> None:
    """Refuse names that spell a folder's own otherwise (case, spaces, '_' or '-') at another label:
    meant to order the labels, they would rename the folders in sorted order ('Dog,Cat' named cat
    'Dog')."""
    def folded(name: str) -> str:  # 'Sea Lion' is folder sea_lion
        return " ".join(name.casefold().replace("_", " ").replace("-", " ").split())

    place = {folded(name): label for label, name in enumerate(names)}
    moved = next((folder for label, folder in enumerate(classes)
                  if folded(folder) in place and place[folded(folder)] != label), None)
    if moved is not None:  # even one: 'Dog,Cat,Horses' named cat 'Dog' all the same
        raise ConversionError(f"{root}: class names ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}) "
                              "spell folders' names otherwise, in another order: they would rename the "
                              f"folders in sorted order (folder {moved!r} named {names[classes.index(moved)]!r}); "
                              "to order the labels, spell them as the folders are")


def _warn_if_layout_unexpected(root: Path, classes: list[str], paths: list[Path], ignored: list[Path],
                               broken: list[Path] = ()) -> None:
    """One SourceWarning for files left out by their extension, one for dangling links named like
    images, and one when the class folders look like splits (train/, val/) of the real class
    folders: each holds the same subfolders and no image directly."""
    if broken:
        links = "links named like images that point" if len(broken) > 1 else "link named like an image that points"
        warnings.warn(SourceWarning(f"{root}: left out {len(broken)} {links} to nothing "
                                    f"(e.g. {broken[0].relative_to(root)} -> {os.readlink(broken[0])})"),
                      stacklevel=user_stacklevel())
    if ignored:
        files, verb = ("files", "are") if len(ignored) > 1 else ("file", "is")
        warnings.warn(SourceWarning(f"{root}: ignored {len(ignored)} {files} that {verb} not {_EXTENSIONS_TEXT} "
                                    f"(e.g. {ignored[0].relative_to(root)})"), stacklevel=user_stacklevel())
    strays = _root_images(root)  # as torchvision's ImageFolder, left out; said, since it looks like a slip
    if strays:
        files = "image files lie" if len(strays) > 1 else "image file lies"
        warnings.warn(SourceWarning(f"{root}: {len(strays)} {files} in the root, in no class folder, and "
                                    f"{'are' if len(strays) > 1 else 'is'} left out (e.g. {strays[0]})"),
                      stacklevel=user_stacklevel())
    if len(classes) < 2:
        return
    direct, inner = False, {name: set() for name in classes}  # class -> its subfolders holding images
    for path in paths:
        parts = path.relative_to(root).parts
        if len(parts) == 2:
            direct = True
            break
        inner[parts[0]].add(parts[1])
    first = inner[classes[0]]
    if not direct and len(first) > 1 and all(subfolders == first for subfolders in inner.values()):
        warnings.warn(SourceWarning(
            f"{root}: its class folders ({', '.join(classes[:4])}) hold the same subfolders "
            f"({', '.join(sorted(first)[:4])}) and no image directly: they look like splits of the "
            f"real classes; to keep those, convert each split, e.g. {root / classes[0]}"), stacklevel=user_stacklevel())


def _root_images(root: Path) -> list[str]:
    """The names of image files directly in ``root`` (hidden ones aside), sorted."""
    with os.scandir(root) as entries:
        return sorted(entry.name for entry in entries if not entry.name.startswith(".") and entry.is_file()
                      and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS)


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


def _stored_as_is(path: Path, data: bytes, max_side, resize, max_pixels) -> EncodedJpeg | None:
    """The file's own bytes, when they can be stored unchanged (see the module docstring)."""
    size = baseline_jpeg_size(data) if path.suffix.lower() in _JPEG_SUFFIXES else None
    if size is None or _common.fitted_shape(*size, max_side=max_side, resize=resize) != size:
        return None
    _common.check_pixels(*size, max_pixels, str(path))
    try:  # the loader must be able to decode every stored byte: check it now, cheaply
        core.decode_jpeg(np.frombuffer(data, np.uint8), min_height=1, min_width=1)
    except ValueError:
        return None  # let PIL decode it (and name the file if it cannot)
    return EncodedJpeg(data, *size)


def read_fitted(path: Path | str, data: bytes, max_side, resize,
                max_pixels: int = _common.DEFAULT_MAX_PIXELS, mode: str | None = None,
                exif_transpose: bool = False) -> np.ndarray:
    """Decode and fit one file (its size checked against ``max_pixels`` before any pixel is
    decoded); a JPEG that shrinks by 4x or more is decoded DCT-downscaled (to twice the target at
    least). ``path`` names the
    file in errors; ``mode``: a PIL mode to convert to first ("L" keeps an image gray).
    ``exif_transpose``: turn the image upright by its EXIF orientation first, as Hugging Face
    ``datasets`` decodes an Image column (2.19 and later); image folders are read as stored, as
    torchvision's ImageFolder reads them."""
    from PIL import Image, ImageOps

    def fitted(turned: bool):  # (stored (h, w) as seen upright, its target size)
        upright = (image.width, image.height) if turned else (image.height, image.width)
        return upright, _common.fitted_shape(*upright, max_side=max_side, resize=resize)

    with _open_image(path, data) as image:
        _common.check_pixels(image.height, image.width, max_pixels, str(path))
        jpeg = image.format == "JPEG"
        if jpeg:  # PIL bounds no decode cost: 5000 scans in 485 KB took 20 s; the loader's limits apply
            reason = core.check_jpeg_cost(np.frombuffer(data, np.uint8), max(max_pixels, core.DEFAULT_MAX_PIXELS))
            if reason:
                raise UnreadableSample(f"{path}: {reason}")
        # Asked before decoding only of a JPEG, whose draft size follows the turn (its getexif()
        # reads the header). A PNG's getexif() decodes the image itself and swallowed its errors
        # there: a damaged PNG's partial pixels were stored instead of refused.
        orientation = _orientation(image) if exif_transpose and jpeg else 1
        turned = orientation in _QUARTER_TURNS
        upright, target = fitted(turned)
        if max(target) > MAX_IMAGE_SIDE:  # before decoding; the store's field refused it later, naming no file
            raise UnreadableSample(f"{path}: {upright[1]}x{upright[0]} would be stored with a side over "
                                   f"{MAX_IMAGE_SIDE} px, which a store cannot hold: shrink it (--max-side / max_side=)")
        if jpeg and target != upright:  # draft takes the stored (width, height)
            # at twice the target at least, as PIL's thumbnail(reducing_gap=2): a DCT-scaled decode just
            # above it, then resampled by a few percent, stored images visibly softer (mean error 1.9 at 256 px)
            size = (2 * target[0], 2 * target[1]) if turned else (2 * target[1], 2 * target[0])
            image.draft("RGB", size)
        try:
            image.load()  # a truncated file raises here (PIL's LOAD_TRUNCATED_IMAGES is off)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UnreadableSample(f"{path}: cannot decode image: {exc}") from exc
        if exif_transpose and not jpeg:
            orientation = _orientation(image)
            _, target = fitted(orientation in _QUARTER_TURNS)
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        pixels = _common.pil_to_rgb(image if mode in (None, image.mode) else image.convert(mode), str(path))
    return _common.fit_image(pixels, resize=target)


_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _orientation(image) -> int:
    """The EXIF orientation (1-8; 1, upright, where there is none or it cannot be read: a damaged
    EXIF block must not stop a conversion)."""
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - whatever PIL's EXIF parser raises on a damaged block
        return 1
    return value if 1 <= value <= 8 else 1


def read_size(path: Path, max_pixels: int = _common.DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels: a baseline JPEG's from
    its frame header in the file's first 64 KiB (46 vs 182 us a file on a busy 2-core machine:
    PIL's open parses more in Python), any other file's from PIL."""
    size = _jpeg_head_size(path) if path.suffix.lower() in _JPEG_SUFFIXES else None
    if size is None:
        with _open_image(path) as image:
            size = image.size[::-1]
    _common.check_pixels(*size, max_pixels, str(path))
    return size


def _jpeg_head_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of a baseline JPEG whose frame header lies in its first 64 KiB; None for
    anything else, or a file that cannot be read (PIL's open then names the problem)."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)  # most frame headers lie here; EXIF thumbnails can push them on
            size = baseline_jpeg_size(head)
            if size is None and len(head) == 4096:
                size = baseline_jpeg_size(head + file.read((1 << 16) - 4096))
            return size
    except OSError:
        return None


@contextlib.contextmanager
def _open_image(path: Path | str, data: bytes | None = None):
    """PIL's lazy open (header only) of ``path`` (or of its bytes ``data``, already read), with its
    errors and size warnings turned into one-line ConversionErrors; fastprune checks the size
    itself, against its own limit."""
    from PIL import Image, UnidentifiedImageError

    if data is not None and not data:
        raise UnreadableSample(f"{path}: cannot read image: the file is empty")
    try:
        with bomb_warning_ignored():
            image = Image.open(path if data is None else io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:  # over twice PIL's own limit: PIL refuses to open
        raise ConversionError(f"{path}: {exc} (PIL's own hard limit, above any --max-pixels; raise "
                              "PIL.Image.MAX_IMAGE_PIXELS if the image is genuine)") from None
    except UnidentifiedImageError as exc:  # its message names a BytesIO where the bytes were read first
        what = "the file is empty" if data is None and path.stat().st_size == 0 else \
            f"not an image of a format read here ({', '.join(PIL_FORMATS)})"
        raise UnreadableSample(f"{path}: cannot read image: {what}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableSample(f"{path}: cannot read image: {exc}") from exc
    with image:
        yield image


def check_one_shape(paths: list[Path], *, max_side: int | None, resize: tuple[int, int] | None,
                    workers: int | None, max_pixels: int = _common.DEFAULT_MAX_PIXELS,
                    progress: bool = False, skip_unreadable: bool = False) -> tuple[int, int]:
    """The one (H, W) all stored images will have, or an error naming two files that differ.
    ``resize`` gives every image its shape: nothing is read. Otherwise every header is read
    (minutes for a million files): ``progress`` shows a bar meanwhile. ``skip_unreadable``: a file
    whose header cannot be read is passed over here (the write leaves it out and names it)."""
    if resize is not None:  # the write still reads each header before decoding (max_pixels)
        return tuple(resize)
    from tqdm.auto import tqdm  # a notebook's widget bar (as fit's), a terminal's text one

    read = functools.partial(_size_or_none if skip_unreadable else read_size, max_pixels=max_pixels)
    first = None  # (path, shape) of the first readable file
    with tqdm(total=len(paths), unit="image", desc="checking sizes", disable=not progress) as bar, \
            contextlib.closing(_header_sizes(paths, read, workers, bar)) as sizes:  # its pool ends here
        for path, size in sizes:
            shape = _common.fitted_shape(*size, max_side=max_side, resize=resize)
            if first is None:
                first = path, shape
            elif shape != first[1]:
                raise _common.mixed_shape_error((str(first[0]), (*first[1], 3)), (str(path), (*shape, 3)))
    if first is None:  # every header unreadable: the first one's error, said so
        try:
            read_size(paths[0], max_pixels)
        except ConversionError as exc:
            raise ConversionError(f"none of the {len(paths)} images can be read; the first: {exc}") from None
    return first[1]


_SIZES_AT_ONCE, _SIZES_PER_TASK = 4096, 128


def _header_sizes(paths: list[Path], read, workers: int | None, bar) -> Iterator[tuple[Path, tuple[int, int]]]:
    """(path, read(path)) in order, for the files whose size ``read`` finds (None: passed over),
    read on a thread pool; ``bar`` counts the files read."""
    with ThreadPoolExecutor(max_workers=workers or usable_cpus()) as pool:
        # a slice at a time: one future per file queued at once held ~2 KB per file (0.6 GB for
        # 300k); each task reads a run of files (a future per file cost more than a JPEG's header)
        for start in range(0, len(paths), _SIZES_AT_ONCE):
            some = paths[start:start + _SIZES_AT_ONCE]
            runs = [some[i:i + _SIZES_PER_TASK] for i in range(0, len(some), _SIZES_PER_TASK)]
            for run, sizes in zip(runs, pool.map(lambda run: [read(path) for path in run], runs)):
                bar.update(len(run))
                yield from ((path, size) for path, size in zip(run, sizes) if size is not None)


def _size_or_none(path: Path, max_pixels: int) -> tuple[int, int] | None:
    try:
        return read_size(path, max_pixels)
    except ConversionError:
        return None


class ImageFolderSource:
    """Decodes (and resizes) one file per index; safe to call from several threads."""

    def __init__(self, paths: list[Path], labels: np.ndarray, *, max_side: int | None,
                 resize: tuple[int, int] | None, one_shape: tuple[int, int] | None = None,
                 max_pixels: int = _common.DEFAULT_MAX_PIXELS, keep_jpeg: bool = False,
                 names_from: Path | None = None):
        self.paths, self.labels = paths, labels
        self.names_from = names_from  # the root: each sample also returns its path below it (UTF-8)
        self.max_side, self.resize, self.max_pixels = max_side, resize, max_pixels
        self.one_shape = one_shape  # raw storage: the shape the header pass found for all files
        self.keep_jpeg = keep_jpeg  # JPEG storage: store fitting baseline JPEGs unchanged

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = self.paths[index]
        try:
            image = self._read(path)
        except ConversionError as exc:  # the file: what skip_unreadable leaves out
            raise UnreadableSample(str(exc)) from exc
        if not isinstance(image, EncodedJpeg) and self.one_shape is not None \
                and image.shape[:2] != self.one_shape:  # header lied
            raise _common.mixed_shape_error((str(self.paths[0]), (*self.one_shape, 3)),
                                            (str(path), image.shape))
        if self.names_from is None:
            return image, int(self.labels[index])
        return image, int(self.labels[index]), os.fsencode(path.relative_to(self.names_from))

    def _read(self, path: Path) -> np.ndarray | EncodedJpeg:
        """The file's image, decoded and fitted, or its own bytes where they can be stored as is."""
        data = _common.read_image_file(path, str(path), self.max_pixels)
        as_is = _stored_as_is(path, data, self.max_side, self.resize, self.max_pixels) if self.keep_jpeg else None
        return as_is if as_is is not None else read_fitted(path, data, self.max_side, self.resize, self.max_pixels)


def from_image_folder(source: str | os.PathLike, out: str | os.PathLike, *, jpeg: bool = False,
                      quality: int = _common.DEFAULT_JPEG_QUALITY, max_side: int | None = None,
                      resize: tuple[int, int] | None = None, workers: int | None = None,
                      max_pixels: int = _common.DEFAULT_MAX_PIXELS, progress: bool = True,
                      class_names: Sequence[str] | None = None, index: bool = False,
                      skip_unreadable: bool = False, names: bool = False) -> Path:
    """Convert an image-folder tree to a store at ``out``; returns the path. The class folders'
    names are kept in the store (``Store.class_names``). ``class_names`` either names every class
    folder, and then orders the labels (a folder's label is its name's position; the list may name
    classes this folder lacks, so the splits of one dataset get the same labels where one lacks a
    class), or names none of them and renames the sorted folders one for one (wnids -> names).

    Raw storage (default) needs one image shape after resizing: give ``resize=(h, w)`` for
    folders of mixed sizes, or store JPEG (``jpeg=True``), which keeps each image's own size.
    ``max_side`` shrinks images whose longer side is larger, keeping the aspect ratio.
    ``max_pixels`` refuses images whose header claims more pixels (checked before decoding).
    ``index=True`` adds an ``index`` field (each sample's id), which ffcv's own Loader needs to
    report a batch's samples (:class:`fastprune.integrations.ffcv.PrunedOrder`).
    ``skip_unreadable=True`` leaves out the files that cannot be read or decoded (or exceed
    ``max_pixels``) instead of stopping: one ``SkippedSamplesWarning`` names them, and later
    files move up (a sample's id is then not its file's place in the sorted listing). More than
    1% of the files (and over 10) stops the conversion all the same.
    ``names=True`` adds a ``name`` field (bytes: each image's path below ``source``, e.g.
    ``b"cat/0042.jpg"``), so that per-sample scores name their files (``fastprune scores --store``).
    """
    _common.check_flags(jpeg=jpeg, progress=progress, index=index, skip_unreadable=skip_unreadable, names=names)
    _common.check_positive_option(max_pixels, "max_pixels")
    _common.check_size_options(max_side, resize, max_pixels)
    paths, labels, classes = scan_image_folder(source, class_names, progress=progress)
    out = _common.check_output_path(out, inputs=paths)
    one_shape = None if jpeg else check_one_shape(paths, max_side=max_side, resize=resize, workers=workers,
                                                  max_pixels=max_pixels, progress=progress,
                                                  skip_unreadable=skip_unreadable)
    fields = _common.image_label_fields(jpeg=jpeg, quality=quality)
    if names:
        fields["name"] = BytesField()
    source = ImageFolderSource(paths, labels, max_side=max_side, resize=resize, one_shape=one_shape,
                               max_pixels=max_pixels, keep_jpeg=jpeg,
                               names_from=_common.require_dir(source, "image folder") if names else None)
    return _common.write(out, source, fields, workers=workers, progress=progress,
                         class_names=_common.label_names_option(classes),
                         index=index, skip_unreadable=skip_unreadable)
