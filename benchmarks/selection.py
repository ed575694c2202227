"""Selection benchmark, two parts, each against numpy in the same run (repetitions interleaved):

* strategies: a whole ``strategy.select(epoch)`` (keep 0.5) of EpsilonGreedy (eps 0.2), UCB,
  UniformRandom and InfoBatch over a score table of N samples (EMA losses, 1% unseen), at a fresh
  epoch every repetition (no cache hits), against a numpy implementation of the same strategy
  from the same table (scores, argpartition for the greedy part, random keys + argpartition for
  the uniform part); plus the previous path (materialise the scores, then select), and the cost
  of one epoch of updates with the strategy's table against the former seven-field table;
* kernel: one epsilon-greedy selection from a score array in fastprune's native kernel, numpy
  (argpartition + choice) and torch (topk + randperm), numpy/torch on one thread.

    .venv/bin/python benchmarks/selection.py [--strategy-sizes 1e6 1e7] [--sizes 1e5 1e6 1e7 1e8] [--repeats 5]

Prints tables and writes benchmarks/results/selection.json (see shared BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fastprune._native import core
from fastprune.bench.machine import command_line, machine, now, write_json
from fastprune.errors import UsageWarning
from fastprune.prune import UCB, EpsilonGreedy, InfoBatch, ScoreTable, UniformRandom

KEEP, EPS = 0.5, 0.2


def fastprune_select(scores, k_top, k_rand, seed, threads=0):
    return core.select_top_random(scores, k_top, k_rand, seed, 0, 0, threads=threads)


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
    scores_t = torch.from_numpy(scores)
    k = int(round(KEEP * n))
    k_rand = int(round(EPS * k))
    k_top = k - k_rand
    reps = repeats if n < 10**8 else max(1, repeats // 3)
    row = {"n": n, "k_top": k_top, "k_rand": k_rand, "repeats": reps, "load_avg_1m_before": os.getloadavg()[0]}
    impls = {"fastprune": lambda: fastprune_select(scores, k_top, k_rand, 1),
             "fastprune_1thread": lambda: fastprune_select(scores, k_top, k_rand, 1, threads=1),
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


# ---- strategy level ----------------------------------------------------------------------

UCB_C = 1.0


def synthetic_state(n: int, seed: int = 0) -> dict:
    """A score table mid-training, in the seven-field layout every earlier version saved: EMA
    losses and variances, 1% of the samples not yet seen."""
    rng = np.random.default_rng(seed)
    seen = np.where(rng.random(n) < 0.01, 0, rng.integers(1, 10, n)).astype(np.int32)
    state = {"mean": rng.exponential(size=n).astype(np.float32),
             "var": (0.1 * rng.exponential(size=n)).astype(np.float32), "seen": seen,
             "last_epoch": np.where(seen > 0, 3, -1).astype(np.int32), "forgets": np.zeros(n, np.int32),
             "last_correct": np.where(seen > 0, 1, -1).astype(np.int8), "ever_correct": (seen > 0).astype(np.uint8)}
    return {name: torch.from_numpy(value) for name, value in state.items()}


def numpy_top(scores, k):
    return np.argpartition(-scores, k - 1)[:k]


def numpy_random(pool, k, rng):
    """k of pool uniformly without replacement: random keys + argpartition."""
    return pool[np.argpartition(rng.random(len(pool), dtype=np.float32), k - 1)[:k]]


def numpy_epsilon_greedy(mean, var, seen, k, rng):
    k_rand = int(round(EPS * k))
    scores = np.where(seen == 0, np.float32(np.inf), mean)
    top = numpy_top(scores, k - k_rand)
    rest = np.ones(len(mean), dtype=bool)
    rest[top] = False
    return np.concatenate([top, numpy_random(np.flatnonzero(rest), k_rand, rng)])


def numpy_ucb(mean, var, seen, k, rng):
    return numpy_top(np.where(seen == 0, np.float32(np.inf), mean + np.float32(UCB_C) * np.sqrt(var)), k)


def numpy_uniform(mean, var, seen, k, rng):
    return np.argpartition(rng.random(len(mean), dtype=np.float32), k - 1)[:k]


def numpy_infobatch(mean, var, seen, k, rng):
    """Every sample at/above the mean loss (or unseen) plus a random share of the rest, up-weighted."""
    used = seen > 0
    below = used & (mean < np.float32(mean[used].mean()))
    pool = np.flatnonzero(below)
    k_below = min(max(k - (len(mean) - len(pool)), 1), len(pool))
    kept = numpy_random(pool, k_below, rng)
    indices = np.concatenate([np.flatnonzero(~below), kept])
    weights = np.concatenate([np.ones(len(mean) - len(pool), np.float32),
                              np.full(k_below, len(pool) / k_below, np.float32)])
    return indices, weights


STRATEGIES = {  # name -> (strategy class and options, numpy implementation)
    "epsilon_greedy": (lambda n: EpsilonGreedy(n, KEEP, eps=EPS, seed=1), numpy_epsilon_greedy),
    "ucb": (lambda n: UCB(n, KEEP, c=UCB_C, seed=1), numpy_ucb),
    "uniform_random": (lambda n: UniformRandom(n, KEEP, seed=1), numpy_uniform),
    "infobatch": (lambda n: InfoBatch(n, KEEP, epochs=10**6, seed=1), numpy_infobatch),
}


def previous_path(table, c, k_top, k_rand, epoch):
    """What a bandit select cost before the score column: materialise the scores, then select."""
    scores = core.bandit_scores(table["mean"], table["var"], table["seen"], c, True)
    return core.select_top_random(scores, k_top, k_rand, 1, epoch, 0)


def fresh_epochs(strategy):
    epoch = iter(range(1, 10**9))
    return lambda: strategy.select(next(epoch))


def update_costs(n: int, state: dict, reps: int) -> dict:
    """One epoch of updates (keep*N samples, random order, with `correct` as `fastprune train`
    passes it): each strategy's table vs the former seven-field one (which every strategy used to
    allocate)."""
    rng = np.random.default_rng(2)
    idx = rng.permutation(n)[: int(KEEP * n)]
    losses = rng.exponential(size=len(idx)).astype(np.float32)
    correct = rng.random(len(idx)) < 0.7
    tables = {"seven_fields": ScoreTable(n)}
    for name in ("epsilon_greedy", "ucb"):
        tables[name] = STRATEGIES[name][0](n).table
    for table in tables.values():
        table.load_state_dict(state)
    impls = {name: (lambda t=t: t.update(idx, losses, correct)) for name, t in tables.items()}
    return {f"update_{name}_s": statistics.median(times) for name, times in timed_interleaved(impls, reps).items()}


def bench_strategies(n: int, repeats: int) -> list[dict]:
    state = synthetic_state(n)
    table = {name: value.numpy() for name, value in state.items()}
    k = int(round(KEEP * n))
    rng = np.random.default_rng(3)
    impls, rows = {}, []
    scores_only = {name: state[name] for name in ("mean", "var", "seen")}  # no `correct` passed yet
    for name, (make, numpy_impl) in STRATEGIES.items():
        strategy = make(n)
        strategy.table.load_state_dict(scores_only)
        impls[f"{name}:fastprune"] = fresh_epochs(strategy)
        impls[f"{name}:numpy"] = lambda f=numpy_impl: f(table["mean"], table["var"], table["seen"], k, rng)
        rows.append({"strategy": name, "n": n, "keep": KEEP, "repeats": repeats,
                     "table_bytes_per_sample": strategy.table.bytes_per_sample, "table_bytes_per_sample_before": 22})
    epochs = iter(range(1, 10**9))
    k_rand = int(round(EPS * k))
    impls["epsilon_greedy:previous"] = lambda: previous_path(table, 0.0, k - k_rand, k_rand, next(epochs))
    impls["ucb:previous"] = lambda: previous_path(table, UCB_C, k, 0, next(epochs))
    load = os.getloadavg()[0]
    times = timed_interleaved(impls, repeats)
    for row in rows:
        for impl in ("fastprune", "numpy", "previous"):
            key = f"{row['strategy']}:{impl}"
            if key in times:
                row[f"{impl}_s"] = statistics.median(times[key])
                row[f"{impl}_all_s"] = times[key]
        row["speedup_vs_numpy"] = row["numpy_s"] / row["fastprune_s"]
        if "previous_s" in row:
            row["speedup_vs_previous"] = row["previous_s"] / row["fastprune_s"]
        row["load_avg_1m_before"], row["load_avg_1m_after"] = load, os.getloadavg()[0]
    updates = update_costs(n, state, max(3, repeats // 3))
    for row in rows:
        row.update(updates)
    return rows


def print_strategy_rows(rows: list[dict]) -> None:
    print(f"{'strategy':>15} {'N':>11} {'fastprune ms':>13} {'numpy ms':>9} {'x numpy':>8} "
          f"{'previous ms':>12} {'B/sample':>9} {'load':>5}")
    for r in rows:
        previous = f"{r['previous_s'] * 1e3:>12.1f}" if "previous_s" in r else f"{'-':>12}"
        print(f"{r['strategy']:>15} {r['n']:>11,} {r['fastprune_s'] * 1e3:>13.1f} {r['numpy_s'] * 1e3:>9.1f} "
              f"{r['speedup_vs_numpy']:>8.1f} {previous} {r['table_bytes_per_sample']:>4} (22) "
              f"{r['load_avg_1m_after']:>5.1f}", flush=True)
    r = rows[-1]
    print(f"one epoch of updates ({int(KEEP * r['n']):,} samples): seven-field table "
          f"{r['update_seven_fields_s'] * 1e3:.1f} ms, epsilon-greedy's {r['update_epsilon_greedy_s'] * 1e3:.1f} ms, "
          f"UCB's {r['update_ucb_s'] * 1e3:.1f} ms", flush=True)


def main(argv=None):
    # selections timed at fresh epochs with no training between: fastprune warns them unscored
    warnings.simplefilter("ignore", UsageWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy-sizes", nargs="*", type=float, default=[1e6, 1e7])
    parser.add_argument("--sizes", nargs="*", type=float, default=[1e5, 1e6, 1e7, 1e8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "selection.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    strategy_rows = []
    for size in args.strategy_sizes:
        strategy_rows += bench_strategies(int(size), args.repeats)
        print_strategy_rows([r for r in strategy_rows if r["n"] == int(size)])

    rows = []
    print(f"{'N':>11} {'fastprune s':>12} {'1 thread':>9} {'numpy s':>9} {'torch s':>9} {'x numpy':>8} "
          f"{'x torch':>8} {'ns/sample':>10} {'extra MB':>9} {'load':>5}")
    for size in args.sizes:
        row = bench_size(int(size), args.repeats)
        rows.append(row)
        print(f"{row['n']:>11,} {row['fastprune_s']:>12.4f} {row['fastprune_1thread_s']:>9.4f} "
              f"{row['numpy_s']:>9.4f} {row['torch_s']:>9.4f} {row['speedup_vs_numpy']:>8.1f} "
              f"{row['speedup_vs_torch']:>8.1f} {row['fastprune_s'] / row['n'] * 1e9:>10.2f} "
              f"{row['fastprune_extra_peak_bytes'] / 2**20:>9.1f} {row['load_avg_1m_after']:>5.1f}", flush=True)

    result = {"benchmark": "selection", "command": command_line(),
              "machine": machine(), "date": now(),
              "settings": {"keep": KEEP, "eps": EPS, "dtype": "float32", "threads": "fastprune: auto, min(2, cores) from 2^20 scores; numpy/torch: 1",
                           "what": "epsilon-greedy selection of keep*N from N uniform scores"},
              "strategy_settings": {"keep": KEEP, "eps": EPS, "ucb_c": UCB_C,
                                    "table": "EMA losses ~ Exp(1), variances ~ 0.1 Exp(1), 1% unseen",
                                    "what": "strategy.select(epoch) at a fresh epoch per repetition vs numpy from the same table; "
                                            "previous = bandit_scores + select_top_random (the path before the score column)"},
              "strategy_runs": strategy_rows,
              "strategy_ratios": {f"{r['strategy']}@{r['n']}": {"vs_numpy": r["speedup_vs_numpy"],
                                                                  "vs_previous": r.get("speedup_vs_previous")}
                                  for r in strategy_rows},
              "runs": rows,
              "ratios": {str(r["n"]): {"vs_numpy": r["speedup_vs_numpy"], "vs_numpy_1thread": r["speedup_vs_numpy_1thread"], "vs_torch": r["speedup_vs_torch"]}
                         for r in rows}}
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
