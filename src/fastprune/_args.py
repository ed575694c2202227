"""Argument checks shared by the loader and the strategies, so that a bad seed or epoch fails
where it is given, with a message naming it, instead of deep inside a native call.

The native core takes seeds as unsigned 64-bit integers and stores epochs in int32 columns of
the score table: these are the ranges checked here.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np

MAX_SEED = 2**64 - 1
MAX_EPOCH = 2**31 - 1


def check_path(value, name: str) -> Path:
    """``value`` (a str or os.PathLike) as a Path; else a TypeError naming ``name`` (pathlib's own
    'expected str, bytes or os.PathLike object, not list' names nothing)."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    shown = repr(value)
    shown = f" {shown}" if len(shown) <= 40 and "\n" not in shown else ""
    raise TypeError(f"{name} must be a file path (str or os.PathLike), got {type(value).__name__}{shown}")


def check_int_range(value, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; a TypeError/ValueError naming ``name`` otherwise.
    Accepts ints and numpy integers, not bools, floats or strings."""
    as_int = _integer(value, name, "an integer")
    if not low <= as_int <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {as_int}")
    return as_int


def check_positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (sizes and counts: no upper bound); a TypeError/ValueError naming
    ``name`` for 0, negatives, 1.5, "8", True, None."""
    as_int = _integer(value, name, "an integer >= 1")
    if as_int < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return as_int


def _integer(value, name: str, expected: str) -> int:
    """``value.__index__()`` (ints, numpy integers; not bools, floats or strings), or a TypeError
    saying ``name`` must be ``expected``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {expected}, got the bool {value!r}")
    try:
        return value.__index__()
    except (AttributeError, TypeError):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r:.40}") from None


def check_real(value, name: str) -> float:
    """``value`` as a float (NaN and infinities included; range checks are the caller's): ints,
    floats, numpy scalars, and arrays or tensors of one element (an element of
    ``torch.tensor([...])``, a (3, 1, 1) statistics tensor's rows); a TypeError naming ``name`` for
    strings such as "0.5", None, bools, and arrays of several values."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "item") and int(np.prod(tuple(shape))) == 1:
        item = value.item()  # a Python scalar: bool, complex and str elements are refused below
        if isinstance(item, numbers.Real) and not isinstance(item, bool):
            return float(item)
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r:.40}")


def check_fraction(value, name: str) -> float:
    """``value`` as a float in (0, 1] (a kept fraction); NaN is refused."""
    value = check_real(value, name)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return value


def check_bool(value, name: str) -> bool:
    """``value`` as a bool: True or False (numpy's too), not strings ("False" is truthy) or numbers."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r:.40}")
    return bool(value)


def check_seed(seed, name: str = "seed") -> int:
    return check_int_range(seed, name, 0, MAX_SEED)


def check_epoch(epoch, name: str = "epoch") -> int:
    return check_int_range(epoch, name, 0, MAX_EPOCH)
