"""End-to-end benchmark: wall-clock speed-up and accuracy of every pruning strategy versus full data.

Trains the same model with the same recipe (``fastprune.train.RECIPE``) on Fashion-MNIST converted
to a store, with full data and with every strategy at several keep ratios and seeds, and reports
final accuracy (mean ± std over seeds), training wall-clock, speed-up versus full data, the time to
reach full-data accuracy minus 0.5 pt, and the pruning overhead. Writes JSON (BENCHMARKS.md), a
markdown table and two PNG plots into benchmarks/results/.

    fastprune bench --quick        # a few minutes: subset, fewer epochs, keep 0.5
    fastprune bench                # the full benchmark: 63 runs, hours on a 2-core CPU
                                   # (bf16 where the CPU has it fast; times in docs/benchmarks.md)

(``python benchmarks/end_to_end.py`` is the same program.)

What "wall-clock" means here: the training time of a run, including data loading, selection,
score updates and any scoring epochs a static method needs (EL2N/Forgetting score during full-data
epochs of the same run, so those epochs are part of it). Per-epoch evaluation, which only the
benchmark needs, is timed separately (``eval_s``) and left out of the speed-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import MissingExtraError
from ..train.recipe import RECIPE, STRATEGIES
from . import machine, plan, plots, report
from .run import Settings, prepare_stores, run_one, warm_up


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
    defaults = Settings()
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 12k training images, 4 epochs, keep 0.5, one seed")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES[1:], help="subset of strategies")
    parser.add_argument("--keeps", nargs="+", type=float, help="keep ratios (default by mode)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default by mode)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default by mode)")
    parser.add_argument("--train-limit", type=int, help="use the first N training images")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch + loader threads")
    parser.add_argument("--amp", default=defaults.amp, choices=("auto", "bf16", "fp16", "off"),
                        help="autocast (default: bf16 where the CPU has AMX, or AVX512-BF16 on AMD; "
                             "else fp32 on the CPU)")
    parser.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=defaults.flush_denormal,
                        help="flush denormal floats to zero on the CPU (faster late in training, same "
                             "accuracy)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=defaults.channels_last,
                        help="NHWC activations (faster with oneDNN on CPU and on CUDA)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fastprune-bench"),
                        help="where the converted stores go")
    parser.add_argument("--out", type=Path, help="result JSON (default: benchmarks/results/end_to_end[_quick].json)")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="keep the runs already in --out and do only the missing ones")
    parser.add_argument("--progress", action="store_true", help="a progress bar per epoch")


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the runs ``--out`` does not hold yet, writing every output after each."""
    settings = Settings(amp=args.amp, channels_last=args.channels_last, threads=args.threads,
                        flush_denormal=args.flush_denormal, progress=args.progress)
    settings.apply()
    mode = plan.mode_for(args)
    out = args.out or machine.RESULTS / ("end_to_end_quick.json" if args.quick else "end_to_end.json")
    stores = prepare_stores(args.workdir, mode["train_limit"])
    result = plan.new_result(mode, settings, args.quick)
    if args.resume and out.exists():
        previous = json.loads(out.read_text())
        plan.check_can_continue(previous, result, out)
        result["runs"] = previous["runs"]
    todo = plan.missing_runs(mode, result["runs"])
    if todo:
        print(f"warm-up (untimed): {warm_up(stores, settings):.1f}s", flush=True)
    _run_all(todo, stores, settings, RECIPE.replace(epochs=mode["epochs"]), result, out)
    print()
    print(report.markdown_table(result["summary"]))
    skipped = write_outputs(out, result) if todo else None  # rewritten once more: was a plot skipped?
    print(f"\nwrote {out} (+ .md{'' if skipped else ', _curves.png, _frontier.png'})")
    if skipped:
        print(f"plots skipped: {skipped}")
    return 0


def _run_all(todo, stores, settings: Settings, recipe, result: dict, out: Path) -> None:
    runs = result["runs"]
    started, work = time.perf_counter(), [keep for _, keep, _, _ in todo]
    for number, (strategy, keep, seed, block) in enumerate(todo, 1):
        row = {**run_one(strategy, keep, seed, stores, settings, recipe=recipe), "block": block}
        runs.append(row)
        elapsed = time.perf_counter() - started
        eta = remaining_time(elapsed, sum(work[:number]), sum(work[number:]))
        result["summary"] = report.summarize(runs)
        write_outputs(out, result)  # after every run: a long benchmark can be inspected or continued
        print(f"[{number}/{len(todo)}] {strategy:>14} keep {keep:.1f} seed {seed}: "
              f"acc {row['final_acc']:.2f}%  wall {row['wall_s']:.1f}s  eval {row['eval_s']:.1f}s  "
              f"overhead {row['pruning_overhead_s']:.2f}s  (elapsed {elapsed:.0f}s, {eta})", flush=True)


def remaining_time(elapsed: float, work_done: float, work_left: float) -> str:
    """"~N min left", extrapolating the seconds per unit of work so far (a run's work is its keep
    ratio, 1.0 for full data: static methods' scoring epochs and evaluation make it an estimate)."""
    if work_left <= 0:
        return "done"
    return f"~{elapsed / work_done * work_left / 60:.0f} min left"


def write_outputs(out: Path, result: dict) -> str | None:
    """The result JSON, and once there is a summary, its markdown report and two plots beside it.
    Returns why the plots were skipped (matplotlib missing), or None."""
    machine.write_json(out, result)
    if not result["summary"]:
        return None
    stem = out.with_suffix("")
    Path(f"{stem}.md").write_text(report.render(result))
    try:
        plots.plot_curves(result["runs"], Path(f"{stem}_curves.png"))
        plots.plot_frontier(result["summary"], Path(f"{stem}_frontier.png"))
    except MissingExtraError as exc:
        return str(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
