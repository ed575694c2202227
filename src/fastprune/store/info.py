"""Summary of a store, for ``fastprune info FILE [--verify] [--json]``: :func:`describe` (text for
a person) and :func:`summary` (the same facts as a JSON-ready dict for a program)."""

from __future__ import annotations

import numpy as np

from . import format as fmt
from .fields import FloatField, NDArrayField, RGBImageField, class_label_field
from .checksums import read_class_names, read_trailer

_MAX_CLASSES_SHOWN = 30
_NAME_WIDTH = 24  # a class name longer than this is cut (with "…") in the histogram


def describe(store, verify: bool = False) -> str:
    """Samples, fields and their settings, class histogram of the first int field (with the
    class names the file keeps), size on disk and (with ``verify``) the integrity report."""
    lines = [
        f"file:        {printable(str(store.path))}",
        f"size:        {_human_bytes(store.file_size)} ({store.file_size} bytes){on_disk(store.path)}",
        f"samples:     {store.num_samples}",
        f"page size:   {_human_bytes(store.page_size)}",
        f"checksums:   {_checksum_state(store)}",
        f"decoder:     {_jpeg_decoder()} (this build of fastprune)",
        "fields:",
    ]
    for k, (name, field) in enumerate(store.fields.items()):
        lines.append(f"  {printable(name):<16} {printable(_field_summary(store, k, name, field))}")
    label = class_label_field(store.fields)
    names = read_class_names(store)
    if isinstance(names, str):
        lines.append(f"class names: damaged: {printable(names)}")
    if label is not None:
        lines += _histogram_lines(store, label, names.get(label) if isinstance(names, dict) else None)
    elif _targets_field(store):
        lines.append("targets:     'label' holds targets, not classes (regression, multi-label)")
    if verify:
        lines.append(f"verify:      {store.verify()}")
    return "\n".join(lines)


def _targets_field(store) -> str | None:
    """``label`` where it holds targets that are not classes (a FloatField or NDArrayField)."""
    return "label" if isinstance(store.fields.get("label"), (FloatField, NDArrayField)) else None


def summary(store, verify: bool = False) -> dict:
    """What :func:`describe` prints, as a JSON-ready dict: ``file``, ``size_bytes``, ``samples``,
    ``page_size``, ``checksums`` (true when the file has them), ``jpeg_decoder``, ``fields`` (one
    dict per field, in order: ``name``, ``type``, ``settings``, and for image fields ``height`` /
    ``width`` ranges, ``jpeg`` / ``raw`` counts, ``image_bytes``), ``classes`` (of the class
    label field, ``fields.class_label_field``: ``field``, ``counts`` {label value: samples},
    ``names`` or None; None without one), ``targets`` (``"label"`` where that field holds
    targets, not classes, else None) and, with ``verify``, ``verify`` (``ok``, ``report``). A
    damaged file raises StoreError (on ``verify``: when a checksum fails)."""
    from .. import build_info

    fields = [_field_record(store, k, name, field) for k, (name, field) in enumerate(store.fields.items())]
    label = class_label_field(store.fields)
    classes = None
    if label is not None:
        values, counts = np.unique(np.asarray(store.metadata[f"f{store.field_index(label)}"]), return_counts=True)
        classes = {"field": label, "counts": {str(int(v)): int(c) for v, c in zip(values, counts)},
                   "names": store.field_class_names.get(label)}
    record = {"file": str(store.path), "size_bytes": int(store.file_size), "samples": int(store.num_samples),
              "page_size": int(store.page_size),
              "checksums": read_trailer(store.buffer, store.alloc_table_ptr, store.metadata_end) is not None,
              "jpeg_decoder": build_info()["jpeg_decoder"], "fields": fields, "classes": classes,
              "targets": _targets_field(store)}
    if verify:
        report = store.verify().raise_if_bad()  # as verify(store), which the argument hides
        record["verify"] = {"ok": report.ok, "report": str(report)}
    return record


def _field_record(store, k: int, name: str, field) -> dict:
    record = {"name": name, "type": type(field).__name__, "settings": repr(field)}
    column = store.metadata[f"f{k}"]
    if isinstance(field, RGBImageField) and len(column):
        jpeg = int(np.count_nonzero(column["mode"] == fmt.IMAGE_MODE_JPG))
        record.update(height=[int(column["height"].min()), int(column["height"].max())],
                      width=[int(column["width"].min()), int(column["width"].max())],
                      jpeg=jpeg, raw=len(column) - jpeg, image_bytes=int(store.field_ranges(name)[1].sum()))
    return record


def _jpeg_decoder() -> str:
    from .. import build_info

    return "JPEG via " + build_info()["jpeg_decoder"]


def verify(store):
    """Verify ``store``; returns the VerifyReport when sound, raises StoreError (naming the file and
    the damaged parts/samples) when not. A file without checksums (ffcv's) passes on structure;
    ``str(report)`` says so."""
    return store.verify().raise_if_bad()


def _checksum_state(store) -> str:
    trailer = read_trailer(store.buffer, store.alloc_table_ptr, store.metadata_end)
    if trailer is None:
        return "none (file written by ffcv?)"
    if isinstance(trailer, str):
        return f"damaged: {trailer}"
    return f"CRC-32 per sample allocation ({int(trailer['num_allocations'])} entries)"


def _field_summary(store, k: int, name: str, field) -> str:
    if not isinstance(field, RGBImageField):
        return repr(field)
    column = store.metadata[f"f{k}"]
    if len(column) == 0:
        return repr(field)
    _, sizes = store.field_ranges(name)
    jpeg = int(np.count_nonzero(column["mode"] == fmt.IMAGE_MODE_JPG))
    widths, heights = column["width"], column["height"]
    shape = (f"{int(heights[0])}x{int(widths[0])}" if widths.min() == widths.max() and heights.min() == heights.max()
             else f"{int(heights.min())}..{int(heights.max())} x {int(widths.min())}..{int(widths.max())}")
    return (f"{field!r}: {shape} px, {jpeg} JPEG / {len(column) - jpeg} raw, "
            f"{_human_bytes(int(sizes.sum()))} of image data")


def _histogram_lines(store, name: str, class_names: list[str] | None) -> list[str]:
    values = np.asarray(store.metadata[f"f{store.field_index(name)}"])
    classes, counts = np.unique(values, return_counts=True)
    named = f", {len(class_names)} names stored" if class_names else ", no names stored"
    lines = [f"classes ({printable(name)}): {classes.size}{named}"]
    if classes.size == 0:  # an empty store has no histogram to draw
        return lines
    shown = min(classes.size, _MAX_CLASSES_SHOWN)
    peak = counts.max()
    for value, count in zip(classes[:shown], counts[:shown]):
        bar = "#" * max(1, round(30 * count / peak))
        label = f" {_class_name(class_names, int(value)):<{_NAME_WIDTH}}" if class_names else ""
        lines.append(f"  {int(value):>6}{label} {int(count):>9}  {bar}")
    if classes.size > shown:
        lines.append(f"  ... {classes.size - shown} more classes")
    return lines


def _class_name(class_names: list[str], value: int) -> str:
    if not 0 <= value < len(class_names):
        return "?"
    name = printable(" ".join(class_names[value].split()))  # no newline or tab may break the table
    return name if len(name) <= _NAME_WIDTH else name[:_NAME_WIDTH - 1] + "…"


def printable(text: str) -> str:
    """``text`` with every control or other non-printable character escaped as Python writes it
    (``\\x1b``, ``\\u200e``): a store's names come from whoever wrote the file, and printed raw,
    an escape sequence in one could rewrite the user's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def on_disk(path) -> str:
    """", 2.1 MiB on disk" where the file is sparse (the zero page tails a small store leaves: pages
    are 8 MiB by default, as ffcv's), which a copy without sparse support would fill in; else ""."""
    import os

    stat = os.stat(path)
    allocated = getattr(stat, "st_blocks", 0) * 512
    if not allocated or allocated >= 0.9 * stat.st_size:
        return ""
    return f", {_human_bytes(allocated)} on disk (sparse: the pages' zero tails take no space)"


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


__all__ = ["describe", "on_disk", "printable", "summary", "verify"]
