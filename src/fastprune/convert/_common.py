"""Pieces every converter shares: input checks, image normalisation, field choice, the write call.

A converter's job is only to build ``(source, fields)`` and hand them to
:func:`fastprune.write_dataset`; the writer does the parallel encoding, the progress bar and the
atomic temp-file-and-rename. Everything here exists so each converter fails early, with a
:class:`~fastprune.ConversionError` that names the file or sample at fault, before any output
file is created.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .._args import check_bool, check_positive_int
from .._outputs import check_output_file
from .._text import counted
from ..errors import ConversionError, SourceNotFoundError, UnreadableSample, user_stacklevel
from ..store.fields import MAX_IMAGE_SIDE
from ..store.images import DEFAULT_JPEG_QUALITY, resize_image  # the converters read _common.DEFAULT_JPEG_QUALITY
# Images whose header claims more pixels are refused before decoding: a few hundred bytes can claim
# 12000x12000 (430 MB of RGB). 2**26 (e.g. 8192x8192) is far above photo datasets (ImageNet's
# largest is ~12 Mpx) and below what a 2-core/24 GiB machine decodes comfortably per worker.
DEFAULT_MAX_PIXELS = 2**26


# ----------------------------------------------------------------------------------- checks


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, or a ConversionError saying which input is missing."""
    path = Path(path)
    if not path.exists():
        raise SourceNotFoundError(what, path)
    if not path.is_file():
        raise ConversionError(f"{what} is not a file: {path}")
    return path


def read_image_file(path: str | os.PathLike, what: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                    hint: str = "; raise --max-pixels / max_pixels= if the image is genuine") -> bytes:
    """An image file's bytes: a regular file (``/dev/zero`` or a FIFO would read forever) of at
    most 8 bytes per allowed pixel plus 16 MiB (16-bit RGBA uncompressed, plus metadata), checked
    before it is read: a valid 8x8 PNG followed by 3 GiB of sparse zeros was read whole. An
    UnreadableSample names ``what`` otherwise; ``hint`` ends the size refusal."""
    limit = 8 * max_pixels + (16 << 20)
    try:
        # stat before open: opening a FIFO waits for a writer (O_NONBLOCK instead failed at once on
        # a regular file under a lease, which a plain open waits out)
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UnreadableSample(f"{what}: not a regular file (a device or a pipe?)")
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > limit:
                raise UnreadableSample(f"{what}: {size:,} bytes is more than an image of at most "
                                       f"{max_pixels:,} pixels takes ({limit:,}){hint}")
            return file.read()  # sized by fstat: read(limit) would allocate the whole limit up front
    except OSError as exc:
        raise UnreadableSample(f"{what}: cannot read the file: {exc.strerror or exc}") from exc


def require_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise SourceNotFoundError(what, path)
    if not path.is_dir():
        raise ConversionError(f"{what} is not a directory: {path}")
    return path


def check_output_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Fail before any work if the output cannot be written where asked, or writing it would
    destroy something (see :func:`fastprune._outputs.check_output_file`)."""
    return check_output_file(out, "output", inputs, error=ConversionError, example="data.beton")


def check_positive_option(value, name: str) -> int:
    """``value`` as an int >= 1 (a size or a limit: max_pixels, max_side); else a ConversionError
    naming ``name`` (True would store 1x1 images)."""
    try:
        return check_positive_int(value, name)
    except (TypeError, ValueError) as exc:
        raise ConversionError(str(exc)) from None


def check_pixels(height: int, width: int, max_pixels: int, what: str) -> None:
    """Refuse an image whose (claimed) size exceeds ``max_pixels``, before it is decoded."""
    if height * width > max_pixels:  # unreadable: skip_unreadable leaves such an image out
        raise UnreadableSample(f"{what}: {width}x{height} = {height * width:,} pixels exceeds the limit of "
                              f"{max_pixels:,} (a damaged file or a decompression bomb?); raise it with "
                              "--max-pixels / max_pixels= if the image is genuine")


def check_uint8(array: np.ndarray, what: str) -> None:
    """Refuse non-uint8 pixels instead of guessing a scale (0..1 floats? 0..65535 ints?), with the
    conversion that fits the dtype (the float recipe would wrap integers already in 0..255)."""
    if array.dtype == np.uint8:
        return
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        how = "x.astype(np.uint8) for integers already in 0..255, (x >> 8).astype(np.uint8) for 16-bit ones"
    else:
        how = "(x * 255).round().astype(np.uint8) for floats in [0, 1]"
    raise ConversionError(f"{what} has dtype {array.dtype}; fastprune stores 8-bit pixels (uint8, 0..255) and "
                          f"does not rescale: convert them yourself first, e.g. {how}")


#: Where class labels are expected: how to store targets that are not classes.
TARGETS_HINT = " (targets that are not classes, e.g. regression: pass targets=True, or convert --targets)"


def as_int_labels(labels: Any, what: str, hint: str = "") -> np.ndarray:
    """Labels as a 1-D int64 array; floats, bools and strings are refused, not rounded (``hint``
    follows the message that refuses them)."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ConversionError(f"{what} must be 1-D (one label per sample), got shape {array.shape}{hint}")
    if array.size == 0:  # an empty list has no integer dtype to check; emptiness is checked elsewhere
        return array.astype(np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ConversionError(f"{what} must be integers, got dtype {array.dtype}{hint}")
    if array.dtype == np.uint64:  # values past int64 would wrap round to negative labels
        too_large = np.flatnonzero(array > np.uint64(2**63 - 1))
        if too_large.size:
            raise ConversionError(f"{what}: sample {int(too_large[0])} has label {int(array[too_large[0]])}, which "
                                  "does not fit in a 64-bit signed label; labels must be 0, 1, 2, ...")
    return array.astype(np.int64, copy=False)


def as_targets(targets: Any, what: str) -> np.ndarray:
    """Targets that are not class labels, checked: one real number per sample (a regression
    target, stored as float64) or one array of a fixed shape (multi-label, several outputs,
    stored in its own dtype). Strings and objects are refused, and so are NaN and infinities,
    naming the sample: every loss of that sample would be NaN."""
    try:
        array = np.asarray(targets)
    except ValueError as exc:  # "inhomogeneous shape": rows of several lengths
        raise ConversionError(f"{what} are not all of one shape ({exc}); multi-label tags: give each sample "
                              "a 0/1 vector of one length") from None
    if array.ndim == 0:
        raise ConversionError(f"{what} must hold one target per sample, got a scalar")
    if array.dtype.kind not in "biuf":
        raise ConversionError(f"{what} must be numbers or booleans, got dtype {array.dtype}")
    _check_target_values(array, what)
    if array.ndim == 1:
        return array.astype(np.float64)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def as_target(value: Any, what: str, dtype: str | None = None) -> float | np.ndarray:
    """One sample's target, checked as :func:`as_targets` checks them all: a real number (as a
    float) or an array of numbers or booleans (a tensor's values; cast to ``dtype`` if given),
    finite."""
    if value is None:
        raise ConversionError(f"{what} is missing (None)")
    if hasattr(value, "detach"):  # a tensor, on any device
        value = value.detach().cpu()
        try:
            value = value.numpy()
        except TypeError:  # bfloat16, which numpy has not: as float32, which holds every value
            value = value.float().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ConversionError(f"{what} must be a number or an array of numbers, got {type(value).__name__} "
                              f"of dtype {array.dtype}")
    if dtype is not None and array.ndim:
        array = array.astype(dtype)  # before the check: a value past float32's range becomes inf
    _check_target_values(array[None], what, one=True)
    return float(array) if array.ndim == 0 else array.astype(array.dtype.newbyteorder("="), copy=False)


def _check_target_values(array: np.ndarray, what: str, one: bool = False) -> None:
    """Refuse numeric targets (one row per sample; ``one``: the row of one sample, named by
    ``what``) that are empty or hold NaN or infinities (every loss of that sample would be NaN).
    Their dtype is checked by the callers, each naming what it was given."""
    if 0 in array.shape[1:]:
        subject = f"{what} is" if one else f"{what}: each sample's target is"
        raise ConversionError(f"{subject} empty (shape {array.shape[1:]})")
    if array.dtype.kind == "f" and array.size:
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
        if bad.size:
            subject = f"{what} is" if one else f"{what}: sample {int(bad[0])}'s target is"
            count = "" if one else f"; {bad.size} such samples"
            raise ConversionError(f"{subject} not finite ({str(array[bad[0]]):.60}{count}): its losses would be NaN")


def check_target_options(class_names: Any, drop_unlabeled: bool, what: str) -> None:
    """Targets have no classes to name and no "no label" value to drop."""
    given = [option for option, value in (("class_names (--class-names)", class_names is not None),
                                          ("drop_unlabeled (--drop-unlabeled)", drop_unlabeled)) if value]
    if given:
        raise ConversionError(f"{what}: {' and '.join(given)} apply to class labels, not to targets "
                              "(targets=True, --targets)")


def target_field(targets: np.ndarray):
    """The field a converter writes checked ``targets`` (:func:`as_targets`: one row per sample)
    to: a number per sample is a FloatField, an array an NDArrayField of its shape and dtype."""
    from ..store.fields import FloatField, NDArrayField

    return FloatField() if targets.ndim == 1 else NDArrayField(targets.dtype, targets.shape[1:])


def unlabeled_error(what: str, label: int | None, how_to_drop: str) -> ConversionError:
    """The error for a negative or missing (None) label, naming the sample: it names no class, and
    training refuses it."""
    problem = "is missing (None)" if label is None else f"{label} is negative"
    return ConversionError(f"{what}: label {problem} (Hugging Face datasets use -1 or None for 'no label'); "
                           f"classes are numbered 0, 1, 2, ...: {how_to_drop}")


DROP_OPTION = "pass drop_unlabeled=True (convert --drop-unlabeled) to leave such samples out"


def labelled_samples(labels: np.ndarray, what: str, drop_unlabeled: bool) -> np.ndarray | None:
    """Refuse negative labels naming the first such sample, or (``drop_unlabeled``) return the
    positions of the samples to keep (None when nothing is dropped)."""
    negative = np.flatnonzero(labels < 0)
    if not negative.size:
        return None
    if not drop_unlabeled:
        first = int(negative[0])
        raise unlabeled_error(f"{what}: sample {first}", int(labels[first]),
                              f"{DROP_OPTION} ({counted(negative.size, 'such sample')})")
    kept = np.flatnonzero(labels >= 0)
    check_not_empty(len(kept), f"{what} without its unlabelled samples")
    return kept


def as_int_label(label: Any, what: str, hint: str = "") -> int:
    """One label as a Python int: int, numpy integer or 0-d integer tensor (``hint`` follows the
    message that refuses anything else)."""
    if getattr(label, "ndim", None) == 0 and hasattr(label, "item"):
        label = label.item()  # 0-d tensor or array: its Python value keeps the int/float/bool kind
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise ConversionError(f"{what} must be an integer, got {type(label).__name__} {label!r:.60}{hint}")
    return int(label)


def check_not_empty(count: int, what: str) -> None:
    if count == 0:
        raise ConversionError(f"{what} has no samples; nothing to convert")


def check_counts_match(n_images: int, n_labels: int, what: str) -> None:
    if n_images != n_labels:
        raise ConversionError(f"{what}: {n_images} images but {n_labels} labels")


# ----------------------------------------------------------------------------------- images


def to_hwc3(image: np.ndarray, what: str) -> np.ndarray:
    """An HxW, HxWx1 or HxWx3 uint8 array as a contiguous HxWx3 array.

    Gray images are replicated to RGB so that ffcv's own RGB decoder can read the file.
    """
    check_uint8(image, what)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise ConversionError(f"{what} has shape {image.shape}; expected HxW (gray), HxWx1 or HxWx3 (RGB)")


# PIL modes whose values are 8-bit and convert to RGB without rescaling; "I", "I;16", "F" are not.
EIGHT_BIT_PIL_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


def is_pil_image(value: Any) -> bool:
    """Whether ``value`` is a PIL image (duck-typed: PIL need not be imported to ask)."""
    return hasattr(value, "mode") and hasattr(value, "convert")


def pil_to_rgb(image: Any, what: str) -> np.ndarray:
    """A PIL image as HxWx3 uint8; alpha is dropped. 16-bit gray ("I;16", a 16-bit PNG) keeps its
    high byte, as Pillow itself reads a 16-bit RGB PNG, unless every value is below 256: 8-bit
    data saved in a 16-bit file, kept as is (it came out black; torchvision's loader, which clips
    at 255, gives the same pixels then). 32-bit and float images, whose range is unknown, are
    refused."""
    if image.mode.startswith("I;16") or _sixteen_bit_png(image):
        values = np.asarray(image).astype(np.uint16)
        eight_bit = values.max(initial=0) < 256
        gray = (values if eight_bit else values >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode not in EIGHT_BIT_PIL_MODES:
        raise ConversionError(f"{what} has PIL mode {image.mode!r} (not 8 bits per channel); "
                              "fastprune stores 8-bit RGB and does not rescale")
    return np.asarray(image.convert("RGB"))


def _sixteen_bit_png(image: Any) -> bool:
    """A 16-bit gray PNG as Pillow before 10.3 opens it: mode "I" (32-bit), values within 16 bits
    (a PNG has at most 16 bits per channel; 10.3 and later say "I;16")."""
    if image.mode != "I" or getattr(image, "format", None) != "PNG":
        return False
    low, high = image.getextrema()
    return 0 <= low and high <= 0xFFFF


def any_image_to_rgb(image: Any, what: str) -> np.ndarray:
    """A PIL image, numpy array (HxW, HxWxC, CxHxW) or uint8 tensor (CxHxW, HxWxC) as HxWx3 uint8.

    Channel order is guessed from where a 1 or 3 sits: tensors are read channels-first when
    possible (torch's convention), arrays channels-last (numpy/PIL's convention).
    """
    import sys

    torch = sys.modules.get("torch")  # a torch tensor can only come from an imported torch
    if is_pil_image(image):
        return pil_to_rgb(image, what)
    if torch is not None and isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise ConversionError(
                f"{what} is a {image.dtype} tensor; fastprune stores uint8 pixels and does not "
                "rescale: drop ToTensor()/Normalize() from the transform (PILToTensor() keeps uint8)")
        array = image.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3):
            array = array.transpose(1, 2, 0)
        return to_hwc3(array, what)
    if isinstance(image, list):  # nested lists: a Hugging Face array column in its default (Python) format
        try:
            image = np.asarray(image)  # then its dtype is refused or taken as an array's, with the fix
        except ValueError:
            raise ConversionError(f"{what} is a list of rows of several lengths; expected a PIL image, "
                                  "a numpy array or a uint8 tensor") from None
    if isinstance(image, np.ndarray):
        # not when the last axis is 4: an RGBA array (refused below) 3 rows high was read as CxHxW
        if image.ndim == 3 and image.shape[2] not in (1, 3, 4) and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
        return to_hwc3(image, what)
    encoded = isinstance(image, (bytes, bytearray, str))  # a file's bytes or its path
    raise ConversionError(f"{what} is a {type(image).__name__}; expected a PIL image, a numpy array "
                          "or a uint8 tensor" + ("; a Hugging Face column of encoded images or paths decodes as "
                                                 "one once cast: dataset.cast_column(COLUMN, datasets.Image())"
                                                 if encoded else ""))


def fit_image(image: np.ndarray, *, max_side: int | None = None,
              resize: tuple[int, int] | None = None) -> np.ndarray:
    """Apply ``resize`` (exact HxW) or ``max_side`` (shrink keeping aspect; never enlarge), with
    the one filter every store write uses (:func:`fastprune.store.images.resize_image`)."""
    height, width = fitted_shape(*image.shape[:2], max_side=max_side, resize=resize)
    return resize_image(image, height, width)


def fitted_shape(height: int, width: int, *, max_side: int | None = None,
                 resize: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (H, W) that :func:`fit_image` will produce, without decoding anything."""
    if resize is not None:
        return resize
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return height, width


def check_size_options(max_side: int | None, resize: tuple[int, int] | None,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse contradictory or impossible sizes, and a ``resize`` target larger than ``max_pixels``
    (the bound on sources, which a resize must not get round: 99999x99999 is 30 GB a sample)."""
    if max_side is not None and resize is not None:
        raise ConversionError("give either max_side (--max-side) or resize (--resize), not both")
    if max_side is not None:
        check_positive_option(max_side, "max_side")
    if resize is not None and (not isinstance(resize, (tuple, list)) or len(resize) != 2
                               or not all(isinstance(side, (int, np.integer)) for side in resize) or min(resize) < 1):
        raise ConversionError(f"resize must be (height, width) with positive sides, got {resize}")
    if resize is not None and resize[0] * resize[1] > max_pixels:
        raise ConversionError(f"resize {resize[0]}x{resize[1]} = {resize[0] * resize[1]:,} pixels exceeds the "
                              f"limit of {max_pixels:,}; raise it with --max-pixels / max_pixels= if "
                              "you mean it")
    if resize is not None and max(resize) > MAX_IMAGE_SIDE:  # within the pixels: 1x70000
        raise ConversionError(f"resize {resize[0]}x{resize[1]}: a store holds image sides of at most {MAX_IMAGE_SIDE}")


def mixed_shape_error(first: tuple[str, Sequence[int]], other: tuple[str, Sequence[int]]) -> ConversionError:
    """The error for raw storage of images with different shapes, naming one of each."""
    def fmt(shape: Sequence[int]) -> str:
        return "x".join(str(s) for s in shape)

    return ConversionError(
        f"raw storage needs one image shape, but {first[0]} is {fmt(first[1])} and {other[0]} is "
        f"{fmt(other[1])}: resize them to one shape (--resize HxW) or store JPEG (--jpeg)")


# ----------------------------------------------------------------------------------- fields & write


def check_flags(**flags: Any) -> None:
    """Refuse options that are not True or False, before any work: "no" is truthy
    (``drop_unlabeled="no"`` left samples out, ``jpeg="no"`` stored lossy JPEGs)."""
    for name, value in flags.items():
        check_bool(value, name)


def image_label_fields(*, jpeg: bool = False, quality: int = DEFAULT_JPEG_QUALITY,
                       extra_int_fields: Sequence[str] = ()) -> dict:
    """The ``image`` + ``label`` schema every converter writes (plus optional int fields)."""
    from ..store.fields import IntField, RGBImageField

    jpeg = check_bool(jpeg, "jpeg")  # jpeg="no" is truthy: it would store lossy JPEGs
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise TypeError(f"quality must be an integer from 1 to 100, got {type(quality).__name__} {quality!r:.40}")
    if not 1 <= quality <= 100:
        raise ConversionError(f"JPEG quality must be between 1 and 100, got {quality}")
    image = (RGBImageField(write_mode="jpg", jpeg_quality=quality) if jpeg
             else RGBImageField(write_mode="raw"))
    fields = {"image": image, "label": IntField()}
    for name in extra_int_fields:
        fields[name] = IntField()
    return fields


def write(out: Path, source: Any, fields: dict, *, workers: int | None, progress: bool,
          class_names: dict[str, list[str]] | None = None, index: bool = False,
          skip_unreadable: bool = False) -> Path:
    """Hand a ready source to the store writer; it writes ``out`` atomically or not at all.
    ``class_names`` ({int field: names}, where the source knows them) is kept in the file.
    ``index``: add an ``index`` IntField holding each sample's id (its position in the store),
    the field ffcv's own Loader needs to report which samples a batch holds (PrunedOrder).
    ``skip_unreadable``: see ``write_dataset``."""
    from ..store.writer import write_dataset

    index = check_bool(index, "index")  # np.True_ too; "no" is truthy
    write_dataset(out, source, fields, workers=workers, progress=progress, class_names=class_names,
                  index_field="index" if index else None, skip_unreadable=skip_unreadable)
    warn_if_sparse(out)
    return out


def warn_if_sparse(out: Path) -> None:
    """One-line LabelWarning when the store's labels are not 0..K-1 (training refuses them)."""
    from ..errors import LabelWarning
    from ..store.fields import IntField
    from ..store.names import label_gap, named_class_count
    from ..store.reader import Store

    with Store(out) as store:
        if not isinstance(store.fields.get("label"), IntField):  # none, or targets (from_arrays(targets=True))
            return
        labels = np.asarray(store.metadata[f"f{store.field_index('label')}"])
        if named_class_count(store.field_class_names.get("label"), labels):
            return  # the names count the classes (training takes K = names)
        gap = label_gap(labels)
    if gap is not None:
        distinct, top, missing = gap
        warnings.warn(f"{out}: labels are sparse ({distinct} distinct values up to {top}; none is {missing}); "
                      f"training needs 0..K-1: relabel them first, e.g. "
                      "labels = np.unique(labels, return_inverse=True)[1]", LabelWarning, stacklevel=user_stacklevel())


def label_names_option(class_names: Any) -> dict[str, list[str]]:
    """A converter's ``class_names=`` option as the writer's {"label": names} ({} for None)."""
    return {} if class_names is None else {"label": names_list(class_names, "class_names")}


def names_list(values: Any, what: str) -> list[str]:
    """Class names as a list of str: str and bytes (UTF-8) kept, integers spelt out, tuples of
    synonyms (torchvision's ImageNet: ``("tench", "Tinca tinca")``) joined with ", "."""
    def one(value: Any) -> str:
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if isinstance(value, (tuple, list)) and value and all(isinstance(v, str) for v in value):
            return ", ".join(value)
        if isinstance(value, (str, int, np.integer)) and not isinstance(value, bool):
            return str(value)
        raise ConversionError(f"{what}: class name {value!r:.60} is a {type(value).__name__}, "
                              "expected a string")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ConversionError(f"{what}: class names must be a list of strings, got {type(values).__name__}")
    if isinstance(values, Mapping):  # label -> name (Hugging Face's id2label): iterating gave the labels
        values = _by_label(values, what)
    return [one(value) for value in values]


def _by_label(names: Mapping, what: str) -> list:
    """A {label: name} mapping's names in label order; its labels must be 0..K-1 (as ints, or as
    the digit strings a JSON config holds). One of text keys and integer values is torchvision's
    ``class_to_idx``, {name: label}, read the other way round (folders named "0".."10" are keys
    that look like labels, but their values are)."""
    def integer(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    def number(label: Any) -> int | None:
        if integer(label):
            return int(label)
        return int(label) if isinstance(label, str) and label.isascii() and label.isdigit() else None

    def dense(labels: dict) -> bool:
        return None not in labels and len(labels) == len(names) and sorted(labels) == list(range(len(labels)))

    if all(isinstance(key, str) for key in names) and all(integer(value) for value in names.values()):
        labels = {int(label): name for name, label in names.items()}  # names are text: {name: label}
    else:
        labels = {number(label): name for label, name in names.items()}
    if not dense(labels):
        shown = ", ".join(repr(k) for k in list(names)[:4]) + (", ..." if len(names) > 4 else "")
        raise ConversionError(f"{what}: a mapping of class names needs the labels 0..{len(names) - 1}, as its keys "
                              f"(label -> name) or as its values (name -> label), got keys {shown}; or pass a "
                              "list, label i -> name i")
    return [labels[label] for label in range(len(labels))]


class ArraySource:
    """In-memory images (N x H x W x 3 uint8, or N x H x W gray) and labels as a writer source."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *extra: np.ndarray):
        self.images = images
        self.columns = (labels, *extra)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        return (self.image(index), *(int(column[index]) for column in self.columns))

    def image(self, index: int) -> np.ndarray:
        image = self.images[index]
        if image.ndim == 2:  # gray, replicated per sample so the whole set is never tripled in RAM
            image = np.repeat(image[:, :, None], 3, axis=2)
        return image


class TargetSource(ArraySource):
    """In-memory images and targets (:func:`as_targets`): a float, or an array, per sample."""

    def __getitem__(self, index: int) -> tuple:
        target = self.columns[0][index]
        return self.image(index), (float(target) if np.ndim(target) == 0 else target)
