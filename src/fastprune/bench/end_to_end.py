"""End-to-end benchmark: wall-clock speed-up and accuracy of every pruning strategy versus full data.

Trains the same model with the same recipe (``fastprune.train``) on Fashion-MNIST converted to a
store, with full data and with every strategy at several keep ratios and seeds, and reports final
accuracy (mean ± std over seeds), training wall-clock, speed-up versus full data, the time to reach
full-data accuracy minus 0.5 pt, and the pruning overhead. Writes JSON (BENCHMARKS.md), a markdown
table and two PNG plots into benchmarks/results/.

    fastprune bench --quick        # a few minutes: subset, fewer epochs, keep 0.5
    fastprune bench                # the full benchmark: 63 runs, 64-85 min on 2 cores with fast
                                   # bf16 (AMX Xeon, Zen 5 EPYC), 3.5-5 h in fp32

(``python benchmarks/end_to_end.py`` is the same program.)

What "wall-clock" means here: the training time of a run, including data loading, selection,
score updates and any scoring epochs a static method needs (EL2N/Forgetting score during full-data
epochs of the same run, so those epochs are part of it). Per-epoch evaluation, which only the
benchmark needs, is timed separately (``eval_s``) and left out of the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..models import BENCHMARK_MODEL, build_model
from ..train import STRATEGIES, fit, make_loaders, make_optimizer, make_strategy, one_cycle, seed_everything
from . import machine

# The training recipe: chosen so that a full-data run reaches >= 92% Fashion-MNIST test accuracy
# and the whole benchmark fits in 2 hours on a 2-core CPU (see the module docstring of models.py
# and the report in benchmarks/results/end_to_end.md).
# even_batches: part of the recipe so that --continue refuses result files measured before it
# (plain batches: full ones plus a remainder that can be a handful of samples).
# lr: the peak of the one-cycle schedule, picked on a held-out split of the training set as the value
# best for FULL data (benchmarks/results/heldout_lr.md: 1.2 beat 0.4, 0.6, 0.8 and tied 1.6).
RECIPE = {"epochs": 10, "batch_size": 512, "lr": 1.2, "weight_decay": 5e-4, "label_smoothing": 0.1,
          "pad": 0, "even_batches": True}

FULL_MODE = {"train_limit": None, "epochs": RECIPE["epochs"], "keeps": (0.3, 0.5, 0.7),
             "seeds": (0, 1, 2), "strategies": STRATEGIES[1:]}
QUICK_MODE = {"train_limit": 12000, "epochs": 4, "keeps": (0.5,), "seeds": (0,),
              "strategies": STRATEGIES[1:]}

TARGET_MARGIN_PT = 0.5  # "time to reach full-data accuracy minus 0.5 pt"

# One colour per strategy in every plot (tab10), full data in black.
COLORS = {name: ("black" if name == "full" else f"C{i}") for i, name in enumerate(STRATEGIES)}


# ----------------------------------------------------------------------------------- data

def prepare_stores(workdir: Path, train_limit: int | None) -> tuple[Path, Path]:
    """Convert Fashion-MNIST (train: the first ``train_limit`` images, test: all) once per workdir."""
    from fastprune.convert import FASHION_MNIST_DIR, from_arrays
    from fastprune.convert.idx import find_idx_files, load_idx

    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, limit in (("train", train_limit), ("test", None)):
        path = workdir / f"fashion-mnist-{split}{'' if limit is None else f'-{limit}'}.beton"
        if not path.exists():
            images, labels = load_idx(*find_idx_files(FASHION_MNIST_DIR, split))
            from_arrays(images[:limit], labels[:limit], path, progress=False)
        paths.append(path)
    return paths[0], paths[1]


# ----------------------------------------------------------------------------------- one run

def run_one(strategy_name: str, keep: float, seed: int, stores, mode: dict, options,
            strategy_options: dict | None = None, recipe: dict | None = None,
            model: dict | None = None) -> dict:
    """Train one model; return its row of the JSON's "runs". ``strategy_options`` override the
    strategy's library defaults, ``recipe`` entries of RECIPE and ``model`` entries of
    BENCHMARK_MODEL (the held-out studies use them; the benchmark does not)."""
    from fastprune.store.reader import Store

    recipe = {**RECIPE, **(recipe or {})}
    seed_everything(seed)
    train_store, val_store = (Store(path) for path in stores)
    epochs = mode["epochs"]
    strategy = make_strategy(strategy_name, len(train_store), keep, epochs=epochs, seed=seed,
                             **(strategy_options or {}))
    train_loader, val_loader = make_loaders(
        train_store, val_store, recipe["batch_size"], sampler=strategy, seed=seed,
        pad=recipe["pad"], threads=options.threads, channels_last=options.channels_last,
        even_batches=recipe["even_batches"])
    model_spec = {**BENCHMARK_MODEL, **(model or {})}
    net = build_model(model_spec.pop("name"), in_channels=3, **model_spec)
    optimizer = make_optimizer(net, recipe["lr"], recipe["weight_decay"])
    criterion = nn.CrossEntropyLoss(reduction="none", label_smoothing=recipe["label_smoothing"])
    history = fit(net, train_loader, val_loader, strategy, epochs, optimizer,
                  one_cycle(recipe["lr"]), criterion=criterion, amp=options.amp,
                  channels_last=options.channels_last, progress=options.progress, log=None)
    return _run_row(strategy_name, keep, seed, strategy, history)


def warm_up(stores, mode: dict, options) -> float:
    """One short untimed run (about 4 batches of a uniform subset, one epoch) before the timed
    ones, so numba compilation, oneDNN kernel selection and the page cache are not billed to
    whichever run happens to come first (the full-data baseline). Returns its seconds."""
    from ..store.reader import Store

    started = time.perf_counter()
    with Store(stores[0]) as store:
        keep = min(1.0, 4 * RECIPE["batch_size"] / len(store))
    run_one("uniform_random", keep, 0, stores, {**mode, "epochs": 1}, options)
    return time.perf_counter() - started


def _run_row(strategy_name, keep, seed, strategy, history) -> dict:
    # Static methods score during their first full-data epochs; report that time separately too
    # (it is already inside wall_s).
    scoring_epochs = getattr(strategy, "score_epochs", 0)
    return {
        "strategy": strategy_name,
        "keep": keep,
        "seed": seed,
        "epochs": len(history),
        "final_acc": history[-1]["val_acc"],
        "wall_s": history[-1]["cumulative_train_s"],
        "eval_s": sum(r["eval_s"] for r in history),
        "scoring_s": sum(r["train_s"] for r in history[:scoring_epochs]),
        "pruning_overhead_s": sum(r["overhead_s"] for r in history),
        "samples_seen": sum(r["samples"] for r in history),
        "curve": [[round(r["cumulative_train_s"], 3), r["val_acc"]] for r in history],
        "history": history,
    }


# ----------------------------------------------------------------------------------- summary

def _mean(values):
    return statistics.fmean(values) if values else None


def _std(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def time_to_target(curve, target: float) -> float | None:
    """Training seconds until validation accuracy first reaches ``target`` (None: never)."""
    return next((seconds for seconds, acc in curve if acc >= target), None)


def _per_seed_accuracies(runs: list[dict]) -> list[float]:
    by_seed: dict[int, list[float]] = {}
    for run in runs:
        by_seed.setdefault(run["seed"], []).append(run["final_acc"])
    return [_mean(accs) for accs in by_seed.values()]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (strategy, keep): accuracy mean ± std over seeds, speed-up and deltas versus
    full data. The full-data baseline runs several times per seed (once per keep block): its
    accuracy is averaged per seed first, its wall-clock over every run."""
    full = [r for r in runs if r["strategy"] == "full"]
    full_acc = _mean(_per_seed_accuracies(full))
    full_wall = _mean([r["wall_s"] for r in full])
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
            "acc_mean": _mean(accs), "acc_std": _std(accs),
            "wall_s_mean": _mean(walls),
            "speedup": full_wall / _mean(walls) if full_wall else None,
            "acc_delta_pt": _mean(accs) - full_acc if full_acc is not None else None,
            "time_to_target_s": _mean(reached) if len(reached) == len(group) else None,
            "reached_target": f"{len(reached)}/{len(group)}",
            "scoring_s_mean": _mean([r["scoring_s"] for r in group]),
            "overhead_share_pct": 100 * _mean([r["pruning_overhead_s"] / r["wall_s"] for r in group]),
        })
    order = {name: i for i, name in enumerate(STRATEGIES)}
    return sorted(rows, key=lambda row: (row["keep"] if row["strategy"] != "full" else -1,
                                         order.get(row["strategy"], 99)))


def markdown_table(summary: list[dict]) -> str:
    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    lines = ["| strategy | keep | acc % (mean ± std) | Δ acc pt | wall s | speed-up | "
             "time to full−0.5 pt s (reached) | scoring s | pruning overhead % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary:
        lines.append(
            f"| {row['strategy']} | {row['keep']:.1f} | {row['acc_mean']:.2f} ± {row['acc_std']:.2f} | "
            f"{fmt(row['acc_delta_pt'], '+.2f')} | {row['wall_s_mean']:.1f} | "
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
                             f"{row['acc_mean']:.2f} ± {row['acc_std']:.2f} / "
                             + ("–" if row["speedup"] is None else f"{row['speedup']:.2f}x"))
        lines.append(f"| {keep:.1f} | " + " | ".join(row_cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- plots

def plot_curves(runs: list[dict], path: Path) -> None:
    """Accuracy versus training wall-clock, one panel per keep ratio, one line per strategy
    (seed 0 of each; every panel also draws the full-data run of its keep block)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keeps = sorted({r["keep"] for r in runs if r["strategy"] != "full"})
    if not keeps:  # only the baseline so far: nothing to compare yet
        return
    first_seed = min(r["seed"] for r in runs)
    fig, axes = plt.subplots(1, max(len(keeps), 1), figsize=(5 * max(len(keeps), 1), 4),
                             sharey=True, squeeze=False)
    full = [r for r in runs if r["strategy"] == "full" and r["seed"] == first_seed]
    for axis, keep in zip(axes[0], keeps):
        shown = [r for r in full if r.get("block") == keep][:1] or full[:1]
        shown += [r for r in runs if r["keep"] == keep and r["seed"] == first_seed
                        and r["strategy"] != "full"]
        for run in shown:
            seconds, accs = zip(*run["curve"])
            width = 2 if run["strategy"] == "full" else 1.2
            axis.plot(seconds, accs, marker=".", label=run["strategy"], linewidth=width,
                      color=COLORS.get(run["strategy"]))
        axis.set_title(f"keep {keep}")
        axis.set_xlabel("training wall-clock (s)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    _zoom_on_the_top(axes[0][0], runs)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Fashion-MNIST: accuracy vs wall-clock (seed {first_seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _zoom_on_the_top(axis, runs):
    """Early epochs sit far below the end of training; show the range where methods differ."""
    finals = [r["final_acc"] for r in runs]
    axis.set_ylim(min(finals) - 5, max(finals) + 1)


def plot_frontier(summary: list[dict], path: Path) -> None:
    """Final accuracy (mean ± std over seeds) versus speed-up, one series per strategy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4.5))
    for strategy in dict.fromkeys(row["strategy"] for row in summary):
        rows = sorted((r for r in summary if r["strategy"] == strategy and r["speedup"]),
                      key=lambda r: r["speedup"])
        if not rows:
            continue
        style = {"marker": "*", "markersize": 12} if strategy == "full" else {"marker": "o"}
        style["color"] = COLORS.get(strategy)
        axis.errorbar([r["speedup"] for r in rows], [r["acc_mean"] for r in rows],
                      yerr=[r["acc_std"] for r in rows], label=strategy, capsize=3, **style)
        for row in rows:
            if strategy != "full":
                axis.annotate(f"{row['keep']:.1f}", (row["speedup"], row["acc_mean"]), fontsize=7,
                              xytext=(3, 3), textcoords="offset points")
    full = next((r for r in summary if r["strategy"] == "full"), None)
    if full:
        axis.axhline(full["acc_mean"] - TARGET_MARGIN_PT, color="gray", linestyle="--",
                     linewidth=1, label=f"full − {TARGET_MARGIN_PT} pt")
    axis.set_xlabel("wall-clock speed-up vs full data (x)")
    axis.set_ylabel("final test accuracy (%)")
    axis.set_title("Fashion-MNIST: accuracy vs speed-up (labels: keep ratio)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------- main

def cpu_has_fast_bf16(flags: set[str] | None = None, vendor: str | None = None) -> bool:
    """Whether bf16 autocast trains the benchmark's model faster than fp32 on this CPU, by what was
    measured (the quick benchmark's full-data run, or half an epoch of the full one):
    - AMX (Intel): ~2x faster than fp32 on an AMX Xeon.
    - AVX512-BF16 on Intel without AMX: slower, 15.5 s against 11.1 s for half an epoch on a 2-core
      Xeon (oneDNN converts to and from bf16 around each op).
    - AVX512-BF16 on AMD: faster, 11.2-12.8 s against 15.1-18.0 s (`fastprune bench --quick
      --strategies epsilon_greedy --amp bf16|off`, three times each) on a 2-core Zen 5 EPYC (family 26),
      whose 512-bit units run bf16 dot products natively. Zen 4 (family 25) is not measured."""
    flags = machine.cpu_flags() if flags is None else flags
    vendor = machine.cpu_vendor() if vendor is None else vendor
    return "amx_bf16" in flags or (vendor == "AuthenticAMD" and "avx512_bf16" in flags)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastprune bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def add_bench_command(subparsers) -> argparse.ArgumentParser:
    """Register ``fastprune bench`` on the CLI's subparsers."""
    parser = subparsers.add_parser("bench", help="benchmark every strategy against full-data training",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 12k training images, 4 epochs, keep 0.5, one seed")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES[1:], help="subset of strategies")
    parser.add_argument("--keeps", nargs="+", type=float, help="keep ratios (default by mode)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default by mode)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default by mode)")
    parser.add_argument("--train-limit", type=int, help="use the first N training images")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch + loader threads")
    parser.add_argument("--amp", default="bf16" if cpu_has_fast_bf16() else "auto",
                        choices=("auto", "bf16", "fp16", "off"),
                        help="autocast (default: bf16 where the CPU has AMX, or AVX512-BF16 on AMD; "
                             "else fp32 on the CPU)")
    parser.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=True,
                        help="flush denormal floats to zero on the CPU (measured: the full-data run "
                             "10 epochs in 142.6 s instead of 164.3 s, same accuracy)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC activations (faster with oneDNN on CPU and on CUDA)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fastprune-bench"),
                        help="where the converted stores go")
    parser.add_argument("--out", type=Path, help="result JSON (default: benchmarks/results/end_to_end[_quick].json)")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="keep the runs already in --out and do only the missing ones")
    parser.add_argument("--progress", action="store_true", help="a progress bar per epoch")


def _mode(args) -> dict:
    mode = dict(QUICK_MODE if args.quick else FULL_MODE)
    for key, value in (("strategies", args.strategies), ("keeps", args.keeps), ("seeds", args.seeds),
                       ("epochs", args.epochs), ("train_limit", args.train_limit)):
        if value is not None:
            mode[key] = tuple(value) if isinstance(value, list) else value
    return mode


def planned_runs(mode: dict) -> list[tuple[str, float, int, float]]:
    """(strategy, keep, seed, block) in run order: seed-major, then one block per keep ratio, each
    block opened by its own full-data baseline run.

    Why a baseline per block: this shared machine's speed drifts by 10-20% over minutes (the same
    full-data run measured 3.8k and 5.0k images/s ten minutes apart), so one baseline per seed,
    measured once at its start, biases every speed-up by wherever the machine happened to be
    then. Baselines spread over the whole benchmark sample the drift as the pruned runs do."""
    runs = []
    for seed in mode["seeds"]:
        for keep in mode["keeps"]:
            runs.append(("full", 1.0, seed, keep))
            runs += [(name, keep, seed, keep) for name in mode["strategies"]]
    return runs


def _run_key(row: dict) -> tuple[str, float, int, float]:
    """A run's place in planned_runs (rows written before blocks existed count as their keep's)."""
    return row["strategy"], row["keep"], row["seed"], row.get("block", row["keep"])


def missing_runs(mode: dict, runs: list[dict]) -> list[tuple[str, float, int, float]]:
    """The planned runs (in run order) that ``runs`` does not hold yet."""
    done = {_run_key(row) for row in runs}
    return [run for run in planned_runs(mode) if run not in done]


# What must be the same for runs of one result file to be compared: speed-ups divide wall-clocks
# of different runs, so they must come from the same kind of CPU and the same settings (the project's
# machines differ between sessions: an AMX Xeon trains this recipe in bf16 ~3x faster than an AVX2
# EPYC in fp32), and accuracies must come from the same recipe, model and epoch budget.
# The CPU's name alone is not enough: two Xeons of this project, both "Intel(R) Xeon(R) Processor",
# trained it in 16 s and 32 s per bf16 epoch, one with AMX and one without; two "AMD EPYC"s (an AVX2
# one and a Zen 5) in 436 s and 216 s per fp32 full-data run. A file written before cpu_id or
# cpu_features were recorded cannot show which CPU it came from, so it is not continued.
CONTINUE_MUST_MATCH = (("machine", "cpu"), ("machine", "cpu_id"), ("machine", "cpu_features"),
                       ("machine", "cores"), ("machine", "torch"), ("settings",), ("recipe",), ("model",),
                       ("mode", "epochs"), ("mode", "train_limit"))


def _field(document: dict, path: tuple[str, ...]):
    for key in path:
        document = (document or {}).get(key)
    return document


def check_can_continue(previous: dict, result: dict, out: Path) -> None:
    """Refuse ``--continue`` onto a result file measured on another machine or with other settings."""
    result = json.loads(json.dumps(result))  # as it will be stored: tuples become lists
    for path in CONTINUE_MUST_MATCH:
        if path[-1] not in (_field(previous, path[:-1]) or {}):
            raise SystemExit(f"--continue: {out} does not record {'.'.join(path)} (it was written by an "
                             f"older fastprune), so it cannot be shown to come from this machine and "
                             f"settings. Use another --out, or rerun without --continue.")
        old, new = _field(previous, path), _field(result, path)
        if old != new:
            raise SystemExit(f"--continue: {out} was measured with {'.'.join(path)} = {old!r}, this run has "
                             f"{new!r}; mixing them would compare unlike runs. Use another --out, or "
                             f"rerun without --continue.")


def remaining_time(elapsed: float, work_done: float, work_left: float) -> str:
    """"~N min left", extrapolating the seconds per unit of work so far (a run's work is its keep
    ratio, 1.0 for full data: static methods' scoring epochs and evaluation make it an estimate)."""
    if work_left <= 0:
        return "done"
    return f"~{elapsed / work_done * work_left / 60:.0f} min left"


def write_outputs(out: Path, result: dict) -> None:
    machine.write_json(out, result)
    if not result["summary"]:
        return
    stem = out.with_suffix("")
    Path(f"{stem}.md").write_text(_report(result))
    plot_curves(result["runs"], Path(f"{stem}_curves.png"))
    plot_frontier(result["summary"], Path(f"{stem}_frontier.png"))


def _completeness(result: dict) -> str:
    """A line saying the file is partial (the file is written after every run, so a benchmark
    stopped early leaves a report whose means cover fewer seeds than planned)."""
    missing = len(missing_runs(result["mode"], result["runs"]))
    if not missing:
        return ""
    planned = len(planned_runs(result["mode"]))
    return (f"**Partial: {planned - missing} of {planned} planned runs**; cells average the seeds done "
            "so far. Add the rest with the same command and `--continue`.\n\n")


def _total_time(runs: list[dict]) -> str:
    """The benchmark's own cost (its runs' training + evaluation, summed over sessions when it was
    continued): what "finishes within N hours" is judged by, since wall-clocks exclude evaluation."""
    hours = sum(run["wall_s"] + run["eval_s"] for run in runs) / 3600
    return f"{len(runs)} runs, {hours:.2f} h of training + evaluation in all.\n\n"


def _report(result: dict) -> str:
    machine = result["machine"]
    return (f"# End-to-end: Fashion-MNIST, {result['mode']['epochs']} epochs\n\n"
            f"`{result['command']}` — {result['date']}, {machine['cpu']}, {machine['cores']} cores, "
            f"torch {machine['torch']}, amp {result['settings']['amp']}.\n\n"
            f"{_completeness(result)}"
            f"{_total_time(result['runs'])}"
            f"{markdown_table(result['summary'])}\n\n"
            f"Accuracy % (mean ± std over seeds) / speed-up versus full data:\n\n"
            f"{pivot_table(result['summary'])}\n\n"
            f"Wall-clock = training time incl. loading, selection and scoring epochs; evaluation "
            f"excluded. Speed-up = mean wall-clock of all full-data baseline runs (one per keep block "
            f"and seed) / the strategy's mean wall-clock over seeds.\n")


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


def apply_process_settings(args: argparse.Namespace) -> None:
    """Apply the settings that act on the whole process (torch threads, denormal flushing); the
    held-out study scripts call it too, so their runs are timed like the benchmark's."""
    torch.set_num_threads(args.threads)
    # Late in training many activations/gradients become denormal, and x86 handles those in slow
    # microcode: without flushing, the same full-data epoch grew from 11.5 s to 24.5 s.
    torch.set_flush_denormal(args.flush_denormal)


def run(args: argparse.Namespace) -> int:
    apply_process_settings(args)
    mode = _mode(args)
    out = args.out or machine.RESULTS / ("end_to_end_quick.json" if args.quick else "end_to_end.json")
    stores = prepare_stores(args.workdir, mode["train_limit"])
    result = {"benchmark": "end_to_end", "command": machine.command_line(),
              "machine": machine.machine(), "date": machine.now(),
              "mode": {**mode, "quick": args.quick}, "recipe": RECIPE, "model": BENCHMARK_MODEL,
              "settings": {"amp": args.amp, "channels_last": args.channels_last, "threads": args.threads,
                           "flush_denormal": args.flush_denormal},
              "notes": "wall_s = training seconds incl. data loading, selection, score updates and "
                       "static scoring epochs; eval_s (per-epoch evaluation) is excluded from the "
                       "speed-up. Runs are seed-major, then one block per keep ratio opened by its own "
                       "full-data baseline run; speed-ups divide the mean wall_s of all baseline runs "
                       "by the strategy's mean wall_s.",
              "runs": [], "summary": []}
    if args.resume and out.exists():
        previous = json.loads(out.read_text())
        check_can_continue(previous, result, out)
        result["runs"] = previous["runs"]
    runs = result["runs"]
    todo = missing_runs(mode, runs)
    if todo:
        print(f"warm-up (untimed): {warm_up(stores, mode, args):.1f}s", flush=True)
    started, work = time.perf_counter(), [keep for _, keep, _, _ in todo]
    for number, (strategy, keep, seed, block) in enumerate(todo, 1):
        row = {**run_one(strategy, keep, seed, stores, mode, args), "block": block}
        runs.append(row)
        elapsed = time.perf_counter() - started
        eta = remaining_time(elapsed, sum(work[:number]), sum(work[number:]))
        result["summary"] = summarize(runs)
        write_outputs(out, result)  # after every run: a long benchmark can be inspected or continued
        print(f"[{number}/{len(todo)}] {strategy:>14} keep {keep:.1f} seed {seed}: "
              f"acc {row['final_acc']:.2f}%  wall {row['wall_s']:.1f}s  eval {row['eval_s']:.1f}s  "
              f"overhead {row['pruning_overhead_s']:.2f}s  (elapsed {elapsed:.0f}s, {eta})", flush=True)
    print()
    print(markdown_table(result["summary"]))
    print(f"\nwrote {out} (+ .md, _curves.png, _frontier.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
