"""Per-sample inputs (numpy arrays, torch tensors, lists) checked and coerced to the kernels' arrays."""

from __future__ import annotations

import numpy as np


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, maybe on the GPU or requiring grad
        value = value.detach()
        if value.dtype.is_floating_point and value.dtype.itemsize < 4:
            value = value.float()  # numpy has no bfloat16
        return value.cpu().numpy()
    return np.asarray(value)


def _one_dim(array, name: str, length: int | None):
    """``array`` (a numpy array, or a torch tensor: only its metadata is read) if 1-D and, when
    ``length`` is given, of that length; else a ValueError naming ``name``."""
    if array.ndim != 1:
        hint = ("; use reduction='none' and reduce any other dimensions per sample, e.g. "
                "loss.flatten(1).mean(1)") if name == "losses" else ""
        if name == "losses" and array.ndim == 2 and array.shape[0] == array.shape[1] > 1:
            # flatten(1).mean(1) would run, averaging each prediction's error against every target
            hint += ("; a [B, B] loss is usually a [B, 1] prediction broadcast against [B] targets: "
                     "squeeze(1) the prediction")
        raise ValueError(f"{name} must be 1-D (one value per sample{hint}), got shape {tuple(array.shape)}")
    if length is not None and len(array) != length:
        hint = ": one loss per sample, so compute it with reduction='none'" if name == "losses" else ""
        raise ValueError(f"{name} has {len(array)} entries but indices has {length}{hint}")
    return array


def _kind(dtype) -> str:
    """numpy's dtype.kind of a numpy or torch dtype ('b', 'i', 'u', 'f', 'c')."""
    if isinstance(dtype, np.dtype):
        return dtype.kind
    import torch

    if dtype == torch.bool:
        return "b"
    if dtype.is_complex:
        return "c"
    return "f" if dtype.is_floating_point else "i" if dtype.is_signed else "u"


def _check_dtype(array, name: str) -> None:
    """The dtype rule of ``name`` (indices, losses or correct), read off a numpy array or a tensor."""
    kind, dtype = _kind(array.dtype), str(array.dtype).removeprefix("torch.")
    if name == "indices":
        if kind not in "iu" and len(array):  # [] is float64 to numpy, and a valid no-op
            raise ValueError(f"indices must be integers, got dtype {dtype}")
    elif name == "losses":
        if kind not in "fiu":
            raise ValueError(f"losses must be numbers, got dtype {dtype}")
    elif kind not in "biu":
        raise ValueError(f"correct must be booleans or 0/1 integers, got dtype {dtype}")


def staged(tensor, name: str, length: int | None = None):
    """A copy of torch tensor ``tensor`` on its own device, for a deferred update: its shape and
    dtype checked as :func:`as_indices`, :func:`as_losses`, :func:`as_correct` check them, from
    metadata only (no device sync). Its values (ranges, NaN, 0/1) are checked when applied."""
    _check_dtype(_one_dim(tensor, name, length), name)
    return tensor.detach().clone()


def first_past_int64(array: np.ndarray) -> int | None:
    """The position of the first id of ``array`` that int64 cannot hold (a cast would wrap it to a
    negative id), or None."""
    if array.dtype != np.uint64 or not array.size or array.max() <= np.iinfo(np.int64).max:
        return None
    return int(np.argmax(array > np.iinfo(np.int64).max))


def as_indices(indices) -> np.ndarray:
    array = _one_dim(to_numpy(indices), "indices", None)
    _check_dtype(array, "indices")
    j = first_past_int64(array)
    if j is not None:
        raise IndexError(f"indices[{j}] = {int(array[j])} is out of range (past int64)")
    return np.ascontiguousarray(array, dtype=np.int64)


def in_range(indices: np.ndarray, num_samples: int) -> np.ndarray:
    """``indices`` (from :func:`as_indices`), or an IndexError naming the first one outside
    [0, num_samples), worded as ``update()`` words it."""
    outside = (indices < 0) | (indices >= num_samples)
    if outside.any():
        j = int(np.flatnonzero(outside)[0])
        raise IndexError(f"indices[{j}] = {int(indices[j])} is out of range for a table of {num_samples} samples")
    return indices


def as_losses(losses, length: int) -> np.ndarray:
    array = _one_dim(to_numpy(losses), "losses", length)
    _check_dtype(array, "losses")
    with np.errstate(over="ignore"):  # a float64 past float32's range is inf: the range check names it
        return np.ascontiguousarray(array, dtype=np.float32)


def as_correct(correct, length: int) -> np.ndarray | None:
    if correct is None:
        return None
    array = _one_dim(to_numpy(correct), "correct", length)
    _check_dtype(array, "correct")
    if array.dtype.kind != "b" and array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError("correct must contain only 0/1 (or booleans)")
    return np.ascontiguousarray(array, dtype=np.int8)
