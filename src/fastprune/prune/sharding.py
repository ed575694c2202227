"""Owner-computes sharding: which rank of a torch.distributed job owns which sample id.

The one rule (every sharded component uses it, nothing else decides ownership): a seeded
bijection ``pi`` of ``[0, N)`` scatters the ids, and rank ``r`` of ``world`` owns the ids at the
strided positions ``r, r + world, r + 2*world, ...`` of that permutation::

    owner(id) = pi(id) % world          local position of id on its owner = pi(id) // world
    ids(r)    = pi^-1(r + world * j)    for j in range(shard_size(r))

so the shards are disjoint, cover ``[0, N)``, differ in size by at most one (ranks below
``N % world`` hold one more), and are statistically alike: a shard is a pseudo-random sample of
the ids, whatever order (class, source, difficulty) the dataset was written in.

``pi`` is a 4-round Feistel network on the smallest power of four >= N, cycle-walked back into
``[0, N)``, with round keys from the seed (splitmix64). Nothing of size N is ever built: a rank
computes its ids, or the owner of an id, in O(1) memory per id, so a 1e9-sample job needs no
1e9-entry permutation anywhere (8 GB in every process). The permutation depends only on
``(num_samples, seed)``; the partition on ``(num_samples, world_size, seed)``.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._args import check_seed
from ..errors import UsageWarning

_M64 = (1 << 64) - 1
#: Salt of the sharding stream, so that it differs from any other use of the same seed.
_SHARD_SALT = 0x5A4D_0001
_ROUNDS = 4
_KERNELS = None  # the compiled walks (forward, inverse)


def _kernel(inverse: bool):
    """The Feistel walk (``inverse``: its inverse) over an int64 array, compiled on first use
    (numba, cached on disk), so that importing this module stays cheap."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = (_compile(False), _compile(True))
    return _KERNELS[inverse]


def _compile(inverse: bool):
    import numba

    @numba.njit(nogil=True, cache=True)
    def walk(values, out, n, half, mask, keys):
        rounds = len(keys)
        for i in range(len(values)):
            v = np.uint64(values[i])
            while True:  # cycle walking: the domain 4**half < 4n, so a few steps at most
                left, right = v >> half, v & mask
                for j in range(rounds):
                    if inverse:  # a compile-time constant: each kernel keeps one branch
                        z = left ^ keys[rounds - 1 - j]
                    else:
                        z = right ^ keys[j]
                    z = z + np.uint64(0x9E3779B97F4A7C15)
                    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                    f = (z ^ (z >> np.uint64(31))) & mask
                    if inverse:
                        left, right = right ^ f, left
                    else:
                        left, right = right, left ^ f
                v = (left << half) | right
                if v < n:
                    break
            out[i] = np.int64(v)

    return walk


def _splitmix_int(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class Sharding:
    """The partition of ``num_samples`` ids over ``world_size`` ranks, from ``seed``.

    ``shard_size(rank)``, ``ids(rank)`` (a rank's ids, in local order), ``owner(ids)``,
    ``local(ids, rank)`` (positions in rank's shard; an IndexError naming the first id another
    rank owns) and ``global_ids(rank, positions)`` (the inverse). Equal settings give equal
    partitions in every process: it is a pure function of ``(num_samples, world_size, seed)``.
    """

    def __init__(self, num_samples: int, world_size: int, seed: int = 0):
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if isinstance(world_size, bool) or int(world_size) != world_size or world_size <= 0:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if world_size > num_samples:
            raise ValueError(f"world_size={world_size} is larger than num_samples={num_samples}: "
                             "some rank would own no sample")
        self.num_samples, self.world_size, self.seed = int(num_samples), int(world_size), check_seed(seed)
        bits = max(2, (self.num_samples - 1).bit_length())
        self._half = (bits + 1) // 2  # the Feistel domain 4**half is < 4 * num_samples
        self._mask = np.uint64((1 << self._half) - 1)
        base = _splitmix_int((self.seed ^ (_SHARD_SALT << 32)) & _M64)
        self._keys = [np.uint64(_splitmix_int((base + r + 1) & _M64)) for r in range(_ROUNDS)]

    def __repr__(self) -> str:
        return f"Sharding(num_samples={self.num_samples}, world_size={self.world_size}, seed={self.seed})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Sharding) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(self.describe())

    def describe(self) -> str:
        """The settings a checkpoint records (a shard of another partition is refused)."""
        return f"{self.num_samples} samples over {self.world_size} ranks, seed {self.seed}"

    # ---- the partition --------------------------------------------------------------------

    def shard_size(self, rank: int) -> int:
        rank = self._rank(rank)
        return (self.num_samples - rank + self.world_size - 1) // self.world_size

    @property
    def min_shard_size(self) -> int:
        """The size of the smallest shard (``num_samples // world_size``): what every rank can
        visit in an epoch that keeps every sample, so that all ranks take the same steps."""
        return self.num_samples // self.world_size

    def ids(self, rank: int) -> np.ndarray:
        """All ids rank ``rank`` owns, in local order (int64; O(shard) memory)."""
        return self.global_ids(rank, np.arange(self.shard_size(rank), dtype=np.int64))

    def global_ids(self, rank: int, positions) -> np.ndarray:
        """The ids at local ``positions`` of rank ``rank``'s shard."""
        rank = self._rank(rank)
        positions = np.asarray(positions, dtype=np.int64)
        size = self.shard_size(rank)
        if positions.size and (positions.min() < 0 or positions.max() >= size):
            raise IndexError(f"positions must be in [0, {size}) (rank {rank}'s shard size)")
        return self.unpermute(positions * self.world_size + rank)

    def owner(self, ids) -> np.ndarray:
        """The rank owning each id (int64)."""
        return self.permute(ids) % self.world_size

    def locate(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(owner rank, local position) of each id."""
        p = self.permute(ids)
        return p % self.world_size, p // self.world_size

    def local(self, ids, rank: int) -> np.ndarray:
        """Local positions of ``ids`` in rank ``rank``'s shard; an IndexError names the first id
        that rank does not own."""
        rank = self._rank(rank)
        owner, position = self.locate(ids)
        foreign = owner != rank
        if foreign.any():
            j = int(np.flatnonzero(foreign)[0])
            raise IndexError(f"indices[{j}] = {int(np.asarray(ids).reshape(-1)[j])} belongs to rank "
                             f"{int(owner[j])}'s shard, not rank {rank}'s ({int(foreign.sum())} such indices): "
                             "a sharded strategy is updated by the rank that owns each sample")
        return position

    # ---- the permutation ------------------------------------------------------------------

    def permute(self, ids) -> np.ndarray:
        """``pi(ids)``: each id's position in the seeded permutation of [0, num_samples)."""
        return self._walk(ids, False, "ids")

    def unpermute(self, positions) -> np.ndarray:
        """``pi^-1(positions)``."""
        return self._walk(positions, True, "positions")

    def _walk(self, values, inverse: bool, name: str) -> np.ndarray:
        array = np.asarray(values)
        if array.size and array.dtype.kind not in "iu":
            raise ValueError(f"{name} must be integers, got dtype {array.dtype}")
        flat = np.ascontiguousarray(array.reshape(-1), dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_samples):
            bad = flat[(flat < 0) | (flat >= self.num_samples)][0]
            raise IndexError(f"{name} holds {int(bad)}, outside [0, {self.num_samples})")
        out = np.empty(flat.size, dtype=np.int64)
        _kernel(inverse)(flat, out, np.uint64(self.num_samples), np.uint64(self._half), self._mask,
                         np.array(self._keys, dtype=np.uint64))
        return out.reshape(array.shape)

    def _rank(self, rank) -> int:
        if isinstance(rank, bool) or int(rank) != rank or not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be an integer in [0, {self.world_size}), got {rank!r}")
        return int(rank)


SHARDED = "sharded"


def is_sharded(distributed) -> bool:
    """Whether ``distributed`` asks for the sharded (owner-computes) mode."""
    if isinstance(distributed, str):
        return distributed == SHARDED
    return isinstance(distributed, tuple) and len(distributed) == 3 and distributed[0] == SHARDED


def sharded_ranks(distributed) -> tuple[int, int]:
    """(rank, world_size) of a sharded strategy: ``"sharded"`` takes the running torch.distributed
    group's ((0, 1) without one: a single process owns every sample); ``("sharded", rank,
    world_size)`` gives them explicitly (a simulation, or a launcher without a group)."""
    from .distributed import checked_ranks, resolve_ranks

    if isinstance(distributed, str):
        return resolve_ranks("auto")
    _, rank, world = distributed
    return checked_ranks(rank, world, "distributed=('sharded', rank, world_size)", distributed)


def consumer_shard(strategy, rank: int, world: int, who: str) -> tuple["Sharding | None", int, int]:
    """(sharding, rank, world) for a loader, sampler or order drawing from ``strategy``: a sharded
    strategy's selection already is this rank's part, so the consumer visits it whole and takes
    the strategy's rank and world; where the consumer itself runs on more than one rank (a
    group, or an explicit (rank, world_size)) they must agree, else a ValueError naming ``who``.
    A replicated strategy: (None, rank, world) unchanged."""
    sharding = getattr(strategy, "sharding", None)
    if sharding is None:
        if world > 1 and getattr(strategy, "distributed", "auto") is False:
            warnings.warn(f"{who} shards the selection over {world} ranks but the strategy was built with "
                          "distributed=False: unless every rank feeds every rank's losses to update() "
                          "itself, the ranks' scores and selections diverge (samples trained twice or "
                          "never); leave the strategy's distributed at 'auto'", UsageWarning, stacklevel=3)
        return None, rank, world
    mine = (strategy.shard_rank, sharding.world_size)
    if world > 1 and (rank, world) != mine:
        raise ValueError(f"{who}: the strategy is sharded as rank {mine[0]} of {mine[1]} but {who} runs as "
                         f"rank {rank} of {world}; give both the same ranks (or leave {who}'s at 'auto')")
    return sharding, mine[0], mine[1]


__all__ = ["SHARDED", "consumer_shard", "Sharding", "is_sharded", "sharded_ranks"]
