"""End-to-end benchmark: wall-clock speed-up and accuracy of every pruning strategy versus full data.

Trains the same model with the same recipe (``fastprune.train.RECIPE``) on Fashion-MNIST converted
to a store, with full data and with every strategy at several keep ratios and seeds, and reports
final accuracy (mean ± std over seeds), training wall-clock, speed-up versus full data, the time to
reach full-data accuracy minus 0.5 pt, and the pruning overhead. Writes a JSON result (the
machine, recipe and every run) where --out says, and a markdown table and two PNG plots beside it.

    fastprune bench --quick        # ~5 min on 2 cores: the quick preset (QUICK_RECIPE's half-width
                                   # model, keep 0.5, one seed, the two bandits)
    fastprune bench                # the full benchmark: 63 runs, hours on a 2-core CPU
                                   # (bf16 where the CPU has it fast; times: docs/benchmarks.md
                                   # in the source repository)
    fastprune bench --train my-train.beton --val my-val.beton --crop 64 --model mymodels:make \\
                    --strategies epsilon_greedy ucb --keeps 0.5 --epochs 10    # your data and model

With --train/--val the benchmark runs on your stores (classes and normalization read off them, as
``fastprune train`` does); ``fastprune.bench.compare`` is the same comparison from Python.

What "wall-clock" means here: the training time of a run, including data loading, selection,
score updates and any scoring epochs a static method needs (EL2N/Forgetting score during full-data
epochs of the same run, so those epochs are part of it). Per-epoch evaluation, which only the
benchmark needs, is timed separately (``eval_s``) and left out of the speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path

from ..cli import fraction, positive_int, seed
from .._outputs import check_distinct, check_output_file, written_atomically
from ..errors import ConfigError, MissingExtraError, UsageError
from ..train.cli import (HelpWithDefaults, add_device_arguments, add_recipe_arguments, add_visibility_arguments,
                         check_outputs, check_visibility_arguments, describe_device, out_of_memory_named,
                         recipe_from_args)
from ..train.data import check_classes
from ..train.device import process_state_kept, resolve_device, run_amp
from ..train.loop import save_csv
from ..train.recipe import STRATEGIES, describe_recipe, describe_recipe_data, recipe_warnings
from . import machine, plan, plots, report
from .run import Settings, architecture, prepare_stores, run_name, run_one, warm_up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastprune bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def add_bench_command(subparsers) -> argparse.ArgumentParser:
    """Register ``fastprune bench`` on the CLI's subparsers."""
    parser = subparsers.add_parser("bench", help="benchmark every strategy against full-data training",
                                   description=__doc__, formatter_class=HelpWithDefaults)
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument("--quick", action="store_true",
                        help="quick run (the main job's): the full benchmark with a half-width model "
                             "(--width 16), keep 0.5, one seed, the two bandits")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES[1:],
                        help="subset of strategies (default: all; --quick: epsilon_greedy ucb)")
    parser.add_argument("--keeps", nargs="+", type=fraction,
                        help=f"keep ratios (default: {_listed(plan.FULL_MODE['keeps'])}; --quick: "
                             f"{_listed(plan.QUICK_MODE['keeps'])})")
    parser.add_argument("--seeds", nargs="+", type=seed,
                        help=f"seeds (default: {_listed(plan.FULL_MODE['seeds'])}; --quick: "
                             f"{_listed(plan.QUICK_MODE['seeds'])})")
    parser.add_argument("--epochs", type=positive_int,
                        help=f"epochs per run (default: {plan.FULL_MODE['epochs']}; --quick: "
                             f"{plan.QUICK_MODE['epochs']})")
    parser.add_argument("--train-limit", type=positive_int, help="use the first N training images")
    parser.add_argument("--eval-every", type=positive_int, metavar="N",
                        help="evaluate every N-th epoch and the last (default: 1, every epoch); "
                             "evaluation is left out of the speed-up either way")
    parser.add_argument("--threads", type=positive_int, default=defaults.threads,
                        help="torch threads, and on the CPU the loaders' (on a GPU they take their own default); "
                             "default: the CPUs this process may use (affinity, capped by a container's CPU quota)")
    add_device_arguments(parser)  # --device, --amp: as `fastprune train` takes them
    parser.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=defaults.flush_denormal,
                        help="flush denormal floats to zero on the CPU (faster late in training, same "
                             "accuracy)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=defaults.channels_last,
                        help="NHWC activations (faster with oneDNN on CPU and on CUDA)")
    parser.add_argument("--train", type=Path, metavar="STORE",
                        help="your training store (default: Fashion-MNIST, converted into --workdir)")
    parser.add_argument("--val", type=Path, metavar="STORE", help="your validation store (with --train)")
    parser.add_argument("--workdir", type=Path, default=default_workdir(),
                        help="where the converted Fashion-MNIST stores go (default: fastprune/bench in your "
                             "cache folder, $XDG_CACHE_HOME or ~/.cache: %(default)s)")
    parser.add_argument("--out", type=Path, help="result JSON, relative to the current folder (default: "
                        "benchmarks/results/end_to_end[_quick].json; with --train, bench_<train's name>.json)")
    existing = parser.add_mutually_exclusive_group()  # both at once: which of the two was meant?
    existing.add_argument("--continue", dest="resume", action="store_true",
                          help="keep the runs already in --out and do only the missing ones")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an existing --out (without it or --continue, an existing --out is refused)")
    parser.add_argument("--progress", action="store_true", help="a progress bar per epoch")
    add_visibility_arguments(parser, per_run=True)  # --tensorboard: a folder per run; --kept-grid: a PNG per pruned run
    add_recipe_arguments(parser)
    parser.set_defaults(width=None)  # the mode's: --quick trains the narrower QUICK_RECIPE
    _action(parser, "width").help += (f" (default: {plan.base_recipe(False).model.widths[0]}; --quick: "
                                      f"{plan.base_recipe(True).model.widths[0]})")


def _listed(values) -> str:
    return " ".join(f"{value:g}" for value in values)


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(action for action in parser._actions if action.dest == dest)


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the runs ``--out`` does not hold yet, writing every output after each. The process's
    threads, denormal flushing and random streams are put back after (as compare() does)."""
    with process_state_kept():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    settings = Settings(amp=args.amp, channels_last=args.channels_last, threads=args.threads,
                        flush_denormal=args.flush_denormal, progress=args.progress, device=args.device,
                        compile=args.compile)
    settings = settings.resolved()  # before any work: CUDA asked for and missing is one line
    settings.apply()
    mode = plan.mode_for(args)
    check_visibility_arguments(args)
    if (args.train is None) != (args.val is None):
        raise UsageError("give both --train and --val (or neither, for Fashion-MNIST)")
    out = args.out or default_out_of(args)
    check_outputs(args, {"--out": out})
    check_replaceable(out, args.resume, args.overwrite or _REPLACE_HINT)  # before the stores are converted
    if args.tensorboard is not None and not (args.resume or args.overwrite):
        from ..train.tensorboard import check_fresh_folder

        check_fresh_folder([args.tensorboard / run_name(name, keep, seed) for name, keep, seed, _ in
                            plan.planned_runs(mode)], "--tensorboard", "--continue or --overwrite (each run "
                           "replaces its own folder's events)")
    if args.train is not None:  # before the plan is printed: a store of targets, not classes, stops here
        check_classes(args.train, args.val, args.label_field)
    recipe = recipe_for(args, mode)
    note = report.scale_note(mode, recipe, args.quick, own_data=args.train is not None)
    print(note, flush=True)  # up front: a quick run must not be read as the benchmark's result
    print(report.plan_line(mode), flush=True)
    print(describe_recipe(recipe), flush=True)
    if args.train is not None:
        stores = (args.train, args.val)
    else:  # --train-limit can make the built-in data as small as a user's
        stores = prepare_stores(args.workdir, mode["train_limit"])
    for warning in recipe_warnings(recipe, stores[0], min(mode["keeps"]), keep_option="--keeps", val_store=stores[1]):
        print(warning, flush=True)  # on stdout with the recipe: stderr carries only the one-line errors
    with out_of_memory_named(settings.device, recipe.batch_size):
        result = execute(mode, settings, recipe, stores, out, quick=args.quick, resume=args.resume,
                         overwrite=args.overwrite or _REPLACE_HINT,
                         built_in=args.train is None, log=functools.partial(print, flush=True),
                         tensorboard=args.tensorboard, kept_grid=args.kept_grid)
    print()
    print(report.markdown_table(result["summary"]))
    for caveat in report.caveats(result["runs"]):
        print(caveat)
    skipped, stem = _plots_unavailable(), out.with_suffix("")
    print(f"\nwrote {out}, {stem}.md, {stem}_epochs.csv")
    print(f"plots skipped: {skipped}" if skipped else f"plots: {stem}_curves.png, {stem}_frontier.png")
    # of the file's runs: a narrower --continue keeps earlier seeds, which the summary averages
    final_note = report.scale_note(result["mode"], recipe, args.quick, own_data=args.train is not None)
    print(report.verdict(result["summary"], final_note))
    return 0


def default_workdir() -> Path:
    """The built-in stores' folder: this user's cache (a fixed folder in /tmp, the default before,
    belonged to whichever user made it first, and the next user's bench failed on it)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fastprune" / "bench"


def default_out_of(args: argparse.Namespace) -> Path:
    """Where the results go without --out: beside the user's data, or the repository's results."""
    if args.train is not None:
        return Path(f"bench_{args.train.stem}.json")
    return machine.RESULTS / ("end_to_end_quick.json" if args.quick else "end_to_end.json")


def recipe_for(args: argparse.Namespace, mode: dict):
    """The recipe the command line describes, for ``mode``'s epochs; without --width, the mode's
    (``--quick``: QUICK_RECIPE's half width)."""
    width = plan.base_recipe(args.quick).model.widths[0] if args.width is None else args.width
    return recipe_from_args(argparse.Namespace(**{**vars(args), "width": width}), mode["epochs"])


_REPLACE_HINT = "add --continue to run only the missing runs, --overwrite to replace it, or give another --out"


def execute(mode: dict, settings: Settings, recipe, stores, out: Path | None, *, quick: bool = False,
            resume: bool = False, overwrite: bool | str = False, built_in: bool = False, log=None,
            tensorboard=None, kept_grid=None) -> dict:
    """Run the runs of ``mode`` (see plan.planned_runs) that ``out`` does not hold yet (all of them
    without ``resume``) on ``stores`` (train, val) with ``recipe``; return the result document,
    written to ``out`` (None: not written) after every run. An existing ``out`` is replaced only
    with ``overwrite=True`` (a string: what the refusal tells the user to do). ``fastprune bench``
    and :func:`fastprune.bench.compare` both run through here. ``tensorboard``, ``kept_grid``: see
    :func:`~fastprune.bench.run.run_one`."""
    settings = dataclasses.replace(settings.resolved(), eval_every=mode.get("eval_every", 1))
    if out is not None:  # before the stores' statistics (minutes for photos)
        check_result_files(out, stores)
        check_replaceable(out, resume, overwrite)
    data = describe_recipe_data(recipe, stores)  # checked once, before any run, for all of them
    names = [plan.BUILT_IN_DATA if built_in else str(Path(path).resolve()) for path in stores]
    identities = [None if built_in else _identity(path) for path in stores]  # a store replaced at its path
    result = plan.new_result(mode, settings, quick, recipe, {"train": names[0], "val": names[1],
                                                             "train_identity": identities[0],
                                                             "val_identity": identities[1], **data.json()})
    result["architecture"], result["model_code"] = architecture(recipe, data)  # what --model actually built
    if log:
        device = resolve_device(settings.device)
        precision = run_amp(device, settings.amp)
        log(f"training on {describe_device(device)}, {'fp32' if precision == 'off' else precision}")
    if resume and out is not None and out.exists():
        previous = _previous_result(out)
        plan.check_can_continue(previous, result, out)
        result["mode"] = {**plan.merged_mode(previous, mode), "quick": result["mode"]["quick"]}
        # this session's command and date head the file; the earlier sessions' are kept
        result["earlier_sessions"] = [*previous.get("earlier_sessions", []),
                                      {"command": previous.get("command"), "date": previous.get("date")}]
        result["runs"] = previous["runs"]
        result["summary"] = report.summarize(result["runs"])
    todo = plan.missing_runs(mode, result["runs"])
    if todo:
        seconds = warm_up(stores, settings, recipe, data)
        if log:
            log(f"warm-up (untimed): {seconds:.1f}s")
    elif resume and out is not None and out.exists():
        # A session stopped after its last run's JSON (Ctrl-C or a full disk while plotting) left
        # the report, CSV and plots of fewer runs, which no later --continue would redo: made again
        write_companions(out, {**previous, "summary": report.summarize(previous["runs"])})
    _run_all(todo, stores, settings, recipe, data, result, out, log, tensorboard=tensorboard, kept_grid=kept_grid)
    return result


def check_replaceable(out: Path, resume: bool, overwrite: bool | str) -> None:
    """An existing ``out`` is continued (``resume``) or replaced with ``overwrite=True`` only (a
    string: what the refusal tells the user to do): hours of runs, gone at the first write."""
    if out.exists() and not resume and overwrite is not True:
        raise ConfigError(f"{out} exists{_holding(out)}; {overwrite or 'pass overwrite=True to replace it'}")


def _holding(out: Path) -> str:
    """" (a result of 6 runs, 2026-12-06T01:02:03)" for a result file, "" for anything else."""
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
        return f" (a result of {len(previous['runs'])} runs, {previous['date']})"
    except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError):
        return ""


def _identity(path) -> str:
    """The store's content identity (size, sample count, checksums: store_identity)."""
    from ..store.checksums import store_identity
    from ..store.reader import Store

    with Store(path) as store:
        return store_identity(store)


def _previous_result(out: Path) -> dict:
    """The result document --continue adds to, or a one-line ConfigError (a damaged file gave a
    JSONDecodeError traceback)."""
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--continue: {out} is not a result file (not JSON: {exc}); move it away or "
                          "drop --continue") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("runs"), list):
        raise ConfigError(f"--continue: {out} is not a fastprune bench result (no list of runs)")
    return previous


def _run_all(todo, stores, settings: Settings, recipe, data, result: dict, out: Path | None, log, *,
             tensorboard=None, kept_grid=None) -> None:
    runs = result["runs"]
    started, work = time.perf_counter(), [keep for _, keep, _, _ in todo]
    for number, (strategy, keep, seed, block) in enumerate(todo, 1):
        row = {**run_one(strategy, keep, seed, stores, settings, recipe=recipe, data=data, tensorboard=tensorboard,
                         kept_grid=kept_grid), "block": block}
        runs.append(row)
        elapsed = time.perf_counter() - started
        eta = remaining_time(elapsed, sum(work[:number]), sum(work[number:]))
        result["summary"] = report.summarize(runs)
        if out is not None:
            write_outputs(out, result)  # after every run: a long benchmark can be inspected or continued
        if log:
            log(f"[{number}/{len(todo)}] {strategy:>14} keep {report.keep_label(keep)} seed {seed}: "
                f"acc {row['final_acc']:.2f}%  wall {row['wall_s']:.1f}s  eval {row['eval_s']:.1f}s  "
                f"overhead {row['pruning_overhead_s']:.2f}s{_busy(row)}  (elapsed {elapsed:.0f}s, {eta})")


def _busy(row: dict) -> str:
    return "" if row.get("gpu_busy_pct") is None else f"  GPU busy {row['gpu_busy_pct']:.0f}%"


def remaining_time(elapsed: float, work_done: float, work_left: float) -> str:
    """"~N min left", extrapolating the seconds per unit of work so far (a run's work is its keep
    ratio, 1.0 for full data: static methods' scoring epochs and evaluation make it an estimate)."""
    if work_left <= 0:
        return "done"
    return f"~{elapsed / work_done * work_left / 60:.0f} min left"


def companion_files(out: Path) -> dict[str, Path]:
    """The files written beside the result JSON ``out``: its markdown report, epochs CSV, plots."""
    stem = Path(out).with_suffix("")
    return {"report": Path(f"{stem}.md"), "epochs CSV": Path(f"{stem}_epochs.csv"),
            "curves plot": Path(f"{stem}_curves.png"), "frontier plot": Path(f"{stem}_frontier.png")}


def check_result_files(out: Path, stores) -> None:
    """``out`` and the files beside it can be written, none is a store, and none is another:
    ``--out r.md`` was overwritten by its own report."""
    files = {"--out": out, **{f"--out's {what}": path for what, path in companion_files(out).items()}}
    for what, path in files.items():
        check_output_file(path, what, stores, makes_folders=True)
    check_distinct(files)


def write_outputs(out: Path, result: dict) -> str | None:
    """The result JSON, and once there is a summary, its companion files (:func:`write_companions`).
    Returns why the plots were skipped (matplotlib missing), or None."""
    machine.write_json(out, result)
    return write_companions(out, result)


def write_companions(out: Path, result: dict) -> str | None:
    """The markdown report, a CSV of every run's epochs and two plots beside ``out``, once the
    result has a summary. Returns why the plots were skipped (matplotlib missing), or None."""
    if not result["summary"]:
        return None
    files, name = companion_files(out), plan.data_name(result)
    with written_atomically(files["report"]) as file:
        file.write(report.render(result))
    # runs of result files from before per-epoch histories were kept have none: no rows for them
    rows = [{"strategy": run["strategy"], "keep": run["keep"], "seed": run["seed"], **record}
            for run in result["runs"] for record in run.get("history", [])]
    save_csv(files["epochs CSV"], rows)
    try:
        plots.plot_curves(result["runs"], files["curves plot"], name, plan.evaluated_on(result))
        plots.plot_frontier(result["summary"], files["frontier plot"], name, plan.evaluated_on(result))
    except MissingExtraError as exc:
        return str(exc)
    return None


def _plots_unavailable() -> str | None:
    """Why no plots were written (matplotlib missing), or None."""
    try:
        plots.pyplot()
    except MissingExtraError as exc:
        return str(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
