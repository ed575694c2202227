"""End-to-end accuracy, sharded vs replicated score tables (issue 36), on gloo ranks of one machine.

Fashion-MNIST (the real IDX files), an MLP (784-256-10) under DDP over gloo, EpsilonGreedy
(keep 0.5, eps 0.2) driving a PrunedSampler, ``--world`` ranks, ``--epochs`` epochs, for each
seed of ``--seeds`` in each mode: ``auto`` (replicated: every rank's update all-gathered),
``sharded`` (each rank selects and scores its own shard, no collective for pruning) and
``sharded-compact`` (sharded, with the smallest table: ``score_dtype="bfloat16"``,
``track_kept=False``). Same seeds for model init, sampler and strategy in both modes. Test accuracy on the
10k test split after the last epoch, as measured by rank 0.

    .venv/bin/python benchmarks/sharded_accuracy.py [--world 2] [--epochs 6] [--seeds 0 1 2 3] [--tiny]

Prints a table; writes benchmarks/results/sharded_accuracy.json and a markdown next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # run_ranks: the gloo helper the distributed tests use
from test_prune_distributed import run_ranks  # noqa: E402


def load(samples):
    from fastprune.convert import FASHION_MNIST_DIR, read_idx

    def split(kind):
        x = read_idx(Path(FASHION_MNIST_DIR) / f"{kind}-images-idx3-ubyte.gz", 3)
        y = read_idx(Path(FASHION_MNIST_DIR) / f"{kind}-labels-idx1-ubyte.gz", 1)
        return (torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0),
                torch.from_numpy(y.astype(np.int64)))

    (x, y), (tx, ty) = split("train"), split("t10k")
    return x[:samples], y[:samples], tx, ty


#: mode -> the strategy's options
MODES = {"auto": {"distributed": "auto"}, "sharded": {"distributed": "sharded"},
         "sharded-compact": {"distributed": "sharded", "score_dtype": "bfloat16", "track_kept": False}}


def worker(rank, mode, seed, epochs, samples, batch, out):
    from fastprune.prune import EpsilonGreedy, PrunedSampler

    torch.set_num_threads(1)
    x, y, tx, ty = load(samples)
    torch.manual_seed(seed)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = EpsilonGreedy(len(x), keep=0.5, eps=0.2, seed=seed, **MODES[mode])
    sampler = PrunedSampler(strategy, seed=seed)
    started, steps = time.perf_counter(), 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        for ids in order.split(batch):
            loss = torch.nn.functional.cross_entropy(model(x[ids]), y[ids], reduction="none")
            strategy.update(ids, loss.detach())
            optimizer.zero_grad()
            loss.mean().backward()
            optimizer.step()
            steps += 1
    wall = time.perf_counter() - started
    if rank == 0:
        with torch.no_grad():
            accuracy = float((model(tx).argmax(1) == ty).float().mean()) * 100
        Path(out).write_text(json.dumps({"mode": mode, "seed": seed, "test_acc": accuracy, "wall_s": wall,
                                         "steps_per_rank": steps, "table_rows_rank0": strategy.table.num_samples}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--batch", type=int, default=128, help="per rank")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/sharded_accuracy.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.epochs, args.seeds, args.samples = 2, [0], 4000
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for mode in args.modes:
                out = Path(tmp) / f"{mode}{seed}.json"
                run_ranks(worker, mode, seed, args.epochs, args.samples, args.batch, str(out), world=args.world)
                runs.append(json.loads(out.read_text()))
                r = runs[-1]
                print(f"seed {seed} {('replicated' if mode == 'auto' else mode):15s}: test acc {r['test_acc']:.2f}% "
                      f"in {r['wall_s']:.1f} s, {r['steps_per_rank']} steps per rank", flush=True)
    summary = []
    for mode in args.modes:
        acc = [r["test_acc"] for r in runs if r["mode"] == mode]
        summary.append({"mode": "replicated" if mode == "auto" else mode, "acc_mean": statistics.mean(acc),
                        "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0, "runs": len(acc)})
    diffs = {mode: [s["test_acc"] - r["test_acc"] for r in runs if r["mode"] == "auto"
                    for s in runs if s["mode"] == mode and s["seed"] == r["seed"]]
             for mode in args.modes if mode != "auto"}
    result = {"benchmark": "sharded_accuracy", "command": command_line(), "machine": machine(), "date": now(),
              "world": args.world, "epochs": args.epochs, "samples": args.samples, "batch_per_rank": args.batch,
              "strategy": "epsilon_greedy keep 0.5 eps 0.2", "runs": runs, "summary": summary,
              "sharded_minus_replicated_pt": diffs.get("sharded", []),
              "minus_replicated_pt": diffs}
    out = write_json(Path(args.out), result)
    lines = ["# Sharded vs replicated score tables: end-to-end accuracy", "",
             f"{provenance(result)}: "
             f"Fashion-MNIST ({args.samples} training samples), MLP 784-256-10, DDP over gloo, {args.world} ranks, "
             f"{args.epochs} epochs, EpsilonGreedy keep 0.5 eps 0.2, batch {args.batch} per rank.", "",
             "| mode | test acc % (mean +- sd) | runs |", "|---|---|---|"]
    lines += [f"| {s['mode']} | {s['acc_mean']:.2f} +- {s['acc_std']:.2f} | {s['runs']} |" for s in summary]
    lines += [""] + [f"Per seed, {mode} minus replicated (points): " + ", ".join(f"{d:+.2f}" for d in values)
                     for mode, values in diffs.items()]
    write_markdown(out, lines)
    return result


if __name__ == "__main__":
    main()
