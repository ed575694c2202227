"""fastprune: dynamic data pruning with a packed, memory-mapped data path.

The public names below are imported lazily, so ``import fastprune`` stays cheap (no torch or
numba import) until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._native import core as _core  # noqa: F401  (fails early, with a clear message, if the build is missing)
from .errors import CheckpointError, ConfigError, ConversionError, FastpruneError, StoreError, TrainingDiverged

__version__ = "0.1.0"


def build_info() -> dict:
    """How the native core was built: ``{"version", "jpeg_decoder", "simd", "max_image_pixels"}``.

    ``jpeg_decoder`` is ``"libjpeg-turbo X.Y.Z"`` when the build found the system library (it
    decodes only the window a resized crop keeps) or ``"stb_image ... (vendored)"``, the slower
    fallback (see the README's install notes). ``simd`` is what the resize and selection kernels
    run on this CPU: ``"sse2+avx2"``, ``"sse2"`` or ``"portable"`` (scalar C++: non-x86 CPUs, or
    a build with ``-DFASTPRUNE_SIMD=OFF``); all give the same bytes."""
    return {"version": __version__, "jpeg_decoder": _core.JPEG_BACKEND, "simd": _core.SIMD,
            "max_image_pixels": int(_core.DEFAULT_MAX_PIXELS)}

# public name -> module that defines it
_LAZY = {
    "write_dataset": "fastprune.store.writer",
    "Store": "fastprune.store.reader",
    "Loader": "fastprune.loader",
    "Batch": "fastprune.loader",
    "ScoreTable": "fastprune.prune",
    "Selection": "fastprune.prune",
    "Full": "fastprune.prune",
    "UniformRandom": "fastprune.prune",
    "EpsilonGreedy": "fastprune.prune",
    "UCB": "fastprune.prune",
    "InfoBatch": "fastprune.prune",
    "EL2N": "fastprune.prune",
    "Forgetting": "fastprune.prune",
    "PrunedSampler": "fastprune.prune",
    "WithIndices": "fastprune.prune",
}


# subpackages reachable as attributes (``fastprune.convert.from_idx(...)``) without an explicit import
_SUBMODULES = ("convert", "store", "loader", "prune", "train", "models", "cli", "bench", "integrations")


if TYPE_CHECKING:  # what type checkers and IDEs see: the real classes and modules, not __getattr__'s Any
    # "X as X": an explicit re-export, which mypy --strict and pyright require of a py.typed package
    from . import bench as bench, cli as cli, convert as convert, integrations as integrations  # noqa: F401
    from . import loader as loader  # noqa: F401
    from . import models as models, prune as prune, store as store, train as train  # noqa: F401
    from .loader import Batch as Batch, Loader as Loader  # noqa: F401
    from .prune import EL2N as EL2N, UCB as UCB, EpsilonGreedy as EpsilonGreedy, Forgetting as Forgetting  # noqa: F401
    from .prune import Full as Full, InfoBatch as InfoBatch, PrunedSampler as PrunedSampler  # noqa: F401
    from .prune import ScoreTable as ScoreTable, Selection as Selection, UniformRandom as UniformRandom  # noqa: F401
    from .prune import WithIndices as WithIndices  # noqa: F401
    from .store.reader import Store as Store  # noqa: F401
    from .store.writer import write_dataset as write_dataset  # noqa: F401
else:  # hidden from type checkers, for which a module __getattr__ makes every name, a misspelt one too, Any
    def __getattr__(name: str) -> Any:
        if name in _SUBMODULES:
            value = importlib.import_module(f"fastprune.{name}")
            globals()[name] = value
            return value
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'fastprune' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__():
    # each public name once (a lazy name is also in globals() once used), the subpackages, the
    # module dunders; not this file's own imports (annotations, importlib, typing names) or private helpers
    names = {name for name in globals() if name.startswith("__") or not name.startswith("_")}
    return sorted((names - {"annotations", "importlib", "TYPE_CHECKING", "Any"}) | set(__all__) | set(_SUBMODULES))


# a literal list, which type checkers read (the test suite checks it against _LAZY)
__all__ = ["CheckpointError", "ConfigError", "ConversionError", "FastpruneError", "StoreError", "TrainingDiverged",
           "__version__", "build_info", "write_dataset", "Store", "Loader", "Batch", "ScoreTable", "Selection",
           "Full", "UniformRandom", "EpsilonGreedy", "UCB", "InfoBatch", "EL2N", "Forgetting", "PrunedSampler",
           "WithIndices"]
