"""``fastprune train`` (the top-level cli.py lists it in LAZY_COMMANDS): the recipe's run on two
stores, its defaults taken from :data:`~fastprune.train.recipe.RECIPE`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .loop import save_history
from .recipe import RECIPE, STRATEGIES, run_recipe

# The arguments that define a run: a resume with any of them changed would not continue the same
# run. Device, threads, logging and the stores' paths may change between the interrupted and the
# resumed process (the strategy's checkpoint already pins the number of training samples).
RUN_SETTINGS = ("strategy", "keep", "seed", "lr", "weight_decay", "label_smoothing", "pad", "model", "width")


def add_train_command(subparsers):
    """Register ``fastprune train`` on an argparse ``subparsers`` object; returns its parser."""
    parser = subparsers.add_parser(
        "train", help="train a model on a store, pruning the data dynamically",
        description="Train a ResNet on a store with a pruning strategy; one log line per epoch, "
                    "a JSON log, a checkpoint after every epoch (--resume continues from it).")
    parser.add_argument("--train", required=True, type=Path, metavar="FILE", help="training store")
    parser.add_argument("--val", required=True, type=Path, metavar="FILE", help="validation store")
    parser.add_argument("--strategy", default="ucb", choices=STRATEGIES)
    parser.add_argument("--keep", type=float, default=0.5, help="fraction kept per pruned epoch")
    parser.add_argument("--epochs", type=int, default=RECIPE.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=RECIPE.batch_size)
    parser.add_argument("--lr", type=float, default=RECIPE.lr,
                        help="peak LR of the one-cycle schedule (the benchmark recipe's)")
    parser.add_argument("--weight-decay", type=float, default=RECIPE.weight_decay)
    parser.add_argument("--label-smoothing", type=float, default=RECIPE.label_smoothing)
    parser.add_argument("--pad", type=int, default=RECIPE.pad, help="random-crop padding (0: flip only)")
    parser.add_argument("--model", default=RECIPE.model.name, choices=("small_resnet", "resnet18"))
    parser.add_argument("--width", type=int, default=RECIPE.model.widths[0],
                        help="small_resnet: channels of the first stage (doubled per stage)")
    parser.add_argument("--threads", type=int, default=None, help="torch and loader threads")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="autocast; auto = on CUDA only (bf16 is fast on CPUs with AMX)")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--log-json", type=Path, metavar="FILE", help="write the history here")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE", help="checkpoint after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=train_main)
    return parser


def train_main(args) -> int:
    """Run ``fastprune train`` from parsed arguments; returns the exit code."""
    if args.resume and args.checkpoint is None:
        raise SystemExit("fastprune train: --resume needs --checkpoint")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    channels_last = {"auto": device.type == "cuda", "on": True, "off": False}[args.channels_last]
    recipe = RECIPE.replace(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                            pad=args.pad, name=args.model, widths=tuple(args.width * 2**i for i in range(3)))
    _, history = run_recipe(recipe, args.strategy, args.keep, args.seed, (args.train, args.val),
                            device=device, threads=args.threads, amp=args.amp, channels_last=channels_last,
                            checkpoint=args.checkpoint, resume=args.resume, settings=_run_settings(args),
                            progress=not args.no_progress)
    if args.log_json:
        save_history(args.log_json, history, command="fastprune train",
                     arguments={k: str(v) for k, v in vars(args).items() if k != "run"})
    return 0


def _run_settings(args) -> dict[str, Any]:
    return {name: value for name, value in vars(args).items() if name in RUN_SETTINGS}
