"""Training speed on this CPU in bf16 autocast against fp32: the measurement behind ``--amp auto``
on a CPU (``fastprune.bench.machine.cpu_has_fast_bf16``, which picks bf16 with AMX, or with
AVX512-BF16 on AMD).

Full-data runs of the benchmark's recipe (``fastprune bench``'s model, batch, schedule, channels_last,
denormal flushing and threads) on the Fashion-MNIST training split, the two precisions alternating
and their order swapped every pair, so both see the same machine. Each run's first epoch is not
timed (numba compilation, oneDNN's kernel choice); the others' training seconds are. Validation runs
after the last epoch only, on the test split, and is reported, not timed.

    .venv/bin/python benchmarks/cpu_precision.py [--pairs 3] [--epochs 3] [--widths 32 64 128] [--tiny]

Prints a table; writes benchmarks/results/cpu_precision.json (see shared BENCHMARKS.md) and a
markdown next to it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from fastprune.bench.machine import (command_line, cpu_has_fast_bf16, machine, now, provenance, write_json,
                                     write_markdown)
from fastprune.bench.run import Settings, prepare_stores
from fastprune.train.recipe import RECIPE, run_recipe

PRECISIONS = ("bf16", "off")  # autocast dtype as fit's amp= spells it; "off" is fp32


def timed_run(recipe, amp: str, seed: int, stores, settings: Settings) -> dict:
    """One full-data run in ``amp``: its timed epochs' seconds and samples, and its final accuracy."""
    _, history = run_recipe(recipe, "full", 1.0, seed, stores, device="cpu", threads=settings.loader_threads,
                            amp=amp, channels_last=settings.channels_last, progress=False, log=None,
                            eval_every=recipe.epochs)
    timed = history[1:]
    return {"amp": amp, "seed": seed, "epoch_s": [record["train_s"] for record in timed],
            "samples": timed[0]["samples"], "val_acc": history[-1]["val_acc"]}


def summary(runs: list[dict]) -> dict:
    """Per precision: the median timed epoch and its images/s; per pair: fp32 seconds / bf16 seconds."""
    rows = {}
    for amp in PRECISIONS:
        epochs = [s for run in runs if run["amp"] == amp for s in run["epoch_s"]]
        median = statistics.median(epochs)
        rows[amp] = {"epoch_s_median": median, "img_s": runs[0]["samples"] / median,
                     "val_acc": [run["val_acc"] for run in runs if run["amp"] == amp]}
    by_pair = {}
    for run in runs:
        by_pair.setdefault(run["seed"], {})[run["amp"]] = statistics.median(run["epoch_s"])
    ratios = [pair["off"] / pair["bf16"] for pair in by_pair.values()]
    return {"precisions": rows, "fp32_over_bf16_paired": ratios,
            "fp32_over_bf16_median": statistics.median(ratios)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="bf16/fp32 pairs, each order swapped from the last")
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is not timed")
    parser.add_argument("--widths", type=int, nargs=3, default=list(RECIPE.model.widths),
                        help="SmallResNet widths (default: the benchmark's; the main job's quick run: 16 32 64)")
    parser.add_argument("--train-limit", type=int, default=None, help="the first N training images only")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_precision.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.pairs, args.epochs, args.widths, args.train_limit = 1, 2, [4, 8, 16], 2048
    if args.epochs < 2 or args.pairs < 1:
        parser.error("--epochs must be at least 2 (the first is not timed) and --pairs at least 1")
    recipe = RECIPE.replace(epochs=args.epochs, widths=tuple(args.widths))
    settings = Settings(device="cpu")
    runs = []
    with tempfile.TemporaryDirectory() as tmp, settings.applied():
        stores = prepare_stores(Path(tmp), args.train_limit)
        for pair in range(args.pairs):
            for amp in PRECISIONS if pair % 2 == 0 else PRECISIONS[::-1]:
                runs.append(timed_run(recipe, amp, pair, stores, settings))
                print(f"pair {pair} {amp}: {[round(s, 2) for s in runs[-1]['epoch_s']]} s per epoch", flush=True)
    result = {"benchmark": "cpu_precision", "command": command_line(), "machine": machine(), "date": now(),
              "rule_picks_bf16": cpu_has_fast_bf16(), "recipe": recipe.training_json(),
              "model": recipe.model_json(), "threads": settings.threads, "train_limit": args.train_limit,
              **summary(runs), "runs": runs}
    write_markdown(write_json(args.out, result), report(result))
    return result


def report(result: dict) -> list[str]:
    rows, ratios = result["precisions"], result["fp32_over_bf16_paired"]
    faster = "bf16" if result["fp32_over_bf16_median"] > 1 else "fp32"
    picks = "bf16" if result["rule_picks_bf16"] else "fp32"
    agrees = "agrees" if picks == faster else "DISAGREES"
    lines = ["# Training in bf16 autocast vs fp32 on this CPU", "",
             f"{provenance(result)}; CPU {result['machine']['cpu_id']}, features "
             f"{', '.join(result['machine']['cpu_features']) or 'none'}.",
             f"SmallResNet{tuple(result['model']['widths'])}, batch {result['recipe']['batch_size']}, "
             f"full data ({result['runs'][0]['samples']:,} images per epoch), "
             f"{len(ratios)} pairs of runs; epochs after each run's first timed, training only.", "",
             "| precision | epoch s (median) | img/s | test acc % after the last epoch |", "|---|---|---|---|"]
    for amp in PRECISIONS:
        row = rows[amp]
        accuracy = ", ".join(f"{a:.2f}" for a in row["val_acc"])
        lines.append(f"| {'fp32' if amp == 'off' else amp} | {row['epoch_s_median']:.2f} | {row['img_s']:,.0f} | "
                     f"{accuracy} |")
    lines += ["", f"fp32 / bf16 epoch time, paired: median {result['fp32_over_bf16_median']:.2f}x "
                  f"(pairs {', '.join(f'{r:.2f}' for r in ratios)}): {faster} is faster here. "
                  f"`--amp auto` picks {picks} on this CPU: it {agrees} with this measurement."]
    return lines


if __name__ == "__main__":
    main()
