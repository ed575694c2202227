"""Soak: many epochs of loading with dynamic pruning; RSS and thread count must stay flat.

    .venv/bin/python benchmarks/soak.py                       # 50 epochs on Fashion-MNIST train
    .venv/bin/python benchmarks/soak.py --epochs 8 --store X  # any image store

UniformRandom(keep=0.5) selects each epoch; every batch feeds fake per-sample losses back through
``strategy.update`` (as a training loop would), with augmentations and Normalize in the loader.
The store (60k 28x28 raw Fashion-MNIST, ~47 MiB) is far larger than the loader's prefetch buffers
(threads x prefetch batches of 256 images, ~2.4 MiB as uint8).

Per epoch it prints and records: RSS (VmRSS), its anonymous part (RssAnon: heap, batches — the
part that would show a leak; the file-backed part is the store's mmap'd pages, which the page cache
owns and which stop growing once every page was touched), threads of the process (from
/proc/self/status, native pool threads included) and seconds. Writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def proc_status() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "Threads", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def soak(store, epochs: int, *, batch_size: int = 256, keep: float = 0.5, threads: int = 2, prefetch: int = 2,
         seed: int = 0, report=print) -> list[dict]:
    import fastprune
    from fastprune.loader import Normalize, RandomCrop, RandomHorizontalFlip

    store = fastprune.Store(store) if not isinstance(store, fastprune.Store) else store
    strategy = fastprune.UniformRandom(len(store), keep=keep, seed=seed)
    loader = fastprune.Loader(store, batch_size, sampler=strategy, seed=seed, threads=threads, prefetch=prefetch,
                              transforms=[RandomCrop(padding=2), RandomHorizontalFlip(),
                                          Normalize((0.286,) * 3, (0.353,) * 3)])
    rng = np.random.default_rng(seed)
    records = []
    for epoch in range(epochs):
        start = time.perf_counter()
        samples = 0
        for batch in loader:
            losses = rng.exponential(1.0, len(batch.indices)).astype(np.float32)
            strategy.update(batch.indices, losses)
            samples += len(batch.indices)
        status = proc_status()
        record = {"epoch": epoch, "samples": samples, "seconds": round(time.perf_counter() - start, 3),
                  "rss_mib": round(status["VmRSS"] / 1024, 1), "rss_anon_mib": round(status["RssAnon"] / 1024, 1),
                  "rss_file_mib": round(status["RssFile"] / 1024, 1), "threads": status["Threads"],
                  "python_threads": threading.active_count()}
        records.append(record)
        if report:
            report(f"epoch {epoch:3d}: {samples} samples in {record['seconds']:.2f} s, RSS {record['rss_mib']} MiB "
                   f"(anon {record['rss_anon_mib']}, file {record['rss_file_mib']}), threads {record['threads']} "
                   f"(python {record['python_threads']})")
    return records


def summarize(records: list[dict], skip: int = 2) -> dict:
    steady = records[skip:] or records
    anon = [r["rss_anon_mib"] for r in steady]
    rss = [r["rss_mib"] for r in steady]
    return {"epochs": len(records), "steady_from_epoch": steady[0]["epoch"],
            "rss_anon_mib_min": min(anon), "rss_anon_mib_max": max(anon),
            "rss_anon_growth_mib": round(anon[-1] - anon[0], 1),
            "rss_mib_min": min(rss), "rss_mib_max": max(rss),
            "threads": sorted({r["threads"] for r in records}),
            "python_threads": sorted({r["python_threads"] for r in records})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, help="image store (default: convert Fashion-MNIST train)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = Path(tmp) / "fmnist_train.beton"
            subprocess.run([sys.executable, "-m", "fastprune", "convert", "fashion-mnist", "--split", "train",
                            "--out", str(store), "--no-progress"], check=True)
        size_mib = store.stat().st_size / 2**20
        print(f"soak: {args.epochs} epochs of {store} ({size_mib:.1f} MiB), UniformRandom keep 0.5, "
              f"batch 256, {args.threads} threads, prefetch 2")
        records = soak(store, args.epochs, threads=args.threads)
    summary = summarize(records)
    print("summary:", json.dumps(summary))
    from fastprune.bench.machine import command_line, machine, now, write_json

    result = {"benchmark": "soak", "command": command_line(), "machine": machine(), "date": now(),
              "store_mib": round(size_mib, 1), "batch_size": 256, "keep": 0.5, "threads": args.threads,
              "prefetch": 2, "summary": summary, "epochs": records}
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
