"""How a store write lands atomically (see writer.py's docstring): the temporary file's name,
its mode, the removal of leftovers of killed writes, and SIGTERM turned into KeyboardInterrupt so
that the temporary file is removed as for Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from pathlib import Path


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt (so the temporary file is removed, as
    for Ctrl-C) instead of killing the process outright. Only where Python can install handlers
    (the main thread) and only over the default action: a handler the caller set is kept."""
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills, as usual
        raise KeyboardInterrupt("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)



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


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM back within the block; one that arrives is delivered (its handler
    runs) when the block ends. Main thread only, where Python runs signal handlers.

    Two layers: this thread's signal mask, and Python-level handlers that only note a signal. The
    mask alone held nothing back once other threads existed (any thread may receive a process's
    signal, and Python then runs the handler in the main thread at its next instruction)."""
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    caught: list[int] = []
    handlers = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if callable(handler):  # a Python handler (SIG_DFL/SIG_IGN act in C: the mask holds those)
            handlers[number] = handler
            signal.signal(number, lambda signum, frame: caught.append(signum))
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        for number, handler in handlers.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(caught):  # once each, in order, as real signals: Python runs
            signal.raise_signal(number)       # every handler even when one raises (a direct call
            # to the SIGINT handler raised before a SIGTERM noted after it was replayed)


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


def remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass



__all__ = ["sigterm_as_interrupt", "default_file_mode", "temp_prefix", "remove_stale_temp_files", "remove_quietly"]
