"""Time of the normalization statistics (``fastprune.train.image_statistics``, which ``fastprune
train`` and ``bench`` compute from the training store) on 1 thread and on more.

The statistics decode a seeded sample of up to 4,096 images whole. A store of photos holds
images of many sizes, and one gather takes images of one size, so those decodes went one at a
time whatever the threads; threads of their own now share them. Rows: JPEG photos (long side 256
and 512, cut from the sample photos that ship inside pip packages: mixed sizes) and Fashion-MNIST
raw 28 px (one size). Thread counts are interleaved (1, N, 1, N, ...) after one warm-up, and
every count must give the same figures.

    .venv/bin/python benchmarks/normalization_statistics.py [--threads 1 2] [--repeats 5] [--photos 2000]

Prints a table; writes benchmarks/results/normalization_statistics.json (see shared
BENCHMARKS.md) and a markdown next to it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's photo helpers
from loader_throughput import photo_store  # noqa: E402

from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown  # noqa: E402
from fastprune.convert import from_idx  # noqa: E402
from fastprune.loader._source import open_source  # noqa: E402
from fastprune.train.data import channel_statistics  # noqa: E402


def timed(store: Path, threads: int) -> tuple[float, tuple]:
    with open_source(store, None, False, threads=threads) as source:
        start = time.perf_counter()
        figures = channel_statistics(source)
        return time.perf_counter() - start, figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per thread count (after one warm-up)")
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores are written")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/normalization_statistics.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.photos, args.repeats = 48, 1
    threads = sorted(set(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        fmnist = workdir / "fmnist-train.beton"
        if not fmnist.exists():
            from_idx(None, fmnist, progress=False)
        stores = {f"photos{side} (mixed sizes)": photo_store(workdir, args.photos, side) for side in (256, 512)}
        stores["raw28 (one size)"] = fmnist
        for name, store in stores.items():
            seconds: dict[int, list[float]] = {count: [] for count in threads}
            figures = set()
            for repeat in range(args.repeats + 1):
                for count in threads:
                    elapsed, result = timed(store, count)
                    figures.add(result)
                    if repeat:  # the first round warms up: numba's cache, the page cache
                        seconds[count].append(elapsed)
            if len(figures) != 1:
                raise SystemExit(f"{name}: the thread counts gave different statistics: {figures}")
            medians = {count: statistics.median(times) for count, times in seconds.items()}
            rows.append({"store": name, "path": str(store),
                         "seconds": {str(c): round(m, 4) for c, m in medians.items()},
                         "speedup_vs_1": {str(c): round(medians[threads[0]] / m, 3) for c, m in medians.items()},
                         "all": {str(c): [round(t, 4) for t in times] for c, times in seconds.items()}})
            print(f"{name:24s} " + "  ".join(f"{c} thr {m:7.3f} s ({medians[threads[0]] / m:.2f}x)"
                                             for c, m in medians.items()), flush=True)
    result = {"benchmark": "normalization_statistics", "command": command_line(), "machine": machine(), "date": now(),
              "threads": threads, "repeats": args.repeats, "photos": args.photos, "rows": rows}
    out = write_json(args.out, result)
    lines = ["# Normalization statistics: seconds by thread count", "",
             f"{provenance(result)}: medians of {args.repeats} interleaved runs; speed-up against "
             f"{threads[0]} thread(s).", "",
             "| store | " + " | ".join(f"{c} threads" for c in threads) + " |", "|---|" + "---|" * len(threads)]
    lines += [f"| {r['store']} | " + " | ".join(f"{r['seconds'][str(c)]:.3f} s ({r['speedup_vs_1'][str(c)]:.2f}x)"
                                                for c in threads) + " |" for r in rows]
    write_markdown(out, lines)
    return result


if __name__ == "__main__":
    main()
