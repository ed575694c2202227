"""Seeing the pruning: per-sample scores, times kept and last kept epoch, from a strategy or a
training checkpoint, written as CSV or .npz (``fastprune scores RUN.pt``), and a PNG grid of the
most-kept and least-kept images of every class.

    report = strategy.sample_report()                   # dict of per-sample arrays
    fastprune.prune.export_scores(strategy, "scores.csv")   # or .npz; a checkpoint path works too
    fastprune.prune.kept_grid(strategy, "train.beton", "kept.png")   # needs the plots extra
"""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._args import check_path, check_positive_int
from .._outputs import check_distinct, check_image_file, check_output_file, written_atomically
from ..errors import ConfigError, UsageError, require
from ..store.fields import class_label_candidates
from ..store.reader import Store, store_name
from .base import _STATE_FORMAT
from .sharding import Sharding
from .static import forgetting_scores

#: The report's columns, in CSV order (``label`` and ``class`` follow when a store is given).
COLUMNS = ("index", "score", "loss", "seen", "times_kept", "last_kept_epoch")
# why a report has no times kept
NO_TIMES_KEPT = ("which a strategy built with track_kept=False does not count, and a checkpoint written by a "
                 "fastprune from before they were counted does not hold")


def strategy_scores(strategy) -> np.ndarray:
    """What ``strategy`` ranks samples by, one float32 per sample (higher: kept first): the
    bandit score for UCB, EpsilonGreedy and EL2N (+inf while unseen), the forgetting count for
    Forgetting (+inf: never classified correctly); the table's EMA loss for the others
    (InfoBatch keeps the samples above its mean; UniformRandom and Full rank nothing)."""
    scores = getattr(strategy, "_scores", None)
    if scores is not None:
        return np.asarray(scores(), dtype=np.float32).copy()
    return np.asarray(strategy.table.mean, dtype=np.float32).copy()


def sample_report(strategy) -> dict[str, np.ndarray]:
    """Per-sample arrays of a live strategy (see ``Strategy.sample_report``)."""
    table = strategy.table
    sharding = getattr(strategy, "sharding", None)  # a sharded strategy reports its own shard's rows
    index = np.arange(strategy.num_samples, dtype=np.int64) if sharding is None else sharding.ids(strategy.shard_rank)
    report = {"index": index, "score": strategy_scores(strategy),
              "loss": np.asarray(table.mean, dtype=np.float32).copy(), "seen": np.asarray(table.seen).copy()}
    if getattr(strategy, "track_kept", True):
        report["times_kept"] = np.asarray(strategy.times_kept, dtype=np.uint32).copy()
        report["last_kept_epoch"] = np.asarray(strategy.last_kept_epoch, dtype=np.int32).copy()
    return report


def report_from_state(state: dict) -> dict[str, np.ndarray]:
    """The report of a strategy's ``state_dict()`` (as a checkpoint holds it), without building
    the strategy. One of a strategy built with ``track_kept=False``, or written by a fastprune
    from before times kept were counted, has no times kept and last kept epoch columns (such a
    file's zeros would read as samples never trained on). A sharded strategy's state reports its
    own shard's samples (``index`` names them); :func:`merge_reports` joins the shards of a run."""
    if not isinstance(state, dict) or state.get("format") != "fastprune.strategy/1":
        raise ConfigError("not a fastprune strategy state (a checkpoint of fastprune train, or state_dict())")
    config = state["config"]
    table = _table_of(config, state["table"])
    index = _state_ids(state, table.num_samples)
    if table.bandit_score is not None:  # UCB, EpsilonGreedy, EL2N
        score = table.score.copy()
    elif config["strategy"] == "Forgetting" and "forgets" in table.fields:
        score = forgetting_scores(table)
    else:
        score = table.mean.copy()
    report = {"index": index, "score": score, "loss": table.mean.copy(), "seen": table.seen.copy()}
    kept = state.get("kept")
    if config.get("track_kept", True) is False or kept is None:
        return report
    report["times_kept"] = np.asarray(kept["times"]).astype(np.uint32)
    report["last_kept_epoch"] = np.asarray(kept["last_epoch"]).astype(np.int32)
    return report


def _table_of(config: dict, fields: dict):
    """A ScoreTable holding a checkpoint's table ``fields``, with the strategy's score column."""
    from .table import OPTIONAL, ScoreTable

    rows = len(fields["mean"])
    name = config["strategy"]
    bandit = None
    if name in ("UCB", "EpsilonGreedy", "EL2N"):
        bandit = (float(config["c"]), config["bonus"] == "std") if name == "UCB" else (0.0, True)
    kept = tuple(f for f in OPTIONAL if f in fields or (f == "correct" and "forgets" in fields))
    table = ScoreTable(rows, config["decay"], fields=kept, bandit_score=bandit,
                       dtype=config.get("score_dtype", "float32"))
    table.load_state_dict(fields)
    return table


def _state_ids(state: dict, rows: int) -> np.ndarray:
    """The sample ids of a state's table rows: 0..N-1, or a sharded strategy's shard."""
    config = state["config"]
    n = int(config["num_samples"])
    if "sharding" not in config:
        if rows != n:
            raise ConfigError(f"strategy state holds {rows} table rows for {n} samples")
        return np.arange(n, dtype=np.int64)
    shard = state.get("shard")
    if shard is None:
        raise ConfigError("a sharded strategy's state without its shard record (written by an older "
                          "fastprune): load it into the strategy and call sample_report() instead")
    ids = Sharding(n, int(shard["world_size"]), int(config["seed"])).ids(int(shard["rank"]))
    if len(ids) != rows:
        raise ConfigError(f"strategy state holds {rows} table rows, but rank {shard['rank']}'s shard "
                          f"has {len(ids)}")
    return ids


def merge_reports(reports) -> dict[str, np.ndarray]:
    """One report of several (the shards of a sharded run, one per rank), ordered by sample id.
    Refuses reports that name a sample twice or hold different columns."""
    reports = list(reports)
    if not reports:
        raise ConfigError("merge_reports: no report given")
    columns = list(reports[0])
    for other in reports[1:]:
        if list(other) != columns:
            raise ConfigError(f"merge_reports: reports hold different columns ({columns} vs {list(other)})")
    merged = {name: np.concatenate([r[name] for r in reports]) for name in columns}
    order = np.argsort(merged["index"], kind="stable")
    merged = {name: column[order] for name, column in merged.items()}
    repeated = np.flatnonzero(np.diff(merged["index"]) == 0)
    if len(repeated):
        raise ConfigError(f"sample {int(merged['index'][repeated[0]])} is in more than one of the reports, which are "
                          "merged as the shards of one sharded run: two separate runs (export each on its own), "
                          "or one rank's checkpoint twice?")
    return merged


def report_of(source) -> dict[str, np.ndarray]:
    """The report of a strategy, of a report itself, or of a ``fastprune train`` checkpoint (path);
    of a list or tuple of those (a sharded run's per-rank checkpoints), their merged report."""
    return run_report(source)[0]


def run_report(source) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(:func:`report_of` ``source``, the settings its checkpoint records: ``train_store``, the
    training store's size and checksums (see ``store_identity``), and ``label_field`` where the run
    named one; empty when ``source`` is no checkpoint)."""
    if isinstance(source, (list, tuple)):
        parts = [run_report(part) for part in source]
        return merge_reports(report for report, _ in parts), next((s for _, s in parts if s), {})
    if isinstance(source, dict):
        return (report_from_state(source) if source.get("format") == _STATE_FORMAT else source), {}
    if isinstance(source, (str, os.PathLike)):
        return _file_report(source)
    return sample_report(source), {}


def _file_report(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """:func:`run_report` of a file: ``fit``'s (``fastprune train``'s) checkpoint, a strategy's
    ``state_dict()`` saved with ``torch.save``, or a dict of yours holding one (a loop's own
    checkpoint: ``{"strategy": strategy.state_dict(), "model": ...}``)."""
    from ..train.checkpoints import CHECKPOINT_FORMAT, check_format, read_saved

    state = read_saved(path, map_location="cpu")
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        if state.get("strategy") is None:
            raise ConfigError(f"{path}: the checkpoint holds no strategy (a run without pruning)")
        return report_from_state(state["strategy"]), state.get("settings") or {}
    if isinstance(state, dict) and state.get("format") == _STATE_FORMAT:
        return report_from_state(state), {}
    if isinstance(state, dict) and str(state.get("format", "")).startswith("fastprune-checkpoint-"):
        check_format(path, state)  # another version's checkpoint: its refusal says which to use
    held = [key for key, value in state.items() if isinstance(value, dict) and value.get("format") == _STATE_FORMAT] \
        if isinstance(state, dict) else []
    if len(held) == 1:
        return report_from_state(state[held[0]]), {}
    if len(held) > 1:
        raise ConfigError(f"{path}: holds {len(held)} strategies' states (under {', '.join(map(repr, held))}): "
                          "give one, as export_scores(torch.load(path)[KEY], ...)")
    raise ConfigError(f"{path}: holds no fastprune strategy state: expected fastprune train's (fit's) checkpoint, "
                      "a strategy's state_dict() saved with torch.save, or a dict holding one")


def _with_labels(report: dict, store, trained_on: str | None = None, label_field: str | None = None) -> dict:
    """``report`` with the ``store``'s labels (of ``label_field``; None: the Loader's choice) and
    class names; ``trained_on``: the store identity the run's checkpoint records, which ``store``
    must match (another store of the same size would label every row silently wrong)."""
    from ..loader._source import open_source

    with open_source(store, None, label_field, threads=1, quiet=True) as source:  # _labelled names the fix
        return _labelled(report, source, store_name(store), trained_on)


def _run_label_field(recorded: dict[str, Any], label_field: str | None) -> str | None:
    """The label field a report reads: the one the checkpoint's run trained on, else ``label_field``;
    a ``label_field`` naming another is refused (the rows would be labelled by a field not trained on)."""
    trained = recorded.get("label_field")
    if trained is not None and label_field is not None and trained != label_field:
        raise ConfigError(f"label_field={label_field!r}, but the run trained on {trained!r} (its checkpoint "
                          "records it): give that one, or none")
    return trained or label_field


def _labelled(report: dict, source, name: str, trained_on: str | None) -> dict:
    """:func:`_with_labels` on ``source``, an open loader view of the store named ``name``."""
    from ..loader._source import targets_kind
    from ..store.checksums import store_identity

    if trained_on is not None and store_identity(source.owner) != trained_on:
        raise ConfigError(f"{name} is not the store the run trained on (its checkpoint records "
                          f"{trained_on}; this one: {store_identity(source.owner)}): give the run's "
                          "training store")
    if source.labels is None:
        candidates = class_label_candidates(source.owner.fields)
        raise ConfigError(f"{name}: the store has no label field" + (
            f"; name one of {', '.join(candidates)} with label_field= (--label-field)" if candidates else ""))
    kind = targets_kind(source.labels)
    if kind:  # the report groups samples by class
        raise ConfigError(f"{name}: its label field {source.label_field!r} holds {kind}, not class "
                          "labels: report without the store")
    index = report["index"]
    whole = np.array_equal(index, np.arange(len(index)))  # ids 0..N-1, not one shard's
    if (len(source.labels) != len(index)) if whole else int(index.max()) >= len(source.labels):
        raise ConfigError(f"{name} holds {len(source.labels)} samples, the strategy scored "
                          f"{len(index)}{'' if whole else ' of a larger set'}: give the run's training "
                          "store")
    report = {**report, "label": source.labels[report["index"]]}
    names = source.owner.field_class_names.get(source.label_field)
    if names:  # of the rows' labels (a shard's report holds some samples only)
        report["class"] = np.array([names[i] if 0 <= i < len(names) else str(i)
                                    for i in report["label"]])
    files = sample_names(source.owner, report["index"])
    if files is not None:
        report["name"] = files
    return report


def sample_names(store, ids: np.ndarray) -> np.ndarray | None:
    """The ``name`` field of samples ``ids`` (the image's path, which ``convert --names`` stores)
    as str, or None where the store has no such bytes field."""
    from ..store.fields import BytesField

    if not isinstance(store.fields.get("name"), BytesField):
        return None
    ptrs, sizes = store.field_ranges("name")
    buffer = store.buffer
    return np.array([bytes(buffer[int(ptrs[i]):int(ptrs[i]) + int(sizes[i])]).decode("utf-8", "backslashreplace")
                     for i in ids])


def export_scores(source, path, *, store=None, trained_on: str | None = None,
                  label_field: str | None = None) -> Path:
    """Write the per-sample report of ``source`` (a strategy, its state_dict, a checkpoint path,
    or a list of these: the shards of a ``distributed="sharded"`` run, merged) to ``path``:
    ``.csv`` (one row per sample, columns :data:`COLUMNS`) or ``.npz`` (one array per column).
    ``store``: the training store, which adds ``label`` (and ``class``, where the store names its
    classes, and ``name``, each image's file, where ``convert --names`` stored it); a checkpoint's
    run must have trained on it. ``trained_on``: the training store's identity, for a ``source``
    that is already a report. ``label_field``: the store's field of class labels (a checkpoint's
    run records its own, and another is refused). Returns the path."""
    path = check_path(path, "export_scores: path")
    report, recorded = run_report(source)
    if store is not None:
        report = _with_labels(report, store, recorded.get("train_store") or trained_on,
                              _run_label_field(recorded, label_field))
    by_id = np.argsort(report["index"], kind="stable")  # one shard's rows come in shard order: by id, as merged
    report = {name: column[by_id] for name, column in report.items()}
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".npz"):
        raise ConfigError(f"{path}: export_scores writes .csv or .npz, not {path.suffix or 'a file without suffix'!r}")
    if suffix == ".npz":
        with written_atomically(path, binary=True) as file:
            np.savez(file, **report)
        return path
    with written_atomically(path, newline="") as file:
        writer = csv.writer(file)
        writer.writerow(list(report))
        writer.writerows(zip(*(column.tolist() for column in report.values())))
    return path


def kept_order(report: dict, ids: np.ndarray) -> np.ndarray:
    """``ids`` (rows of ``report``) from most kept to least kept: times kept, then score (ties: lower
    sample id first; a shard's report lists its samples in shard order, not by id)."""
    times, score = report["times_kept"][ids].astype(np.int64), report["score"][ids].astype(np.float64)
    score = np.nan_to_num(score, nan=-np.inf)
    return ids[np.lexsort((report["index"][ids], -score, -times))]


def kept_grid(source, store, path, *, per_class: int = 6, max_classes: int = 20,
              trained_on: str | None = None, label_field: str | None = None) -> Path:
    """Draw a PNG of each class's ``per_class`` most-kept images (left) and least-kept images
    (right; titled "never kept" when every one shown there is), captioned with their times kept; one row per
    class (the first ``max_classes``), named by the store's class names where it has them.
    ``source``: a strategy, its state_dict, a report or a checkpoint path; ``store``: the training
    store it scored (``trained_on``, ``label_field``: as in :func:`export_scores`). Needs matplotlib (the
    ``plots`` extra)."""
    from ..loader._source import open_source

    per_class = check_positive_int(per_class, "kept_grid: per_class")
    max_classes = check_positive_int(max_classes, "kept_grid: max_classes")
    matplotlib = require("matplotlib", "plots", "drawing the kept-images grid")
    check_image_file(path, "kept_grid: path", error=ConfigError)  # before the work: "." would write "./.png"
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "plots", "drawing the kept-images grid")
    report, recorded = run_report(source)
    if "times_kept" not in report:
        raise ConfigError(f"the kept-images grid needs times kept, {NO_TIMES_KEPT}")
    label_field = _run_label_field(recorded, label_field)
    with open_source(store, None, label_field, threads=1, quiet=True) as images:  # once, for labels and pictures
        report = _labelled(report, images, store_name(store), recorded.get("train_store") or trained_on)
        fig = _grid_figure(plt, report, images, per_class, max_classes)
    with written_atomically(path, binary=True) as file:
        fig.savefig(file, format=Path(path).suffix[1:].lower(), dpi=100)
    plt.close(fig)
    return path


def _grid_figure(plt, report: dict, images, per_class: int, max_classes: int):
    """The kept grid's figure: ``images`` (an open source of the training store) gives the pictures."""
    labels, names = report["label"], images.owner.field_class_names.get(images.label_field)
    classes = np.unique(labels)[:max_classes]
    columns = 2 * per_class
    fig, axes = plt.subplots(len(classes), columns, figsize=(1.1 * columns + 1.2, 1.2 * len(classes) + 0.6),
                             squeeze=False)
    never_all = True  # every image on the right was never kept
    for row, label in zip(axes, classes):
        ids = np.flatnonzero(labels == label)
        order = kept_order(report, ids)
        # a class of fewer than 2 x per_class samples: the right side shows the ones the left does not
        most = order[:per_class]
        least = order[len(most):][::-1][:per_class]
        never_all &= bool((report["times_kept"][least] == 0).all())
        for axis, i in zip(row, [*most, *([None] * (per_class - len(most))), *least,
                                 *([None] * (per_class - len(least)))]):
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
            if i is None:
                continue
            sample = int(report["index"][i])  # rows are ids, except in one shard's report
            axis.imshow(_image(images, sample), interpolation="nearest")
            caption = f"#{sample} x{int(report['times_kept'][i])}"
            if "name" in report:  # the file's own name (convert --names), cut to fit the cell
                caption += "\n" + _short(Path(str(report["name"][i])).name, 16)
            axis.set_title(caption, fontsize=6, pad=2, parse_math=False)  # "$x$" in a file name
        name = names[label] if names and 0 <= label < len(names) else str(int(label))
        # parse_math=False: a class named "$\\bad$" is text, not a formula matplotlib fails on
        row[0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center", parse_math=False)
    right = "never kept" if never_all else "least kept"
    files = ", file" if "name" in report else ""
    fig.suptitle(f"most kept (left) | {right} (right), captions: sample #id x times kept{files}", fontsize=9)
    fig.tight_layout()
    return fig


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _image(source, i: int) -> np.ndarray:
    images = np.empty((1, int(source.heights[i]), int(source.widths[i]), 3), np.uint8)
    source.gather.gather(np.array([i], dtype=np.int64), images, max_threads=1)
    return images[0]


# ----------------------------------------------------------------------------------- fastprune scores


def add_scores_command(subparsers):
    """Register ``fastprune scores`` (the top-level cli.py lists it in LAZY_COMMANDS)."""
    parser = subparsers.add_parser(
        "scores", help="export per-sample scores and times kept from a train checkpoint",
        description="Export each sample's score, EMA loss, updates seen, times kept and last kept "
                    "epoch from a `fastprune train --checkpoint` file, as CSV or .npz (by --out's "
                    "suffix); with --store, also its label, class and file name (a store converted "
                    "with --names), and --grid draws the most- "
                    "and least-kept images of every class (needs the plots extra).")
    parser.add_argument("checkpoint", type=Path, nargs="+", metavar="RUN.pt",
                        help="a fastprune train checkpoint, or a torch.save file of a strategy's state_dict() "
                             "(or of a dict holding one); a sharded run's per-rank checkpoints, all of "
                             "them, give one report of every sample")
    parser.add_argument("--out", "-o", type=Path, metavar="FILE",
                        help="output .csv or .npz (default: RUN_scores.csv beside the first checkpoint)")
    parser.add_argument("--store", type=Path, metavar="FILE", help="the run's training store: adds labels")
    parser.add_argument("--grid", type=Path, metavar="PNG", help="also draw the kept-images grid (needs --store)")
    parser.set_defaults(run=scores_main)
    return parser


def scores_main(args) -> int:
    if args.grid is not None and args.store is None:
        raise UsageError("--grid needs --store (the run's training store, whose images it draws)")
    first = args.checkpoint[0]
    out = args.out or first.with_name(f"{first.stem}_scores.csv")
    inputs = [*args.checkpoint, *([args.store] if args.store else [])]
    check_output_file(out, "--out", inputs, makes_folders=True)
    if out.suffix.lower() not in (".csv", ".npz"):  # before the checkpoint is read
        raise ConfigError(f"--out {out}: the report is a .csv or .npz file, not "
                          f"{repr(out.suffix) if out.suffix else 'a file without suffix'}")
    if args.grid is not None:
        check_output_file(args.grid, "--grid", inputs, makes_folders=True)
        check_distinct({"--out": out, "--grid": args.grid})
        require("matplotlib", "plots", "--grid")
        check_image_file(args.grid, "--grid")
    report, recorded = run_report(args.checkpoint if len(args.checkpoint) > 1 else first)
    if args.grid is not None and "times_kept" not in report:  # before writing anything
        raise ConfigError(f"--grid needs times kept, {NO_TIMES_KEPT} ({first}): drop --grid")
    with contextlib.ExitStack() as opened:  # the store opened (and its offsets checked) once, for both outputs
        store = None if args.store is None else opened.enter_context(Store(args.store))
        export_scores(report, out, store=store, trained_on=recorded.get("train_store"),
                      label_field=recorded.get("label_field"))
        times = report.get("times_kept")
        kept = ("no times kept (track_kept=False, or a checkpoint older than their counting)" if times is None else
                f"kept {times.mean():.2f} epochs on average, {int((times == 0).sum())} never kept")
        print(f"wrote {out}: {len(report['index'])} samples, {kept}")
        if args.grid is not None:
            grid = kept_grid(report, store, args.grid, trained_on=recorded.get("train_store"),
                             label_field=recorded.get("label_field"))
            print(f"wrote {grid}")
    return 0
