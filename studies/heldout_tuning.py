"""Held-out check of the bandit strategies' defaults, without touching the test set.

The end-to-end benchmark reports test accuracy, so its numbers must not be used to choose a
strategy's hyperparameters. This study splits Fashion-MNIST's *training* set into 50k images to
train on and 10k held-out images to validate on (a fixed permutation), and trains the benchmark's
model and recipe (fastprune.train.RECIPE) with full data and with variants of
EpsilonGreedy and UCB at one keep ratio, over a few seeds. It prints a table (held-out accuracy
mean ± std, gap to full data, wall-clock) and writes JSON + markdown to studies/results/.

    python studies/heldout_tuning.py                         # the default variants, seeds 0 1
    python studies/heldout_tuning.py --variants ucb:c=0.5 epsilon_greedy:eps=0.1,decay=0.5
    python studies/heldout_tuning.py --variants epsilon_greedy --batch-size 256 --lr 0.2   # a recipe change
    python studies/heldout_tuning.py --variants ucb --epochs 20 --widths 16 32 64    # a smaller model
    python studies/heldout_tuning.py --variants epsilon_greedy full:epochs=5     # compute-matched full data

A variant is ``strategy[:option=value,...]``; ``balanced=1`` passes the training labels so every
class keeps the same fraction, ``epochs=E`` trains that variant for E epochs instead of
``--epochs`` (``full:epochs=5`` is full data on half the budget: the cost of a keep-0.5 run spent
on a shorter schedule instead of a subset), and ``keep=K`` keeps K instead of ``--keep``
(``epsilon_greedy:keep=0.24,final_full_epochs=1``: the same samples as keep 0.3 over 10 epochs,
one of them full); ``keep_schedule=0.1/0.2/.../1`` gives a kept fraction per epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fastprune.bench import machine, plan
from fastprune.bench.report import mean, std
from fastprune.bench.run import Settings, run_one, warm_up
from fastprune.errors import ConfigError
from fastprune.train import RECIPE

RESULTS = Path(__file__).resolve().parent / "results"

HELDOUT = 10_000
SPLIT_SEED = 20261123
DEFAULT_VARIANTS = ("epsilon_greedy", "epsilon_greedy:eps=0.1", "epsilon_greedy:balanced=1",
                    "ucb", "ucb:c=0.5", "ucb:balanced=1")


def write_markdown(out: Path, title: str, result: dict, table: str) -> None:
    """``out`` with suffix .md: the title, the command, date and CPU, then the table; says so."""
    out.with_suffix(".md").write_text(
        f"# {title}\n\n`{result['command']}` — {result['date']}, {result['machine']['cpu']}.\n\n{table}\n")
    print(f"\n{table}\n\nwrote {out} (+ .md)")


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) sample indices, sorted: a fixed random ``HELDOUT`` of ``n`` are held out."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[HELDOUT:]), np.sort(order[:HELDOUT])


def split_stores(workdir: Path, fit_limit: int | None = None) -> tuple[Path, Path, np.ndarray]:
    """Fashion-MNIST train split into (50k fit store, 10k held-out store); returns the fit labels.
    ``fit_limit`` keeps the first N fit images (a smaller training set, the same held-out split)."""
    from fastprune.convert import FASHION_MNIST_DIR, from_arrays
    from fastprune.convert.idx import find_idx_files, load_idx

    images, labels = load_idx(*find_idx_files(FASHION_MNIST_DIR, "train"))
    fit_part, held_part = split_indices(len(labels))
    fit_part = fit_part[:fit_limit]
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("fit", fit_part), ("heldout", held_part)):
        size = "" if name == "heldout" or fit_limit is None else f"-{len(part)}"
        path = workdir / f"fashion-mnist-train-{name}{size}-{SPLIT_SEED}.beton"
        if not path.exists():
            from_arrays(images[part], labels[part], path, progress=False)
        paths.append(path)
    return paths[0], paths[1], labels[fit_part]


def parse_variant(text: str) -> tuple[str, dict]:
    """``"ucb:c=0.5,decay=0.5"`` -> ("ucb", {"c": 0.5, "decay": 0.5})."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"variant {text!r}: expected option=value, got {item!r}")
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return name, options


def run_settings(options: dict, labels: np.ndarray, epochs: int, keep: float = 0.5) -> tuple[int, float, dict]:
    """(epochs, keep, strategy options) of a variant: its own ``epochs=`` and ``keep=`` if given,
    else ``epochs`` and ``keep``."""
    options = dict(options)
    own = options.pop("epochs", epochs)
    if isinstance(own, str) or not float(own).is_integer() or own < 1:
        raise SystemExit(f"epochs={own!r}: expected a positive whole number")
    own_keep = options.pop("keep", keep)
    if isinstance(own_keep, str) or not 0 < own_keep <= 1:
        raise SystemExit(f"keep={own_keep!r}: expected a fraction in (0, 1]")
    return int(own), float(own_keep), strategy_options(options, labels)


# What an earlier file's full-data runs must share with this run: the same training (else the
# accuracies differ for other reasons), the same kind of machine and device, precision included
# (else the speed-ups divide wall-clocks of unlike runs; as `fastprune bench --continue` requires).
FULL_FROM_MUST_MATCH = (("recipe",), ("model",), ("epochs",), ("split",), ("machine", "cpu"), ("machine", "cpu_id"),
                        ("machine", "cpu_features"), ("machine", "cores"), ("machine", "torch"), ("device",))
# Fields that files written before they existed lack (every such study ran on the CPU).
RECORDED_LATER = (("machine", "cpu_id"), ("machine", "cpu_features"), ("device",))


def full_runs_from(path: Path, result: dict, seeds) -> dict[int, dict]:
    """{seed: full-data run} from an earlier result file, refused unless it trained the same
    recipe, model, epochs and split on the same kind of machine and device (else its accuracies
    or its wall-clocks would not be comparable)."""
    earlier = json.loads(path.read_text())
    written = json.loads(json.dumps(result))  # as written: tuples become lists
    unrecorded = []
    for key in FULL_FROM_MUST_MATCH:
        old, new = plan._field(earlier, key), plan._field(written, key)
        if old is None and key in RECORDED_LATER:  # an older file: compared on what it does record
            unrecorded.append(".".join(key))
        elif old != new:
            raise SystemExit(f"--full-from {path}: its {'.'.join(key)} {old!r} differs from this run's {new!r}")
    if earlier.get("device") is None and (written.get("device") or {}).get("device") != "cpu":
        raise SystemExit(f"--full-from {path}: its runs predate device records and ran on the CPU; this run "
                         f"trains on {written['device']['device']}")
    if unrecorded:
        print(f"--full-from {path}: an older file, which does not record {', '.join(unrecorded)}: "
              "compared on the rest", file=sys.stderr)
    full = {run["seed"]: run for run in earlier["runs"] if run["variant"] == "full"}
    missing = [seed for seed in seeds if seed not in full]
    if missing:
        raise SystemExit(f"--full-from {path}: no full-data run for seeds {missing}")
    return {seed: {**full[seed], "from": str(path)} for seed in seeds}


def test_stores(workdir: Path) -> tuple[tuple[Path, Path], np.ndarray]:
    """((60k train store, 10k test store), train labels): the benchmark's data, for --final-test."""
    from fastprune.bench.run import prepare_stores
    from fastprune.convert import FASHION_MNIST_DIR
    from fastprune.convert.idx import find_idx_files, load_idx

    _, labels = load_idx(*find_idx_files(FASHION_MNIST_DIR, "train"))  # what prepare_stores converts
    return prepare_stores(workdir, None), labels


def strategy_options(options: dict, labels: np.ndarray) -> dict:
    options = dict(options)
    if options.pop("balanced", 0):
        options["labels"] = labels
    if "keep_schedule" in options:  # keep_schedule=0.1/0.2/1: one fraction per epoch
        options["keep_schedule"] = tuple(float(part) for part in str(options["keep_schedule"]).split("/"))
    return options


def summarize(runs: list[dict]) -> list[dict]:
    full = [r["final_acc"] for r in runs if r["variant"] == "full"]
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        accs = [r["final_acc"] for r in mine]
        rows.append({"variant": variant, "seeds": [r["seed"] for r in mine],
                     "acc_mean": mean(accs), "acc_std": std(accs),
                     "gap_pt": mean(accs) - mean(full) if full else None,
                     "wall_s": mean([r["wall_s"] for r in mine])})
    full_wall = next((row["wall_s"] for row in rows if row["variant"] == "full"), None)
    for row in rows:
        row["speedup"] = full_wall / row["wall_s"] if full_wall else None
    return rows


def markdown(rows: list[dict], evaluated_on: str = "held-out") -> str:
    # means here (fastprune bench reports medians): said in the header, so tables are not mixed up
    lines = [f"| variant | seeds | {evaluated_on} acc % (mean ± std) | gap to full pt | wall s (mean) | "
             "speed-up (ratio of means) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        gap = "–" if r["gap_pt"] is None else f"{r['gap_pt']:+.2f}"
        speedup = "–" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        accuracy = f"{r['acc_mean']:.2f}" + ("" if r["acc_std"] is None else f" ± {r['acc_std']:.2f}")  # 1 seed
        lines.append(f"| {r['variant']} | {len(r['seeds'])} | {accuracy} | {gap} | {r['wall_s']:.1f} | {speedup} |")
    return "\n".join(lines)


def applied_settings(study: str, **chosen) -> Settings:
    """Settings as `fastprune bench` runs on this machine, the device resolved and applied; CUDA
    asked for and missing ends ``study`` in one line, before any data is prepared."""
    try:
        settings = Settings(**chosen).resolved()
    except ConfigError as exc:
        raise SystemExit(f"{study}: {exc}") from None
    settings.apply()
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=RECIPE.epochs)
    parser.add_argument("--batch-size", type=int, default=RECIPE.batch_size,
                        help="a recipe change to study (applies to every run, full data included)")
    parser.add_argument("--lr", type=float, default=RECIPE.lr, help="peak learning rate, ditto")
    parser.add_argument("--widths", nargs="+", type=int, default=list(RECIPE.model.widths),
                        help="SmallResNet stage widths, a model change to study (every run)")
    parser.add_argument("--fit-limit", type=int, help="train on the first N of the 50k fit images "
                        "(a smaller training set, as the main job's former 12k-image preset had)")
    parser.add_argument("--eval-every", type=int, default=1, metavar="N",
                        help="evaluate every N-th epoch and the last (only the final accuracy is reported)")
    parser.add_argument("--final-test", action="store_true",
                        help="the one final measurement of settings chosen on the held-out split: train on all "
                             "60k training images, report test-set accuracy (never use it to choose)")
    parser.add_argument("--full-from", type=Path, metavar="JSON",
                        help="take the full-data runs from this earlier result of the same recipe, model, "
                             "epochs and split instead of training them again")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (CUDA when available, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fastprune-heldout"))
    parser.add_argument("--out", type=Path, default=RESULTS / "heldout_tuning.json")
    args = parser.parse_args(argv)
    recipe = RECIPE.replace(batch_size=args.batch_size, lr=args.lr, widths=tuple(args.widths))
    settings = applied_settings("heldout_tuning", eval_every=args.eval_every, device=args.device)
    if args.final_test:
        if args.fit_limit is not None:
            raise SystemExit("--final-test trains on all 60k training images: drop --fit-limit")
        stores, labels = test_stores(args.workdir)
    else:
        fit_store, held_store, labels = split_stores(args.workdir, args.fit_limit)
        stores = (fit_store, held_store)
    print(f"warm-up (untimed): {warm_up(stores, settings, recipe):.1f}s", flush=True)
    variants = [parse_variant(v) for v in args.variants]
    runs = []
    result = {"benchmark": "heldout_tuning", "command": machine.command_line(), "machine": machine.machine(),
              "device": machine.run_device(settings), "date": machine.now(), "recipe": recipe.training_json(), "model": recipe.model_json(), "epochs": args.epochs, "keep": args.keep,
              "split": ({"train": "Fashion-MNIST train (60k)", "evaluated_on": "Fashion-MNIST test (10k)"}
                        if args.final_test else
                        {"heldout": HELDOUT, "seed": SPLIT_SEED, "of": "Fashion-MNIST train (60k)",
                         "fit": len(labels)}),
              "runs": runs, "summary": []}
    reused = full_runs_from(args.full_from, result, args.seeds) if args.full_from else {}
    started = time.perf_counter()
    for seed in args.seeds:
        if seed in reused:
            runs.append(reused[seed])
        for label, (name, opts) in [("full", ("full", {})), *zip(args.variants, variants)]:
            if label == "full" and seed in reused:
                continue
            epochs, keep, strategy_opts = run_settings(opts, labels, args.epochs, 1.0 if name == "full" else args.keep)
            row = run_one(name, keep, seed, stores, settings, recipe=recipe.replace(epochs=epochs),
                          strategy_options=strategy_opts)
            runs.append({"variant": label, "epochs": epochs, "samples_seen": row["samples_seen"],
                         **{k: row[k] for k in ("strategy", "keep", "seed", "final_acc", "wall_s", "gpu_busy_pct",
                                                "curve")}})
            result["summary"] = summarize(runs)
            machine.write_json(args.out, result)
            print(f"{label:>32} seed {seed}: {'test' if args.final_test else 'held-out'} acc "
                  f"{row['final_acc']:.2f}%  wall {row['wall_s']:.1f}s  (elapsed {time.perf_counter() - started:.0f}s)",
                  flush=True)
    table = markdown(result["summary"], "test" if args.final_test else "held-out")
    data = ("Fashion-MNIST 60k train / 10k test (the final measurement)" if args.final_test
            else f"{len(labels) // 1000}k/10k split of Fashion-MNIST train")
    write_markdown(args.out, f"{'Test set' if args.final_test else 'Held-out tuning'}: keep {args.keep}, "
                             f"{args.epochs} epochs, batch {recipe.batch_size}, peak lr {recipe.lr}, "
                             f"widths {recipe.model.widths}, {data}", result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
