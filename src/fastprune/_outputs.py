"""Checks on the files a command will write, made before any work: a long training run must not end
on "Is a directory" or "Read-only file system", and no output may land on one of the run's own
inputs (a training store overwritten by its checkpoint) or on another output.

``convert`` writes one file next to its temporary twin (so its folder must exist); ``train``,
``bench`` and ``scores`` create missing folders for their outputs, so for them only the nearest
existing ancestor must be a folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ._args import check_path
from .errors import ConfigError, OutputError


def check_output_file(out: str | os.PathLike, what: str, inputs: Iterable[str | os.PathLike] = (), *,
                      error: type[Exception] = ConfigError, makes_folders: bool = False,
                      example: str = "out.json") -> Path:
    """``out`` as a Path if a file can be written there without destroying anything; else ``error``
    naming ``what`` (the option, e.g. "--checkpoint"): ``out`` is a folder, its folder is missing
    (unless ``makes_folders``) or is a file, it exists as something other than a regular file (a
    FIFO, a device: the atomic rename would replace it), or it is, through any path or link, one
    of the ``inputs``. ``example``: a file name the message suggests inside a folder given."""
    out = check_path(out, what)
    if out.is_dir():
        raise error(f"{what} {out} is a directory; give a file name such as {out / example}")
    _check_folder(out, what, error, makes_folders)
    # Where the file will land once missing folders are made: "new/../train.beton" does not exist
    # now ("new" does not), but is the training store after the writer's mkdir.
    landing = Path(os.path.realpath(out))
    try:
        existing = landing.stat()
    except OSError:  # nothing there (or a dangling link, which the rename replaces harmlessly)
        return out
    if not stat.S_ISREG(existing.st_mode):
        raise error(f"{what} {out} exists and is not a regular file ({_file_kind(existing.st_mode)}); "
                    f"it is left alone: choose another file")
    for source in inputs:  # one stat each (exists() and samefile() took three: 6 s for 300k images)
        if _same_file(source, existing):
            raise error(f"{what} {out} is the input file {source}; the source is never overwritten: "
                        f"choose another file")
    return out


def _same_file(path: str | os.PathLike, target: os.stat_result) -> bool:
    """Whether ``path`` (through any link) is the file ``target`` is the status of."""
    try:
        found = os.stat(path)
    except (OSError, ValueError):  # missing, or a name the system refuses: not the output
        return False
    return (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino)


@contextlib.contextmanager
def written_atomically(path: str | os.PathLike, *, binary: bool = False, newline: str | None = None,
                       fsync: bool = False) -> Iterator:
    """A file object to write ``path``'s new content to: a temporary file beside it, which replaces
    ``path`` when the block ends without an error. After any failure (a full disk, Ctrl-C) the
    temporary file is removed and ``path`` keeps what it held: a complete log.json used to become
    2 KB of invalid JSON when the disk filled. An OSError becomes an OutputError naming ``path``.
    Missing folders are made; ``fsync``: on disk before the rename.

    A link is followed (its target is replaced, the link kept) and an existing file keeps its
    mode. A folder that takes no new file is an OutputError (check_output_file refuses it first):
    never a rewrite in place, which a failure would leave cut."""
    from .store._atomic import replaced_when_done

    shown, path = Path(path), Path(os.path.realpath(path))
    open_mode, options = ("wb", {}) if binary else ("w", {"newline": newline, "encoding": "utf-8"})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_when_done(path, open_mode=open_mode, fsync=fsync, **options) as file:
            yield file
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write {shown}: {exc.strerror or exc}") from None


def check_output_folder(out: str | os.PathLike, what: str, *, error: type[Exception] = ConfigError) -> Path:
    """``out`` as a Path if it is, or can be made, a folder (e.g. --tensorboard DIR)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise error(f"{what} {out} exists and is not a folder")
    _check_folder(out, what, error, makes_folders=True)
    return out


def check_distinct(outputs: Mapping[str, str | os.PathLike | None], *, error: type[Exception] = ConfigError) -> None:
    """Two options naming the same file would overwrite each other's output."""
    seen: dict[Path, str] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        key = Path(os.path.realpath(path))  # through links and "..", as the writes will go
        if key in seen:
            raise error(f"{seen[key]} and {what} both name {path}: each output needs its own file")
        seen[key] = what


def check_image_file(out: str | os.PathLike | None, what: str, *, error: type[Exception] = ConfigError) -> None:
    """An image a plot will be saved to must have a suffix matplotlib writes (.png, .pdf, .svg...),
    checked before the work whose picture it is."""
    if out is None:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    if Path(out).suffix.lower().lstrip(".") not in formats:
        raise error(f"{what} {out}: the name must end in an image format such as .png, .pdf or .svg "
                    f"(supported: {', '.join(sorted(formats))})")


def _check_folder(out: Path, what: str, error, makes_folders: bool) -> None:
    folder = out.parent
    if not makes_folders:
        if folder.exists() and not folder.is_dir():
            raise error(f"{what} {out}: {folder} is a file, not a folder")
        if not folder.is_dir():
            raise error(f"{what} folder {folder} does not exist ({what} {out})")
    else:
        folder = _nearest_existing(folder)
        if not folder.is_dir():
            raise error(f"{what} {out}: {folder} is a file, not a folder")
    # W_OK also says no on a read-only file system, for root too: found now, not after training.
    # The folder itself when it exists (--tensorboard DIR). A file is replaced by a new one written
    # beside it (beside a link's target: links are followed), so that folder must take new files
    # even where the file itself is writable (written in place, a full disk or a kill mid-write
    # left it cut: a bench result's earlier runs lost).
    where = out if out.is_dir() else _nearest_existing(Path(os.path.realpath(out)).parent)
    if not os.access(where, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(where) else "permission denied"
        beside = (f"; {out.name} is replaced by a new file written beside it, never rewritten in place"
                  if out.is_file() else "")
        raise error(f"{what} {out}: cannot write in {where} ({why}{beside})")


def _nearest_existing(folder: Path) -> Path:
    """``folder``, or its nearest ancestor that exists (the writer makes the rest)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "not a plain file")
