"""How a file lands atomically (a store: see writer.py's docstring; logs and reports:
_outputs.written_atomically): the temporary file's name, its mode, the removal of leftovers of
killed writes (signals: ../_signals.py)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
from pathlib import Path


def temp_name(path: Path) -> str:
    """A name for a temporary file beside ``path`` (see :func:`temp_prefix`), chosen before the
    file exists: the caller records it, then :func:`create_exclusive` makes the file, so a Ctrl-C
    at any point finds the name to remove. (Blocking signals around mkstemp instead held nothing
    back once other threads existed: Python runs handlers in the main thread whichever thread
    received the signal.)"""
    import secrets

    return str(path.parent / f"{temp_prefix(path, os.getpid())}{secrets.token_hex(6)}.tmp")


def create_exclusive(name: str) -> int:
    """Create ``name`` (which must not exist), mode 0600 until renamed into place; its fd."""
    return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)


def default_file_mode() -> int:
    """0666 minus the process umask: the mode open() would have given a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_prefix(path: Path, pid: int) -> str:
    return f".{path.name}.{_host()}.{pid}."


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def remove_stale_temp_files(path: Path) -> None:
    """Remove temporary files of earlier writes to ``path`` by processes of this host that are
    gone (killed before they could clean up)."""
    pattern = re.compile(re.escape(f".{path.name}.{_host()}.") + r"(\d+)\.[A-Za-z0-9_]+\.tmp")
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match and not _process_alive(int(match.group(1))):
            remove_quietly(str(path.parent / entry))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or an impossible pid): leave its file alone
    return True


@contextlib.contextmanager
def replaced_when_done(path: Path, *, open_mode: str = "wb", fsync: bool = False, in_place_if_denied: bool = False,
                       **options):
    """A file object on a new temporary file beside ``path``, which replaces ``path`` when the block
    ends without an error; after any error (Ctrl-C included) the temporary file is removed and
    ``path`` keeps what it held. Leftovers of killed writes to ``path`` are removed first. The new
    file keeps an existing file's permissions (else what open() gives a new file). ``fsync``: on
    disk before the rename; ``options``: for open (encoding, newline).
    ``in_place_if_denied``: where the folder takes no new file but ``path`` is a writable file,
    write it in place, without the protection (a log), instead of failing (a store)."""
    remove_stale_temp_files(path)
    mode = existing_mode(path)
    temp = temp_name(path)  # recorded before the file exists: an interrupt still finds it
    try:
        try:
            fd = create_exclusive(temp)
        except PermissionError:
            temp = None
            if not (in_place_if_denied and mode is not None and os.access(path, os.W_OK)):
                raise
            with open(path, open_mode, **options) as file:
                yield file
            return
        with os.fdopen(fd, open_mode, **options) as file:
            yield file
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.chmod(temp, default_file_mode() if mode is None else mode)  # 0600 was for the temp only
        os.replace(temp, path)
    except BaseException:
        if temp is not None:
            remove_quietly(temp)
        raise


def existing_mode(path: Path) -> int | None:
    """An existing regular file's permission bits (a rewrite keeps them), else None."""
    try:
        info = path.stat()
    except OSError:
        return None
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else None


def remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass



__all__ = ["replaced_when_done", "existing_mode", "default_file_mode", "temp_prefix", "remove_stale_temp_files", "remove_quietly"]
