"""Host Normalize's recycled output arrays: a pool per Loader, kept for the loader's batches in
flight, the most recently used staying ("sized", the rule since 2026-12-06), against the first
rule ("8 kept"): at most 8 arrays, and every array of another shape dropped when one is allocated,
so an epoch's short last batch dropped the full-size ones and the next epoch allocated them again.

Why it matters: a float32 batch of 128 x 3 x 224 x 224 is 77 MB; an array that large comes fresh
from mmap and every page faults on first write. A Loader holds up to ``threads x (prefetch + 1)``
batches started ahead of its consumer, plus the ones in use: 8 arrays covered 2 threads at most.

Each arm iterates a Loader over the same store of JPEG photos (RandomResizedCrop 224 + flip +
Normalize on the host, float32), one warm-up epoch, then ``--repeats`` epochs per arm,
alternating. Reported: images/s and output arrays allocated per epoch (medians).

    .venv/bin/python benchmarks/host_buffers.py [--photos 4000] [--batch 128 256] [--threads 1 2 4] [--tiny]

Prints a table; writes benchmarks/results/host_buffers.json (see shared BENCHMARKS.md) and a
markdown next to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's photo helpers
from loader_throughput import photo_pipeline, photo_store  # noqa: E402

from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown  # noqa: E402
from fastprune.loader import Loader, Normalize  # noqa: E402
from fastprune.loader.transforms import _RecycledBuffers  # noqa: E402

ARMS = ("sized", "8 kept")


class CountingBuffers(_RecycledBuffers):
    """The pool, counting the arrays it allocates; ``first_rule`` restores the first rule."""

    def __init__(self, first_rule: bool, keep: int = 8):
        super().__init__(keep=8 if first_rule else keep)
        self.first_rule, self.allocated = first_rule, 0

    def take(self, shape, dtype):
        with self._lock:
            before = [id(a) for a in self._arrays]
        array = self._take_first_rule(shape, dtype) if self.first_rule else super().take(shape, dtype)
        self.allocated += id(array) not in before
        return array

    def _take_first_rule(self, shape, dtype):
        with self._lock:
            k = self._free_index(shape, dtype)  # the pool's own free test
            if k is not None:
                return self._arrays[k]
            array = np.empty(shape, dtype)
            self._arrays = [a for a in self._arrays if a.shape == shape and a.dtype == dtype][-(self._keep - 1):]
            self._arrays.append(array)
            return array


def loader_for(store: Path, arm: str, batch: int, threads: int) -> tuple[Loader, CountingBuffers]:
    loader = Loader(store, batch, transforms=photo_pipeline("rrc", 224), threads=threads)
    normalize = loader.transforms[-1]  # the loader's own copy, with its own pool
    assert isinstance(normalize, Normalize)
    normalize._buffers = buffers = CountingBuffers(first_rule=arm == "8 kept", keep=normalize._buffers._keep)
    return loader, buffers


def measure(store: Path, batch: int, threads: int, repeats: int) -> list[dict]:
    loaders = {arm: loader_for(store, arm, batch, threads) for arm in ARMS}
    rates = {arm: [] for arm in ARMS}
    fresh = {arm: [] for arm in ARMS}
    for repeat in range(repeats + 1):  # the first round warms up (numba, the pools' first arrays)
        for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
            loader, buffers = loaders[arm]
            buffers.allocated = 0
            start, images = time.perf_counter(), 0
            for b in loader:
                images += len(b.images)
            if repeat:
                rates[arm].append(images / (time.perf_counter() - start))
                fresh[arm].append(buffers.allocated)
    batches = len(loaders[ARMS[0]][0])
    return [{"batch": batch, "threads": threads, "arm": arm, "batches_per_epoch": batches,
             "img_per_s_median": statistics.median(rates[arm]), "img_per_s_all": rates[arm],
             "fresh_arrays_per_epoch_median": statistics.median(fresh[arm]), "fresh_arrays_all": fresh[arm]}
            for arm in ARMS]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=4000, help="JPEG photo crops to convert (max side 256)")
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the photo store is written")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/host_buffers.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.photos, args.batch, args.threads, args.repeats = 60, [8], [4], 2
    with tempfile.TemporaryDirectory() as tmp:
        store = photo_store(args.workdir or Path(tmp), args.photos)
        rows = [row for batch in args.batch for threads in args.threads
                for row in measure(store, batch, threads, args.repeats)]
    ratios = {f"batch {new['batch']}, {new['threads']} threads": new["img_per_s_median"] / old["img_per_s_median"]
              for new, old in zip(rows[0::2], rows[1::2])}
    result = {"benchmark": "host_buffers", "command": command_line(), "machine": machine(), "date": now(),
              "photos": args.photos, "repeats": args.repeats, "runs": rows, "ratios": ratios}
    out = write_json(args.out, result)
    lines = ["# Host Normalize's output arrays: kept for the loader's batches in flight vs 8 kept", "",
             f"{provenance(result)}: RandomResizedCrop 224 + flip + Normalize (host, float32) of {args.photos} "
             f"JPEG photos, prefetch 2; arms alternate, medians of {args.repeats} epochs.", "",
             "| batch | threads | img/s, sized | img/s, 8 kept | ratio | arrays allocated per epoch, sized vs 8 kept |",
             "|---|---|---|---|---|---|"]
    for new, old in zip(rows[0::2], rows[1::2]):
        ratio = ratios[f"batch {new['batch']}, {new['threads']} threads"]
        lines.append(f"| {new['batch']} | {new['threads']} | {new['img_per_s_median']:,.0f} | "
                     f"{old['img_per_s_median']:,.0f} | {ratio:.2f}x | "
                     f"{new['fresh_arrays_per_epoch_median']:g} vs {old['fresh_arrays_per_epoch_median']:g} "
                     f"of {new['batches_per_epoch']} |")
    print("\n".join(lines[4:]))
    write_markdown(out, lines)
    return result


if __name__ == "__main__":
    main()
