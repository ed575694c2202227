"""Reading a store the OS has not cached, with the loader's read-ahead hints (its default) and
without them (``Loader(readahead=False)``).

A store is cold on the first epoch after a reboot or a copy, and on every epoch when it is larger
than RAM. Each timed pass here starts cold: the loader is closed (mapped pages cannot be dropped)
and the file dropped from the page cache (fsync + posix_fadvise DONTNEED); how much of it was
still in memory when the pass began is recorded (``resident_at_start``, a spread of 1024 samples).
Then passes over the store mostly in memory (1/32 of it dropped: memory pressure, a store larger
than RAM) and wholly in memory; the batches each pass hinted are recorded.
Settings are interleaved pass by pass, their order alternating (A B B A ...).

Data, written under --workdir: raw 64 px images (12 KB a sample, random pixels) and JPEG photo
crops (long side 256, ~18 KB, cut from the sample photos that ship in pip packages) read with
RandomResizedCrop 224 + flip, into uint8 batches.

The disk: by default the machine's own (record its latency before reading much into the result: a
VM's disk may be the host's page cache). ``--slow-disk-us L`` reads the stores through
benchmarks/slow_disk.c instead, a FUSE view in which every read waits L microseconds, at most
``--disk-queue`` at once (a network volume is ~0.5-2 ms, a local NVMe SSD ~0.1 ms); it needs a C
compiler, libfuse3 (Debian: libfuse3-dev fuse3) and /dev/fuse, and runs as root.

    .venv/bin/python benchmarks/cold_read.py [--slow-disk-us 1000] [--threads 2 8] [--epochs 5] [--tiny]

Prints a table; writes benchmarks/results/cold_read.json (see shared BENCHMARKS.md) and a
markdown next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's photo helpers
from loader_throughput import photo_store  # noqa: E402

from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown  # noqa: E402
from fastprune.convert.arrays import from_arrays  # noqa: E402
import fastprune.loader.loader as loader_module  # noqa: E402
from fastprune.loader import Loader, RandomHorizontalFlip, RandomResizedCrop  # noqa: E402
from fastprune.loader._readahead import Readahead  # noqa: E402

SLOW_DISK_SOURCE = Path(__file__).resolve().parent / "slow_disk.c"
SETTINGS = {"read-ahead (default)": True, "no hints": False}
STATES = ("cold", "mostly", "warm")  # the store at a pass's start: dropped, 1/32 dropped, in memory
WARM_PASSES = 3  # per setting for the "mostly" and "warm" states, interleaved, after the cold ones


def raw_store(folder: Path, count: int) -> Path:
    path = folder / f"raw64_{count}.beton"
    if not path.exists():
        rng = np.random.default_rng(0)
        from_arrays(rng.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8), rng.integers(0, 10, count), path,
                    progress=False)
    return path


def drop_from_cache(path: Path) -> None:
    gc.collect()  # a loader left in a reference cycle keeps the file mapped, and mapped pages stay
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # pages not yet written back stay too
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_a_part(path: Path, parts: int = 32) -> None:
    """Read the file into memory, then drop 1/32 of it from the page cache, in ``parts`` ranges
    spread over it: a store mostly in memory (as after memory pressure, or larger than RAM)."""
    read_through(path)
    gc.collect()
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        for k in range(parts):
            os.posix_fadvise(fd, size * k // parts, max(1, size // (parts * 32)), os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one_pass(path: Path, readahead: bool, transforms, threads: int, batch: int, state: str) -> dict:
    """One timed pass over a store that is ``state``: "cold" (dropped from the page cache),
    "mostly" (1/32 of it dropped) or "warm" (as the previous pass left it)."""
    if state == "cold":
        drop_from_cache(path)
    elif state == "mostly":
        drop_a_part(path)
    made = []

    class Counted(Readahead):  # counts the pass's hinted batches
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    loader_module.Readahead = Counted
    try:
        with Loader(path, batch, transforms=transforms(), threads=threads, seed=0, readahead=readahead) as loader:
            spread = np.linspace(0, loader.num_samples - 1, min(1024, loader.num_samples)).astype(np.int64)
            resident = loader._source.resident_fraction(spread)
            start = time.perf_counter()
            images = sum(len(b.images) for b in loader)
            seconds = time.perf_counter() - start
    finally:
        loader_module.Readahead = Readahead
    return {"img_per_s": images / seconds, "seconds": seconds, "resident_at_start": resident,
            "hinted_batches": sum(r.hinted_batches for r in made), "batches": len(loader)}


def read_through(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def read_ahead_kb(path: Path) -> int | None:
    """The kernel's read-ahead setting of the block device holding ``path`` (None if not found)."""
    dev = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for queue in (block / "queue", block / ".." / "queue"):  # a partition's settings are its disk's
        with contextlib.suppress(OSError, ValueError):
            return int((queue / "read_ahead_kb").read_text())
    return None


@contextlib.contextmanager
def slow_disk(source: Path, workdir: Path, latency_us: int, queue: int):
    """``source`` seen through benchmarks/slow_disk.c (every read waits ``latency_us``)."""
    binary, mountpoint = workdir / "slow_disk", workdir / "slow"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True)
    if flags.returncode != 0 or not os.path.exists("/dev/fuse"):
        raise SystemExit("--slow-disk-us needs libfuse3 and /dev/fuse (Debian: apt-get install libfuse3-dev fuse3)")
    subprocess.run(["cc", "-O2", str(SLOW_DISK_SOURCE), *flags.stdout.split(), "-o", str(binary)], check=True)
    mountpoint.mkdir(exist_ok=True)
    daemon = subprocess.Popen([str(binary), str(source), str(mountpoint), str(latency_us), str(queue), "-f"])
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mountpoint):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"slow_disk did not mount {mountpoint} (exit {daemon.poll()})")
            time.sleep(0.05)
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        daemon.terminate()
        daemon.wait(timeout=10)


def alternating(rounds: int):
    """(name, readahead) for ``rounds`` rounds of every setting, the order reversed every other
    round (A B B A ...): neither setting always runs first."""
    items = list(SETTINGS.items())
    for r in range(rounds):
        yield from (items if r % 2 == 0 else items[::-1])


def measure(stores: dict, threads_list, batch: int, epochs: int) -> list[dict]:
    rows = []
    for data, (path, transforms) in stores.items():
        for threads in threads_list:
            for readahead in SETTINGS.values():  # warm-up: numba, the loader's threads
                one_pass(path, readahead, transforms, threads, batch, "cold")
            passes = {(state, name): [] for state in STATES for name in SETTINGS}
            for state in STATES:
                for name, readahead in alternating(epochs if state == "cold" else WARM_PASSES):
                    passes[state, name].append(one_pass(path, readahead, transforms, threads, batch, state))
            for name in SETTINGS:
                row = {"data": data, "threads": threads, "setting": name, "batches": passes["cold", name][0]["batches"]}
                for state in STATES:
                    runs = passes[state, name]
                    rates = [r["img_per_s"] for r in runs]
                    row.update({f"{state}_img_per_s_median": statistics.median(rates), f"{state}_img_per_s_all": rates,
                                f"{state}_resident_at_start": [round(r["resident_at_start"], 3) for r in runs],
                                f"{state}_hinted_batches": [r["hinted_batches"] for r in runs]})
                rows.append(row)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=int, default=20_000, help="raw 64 px samples (0: none)")
    parser.add_argument("--photos", type=int, default=4000, help="JPEG photo crops (0: none)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--epochs", type=int, default=5, help="cold passes per setting (after one warm-up each)")
    parser.add_argument("--slow-disk-us", type=int, default=0, help="read through a FUSE disk with this latency")
    parser.add_argument("--disk-queue", type=int, default=32, help="reads the slow disk serves at once")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores are written")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_read.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.raw, args.photos, args.batch, args.epochs, args.threads = 200, 48, 16, 1, [2]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        folder = workdir / "stores"
        folder.mkdir(parents=True, exist_ok=True)
        made = {}
        if args.raw:
            made["raw 64 px"] = (raw_store(folder, args.raw), list)
        if args.photos:
            photos = folder / f"photos{args.photos}_256.beton"
            if not photos.exists():
                shutil.copy(photo_store(workdir, args.photos), photos)
            made["photos 256, RRC224 + flip"] = (photos, lambda: [RandomResizedCrop(224), RandomHorizontalFlip()])
        with (slow_disk(folder, workdir, args.slow_disk_us, args.disk_queue) if args.slow_disk_us
              else contextlib.nullcontext(folder)) as seen:
            stores = {data: (Path(seen) / path.name, transforms) for data, (path, transforms) in made.items()}
            if args.slow_disk_us:  # the real files in memory: only the slow disk's latency is timed
                for path, _ in made.values():
                    read_through(path)
            rows = measure(stores, args.threads, args.batch, args.epochs)
        disk = ({"kind": "slow_disk.c (FUSE)", "latency_us": args.slow_disk_us, "queue": args.disk_queue}
                if args.slow_disk_us else {"kind": "this machine's", "read_ahead_kb": read_ahead_kb(folder)})
    ratios = {}
    for hinted, plain in zip(rows[::2], rows[1::2]):  # measure() puts each setting pair together
        ratios[f"{hinted['data']} t{hinted['threads']}"] = {
            state: hinted[f"{state}_img_per_s_median"] / plain[f"{state}_img_per_s_median"] for state in STATES}
    result = {"benchmark": "cold_read", "command": command_line(), "machine": machine(), "date": now(),
              "disk": disk, "batch": args.batch, "epochs": args.epochs, "runs": rows, "ratios": ratios}
    out = write_json(args.out, result)
    where = (f"a FUSE disk waiting {args.slow_disk_us} us per read, {args.disk_queue} at once (benchmarks/slow_disk.c)"
             if args.slow_disk_us else f"this machine's disk (read_ahead_kb {disk['read_ahead_kb']})")
    lines = ["# Reading a store that is not in memory: read-ahead hints vs none", "",
             f"{provenance(result)}: stores on {where}; batches of {args.batch}. Before each pass the store is "
             "*cold* (dropped from the page cache), *mostly* in memory (1/32 of it dropped, in 32 places) or "
             f"*warm*; medians of {args.epochs} cold passes and {WARM_PASSES} of each other kind, the two settings "
             "alternating. Hinted: batches hinted per pass / batches.", "",
             "| data | threads | setting | cold img/s | mostly img/s | warm img/s | hinted cold / mostly / warm |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        hinted = " / ".join(f"{statistics.median(r[f'{state}_hinted_batches']):.0f}" for state in STATES)
        lines.append(f"| {r['data']} | {r['threads']} | {r['setting']} | " + " | ".join(
            f"{r[f'{state}_img_per_s_median']:,.0f}" for state in STATES) + f" | {hinted} of {r['batches']} |")
    lines += ["", "| data | read-ahead / none: cold | mostly | warm |", "|---|---|---|---|"]
    lines += [f"| {key} | " + " | ".join(f"{v[state]:.2f}x" for state in STATES) + " |" for key, v in ratios.items()]
    write_markdown(out, lines)
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
