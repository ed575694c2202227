"""How long a GPU-bound consumer waits at the start of every epoch, with the first round of
batches gathered in turns on the whole native pool (the loader's default) against each producer
gathering its own first batch on one core (as before; ``fastprune.loader.loader.POOLED_FIRST_ROUND``).

The consumer stands in for a GPU-bound training loop: per batch it sleeps ``--step-ms`` (the host
waits for the GPU, using no CPU), chosen by default as 1.5x the loader's steady per-batch time, so
the loader keeps up once it runs and the epoch takes (time to the first batch) + N x step. Data:
JPEG photo crops (long side 256, cut from the sample photos that ship in pip packages) with
RandomResizedCrop 224 + flip into uint8 batches, the host's half of the CUDA path. Settings are
interleaved, epoch by epoch.

    .venv/bin/python benchmarks/epoch_start.py [--photos 2000] [--batch 256] [--epochs 5] [--tiny]

Prints a table; writes benchmarks/results/epoch_start.json (see shared BENCHMARKS.md) and a
markdown next to it. No GPU figure: on the H200 (16 threads, ~1.3k img/s per thread at RRC160) a
producer's first batch of 256 took ~0.2 s, which is what the pool's turns cut to ~1/threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's photo helpers
from loader_throughput import photo_store  # noqa: E402

import fastprune.loader.loader as loader_module  # noqa: E402
from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown  # noqa: E402
from fastprune.loader import Loader, RandomHorizontalFlip, RandomResizedCrop  # noqa: E402
from fastprune._cpus import usable_cpus  # noqa: E402

SETTINGS = {"first round pooled": True, "each producer alone": False}


def epoch(loader: Loader, step_s: float) -> dict:
    """One pass with a consumer that takes ``step_s`` per batch without using the CPU."""
    start = time.perf_counter()
    first, waited, batches = None, 0.0, 0
    asked = start
    for _ in loader:
        now_ = time.perf_counter()
        waited += now_ - asked
        first = now_ - start if first is None else first
        batches += 1
        time.sleep(step_s)
        asked = time.perf_counter()
    return {"epoch_s": time.perf_counter() - start, "first_batch_s": first, "data_wait_s": waited,
            "batches": batches}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="loader threads (default: one per core)")
    parser.add_argument("--step-ms", type=float, default=None, help="consumer time per batch (default: 1.5x the "
                        "loader's steady per-batch time)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per setting (after one warm-up)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the photo store is written")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/epoch_start.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.photos, args.batch, args.epochs = 48, 8, 1
    threads = args.threads or usable_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        store = photo_store(workdir, args.photos)
        loaders = {}
        try:
            for name, pooled in SETTINGS.items():
                loader_module.POOLED_FIRST_ROUND = pooled  # read when the Loader is made
                loaders[name] = Loader(store, args.batch, threads=threads, seed=0,
                                       transforms=[RandomResizedCrop(224), RandomHorizontalFlip()])
        finally:
            loader_module.POOLED_FIRST_ROUND = True
        free = [epoch(loaders["each producer alone"], 0.0) for _ in range(2)][-1]  # warm-up, then the loader's pace
        step_s = args.step_ms / 1e3 if args.step_ms is not None else 1.5 * free["epoch_s"] / free["batches"]
        runs = {name: [] for name in SETTINGS}
        for _ in range(args.epochs):
            for name, loader in loaders.items():
                runs[name].append(epoch(loader, step_s))
    batches = runs["each producer alone"][0]["batches"]
    rows = [{"setting": name, **{k: statistics.median(r[k] for r in results) for k in
                                 ("epoch_s", "first_batch_s", "data_wait_s")}} for name, results in runs.items()]
    result = {"benchmark": "epoch_start", "command": command_line(), "machine": machine(), "date": now(),
              "photos": args.photos, "batch": args.batch, "threads": threads, "step_ms": step_s * 1e3,
              "batches_per_epoch": batches, "ideal_epoch_s": batches * step_s, "epochs": args.epochs,
              "rows": rows, "all": runs}
    out = write_json(args.out, result)
    lines = ["# Waiting at the start of an epoch: first round pooled vs each producer alone", "",
             f"{provenance(result)}: {threads} loader threads, RRC224 + flip of {args.photos} photos into uint8 batches "
             f"of {args.batch} ({batches} per epoch); the consumer sleeps {step_s * 1e3:.1f} ms per batch (ideal "
             f"epoch {batches * step_s:.3f} s); medians of {args.epochs} interleaved epochs.", "",
             "| setting | epoch s | first batch s | waited for data s |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['epoch_s']:.3f} | {r['first_batch_s']:.3f} | {r['data_wait_s']:.3f} |"
              for r in rows]
    write_markdown(out, lines)
    return result


if __name__ == "__main__":
    main()
