"""A store copied with an ``index`` field added: what ffcv's own Loader needs to name a batch's
samples (``fastprune.integrations.ffcv.PrunedOrder``), for a .beton written without one (ffcv's
writer adds none). Every value is kept as stored: a JPEG's bytes are copied, not decoded and
encoded again, and raw images stay raw, so a store mixing the two (ffcv's 'smart' and
'proportion' write modes) keeps each sample's own."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from ._common import check_output_path
from ..store import format as fmt
from ..store.fields import EncodedJpeg, RGBImageField
from ..store.reader import Store
from ..store.writer import write_dataset

INDEX_FIELD = "index"


class _AsStored(RGBImageField):
    """An image field that stores each value in the mode it comes in: an :class:`EncodedJpeg`'s
    bytes as they are, a raw array as raw pixels."""

    def to_binary(self):
        if self.written_by_ffcv is not None:  # its settings are unknown: recorded as ffcv does (none)
            return np.zeros_like(super().to_binary())
        return super().to_binary()

    def encode(self, value):
        if isinstance(value, EncodedJpeg):
            return (fmt.IMAGE_MODE_JPG, value.width, value.height), np.frombuffer(value.data, np.uint8)
        return (fmt.IMAGE_MODE_RAW, value.shape[1], value.shape[0]), np.ascontiguousarray(value).reshape(-1)


def _as_stored(field: RGBImageField) -> _AsStored:
    copied = _AsStored(field.write_mode, field.jpeg_quality, field.max_resolution)
    copied.written_by_ffcv = field.written_by_ffcv
    return copied


class _Rows:
    """The source store's samples, its JPEG images as their bytes (not decoded)."""

    def __init__(self, store: Store):
        self.store = store
        self.images = {name: store.field_ranges(name)
                       for name, field in store.fields.items() if isinstance(field, RGBImageField)}

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple:
        record, values = self.store.metadata[i], []
        for k, name in enumerate(self.store.fields):
            if name in self.images and int(record[k]["mode"]) == fmt.IMAGE_MODE_JPG:
                offset, size = (int(column[i]) for column in self.images[name])
                data = self.store.buffer[offset:offset + size].tobytes()
                values.append(EncodedJpeg(data, int(record[k]["height"]), int(record[k]["width"])))
            else:  # raw pixels decode to themselves
                values.append(self.store.field_value(i, name))
        return tuple(values)


def from_store(source: str | os.PathLike, out: str | os.PathLike, *, workers: int | None = None,
               progress: bool = True) -> Path:
    """Copy the store ``source`` (ffcv's or fastprune's) to ``out`` with an ``index`` field added
    (each sample's position, as ``from_arrays(index=True)`` writes it); return ``out``.

    Every field and value is kept as stored (JPEG bytes copied, raw images raw), with the class
    names the source keeps. A source that already has an ``index`` field is refused: it needs no
    copy. A source with checksums (fastprune's) is verified first: the copy's new checksums would
    vouch for damaged data; an ffcv source has none, so only its structure is checked."""
    out = check_output_path(out, inputs=(source,))  # never over the source, even through a link
    with Store(source) as store:
        if INDEX_FIELD in store.fields:
            raise ConversionError(f"{source}: the store already has an {INDEX_FIELD!r} field")
        store.verify().raise_if_bad()
        fields = {name: _as_stored(field) if isinstance(field, RGBImageField) else field
                  for name, field in store.fields.items()}
        return write_dataset(out, _Rows(store), fields, workers=workers, progress=progress,
                             class_names=store.field_class_names or None, index_field=INDEX_FIELD)
