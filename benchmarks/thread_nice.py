"""Does decoding slow the thread that launches a GPU's work? A CPU stand-in for issue 35's gap
between a model's step rate and its rate through fit, with ``Loader(thread_nice=0)`` against
``thread_nice=10`` (what a CUDA loader uses by default).

On a GPU machine the training loop's own thread only launches kernels: a few ms of single-threaded
host work per batch, and any ms it waits for a core is a ms the GPU may idle. Here that thread runs
a fixed single-threaded workload per batch instead (``--step-ms`` of tiny torch ops, calibrated
first), while the loader's producer threads (one per core by default) decode JPEG photos with
RandomResizedCrop 224 + flip into uint8 batches, the host half of the CUDA path. Reported per
setting: the main thread's work per batch (ms; alone = no loader running), batches/s, and the
seconds it waited for a batch. Settings are interleaved (alone, nice 0, nice 10, alone, ...).

    .venv/bin/python benchmarks/thread_nice.py [--photos 2000] [--batches 150] [--repeats 5] [--tiny]

Prints a table; writes benchmarks/results/thread_nice.json (see shared BENCHMARKS.md) and a
markdown next to it. No GPU figure: what it shows is the scheduling effect on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's photo helpers
from loader_throughput import photo_store  # noqa: E402

from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown  # noqa: E402
from fastprune.loader import Loader, RandomHorizontalFlip, RandomResizedCrop  # noqa: E402
from fastprune._cpus import usable_cpus  # noqa: E402

_SCRATCH = torch.zeros(8)


def launch_like_work(ops: int) -> None:
    """Single-threaded host work made of many small calls, like launching a model's kernels."""
    for _ in range(ops):
        _SCRATCH.add_(1.0)


def calibrate(step_ms: float) -> int:
    """The op count that takes ``step_ms`` on an idle core (median of a few tries)."""
    trial = 2000
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        launch_like_work(trial)
        seconds.append(time.perf_counter() - start)
    return max(1, round(trial * step_ms / 1e3 / statistics.median(seconds)))


def timed_run(loader: Loader | None, ops: int, batches: int) -> dict:
    """Main-thread work per batch and batches/s over the first ``batches`` batches of a fresh
    pass of ``loader`` (None: the work alone). From the start of a pass, as in a short epoch:
    every producer decodes flat out until the batches ahead of the consumer reach their bound."""
    work, waited = [], 0.0
    start = time.perf_counter()
    batch_iter = iter(loader) if loader is not None else None
    for _ in range(batches):
        if batch_iter is not None:
            asked = time.perf_counter()
            next(batch_iter)
            waited += time.perf_counter() - asked
        begin = time.perf_counter()
        launch_like_work(ops)
        work.append(time.perf_counter() - begin)
    wall = time.perf_counter() - start
    if batch_iter is not None:
        batch_iter.close()  # stops the producers before the next setting runs
    return {"work_ms": statistics.median(work) * 1e3, "batches_per_s": batches / wall, "wait_s": waited}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=2000, help="JPEG photo crops to convert (max side 256)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="loader threads (default: one per core)")
    parser.add_argument("--step-ms", type=float, default=5.0, help="main-thread work per batch, on an idle core")
    parser.add_argument("--batches", type=int, default=60, help="batches timed per run (at most one pass)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nice", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the photo store is written")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/thread_nice.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.photos, args.batch, args.batches, args.repeats, args.step_ms = 48, 8, 6, 1, 1.0
    torch.set_num_threads(1)
    threads = args.threads or usable_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        store = photo_store(workdir, args.photos)
        loaders = {nice: Loader(store, args.batch, threads=threads, thread_nice=nice, seed=0,
                                transforms=[RandomResizedCrop(224), RandomHorizontalFlip()]) for nice in args.nice}
        for loader in loaders.values():  # warm-up: numba compilation, page cache
            timed_run(loader, 1, 2)
        ops = calibrate(args.step_ms)
        runs: dict[str, list[dict]] = {"alone": [], **{f"nice {n}": [] for n in args.nice}}
        for _ in range(args.repeats):
            runs["alone"].append(timed_run(None, ops, args.batches))
            for nice, loader in loaders.items():
                runs[f"nice {nice}"].append(timed_run(loader, ops, args.batches))
    rows = [{"setting": name, **{k: statistics.median(r[k] for r in results) for k in results[0]}}
            for name, results in runs.items()]
    alone_ms = rows[0]["work_ms"]
    for row in rows:
        row["work_vs_alone"] = row["work_ms"] / alone_ms
    result = {"benchmark": "thread_nice", "command": command_line(), "machine": machine(), "date": now(),
              "photos": args.photos, "batch": args.batch, "loader_threads": threads, "ops_per_batch": ops,
              "batches": args.batches, "repeats": args.repeats, "rows": rows,
              "all": {name: results for name, results in runs.items()}}
    out = write_json(args.out, result)
    lines = ["# Does decoding slow the launching thread? (CPU stand-in)", "",
             f"{provenance(result)}: {threads} loader threads, RRC224 + flip of {args.photos} photos into uint8 batches "
             f"of {args.batch}; main thread {args.step_ms} ms of single-threaded work per batch; medians of "
             f"{args.repeats} runs of the first {args.batches} batches of a pass.", "",
             "| setting | main-thread work ms/batch | vs alone | batches/s | waited for data s |", "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['work_ms']:.2f} | {r['work_vs_alone']:.2f}x | {r['batches_per_s']:.1f} | "
              f"{r['wait_s']:.2f} |" for r in rows]
    write_markdown(out, lines)
    return result


if __name__ == "__main__":
    main()
