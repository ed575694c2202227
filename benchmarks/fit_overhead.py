"""fit's own host time per step: a training epoch through ``fastprune.train.fit`` against the same
epoch written as a bare loop (the README's few changed lines), same model, Loader, strategy and
optimizer, epochs interleaved (bare, fit, bare, fit, ...).

A small model makes each step cheap, so whatever ``fit`` adds per step (timing, deferred updates,
the loss bookkeeping, the scheduler hook) is a visible share of it: where the two epochs take the
same time, ``fit`` is not what keeps a launch-bound GPU waiting. Data: the Fashion-MNIST training
split (Debian's IDX files), converted once into a temp folder; EpsilonGreedy keep 0.5; a linear
model on the flattened 3x28x28 images; SGD; one loader thread and one torch thread.

    .venv/bin/python benchmarks/fit_overhead.py [--batch 512] [--epochs 6] [--repeats 3] [--tiny]

Prints a table; writes benchmarks/results/fit_overhead.json (see shared BENCHMARKS.md) and a
markdown next to it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import fastprune
from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown
from fastprune.convert import from_idx
from fastprune.loader import Normalize
from fastprune.train import fit


class Linear(torch.nn.Module):
    def __init__(self, pixels: int, classes: int = 10):
        super().__init__()
        self.fc = torch.nn.Linear(pixels, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def setup(store: Path, batch: int):
    """(model, optimizer, strategy, loader), the same for both ways of training."""
    torch.manual_seed(0)
    strategy = fastprune.EpsilonGreedy(len(fastprune.Store(store)), keep=0.5, seed=0)
    loader = fastprune.Loader(store, batch, sampler=strategy, transforms=[Normalize([0.5] * 3, [0.25] * 3)],
                              seed=0, threads=1)
    model = Linear(3 * 28 * 28)
    return model, torch.optim.SGD(model.parameters(), lr=0.01), strategy, loader


def bare_epochs(store: Path, batch: int, epochs: int) -> list[float]:
    model, optimizer, strategy, loader = setup(store, batch)
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    seconds = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        for batch_ in loader:
            logits = model(batch_.images)
            loss = criterion(logits, batch_.labels)
            strategy.update(batch_.indices, loss.detach(), logits.argmax(1) == batch_.labels)
            (loss * batch_.weights).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def fit_epochs(store: Path, batch: int, epochs: int) -> tuple[list[float], list[int]]:
    model, optimizer, strategy, loader = setup(store, batch)
    history = fit(model, loader, None, strategy, epochs=epochs, optimizer=optimizer, progress=False, log=None)
    return [r["train_s"] for r in history], [r["steps"] for r in history]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=6, help="per repetition; the first two are not timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fit_overhead.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.epochs, args.repeats = 2048, 3, 1
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = from_idx(None, Path(tmp) / "train.beton", progress=False)
        bare, through_fit, steps = [], [], []
        for _ in range(args.repeats):  # interleaved: both see the same machine
            bare += bare_epochs(store, args.batch, args.epochs)[2:]
            seconds, counted = fit_epochs(store, args.batch, args.epochs)
            through_fit += seconds[2:]
            steps += counted[2:]
    bare_s, fit_s = statistics.median(bare), statistics.median(through_fit)
    per_step = int(statistics.median(steps))
    result = {"benchmark": "fit_overhead", "command": command_line(), "machine": machine(), "date": now(),
              "batch": args.batch, "steps_per_epoch": per_step, "epochs_timed": len(bare),
              "bare_epoch_s_median": bare_s, "fit_epoch_s_median": fit_s, "fit_over_bare": fit_s / bare_s,
              "fit_extra_ms_per_step": (fit_s - bare_s) / per_step * 1e3,
              "bare_epoch_s_all": bare, "fit_epoch_s_all": through_fit}
    out = write_json(args.out, result)
    lines = ["# fit's own host time per step", "",
             f"{provenance(result)}: Fashion-MNIST, EpsilonGreedy keep 0.5, linear model, batch {args.batch} "
             f"({per_step} steps per pruned epoch), 1 loader and 1 torch thread; medians of {len(bare)} epochs each.",
             "", "| bare loop s/epoch | fit s/epoch | fit / bare | fit's extra ms per step |", "|---|---|---|---|",
             f"| {bare_s:.4f} | {fit_s:.4f} | {fit_s / bare_s:.3f} | {result['fit_extra_ms_per_step']:+.3f} |"]
    write_markdown(out, lines)
    return result


if __name__ == "__main__":
    main()
