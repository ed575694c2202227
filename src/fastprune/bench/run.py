"""Running the end-to-end benchmark: its data, how runs execute on this machine (:class:`Settings`),
and one timed run of the recipe (:func:`run_one`). The studies under studies/ run through here too,
so their runs are timed like the benchmark's."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..train.data import DataSpec
from ..train.recipe import RECIPE, Recipe, run_recipe
from .machine import cpu_has_fast_bf16


def _default_amp() -> str:
    return "bf16" if cpu_has_fast_bf16() else "auto"


@dataclass(frozen=True)
class Settings:
    """How the runs execute on this machine (not what they learn, which is the recipe); a result
    file records them, and ``--continue`` requires the same. The defaults are ``fastprune bench``'s."""

    amp: str = field(default_factory=_default_amp)  # bf16 where it is fast on this CPU; else fp32 on CPU
    channels_last: bool = True  # NHWC activations: faster with oneDNN on CPU and on CUDA
    threads: int = field(default_factory=os.cpu_count)
    # Late in training many activations and gradients become denormal, and x86 handles those in
    # slow microcode: flushing them to zero keeps late epochs as fast as early ones, same accuracy.
    flush_denormal: bool = True
    progress: bool = False  # a progress bar per epoch (not recorded: it changes no result)
    # Evaluate every N-th epoch and the last (recorded in the result's mode, not here: it changes
    # no accuracy or wall-clock, only how many points the accuracy curves have).
    eval_every: int = 1

    def apply(self) -> None:
        """Apply the settings that act on the whole process: torch threads, denormal flushing."""
        torch.set_num_threads(self.threads)
        torch.set_flush_denormal(self.flush_denormal)

    def record(self) -> dict[str, Any]:
        """The settings a result file records."""
        return {name: value for name, value in dataclasses.asdict(self).items()
                if name not in ("progress", "eval_every")}


def prepare_stores(workdir: Path, train_limit: int | None) -> tuple[Path, Path]:
    """Convert Fashion-MNIST (train: the first ``train_limit`` images, test: all) once per workdir."""
    from ..convert import FASHION_MNIST_DIR, from_arrays
    from ..convert.idx import find_idx_files, load_idx

    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, limit in (("train", train_limit), ("test", None)):
        path = workdir / f"fashion-mnist-{split}{'' if limit is None else f'-{limit}'}.beton"
        if not path.exists():
            images, labels = load_idx(*find_idx_files(FASHION_MNIST_DIR, split))
            from_arrays(images[:limit], labels[:limit], path, progress=False)
        paths.append(path)
    return paths[0], paths[1]


def run_one(strategy_name: str, keep: float, seed: int, stores, settings, *, recipe: Recipe = RECIPE,
            strategy_options: dict | None = None, data: DataSpec | None = None) -> dict:
    """Train one model with ``recipe``; return its row of the JSON's "runs". ``strategy_options``
    override the strategy's library defaults (the held-out study uses them; the benchmark does not);
    ``data``: the stores' description, when the caller has it (else read off the stores)."""
    strategy, history = run_recipe(recipe, strategy_name, keep, seed, stores, strategy_options=strategy_options,
                                   data=data,
                                   threads=settings.threads, amp=settings.amp,
                                   channels_last=settings.channels_last, progress=settings.progress,
                                   eval_every=settings.eval_every, log=None)
    return _run_row(strategy_name, keep, seed, strategy, history)


def warm_up(stores, settings, recipe: Recipe = RECIPE, data: DataSpec | None = None) -> float:
    """One short untimed run (about 4 batches of a uniform subset, one epoch) before the timed
    ones, so numba compilation, oneDNN kernel selection and the page cache are not billed to
    whichever run happens to come first (the full-data baseline). Returns its seconds."""
    from ..store.reader import Store

    started = time.perf_counter()
    with Store(stores[0]) as store:
        keep = min(1.0, 4 * recipe.batch_size / len(store))
    run_one("uniform_random", keep, 0, stores, settings, recipe=recipe.replace(epochs=1), data=data)
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
        "curve": [[round(r["cumulative_train_s"], 3), r["val_acc"]] for r in history if r["val_acc"] is not None],
        "history": history,
    }
