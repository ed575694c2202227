"""``fastprune.bench.compare``: the benchmark's comparison (full data against pruning strategies,
accuracy and training wall-clock) on your own stores and model, from Python. It plans, runs and
summarizes through the same code as ``fastprune bench`` (plan, cli.execute, report)."""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._args import check_bool, check_fraction, check_path, check_positive_int, check_seed
from ..models import load_model_factory, model_spec_of
from ..train.device import process_state_kept
from ..train.recipe import RECIPE, STRATEGIES, ModelSpec, Recipe
from . import plan, report
from .run import Settings

_RECIPE_OPTIONS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name not in ("epochs", "model")) + \
    tuple(f.name for f in dataclasses.fields(ModelSpec) if f.name not in ("name", "factory"))


@dataclass
class Comparison:
    """The outcome of :func:`compare`: ``rows`` (one per strategy and keep ratio: ``acc_mean``,
    ``acc_std`` over seeds, ``wall_s_mean`` and ``wall_s_median`` (training seconds), ``speedup``
    versus full data (of the medians),
    ``acc_delta_pt``...), ``runs`` (every run, with its per-epoch ``history``) and ``result``, the
    whole document ``fastprune bench`` writes as JSON."""

    result: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.result["summary"]

    @property
    def runs(self) -> list[dict[str, Any]]:
        return self.result["runs"]

    def row(self, strategy: str, keep: float | None = None) -> dict[str, Any]:
        """The row of ``strategy`` (at ``keep``, needed when several keep ratios were run)."""
        matches = [r for r in self.rows if r["strategy"] == strategy and keep in (None, r["keep"])]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} rows for strategy={strategy!r}, keep={keep!r}; "
                           f"rows: {[(r['strategy'], r['keep']) for r in self.rows]}")
        return matches[0]

    @property
    def notes(self) -> list[str]:
        """The caveats ``fastprune bench`` prints under its table: runs timed unalike (a busy
        machine: the speed-ups are not to be trusted), a strategy that never pruned."""
        return report.caveats(self.runs)

    def table(self) -> str:
        """The markdown table ``fastprune bench`` prints, with its notes under it."""
        return "\n\n".join([report.markdown_table(self.rows), *self.notes])

    def __repr__(self) -> str:  # the dataclass's showed the whole document: 10 kB in a notebook cell
        rows = ", ".join(f"{r['strategy']}@{report.keep_label(r['keep'])}: {r['acc_mean']:.2f}%/{r['speedup']:.2f}x"
                         for r in self.rows if r.get("acc_mean") is not None and r.get("speedup") is not None)
        count = len(self.notes)
        notes = f"; {count} note(s) in .notes, e.g. a busy machine" if count else ""
        return f"Comparison({len(self.runs)} runs; {rows or 'no summary yet'}{notes}; .table() for the markdown table)"


def compare(train, val, *, model: str | Callable[..., torch.nn.Module] = RECIPE.model.name,
            strategies: Sequence[str] = ("full", "epsilon_greedy", "ucb"), keep: float | Sequence[float] = 0.5,
            epochs: int = RECIPE.epochs, seeds: Sequence[int] = (0,), out: str | os.PathLike | None = None,
            threads: int | None = None, amp: str | None = None, channels_last: bool | None = None,
            device: str = "auto", compile: str = "off", eval_every: int = 1, overwrite: bool = False,
            verbose: bool = False, **recipe_options) -> Comparison:
    """Train ``model`` on the store ``train`` with full data and with each pruning strategy, evaluate
    on ``val`` after every ``eval_every``-th epoch and the last, and compare final accuracy and training wall-clock.

    Args:
        train, val: store paths or ``fastprune.Store`` objects. Classes, and unless given
            the normalization statistics, are read off them, as ``fastprune train`` does.
        model: "small_resnet" (default), "resnet18", "MODULE:CALLABLE", or a function called as
            ``model(num_classes=...)`` returning an ``nn.Module``.
        strategies: names from ``fastprune.train.STRATEGIES``; full data always runs (once per keep
            ratio and seed), as the baseline every speed-up divides.
        keep: the kept fraction of each pruned epoch, or several.
        out: a JSON path (relative to the current folder): the result document, its markdown report,
            a CSV of every epoch and two plots are written there (after every run), as by
            ``fastprune bench``. None writes nothing. An existing file is refused (ConfigError,
            before any work) unless ``overwrite=True``.
        threads, amp, channels_last: how the runs execute (:class:`~fastprune.bench.run.Settings`,
            whose defaults are the benchmark's). The benchmark's settings act on the process (torch
            threads, denormal flushing) while it runs; both are restored afterwards.
        device: "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N"; CUDA asked
            for where there is none raises :class:`~fastprune.errors.ConfigError` before any work.
            The result records the device, GPU, torch and CUDA versions (``result["device"]``) and
            each run's mean GPU busy percentage (``gpu_busy_pct``, None on the CPU or without nvml).
        compile: "off" (default), "default", "reduce-overhead" (CUDA graphs) or
            "max-autotune-no-cudagraphs": ``torch.compile`` of the training forward (``fit(compile=)``).
        verbose: print a line per run.
        recipe_options: the recipe's fields (``batch_size``, ``lr``, ``weight_decay``,
            ``label_smoothing``, ``pad``, ``crop``, ``mean``, ``std``, ``even_batches``; for
            small_resnet ``widths``, ``blocks``, ``stem_stride``); defaults: :data:`RECIPE`.

    Returns a :class:`Comparison`; ``.table()`` is the markdown table.
    """
    from .cli import execute

    unknown = sorted(set(recipe_options) - set(_RECIPE_OPTIONS))
    if unknown:
        raise TypeError(f"compare() got unknown recipe options {unknown}; recipe options: {list(_RECIPE_OPTIONS)}")
    unknown = [name for name in strategies if name not in STRATEGIES]
    if unknown:
        raise ValueError(f"compare(): unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    # checked before any training: keep=2.0 used to fail only when its run began, after the others
    keeps = (keep,) if isinstance(keep, numbers.Real) or getattr(keep, "ndim", None) == 0 else tuple(keep)
    keeps = tuple(check_fraction(k, "compare(): keep") for k in keeps)
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"compare(): seeds must be a sequence of integers, got {type(seeds).__name__} {seeds!r:.40}")
    mode = {"train_limit": None, "epochs": check_positive_int(epochs, "compare(): epochs"), "keeps": keeps,
            "seeds": tuple(check_seed(s, "compare(): seeds") for s in seeds),
            "strategies": tuple(name for name in strategies if name != "full"),
            "eval_every": check_positive_int(eval_every, "compare(): eval_every")}
    repeat = plan.repeated_choice({**mode, "strategies": tuple(strategies)}, "compare(): {}")
    if repeat:
        raise ValueError(repeat)
    overwrite = check_bool(overwrite, "compare(): overwrite")
    out = None if out is None else check_path(out, "compare(): out")
    defaults = Settings()
    threads = defaults.threads if threads is None else check_positive_int(threads, "compare(): threads")
    settings = Settings(amp=defaults.amp if amp is None else amp, threads=threads,
                        channels_last=defaults.channels_last if channels_last is None else channels_last,
                        device=device, compile=compile).resolved()
    recipe = _recipe(model, int(epochs), recipe_options)
    # the caller's thread count, denormal flushing and random streams come back after (each run
    # seeds Python's, numpy's and torch's generators for its model)
    with process_state_kept(), settings.applied():
        result = execute(mode, settings, recipe, (_path_of(train), _path_of(val)), out,
                         overwrite=overwrite, log=print if verbose else None)
    comparison = Comparison(result)
    if verbose:
        for note in comparison.notes:
            print(note)
    return comparison


def _path_of(store) -> Path:
    """A store given as a path or as a ``fastprune.Store`` (the quick start's objects): its path."""
    path = getattr(store, "path", store)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"compare(): train and val must be store paths or fastprune.Store objects, got "
                        f"{type(store).__name__}")
    return Path(path)


def _recipe(model, epochs: int, options: dict[str, Any]) -> Recipe:
    # tuples, as the command line makes them (a list would record and compare differently)
    options = {name: tuple(value) if name in ("mean", "std", "widths") and value is not None else value
               for name, value in options.items()}
    if isinstance(model, torch.nn.Module):  # callable, but each run needs a fresh model: fit() takes one built
        raise TypeError(f"compare(model=) takes a function that builds the model (called with num_classes= for "
                        f"each run), got a built {type(model).__name__}; e.g. model=lambda num_classes: "
                        f"MyNet(num_classes)")
    if callable(model):
        return RECIPE.replace(epochs=epochs, name=model_spec_of(model), factory=model, **options)
    if ":" in model:
        load_model_factory(model)  # a wrong MODULE:CALLABLE stops here, before any work
    return RECIPE.replace(epochs=epochs, name=model, **options)
