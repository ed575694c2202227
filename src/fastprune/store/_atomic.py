"""How a file lands atomically (a store: see writer.py's docstring; logs and reports:
_outputs.written_atomically): the temporary file's name, its mode, the removal of leftovers of
killed writes (signals: ../_signals.py).

A writer holds a lock (flock) on its temporary file until the file is renamed into place, and the
kernel drops it when the writer dies, however it dies. On a local file system every writer runs on
this kernel (containers too), so a temporary file whose lock can be taken is a leftover. The host
and process id in its name could not tell a writer in another container (another host name, its
PID 1 alive for ever) or a reused PID from a live one, and such leftovers, a store's size each,
stayed. On a network file system a lock may be this host's alone (NFS mounted nolock, FUSE), so
there only files of this host's processes that are gone are removed, as before.

A writer creates its file under a pending name (``.new`` after the temporary name), locks it, then
renames it to the temporary name: a file under that name is locked from its first moment, and a
pending one is left alone until it is a minute old (one killed between the two steps)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
import time
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
    """Remove temporary files of earlier writes to ``path`` that no process writes any more
    (killed before they could clean up)."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(.*)\.(\d+)\.[A-Za-z0-9_]+\.tmp(\.new)?")
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return
    local = None
    for entry in entries:
        match = pattern.fullmatch(entry)
        name = str(path.parent / entry)
        if not match or (match.group(3) and not _older_than(name, _PENDING_SECONDS)):
            continue
        local = _local_file_system(path.parent) if local is None else local
        if _abandoned(name, match.group(1), int(match.group(2)), local):
            remove_quietly(name)


# A pending file is renamed within microseconds of its creation; one older was left by a writer
# killed in between (or by a clock jump, which only delays its removal)
_PENDING_SECONDS = 60


def _older_than(name: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(name).st_mtime > seconds
    except OSError:
        return False


def _abandoned(name: str, host: str, pid: int, local: bool) -> bool:
    """Whether no live process writes the temporary file ``name`` (written by ``pid`` on ``host``,
    in a folder on a ``local`` file system or not)."""
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        free = True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False  # its writer runs
        free = False  # a file system without locks
    finally:
        os.close(fd)
    return (free and local) or (host == _host() and not _process_alive(pid))


# File systems of one machine's disks and memory, whose locks every writer (on this kernel) sees
_LOCAL_TYPES = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "jfs", "reiserfs",
                "ramfs", "bcachefs", "vfat", "exfat", "ntfs", "ntfs3", "hfsplus"}


def _local_file_system(folder: Path) -> bool:
    """Whether ``folder`` lies on a local file system (/proc/self/mountinfo; unknown: no)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            mounts = f.read().splitlines()
        target = os.path.realpath(folder)
    except OSError:
        return False
    best, kind = "", None
    for line in mounts:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])  # "\040" is a space
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the innermost mount, the latest over the same point
            best, kind = point, rest.split()[0]
    return kind in _LOCAL_TYPES


def _hold_lock(fd: int) -> int | None:
    """A lock on the new temporary file ``fd`` for as long as the returned descriptor is open
    (a duplicate: closing the file object after writing must not drop it before the rename)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # no locks on this file system: the name's host and pid serve instead
        return None
    return os.dup(fd)


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
def replaced_when_done(path: Path, *, open_mode: str = "wb", fsync: bool = False, **options):
    """A file object on a new temporary file beside ``path``, which replaces ``path`` when the block
    ends without an error; after any error (Ctrl-C included) the temporary file is removed and
    ``path`` keeps what it held. Leftovers of killed writes to ``path`` are removed first. The new
    file keeps an existing file's permissions (else what open() gives a new file). ``fsync``: on
    disk before the rename, and the rename on disk after it (what a power loss leaves is then the
    old file or the new one, not an empty one under the new name); ``options``: for open
    (encoding, newline)."""
    remove_stale_temp_files(path)
    mode = existing_mode(path)
    temp = temp_name(path)  # recorded before the file exists: an interrupt still finds it
    pending, lock = temp + ".new", None
    try:
        fd = create_exclusive(pending)
        try:
            lock = _hold_lock(fd)
            os.rename(pending, temp)  # locked before any other writer's clean-up can see it as a leftover
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, open_mode, **options) as file:
            yield file
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.chmod(temp, default_file_mode() if mode is None else mode)  # 0600 was for the temp only
        os.replace(temp, path)
        if fsync:
            _sync_folder(path.parent)
    except BaseException:
        remove_quietly(pending)
        remove_quietly(temp)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _sync_folder(folder: Path) -> None:
    """The folder's entries (a rename) on disk; a file system that cannot sync a folder is left be."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL: folders cannot be synced here
        pass
    finally:
        os.close(fd)


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
