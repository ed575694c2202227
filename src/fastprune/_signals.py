"""Signals in a process that writes files or trains: SIGTERM turned into KeyboardInterrupt (so that
a temporary file is removed as for Ctrl-C), Ctrl-C and SIGTERM held back while a module is being
imported or while a block must finish, and delivered after it."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt (so the temporary file is removed, as
    for Ctrl-C) instead of killing the process outright. Only where Python can install handlers
    (the main thread) and only over the default action: a handler the caller set is kept."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        if not _sent_again_after_import(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills, as usual
            raise KeyboardInterrupt("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def ctrl_c_after_imports():
    """Within the block, Python's own Ctrl-C handler (``signal.default_int_handler``, where it is
    the one installed) raises KeyboardInterrupt as usual, except inside an import, where it waits
    for the import to end (see :func:`_sent_again_after_import`): the command line's modules and a
    user's --model module are imported while a Ctrl-C is likely, and one in 100 such Ctrl-Cs
    ended `fastprune train` with a RuntimeError's traceback."""
    if not _in_main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def interrupt(signum, frame):
        if not _sent_again_after_import(signum, frame):
            signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


#: How long a signal that arrived during an import waits before it is sent again.
IMPORT_RETRY_S = 0.01

# importlib's modules by either name: frozen ones are renamed when `importlib` itself is imported
_IMPORT_MACHINERY = frozenset({"_frozen_importlib", "_frozen_importlib_external",
                               "importlib._bootstrap", "importlib._bootstrap_external"})


def _sent_again_after_import(signum: int, frame) -> bool:
    """For a handler that raises KeyboardInterrupt: when ``frame`` runs inside an import, send the
    signal again in a few milliseconds (until it lands after the import) and return True.

    Raised inside an import, the exception could be lost (importlib's weakref callback prints and
    drops it), wrapped (a class body's __set_name__: a RuntimeError) or, where it passed through
    exec'd source (namedtuple, dataclass), make `python -m` exit by SIGINT after the command had
    reported it: 3 in 100 SIGTERMs that landed in `import tqdm` did."""
    if not _importing(frame):
        return False
    timer = threading.Timer(IMPORT_RETRY_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
    return True


def _importing(frame) -> bool:
    """Whether ``frame`` (a signal handler's) runs inside an import: importlib's frames stay on
    the stack while a module's code runs."""
    while frame is not None:
        if frame.f_globals.get("__name__") in _IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


def _in_main_thread() -> bool:
    """Where Python runs signal handlers, and the only thread that may install them."""
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_deferred(every: bool = False):
    """Hold SIGINT and SIGTERM back within the block; one that arrives is delivered (its handler
    runs) when the block ends. Main thread only, where Python runs signal handlers. ``every``:
    also every other signal with a Python handler (a user's SIGALRM timeout that raises), for a
    block no exception may cut short: one landing between a worker's fork and its registration
    in the pool left the worker running, and the interpreter's exit waiting for it.

    Two layers: this thread's signal mask, and Python-level handlers that only note a signal. The
    mask alone held nothing back once other threads existed (any thread may receive a process's
    signal, and Python then runs the handler in the main thread at its next instruction)."""
    if not _in_main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    caught: list[int] = []
    handlers = {}
    numbers = {signal.SIGINT, signal.SIGTERM}
    if every:
        numbers |= {number for number in signal.valid_signals() if _has_python_handler(number)}
    for number in sorted(numbers):
        handler = signal.getsignal(number)
        if callable(handler):  # a Python handler (SIG_DFL/SIG_IGN act in C: the mask holds those)
            handlers[number] = handler
            signal.signal(number, lambda signum, frame: caught.append(signum))
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, numbers)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        for number, handler in handlers.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(caught):  # once each, in order, as real signals: Python runs
            signal.raise_signal(number)       # every handler even when one raises (a direct call
            # to the SIGINT handler raised before a SIGTERM noted after it was replayed)


def _has_python_handler(number: int) -> bool:
    try:
        return callable(signal.getsignal(number))
    except (ValueError, OSError):  # a number Python cannot ask about (SIGKILL, real-time ones)
        return False


__all__ = ["sigterm_as_interrupt", "ctrl_c_after_imports", "signals_deferred"]
