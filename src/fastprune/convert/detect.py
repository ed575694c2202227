"""Which converter a source needs (``--kind auto``), and the one entry point that dispatches to it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ConversionError, SourceNotFoundError
from . import _common
from .arrays import from_npz
from .cifar import CIFAR10_FOLDER, CIFAR100_FOLDER, from_cifar, is_archive
from .hf_files import FILE_SUFFIXES, SAVED_DATASET_FILES, from_hf_path, is_hf_folder
from .idx import FASHION_MNIST_DIR, from_idx
from .image_folder import from_image_folder
from .store_copy import from_store

KINDS = ("idx", "cifar10", "cifar100", "imagefolder", "npz", "hf", "store")
SHORTCUTS = {"fashion-mnist": FASHION_MNIST_DIR}  # names that stand for a known location
SPLIT_KINDS = {"idx", "cifar10", "cifar100", "hf"}
TRAIN_TEST_KINDS = {"idx", "cifar10", "cifar100"}  # their only splits
RESIZE_KINDS = {"imagefolder", "hf"}


def resolve_source(source: str | os.PathLike) -> Path:
    """A shortcut name ("fashion-mnist") as its folder, unless a path of that name exists."""
    path = Path(source)
    if not path.exists() and str(source) in SHORTCUTS:
        target = SHORTCUTS[str(source)]
        if not target.is_dir():
            raise SourceNotFoundError(f"{source}: its folder", target, f" (apt-get install dataset-{source})")
        return target
    if not path.exists():
        raise SourceNotFoundError("source", path, f" (shortcuts: {', '.join(SHORTCUTS)})")
    return path


def detect_kind(path: Path) -> str:
    """The kind of source at ``path``, judged by the file names the official layouts use."""
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        if path.suffix.lower() == ".beton":
            return "store"
        if path.suffix.lower() in FILE_SUFFIXES:
            return "hf"
        if is_archive(path) and "cifar-100" in path.name.lower():
            return "cifar100"
        if is_archive(path) and "cifar-10" in path.name.lower():
            return "cifar10"
        raise ConversionError(f"{path}: cannot tell what this file is; sources are folders, "
                              ".npz files with 'images' and 'labels', CIFAR .tar.gz archives, Hugging "
                              "Face .parquet/.arrow files, or .beton stores (--index)")
    names = {p.name for p in path.iterdir()}
    if is_hf_folder(names):  # before image folders: a DatasetDict's splits are subfolders
        return "hf"
    if "data_batch_1.bin" in names or "test_batch.bin" in names or "cifar-10-batches-bin" in names \
            or {"train.bin", "test.bin"} <= names:
        raise ConversionError(f"{path}: CIFAR's binary version (.bin files) is not supported: use the "
                              "python version (cifar-10-python.tar.gz / cifar-100-python.tar.gz)")
    if any(name.endswith("-images-idx3-ubyte") or name.endswith("-images-idx3-ubyte.gz") for name in names):
        return "idx"
    if CIFAR10_FOLDER in names or "test_batch" in names or "data_batch_1" in names:
        return "cifar10"
    if CIFAR100_FOLDER in names or {"train", "test", "meta"} <= names:
        return "cifar100"
    saved = sorted(name for name in names  # two stats per subfolder, not a listing of each
                   if all((path / name / file).is_file() for file in SAVED_DATASET_FILES))
    if saved:  # datasets saved one per split: read as class folders, they held 'no images'
        raise ConversionError(f"{path} holds Hugging Face datasets saved one per folder ({', '.join(saved)}): "
                              f"convert one of them, e.g. {path / saved[0]}")
    if any((path / name).is_dir() and not name.startswith(".") for name in names):
        return "imagefolder"
    raise ConversionError(f"{path}: cannot tell what this folder holds (no IDX files, CIFAR batches, "
                          "class subfolders or Hugging Face save_to_disk files); name it with --kind")


def _check_applicable(kind: str, split: str | None, max_side: int | None,
                      resize: tuple[int, int] | None, coarse: bool, max_pixels: int | None) -> None:
    if split is not None and kind not in SPLIT_KINDS:
        raise ConversionError(f"--split applies to {'/'.join(sorted(SPLIT_KINDS))} sources, not {kind}")
    if split not in (None, "train", "test") and kind in TRAIN_TEST_KINDS:
        raise ConversionError(f"--split of {kind} sources is train or test, not {split!r}")
    if (max_side is not None or resize is not None) and kind not in RESIZE_KINDS:
        raise ConversionError(f"--max-side/--resize apply to image folders and hf sources, not {kind} "
                              "(its images already share one shape)")
    if max_pixels is not None and kind not in ("imagefolder", "hf"):
        raise ConversionError(f"--max-pixels applies to image folders and hf sources, not {kind} "
                              "(its image size is fixed by the format)")
    if coarse and kind != "cifar100":
        raise ConversionError(f"--coarse applies to cifar100 sources, not {kind}")


def _check_store_copy(path: Path, index: bool, options: list[str]) -> None:
    """A store is converted only to add an index field, every value kept as stored."""
    if not index:
        raise ConversionError(f"{path}: a store is already converted; converting it again adds an index field "
                              "(for ffcv's own Loader): pass --index (index=True)")
    if options:
        raise ConversionError(f"{path}: {options[0]} does not apply to a store source: its values are copied "
                              "as stored, with an index field added")


def convert(source: str | os.PathLike, out: str | os.PathLike, *, kind: str = "auto",
            split: str | None = None, jpeg: bool = False,
            quality: int = _common.DEFAULT_JPEG_QUALITY, max_side: int | None = None,
            resize: tuple[int, int] | None = None, coarse: bool = False,
            max_pixels: int | None = None, workers: int | None = None, progress: bool = True,
            class_names: Sequence[str] | None = None, drop_unlabeled: bool = False,
            index: bool = False, skip_unreadable: bool = False, names: bool = False,
            columns: tuple[str, str] | None = None, targets: bool = False) -> Path:
    """Convert any supported source to a store at ``out``; ``kind="auto"`` detects the kind.
    ``class_names`` replaces the names the source has (IDX and .npz files have none);
    ``drop_unlabeled`` leaves out a .npz file's samples whose label is negative (refused otherwise);
    ``index`` adds an ``index`` field (each sample's id; see :func:`fastprune.convert.from_arrays`);
    ``skip_unreadable`` leaves out an image folder's unreadable files and ``names`` stores each
    image's path (see ``from_image_folder``); ``columns``: a Hugging Face source's (image, label)
    column names (default: image, label); ``targets``: a .npz file's or Hugging Face
    source's labels are targets, not classes (see :func:`fastprune.convert.from_arrays`). A
    .beton store (ffcv's, say) converts only with ``index``: copied with an ``index`` field added
    (:func:`fastprune.convert.from_store`)."""
    path = resolve_source(source)
    if kind == "auto":
        kind = detect_kind(path)
    if kind not in KINDS:
        raise ConversionError(f"unknown source kind {kind!r}; one of auto, {', '.join(KINDS)}")
    if kind == "store":
        given = {"--split": split is not None, "--jpeg": jpeg, "--max-side": max_side is not None,
                 "--resize": resize is not None, "--coarse": coarse, "--max-pixels": max_pixels is not None,
                 "--class-names": class_names is not None, "--drop-unlabeled": drop_unlabeled,
                 "--skip-unreadable": skip_unreadable, "--names": names, "--columns": columns is not None,
                 "--targets": targets}
        _check_store_copy(path, index, [option for option, on in given.items() if on])
        return from_store(path, out, workers=workers, progress=progress)
    _check_applicable(kind, split, max_side, resize, coarse, max_pixels)
    if skip_unreadable and kind not in ("imagefolder", "hf"):
        raise ConversionError(f"--skip-unreadable applies to image folders and hf sources, not {kind} "
                              "(one file holds every image)")
    if names and kind != "imagefolder":
        raise ConversionError(f"--names applies to image folders, not {kind} (one file holds every image)")
    if drop_unlabeled and kind not in ("npz", "hf"):
        raise ConversionError(f"--drop-unlabeled applies to npz and hf sources, not {kind} (its labels are "
                              "never negative)")
    if columns is not None and kind != "hf":
        raise ConversionError(f"--columns applies to hf sources, not {kind}")
    if targets and kind not in ("npz", "hf"):
        raise ConversionError(f"--targets applies to npz and hf sources, not {kind} (its labels are classes)")
    common = dict(jpeg=jpeg, quality=quality, workers=workers, progress=progress, class_names=class_names,
                  index=index)
    if kind == "idx":
        return from_idx(path, out, split=split or "train", **common)
    if kind in ("cifar10", "cifar100"):
        return from_cifar(path, out, kind=kind, split=split or "train", coarse=coarse, **common)
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    if kind == "imagefolder":
        return from_image_folder(path, out, max_side=max_side, resize=resize, skip_unreadable=skip_unreadable,
                                 names=names, **limit, **common)
    if kind == "hf":
        image_column, label_column = columns or ("image", "label")
        return from_hf_path(path, out, split=split, image_column=image_column, label_column=label_column,
                            max_side=max_side, resize=resize, drop_unlabeled=drop_unlabeled,
                            skip_unreadable=skip_unreadable, targets=targets, **limit, **common)
    return from_npz(path, out, drop_unlabeled=drop_unlabeled, targets=targets, **common)
