"""Hugging Face datasets on disk -> store: a folder written by ``save_to_disk`` (one split, or a
``DatasetDict`` whose split ``--split`` picks) or a ``.parquet`` / ``.arrow`` file, loaded with the
``datasets`` package and converted by :func:`~fastprune.convert.from_hf_dataset`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConversionError, require
from . import _common
from .torch_dataset import from_hf_dataset

FILE_SUFFIXES = (".parquet", ".arrow")


# What save_to_disk writes for one Dataset (beside its Arrow files)
SAVED_DATASET_FILES = ("state.json", "dataset_info.json")


def is_hf_folder(names: set[str]) -> bool:
    """Whether a folder's file names are those ``save_to_disk`` writes (a Dataset's state and
    info, or a DatasetDict's split list)."""
    return "dataset_dict.json" in names or set(SAVED_DATASET_FILES) <= names


def load_hf(path: Path, split: str | None, progress: bool = True) -> Any:
    """The one split of the dataset at ``path`` to convert (``progress``: datasets' own bars, shown
    while it reads a .parquet/.arrow file into its cache)."""
    datasets = require("datasets", "hf", "converting a Hugging Face dataset")
    if progress or not datasets.is_progress_bar_enabled():
        return _load(datasets, path, split)
    datasets.disable_progress_bars()
    try:
        return _load(datasets, path, split)
    finally:
        datasets.enable_progress_bars()


def _load(datasets, path: Path, split: str | None) -> Any:
    if path.is_file():
        if split is not None:
            raise ConversionError(f"{path}: a {path.suffix} file holds one split; drop --split")
        try:
            return (datasets.Dataset.from_parquet(str(path)) if path.suffix.lower() == ".parquet"
                    else datasets.Dataset.from_file(str(path)))
        except Exception as exc:  # pyarrow's errors for a damaged file: say which file
            raise ConversionError(f"{path}: cannot read it as a {path.suffix} dataset: {exc}") from exc
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise ConversionError(f"{path}: cannot load it with datasets.load_from_disk: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            what = "pick one with --split" if split is None else f"it has no split {split!r}"
            raise ConversionError(f"{path} holds the splits {', '.join(loaded)}: {what}")
        return loaded[split]
    if split is not None:
        raise ConversionError(f"{path} holds one split (saved from a Dataset, not a DatasetDict); drop --split")
    return loaded


def from_hf_path(source: str | os.PathLike, out: str | os.PathLike, *, split: str | None = None,
                 image_column: str = "image", label_column: str = "label", **options: Any) -> Path:
    """Convert the Hugging Face dataset saved at ``source`` (see the module docstring); options
    as :func:`~fastprune.convert.from_hf_dataset`."""
    source = Path(source)
    if source.is_file():  # before loading: a .parquet is not among the Arrow files datasets makes of it
        _common.check_output_path(out, inputs=[source])  # (a saved folder's are: from_hf_dataset checks them)
    dataset = load_hf(source, split, options.get("progress", True))
    return from_hf_dataset(dataset, out, image_column=image_column, label_column=label_column, **options)
