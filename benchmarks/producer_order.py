"""Which batch a loader thread builds next: the next unstarted one ("next free", the Loader's
rule) against batch k on producer k % threads ("k % threads", the first design). Both hold at
most ``threads x (prefetch + 1)`` batches started and not yet taken; the baseline is that rule
reimplemented on the same class, so the two arms differ only in the choice of the next batch.

Why it matters: batches are handed out in order. Under "k % threads" a batch that takes long (a
large photo, a producer preempted by the training loop's thread) stalls every other producer once
its own few batches ahead are built, and with threads = cores a stalled producer is an idle core.

Three parts, each arm alternating with the other, medians:
  real      the Loader on this machine's cores: RandomResizedCrop 224 + flip + Normalize of
            --photos JPEG photos, batch --batch, --threads producers, epochs timed after a warm-up.
  times     the build time of each batch of that pipeline with one producer (four epochs): how
            much batch times vary here.
  replay    the Loader's producer threads (its own class) with builds that sleep for those
            measured times, drawn at random, at --replay-threads producers: what a big machine's
            cores would see, on this 2-core one. A model: real cores also contend for memory
            bandwidth. Two consumers: one that takes each batch at once (loader-bound) and one
            that spends 1.1x a batch's mean time / threads per batch (a GPU slightly slower than
            the loader). Reported: batches/s as a share of threads / mean build time, and the
            most batches started and not yet taken.

    .venv/bin/python benchmarks/producer_order.py [--photos 4000] [--threads 2] [--replay-threads 16 64] [--tiny]

Prints tables; writes benchmarks/results/producer_order.json (see shared BENCHMARKS.md) and a
markdown next to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's photo helpers
from loader_throughput import photo_pipeline, photo_store  # noqa: E402

import fastprune.loader.loader as loader_module  # noqa: E402
from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown  # noqa: E402
from fastprune.loader import Loader  # noqa: E402

ARMS = ("next free", "k % threads")
PREFETCH = 2  # the Loader's default


class FixedOrderRun(loader_module._EpochRun):
    """The first design's rule: producer t builds batches t, t + threads, ... and starts one only
    while at most prefetch + 1 of its own are started and not taken (its queue of ``prefetch`` and
    the one it builds)."""

    def __init__(self, *args, **kwargs):
        self._own = threading.local()
        self._producers_seen = 0
        super().__init__(*args, **kwargs)

    def _start_next(self):
        with self._lock:
            if not hasattr(self._own, "next"):
                self._own.next, self._producers_seen = self._producers_seen, self._producers_seen + 1
            k = self._own.next
            while not self._stop.is_set() and k < self.num_batches and k >= self._taken + self._window:
                self._room.wait(loader_module._POLL_S)
            if self._stop.is_set() or k >= self.num_batches:
                return None
            self._own.next = k + self._threads
            return k

    def _take(self, k):
        item = super()._take(k)
        with self._lock:
            self._room.notify_all()  # the producer whose batch may start is a particular one
        return item


def run_class(arm: str):
    return loader_module._EpochRun if arm == "next free" else FixedOrderRun


# -- real: the Loader on this machine ---------------------------------------------------------

def real_epochs(store: Path, args) -> dict[str, list[float]]:
    loader = Loader(store, args.batch, transforms=photo_pipeline("rrc", 224), threads=args.threads,
                    prefetch=PREFETCH)
    rates = {arm: [] for arm in ARMS}
    original = loader_module._EpochRun
    try:
        for repeat in range(args.repeats + 1):  # the first round warms up (numba, page cache)
            for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
                loader_module._EpochRun = run_class(arm)
                start, images = time.perf_counter(), 0
                for batch in loader:
                    images += len(batch.images)
                if repeat:
                    rates[arm].append(images / (time.perf_counter() - start))
    finally:
        loader_module._EpochRun = original
    return rates


def batch_times(store: Path, args, epochs: int) -> list[float]:
    """Each batch's build time with one producer (so no producer waits on another), over
    ``epochs`` epochs after a warm-up."""
    times = []
    builder_class = loader_module._BatchBuilder

    class Timed(builder_class):
        def __call__(self, *a, **k):
            start = time.perf_counter()
            result = super().__call__(*a, **k)
            times.append(time.perf_counter() - start)
            return result

    loader = Loader(store, args.batch, transforms=photo_pipeline("rrc", 224), threads=1)
    loader_module._BatchBuilder = Timed
    try:
        for epoch in range(epochs + 1):
            if epoch == 1:
                times.clear()  # the first epoch warms up
            for _ in loader:
                pass
    finally:
        loader_module._BatchBuilder = builder_class
    return times


# -- replay: the producer threads at many threads, builds that sleep ------------------------------

class SleepingBuild:
    """A build that sleeps for batch k's drawn time (batch k holds the one id k)."""

    epoch = 0

    def __init__(self, seconds: np.ndarray):
        self.seconds, self.lock, self.live, self.peak = seconds, threading.Lock(), 0, 0

    def __call__(self, ids, weights, turn=None):
        with self.lock:
            self.live += 1
            self.peak = max(self.peak, self.live)
        time.sleep(self.seconds[int(ids[0])])
        return int(ids[0])

    def taken(self):
        with self.lock:
            self.live -= 1


def replay(arm: str, threads: int, seconds: np.ndarray, consumer_s: float) -> tuple[float, int]:
    build = SleepingBuild(seconds)
    count = len(seconds)
    ids = np.arange(count, dtype=np.int64)
    run = run_class(arm)(build, ids, np.ones(count, np.float32), np.arange(count + 1, dtype=np.int64),
                         threads, PREFETCH)
    start = time.perf_counter()
    try:
        for expected, k in enumerate(run.batches()):
            assert k == expected, (k, expected)  # delivered in order
            build.taken()
            if consumer_s:
                time.sleep(consumer_s)
    finally:
        run.close()
    return count / (time.perf_counter() - start), build.peak


def replay_rows(times: list[float], args) -> list[dict]:
    mean = statistics.fmean(times)
    rows = []
    for threads in args.replay_threads:
        for consumer in ("at once", "1.1x"):
            consumer_s = 0.0 if consumer == "at once" else 1.1 * mean / threads
            ideal = threads / mean if consumer == "at once" else 1 / consumer_s
            results = {arm: [] for arm in ARMS}
            for repeat in range(args.repeats):
                seconds = np.random.default_rng([threads, repeat]).choice(times, args.replay_batches_per_thread * threads)
                for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
                    results[arm].append(replay(arm, threads, seconds, consumer_s))
            for arm in ARMS:
                rates = [r[0] for r in results[arm]]
                rows.append({"part": "replay", "threads": threads, "consumer": consumer, "arm": arm,
                             "batches_per_s_median": statistics.median(rates), "batches_per_s_all": rates,
                             "share_of_ideal": statistics.median(rates) / ideal,
                             "peak_started_not_taken": max(r[1] for r in results[arm]),
                             "bound": threads * (PREFETCH + 1)})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=4000, help="JPEG photo crops to convert (max side 256)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="producers of the real part")
    parser.add_argument("--replay-threads", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--replay-batches-per-thread", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the photo store is written")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/producer_order.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.photos, args.batch, args.repeats, args.replay_threads, args.replay_batches_per_thread = 48, 8, 2, [4], 5
    with tempfile.TemporaryDirectory() as tmp:
        store = photo_store(args.workdir or Path(tmp), args.photos)
        times = batch_times(store, args, epochs=2 if args.tiny else 4)
        print(f"batch build time, 1 producer: median {1e3 * statistics.median(times):.1f} ms, "
              f"cv {statistics.pstdev(times) / statistics.fmean(times):.2f}, max {1e3 * max(times):.1f} ms", flush=True)
        real = real_epochs(store, args)
    rows = [{"part": "real", "threads": args.threads, "arm": arm, "img_per_s_median": statistics.median(real[arm]),
             "img_per_s_all": real[arm]} for arm in ARMS]
    paired = [a / b for a, b in zip(real[ARMS[0]], real[ARMS[1]])]
    rows += replay_rows(times, args)
    ratios = {"real": rows[0]["img_per_s_median"] / rows[1]["img_per_s_median"]}
    replayed = [r for r in rows if r["part"] == "replay"]
    for mine, other in zip(replayed[0::2], replayed[1::2]):
        ratios[f"replay {mine['threads']} threads, consumer {mine['consumer']}"] = \
            mine["batches_per_s_median"] / other["batches_per_s_median"]
    result = {"benchmark": "producer_order", "command": command_line(), "machine": machine(), "date": now(),
              "photos": args.photos, "batch": args.batch, "prefetch": PREFETCH, "repeats": args.repeats,
              "batch_times_s": times, "runs": rows, "ratios": ratios, "paired_ratios_real": paired}
    out = write_json(args.out, result)
    write_markdown(out, report(result, args))
    return result


def report(result: dict, args) -> list[str]:
    times = result["batch_times_s"]
    rows = result["runs"]
    lines = ["# Which batch a producer builds next: the next unstarted one vs batch k on producer k % threads", "",
             f"{provenance(result)}: RandomResizedCrop 224 + flip + Normalize of {args.photos} JPEG photos, batch "
             f"{args.batch}, prefetch {PREFETCH}; arms alternate, medians of {args.repeats}.", "",
             f"Batch build times with one producer: median {1e3 * statistics.median(times):.1f} ms, coefficient of "
             f"variation {statistics.pstdev(times) / statistics.fmean(times):.2f}, slowest "
             f"{max(times) / statistics.median(times):.1f}x the median ({len(times)} batches).", "",
             "| part | threads | consumer | next free | k % threads | ratio | started, not taken (most) |",
             "|---|---|---|---|---|---|---|"]
    real = [r for r in rows if r["part"] == "real"]
    lines.append(f"| real, img/s | {real[0]['threads']} | at once | {real[0]['img_per_s_median']:,.0f} | "
                 f"{real[1]['img_per_s_median']:,.0f} | {result['ratios']['real']:.2f}x | |")
    replayed = [r for r in rows if r["part"] == "replay"]
    for mine, other in zip(replayed[0::2], replayed[1::2]):
        ratio = result["ratios"][f"replay {mine['threads']} threads, consumer {mine['consumer']}"]
        lines.append(f"| replay, share of ideal | {mine['threads']} | {mine['consumer']} | "
                     f"{mine['share_of_ideal']:.0%} | {other['share_of_ideal']:.0%} | {ratio:.2f}x | "
                     f"{mine['peak_started_not_taken']} vs {other['peak_started_not_taken']} "
                     f"(bound {mine['bound']}) |")
    lines += ["", "Paired ratios of the real part (each repeat's two arms back to back): " +
              ", ".join(f"{x:.2f}" for x in result["paired_ratios_real"])]
    print("\n".join(lines[4:]))
    return lines


if __name__ == "__main__":
    main()
