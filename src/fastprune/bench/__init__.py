"""The end-to-end benchmark shipped with the package (``fastprune bench``), one module per stage:
``plan`` (the matrix of runs, ``--continue``), ``run`` (data, settings, one timed run), ``report``
(statistics, markdown), ``plots``, ``cli``; ``comparison``, the same comparison from Python
(:func:`compare`); and ``machine``, the description every result file carries. The scripts under
benchmarks/ and studies/ call into here."""

from __future__ import annotations

import importlib

_LAZY = {"compare": "comparison", "Comparison": "comparison"}  # torch is imported only when used


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fastprune.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


def __dir__() -> list[str]:
    """The public names (and submodules already imported), not this file's own imports."""
    return sorted((set(globals()) - {"annotations", "importlib"}) | set(_LAZY))


__all__ = ["compare", "Comparison"]
