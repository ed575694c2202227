"""Scale benchmark for issue 36: what one rank holds, selects and sends, replicated vs sharded.

* **memory**: score-table bytes per rank (counted from the arrays a strategy allocates, and the
  process's RSS growth measured) for EpsilonGreedy, UCB and InfoBatch: replicated (N entries in
  every rank) vs sharded (the rank's shard, ``fastprune.prune.sharding``), at each N of
  ``--sizes`` and each world of ``--worlds``. A replicated table is built only where it fits in
  the RAM free when the run starts (MemAvailable, recorded); the skipped ones are listed.
* **selection time per epoch**: ``EpsilonGreedy.select`` (keep 0.5, eps 0.2) over a filled
  replicated table vs rank 0 of ``EpsilonGreedy(N, distributed=("sharded", 0, world))``, whose
  select includes mapping the chosen rows to sample ids (``Sharding.global_ids``, also timed
  alone); median of ``--repeats`` fresh epochs. The per-sample kept counters (times kept, last
  kept epoch: 8 B) are counted next to the score table.
* **communication per training step**: the bytes one rank receives from the replicated mode's
  per-step all-gather of (index, loss, correct), counted from the shapes of the tensors
  ``fastprune.prune.distributed.gather_updates`` really all-gathers (its collective replaced by
  a counting one), at each world and per-rank batch; the sharded mode communicates nothing for
  pruning (every update is local to the owner rank).
* **overlap**: the union of per-shard selections (equal quotas k/world; top part plus random
  part, by the native kernel the strategies use) against the global selection's top part, on
  loss-like scores: a lognormal, a gamma, and the per-sample losses of a short real
  Fashion-MNIST run (an MLP, 2 epochs) replicated to N with 10% multiplicative noise. Also the
  top-part agreement of float16 / bfloat16-rounded scores with float32 (ranking precision).
* **compact tables**: at ``--compact-point`` (N = 1e9, world 64), rank 0's bytes, RSS growth,
  select and update time for each ``score_dtype`` (float32, bfloat16, float16) and
  ``track_kept``; and a **closed-loop precision replay**: each strategy in float32 and in each
  half type over a 10-epoch Fashion-MNIST loss trace (and that trace replicated to 1e7
  samples): top-part agreement with float32 when fed the same samples (rounding alone), and
  when each selects for itself (closed loop).
* **extrapolation** to 1e9-1e10 samples at 64-1024 ranks (labelled as such): memory from the
  counted bytes per sample, selection time from the measured time per shard entry, the
  all-gather bytes from the counted bytes per entry, the overlap from the hypergeometric
  normal approximation, which the table checks against every simulated point.

    .venv/bin/python benchmarks/scale.py [--sizes 1e7 1e8] [--sharded-sizes 1e9] [--worlds 8 64 512]
                                         [--overlap-sizes 1e7 1e8] [--tiny] [--out benchmarks/results/scale.json]

Prints tables; writes the JSON (see shared BENCHMARKS.md) and a markdown next to it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from fastprune._native import core
from fastprune.bench.machine import command_line, machine, now, write_json
from fastprune.errors import UsageWarning
from fastprune.prune import UCB, EpsilonGreedy, InfoBatch
from fastprune.prune import distributed as fp_distributed
from fastprune.prune.sharding import Sharding

KEEP, EPS, SEED = 0.5, 0.2, 0
STRATEGIES = {"epsilon_greedy": lambda n, **o: EpsilonGreedy(n, KEEP, EPS, seed=SEED, **o),
              "ucb": lambda n, **o: UCB(n, KEEP, seed=SEED, **o),
              "infobatch": lambda n, **o: InfoBatch(n, KEEP, epochs=10, seed=SEED, **o)}
SHARDABLE = ("epsilon_greedy", "ucb")  # InfoBatch has no sharded mode (its epoch size follows the scores)
KERNEL_LIMIT = 2**32  # the native selection kernels take fewer than 2^32 scores per call
GiB = 2**30


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def rss(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peak_growth(call) -> int:
    """The peak RSS ``call()`` adds over the RSS before it (the high-water mark reset through
    /proc/self/clear_refs); -1 where the kernel does not allow that reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return -1
    before = rss()
    call()
    return rss("VmHWM") - before


def fill(strategy, rng) -> None:
    """Every row of the strategy's table seen once, with lognormal losses (a trained network's
    spread), loaded as a checkpoint's table would be (no id mapping: the values are what count)."""
    table = strategy.table
    rows = table.num_samples
    state = {"mean": torch.from_numpy(rng.lognormal(-2.0, 1.5, rows).astype(np.float32)),
             "seen": torch.ones(rows, dtype=torch.int32)}
    if "var" in table.fields:
        state["var"] = torch.zeros(rows, dtype=torch.float32)
    table.load_state_dict(state)


def per_rank_bytes(strategy) -> tuple[int, int]:
    """(score-table bytes, bytes of the per-sample kept counters) the strategy holds."""
    table = sum(a.nbytes for a in strategy.table._arrays.values())
    kept = sum(getattr(strategy, name).nbytes for name in ("_times_kept", "_last_kept") if hasattr(strategy, name))
    return table, kept


def build(name, n, world=None):
    """(strategy, counted table bytes, counted kept-counter bytes, measured RSS growth): replicated
    (world None) or rank 0 of a sharded job of ``world`` ranks."""
    before = rss()
    strategy = STRATEGIES[name](n, **({} if world is None else {"distributed": ("sharded", 0, world)}))
    first = np.array([0]) if world is None else strategy.sharding.global_ids(0, [0])
    strategy.update(first, np.array([1.0], np.float32))  # no `correct`: as the recipe trains
    table, kept = per_rank_bytes(strategy)
    return strategy, table, kept, rss() - before


# ---- memory and selection time ---------------------------------------------------------------

def memory_and_selection(sizes, sharded_sizes, worlds, repeats, skipped):
    rows, timings = [], []
    free = mem_available()
    for n in sorted(set(sizes) | set(sharded_sizes)):
        replicated_ok = n < KERNEL_LIMIT  # tried at every N: where it does not fit, the skip is recorded
        if n >= KERNEL_LIMIT:
            skipped.append(f"replicated tables at N={n:.0e}: the native selection takes < 2^32 scores")
        for name in STRATEGIES:
            bytes_per_sample = sum(per_rank_bytes(STRATEGIES[name](1000))) / 1000
            need = bytes_per_sample * n * 1.3 + 2 * GiB  # the arrays, the fill's temporaries, a margin
            if replicated_ok and need > free:
                skipped.append(f"replicated {name} table at N={n:.0e}: needs ~{need / GiB:.1f} GiB, "
                               f"{free / GiB:.1f} GiB free at start")
            elif replicated_ok:
                strategy, counted, kept, grown = build(name, n)
                rows.append({"strategy": name, "mode": "replicated", "num_samples": n, "world": None,
                             "entries": n, "table_bytes_counted": counted, "kept_counter_bytes": kept,
                             "rss_growth_bytes": grown})
                if name == "epsilon_greedy":
                    timings.append(time_selection(strategy, n, None, repeats))
                del strategy
            for world in worlds:
                if world > n or name not in SHARDABLE:
                    continue
                strategy, counted, kept, grown = build(name, n, world)
                rows.append({"strategy": name, "mode": "sharded", "num_samples": n, "world": world,
                             "entries": strategy.table.num_samples, "table_bytes_counted": counted,
                             "kept_counter_bytes": kept, "rss_growth_bytes": grown})
                if name == "epsilon_greedy":
                    timings.append(time_selection(strategy, n, strategy.sharding, repeats))
                del strategy
    return rows, timings, free


def time_selection(strategy, n, sharding, repeats):
    """Median seconds of one epoch's ``select`` on a filled table (sharded: the real sharded
    strategy, whose select maps the chosen rows to sample ids), and of that mapping alone."""
    fill(strategy, np.random.default_rng(1))
    select_s, map_s = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        selection = strategy.select(r + 1)  # a fresh epoch each time: no cache hit
        select_s.append(time.perf_counter() - t0)
        if sharding is not None:
            rows = sharding.local(selection.indices, 0)
            t1 = time.perf_counter()
            sharding.global_ids(0, rows)
            map_s.append(time.perf_counter() - t1)
    return {"mode": "replicated" if sharding is None else "sharded", "num_samples": n,
            "world": None if sharding is None else sharding.world_size, "entries": strategy.table.num_samples,
            "selected": len(selection), "select_s_median": statistics.median(select_s),
            "of_which_map_ids_s_median": statistics.median(map_s) if map_s else 0.0,
            "ns_per_entry": statistics.median(select_s) / strategy.table.num_samples * 1e9}


# ---- communication ---------------------------------------------------------------------------

class CountingGroup:
    """Stands in for torch.distributed as gather_updates sees it: rank 0 of ``world``, every other
    rank sending what rank 0 sends; counts the bytes rank 0 receives from the others."""

    def __init__(self, world):
        self.world, self.received, self.calls = world, 0, 0

    def get_world_size(self):
        return self.world

    def get_rank(self):
        return 0

    def get_backend(self):
        return "gloo"

    def all_gather(self, outputs, tensor):
        assert len(outputs) == self.world
        for out in outputs:
            out.copy_(tensor)
        self.received += sum(o.numel() * o.element_size() for o in outputs[1:])
        self.calls += 1


def communication(worlds, batches):
    rows = []
    for world in worlds:
        for batch in batches:
            group = CountingGroup(world)
            idx = np.arange(batch, dtype=np.int64)
            loss = np.ones(batch, np.float32)
            with mock.patch.object(fp_distributed, "_active_group", lambda: group):
                fp_distributed.gather_updates(idx, loss, np.ones(batch, np.int8))
            rows.append({"world": world, "batch_per_rank": batch, "collectives_per_step": group.calls,
                         "replicated_bytes_received_per_rank": group.received,
                         "bytes_per_entry": group.received / ((world - 1) * batch) if world > 1 else 0.0,
                         "sharded_bytes_per_step": 0})
    return rows


# ---- overlap ---------------------------------------------------------------------------------

def fashion_mnist_loss_trace(samples, epochs, seed=0):
    """Per-sample cross-entropy losses of an MLP trained on Fashion-MNIST's training split (the
    first ``samples`` images), evaluated after each of ``epochs`` full-data epochs: an
    (epochs, samples) float32 array, the losses a run's updates carry; and the final training
    accuracy."""
    from fastprune.convert import FASHION_MNIST_DIR, read_idx

    x = read_idx(Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz", 3)[:samples]
    y = read_idx(Path(FASHION_MNIST_DIR) / "train-labels-idx1-ubyte.gz", 1)[:samples]
    x = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)
    y = torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    trace = []
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(256):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        with torch.no_grad():
            logits = model(x)
            trace.append(torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy())
    accuracy = float((logits.argmax(1) == y).float().mean())
    return np.stack(trace).astype(np.float32), accuracy


def scores_for(dist, n, rng, fmnist):
    if dist == "lognormal":
        return rng.lognormal(-2.0, 1.5, n).astype(np.float32)
    if dist == "gamma":
        return rng.gamma(0.5, 1.0, n).astype(np.float32)
    base = fmnist[rng.integers(0, len(fmnist), n)]
    return (base * rng.lognormal(0.0, 0.1, n)).astype(np.float32)


def predicted_overlap(n, world, k_top):
    """The expected overlap of per-shard top-(k_top/world) with the global top-k_top for any
    tie-free scores: a shard of m = n/world random ids holds X ~ Hypergeometric(n, k_top, m)
    global-top ids, takes min(X, q) of them with q = k_top/world, so the overlap is
    1 - E[(q - X)+]/q ~= 1 - sd(X) / (sqrt(2 pi) q) (normal approximation)."""
    m, f = n / world, k_top / n
    sd = math.sqrt(m * f * (1 - f) * (n - m) / max(n - 1, 1))
    return 1.0 - sd / (math.sqrt(2 * math.pi) * (k_top / world))


def top_mask(scores, k_top, stream=0):
    mask = np.zeros(len(scores), dtype=bool)
    mask[core.select_top_random(scores, k_top, 0, SEED, 0, stream)] = True
    return mask


def overlap(sizes, worlds, dists, fmnist, log):
    rows, precision = [], []
    for n in sizes:
        t0 = time.perf_counter()
        position = Sharding(n, 1, SEED).permute(np.arange(n, dtype=np.int64))  # world-independent
        id_at = np.empty(n, dtype=np.int64)
        id_at[position] = np.arange(n, dtype=np.int64)
        del position
        log(f"  N={n:.0e}: permutation of the ids in {time.perf_counter() - t0:.1f} s")
        k = int(round(KEEP * n))
        k_top = k - int(round(EPS * k))
        for dist in dists:
            rng = np.random.default_rng([SEED, n, len(dist)])
            scores = scores_for(dist, n, rng, fmnist)
            glob = top_mask(scores, k_top)
            by_position = scores[id_at]
            for world in worlds:
                if world > n:
                    continue
                t0 = time.perf_counter()
                quota = k // world  # equal quotas: every rank the same number of steps
                q_rand = int(round(EPS * quota))
                q_top = quota - q_rand
                chosen_top = np.zeros(n, dtype=bool)
                chosen = np.zeros(n, dtype=bool)
                for rank in range(world):
                    shard = np.ascontiguousarray(by_position[rank::world])
                    top = core.select_top_random(shard, q_top, 0, SEED, 1, rank + 1)
                    both = core.select_top_random(shard, q_top, q_rand, SEED, 1, rank + 1)
                    chosen_top[id_at[rank + world * top]] = True
                    chosen[id_at[rank + world * both]] = True
                hit = int((chosen_top & glob).sum())
                rows.append({"distribution": dist, "num_samples": n, "world": world, "global_top": k_top,
                             "sharded_top": world * q_top, "sharded_selected": int(chosen.sum()),
                             "overlap_top": hit / k_top,
                             "global_top_in_sharded_selection": int((chosen & glob).sum()) / k_top,
                             "predicted_overlap_top": predicted_overlap(n, world, k_top),
                             "seconds": time.perf_counter() - t0})
                log(f"  {dist:9s} N={n:.0e} world={world:4d}: overlap {hit / k_top:.5f} "
                    f"(predicted {rows[-1]['predicted_overlap_top']:.5f})")
            for low in ("float16", "bfloat16"):
                rounded = torch.from_numpy(scores).to(getattr(torch, low)).float().numpy()
                agree = int((top_mask(rounded, k_top) & glob).sum()) / k_top
                precision.append({"distribution": dist, "num_samples": n, "dtype": low, "top_agreement": agree,
                                  "distinct_values": int(len(np.unique(rounded[: min(n, 1 << 22)])))})
            del scores, glob, by_position
    return rows, precision


# ---- compact tables: score_dtype and track_kept -------------------------------------------------

SETTINGS = (("float32", True), ("float32", False), ("bfloat16", True), ("bfloat16", False), ("float16", False))
HALF = ("float16", "bfloat16")


def compact_settings(n, world, repeats, log):
    """At one (N, world) point, rank 0 of a sharded job for each strategy and (score_dtype,
    track_kept): bytes counted and RSS growth; the peak RSS one selection adds (the selection it
    returns and keeps included: 12 B per kept sample each); select time (median of ``repeats``
    epochs on a filled table) and update time per entry (a batch of 2^20 of the rank's samples)."""
    rows = []
    for name in SHARDABLE:
        for dtype, kept in SETTINGS:
            before = rss()
            strategy = STRATEGIES[name](n, distributed=("sharded", 0, world), score_dtype=dtype, track_kept=kept)
            strategy.update(strategy.sharding.global_ids(0, [0]), np.array([1.0], np.float32))
            table, counters = per_rank_bytes(strategy)
            grown = rss() - before
            entries = strategy.table.num_samples
            timing = time_selection(strategy, n, strategy.sharding, repeats)
            select_peak = peak_growth(lambda: strategy.select(repeats + 1))  # a fresh epoch
            ids = strategy.sharding.global_ids(0, np.arange(min(entries, 1 << 20)))
            losses = np.random.default_rng(2).lognormal(-2.0, 1.5, len(ids)).astype(np.float32)
            t0 = time.perf_counter()
            strategy.update(ids, losses)
            update_ns = (time.perf_counter() - t0) / len(ids) * 1e9
            rows.append({"strategy": name, "num_samples": n, "world": world, "entries": entries,
                         "score_dtype": dtype, "track_kept": kept, "table_bytes_counted": table,
                         "kept_counter_bytes": counters, "bytes_per_sample": strategy.bytes_per_sample,
                         "rss_growth_bytes": grown, "select_peak_growth_bytes": select_peak,
                         "select_s_median": timing["select_s_median"], "update_ns_per_entry": update_ns})
            log(f"  {name:14s} {dtype:8s} track_kept={kept!s:5s}: {fmt_bytes(table + counters)} per rank "
                f"({strategy.bytes_per_sample} B/sample), select {timing['select_s_median']:.3f} s, "
                f"update {update_ns:.1f} ns/entry")
            del strategy
    return rows


def replay_losses(trace, n, rng):
    """A function epoch -> N losses: the trace itself at its own size, else each of the N samples
    a random trace sample times a fixed lognormal(0, 0.1) factor (a larger dataset alike)."""
    if n == trace.shape[1]:
        return lambda epoch: trace[epoch]
    source = rng.integers(0, trace.shape[1], n)
    factor = rng.lognormal(0.0, 0.1, n).astype(np.float32)
    return lambda epoch: trace[epoch][source] * factor


def precision_replay(trace, sizes, log):
    """Each strategy in float32 and in each half dtype, over the epochs of a loss trace, two ways:

    * open loop (precision alone): the half table is updated with the same samples as the float32
      one (float32's selection), so the two tables differ only by rounding; per epoch, the
      agreement of their top parts (the k_top highest scores);
    * closed loop (as training runs it): the half strategy selects for itself and is updated with
      the trace's losses of what it selected, so any divergence compounds; per epoch, the share of
      float32's selection it also selects, and the top-part agreement. EpsilonGreedy's random part
      is drawn by rank among the samples outside the top part, so one differing top sample
      re-draws it: its selections differ by about the random part's share even when the rounding
      moves few samples (a different, equally uniform subset).

    From epoch 2 on: before it, the unseen samples' +inf decides."""
    rows = []
    epochs = trace.shape[0]
    for n in sizes:
        losses_at = replay_losses(trace, n, np.random.default_rng([SEED, n]))
        for name in SHARDABLE:
            make = lambda dtype: STRATEGIES[name](n, score_dtype=dtype, track_kept=False)  # noqa: E731
            reference = make("float32")
            opened = {dtype: make(dtype) for dtype in HALF}
            closed = {dtype: make(dtype) for dtype in HALF}
            k_top = reference.num_kept - (int(round(EPS * reference.num_kept)) if name == "epsilon_greedy" else 0)
            measured = {dtype: {"open_top": [], "closed_top": [], "closed_selection": []} for dtype in HALF}
            for epoch in range(epochs):
                chosen = reference.select(epoch).indices
                own = {dtype: closed[dtype].select(epoch).indices for dtype in HALF}
                if epoch >= 2:
                    top = top_mask(reference.table.score, k_top)
                    for dtype, m in measured.items():
                        m["open_top"].append(int((top_mask(opened[dtype].table.score, k_top) & top).sum()) / k_top)
                        m["closed_top"].append(int((top_mask(closed[dtype].table.score, k_top) & top).sum()) / k_top)
                        both = np.intersect1d(chosen, own[dtype], assume_unique=True)
                        m["closed_selection"].append(len(both) / len(chosen))
                losses = losses_at(epoch)
                reference.update(chosen, losses[chosen])
                for dtype in HALF:
                    opened[dtype].update(chosen, losses[chosen])
                    closed[dtype].update(own[dtype], losses[own[dtype]])
            for dtype, m in measured.items():
                rows.append({"strategy": name, "num_samples": n, "epochs": epochs, "dtype": dtype,
                             "open_top_agreement_min": min(m["open_top"]),
                             "open_top_agreement_mean": statistics.fmean(m["open_top"]),
                             "closed_top_agreement_min": min(m["closed_top"]),
                             "closed_selection_agreement_min": min(m["closed_selection"]),
                             "closed_selection_agreement_mean": statistics.fmean(m["closed_selection"])})
                r = rows[-1]
                log(f"  {name:14s} N={n:.0e} {dtype:8s}: top parts agree {r['open_top_agreement_min']:.5f} (min, "
                    f"open loop), {r['closed_top_agreement_min']:.5f} (closed); closed-loop selections "
                    f"{r['closed_selection_agreement_min']:.5f} (min) over epochs 2-{epochs - 1}")
            del reference, opened, closed
    return rows


# ---- extrapolation ---------------------------------------------------------------------------

def extrapolate(table_rows, timings, comm_rows, sizes, worlds, batch, compact):
    per_sample = {r["strategy"]: r["table_bytes_counted"] / r["entries"] for r in table_rows if r["entries"] > 1000}
    smallest = {r["strategy"]: r["bytes_per_sample"] for r in compact
                if r["score_dtype"] == "bfloat16" and not r["track_kept"]}
    kept = max((r["kept_counter_bytes"] / r["entries"] for r in table_rows if r["entries"] > 1000), default=0.0)
    sharded = [t for t in timings if t["mode"] == "sharded"]
    ns = max(sharded, key=lambda t: t["entries"])["ns_per_entry"] if sharded else float("nan")
    per_entry = max((c["bytes_per_entry"] for c in comm_rows if c["world"] > 1), default=float("nan"))
    rows = []
    for n in sizes:
        for world in worlds:
            entries = -(-n // world)
            k_top = int(round(KEEP * n)) - int(round(EPS * round(KEEP * n)))
            rows.append({"extrapolation": True, "num_samples": n, "world": world, "shard_entries": entries,
                         **{f"sharded_{s}_bytes_per_rank": b * entries for s, b in per_sample.items()},
                         **{f"replicated_{s}_bytes_per_rank": b * n for s, b in per_sample.items()},
                         **{f"sharded_{s}_bfloat16_untracked_bytes_per_rank": b * entries for s, b in smallest.items()},
                         "kept_counter_bytes_per_rank_sharded": kept * entries,
                         "replicated_selectable": n < KERNEL_LIMIT,
                         "sharded_epoch_select_s": ns * entries / 1e9,
                         "replicated_bytes_per_step": per_entry * (world - 1) * batch, "sharded_bytes_per_step": 0,
                         "predicted_overlap_top": predicted_overlap(n, world, k_top)})
    return rows, ns, per_entry


# ---- output ----------------------------------------------------------------------------------

def fmt_bytes(b):
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b:.0f} B"


def markdown(result) -> str:
    m = result["machine"]
    lines = ["# Scale: replicated vs sharded score tables (issue 36)", "",
             f"`{result['command']}` on {m['cpu']} ({m['cores']} cores, {m['ram_gb']} GB RAM, "
             f"{result['mem_available_gb']:.1f} GB free at start, load {m['load_avg_1m']}), {result['date']}.", "",
             "## Score-table bytes per rank (counted; RSS growth measured)", "",
             "| strategy | mode | N | world | entries | score table | + kept counters | RSS growth |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["memory"]:
        lines.append(f"| {r['strategy']} | {r['mode']} | {r['num_samples']:.0e} | {r['world'] or ''} | {r['entries']} | "
                     f"{fmt_bytes(r['table_bytes_counted'])} | {fmt_bytes(r['kept_counter_bytes'])} | "
                     f"{fmt_bytes(max(r['rss_growth_bytes'], 0))} |")
    lines += ["", "## Selection time per epoch (EpsilonGreedy keep 0.5, eps 0.2; one rank)", "",
              "| mode | N | world | entries | select s | of which rows -> ids s |", "|---|---|---|---|---|---|"]
    for t in result["selection"]:
        lines.append(f"| {t['mode']} | {t['num_samples']:.0e} | {t['world'] or ''} | {t['entries']} | "
                     f"{t['select_s_median']:.3f} | {t['of_which_map_ids_s_median']:.3f} |")
    lines += ["", "## Bytes per training step for pruning (received per rank; counted from gather_updates' "
              "all-gather shapes)", "", "| world | batch/rank | replicated | sharded |", "|---|---|---|---|"]
    for c in result["communication"]:
        lines.append(f"| {c['world']} | {c['batch_per_rank']} | {fmt_bytes(c['replicated_bytes_received_per_rank'])} | 0 |")
    lines += ["", "## Overlap of the union of per-shard top parts with the global top part", "",
              "| scores | N | world | overlap | predicted | global top in sharded selection |", "|---|---|---|---|---|---|"]
    for o in result["overlap"]:
        lines.append(f"| {o['distribution']} | {o['num_samples']:.0e} | {o['world']} | {o['overlap_top']:.5f} | "
                     f"{o['predicted_overlap_top']:.5f} | {o['global_top_in_sharded_selection']:.5f} |")
    lines += ["", "## Top-part agreement of low-precision scores with float32", "",
              "| scores | N | dtype | agreement |", "|---|---|---|---|"]
    for p in result["precision"]:
        lines.append(f"| {p['distribution']} | {p['num_samples']:.0e} | {p['dtype']} | {p['top_agreement']:.5f} |")
    lines += ["", "## What one rank holds per setting (score_dtype x track_kept; sharded, rank 0)", "",
              "Counted from the arrays the strategy allocates (a half table's selection reads its 16-bit scores in "
              "place: no float32 copy). The selection's own arrays (the epoch's sample ids and weights, 12 B per kept sample, kept for the epoch "
              "and copied to the caller) come on top: the peak one select adds is measured.", "",
              "| strategy | N | world | score_dtype | track_kept | B/sample | per rank | + peak in one select | "
              "RSS growth | select s | update ns/entry |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["compact"]:
        lines.append(f"| {c['strategy']} | {c['num_samples']:.0e} | {c['world']} | {c['score_dtype']} | "
                     f"{c['track_kept']} | {c['bytes_per_sample']} | "
                     f"{fmt_bytes(c['table_bytes_counted'] + c['kept_counter_bytes'])} | "
                     f"{fmt_bytes(max(c['select_peak_growth_bytes'], 0))} | {fmt_bytes(max(c['rss_growth_bytes'], 0))} | "
                     f"{c['select_s_median']:.3f} | {c['update_ns_per_entry']:.1f} |")
    lines += ["", "## Low-precision tables against float32 (Fashion-MNIST loss trace replayed)", "",
              "Open loop: the half table is updated with float32's selections, so they differ by rounding alone; "
              "closed loop: it selects for itself and is updated with what it selected (divergence compounds; "
              "EpsilonGreedy's random part is re-drawn once any top sample differs). Agreement of the top parts "
              "(the k_top highest scores) and of the selections, epochs 2 on.", "",
              "| strategy | N | epochs | dtype | top parts, open loop min / mean | top parts, closed loop min "
              "| selections, closed loop min / mean |", "|---|---|---|---|---|---|---|"]
    for r in result["precision_replay"]:
        lines.append(f"| {r['strategy']} | {r['num_samples']:.0e} | {r['epochs']} | {r['dtype']} | "
                     f"{r['open_top_agreement_min']:.5f} / {r['open_top_agreement_mean']:.5f} | "
                     f"{r['closed_top_agreement_min']:.5f} | {r['closed_selection_agreement_min']:.5f} / "
                     f"{r['closed_selection_agreement_mean']:.5f} |")
    lines += ["", "## EXTRAPOLATION (not measured): 1e9-1e10 samples", "",
              f"Bytes from the counted bytes per sample; select time from the measured "
              f"{result['extrapolation_basis']['sharded_ns_per_entry']:.1f} ns per shard entry; all-gather bytes from "
              f"{result['extrapolation_basis']['allgather_bytes_per_entry']:.0f} B per entry counted, at "
              f"{result['extrapolation_basis']['batch_per_rank']} samples per rank and step; overlap from the "
              "normal approximation. Replicated tables of N >= 2^32 cannot be selected by the native kernels at all.", "",
              "| N | world | sharded eps-greedy/UCB table per rank | + kept counters | bfloat16, no kept counters "
              "| replicated eps-greedy/UCB per rank | sharded select s/epoch | replicated all-gather per step "
              "| predicted overlap |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in result["extrapolation"]:
        lines.append(f"| {e['num_samples']:.0e} | {e['world']} | {fmt_bytes(e.get('sharded_epsilon_greedy_bytes_per_rank', 0))}"
                     f" / {fmt_bytes(e.get('sharded_ucb_bytes_per_rank', 0))} | "
                     f"{fmt_bytes(e['kept_counter_bytes_per_rank_sharded'])} | "
                     f"{fmt_bytes(e.get('sharded_epsilon_greedy_bfloat16_untracked_bytes_per_rank', 0))} / "
                     f"{fmt_bytes(e.get('sharded_ucb_bfloat16_untracked_bytes_per_rank', 0))} | "
                     f"{fmt_bytes(e.get('replicated_epsilon_greedy_bytes_per_rank', 0))} / "
                     f"{fmt_bytes(e.get('replicated_ucb_bytes_per_rank', 0))} | {e['sharded_epoch_select_s']:.2f} | "
                     f"{fmt_bytes(e['replicated_bytes_per_step'])} | {e['predicted_overlap_top']:.5f} |")
    if result["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    # selections timed at fresh epochs with no training between: fastprune warns them unscored
    warnings.simplefilter("ignore", UsageWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e7, 1e8])
    parser.add_argument("--sharded-sizes", nargs="+", type=float, default=[1e9],
                        help="more N for the sharded tables (one rank's shard); replicated too where it fits in RAM")
    parser.add_argument("--worlds", nargs="+", type=int, default=[8, 64, 512])
    parser.add_argument("--overlap-sizes", nargs="+", type=float, default=[1e7, 1e8])
    parser.add_argument("--batches", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fmnist-samples", type=int, default=60000)
    parser.add_argument("--fmnist-epochs", type=int, default=2, help="the losses after this epoch are the overlap's")
    parser.add_argument("--compact-point", nargs=2, type=float, default=[1e9, 64], metavar=("N", "WORLD"),
                        help="where score_dtype x track_kept are measured (one rank's shard)")
    parser.add_argument("--replay-sizes", nargs="+", type=float, default=[6e4, 1e7],
                        help="N of the closed-loop precision replay (the trace's own size, or replicated)")
    parser.add_argument("--replay-epochs", type=int, default=10, help="epochs of the Fashion-MNIST loss trace")
    parser.add_argument("--tiny", action="store_true", help="seconds-long run of every part (the test runs it)")
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes, args.sharded_sizes, args.worlds, args.overlap_sizes = [2e4], [1e5], [2, 8], [2e4]
        args.batches, args.repeats, args.fmnist_samples, args.fmnist_epochs = [16], 1, 2000, 1
        args.compact_point, args.replay_sizes, args.replay_epochs = [1e5, 8], [2000, 5000], 4
    sizes = [int(s) for s in args.sizes]
    sharded_sizes = [int(s) for s in args.sharded_sizes]
    log = lambda text: print(text, flush=True)  # noqa: E731
    skipped: list[str] = []
    started = time.perf_counter()

    log("memory and selection time ...")
    table_rows, timings, free = memory_and_selection(sizes, sharded_sizes, args.worlds, args.repeats, skipped)
    for t in timings:
        log(f"  {t['mode']:10s} N={t['num_samples']:.0e} world={t['world']}: select {t['select_s_median']:.3f} s "
            f"(rows -> ids {t['of_which_map_ids_s_median']:.3f} s) over {t['entries']} entries")
    log("communication ...")
    comm_rows = communication(args.worlds, args.batches)
    log("Fashion-MNIST losses ...")
    trace, fmnist_acc = fashion_mnist_loss_trace(args.fmnist_samples, max(args.fmnist_epochs, args.replay_epochs))
    fmnist = trace[args.fmnist_epochs - 1]
    log(f"  {len(fmnist)} losses per epoch over {len(trace)} epochs, train accuracy after them {fmnist_acc:.3f}, "
        f"mean loss after epoch {args.fmnist_epochs} {fmnist.mean():.3f}")
    log("overlap ...")
    overlap_rows, precision = overlap([int(s) for s in args.overlap_sizes], args.worlds,
                                      ("lognormal", "gamma", "fashion_mnist"), fmnist, log)
    log("compact tables (score_dtype x track_kept) ...")
    compact_n, compact_world = int(args.compact_point[0]), int(args.compact_point[1])
    compact = compact_settings(compact_n, compact_world, args.repeats, log)
    log("precision replay (closed loop on the Fashion-MNIST loss trace) ...")
    replay = precision_replay(trace[: args.replay_epochs], [int(n) for n in args.replay_sizes], log)
    extra_sizes = [10**9, 10**10] if not args.tiny else [10**6]
    extra_worlds = [64, 256, 1024] if not args.tiny else [8]
    extrapolation, ns, per_entry = extrapolate(table_rows, timings, comm_rows, extra_sizes, extra_worlds,
                                               max(args.batches), compact)
    result = {"benchmark": "scale", "command": command_line(), "machine": machine(), "date": now(),
              "mem_available_gb": free / GiB, "keep": KEEP, "eps": EPS, "seed": SEED,
              "memory": table_rows, "selection": timings, "communication": comm_rows,
              "fashion_mnist": {"samples": len(fmnist), "epochs": args.fmnist_epochs, "trace_epochs": len(trace),
                                "train_accuracy_after_trace": fmnist_acc, "mean_loss": float(fmnist.mean()),
                                "noise": "x lognormal(0, 0.1)"},
              "overlap": overlap_rows, "precision": precision, "compact": compact, "precision_replay": replay,
              "extrapolation_basis": {"sharded_ns_per_entry": ns, "allgather_bytes_per_entry": per_entry,
                                      "batch_per_rank": max(args.batches)},
              "extrapolation": extrapolation, "skipped": skipped,
              "wall_s": time.perf_counter() - started}
    out = write_json(Path(args.out), result)
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
