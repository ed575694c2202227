"""The ``fastprune`` command line: ``fastprune convert | info | train | bench | scores`` (``python -m fastprune`` too).

Each subcommand is one ``add_<name>_command(subparsers)`` function that registers its parser and
sets ``run`` to the function doing the work; :data:`COMMANDS` lists the ones defined here, and
:data:`LAZY_COMMANDS` the ones whose modules import torch (``train``, ``bench``, ``scores``), built only when run.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from ._signals import ctrl_c_after_imports, sigterm_as_interrupt
from .errors import FastpruneError, UsageError

PROG = "fastprune"


# ----------------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def seed(text: str) -> int:
    """A seed: an integer in [0, 2**64 - 1], as the Python API takes it."""
    from ._args import MAX_SEED

    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**64 - 1], got {text}")
    return value


def _number(text: str, what: str, low: float, high: float = math.inf, low_open: bool = False) -> float:
    value = float(text)
    above = low < value if low_open else low <= value
    if not (math.isfinite(value) and above and value <= high):  # nan fails every comparison
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def fraction(text: str) -> float:
    """A kept fraction: in (0, 1]."""
    return _number(text, "a fraction in (0, 1]", 0.0, 1.0, low_open=True)


def unit_interval(text: str) -> float:
    return _number(text, "a number in [0, 1]", 0.0, 1.0)


def non_negative_float(text: str) -> float:
    return _number(text, "a finite number >= 0", 0.0)


def jpeg_quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {text}")
    return value


def height_by_width(text: str) -> tuple[int, int]:
    """'32x48' -> (32, 48)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 32x32, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sides must be positive, got {text!r}")
    return height, width


def column_pair(text: str) -> tuple[str, str]:
    """--columns IMAGE,LABEL"""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected IMAGE,LABEL (two column names), got {text!r}")
    return parts[0], parts[1]


def class_names(text: str) -> list[str]:
    """'a,b,c' -> ['a', 'b', 'c']; '@names.txt' -> the file's lines (names may hold commas)."""
    if text.startswith("@"):
        try:
            lines = Path(text[1:]).read_text(encoding="utf-8-sig").splitlines()  # -sig: Excel's "CSV UTF-8" BOM
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc}") from None
    else:
        lines = text.split(",")
    names = [line.strip() for line in lines]
    while names and not names[-1]:  # a file's final newline
        names.pop()
    if not names or not all(names):  # a blank name would shift every later label's name
        raise argparse.ArgumentTypeError(f"empty class name in {text!r:.80} (name {names.index('') if names else 0})")
    return names


# ----------------------------------------------------------------------------------- convert

CONVERT_HELP = """\
SOURCE is one of:
  fashion-mnist       Debian's Fashion-MNIST (/usr/share/datasets/fashion-mnist)
  a folder of IDX files (MNIST layout: train-/t10k-images-idx3-ubyte[.gz] and -labels-idx1-ubyte[.gz])
  a CIFAR-10 folder (cifar-10-batches-py: data_batch_1..5, test_batch) or its parent
  a CIFAR-100 folder (cifar-100-python: train, test, meta) or its parent
  a CIFAR archive as downloaded (cifar-10-python.tar.gz, cifar-100-python.tar.gz), read without unpacking
  an image folder: one subfolder per class (sorted names -> labels 0, 1, ...; see --class-names),
    .jpg/.jpeg/.png/.webp/.bmp/.tif/.tiff files below each
    (other files ignored, with a warning; hidden ones silently); EXIF orientation is not applied
    (as in torchvision's ImageFolder): photos a camera stored sideways stay so
  a .npz file with arrays 'images' (N x H x W[x 3] uint8) and 'labels' (N integers)
  a Hugging Face dataset saved with save_to_disk (a DatasetDict: --split names one of its splits), or
    a .parquet/.arrow file of one split; image and label columns by name (--columns), a ClassLabel's
    names kept (needs the datasets package: pip install "fastprune[hf]")
  a .beton store (one ffcv wrote, say) with --index: copied, every value as stored (JPEG bytes
    kept), with the index field ffcv's own Loader needs to name a batch's samples (PrunedOrder)
The kind is detected from the file names unless --kind says. Fields written: image (RGB; gray is
replicated), label (int), coarse_label for CIFAR-100 with --coarse, index (each sample's id) with
--index, name (each image's path below the folder) with --names; a store's own fields plus index.
Raw storage needs one image shape: use --resize HxW for image folders (or hf sources) of mixed
sizes, or --jpeg.
"""


def add_convert_command(subparsers) -> None:
    from .convert import KINDS
    from .store.images import DEFAULT_JPEG_QUALITY

    parser = subparsers.add_parser(
        "convert", help="convert a dataset to a store (.beton) file",
        description="Convert a dataset to a store (.beton) file, written atomically.",
        epilog=CONVERT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="SOURCE",
                        help="dataset folder, .npz file, CIFAR .tar.gz, .beton store (with --index) or 'fashion-mnist'")
    parser.add_argument("--out", "-o", required=True, type=Path, metavar="FILE", help="output file")
    parser.add_argument("--kind", default="auto", choices=("auto", *KINDS), help="source kind (default: auto)")
    parser.add_argument("--split", metavar="NAME",
                        help="split of an IDX or CIFAR source: train (default) or test; of a Hugging Face "
                             "DatasetDict folder: one of its splits")
    parser.add_argument("--columns", type=column_pair, metavar="IMAGE,LABEL",
                        help="Hugging Face sources: the image and label columns (default: image,label)")
    parser.add_argument("--jpeg", action="store_true", help="store images as JPEG (default: raw pixels)")
    parser.add_argument("--quality", type=jpeg_quality, metavar="Q",
                        help=f"quality of the JPEGs --jpeg encodes (default: {DEFAULT_JPEG_QUALITY}); a baseline "
                             "JPEG that needs no resizing keeps its own bytes")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--max-side", type=positive_int, metavar="N",
                      help="image folders, hf sources: shrink images whose longer side exceeds N (keeps aspect); "
                           "about 1.15-2x the crop you train at: larger images decode slower for nothing")
    size.add_argument("--resize", type=height_by_width, metavar="HxW",
                      help="image folders, hf sources: resize every image to exactly HxW")
    parser.add_argument("--max-pixels", type=positive_int, metavar="N",
                        help="image folders, hf sources: refuse images whose header claims more than N pixels, "
                             "before decoding them (default: 2**26 = 67,108,864)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="image folders, hf sources: leave out images that cannot be read or decoded "
                             "(named in one warning; later ones move up) instead of stopping; more than 1%% of "
                             "them (and over 10) still stops")
    parser.add_argument("--names", action="store_true",
                        help="image folders: also store a 'name' field, each image's path below SOURCE, so "
                             "that `fastprune scores --store` names the files behind its rows")
    parser.add_argument("--coarse", action="store_true", help="CIFAR-100: also store coarse_label")
    parser.add_argument("--class-names", type=class_names, metavar="A,B,C|@FILE",
                        help="the classes' names (label 0, 1, ...), kept in the store: comma-separated, "
                             "or @FILE with one name a line (default: those the source has; IDX and "
                             ".npz have none). Image folders: names of every class folder order the "
                             "labels (splits lacking a class get the same labels); names of none rename "
                             "the sorted folders")
    parser.add_argument("--drop-unlabeled", action="store_true",
                        help=".npz, hf sources: leave out samples whose label is negative (-1: no label); "
                             "refused otherwise")
    parser.add_argument("--targets", action="store_true",
                        help=".npz, hf: the labels are targets, not classes: a number per sample (regression, "
                             "stored as float64) or an array of one shape (multi-label, several outputs); "
                             "for a training loop of your own (train and bench classify)")
    parser.add_argument("--index", action="store_true",
                        help="also store an 'index' field (each sample's id), which ffcv's own Loader "
                             "needs to say which samples a batch holds (fastprune.integrations.ffcv.PrunedOrder)")
    parser.add_argument("--workers", type=positive_int, metavar="N",
                        help="encoding processes (default: the CPUs this process may use, a container's CPU "
                             "quota included)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from .convert import convert
    from .errors import ConversionError, UnreadableSample
    from .store.images import DEFAULT_JPEG_QUALITY

    if args.quality is not None and not args.jpeg:  # raw pixels are stored as they are
        raise UsageError("--quality applies with --jpeg (raw pixels are stored without loss)")
    try:
        out = convert(args.source, args.out, kind=args.kind, split=args.split, jpeg=args.jpeg,
                      quality=DEFAULT_JPEG_QUALITY if args.quality is None else args.quality,
                      max_side=args.max_side, resize=args.resize,
                      coarse=args.coarse, max_pixels=args.max_pixels, workers=args.workers,
                      progress=not args.no_progress, class_names=args.class_names,
                      drop_unlabeled=args.drop_unlabeled, index=args.index,
                      skip_unreadable=args.skip_unreadable, names=args.names, columns=args.columns,
                      targets=args.targets)
    except UnreadableSample as exc:  # a bad file among many: say how to go on without it
        raise ConversionError(f"{exc} (--skip-unreadable leaves out files that cannot be read, naming "
                              "them)") from None
    from ._text import counted
    from .store.info import on_disk
    from .store.reader import Store

    with Store(out) as store:  # the count: what --drop-unlabeled or --skip-unreadable left is seen here
        count = counted(store.num_samples, "sample")
    print(f"wrote {out}: {count} ({out.stat().st_size / 2**20:.1f} MiB{on_disk(out)})")
    return 0


# ----------------------------------------------------------------------------------- info


def add_info_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="describe a store file",
        description="Print a store's samples, fields and their settings, class histogram and size; "
                    "with --verify, also check every checksum.")
    parser.add_argument("file", metavar="FILE", type=Path, help="store (.beton) file")
    parser.add_argument("--verify", action="store_true", help="check all checksums (reads the whole file)")
    parser.add_argument("--json", action="store_true",
                        help="print the same facts as one JSON object (see fastprune.store.info.summary)")
    parser.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> int:
    from .store.info import describe, printable, summary, verify
    from .store.reader import Store

    with Store(args.file) as store:
        if args.json:  # json.dumps escapes control characters a store's names may carry
            print(json.dumps(summary(store, verify=args.verify), indent=2))
            return 0
        print(describe(store))
        if args.verify:  # a damaged file raises StoreError naming the parts
            print(f"verify:      {printable(str(verify(store)))}")
    return 0


# ----------------------------------------------------------------------------------- main

# train and bench import torch (~2 s): `fastprune info` and `convert` should not pay for it, so
# their full parsers are built only when they are the command being run; otherwise a stub with
# the one-line summary lists them in `fastprune --help`.
LAZY_COMMANDS = {
    "train": ("fastprune.train.cli", "train a model on a store, pruning the data dynamically"),
    "bench": ("fastprune.bench.cli", "benchmark every strategy against full-data training"),
    "scores": ("fastprune.prune.report", "export per-sample scores and times kept from a train checkpoint"),
}

# Subcommands built eagerly, in help order (the lazy ones follow).
COMMANDS: list[Callable] = [add_convert_command, add_info_command]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; ``command`` names the one lazy subcommand whose full parser is needed."""
    parser = argparse.ArgumentParser(prog=PROG, description="Dynamic data pruning with a packed, "
                                     "memory-mapped data path.")
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    for name, (module, summary) in LAZY_COMMANDS.items():
        if name == command:
            getattr(importlib.import_module(module), f"add_{name}_command")(subparsers)
        else:
            subparsers.add_parser(name, help=summary)
    # No abbreviated options: `--train X` silently meaning `--train-limit X` is a trap.
    parser.allow_abbrev = False
    for subparser in subparsers.choices.values():
        subparser.allow_abbrev = False
    parser.commands = subparsers.choices  # their own parsers, for their own usage lines
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (errors: one line on stderr, code 1). Options
    that argparse refuses, or that do not go together (UsageError), exit 2 through SystemExit
    with the command's usage, as argparse does."""
    with ctrl_c_after_imports():  # a Ctrl-C that lands in an import (torch's: seconds) waits for its end
        return _run_command(sys.argv[1:] if argv is None else list(argv))


def _run_command(argv: list[str]) -> int:
    # The top-level parser has no options taking a value, so the first word is the command.
    command = next((word for word in argv if not word.startswith("-")), None)
    try:  # building it imports the command's modules (torch: seconds), where Ctrl-C is likely
        parser = build_parser(command)
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said by the command's parser, with its usage (argparse's top-level one shows neither)
            (parser.commands.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    except KeyboardInterrupt:
        print(f"{PROG}{'' if command is None else ' ' + _printable(command)}: interrupted", file=sys.stderr)
        return 130
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        # SIGTERM (a batch scheduler's stop, `kill`) ends as Ctrl-C does: temporary files removed,
        # loader threads stopped, one line; it used to kill `train` with no message
        with warnings.catch_warnings(), sigterm_as_interrupt():
            warnings.showwarning = functools.partial(_one_line_warning, args.command, warnings.showwarning)
            return args.run(args)
    except UsageError as exc:  # options that do not go together: as argparse refuses one, usage and exit 2
        (parser.commands.get(args.command) or parser).error(_printable(str(exc)))
    except BrokenPipeError:  # `fastprune info FILE | head`: the reader left; not an error to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush is quiet
        return 1
    except (FastpruneError, OSError) as exc:  # the user's input or files; a traceback would not help
        # messages may quote a file's own text (names, paths): escaped, never sent raw to a terminal
        print(f"{PROG} {args.command}: error: {_printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        terminated = str(exc).startswith("terminated")  # sigterm_as_interrupt's
        print(f"{PROG} {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130


def _version() -> str:
    from . import __version__, build_info

    return f"{PROG} {__version__} (JPEG via {build_info()['jpeg_decoder']})"


def _one_line_warning(command, show, message, category, *args, **kwargs) -> None:
    """fastprune's own warnings (FastpruneWarning) as one line on stderr, like its errors; others
    as Python shows them."""
    from .errors import FastpruneWarning

    if not issubclass(category, FastpruneWarning):
        return show(message, category, *args, **kwargs)
    print(f"{PROG} {command}: warning: {_printable(str(message))}", file=sys.stderr)


def _printable(text: str) -> str:
    from .store.info import printable

    return printable(text)


if __name__ == "__main__":
    sys.exit(main())
