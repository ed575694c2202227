"""All-gathering score updates across a torch.distributed job, so every rank holds the same table.

Each rank calls ``update`` with its own shard's (indices, losses, correct); the ranks' updates
are concatenated in rank order (the same order on every rank), so the tables — and hence the
deterministic selections — stay identical everywhere.
"""

from __future__ import annotations

import numpy as np

from typing import NamedTuple

from .._args import check_int_range, check_positive_int
from ..errors import ConfigError
from ._inputs import as_correct, as_indices, as_losses


def resolve_ranks(distributed="auto") -> tuple[int, int]:
    """(rank, world_size) for a loader or sampler.

    ``"auto"`` (the default): the running torch.distributed group's, so that under DDP,
    Lightning or Accelerate every rank trains its own shard without being told; (0, 1) outside a
    group. ``False``: (0, 1), every rank sees everything (the explicit opt-out). ``True``: the
    group's, which must exist. ``(rank, world_size)``: as given.
    """
    if distributed is False or distributed is None:
        return 0, 1
    if distributed is True or (isinstance(distributed, str) and distributed == "auto"):
        dist = _active_group()
        if dist is not None:
            return dist.get_rank(), dist.get_world_size()
        if distributed is True and not _group_initialized():
            raise RuntimeError("distributed=True needs an initialised torch.distributed process group")
        return 0, 1
    try:
        rank, world = distributed
    except (TypeError, ValueError):
        raise ValueError(f"distributed must be 'auto', True, False or (rank, world_size), got {distributed!r}") from None
    return checked_ranks(rank, world, "distributed=(rank, world_size)", distributed)


def checked_ranks(rank, world, spelled: str, given) -> tuple[int, int]:
    """(rank, world_size) as ints when both are integers with 0 <= rank < world_size; else a
    ValueError saying what ``spelled`` needs and what was ``given``. Integers, not int() of them:
    (0.9, 2) ran as rank 0 and (1, 2.99) with world size 2."""
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in (rank, world)):
        raise ValueError(f"{spelled} needs integers, got {given!r}")
    if world <= 0 or not 0 <= rank < world:
        raise ValueError(f"{spelled} needs 0 <= rank < world_size, got {given!r}")
    return int(rank), int(world)


def sampler_ranks(distributed="auto", num_replicas=None, rank=None) -> tuple[int, int]:
    """(rank, world_size) from torch DistributedSampler's ``num_replicas=``/``rank=`` (what
    Lightning and Accelerate pass), else from ``distributed`` (:func:`resolve_ranks`). Under a
    running torch.distributed group an omitted one is the group's and a given one must match it;
    without a group both must be given."""
    if num_replicas is None and rank is None:
        return resolve_ranks(distributed)
    if not (isinstance(distributed, str) and distributed == "auto"):
        raise ValueError(f"pass distributed= or num_replicas=/rank=, not both (got distributed={distributed!r})")
    if num_replicas is not None:
        num_replicas = check_positive_int(num_replicas, "num_replicas")
    if rank is not None:
        rank = check_int_range(rank, "rank", 0, 2**31 - 1)
    if _group_initialized():
        import torch.distributed as dist

        group = {"num_replicas": dist.get_world_size(), "rank": dist.get_rank()}
        for name, given in (("num_replicas", num_replicas), ("rank", rank)):
            if given is not None and given != group[name]:
                raise ValueError(f"{name}={given} but the running torch.distributed group has {name} "
                                 f"{group[name]}; omit {name}= to use the group's")
        num_replicas, rank = group["num_replicas"], group["rank"]
    elif num_replicas is None or rank is None:
        missing = "num_replicas" if num_replicas is None else "rank"
        raise ValueError(f"{missing}= is needed: no torch.distributed group is running to take it from")
    if rank >= num_replicas:
        raise ValueError(f"rank must be in [0, num_replicas) = [0, {num_replicas}), got {rank}")
    return rank, num_replicas


def alone_when_built(distributed, world_size: int) -> bool:
    """Whether a loader or sampler took "auto" and found no group (so runs unsharded): see
    :func:`check_still_alone`."""
    return isinstance(distributed, str) and distributed == "auto" and world_size == 1


def check_still_alone(who: str) -> None:
    """At the start of a pass of a loader or sampler that found no torch.distributed group when it
    was built: a group running now means it was built before ``init_process_group``. Each rank
    would then train on the whole selection while the strategy gathers every rank's losses (each
    sample counted once per rank): a RuntimeError instead."""
    dist = _active_group()
    if dist is not None:
        raise RuntimeError(f"{who} was built before torch.distributed.init_process_group, so it does not "
                           f"shard, but a group of {dist.get_world_size()} ranks runs now: every rank would "
                           f"train on the whole selection; build the {who} after init_process_group (or "
                           "pass distributed=False to it if every rank should see everything)")


def _group_initialized() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return False
    return dist.is_available() and dist.is_initialized()


def shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's part of an epoch order that every rank computed identically: disjoint, equal
    shards (positions rank, rank + world_size, ...); the remainder past a multiple of world_size
    is skipped, so that every rank takes the same number of steps."""
    per_rank = len(order) // world_size
    return order[: per_rank * world_size][rank::world_size]


def _active_group():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist


def group_world_size() -> int:
    """The running torch.distributed group's size; 1 without a group (or a group of one)."""
    dist = _active_group()
    return 1 if dist is None else dist.get_world_size()


def _collective_device(dist, losses=None):
    """Where this rank's collectives run: the CPU unless the group is NCCL only; then the GPU the
    group was bound to (``init_process_group(device_id=)``), else the one ``losses`` lie on, else
    the current one. PyTorch's own DDP tutorial moves each rank's model to ``cuda:rank`` without
    ``set_device``: the current device is then cuda:0 on every rank, and NCCL refuses (or hangs
    on) two ranks sharing a GPU."""
    import torch

    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    try:  # a private attribute (torch 2.3+): without it, the losses' device decides
        bound = dist.distributed_c10d._get_default_group().bound_device_id
    except AttributeError:
        bound = None
    if bound is not None:
        return bound
    device = getattr(losses, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        return device
    return torch.device("cuda", torch.cuda.current_device())


def all_gather_ints(values: list[int], device) -> list[list[int]]:
    """Every rank's ``values`` (the same count on each), in rank order, from the running group, on
    ``device`` (:func:`_collective_device`'s choice)."""
    import torch

    dist = _active_group()
    if dist is None:
        return [list(values)]
    mine = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return [[int(v) for v in tensor.tolist()] for tensor in gathered]


class Agreement(NamedTuple):
    """What the ranks' update() calls must share; all-gathered with each call's size, so checking
    costs no collective of its own. Without it a rank calling update() once more than another
    paired its calls with the next epoch's (tables out of step, then a hang), and ranks seeded
    apart trained samples twice or never, silently (distributed audit)."""

    epoch: int = 0  # the strategy's current epoch
    call: int = 0  # this call's number within it (1-based)
    settings: int = 0  # a digest of the strategy's config()
    order: int = 0  # a digest of how the consumer (Loader, PrunedSampler) orders the epoch; 0: none noted

    @staticmethod
    def check(ranks: "list[Agreement]") -> None:
        first = ranks[0]
        if any((a.epoch, a.call) != (first.epoch, first.call) for a in ranks):
            where = ", ".join(f"rank {r} at call {a.call} of epoch {a.epoch}" for r, a in enumerate(ranks))
            raise ConfigError(f"update(): the ranks are out of step ({where}): every rank must call update() "
                              "once per step, as often as the others in each epoch (equal shards give every "
                              "rank the same number of batches)")
        if any(a.settings != first.settings for a in ranks):
            raise ConfigError("update(): the ranks' strategies were built with different settings (keep, seed, "
                              "epochs, ...): build the same strategy on every rank, with one seed for all")
        if any(a.order != first.order for a in ranks):
            raise ConfigError("update(): the ranks order the epoch differently (their Loaders' or PrunedSamplers' "
                              "seeds differ): give every rank the same seed, so that each takes its own shard of "
                              "one order (seeded per rank, shards overlap: samples trained twice or never)")


def gather_updates(indices, losses, correct=None, *, required: bool = False, agreement: "Agreement | None" = None):
    """Returns this rank's update unchanged outside a multi-process group, else everyone's.
    ``agreement``: what every rank's call must share (see :class:`Agreement`), checked with the
    sizes (the same collective): a ConfigError on every rank where they differ."""
    dist = _active_group()
    if dist is None:
        if required:
            raise RuntimeError("distributed=True but no torch.distributed process group with "
                               "more than one rank is initialised")
        return indices, losses, correct
    import torch

    device = _collective_device(dist, losses)
    idx = as_indices(indices)
    loss = as_losses(losses, len(idx))
    corr = as_correct(correct, len(idx))
    world = dist.get_world_size()

    headers = all_gather_ints([len(idx), corr is not None, *(agreement or Agreement())], device)
    sizes = [h[0] for h in headers]
    flags = {bool(h[1]) for h in headers}
    if len(flags) != 1:
        raise ValueError("update(): some ranks passed `correct` and others did not")
    Agreement.check([Agreement(*h[2:]) for h in headers])

    # One float64 payload per rank: indices (< 2^53, exact), losses (float32, exact), correct.
    width = max(sizes)
    payload = torch.zeros((3, width), dtype=torch.float64, device=device)
    payload[0, : len(idx)] = torch.from_numpy(idx.astype(np.float64))
    payload[1, : len(idx)] = torch.from_numpy(loss.astype(np.float64))
    if corr is not None:
        payload[2, : len(idx)] = torch.from_numpy(corr.astype(np.float64))
    gathered = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(gathered, payload)

    rows = [g[:, :n].cpu().numpy() for g, n in zip(gathered, sizes)]
    all_rows = np.concatenate(rows, axis=1)
    has_correct = flags.pop()
    return (all_rows[0].astype(np.int64), all_rows[1].astype(np.float32),
            all_rows[2].astype(np.int8) if has_correct else None)
