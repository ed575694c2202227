"""Ranks of a distributed job on one machine: each rank's Loader at its default, its share of the
CPUs (the CPUs divided among the ranks that run on them), against every rank at every CPU (the
default before ranks were counted). torchrun starts one process per GPU and none is bound to its
own cores, so 8 ranks on a 128-core node used to start 128 loader threads each.

Each setting runs ``--ranks`` processes at once, each with ``LOCAL_WORLD_SIZE`` set as torchrun
sets it, each iterating the same store of JPEG photos (RandomResizedCrop 224 + flip + Normalize on
the host into float32 batches): one warm-up epoch, then ``--epochs`` timed epochs started together
(a file barrier). Reported per setting: loader threads per rank, the ranks' images/s together
(all images over the span from the first start to the last end), each rank's peak RSS, and the
bytes of the batches a rank can hold at once (``threads x (prefetch + 1)`` batches started and
not yet handed out). Settings alternate, ``--repeats`` times; medians.

    .venv/bin/python benchmarks/local_ranks.py [--ranks 2 4] [--photos 4000] [--epochs 3] [--repeats 3] [--tiny]

Prints a table; writes benchmarks/results/local_ranks.json (see shared BENCHMARKS.md) and a
markdown next to it. This machine's few cores show the memory and thread counts; what 8x more
threads than cores costs in speed on a big node is not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's photo helpers
from loader_throughput import PHOTO_MEAN, PHOTO_STD, photo_store  # noqa: E402

from fastprune._cpus import LOCAL_RANKS_VARIABLES  # noqa: E402
from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown  # noqa: E402

SETTINGS = ("share", "every CPU")  # the default, and threads = all of the process's CPUs


def rank_main(store: Path, batch: int, epochs: int, threads: str, folder: Path, rank: int) -> None:
    """One rank: warm up, wait for the others, time ``epochs`` epochs, write what it saw."""
    import torch

    from fastprune.loader import Loader, Normalize, RandomHorizontalFlip, RandomResizedCrop

    torch.set_num_threads(1)  # as torchrun sets OMP_NUM_THREADS=1 for its ranks
    loader = Loader(store, batch, seed=rank, threads=None if threads == "default" else int(threads),
                    transforms=[RandomResizedCrop(224), RandomHorizontalFlip(), Normalize(PHOTO_MEAN, PHOTO_STD)])
    batch_bytes = 0
    for images, *_ in loader:  # warm-up: numba compilation, page cache
        batch_bytes = max(batch_bytes, images.element_size() * images.numel())
    (folder / f"ready{rank}").touch()
    while not (folder / "go").exists():
        time.sleep(0.005)
    images, start = 0, time.monotonic()
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        images += sum(len(b.indices) for b in loader)
    end = time.monotonic()
    result = {"threads": loader.threads, "images": images, "start": start, "end": end,
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "in_flight_bytes": loader.threads * (loader.prefetch + 1) * batch_bytes}
    (folder / f"rank{rank}.json").write_text(json.dumps(result))
    loader.close()


def run_setting(store: Path, ranks: int, setting: str, args) -> dict:
    """``ranks`` processes at once under ``setting``; their images/s together and per-rank figures."""
    threads = "default" if setting == "share" else str(len(os.sched_getaffinity(0)))
    env = {k: v for k, v in os.environ.items() if k not in LOCAL_RANKS_VARIABLES}
    env["LOCAL_WORLD_SIZE"] = str(ranks)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), "--store", str(store),
                                   "--batch", str(args.batch), "--epochs", str(args.epochs), "--threads", threads,
                                   "--folder", str(folder)], env=env) for r in range(ranks)]
        try:
            while not all((folder / f"ready{r}").exists() for r in range(ranks)):
                if any(p.poll() not in (None, 0) for p in procs):
                    raise SystemExit(f"a rank failed while warming up ({setting}, {ranks} ranks)")
                time.sleep(0.01)
            (folder / "go").touch()
            for p in procs:
                if p.wait() != 0:
                    raise SystemExit(f"a rank failed ({setting}, {ranks} ranks): exit code {p.returncode}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        seen = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(ranks)]
    span = max(s["end"] for s in seen) - min(s["start"] for s in seen)
    return {"ranks": ranks, "setting": setting, "threads_per_rank": seen[0]["threads"],
            "img_per_s": sum(s["images"] for s in seen) / span,
            "peak_rss_bytes_max": max(s["peak_rss_bytes"] for s in seen),
            "in_flight_bytes": max(s["in_flight_bytes"] for s in seen)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--photos", type=int, default=4000, help="JPEG photo crops to convert (max side 256)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per rank")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the photo store is written")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/local_ranks.json"))
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)  # a rank's own process
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank is not None:
        rank_main(args.store, args.batch, args.epochs, args.threads, args.folder, args.rank)
        return {}
    if args.tiny:
        args.ranks, args.photos, args.batch, args.epochs, args.repeats = [2], 48, 8, 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        store = photo_store(args.workdir or Path(tmp), args.photos)
        runs = [run_setting(store, ranks, setting, args)
                for ranks in args.ranks for _ in range(args.repeats) for setting in SETTINGS]
    rows = []
    for ranks in args.ranks:
        for setting in SETTINGS:
            mine = [r for r in runs if r["ranks"] == ranks and r["setting"] == setting]
            rows.append({"ranks": ranks, "setting": setting, "threads_per_rank": mine[0]["threads_per_rank"],
                         "img_per_s_median": statistics.median(r["img_per_s"] for r in mine),
                         "img_per_s_all": [r["img_per_s"] for r in mine],
                         "peak_rss_bytes_median": statistics.median(r["peak_rss_bytes_max"] for r in mine),
                         "in_flight_bytes": mine[0]["in_flight_bytes"]})
    medians = {(r["ranks"], r["setting"]): r["img_per_s_median"] for r in rows}
    ratios = {str(ranks): medians[ranks, "share"] / medians[ranks, "every CPU"] for ranks in args.ranks}
    # Each repeat ran the two settings back to back: their ratio is the same-moment comparison.
    paired = {str(ranks): [a["img_per_s"] / b["img_per_s"] for a, b in zip(runs[0::2], runs[1::2]) if a["ranks"] == ranks]
              for ranks in args.ranks}
    result = {"benchmark": "local_ranks", "command": command_line(), "machine": machine(), "date": now(),
              "photos": args.photos, "batch": args.batch, "epochs": args.epochs, "repeats": args.repeats,
              "runs": rows, "ratios": ratios, "paired_ratios": paired, "all": runs}
    out = write_json(args.out, result)
    lines = ["# Ranks on one machine: each rank's share of the CPUs vs every CPU per rank", "",
             f"{provenance(result)}: RandomResizedCrop 224 + flip + Normalize (host, float32) of {args.photos} "
             f"photos, batch {args.batch}; each rank {args.epochs} timed epochs after one warm-up, all ranks at "
             f"once; settings alternate, medians of {args.repeats}.", "",
             "| ranks | threads per rank: | threads | img/s, all ranks | vs every CPU | peak RSS per rank | "
             "batches a rank can hold |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{ratios[str(r['ranks'])]:.2f}x" if r["setting"] == "share" else ""
        lines.append(f"| {r['ranks']} | {r['setting']} | {r['threads_per_rank']} | {r['img_per_s_median']:,.0f} | "
                     f"{ratio} | {r['peak_rss_bytes_median'] / 2**20:,.0f} MiB | "
                     f"{r['in_flight_bytes'] / 2**20:,.0f} MiB |")
    lines += ["", "Paired ratios (share / every CPU, each repeat's two settings run back to back): " +
              "; ".join(f"{ranks} ranks " + ", ".join(f"{x:.2f}" for x in paired[str(ranks)]) for ranks in args.ranks)]
    write_markdown(out, lines)
    return result


if __name__ == "__main__":
    main()
