"""Exceptions raised by fastprune."""

import errno
import os
import sys


class FastpruneError(Exception):
    """Base class of fastprune's own errors."""


class StoreError(FastpruneError, ValueError):
    """A store file is missing, truncated, corrupted or not a store, or one of its samples cannot
    be decoded (by ``store[i]`` or the Loader alike); the message names the file. A ValueError,
    as a bad value read from a file is."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store file at the path given (``Store``, ``Loader``): ``except FileNotFoundError`` and
    ``except StoreError`` both catch it; ``filename`` is the path as given."""

    def __init__(self, path):
        super().__init__(f"{path}: no such store file")
        self.errno, self.strerror, self.filename = errno.ENOENT, "no such store file", path

    def __reduce__(self):  # picklable (an error raised in a worker process travels back)
        return type(self), (self.filename,)

    def __str__(self):  # the message, not OSError's "[Errno 2] ..." form
        return self.args[0]


class ConversionError(FastpruneError):
    """A source could not be converted; the message names the file or sample at fault."""


class SourceNotFoundError(ConversionError, FileNotFoundError):
    """A conversion's input file or folder does not exist; ``filename`` is its path."""

    def __init__(self, what: str, path, hint: str = ""):
        path = os.fspath(path)
        super().__init__(f"{what} not found: {path}{hint}")
        self.what, self.hint = what, hint
        self.errno, self.strerror, self.filename = errno.ENOENT, f"{what} not found", path

    def __reduce__(self):
        return type(self), (self.what, self.filename, self.hint)

    def __str__(self):
        return self.args[0]


class UnreadableSample(ConversionError):
    """One sample could not be read: a file that cannot be read or decoded, a dataset whose
    ``__getitem__`` raised. A conversion with ``skip_unreadable=True`` leaves such samples out."""

    why = ""  # the reason, without the sample's index (set where it is raised for the writer)


class OutputError(FastpruneError, OSError):
    """An output file (a log, a report, a plot) could not be written; the message names it, and
    the file that was there before, if any, is left as it was."""

    def __str__(self):  # the message, not OSError's "[Errno 28] ..." form
        return self.args[0]


class CheckpointError(FastpruneError):
    """A checkpoint is unsafe, damaged, or was written by a different run; the message says which."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint file at the path given: ``except FileNotFoundError`` (a loop that starts over
    without one) and ``except CheckpointError`` both catch it; ``filename`` is the path."""

    def __init__(self, path):
        super().__init__(f"{path}: no such checkpoint file")
        self.errno, self.strerror, self.filename = errno.ENOENT, "no such checkpoint file", os.fspath(path)

    def __reduce__(self):
        return type(self), (self.filename,)

    def __str__(self):  # the message, not OSError's "[Errno 2] ..." form
        return self.args[0]


class ConfigError(FastpruneError, ValueError):
    """An option does not fit the run: a model spec that cannot be built, stores whose labels or
    image sizes need another option. The message names the option that fixes it."""


class UsageError(ConfigError):
    """Command-line options that do not go together: the command prints its usage and this one
    line, and exits 2, as for an option argparse refuses on its own."""


class TrainingDiverged(FastpruneError, ValueError):
    """Training produced a loss that is NaN or infinite (a diverged model: the learning rate is
    usually too high); the message names the epoch, the step and the sample."""


class MissingExtraError(FastpruneError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class FastpruneWarning(UserWarning):
    """Base class of fastprune's own warnings (the command line prints them as one line)."""


class UsageWarning(FastpruneWarning, RuntimeWarning):
    """A call will likely not do what was meant (a strategy that never prunes, scores that go
    unused, a sampler's epoch run again); the message says what to change. A RuntimeWarning too,
    as these were before they had their own class."""


class LabelWarning(FastpruneWarning):
    """A converter wrote labels that training will refuse (not 0..K-1); the message says how to
    relabel them."""


class SourceWarning(FastpruneWarning):
    """A source's files or layout look unintended (files left out by their extension, an image
    folder whose class folders look like splits); the message says what to check."""


class SkippedSamplesWarning(FastpruneWarning):
    """A conversion with ``skip_unreadable`` left samples out; the message names them and why."""


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised in the function calling this one at the
    first frame outside fastprune (the user's line, however many constructors are in between:
    EL2N's pointed into static.py, so a re-run cell showed it only once)."""
    frame, level = sys._getframe(2), 2
    # contextlib's frames too: a function of ours under a context-manager decorator (run_recipe's
    # @process_state_kept()) is called through contextlib's wrapper; and torch's data loading, which
    # iterates a PrunedSampler for the user's `for batch in loader`
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_NOT_THE_USER):
        frame, level = frame.f_back, level + 1
    return level


_NOT_THE_USER = ("fastprune.", "contextlib", "torch.utils.data.")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's run over many), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def require(module: str, extra: str, purpose: str):
    """Import ``module`` (an optional dependency) or raise MissingExtraError, one line naming the
    extra to install: ``pip install "fastprune[plots]"``."""
    import importlib

    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing != top and not missing.startswith(top + "."):  # installed, but its own import fails:
            raise  # that error (a missing cv2, an ABI mismatch) says more than "install it"
        raise MissingExtraError(f"{purpose} needs {top}, which is not installed: "
                                f'pip install "fastprune[{extra}]"') from None
