"""Files a dataset holds open, which the converter's forked workers would share: their reads
interleave (one process's seek, another's read), storing wrong pixels under valid checksums.
:func:`workers_for_open_files` converts such a dataset in one process, saying so."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

from ..errors import UsageWarning, user_stacklevel


def workers_for_open_files(dataset: Any, workers: int | None) -> int | None:
    """``workers``, or 1 where the dataset holds an open file and no count was given: the writer's
    workers are forked, and forked processes share an open file's position, so their seek/read
    pairs interleave (2 workers stored 18 of 2000 samples with another's pixels, under valid
    checksums) and a zip's reads fail their CRCs. Said in one warning either way."""
    held = open_files(dataset)
    if not held or workers == 1:
        return workers
    advice = ("open it on first use in each process (in __getitem__) to convert on every core"
              if workers is None else "unless its reads do not move a shared position, pass workers=1")
    warnings.warn(f"{held[0]} is an open file, which forked workers share (their reads interleave: wrong samples); "
                  f"{'converting in one process' if workers is None else f'converting with {workers} workers'}; "
                  f"{advice}", UsageWarning, stacklevel=user_stacklevel())
    return 1 if workers is None else workers


def open_files(dataset: Any, depth: int = 3) -> list[str]:
    """Attributes of ``dataset``, and of the datasets it wraps (a Subset's, a ConcatDataset's), that
    hold a file open for reading that forked processes would share: a Python file on an OS file, a
    zip or tar archive over one, an h5py file or an LMDB environment. In-memory buffers (BytesIO)
    and files open only for writing (a log, sys.stdout) are not shared reads."""
    found, seen = [], set()

    def visit(obj, name: str, level: int) -> None:
        if id(obj) in seen or level > depth:
            return
        seen.add(id(obj))
        for key, value in _attributes(obj):
            items = _contents(value)
            if any(_shared_read_file(item) for item in items):
                found.append(f"{name}.{key}")
                continue
            for item in items:
                if _is_dataset_like(item):
                    visit(item, f"{name}.{key}", level + 1)

    visit(dataset, f"dataset {type(dataset).__name__}", 0)
    return found


def _attributes(obj) -> list[tuple[str, Any]]:
    """``obj``'s instance attributes (``__dict__`` and ``__slots__``), read past any ``__getattr__``
    of the user's (one raising KeyError stopped a conversion)."""
    try:
        held = dict(object.__getattribute__(obj, "__dict__"))
    except (AttributeError, TypeError):
        held = {}
    for kind in type(obj).__mro__:
        slots = vars(kind).get("__slots__", ())
        for slot in [slots] if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__"):
                with contextlib.suppress(AttributeError):  # a slot not set
                    held.setdefault(slot, object.__getattribute__(obj, slot))
    return list(held.items())


def _contents(value, limit: int = 1000) -> list:
    """``value``, or the first ``limit`` items of a list, tuple or dict of them (one file per shard)."""
    if isinstance(value, dict):
        return list(value.values())[:limit]
    if isinstance(value, (list, tuple)):
        return list(value[:limit])
    return [value]


def _is_dataset_like(value) -> bool:
    kind = type(value)  # not hasattr(value, ...): a __getattr__ of the user's may raise anything
    return hasattr(kind, "__getitem__") and hasattr(kind, "__len__") and not isinstance(value, (str, bytes))


def _shared_read_file(value) -> bool:
    import io
    import tarfile
    import zipfile

    if isinstance(value, zipfile.ZipFile):
        return _shared_read_file(value.fp)
    if isinstance(value, tarfile.TarFile):
        return _shared_read_file(value.fileobj)
    if isinstance(value, io.IOBase):
        try:  # an OS file (BytesIO has none: a fork copies it whole) open for reading
            return not value.closed and value.readable() and value.fileno() >= 0
        except (OSError, ValueError):  # io.UnsupportedOperation is both
            return False
    kind = type(value)
    return (kind.__module__.split(".")[0], kind.__name__) in (("h5py", "File"), ("lmdb", "Environment"))
