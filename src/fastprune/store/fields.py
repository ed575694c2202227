"""Field types of a store: how one value of a sample is validated, encoded, described and decoded.

Type ids, argument encodings and metadata dtypes are ffcv 1.0.2's (ffcv/fields/*.py), so a field
written here is the same field to ffcv. Each field splits a value into

* a metadata part (fixed size, stored in the per-sample metadata table), and
* an optional payload (variable size bytes stored in the data pages, referenced by a pointer).

The writer fills pointers after it has laid the payloads out in pages (``fill_metadata``).

Accepted values (anything else raises ``ValueError``/``TypeError``, which the writer turns into a
``ConversionError`` naming the sample and the field):

* ``RGBImageField``: H x W x 3 ``uint8`` arrays; H x W and H x W x 1 ``uint8`` arrays (grey, the
  channel is replicated to RGB); PIL images (converted with ``.convert("RGB")``).
* ``IntField``: Python ints, numpy integers, 0-d integer arrays/tensors, within int64. ``bool`` is
  rejected: a boolean where an integer label is expected is almost always a bug upstream.
* ``FloatField``: real numbers (ints and numpy scalars included, ``bool`` rejected).
* ``NDArrayField(dtype, shape)``: arrays of exactly ``shape`` whose dtype equals ``dtype`` or
  casts to it safely (``np.can_cast(..., "safe")``).
* ``BytesField``: ``bytes``, ``bytearray``, ``memoryview`` or 1-D ``uint8`` arrays.
* ``JSONField`` / ``TorchTensorField``: ffcv's, for reading its files (and writing them back):
  JSON-serialisable values / tensors or arrays of the given dtype and shape.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._args import check_int_range
from . import format as fmt
from .images import DEFAULT_JPEG_QUALITY, decode_jpeg, encode_jpeg, resize_image


def _zero_args() -> np.ndarray:
    return np.zeros(fmt.FIELD_ARGS_BYTES, dtype="<u1")


# An image's sides are stored as uint16 (ffcv's metadata): the largest a store holds
MAX_IMAGE_SIDE = 65535

class Field:
    """Base class; subclasses set ``type_id`` and ``metadata_type`` (ffcv's values)."""

    type_id: ClassVar[int]
    metadata_type: ClassVar[np.dtype]
    has_payload: ClassVar[bool] = False

    def to_binary(self) -> np.ndarray:
        """The 1024 argument bytes stored in the field descriptor."""
        return _zero_args()

    @classmethod
    def from_binary(cls, args: np.ndarray, metadata: np.ndarray | None = None) -> "Field":
        return cls()

    def settings(self) -> dict[str, Any]:
        return {}

    def encode(self, value) -> tuple[Any, np.ndarray | None]:
        """Returns (metadata scalars or None, payload uint8 array or None)."""
        raise NotImplementedError

    def fill_metadata(self, column: np.ndarray, scalars: list, ptrs: np.ndarray,
                      sizes: np.ndarray) -> None:
        raise NotImplementedError

    def decode(self, record, data: np.ndarray | None):
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.settings() == other.settings()

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.settings().items())))


class FloatField(Field):
    """A float64 scalar per sample, stored in the metadata table."""

    type_id = 0
    metadata_type = fmt.FLOAT_METADATA

    def encode(self, value):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.ndarray)):
            raise TypeError(f"expected a real number, got {type(value).__name__} {value!r:.60}")
        if isinstance(value, np.ndarray) and (value.ndim != 0 or value.dtype.kind not in "iuf"):
            raise TypeError(f"expected a real number, got an array of shape {value.shape} "
                            f"and dtype {value.dtype}")
        return float(value), None

    def fill_metadata(self, column, scalars, ptrs, sizes):
        column[:] = scalars

    def decode(self, record, data):
        return float(record)


class IntField(Field):
    """An int64 scalar per sample (e.g. a class label), stored in the metadata table."""

    type_id = 1
    metadata_type = fmt.INT_METADATA
    _MIN, _MAX = -(1 << 63), (1 << 63) - 1

    def encode(self, value):
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"expected an integer, got the bool {value!r} (pass int(value) if "
                            "this is intended)")
        if isinstance(value, np.ndarray) and value.dtype.kind == "b":
            raise TypeError("expected an integer, got a boolean array")
        try:
            as_int = value.__index__()  # ints, numpy integers, 0-d integer tensors; not floats
        except (AttributeError, TypeError):
            raise TypeError(f"expected an integer, got {type(value).__name__} {value!r:.60}") from None
        if not self._MIN <= as_int <= self._MAX:
            raise ValueError(f"integer {as_int} does not fit in int64")
        return as_int, None

    def fill_metadata(self, column, scalars, ptrs, sizes):
        column[:] = scalars

    def decode(self, record, data):
        return int(record)


# Optional settings stored in RGBImageField's argument bytes. ffcv writes zeros there and ignores
# them when reading, so files stay interchangeable; the tag tells our settings from ffcv's zeros.
_RGB_ARGS_TYPE = np.dtype([("tag", "S4"), ("write_mode", "<u1"), ("jpeg_quality", "<u1"),
                           ("max_resolution", "<u4")])
_RGB_ARGS_TAG = b"FPRN"
_WRITE_MODES = {"jpg": fmt.IMAGE_MODE_JPG, "raw": fmt.IMAGE_MODE_RAW}
_WRITE_MODE_NAMES = {v: k for k, v in _WRITE_MODES.items()}


class EncodedJpeg(NamedTuple):
    """A JPEG to store as it is (no decode, no re-encode): an RGBImageField in 'jpg' mode takes
    it as a value. The converter passes only streams it has checked: baseline, 8-bit, 1 or 3
    components, decodable, of the given size."""

    data: bytes
    height: int
    width: int


class RGBImageField(Field):
    """An RGB image per sample: raw uint8 pixels or JPEG (ffcv's 'raw' and 'jpg' write modes).

    ``max_resolution`` shrinks images whose longer side exceeds it (ffcv's sizes; the filter is
    :func:`~fastprune.store.images.resize_image`'s area averaging, as ffcv's).
    Read back as an H x W x 3 uint8 array.
    """

    type_id = 2
    metadata_type = fmt.RGB_METADATA
    has_payload = True

    def __init__(self, write_mode: str = "raw", jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                 max_resolution: int | None = None):
        if write_mode not in _WRITE_MODES:
            raise ValueError(f"RGBImageField: write_mode must be 'raw' or 'jpg', got {write_mode!r}")
        # True, "90" or 50.5 are refused, not taken as quality 1, 90 or 50
        self.jpeg_quality = check_int_range(jpeg_quality, "RGBImageField: jpeg_quality", 1, 100)
        self.max_resolution = (None if max_resolution is None
                               else check_int_range(max_resolution, "RGBImageField: max_resolution", 1, MAX_IMAGE_SIDE))
        self.write_mode = write_mode

    def settings(self):
        return {"write_mode": self.write_mode, "jpeg_quality": self.jpeg_quality,
                "max_resolution": self.max_resolution}

    def to_binary(self):
        out = _zero_args()
        args = out[: _RGB_ARGS_TYPE.itemsize].view(_RGB_ARGS_TYPE)
        args["tag"] = _RGB_ARGS_TAG
        args["write_mode"] = _WRITE_MODES[self.write_mode]
        args["jpeg_quality"] = self.jpeg_quality
        args["max_resolution"] = self.max_resolution or 0
        return out

    @classmethod
    def from_binary(cls, args, metadata=None):
        ours = args[: _RGB_ARGS_TYPE.itemsize].view(_RGB_ARGS_TYPE)[0]
        if ours["tag"] == _RGB_ARGS_TAG and int(ours["write_mode"]) in _WRITE_MODE_NAMES:
            quality = int(ours["jpeg_quality"])
            return cls(_WRITE_MODE_NAMES[int(ours["write_mode"])],
                       quality if 1 <= quality <= 100 else DEFAULT_JPEG_QUALITY,
                       int(ours["max_resolution"]) or None)
        # Written by ffcv: the settings are not stored; infer the mode from the samples.
        field = cls()
        modes = set() if metadata is None else set(np.unique(metadata["mode"]).tolist())
        if modes == {fmt.IMAGE_MODE_JPG}:
            field.write_mode = "jpg"
        field.written_by_ffcv = ("JPEG and raw" if len(modes) > 1 else  # ffcv's 'smart' / 'proportion' modes
                                 {fmt.IMAGE_MODE_JPG: "JPEG", fmt.IMAGE_MODE_RAW: "raw"}.get(next(iter(modes), None),
                                                                                          "no"))
        return field

    #: how an ffcv-written field's samples are stored ("JPEG", "raw", "JPEG and raw"); None for
    #: fastprune's, whose settings the file records (ffcv's hold zeros, shown as not recorded)
    written_by_ffcv: str | None = None

    def __repr__(self):
        if self.written_by_ffcv is None:
            return super().__repr__()
        return (f"RGBImageField(written by ffcv: {self.written_by_ffcv} samples, quality and max_resolution "
                "not recorded)")

    def encode(self, value):
        if isinstance(value, EncodedJpeg) and self.write_mode == "jpg" and not self._too_large(value):
            return (fmt.IMAGE_MODE_JPG, value.width, value.height), np.frombuffer(value.data, np.uint8)
        if isinstance(value, EncodedJpeg):  # raw storage, or larger than max_resolution: decode
            value = decode_jpeg(np.frombuffer(value.data, np.uint8), (value.height, value.width))
        image = self._as_rgb_array(value)
        image = self._shrink(image)
        height, width = image.shape[:2]
        if self.write_mode == "jpg":
            payload = encode_jpeg(image, self.jpeg_quality)
            return (fmt.IMAGE_MODE_JPG, width, height), payload
        return (fmt.IMAGE_MODE_RAW, width, height), np.ascontiguousarray(image).reshape(-1)

    @staticmethod
    def _as_rgb_array(value) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            if hasattr(value, "convert") and hasattr(value, "mode"):  # a PIL image
                value = np.asarray(value.convert("RGB"))
            else:
                raise TypeError(f"expected an image (uint8 array or PIL image), got {type(value).__name__}")
        if value.dtype != np.uint8:
            raise ValueError(f"image pixels must be uint8, got {value.dtype}")
        if value.ndim == 2 or (value.ndim == 3 and value.shape[2] == 1):
            value = np.repeat(value.reshape(value.shape[0], value.shape[1], 1), 3, axis=2)
        elif value.ndim != 3 or value.shape[2] != 3:
            raise ValueError(f"image must be HxWx3, HxW or HxWx1, got shape {value.shape}")
        if not (1 <= value.shape[0] <= MAX_IMAGE_SIDE and 1 <= value.shape[1] <= MAX_IMAGE_SIDE):
            raise ValueError(f"image sides must be in 1..{MAX_IMAGE_SIDE}, got shape {value.shape}")
        return value

    def _too_large(self, value: EncodedJpeg) -> bool:
        return self.max_resolution is not None and max(value.height, value.width) > self.max_resolution

    def _shrink(self, image: np.ndarray) -> np.ndarray:
        if self.max_resolution is None:
            return image
        size = np.array([image.shape[1], image.shape[0]])
        ratio = self.max_resolution / size.max()
        if ratio >= 1:
            return image
        new_w, new_h = (ratio * size).astype(int)  # ffcv's rounding (truncation)
        return resize_image(image, max(int(new_h), 1), max(int(new_w), 1))

    def fill_metadata(self, column, scalars, ptrs, sizes):
        parts = np.array(scalars, dtype=np.int64).reshape(-1, 3)
        column["mode"] = parts[:, 0]
        column["width"] = parts[:, 1]
        column["height"] = parts[:, 2]
        column["data_ptr"] = ptrs

    def decode(self, record, data):
        height, width = int(record["height"]), int(record["width"])
        if int(record["mode"]) == fmt.IMAGE_MODE_RAW:
            return np.array(data).reshape(height, width, 3)
        return decode_jpeg(data, expected_shape=(height, width))


class BytesField(Field):
    """A variable-length byte string per sample; read back as ``bytes``."""

    type_id = 3
    metadata_type = fmt.BYTES_METADATA
    has_payload = True

    def encode(self, value):
        if isinstance(value, (bytes, bytearray, memoryview)):
            return None, np.frombuffer(value, dtype=np.uint8)
        if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
            return None, np.ascontiguousarray(value)
        raise TypeError(f"expected bytes or a 1-D uint8 array, got {type(value).__name__}"
                        + (f" of dtype {value.dtype} and shape {value.shape}" if isinstance(value, np.ndarray) else ""))

    def fill_metadata(self, column, scalars, ptrs, sizes):
        column["ptr"] = ptrs
        column["size"] = sizes

    def decode(self, record, data):
        return data.tobytes()


# One sample's array may not exceed this (2**48 bytes = 256 TiB, beyond any file): larger claims
# come from damaged descriptors, and would overflow the uint64 sizes the reader computes.
MAX_ELEMENT_BYTES = 2**48


class NDArrayField(Field):
    """A fixed-shape, fixed-dtype array per sample."""

    type_id = 4
    metadata_type = fmt.NDARRAY_METADATA
    has_payload = True

    def __init__(self, dtype, shape):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        if not 1 <= len(self.shape) <= 32 or any(s < 1 for s in self.shape):
            raise ValueError(f"NDArrayField: shape must have 1..32 positive sides, got {shape!r}")
        if self.dtype.hasobject or self.dtype.itemsize == 0:
            raise ValueError(f"NDArrayField: dtype {self.dtype} cannot be stored as bytes")
        # Python ints: a damaged descriptor may claim sides near 2**63, whose product would wrap
        self.element_size = self.dtype.itemsize * math.prod(self.shape)
        if self.element_size > MAX_ELEMENT_BYTES:
            raise ValueError(f"NDArrayField: shape {self.shape} of {self.dtype} is {self.element_size} "
                             f"bytes per sample, over the {MAX_ELEMENT_BYTES}-byte limit")

    def settings(self):
        return {"dtype": self.dtype.str, "shape": self.shape}

    def to_binary(self):
        out = _zero_args()
        header = np.zeros(1, dtype=fmt.NDARRAY_ARGS_TYPE)
        header["shape"][0, : len(self.shape)] = self.shape
        type_json = json.dumps(self.dtype.descr).encode("ascii")  # ffcv's dtype encoding
        header["type_length"] = len(type_json)
        blob = np.concatenate([header.view("<u1"), np.frombuffer(type_json, dtype="<u1")])
        if blob.size > out.size:
            raise ValueError(f"NDArrayField: dtype {self.dtype} is too long to describe in 1024 bytes")
        out[: blob.size] = blob
        return out

    @classmethod
    def from_binary(cls, args, metadata=None):
        header = args[: fmt.NDARRAY_ARGS_TYPE.itemsize].view(fmt.NDARRAY_ARGS_TYPE)[0]
        type_length = int(header["type_length"])
        room = args.size - fmt.NDARRAY_ARGS_TYPE.itemsize
        if not 0 < type_length <= room:
            raise ValueError(f"NDArrayField: dtype description length {type_length} outside 1..{room}")
        raw = args[fmt.NDARRAY_ARGS_TYPE.itemsize:][:type_length].tobytes()
        descr = [tuple(x) for x in json.loads(raw.decode("ascii"))]
        if len(descr) != 1:
            raise ValueError(f"NDArrayField: expected one dtype in the description, got {len(descr)}")
        dtype = np.dtype(descr)["f0"]
        shape = [int(s) for s in header["shape"]]
        while shape and shape[-1] == 0:
            shape.pop()
        return cls(dtype, tuple(shape))

    def encode(self, value):
        array = np.asarray(value)
        if array.shape != self.shape:
            raise ValueError(f"expected an array of shape {self.shape}, got shape {array.shape}")
        if array.dtype != self.dtype:
            if not np.can_cast(array.dtype, self.dtype, "safe"):
                raise ValueError(f"expected dtype {self.dtype}, got {array.dtype} (which does not "
                                 "cast safely)")
            array = array.astype(self.dtype)
        return None, np.ascontiguousarray(array).reshape(-1).view(np.uint8)

    def fill_metadata(self, column, scalars, ptrs, sizes):
        column[:] = ptrs

    def decode(self, record, data):
        return np.array(data).view(self.dtype).reshape(self.shape)


class JSONField(BytesField):
    """A JSON-serialisable value per sample, stored as ffcv's JSONField does (UTF-8 JSON text
    followed by one NUL byte); read back as the Python value."""

    type_id = 5

    def encode(self, value):
        try:
            text = json.dumps(value) + "\0"
        except (TypeError, ValueError) as exc:
            raise TypeError(f"value is not JSON-serialisable: {exc}") from None
        return None, np.frombuffer(text.encode("utf8"), dtype=np.uint8)

    def decode(self, record, data):
        return json.loads(data.tobytes().split(b"\0", 1)[0].decode("utf8"))


class TorchTensorField(NDArrayField):
    """ffcv's TorchTensorField: an NDArrayField read back as a torch tensor (the file stores the
    numpy dtype, as ffcv does)."""

    type_id = 6

    def encode(self, value):
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        return super().encode(value)

    def decode(self, record, data):
        import torch
        return torch.from_numpy(super().decode(record, data))


TYPE_ID_TO_FIELD: dict[int, type[Field]] = {
    cls.type_id: cls for cls in (FloatField, IntField, RGBImageField, BytesField, NDArrayField,
                                 JSONField, TorchTensorField)
}

def class_label_field(fields) -> str | None:
    """The field of a store's class labels: ``label`` if it is an IntField, else the only IntField
    other than ``index`` (the sample ids the converters' ``index=`` adds), else none (a guess
    between two could train on the wrong one). The Loader, ``fastprune info`` and
    ``Store.class_names`` all read the labels there."""
    if isinstance(fields.get("label"), IntField):
        return "label"
    ints = class_label_candidates(fields)
    return ints[0] if len(ints) == 1 else None


def class_label_candidates(fields) -> list[str]:
    """The fields that could hold class labels: the IntFields other than ``index``."""
    return [name for name, field in fields.items() if isinstance(field, IntField) and name != "index"]


__all__ = ["Field", "class_label_candidates", "class_label_field", "FloatField", "IntField", "EncodedJpeg",
           "RGBImageField", "BytesField", "NDArrayField", "JSONField", "TorchTensorField", "TYPE_ID_TO_FIELD",
           "encode_jpeg", "decode_jpeg"]
