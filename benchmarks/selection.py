"""Selection-kernel benchmark: one epsilon-greedy selection (top (1-eps)k of N float32 scores plus
eps*k uniformly from the rest, keep=0.5, eps=0.2) in fastprune's native kernel, numpy
(argpartition + choice) and torch (topk + randperm), all on one CPU thread.

    .venv/bin/python benchmarks/selection.py [--sizes 1e5 1e6 1e7 1e8] [--repeats 5]

Prints a table and writes benchmarks/results/selection.json (see shared BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fastprune._native import core
from fastprune.bench.machine import command_line, machine, now, write_json

KEEP, EPS = 0.5, 0.2


def fastprune_select(scores, k_top, k_rand, seed, threads=0):
    return core.select_top_random(scores, k_top, k_rand, seed, 0, 0, threads=threads)


def fastprune_ucb(scores, k_top, k_rand, seed, table):
    """Scores from the table (mean + c*std, fused native pass) and the top-k: UCB's whole epoch."""
    mean, var, seen = table
    return core.select_top_random(core.bandit_scores(mean, var, seen, 1.0, True), k_top + k_rand, 0, seed, 0, 0)


def numpy_select(scores, k_top, k_rand, seed):
    top = np.argpartition(-scores, k_top - 1)[:k_top]
    taken = np.zeros(len(scores), dtype=bool)
    taken[top] = True
    rest = np.flatnonzero(~taken)
    return np.concatenate([top, np.random.default_rng(seed).choice(rest, k_rand, replace=False)])


def torch_select(scores, k_top, k_rand, seed):
    top = torch.topk(scores, k_top, sorted=False).indices
    taken = torch.zeros(len(scores), dtype=torch.bool)
    taken[top] = True
    rest = torch.nonzero(~taken).squeeze(1)
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([top, rest[torch.randperm(len(rest), generator=generator)[:k_rand]]])


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def extra_peak_memory(fn) -> int:
    """Peak resident memory fn adds above the current resident set (Linux: resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return -1
    before = peak_rss_bytes()
    fn()
    return peak_rss_bytes() - before


def timed_interleaved(impls: dict, repeats: int) -> dict:
    """Seconds per call of every implementation, repetitions interleaved (a, b, c, a, b, c, ...)
    so that all of them share the machine's load swings; one warm-up call each, excluded."""
    for fn in impls.values():
        fn()
    times = {name: [] for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def bench_size(n: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    scores = rng.random(n, dtype=np.float32)
    table = (scores, rng.random(n, dtype=np.float32), np.ones(n, dtype=np.int32))
    scores_t = torch.from_numpy(scores)
    k = int(round(KEEP * n))
    k_rand = int(round(EPS * k))
    k_top = k - k_rand
    reps = repeats if n < 10**8 else max(1, repeats // 3)
    row = {"n": n, "k_top": k_top, "k_rand": k_rand, "repeats": reps, "load_avg_1m_before": os.getloadavg()[0]}
    impls = {"fastprune": lambda: fastprune_select(scores, k_top, k_rand, 1),
             "fastprune_1thread": lambda: fastprune_select(scores, k_top, k_rand, 1, threads=1),
             "fastprune_ucb_scores_plus_select": lambda: fastprune_ucb(scores, k_top, k_rand, 1, table),
             "numpy": lambda: numpy_select(scores, k_top, k_rand, 1),
             "torch": lambda: torch_select(scores_t, k_top, k_rand, 1)}
    for name, all_times in timed_interleaved(impls, reps).items():
        row[f"{name}_s"] = statistics.median(all_times)
        row[f"{name}_all_s"] = all_times
    row["fastprune_extra_peak_bytes"] = extra_peak_memory(impls["fastprune"])
    row["numpy_extra_peak_bytes"] = extra_peak_memory(impls["numpy"])
    row["speedup_vs_numpy"] = row["numpy_s"] / row["fastprune_s"]
    row["speedup_vs_torch"] = row["torch_s"] / row["fastprune_s"]
    row["speedup_vs_numpy_1thread"] = row["numpy_s"] / row["fastprune_1thread_s"]
    row["load_avg_1m_after"] = os.getloadavg()[0]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7, 1e8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "selection.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rows = []
    print(f"{'N':>11} {'fastprune s':>12} {'1 thread':>9} {'ucb s':>9} {'numpy s':>9} {'torch s':>9} {'x numpy':>8} "
          f"{'x torch':>8} {'ns/sample':>10} {'extra MB':>9} {'load':>5}")
    for size in args.sizes:
        row = bench_size(int(size), args.repeats)
        rows.append(row)
        print(f"{row['n']:>11,} {row['fastprune_s']:>12.4f} {row['fastprune_1thread_s']:>9.4f} "
              f"{row['fastprune_ucb_scores_plus_select_s']:>9.4f} "
              f"{row['numpy_s']:>9.4f} {row['torch_s']:>9.4f} {row['speedup_vs_numpy']:>8.1f} "
              f"{row['speedup_vs_torch']:>8.1f} {row['fastprune_s'] / row['n'] * 1e9:>10.2f} "
              f"{row['fastprune_extra_peak_bytes'] / 2**20:>9.1f} {row['load_avg_1m_after']:>5.1f}", flush=True)

    result = {"benchmark": "selection", "command": command_line(),
              "machine": machine(), "date": now(),
              "settings": {"keep": KEEP, "eps": EPS, "dtype": "float32", "threads": "fastprune: auto, min(2, cores) from 2^20 scores; numpy/torch: 1",
                           "what": "epsilon-greedy selection of keep*N from N uniform scores"},
              "runs": rows,
              "ratios": {str(r["n"]): {"vs_numpy": r["speedup_vs_numpy"], "vs_numpy_1thread": r["speedup_vs_numpy_1thread"], "vs_torch": r["speedup_vs_torch"]}
                         for r in rows}}
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
