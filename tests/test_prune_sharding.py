"""The sharding rule (fastprune.prune.sharding): disjoint, covering, balanced, seeded, alike."""

import numpy as np
import pytest

from fastprune.prune.sharding import Sharding

M64 = (1 << 64) - 1


def splitmix(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def oracle_permute(s: Sharding, x: int) -> int:
    """The Feistel network and cycle walk in Python integers (no numpy wrap-around)."""
    half, mask = s._half, (1 << s._half) - 1
    keys = [int(k) for k in s._keys]
    while True:
        left, right = x >> half, x & mask
        for key in keys:
            left, right = right, left ^ (splitmix(right ^ key) & mask)
        x = (left << half) | right
        if x < s.num_samples:
            return x


@pytest.mark.parametrize("n, world", [(1, 1), (2, 2), (3, 2), (5, 3), (17, 4), (1000, 7), (4096, 8), (100_003, 64)])
def test_shards_are_disjoint_covering_and_balanced_within_one(n, world):
    s = Sharding(n, world, seed=5)
    shards = [s.ids(r) for r in range(world)]
    every = np.concatenate(shards)
    np.testing.assert_array_equal(np.sort(every), np.arange(n))  # disjoint and covering
    sizes = [len(ids) for ids in shards]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) == s.min_shard_size == n // world
    assert sizes == [s.shard_size(r) for r in range(world)]
    for r, ids in enumerate(shards):
        np.testing.assert_array_equal(s.owner(ids), np.full(len(ids), r))
        np.testing.assert_array_equal(s.local(ids, r), np.arange(len(ids)))
        np.testing.assert_array_equal(s.global_ids(r, np.arange(len(ids))), ids)


def test_the_permutation_matches_a_python_integer_oracle():
    for n in (1, 7, 64, 1000, 3 * 2**20 + 1):
        s = Sharding(n, 1, seed=123456789)
        ids = np.unique(np.r_[np.arange(min(n, 300)), np.random.default_rng(0).integers(0, n, 300)])
        assert s.permute(ids).tolist() == [oracle_permute(s, int(i)) for i in ids]
        np.testing.assert_array_equal(s.unpermute(s.permute(ids)), ids)


def test_reproducible_from_the_seed_and_different_across_seeds():
    a, b, c = Sharding(10_000, 4, seed=1), Sharding(10_000, 4, seed=1), Sharding(10_000, 4, seed=2)
    np.testing.assert_array_equal(a.ids(3), b.ids(3))
    assert a == b and a != c and hash(a) == hash(b)
    assert np.mean(np.isin(a.ids(0), c.ids(0))) < 0.35  # about 1/4 shared by chance
    # the permutation does not depend on the world size: only the striding does
    np.testing.assert_array_equal(Sharding(10_000, 2, seed=1).permute(np.arange(50)), a.permute(np.arange(50)))


def test_shards_are_statistically_alike_whatever_the_dataset_order():
    """A dataset written class by class (or easy-to-hard): every shard gets each class in
    proportion, within a few standard deviations of a random sample's spread."""
    n, world, classes = 200_000, 8, 10
    labels = np.repeat(np.arange(classes), n // classes)  # sorted by class
    s = Sharding(n, world, seed=0)
    per_shard = n // world
    sd = np.sqrt(per_shard * 0.1 * 0.9)
    for r in range(world):
        counts = np.bincount(labels[s.ids(r)], minlength=classes)
        assert np.all(np.abs(counts - per_shard / classes) < 5 * sd), counts
    # and each shard spans the whole id range, not a block of it
    ids = s.ids(0)
    hist = np.histogram(ids, bins=10, range=(0, n))[0]
    assert np.all(np.abs(hist - per_shard / 10) < 5 * sd)


def test_foreign_ids_are_refused_in_one_line_naming_the_first():
    s = Sharding(100, 3, seed=0)
    mine, theirs = s.ids(0)[:3], s.ids(2)[:2]
    with pytest.raises(IndexError, match=r"indices\[3\] = \d+ belongs to rank 2's shard, not rank 0's \(2 such") as e:
        s.local(np.r_[mine, theirs], 0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args, match", [
    ((0, 1), "num_samples must be a positive integer"),
    ((10, 0), "world_size must be a positive integer"),
    ((3, 4), "world_size=4 is larger than num_samples=3"),
    ((10, 2, -1), "seed"),
])
def test_bad_settings_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        Sharding(*args)


def test_bad_ranks_and_ids_are_refused():
    s = Sharding(10, 2)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 2\)"):
        s.ids(2)
    with pytest.raises(IndexError, match=r"ids holds 10, outside \[0, 10\)"):
        s.owner([1, 10])
    with pytest.raises(ValueError, match="ids must be integers"):
        s.owner([1.5])
    with pytest.raises(IndexError, match=r"positions must be in \[0, 5\)"):
        s.global_ids(1, [5])
