"""The loader's view of a store: one image field (native gather) and one label field.

Accepts a ``fastprune.Store`` (or a path to a .beton-compatible file). When fastprune's own
reader is not importable, a path is read through ffcv's ``Reader`` so that files written by ffcv
load too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .._native import core

_RGB_METADATA_NAMES = {"mode", "width", "height", "data_ptr"}


@dataclass
class ImageSource:
    gather: "core.ImageGather"
    heights: np.ndarray  # uint32 [N]
    widths: np.ndarray  # uint32 [N]
    labels: np.ndarray | None  # int64 [N] or None
    image_field: str
    label_field: str | None
    owner: object  # keeps the store (and its mmap) alive as long as the loader

    @property
    def num_samples(self) -> int:
        return len(self.heights)

    def check_unchanged(self) -> None:
        """Raise StoreError if the store's file was changed in place (a Store checks itself)."""
        check = getattr(self.owner, "check_unchanged", None)
        if check is not None:
            check()

    @property
    def uniform_shape(self) -> tuple[int, int] | None:
        """(H, W) when every image has the same size, else None."""
        if self.num_samples == 0:
            return None
        h, w = int(self.heights[0]), int(self.widths[0])
        same = (self.heights == h).all() and (self.widths == w).all()
        return (h, w) if same else None


def open_source(store_or_path, image_field: str | None, label_field: str | None, threads: int,
                max_pixels: int = core.DEFAULT_MAX_PIXELS) -> ImageSource:
    if isinstance(store_or_path, (str, os.PathLike)):
        store_or_path = _open_path(os.fspath(store_or_path))
    columns, ranges, owner = _describe(store_or_path)
    image_field = image_field or _pick_image_field(columns)
    if image_field not in columns or not _RGB_METADATA_NAMES <= set(columns[image_field].dtype.names or ()):
        raise ValueError(f"image_field={image_field!r} is not an RGB image field of this store "
                         f"(fields: {sorted(columns)})")
    label_field = label_field if label_field is not None else _pick_label_field(columns, image_field)
    if label_field is not None and (label_field not in columns or columns[label_field].dtype.names is not None):
        raise ValueError(f"label_field={label_field!r} is not a scalar field of this store (fields: {sorted(columns)})")
    meta = columns[image_field]
    offsets, sizes = ranges(image_field)
    heights = np.ascontiguousarray(meta["height"], np.uint32)
    widths = np.ascontiguousarray(meta["width"], np.uint32)
    gather = core.ImageGather(owner_buffer(owner), np.ascontiguousarray(offsets, np.uint64),
                              np.ascontiguousarray(sizes, np.uint64), np.ascontiguousarray(meta["mode"], np.uint8),
                              heights, widths, max(1, threads), int(max_pixels))
    labels = None if label_field is None else np.ascontiguousarray(columns[label_field], np.int64)
    return ImageSource(gather, heights, widths, labels, image_field, label_field, owner)


def _open_path(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"store_or_path: no such file {path!r}")
    try:
        from ..store.reader import Store
    except ImportError:  # fastprune's reader not available: read the file with ffcv's
        return _FfcvFile(path)
    return Store(path)


def _describe(store):
    """-> ({field: metadata column}, field_ranges(name) -> (offsets, sizes), owner)."""
    names = list(store.fields)
    metadata = store.metadata

    def column(i, name):
        return metadata[name] if name in (metadata.dtype.names or ()) else metadata[f"f{i}"]

    columns = {name: column(i, name) for i, name in enumerate(names)}
    return columns, store.field_ranges, store


def owner_buffer(store) -> np.ndarray:
    buffer = store.buffer
    if buffer.dtype != np.uint8 or buffer.ndim != 1:
        buffer = np.asarray(buffer).reshape(-1).view(np.uint8)
    return buffer


def _pick_image_field(columns) -> str:
    images = [n for n, c in columns.items() if _RGB_METADATA_NAMES <= set(c.dtype.names or ())]
    if len(images) != 1:
        raise ValueError(f"image_field must be given: the store has {len(images)} image fields ({images})")
    return images[0]


def _pick_label_field(columns, image_field) -> str | None:
    ints = [n for n, c in columns.items() if n != image_field and c.dtype.names is None and c.dtype.kind in "iu"]
    if "label" in ints:
        return "label"
    return ints[0] if len(ints) == 1 else None


class _FfcvFile:
    """The subset of fastprune.Store the loader needs, for a file read by ffcv.reader.Reader."""

    def __init__(self, path: str):
        from ffcv.reader import Reader

        reader = Reader(path)
        self.fields = {name: reader.handlers[name] for name in reader.field_names}
        self.metadata = reader.metadata
        self.buffer = np.memmap(path, dtype=np.uint8, mode="r")
        table = np.sort(reader.alloc_table, order="ptr")
        self._ptrs, self._sizes = table["ptr"], table["size"]

    def field_ranges(self, name: str):
        ptrs = self.metadata[f"f{list(self.fields).index(name)}"]["data_ptr"]
        slot = np.searchsorted(self._ptrs, ptrs)
        slot = np.minimum(slot, len(self._ptrs) - 1)
        if len(self._ptrs) == 0 or (self._ptrs[slot] != ptrs).any():
            raise ValueError(f"field {name!r}: data pointers missing from the allocation table")
        return ptrs.astype(np.uint64), self._sizes[slot].astype(np.uint64)
