"""Does a tiny last batch hurt? Plain batches (full ones + the remainder) versus even batches.

A pruned epoch's size follows the keep ratio, so its remainder modulo the batch size can be a
handful of samples. This study trains the benchmark's model and recipe on the held-out split of
heldout_tuning.py (50k fit / 10k held-out of Fashion-MNIST *train*; the test set is not used)
with UniformRandom at a keep ratio chosen so that every epoch ends on a 16-sample batch
(34,832 = 68 x 512 + 16), once with plain and once with even batches, over a few seeds. It
prints the held-out accuracy after every epoch and writes JSON + markdown to studies/results/.

    python studies/even_batches.py               # seeds 0 1, about 20 min on 2 cores (fp32)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastprune.bench import machine
from fastprune.bench.report import mean
from fastprune.bench.run import run_one, warm_up
from fastprune.train import RECIPE

# the study beside this one (this script's folder is on sys.path): the same split and report
from heldout_tuning import RESULTS, applied_settings, split_stores, write_markdown

REMAINDER = 16


def keep_with_remainder(num_samples: int, batch_size: int, remainder: int) -> float:
    """A keep ratio whose subset, round(keep * N), is the largest ``k * batch_size + remainder``
    not above 0.7 N (the benchmark's largest keep)."""
    kept = (int(0.7 * num_samples) - remainder) // batch_size * batch_size + remainder
    return kept / num_samples


def markdown(runs: list[dict]) -> str:
    lines = ["| batches | seed | held-out acc % after each epoch | final |", "|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['batches']} | {r['seed']} | {' '.join(f'{a:.1f}' for _, a in r['curve'])} | "
                     f"{r['final_acc']:.2f} |")
    for batches in dict.fromkeys(r["batches"] for r in runs):
        final = mean([r["final_acc"] for r in runs if r["batches"] == batches])
        lines.append(f"| {batches} | mean | | {final:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (CUDA when available, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fastprune-heldout"))
    parser.add_argument("--out", type=Path, default=RESULTS / "even_batches.json")
    args = parser.parse_args(argv)
    settings = applied_settings("even_batches", device=args.device)
    fit_store, held_store, _ = split_stores(args.workdir)
    stores = (fit_store, held_store)
    from fastprune.store.reader import Store

    with Store(fit_store) as store:
        keep = keep_with_remainder(len(store), RECIPE.batch_size, REMAINDER)
    print(f"warm-up (untimed): {warm_up(stores, settings):.1f}s; keep {keep}", flush=True)
    runs = []
    result = {"benchmark": "even_batches", "command": machine.command_line(), "machine": machine.machine(),
              "device": machine.run_device(settings), "date": machine.now(), "recipe": RECIPE.training_json(),
              "keep": keep, "remainder": REMAINDER, "runs": runs}
    for seed in args.seeds:
        for even in (False, True):
            row = run_one("uniform_random", keep, seed, stores, settings, recipe=RECIPE.replace(even_batches=even))
            runs.append({"batches": "even" if even else "plain",
                         **{k: row[k] for k in ("keep", "seed", "final_acc", "wall_s", "curve")}})
            machine.write_json(args.out, result)
            print(f"{runs[-1]['batches']:>5} seed {seed}: held-out acc {row['final_acc']:.2f}% "
                  f"(epochs: {' '.join(f'{a:.1f}' for _, a in row['curve'])})", flush=True)
    table = markdown(runs)
    write_markdown(args.out, f"Plain vs even batches: uniform keep {keep:.5f} (every epoch ends on a "
                             f"{REMAINDER}-sample batch when plain), held-out split", result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
