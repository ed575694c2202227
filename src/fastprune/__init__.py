"""fastprune: dynamic data pruning with a packed, memory-mapped data path."""

from ._native import core as _core  # fails early, with a clear message, if the build is missing
from .errors import ConversionError, FastpruneError, StoreError

__version__ = "0.1.0"

__all__ = ["ConversionError", "FastpruneError", "StoreError", "__version__"]
