"""Reporting the end-to-end benchmark: statistics over seeds and runs, the markdown tables, and
the report document written next to the result JSON."""

from __future__ import annotations

import statistics

from .._text import counted
from ..train.recipe import RECIPE, STRATEGIES
from .plan import FULL_MODE, data_name, missing_runs, planned_runs

TARGET_MARGIN_PT = 0.5  # "time to reach full-data accuracy minus 0.5 pt"
# What the closing verdict line compares with full data: the bandits and their uniform control,
# at the keep ratio the README's headline is about.
VERDICT_KEEP = 0.5
VERDICT_STRATEGIES = {"uniform_random": "uniform", "epsilon_greedy": "eps-greedy", "ucb": "UCB"}


def mean(values):
    """The mean of ``values``; None for none."""
    return statistics.fmean(values) if values else None


def median(values):
    """The median of ``values``; None for none."""
    return statistics.median(values) if values else None


def std(values):
    """The sample standard deviation of ``values``; None for fewer than two (one seed measures no
    spread: "± 0.00" read as "none")."""
    return statistics.stdev(values) if len(values) > 1 else None


def keep_label(keep: float) -> str:
    """A keep ratio as tables and plots show it: "0.5", "1.0", and every digit it has ("0.25": one
    decimal printed 0.2 and 0.25 alike)."""
    return f"{keep:.1f}" if round(keep, 1) == keep else f"{keep:g}"


def accuracy_cell(row: dict) -> str:
    """"92.36 ± 0.12" over seeds, "92.36 (1 seed)" where one seed measured no spread."""
    if row["acc_std"] is None:
        return f"{row['acc_mean']:.2f} (1 seed)"
    return f"{row['acc_mean']:.2f} ± {row['acc_std']:.2f}"


def time_to_target(curve, target: float) -> float | None:
    """Training seconds until validation accuracy first reaches ``target`` (None: never). A first
    crossing: the run may end below it (its final accuracy is the table's accuracy column)."""
    return next((seconds for seconds, acc in curve if acc >= target), None)


def _per_seed_accuracies(runs: list[dict]) -> list[float]:
    by_seed: dict[int, list[float]] = {}
    for run in runs:
        by_seed.setdefault(run["seed"], []).append(run["final_acc"])
    return [mean(accs) for accs in by_seed.values()]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (strategy, keep): accuracy mean ± std over seeds, speed-up (of median training
    times) and deltas versus full data. The full-data baseline runs several times per seed (once
    per keep block): its accuracy is averaged per seed first, its wall-clock's median taken over
    every run."""
    full = [r for r in runs if r["strategy"] == "full"]
    full_acc = mean(_per_seed_accuracies(full))
    # Speed-ups from medians: one run slowed by a busy machine (a shared CPU, another job) moves a
    # mean by a factor, a median of three not at all (the project's benchmark rules: medians).
    full_wall = median([r["wall_s"] for r in full])
    target = None if full_acc is None else full_acc - TARGET_MARGIN_PT
    groups: dict[tuple[str, float], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["strategy"], run["keep"]), []).append(run)
    rows = []
    for (strategy, keep), group in groups.items():
        accs = _per_seed_accuracies(group)
        walls = [r["wall_s"] for r in group]
        reached = [t for t in (time_to_target(r["curve"], target) for r in group) if t is not None] \
            if target is not None else []
        rows.append({
            "strategy": strategy, "keep": keep, "seeds": len(accs), "runs": len(group),
            "acc_mean": mean(accs), "acc_std": std(accs),
            "wall_s_mean": mean(walls), "wall_s_median": median(walls),
            "speedup": full_wall / median(walls) if full_wall else None,
            "acc_delta_pt": mean(accs) - full_acc if full_acc is not None else None,
            "time_to_target_s": mean(reached) if len(reached) == len(group) else None,
            "reached_target": f"{len(reached)}/{len(group)}",
            "scoring_s_mean": mean([r["scoring_s"] for r in group]),
            "overhead_share_pct": 100 * mean([r["pruning_overhead_s"] / r["wall_s"] for r in group]),
            "data_wait_share_pct": _data_wait_share_pct(group),
        })
    order = {name: i for i, name in enumerate(STRATEGIES)}
    return sorted(rows, key=lambda row: (row["keep"] if row["strategy"] != "full" else -1,
                                         order.get(row["strategy"], 99)))


def _data_wait_share_pct(group: list[dict]) -> float | None:
    """Mean share of wall-clock blocked on the loader; None for runs recorded before fit kept it."""
    if not all("data_wait_s" in r for r in group):
        return None
    return 100 * mean([r["data_wait_s"] / r["wall_s"] for r in group])


# Runs of one cell whose training times differ more than this were not timed alike.
SPREAD_WARNING = 1.5
# Seconds per trained sample differ this much between any two runs: the strategies' own costs
# move it by 1.2-1.6x in the committed results, a busy machine by several times.
PER_SAMPLE_WARNING = 2.0


def timing_spread_note(runs: list[dict]) -> str:
    """A line when the runs were not timed alike (a busy machine): the runs of one (strategy, keep)
    took very different times, or, where each cell ran once (one seed), two runs spent very
    different times per trained sample. The medians stand, but the user should know; "" otherwise."""
    return _cell_spread_note(runs) or _per_sample_spread_note(runs)


def _cell_spread_note(runs: list[dict]) -> str:
    groups: dict[tuple[str, float], list[float]] = {}
    for run in runs:
        groups.setdefault((run["strategy"], run["keep"]), []).append(run["wall_s"])
    spreads = [(max(walls) / min(walls), name, keep, walls) for (name, keep), walls in groups.items()
               if len(walls) > 1 and min(walls) > 0]
    if not spreads or max(spreads)[0] <= SPREAD_WARNING:
        return ""
    ratio, name, keep, walls = max(spreads)
    return (f"note: the runs of one cell took up to {ratio:.1f}x each other's time ({name} at keep "
            f"{keep_label(keep)}: {min(walls):.1f}-{max(walls):.1f} s): {_BUSY_ADVICE}")


def _per_sample_spread_note(runs: list[dict]) -> str:
    # one run per cell cannot differ from itself, but every run trains the same model on the same
    # data: its seconds per trained sample should be alike whatever the strategy
    rates = sorted((run["wall_s"] / run["samples_seen"], run["strategy"], run["keep"]) for run in runs
                   if run.get("samples_seen") and run["wall_s"] > 0)
    if len(rates) < 2 or rates[-1][0] <= PER_SAMPLE_WARNING * rates[0][0]:
        return ""
    (fast, fast_name, fast_keep), (slow, slow_name, slow_keep) = rates[0], rates[-1]
    return (f"note: the runs spent up to {slow / fast:.1f}x each other's time per trained sample "
            f"({fast_name} at keep {keep_label(fast_keep)}: {fast * 1e3:.2f} ms, {slow_name} at keep "
            f"{keep_label(slow_keep)}: "
            f"{slow * 1e3:.2f} ms): {_BUSY_ADVICE}")


def caveats(runs: list[dict]) -> list[str]:
    """The notes printed under the table, those that apply: a strategy that never pruned, runs
    timed unalike (a busy machine)."""
    return [note for note in (never_pruned_note(runs), timing_spread_note(runs)) if note]


def never_pruned_note(runs: list[dict]) -> str:
    """A line naming the pruned cells whose runs trained on every sample in every epoch (a static
    method's scoring epochs, or warm-up and final full epochs, covering the run): their rows
    measure full-data training under a strategy's name. "" when there are none."""
    full = [run["samples_seen"] for run in runs if run["strategy"] == "full" and run.get("samples_seen")]
    if not full:
        return ""
    cells = dict.fromkeys((run["strategy"], run["keep"]) for run in runs if run["strategy"] != "full"
                          and run.get("samples_seen") and run["samples_seen"] >= max(full))
    if not cells:
        return ""
    named = ", ".join(f"{name} at keep {keep_label(keep)}" for name, keep in cells)
    why = ("keep 1 keeps every sample" if all(keep >= 1 for _, keep in cells) else
           "its warm-up or scoring epochs cover the run")  # keep 1.0 was blamed on warm-up epochs
    more = "" if why.startswith("keep 1") else " (with more epochs it prunes)"
    return (f"note: {named} trained on every sample in every epoch ({why}): that row is full-data training, "
            f"not pruning{more}")


_BUSY_ADVICE = ("the machine was busy; speed-ups use medians, but rerun on an idle machine (or with "
                "--threads set) before trusting them")


def markdown_table(summary: list[dict]) -> str:
    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    lines = ["| strategy | keep | acc % (mean ± std) | Δ acc pt | wall s (median) | speed-up | "
             "first at full−0.5 pt s (runs) | scoring s | pruning overhead % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary:
        lines.append(
            f"| {row['strategy']} | {keep_label(row['keep'])} | {accuracy_cell(row)} | "
            f"{fmt(row['acc_delta_pt'], '+.2f')} | {row.get('wall_s_median', row['wall_s_mean']):.1f} | "
            f"{fmt(row['speedup'], '.2f')}x | {fmt(row['time_to_target_s'], '.1f')} "
            f"({row['reached_target']}) | {row['scoring_s_mean']:.1f} | "
            f"{row['overhead_share_pct']:.2f} |")
    return "\n".join(lines)


def pivot_table(summary: list[dict]) -> str:
    """The README's compact view: one row per keep ratio, one column per strategy, cells
    "accuracy mean ± std / speed-up"; the full-data result is stated above it."""
    strategies = [name for name in STRATEGIES[1:] if any(row["strategy"] == name for row in summary)]
    cells = {(row["strategy"], row["keep"]): row for row in summary}
    keeps = sorted({row["keep"] for row in summary if row["strategy"] != "full"})
    lines = ["| keep | " + " | ".join(strategies) + " |", "|---" * (len(strategies) + 1) + "|"]
    for keep in keeps:
        row_cells = []
        for name in strategies:
            row = cells.get((name, keep))
            row_cells.append("–" if row is None else
                             f"{accuracy_cell(row)} / "
                             + ("–" if row["speedup"] is None else f"{row['speedup']:.2f}x"))
        lines.append(f"| {keep_label(keep)} | " + " | ".join(row_cells) + " |")
    return "\n".join(lines)


def _size(limit: int | None, epochs: int, recipe, seeds) -> str:
    images = "all training images" if limit is None else \
        f"{limit // 1000}k images" if limit % 1000 == 0 else f"{limit:,} images"
    model = recipe.model
    name = f"SmallResNet{tuple(model.widths)}" if model.name == "small_resnet" else model.name
    return f"{images}, {counted(epochs, 'epoch')}, {name}, {counted(len(seeds), 'seed')}"


def scale_note(mode: dict, recipe, quick: bool, own_data: bool = False) -> str:
    """How a run relates to the full benchmark, for the verdict line: a quick run says so; a run
    on the user's own stores is only described (the repository's measurements are not of it)."""
    size = _size(mode["train_limit"], mode["epochs"], recipe, mode["seeds"])
    if own_data:
        return size
    if not quick:
        return f"{size}; every measurement: docs/benchmarks.md in the source repository"
    full = _size(FULL_MODE["train_limit"], FULL_MODE["epochs"], RECIPE, FULL_MODE["seeds"])
    return f"quick run: {size}; the full benchmark ({full}): docs/benchmarks.md in the source repository"


def plan_line(mode: dict) -> str:
    """What the benchmark will run, said before the first (long) run starts."""
    runs = planned_runs(mode)
    keeps = ", ".join(f"{keep:g}" for keep in mode["keeps"])
    return (f"plan: {counted(len(runs), 'run')} of {counted(mode['epochs'], 'epoch')}: {', '.join(mode['strategies'])} "
            f"at keep {keeps}, {counted(len(mode['seeds']), 'seed')}, full data once per keep and seed "
            "(--strategies, --keeps, --seeds, --epochs choose fewer)")


def verdict(summary: list[dict], note: str) -> str:
    """One line: speed-up and accuracy change versus full data of the bandits and uniform random
    at keep 0.5 (or the nearest keep run; every pruned strategy if none of those ran)."""
    full = next((row for row in summary if row["strategy"] == "full"), None)
    pruned = [row for row in summary if row["strategy"] != "full"]
    if full is None or not pruned:
        return f"verdict: no full-data and pruned runs to compare yet ({note})"
    keep = min({row["keep"] for row in pruned}, key=lambda k: abs(k - VERDICT_KEEP))
    rows = [row for row in pruned if row["keep"] == keep]
    rows = [row for row in rows if row["strategy"] in VERDICT_STRATEGIES] or rows
    parts = [f"{VERDICT_STRATEGIES.get(row['strategy'], row['strategy'])} {_speed_words(row['speedup'])}, "
             f"{row['acc_delta_pt']:+.2f} pt" for row in rows]
    return (f"verdict at keep {keep_label(keep)}: {'; '.join(parts)} vs full data ({full['acc_mean']:.2f}%) "
            f"({note})")


def _speed_words(speedup: float | None) -> str:
    """'1.95x faster', or '0.82x the speed (slower)': a pruned run slower than full data is not 'faster'."""
    if speedup is None:
        return "–x faster"
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{speedup:.2f}x the speed (slower)"


def completeness(result: dict) -> str:
    """A line saying the file is partial (the file is written after every run, so a benchmark
    stopped early leaves a report whose means cover fewer seeds than planned)."""
    missing = len(missing_runs(result["mode"], result["runs"]))
    if not missing:
        return ""
    planned = len(planned_runs(result["mode"]))
    return (f"**Partial: {planned - missing} of {planned} planned runs**; cells average the seeds done "
            "so far. Add the rest with the same command and `--continue`.\n\n")


def total_time(runs: list[dict]) -> str:
    """The benchmark's own cost (its runs' training + evaluation, summed over sessions when it was
    continued): what "finishes within N hours" is judged by, since wall-clocks exclude evaluation."""
    hours = sum(run["wall_s"] + run["eval_s"] for run in runs) / 3600
    return f"{len(runs)} runs, {hours:.2f} h of training + evaluation in all.\n\n"


def render(result: dict) -> str:
    """The markdown report of a result document."""
    machine = result["machine"]
    quick = " (quick run, `--quick`)" if result["mode"].get("quick") else ""
    return (f"# End-to-end: {data_name(result)}, {counted(result['mode']['epochs'], 'epoch')}{quick}\n\n"
            f"`{result['command']}` — {result['date']}, {machine['cpu']}, {machine['cores']} cores, "
            f"torch {machine['torch']}, amp {result['settings']['amp']}{_on_gpu(result)}.\n\n"
            f"{_continued(result)}"
            f"{completeness(result)}"
            f"{total_time(result['runs'])}"
            f"{markdown_table(result['summary'])}\n\n"
            f"{''.join(_paragraph(note) for note in caveats(result['runs']))}"
            f"Accuracy % (mean ± std over seeds) / speed-up versus full data:\n\n"
            f"{pivot_table(result['summary'])}\n\n"
            f"Wall-clock = training time incl. loading, selection and scoring epochs; evaluation "
            f"excluded. Speed-up = median wall-clock of all full-data baseline runs (one per keep block "
            f"and seed) / the strategy's median wall-clock over seeds (results written before "
            f"2026-12-05 used means).\n")


def _paragraph(text: str) -> str:
    return f"{text}\n\n" if text else ""


def _on_gpu(result: dict) -> str:
    """", on cuda:0 (NVIDIA H200, CUDA 13.0, bf16)" for a result measured on a GPU; "" on the CPU
    (and for files written before the device was recorded, all measured on the CPU)."""
    device = result.get("device") or {}
    if not device.get("gpu"):
        return ""
    return f", on {device['device']} ({device['gpu']}, CUDA {device['cuda']}, {device['precision']})"


def _continued(result: dict) -> str:
    """A line for a file continued over several sessions: the command above is only the last's."""
    earlier = result.get("earlier_sessions") or []
    if not earlier:
        return ""
    return (f"Continued: runs from {len(earlier) + 1} sessions (`--continue`), the first on "
            f"{earlier[0].get('date')}; `earlier_sessions` in the JSON has their commands.\n\n")
