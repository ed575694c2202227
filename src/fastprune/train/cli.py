"""``fastprune train`` (the top-level cli.py lists it in LAZY_COMMANDS): the recipe's run on two
stores, its defaults taken from :data:`~fastprune.train.recipe.RECIPE`."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

from .._cpus import usable_cpus
from .._outputs import check_distinct, check_image_file, check_output_file, check_output_folder
from ..cli import fraction, non_negative_float, non_negative_int, positive_int, seed, unit_interval
from ..errors import ConfigError, UsageError
from ..models import load_model_factory
from .device import DEVICE_CHOICES, device_record, process_state_kept, resolve_device, run_amp
from .loop import COMPILE_CHOICES, save_csv, save_history
from ..store.reader import Store
from .recipe import (RECIPE, STRATEGIES, describe_recipe, describe_recipe_data, gpu_busy_of, recipe_warnings,
                     run_recipe)

# The arguments that define a run: a resume with any of them changed would not continue the same
# run. Device, threads, logging and the stores' paths may change between the interrupted and the
# resumed process (the strategy's checkpoint already pins the number of training samples).
# ``model`` is stored as "model_spec": fit records the model's class under "model" itself. The
# normalization statistics and the number of classes actually used are added by run_recipe.
RUN_SETTINGS = ("strategy", "keep", "seed", "lr", "weight_decay", "label_smoothing", "pad", "crop", "model",
                "width", "label_field")


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """--help shows each option's default (unless its help already says it, or it has none) and
    the description as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not text or "default" in text or action.default is None or action.default is False \
                or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)".strip()


def model_spec(text: str) -> str:
    """An argparse type: a built-in model name or MODULE:CALLABLE."""
    if text in ("small_resnet", "resnet18") or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"expected small_resnet, resnet18 or MODULE:CALLABLE (a function of "
                                     f"yours taking num_classes=), got {text!r}")


def finite_float(text: str) -> float:
    """An argparse type: a finite number ('nan' and 'inf' would poison every batch)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (a standard deviation)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options (all but --epochs), shared by ``fastprune train`` and ``bench``; their
    defaults are :data:`RECIPE`'s. :func:`recipe_from_args` turns them back into a Recipe."""
    group = parser.add_argument_group("recipe (defaults: the benchmark's)")
    group.add_argument("--batch-size", type=positive_int, default=RECIPE.batch_size,
                       help="training batch; a pruned epoch should still take >= 10 steps")
    group.add_argument("--lr", type=positive_float, default=RECIPE.lr, help="peak LR of the one-cycle schedule")
    group.add_argument("--weight-decay", type=non_negative_float, default=RECIPE.weight_decay, help="SGD weight decay")
    group.add_argument("--label-smoothing", type=unit_interval, default=RECIPE.label_smoothing,
                       help="cross-entropy label smoothing")
    group.add_argument("--pad", type=non_negative_int, default=RECIPE.pad, help="random-crop padding (0: flip only)")
    group.add_argument("--crop", type=positive_int, metavar="N", default=RECIPE.crop,
                       help="train on RandomResizedCrop(N) + flip, evaluate on CenterCrop(N): needed when "
                            "the store's images differ in size")
    group.add_argument("--mean", type=finite_float, nargs=3, metavar=("R", "G", "B"),
                       help="normalization mean per channel, fractions of 255 (default: computed from "
                            "the training store)")
    group.add_argument("--std", type=positive_float, nargs=3, metavar=("R", "G", "B"), help="ditto, standard deviation")
    group.add_argument("--label-field", metavar="NAME", default=RECIPE.label_field,
                       help="the stores' integer field of class labels (default: 'label', or the only integer "
                            "field other than 'index'; an ffcv file's may be named otherwise)")
    group.add_argument("--model", type=model_spec, default=RECIPE.model.name, metavar="MODEL",
                       help="small_resnet (default), resnet18, or MODULE:CALLABLE: your function, called "
                            "with num_classes=, returning an nn.Module (MODULE is imported from the "
                            "current folder or PYTHONPATH)")
    group.add_argument("--width", type=positive_int, default=RECIPE.model.widths[0],
                       help="small_resnet: channels of the first stage (doubled per stage)")


def recipe_from_args(args, epochs: int):
    """The :class:`Recipe` the options of :func:`add_recipe_arguments` describe. A user model is
    imported here, so that a wrong MODULE:CALLABLE stops the command before any work."""
    if ":" in args.model:
        if os.getcwd() not in sys.path:  # `fastprune` is a script: its folder, not the cwd, is on sys.path
            sys.path.insert(0, os.getcwd())
        load_model_factory(args.model)
    return RECIPE.replace(epochs=epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          label_smoothing=args.label_smoothing, pad=args.pad, crop=args.crop,
                          mean=None if args.mean is None else tuple(args.mean),
                          std=None if args.std is None else tuple(args.std), label_field=args.label_field,
                          name=args.model, widths=tuple(args.width * 2**i for i in range(3)))


AMP_HELP = ("autocast (default auto: bf16 on a GPU that runs it natively, compute capability 8.0+, "
            "else fp16; on CPUs where bf16 is fast, AMX or AVX512-BF16 on AMD; else fp32 on the CPU)")


def compile_option(choice: str):
    """--compile's value as ``fit(compile=)`` takes it: False for "off", else the mode's name."""
    return False if choice == "off" else choice


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --amp, shared by ``fastprune train`` and ``bench``: where a run trains and in
    which precision, resolved by :func:`~fastprune.train.device.resolve_device` and
    :func:`~fastprune.train.device.run_amp` (one rule for both commands)."""
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help=f"{DEVICE_CHOICES} (default auto: CUDA when available, else the CPU)")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help=AMP_HELP)
    parser.add_argument("--compile", default="off", choices=COMPILE_CHOICES,
                        help="torch.compile the training forward (reduce-overhead: CUDA graphs, for small, "
                             "launch-bound models on a GPU)")


def add_train_command(subparsers):
    """Register ``fastprune train`` on an argparse ``subparsers`` object; returns its parser."""
    parser = subparsers.add_parser(
        "train", help="train a model on a store, pruning the data dynamically",
        description="Train a model on a store with a pruning strategy; one log line per epoch; on request a "
                    "JSON and a CSV log (replaced if they exist) and a checkpoint after every epoch (an "
                    "existing one is refused unless --resume continues from it). "
                    "Classes and normalization come from the training store. The recipe's defaults are "
                    "the benchmark's (60k Fashion-MNIST images): set --batch-size and --lr for your data.",
        formatter_class=HelpWithDefaults)
    parser.add_argument("--train", required=True, type=Path, metavar="FILE", help="training store")
    parser.add_argument("--val", required=True, type=Path, metavar="FILE", help="validation store")
    parser.add_argument("--strategy", default="ucb", choices=STRATEGIES, help="pruning strategy")
    parser.add_argument("--keep", type=fraction, default=0.5, help="fraction kept per pruned epoch")
    parser.add_argument("--epochs", type=positive_int, default=RECIPE.epochs, help="training epochs")
    parser.add_argument("--seed", type=seed, default=0, help="seeds model init, selection and augmentation")
    parser.add_argument("--eval-every", type=positive_int, default=1, metavar="N",
                        help="evaluate on --val every N-th epoch and after the last (default: every epoch)")
    add_recipe_arguments(parser)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch and loader threads (default: the CPUs this process may use: its "
                             "affinity, capped by a container's CPU quota)")
    add_device_arguments(parser)
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                        help="NHWC activations (auto: on CUDA)")
    parser.add_argument("--flush-denormal", action="store_true",
                        help="flush denormal floats to zero, as fastprune bench does by default (with "
                             "--channels-last on and bench's --threads, a bench run's seed trains alike here)")
    parser.add_argument("--log-json", type=Path, metavar="FILE",
                        help="write the history and arguments here, after every epoch")
    parser.add_argument("--log-csv", type=Path, metavar="FILE", help="write one row per epoch here, after every epoch")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE", help="checkpoint after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    add_visibility_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=train_main)
    return parser


def add_visibility_arguments(parser: argparse.ArgumentParser, per_run: bool = False) -> None:
    """--tensorboard and --kept-grid, shared by ``fastprune train`` and ``bench`` (``per_run``:
    a folder and a picture for each of its runs)."""
    parser.add_argument("--tensorboard", type=Path, metavar="DIR",
                        help="log loss, accuracy (also per class), kept fraction and pruning overhead per "
                             "epoch for TensorBoard (needs the tensorboard package)"
                             + ("; in DIR/STRATEGY-keepK-seedS/ for each run" if per_run else ""))
    parser.add_argument("--kept-grid", type=Path, metavar="PNG",
                        help="after training, draw each class's most-kept and least-kept images (needs "
                             "matplotlib)" + ("; one per pruned run, PNG's name + -STRATEGY-keepK-seedS"
                                              if per_run else "; `fastprune scores RUN.pt` exports the "
                                              "per-sample numbers"))


def check_visibility_arguments(args) -> None:
    """A missing package for --tensorboard or --kept-grid stops the command before any work."""
    from ..errors import require

    if getattr(args, "tensorboard", None) is not None:
        require("tensorboard", "tensorboard", "--tensorboard")
    if getattr(args, "kept_grid", None) is not None:
        require("matplotlib", "plots", "--kept-grid")


def check_outputs(args, files: dict) -> None:
    """Before any work: every file the command will write (``files``: {option: path or None}, plus
    --kept-grid and --tensorboard) can be written, and none is one of the stores or another output.
    Call after :func:`check_visibility_arguments` (the image check needs matplotlib)."""
    inputs = [path for path in (args.train, args.val) if path is not None]
    files = {**files, "--kept-grid": args.kept_grid}
    for what, path in files.items():
        if path is not None:
            check_output_file(path, what, inputs, makes_folders=True)
    check_distinct(files)
    check_image_file(args.kept_grid, "--kept-grid")
    if args.tensorboard is not None:
        check_output_folder(args.tensorboard, "--tensorboard")


def train_main(args) -> int:
    """Run ``fastprune train`` from parsed arguments; returns the exit code. The threads, denormal
    flushing and random streams it sets are put back after (a sweep may call it in-process)."""
    with process_state_kept():
        return _train(args)


def _train(args) -> int:
    if args.resume and args.checkpoint is None:
        raise UsageError("--resume needs --checkpoint")
    if args.eval_every < 1:
        raise UsageError(f"--eval-every must be >= 1, got {args.eval_every}")
    device = resolve_device(args.device)  # before any work: CUDA asked for and missing is one line
    if args.kept_grid is not None and args.strategy == "full":  # as bench draws none for its full runs
        raise UsageError("--kept-grid draws what a pruning strategy kept and left out; --strategy full keeps "
                          "every sample every epoch")
    check_visibility_arguments(args)
    check_outputs(args, {"--log-json": args.log_json, "--log-csv": args.log_csv, "--checkpoint": args.checkpoint})
    if args.checkpoint is not None and args.checkpoint.exists() and not args.resume:
        raise ConfigError(f"--checkpoint {args.checkpoint} exists: --resume continues that run; to start "
                          "over, delete it or choose another file")
    resuming = args.resume and args.checkpoint is not None and args.checkpoint.exists()
    if args.tensorboard is not None and not resuming:  # a resumed run continues its own curves there
        # (--resume with no checkpoint yet starts a run: another's events there would mix with its own)
        from .tensorboard import check_fresh_folder

        check_fresh_folder([args.tensorboard], "--tensorboard", "--resume to continue that run")
    if args.threads:
        torch.set_num_threads(args.threads)
    elif usable_cpus() < torch.get_num_threads():  # torch counts the machine's cores, not a container's quota
        torch.set_num_threads(usable_cpus())
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    amp = run_amp(device, args.amp)
    channels_last = {"auto": device.type == "cuda", "on": True, "off": False}[args.channels_last]
    recipe = recipe_from_args(args, args.epochs)
    data = describe_recipe_data(recipe, (args.train, args.val))
    labels = "" if recipe.label_field is None else f" (field {recipe.label_field!r})"
    print(f"{args.train}: {data.num_classes} classes{labels}, images {data.image_size}, normalized with mean "
          f"{_rounded(data.mean)} std {_rounded(data.std)}", flush=True)
    print(f"training on {describe_device(device)}, {'fp32' if amp == 'off' else amp}", flush=True)
    print(describe_recipe(recipe), flush=True)
    with Store(args.train) as store:
        num_samples = len(store)
    for warning in recipe_warnings(recipe, args.train, 1.0 if args.strategy == "full" else args.keep,
                                   val_store=args.val):
        print(warning, flush=True)  # on stdout with the recipe: stderr carries only the one-line errors
    tensorboard = None
    if args.tensorboard is not None:
        from .tensorboard import TensorBoardLogger

        tensorboard = TensorBoardLogger(args.tensorboard, num_samples)
    logs = _EpochLogs(args, data, device, amp)
    with out_of_memory_named(device, args.batch_size):
        strategy, history = run_recipe(recipe, args.strategy, args.keep, args.seed, (args.train, args.val),
                                       data=data, device=device, threads=args.threads, amp=amp,
                                       channels_last=channels_last, checkpoint=args.checkpoint, resume=args.resume,
                                       settings=_run_settings(args), eval_every=args.eval_every,
                                       progress=not args.no_progress, compile=compile_option(args.compile),
                                       on_epoch_end=_each(logs, tensorboard))
    if tensorboard is not None:
        tensorboard.close()
    if args.kept_grid is not None:
        from ..prune.report import kept_grid

        print(f"wrote {kept_grid(strategy, args.train, args.kept_grid, label_field=args.label_field)}", flush=True)
    logs.write(history)  # the whole history (a run with nothing left to train has no epoch end)
    return 0


class _EpochLogs:
    """--log-json and --log-csv, written after every epoch (a run stopped by Ctrl-C, a kill or a
    crash keeps the epochs it finished, as its checkpoint does) and at the end."""

    def __init__(self, args, data, device, amp: str):
        self.args, self.data, self.device, self.amp = args, data, device, amp
        self.history: list[dict[str, Any]] | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.args.log_json is None and self.args.log_csv is None:
            return
        if self.history is None:
            self.history = []
            if record["epoch"] > 0:  # a resumed run's earlier epochs: in its checkpoint, saved before this call
                from .checkpoints import read_checkpoint

                self.history = read_checkpoint(self.args.checkpoint, map_location="cpu")["history"][:record["epoch"]]
        self.history.append(record)
        self.write(self.history)

    def write(self, history: list[dict[str, Any]]) -> None:
        args = self.args
        if args.log_json:  # typed: numbers stay numbers, paths become strings
            save_history(args.log_json, history, command="fastprune train", data=self.data.json(),
                         arguments={k: v for k, v in vars(args).items() if k != "run"},
                         **device_record(self.device), precision=self.amp, gpu_busy_pct=gpu_busy_of(history),
                         **_software_record())
        if args.log_csv:
            save_csv(args.log_csv, history)


def _each(*callbacks):
    """One on_epoch_end calling each of ``callbacks`` (None: left out) in turn."""
    callbacks = [callback for callback in callbacks if callback is not None]

    def each(record: dict[str, Any]) -> None:
        for callback in callbacks:
            callback(record)
    return each


@contextlib.contextmanager
def out_of_memory_named(device, batch_size: int):
    """Running out of memory while building or training the model (a batch too large for the
    GPU, a model too wide) as one line naming the options that fix it, not torch's traceback."""
    try:
        yield
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        text = str(exc)
        if not isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) and "can't allocate memory" not in text \
                and "not enough memory" not in text:  # the CPU allocator's RuntimeError; others are bugs
            raise
        size = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]?i?B|\d+ bytes)", text)
        tried = f": tried to allocate {_bytes(size.group(1))}" if size else ""
        raise ConfigError(f"out of memory on {device}{tried}; lower --batch-size (now {batch_size}), or use a "
                          "smaller model (--model, --width) or images (--crop)") from None


def _bytes(text: str) -> str:
    """torch's "360000000000 bytes" as "335.3 GiB"; its "2.00 GiB" as it is."""
    if not text.endswith(" bytes"):
        return text
    count = int(text.split()[0])
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _software_record() -> dict[str, Any]:
    """What else a run's numbers depend on (README: results depend on the version, the JPEG
    decoder and the thread count; the native kernels' SIMD paths too): recorded beside the device."""
    from .. import __version__, build_info

    info = build_info()
    return {"fastprune": __version__, "jpeg_decoder": info["jpeg_decoder"], "simd": info["simd"],
            "torch_threads": torch.get_num_threads()}


def describe_device(device: torch.device) -> str:
    """"cpu", or "cuda:0 (NVIDIA H200)", for the line a run prints before it starts."""
    record = device_record(device)
    return record["device"] if record["gpu"] is None else f"{record['device']} ({record['gpu']})"


def _rounded(values) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def _run_settings(args) -> dict[str, Any]:
    return {("model_spec" if name == "model" else name): value for name, value in vars(args).items()
            if name in RUN_SETTINGS}
