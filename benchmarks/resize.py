"""Antialiased resized crops against the 2-tap resize, on raw pixels (no decode).

One ImageGather over 64 random-pixel images of 375x500 (a typical photo), RandomResizedCrop
windows (the same ones for both sides), gathered into uint8 batches at 224, 160 and 112 px with
antialias=True (the default: a triangle filter as wide as the scale, as torchvision's
antialias=True) and antialias=False (2 taps per output pixel), interleaved, in one thread. What
this isolates is the resize itself; with JPEG decoding around it see loader_throughput.py.

    .venv/bin/python benchmarks/resize.py [--reps 9] [--tiny]

Prints a table; writes benchmarks/results/resize.json (see shared BENCHMARKS.md) and a markdown
next to it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from fastprune import _core
from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown
from fastprune.loader import RandomResizedCrop
from fastprune.loader.transforms import stream_key


def gather_of(images: np.ndarray):
    n, rows, cols = images.shape[:3]
    size = rows * cols * 3
    return _core.ImageGather(images.reshape(-1), np.arange(n, dtype=np.uint64) * size, np.full(n, size, np.uint64),
                             np.ones(n, np.uint8), np.full(n, rows, np.uint32), np.full(n, cols, np.uint32), 1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=9, help="timed batches per side and size (after one warm-up)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/resize.json"))
    args = parser.parse_args(argv)
    count, rows, cols = (8, 75, 100) if args.tiny else (64, 375, 500)
    sizes = (32,) if args.tiny else (224, 160, 112)
    reps = 1 if args.tiny else args.reps
    images = np.random.default_rng(0).integers(0, 256, (count, rows, cols, 3), dtype=np.uint8)
    gather, ids = gather_of(images), np.arange(count, dtype=np.int64)
    table = []
    for size in sizes:
        crops = RandomResizedCrop(size).crop_params(np.full(count, rows), np.full(count, cols), ids, stream_key(0, 0, 0))
        out = np.empty((count, size, size, 3), np.uint8)
        times = {True: [], False: []}
        for rep in range(reps + 1):
            for antialias in (True, False):
                start = time.perf_counter()
                gather.gather_crops(ids, crops, out, max_threads=1, antialias=antialias)
                if rep:  # the first round warms up
                    times[antialias].append(time.perf_counter() - start)
        rate = {aa: count / statistics.median(t) for aa, t in times.items()}
        shrinking = float(np.mean((crops[:, 2] > size) | (crops[:, 3] > size)))
        table.append({"size": size, "crops_shrinking": round(shrinking, 3),
                      "antialias_img_per_s": round(rate[True]), "two_tap_img_per_s": round(rate[False]),
                      "two_tap_over_antialias": round(rate[False] / rate[True], 2)})
        print(f"{size:4d} px ({shrinking:.0%} of crops shrink): antialiased {rate[True]:8.0f} img/s, "
              f"2-tap {rate[False]:8.0f} img/s ({rate[False] / rate[True]:.2f}x)", flush=True)
    result = {"benchmark": "resize", "command": command_line(), "machine": machine(), "date": now(),
              "images": [count, rows, cols], "reps": reps, "rows": table}
    out_path = write_json(args.out, result)
    lines = ["# Antialiased resized crops vs the 2-tap resize (raw pixels, 1 thread)", "",
             f"{provenance(result)}: {count} images of {rows}x{cols}, RandomResizedCrop windows, medians of "
             f"{reps} interleaved batches (img/s).", "",
             "| size | crops that shrink | antialiased | 2-tap | 2-tap / antialiased |", "|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['crops_shrinking']:.0%} | {r['antialias_img_per_s']:,} | {r['two_tap_img_per_s']:,} | "
              f"{r['two_tap_over_antialias']:.2f}x |" for r in table]
    write_markdown(out_path, lines)
    return result


if __name__ == "__main__":
    main()
