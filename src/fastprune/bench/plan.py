"""Planning the end-to-end benchmark: the matrix of runs, the runs a result file still lacks, and
whether a result file may be continued at all (``--continue``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, UsageError
from ..train.recipe import QUICK_RECIPE, RECIPE, STRATEGIES, Recipe
from . import machine

FULL_MODE = {"train_limit": None, "epochs": RECIPE.epochs, "keeps": (0.3, 0.5, 0.7),
             "seeds": (0, 1, 2), "strategies": STRATEGIES[1:], "eval_every": 1}
# The main job's quick run: the full mode narrowed to keep 0.5, the two bandits and one seed,
# trained with QUICK_RECIPE (half width): ~5 min on 2 cores in fp32. Its gaps to full data on the
# held-out split match the full benchmark's (docs/benchmarks.md, "The main job"); `--strategies`
# adds strategies (uniform random: ~75 s more per seed on an AVX2 EPYC in fp32).
QUICK_MODE = {**FULL_MODE, "epochs": QUICK_RECIPE.epochs, "keeps": (0.5,), "seeds": (0,),
              "strategies": ("epsilon_greedy", "ucb")}

NOTES = ("wall_s = training seconds incl. data loading, selection, score updates and static scoring "
         "epochs; eval_s (per-epoch evaluation) is excluded from the speed-up. Runs are seed-major, then "
         "one block per keep ratio opened by its own full-data baseline run; speed-ups divide the median "
         "wall_s of all baseline runs by the strategy's median wall_s.")

# What must be the same for runs of one result file to be compared: speed-ups divide wall-clocks
# of different runs, so they must come from the same kind of CPU and the same settings (the same
# recipe trains several times faster on some of the project's machines than on others), and
# accuracies must come from the same recipe, model and epoch budget. The CPU's name alone is not
# enough: CPUs of one name ("Intel(R) Xeon(R) Processor", "AMD EPYC") have trained it at very
# different speeds, with and without AMX, or of different generations (docs/benchmarks.md). A file
# written before cpu_id or cpu_features were recorded cannot show which CPU it came from, so it is
# not continued.
# The stores are compared by path and by content (a store replaced at the same path trained other
# data), the model by its record, by what it built and by its code (a --model MODULE:CALLABLE is
# recorded by name: its code can change between sessions, keeping its class and size), and
# evaluation by eval_every (the curves average the runs' evaluation points one by one). The
# recipe's epochs are mode.epochs'.
CONTINUE_MUST_MATCH = (("machine", "cpu"), ("machine", "cpu_id"), ("machine", "cpu_features"),
                       ("machine", "cores"), ("machine", "torch"), ("settings",), ("recipe",), ("model",),
                       ("architecture",), ("model_code",), ("mode", "epochs"), ("mode", "train_limit"), ("mode", "eval_every"),
                       ("data", "train"), ("data", "val"), ("data", "train_identity"), ("data", "val_identity"))

# Packages whose code a result file records by version (machine.torch), or that build the built-in
# models: a model's code from them is not the user's to change (``run.model_code`` leaves it out).
VERSIONED_PACKAGES = ("torch", "torchvision", "fastprune")

# What ``fastprune bench`` trains on when not given --train/--val: Fashion-MNIST it converts itself.
BUILT_IN_DATA = "fashion-mnist (built in)"
_UNKNOWN = object()


def _legacy_value(path: tuple[str, ...], previous: dict, result: dict):
    """What a file written before ``path`` was recorded held there implicitly, or _UNKNOWN."""
    if path in (("data", "train"), ("data", "val")):
        return BUILT_IN_DATA  # every such file benchmarked the built-in Fashion-MNIST
    if path == ("mode", "eval_every"):
        return 1  # evaluated after every epoch, as before --eval-every
    if path in (("data", "train_identity"), ("data", "val_identity")):
        # the built-in data (converted by fastprune from Debian's files) records no identity
        return None if _field(previous, ("data", path[1].split("_")[0])) == BUILT_IN_DATA else _UNKNOWN
    model = (previous.get("model") or {}).get("name", "small_resnet")
    if path == ("architecture",) and model == "small_resnet":
        return _field(result, path)  # SmallResNet's record holds every option that builds it
    if path == ("model_code",) and (":" not in model or model.split(".")[0] in VERSIONED_PACKAGES):
        return _field(result, path)  # a built-in or torchvision model: their code, by version, not the user's
    return _UNKNOWN


def mode_for(args) -> dict:
    """The quick or full mode, with the options the command line gives."""
    mode = dict(QUICK_MODE if args.quick else FULL_MODE)
    if getattr(args, "train", None) is not None:  # the user's stores are used whole
        if args.train_limit is not None:
            raise UsageError("--train-limit applies to the built-in Fashion-MNIST only; convert a smaller "
                             "store of your own instead")
        mode["train_limit"] = None
    for key, value in (("strategies", args.strategies), ("keeps", args.keeps), ("seeds", args.seeds),
                       ("epochs", args.epochs), ("train_limit", args.train_limit),
                       ("eval_every", getattr(args, "eval_every", None))):
        if value is not None:
            mode[key] = tuple(value) if isinstance(value, list) else value
    if mode["eval_every"] < 1:
        raise UsageError(f"--eval-every must be >= 1, got {mode['eval_every']}")
    repeat = repeated_choice(mode, "--{}")
    if repeat:
        raise UsageError(repeat)
    return mode


def repeated_choice(mode: dict, option: str) -> str | None:
    """What ``mode`` repeats, e.g. "--seeds gives 0 twice; give each once" (``option``: how a key
    is named), or None. A seed given twice ran twice and counted as two seeds; a keep or strategy
    given twice ran its cells twice."""
    for key in ("strategies", "keeps", "seeds"):
        values = list(mode[key])
        twice = next((value for i, value in enumerate(values) if value in values[:i]), None)
        if twice is not None:
            return f"{option.format(key)} gives {twice!r} twice; give each once"
    return None


def base_recipe(quick: bool) -> Recipe:
    """The recipe a mode trains by default (before the command line's options): the quick
    preset or the benchmark's."""
    return QUICK_RECIPE if quick else RECIPE


def new_result(mode: dict, settings, quick: bool, recipe=RECIPE, data: dict | None = None) -> dict:
    """A result document with no runs yet: what the runs will be compared under. ``data``: the
    stores ("train", "val": paths, or BUILT_IN_DATA) and what was read off them."""
    # The run length is mode.epochs; the recipe record has it too (files before 2026-12-06 always
    # recorded the default's 10, which check_can_continue therefore leaves out).
    recorded = recipe.replace(epochs=mode["epochs"])
    return {"benchmark": "end_to_end", "command": machine.command_line(),
            "machine": machine.machine(), "device": machine.run_device(settings), "date": machine.now(),
            "mode": {**mode, "quick": quick}, "recipe": recorded.training_json(), "model": recipe.model_json(),
            "data": data or {"train": BUILT_IN_DATA, "val": BUILT_IN_DATA},
            "settings": settings.record(), "notes": NOTES, "runs": [], "summary": []}


def evaluated_on(result: dict) -> str:
    """The store a result file's accuracies were measured on, for plot labels: "Fashion-MNIST test"
    or the validation store's name."""
    val = (result.get("data") or {}).get("val", BUILT_IN_DATA)
    return "Fashion-MNIST test" if val == BUILT_IN_DATA else Path(val).name


def data_name(result: dict) -> str:
    """What a result file's runs trained on, for titles: "Fashion-MNIST" or the training store's name."""
    train = (result.get("data") or {}).get("train", BUILT_IN_DATA)
    return "Fashion-MNIST" if train == BUILT_IN_DATA else Path(train).name


def planned_runs(mode: dict) -> list[tuple[str, float, int, float]]:
    """(strategy, keep, seed, block) in run order: seed-major, then one block per keep ratio, each
    block opened by its own full-data baseline run.

    Why a baseline per block: a shared machine's speed drifts over minutes (docs/benchmarks.md), so
    one baseline per seed, measured once at its start, biases every speed-up by wherever the
    machine happened to be then. Baselines spread over the whole benchmark sample the drift as the
    pruned runs do."""
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


def _field(document: dict, path: tuple[str, ...]):
    for key in path:
        document = (document or {}).get(key)
    return document


def check_can_continue(previous: dict, result: dict, out: Path) -> None:
    """Refuse ``--continue`` onto a result file measured on another machine, data or model, or with
    other settings."""
    result = json.loads(json.dumps(result))  # as it will be stored: tuples become lists
    previous = json.loads(json.dumps(previous))  # filled in below where it predates a field
    model = previous.get("model") or {}
    if model.get("name", "small_resnet") != "small_resnet" and len(model) > 1:
        # files written before model_json recorded SmallResNet's options for any model
        previous["model"] = {"name": model["name"]}
    for document in (previous, result):  # the recipe's epochs were always 10 in older files
        (document.get("recipe") or {}).pop("epochs", None)
    for path in CONTINUE_MUST_MATCH:
        if path[-1] not in (_field(previous, path[:-1]) or {}):
            legacy = _legacy_value(path, previous, result)
            if legacy is _UNKNOWN:
                raise ConfigError(f"--continue: {out} does not record {'.'.join(path)} (it was written by an "
                                 f"older fastprune), so it cannot be shown to come from this machine, data and "
                                 f"settings. Use another --out, or --overwrite instead of --continue to replace it.")
            _place(previous, path, legacy)
        old, new = _field(previous, path), _field(result, path)
        if old != new and path == ("model_code",):
            raise ConfigError(_model_code_refusal(old, new, out))
        if old != new:
            raise ConfigError(f"--continue: {out} was measured with {'.'.join(path)} = {old!r}, this run has "
                             f"{new!r}; mixing them would compare unlike runs. Use another --out, or "
                             f"--overwrite instead of --continue to replace it.")


def _model_code_refusal(old: dict, new: dict, out: Path) -> str:
    """Why a --continue is refused on the model's code, in words (two digests named nothing)."""
    what = [part for part, differs in (("its layers", old.get("layers") != new.get("layers")),
                                       ("its source files", old.get("code") != new.get("code"))) if differs]
    files = ", ".join(new.get("files") or old.get("files") or []) or "the model's own modules"
    return (f"--continue: {out} was measured with another version of the model: {' and '.join(what) or 'its record'} "
            f"differ (any edit to {files} counts, comments included); mixing them would compare unlike runs. "
            "Undo the edit, use another --out, or --overwrite instead of --continue to replace it.")


def _place(document: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        document = document.setdefault(key, {})
    document[path[-1]] = value


def merged_mode(previous: dict, mode: dict) -> dict:
    """The mode a continued file records: this session's, with the strategies, keeps and seeds of
    the runs it keeps from earlier sessions (a narrower --continue keeps them; the file must still
    describe them, and its completeness is judged against all of them)."""
    merged = dict(mode)
    for key in ("strategies", "keeps", "seeds"):
        earlier = list((previous.get("mode") or {}).get(key) or [])
        merged[key] = tuple(earlier + [value for value in mode[key] if value not in earlier])
    return merged
