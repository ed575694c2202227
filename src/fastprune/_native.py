"""Access to the compiled core (``fastprune._core``), with a clear message when it is missing."""

from __future__ import annotations

try:
    from . import _core as core  # noqa: F401  (re-exported)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "fastprune's native core (fastprune._core) could not be imported: "
        f"{exc}. The package must be installed with `pip install .` (or `pip install -e .`), "
        "which compiles csrc/ with CMake; importing the source tree directly does not work."
    ) from exc

__all__ = ["core"]
