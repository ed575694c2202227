"""Bridges to other frameworks' loaders (imported on demand, so their packages stay optional):
``fastprune.integrations.ffcv.PrunedOrder`` drives ffcv's own Loader with fastprune's strategies."""

import importlib
from typing import Any

_BRIDGES = ("ffcv",)


def __getattr__(name: str) -> Any:
    """``fastprune.integrations.ffcv`` without an import of its own, as the README writes it."""
    if name not in _BRIDGES:
        raise AttributeError(f"module 'fastprune.integrations' has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
