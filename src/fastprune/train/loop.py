"""The training loop: ``fit`` (epochs of training, evaluation, checkpoints) and ``evaluate``.

Besides the three lines data pruning needs (see ``fastprune.train``), the loop keeps the books a
benchmark needs to be honest: timing that separates training, evaluation, pruning overhead and the
wait for data.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._args import check_bool, check_path, check_positive_int
from .._outputs import written_atomically
from ..errors import ConfigError, TrainingDiverged, UsageWarning, first_line
from ..loader._source import OTHER_TASKS, targets_kind
from ..prune.table import MAX_LOSS, SKIP_HINT, InvalidLoss
from ..store.names import named_class_count
from .checkpoints import load_checkpoint, save_checkpoint
from .device import autocast_dtype, cpu_channels_last_hazard, memory_format_for, model_device, synchronize
from .schedule import ScheduleFactory, build_scheduler, make_optimizer, replan_schedule


class _OverheadClock:
    """Accumulates the seconds spent inside the strategy: ``select``, ``num_selected``, ``update``,
    ``flush`` (where a GPU's deferred updates are applied).

    The loader, not ``fit``, calls ``select`` (the strategy is its sampler), so the clock wraps the
    strategy's methods on the instance for the duration of the run and restores them afterwards.
    """

    def __init__(self):
        self.seconds = 0.0

    def timed(self, method, own=None):
        """``method`` timed; ``own``: the instance attribute it masks, if the user set one (a copy
        of the strategy made meanwhile keeps that, not the wrapper: Strategy.__getstate__)."""
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        wrapper.fastprune_timed = True  # type: ignore[attr-defined]
        wrapper.fastprune_masks = own  # type: ignore[attr-defined]
        return wrapper

    @contextlib.contextmanager
    def watching(self, strategy) -> Iterator[None]:
        if strategy is None:
            yield
            return
        patched = [name for name in ("select", "num_selected", "update", "flush") if hasattr(strategy, name)]
        own = {name: vars(strategy)[name] for name in patched if name in vars(strategy)}  # the user's own
        for name in patched:
            setattr(strategy, name, self.timed(getattr(strategy, name), own.get(name)))
        try:
            yield
        finally:
            for name in patched:
                if name in own:
                    setattr(strategy, name, own[name])  # an instance attribute of the user's, put back
                else:
                    with contextlib.suppress(AttributeError):
                        delattr(strategy, name)  # removes the instance attribute, unmasking the method


class _WaitClock:
    """Accumulates the host seconds the training loop spends blocked on the loader's next batch.

    It times the loader's own iterator (``iter`` and every ``next``, the last one that ends the
    epoch included), not the progress bar wrapped around it: the figure is the data path's alone.
    Two ``perf_counter`` calls per batch, no device synchronization.
    """

    def __init__(self):
        self.seconds = 0.0

    def timed(self, loader) -> Iterator:
        """The loader's batches, timed. Closing it (the epoch loop does, however it ends) closes the
        loader's pass, its threads and finished batches, now: left to the garbage collector, a
        pass stayed alive as long as a traceback holding it (IPython keeps the last one)."""
        start = time.perf_counter()
        batches = iter(loader)  # a generator loader starts its epoch (selection...) at the first next
        try:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    self.seconds += time.perf_counter() - start
                    return
                self.seconds += time.perf_counter() - start
                yield batch
                start = time.perf_counter()  # the step's host work is done: the wait for the next begins
        finally:
            close = getattr(batches, "close", None)  # a generator's; a DataLoader's iterator has none
            if close is not None:
                close()


def _trainable_memory_format(model: nn.Module, device: torch.device, asked: torch.memory_format):
    """``asked``, or the contiguous format where torch's CPU channels_last backward would corrupt
    memory for one of the model's layers (see :func:`device.cpu_channels_last_hazard`): a crash of
    the interpreter is worth no speed-up."""
    if asked is not torch.channels_last or device.type != "cpu":
        return asked
    layer = cpu_channels_last_hazard(model)
    if layer is None:
        return asked
    warnings.warn(f"fit: channels_last is off for this model on the CPU: torch's CPU backward of {layer} in "
                  "channels_last corrupts memory, hangs or computes wrong weight gradients (measured with torch "
                  "2.14.1); training goes on in the contiguous format", UsageWarning, stacklevel=3)
    return torch.contiguous_format


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, amp: str | bool = "auto",
             channels_last: str | bool = "auto") -> tuple[float, float]:
    """Return (accuracy in percent, mean cross-entropy) of ``model`` over ``loader``, a loader
    without a pruning sampler (a pass of one would start the strategy's next epoch)."""
    if _pruning_strategy(loader) is not None:
        raise ValueError(f"evaluate: this loader prunes (its sampler is {type(loader.sampler).__name__}): a pass "
                         "would measure one epoch's subset and start the strategy's next epoch, which training "
                         "would then skip; evaluate on a loader without a sampler (Loader(store, batch_size, "
                         "shuffle=False))")
    return _evaluate(model, loader, amp=amp, channels_last=channels_last)[:2]


@torch.no_grad()
def _evaluate(model: nn.Module, loader, *, amp, channels_last):
    """(accuracy %, mean cross-entropy, per-class hits, per-class counts): the counts are int64
    tensors indexed by label (empty when nothing was seen).

    The sums stay on the device and are read once at the end: a read per batch (``.item()``, a
    boolean mask, ``bincount``'s size) would make the host wait for the GPU on every batch."""
    device = model_device(model)
    dtype = autocast_dtype(device, amp)
    memory_format = memory_format_for(device, channels_last)
    was_training = model.training
    model.eval()
    seen = 0
    # float64, as the Python float the per-batch float32 sums were once added into
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = counts = torch.zeros(0, dtype=torch.int64, device=device)
    for batch in loader:
        images = batch[0].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = batch[1].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        right = logits.argmax(1) == labels
        seen += labels.numel()
        size = max(logits.shape[1], len(counts))  # shapes are known on the host: no sync
        counts = _grown(counts, size).index_add(0, labels, torch.ones_like(right, dtype=torch.int64))
        hits = _grown(hits, size).index_add(0, labels, right.long())
    model.train(was_training)
    hits, counts = hits.cpu(), counts.cpu()
    if seen == 0:
        return float("nan"), float("nan"), hits, counts
    # every right answer is a hit of its label (index_add refuses labels outside the classes)
    return 100.0 * int(hits.sum()) / seen, loss_sum.item() / seen, hits, counts


def _grown(counts: torch.Tensor, size: int) -> torch.Tensor:
    return counts if len(counts) == size else nn.functional.pad(counts, (0, size - len(counts)))


def class_accuracies(hits: torch.Tensor, counts: torch.Tensor, names=None) -> dict[str, float]:
    """{class name: accuracy %} over the classes the evaluation saw; ``names`` (the store's class
    names, by label) name them, else the label's number does. A name two labels share (ImageNet
    has two "crane"s) gets its label added, "crane (517)", so that no class's entry replaces another's."""
    shared = {name for name, times in Counter(names or ()).items() if times > 1}

    def key(k: int) -> str:
        if not names or k >= len(names):
            return str(k)
        return f"{names[k]} ({k})" if names[k] in shared else names[k]

    return {key(k): round(100.0 * int(hits[k]) / int(counts[k]), 4) for k in range(len(counts)) if int(counts[k])}


def loader_class_names(loader) -> list[str] | None:
    """The class names a fastprune Loader's store keeps for its label field (None: none, or
    another kind of loader)."""
    source = getattr(loader, "_source", None)
    owner = getattr(source, "owner", None)
    names = getattr(owner, "field_class_names", None)
    return None if names is None else names.get(source.label_field)


def loader_class_count(loader) -> int | None:
    """How many classes a fastprune Loader's store has, counted as `fastprune train` counts them:
    its class names' count where every label is below it, else its largest label + 1 (None: no
    labels, float targets, or another kind of loader)."""
    labels = getattr(getattr(loader, "_source", None), "labels", None)
    if labels is None or not len(labels) or not np.issubdtype(labels.dtype, np.integer):
        return None
    return named_class_count(loader_class_names(loader), labels) or int(labels.max()) + 1


#: fit(compile=...) values: torch.compile's mode for each (None: torch's default mode).
COMPILE_MODES = {True: None, "default": None, "reduce-overhead": "reduce-overhead",
                 "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs"}
# The same modes as the command line and the bench settings name them ("off": no compile).
COMPILE_CHOICES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


def compiled_forward(model: nn.Module, compile) -> nn.Module:
    """``model`` itself for ``compile`` False/None/"off", else ``torch.compile(model, mode=...)`` with the
    mode of :data:`COMPILE_MODES` (True/"default", "reduce-overhead": CUDA graphs,
    "max-autotune-no-cudagraphs"). The compiled module shares the model's parameters; it is used
    for the training forward (and its backward) only, checkpoints hold the model's own keys."""
    if compile is None or compile is False or compile == "off":  # "off": the command line's spelling
        return model
    if not isinstance(compile, (bool, str)) or compile not in COMPILE_MODES:
        raise ValueError(f"fit: compile must be False, None, 'off', True or one of "
                         f"{', '.join(repr(m) for m in COMPILE_MODES if m is not True)}, got {compile!r}")
    return torch.compile(model, mode=COMPILE_MODES[compile])


def _train_one_epoch(model, loader, strategy, optimizer, scheduler, criterion, *, epoch, dtype,
                     memory_format, scaler, progress, forward=None, graphs=False) -> dict[str, float]:
    """One pass over the epoch's selected samples (``epoch``: 0-based, for messages). Returns
    samples, steps, mean loss, last LR and ``data_wait_s`` (see :class:`_WaitClock`).
    ``forward``: the module that runs the model (a
    compiled one), default ``model``; ``graphs``: it replays CUDA graphs, so each step is marked as
    a new one."""
    device = model_device(model)
    forward = model if forward is None else forward
    model.train()
    samples, steps, loss_sum = 0, 0, torch.zeros((), dtype=torch.float64, device=device)
    # under skip_invalid, the losses the strategy can score (counted on the device, read once)
    scorable = torch.zeros((), dtype=torch.int64, device=device) if getattr(strategy, "skip_invalid", False) else None
    lr = optimizer.param_groups[0]["lr"]
    waits = _WaitClock()
    # closed however the loop ends: a Ctrl-C inside the progress bar left the pass to the garbage collector
    with contextlib.closing(waits.timed(loader)) as timed:
        for batch in _progress_bar(timed, loader, progress):
            if batch.labels is None:
                raise ValueError("fit: the loader yields no labels (its store has no field named 'label', and none "
                                 "or several other integer fields): pass label_field= (an integer field) to Loader")
            images = batch.images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = batch.labels.to(device, non_blocking=True)
            weights = batch.weights.to(device, non_blocking=True)
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = forward(images) if steps else _first_forward(forward, images)
            if not steps:  # once an epoch (a host sync): a model that cannot classify these labels
                _check_logits(logits, labels, loader)
            # Loss in float32 even under autocast: the strategy ranks samples by it.
            loss = criterion(logits.float(), labels)
            _check_per_sample(loss, labels)
            if strategy is not None:
                # Device tensors as they are: a GPU's update is staged there, not copied to the host
                # (which would make the CPU wait for the GPU every step), and applied when read.
                try:
                    strategy.update(batch.indices, loss.detach(), logits.argmax(1) == labels)  # timed by the clock
                except InvalidLoss as exc:  # this step's loss, or (staged ones applied early) an earlier one's
                    bad = (~(loss.detach().abs() <= MAX_LOSS)).nonzero()  # a sync, but only on the way out
                    if not len(bad):
                        raise _diverged(f"epoch {epoch + 1}", exc, lr) from None
                    sample = int(torch.as_tensor(batch.indices)[int(bad[0])])
                    raise _diverged(f"epoch {epoch + 1}, step {steps + 1}",
                                    f"the loss of sample {sample} is {loss[bad[0]].item():g}", lr) from None
            # mean (not sum/weights.sum()) of weighted losses: InfoBatch's 1/keep up-weighting must
            # survive for the gradient to stay an unbiased estimate of the full-data gradient.
            scaler.scale((loss * weights).mean()).backward()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses, before the schedule moves on
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach().sum()  # no .item() here: it would sync the GPU every step
            if scorable is not None:
                scorable += (loss.detach().abs() <= MAX_LOSS).sum()
            samples += labels.numel()
            steps += 1
    if steps == 0:
        raise ValueError("fit: the training loader yielded no batch this epoch (drop_last with a batch "
                         "larger than the epoch's selected samples?)")
    mean_loss = loss_sum.item() / samples
    return {"samples": samples, "steps": steps, "loss": mean_loss, "lr": lr, "data_wait_s": waits.seconds,
            "scorable": None if scorable is None else int(scorable)}


def _diverged(where: str, what, lr: float) -> TrainingDiverged:
    """``what``: a description, or the strategy's InvalidLoss (its hint about skip_invalid, which
    the strategy was not built with, left out)."""
    what = str(what).replace(SKIP_HINT, "")
    return TrainingDiverged(f"fit: training diverged in {where}: {what}; lower the learning rate (the "
                            f"last step's was {lr:g}) or check the data and the model")


def _flush_updates(strategy, epoch: int, lr: float) -> None:
    """Apply the epoch's deferred (GPU) updates; a loss they cannot take is a diverged run."""
    if hasattr(strategy, "flush"):
        try:
            strategy.flush()
        except InvalidLoss as exc:
            raise _diverged(f"epoch {epoch + 1}", exc, lr) from None


def _check_mean_loss(stats: dict, strategy, epoch: int, model: nn.Module) -> None:
    """No check per step (a host sync each): a run without a strategy is caught here, once. Under
    ``skip_invalid`` a loss the strategy cannot score is kept out of the scores, but it was
    backpropagated all the same: an epoch of which most losses could not be scored, or whose
    weights ended non-finite, stops the run here (it finished on garbage without a word)."""
    scorable = stats.pop("scorable")
    if scorable is None:  # no skip_invalid: the strategy raised at the step, or there is none
        if not math.isfinite(stats["loss"]):
            raise _diverged(f"epoch {epoch + 1}", f"the mean training loss is {stats['loss']}", stats["lr"])
        return
    why = " (skip_invalid keeps a few such losses out of the scores, not out of the gradient)"
    if scorable * 2 < stats["samples"]:
        raise _diverged(f"epoch {epoch + 1}", f"{stats['samples'] - scorable} of its {stats['samples']} losses were "
                        f"non-finite or beyond +-{MAX_LOSS:g}{why}", stats["lr"])
    if not _weights_finite(model):  # one sync an epoch: a finite loss can leave NaN gradients
        raise _diverged(f"epoch {epoch + 1}", f"the model's weights are no longer finite{why}", stats["lr"])


def _weights_finite(model: nn.Module) -> bool:
    """Whether every parameter is finite: one host sync for the whole model."""
    checks = [torch.isfinite(p).all() for p in model.parameters() if p.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def _check_strategy_selects(strategy, loader) -> None:
    """The strategy ``fit`` feeds losses to must be the one choosing the loader's samples (its
    sampler, or a PrunedSampler's strategy): else the scores never reach a selection, and the run
    prunes at random while looking like a bandit."""
    sampler, selecting = getattr(loader, "sampler", None), _pruning_strategy(loader)
    if strategy is None and selecting is not None and getattr(selecting, "uses_scores", True):
        warnings.warn(f"fit: train_loader's sampler {type(selecting).__name__} prunes by scores, but fit got no "
                      "strategy to feed the losses to: they never update and the run prunes blind; pass "
                      "strategy= the same object", UsageWarning, stacklevel=3)
    if strategy is not None and selecting is None:
        warnings.warn(f"fit: strategy {type(strategy).__name__} does not choose train_loader's samples (the loader "
                      "has no pruning sampler): the run trains on all of them and the scores go unused; pass "
                      "it to Loader(sampler=...) too", UsageWarning, stacklevel=3)
    if strategy is None or selecting is None:
        return
    # the same object, or one wrapping the other (a recording wrapper's .strategy)
    if not any(a is b for a in (sampler, selecting) for b in (strategy, getattr(strategy, "strategy", None))):
        raise ValueError(f"fit: strategy {type(strategy).__name__} is not the one that selects train_loader's "
                         f"samples ({type(selecting).__name__}): pass the same object to Loader(sampler=...) "
                         "(or PrunedSampler) and to fit")


def _check_strategy(strategy, epochs: int) -> None:
    """A strategy is an object with select and update (a name such as "ucb" failed at step 1),
    built for the run's length: InfoBatch(epochs=10) under fit(epochs=3) never reached its final
    full-data epochs, and nothing said so."""
    if strategy is None:
        return
    if not (hasattr(strategy, "select") and hasattr(strategy, "update")):
        raise TypeError(f"fit: strategy must be a pruning strategy (select and update), got "
                        f"{type(strategy).__name__} {strategy!r:.40}; e.g. fastprune.UCB(len(store), keep=0.5)")
    planned = getattr(strategy, "epochs", None)
    if planned is not None and planned != epochs:
        raise ConfigError(f"fit: strategy {type(strategy).__name__} was built for epochs={planned}, fit trains "
                          f"{epochs}: its epoch phases (final full-data epochs) follow its own; build it with "
                          f"epochs={epochs}")


def _check_strategy_unused(strategy, start_epoch: int) -> None:
    """A strategy carries one run: a second fit with it (a notebook cell run again, after a Ctrl-C
    or not) started at epoch 0 while the strategy stood at the old run's epoch, so epoch 1 reused
    that run's cached subset and the new scores were filed under its epochs, with no word."""
    if strategy is None:
        return
    selected = getattr(strategy, "current_epoch", 0)
    if selected > start_epoch:
        raise ConfigError(f"fit: strategy {type(strategy).__name__} has already selected epoch {selected} (of an "
                          f"earlier run) and this run starts at epoch {start_epoch}: its scores and cached subsets "
                          "belong to that run; build a new strategy (and Loader) for a new run, or resume=True "
                          "from that run's checkpoint")
    table = getattr(strategy, "table", None)
    if start_epoch == 0 and table is not None and (table.pending or bool(np.any(table.seen != 0))):
        warnings.warn(f"fit: strategy {type(strategy).__name__} already holds scores (of an interrupted run?): "
                      "they count in this run's first selections; build a new strategy to start afresh",
                      UsageWarning, stacklevel=3)


def _check_val_loader(loader) -> None:
    """Evaluation iterates batches; a store's path (a str iterates by character) failed only after
    the first epoch's training."""
    if loader is None:
        return
    if isinstance(loader, (str, bytes, os.PathLike)) or not hasattr(loader, "__iter__"):
        raise TypeError(f"fit: val_loader must be a Loader (or an iterable of (images, labels, ...) batches), "
                        f"got {type(loader).__name__} {loader!r:.60}; e.g. Loader(Store(path), 512, shuffle=False)")


def _check_optimizes(optimizer, model) -> None:
    """An optimizer built over another model's parameters trains nothing, silently."""
    own = {id(p) for p in model.parameters() if p.requires_grad}
    given = [p for group in optimizer.param_groups for p in group["params"]]
    if own and given and not any(id(p) in own for p in given):
        raise ConfigError(f"fit: optimizer holds none of the model's trainable parameters (built for another "
                          f"model, or before a copy?): the model would never change; build it from "
                          f"{type(model).__name__}.parameters()")


def _check_loader(loader) -> None:
    """fit drives a fastprune Loader (set_epoch, Batch tuples); a torch DataLoader fails deep
    inside otherwise."""
    if not hasattr(loader, "set_epoch") or not hasattr(loader, "batch_size"):
        raise TypeError(f"fit: train_loader must be a fastprune.Loader (it sets each epoch and yields "
                        f"Batch tuples), got {type(loader).__name__}; with a torch DataLoader and "
                        "PrunedSampler, write the loop (docs/guide.md)")


def _check_class_labels(loader, name: str) -> None:
    """fit trains and evaluates classifiers (argmax accuracy, cross-entropy val_loss): float or
    array labels (a regression or multi-label target named as the Loader's label_field) would
    train, and report meaningless metrics."""
    source = getattr(loader, "_source", None)
    kind = targets_kind(getattr(source, "labels", None))
    if kind:
        raise ConfigError(f"fit: {name}'s label field {source.label_field!r} holds {kind}; fit trains classifiers "
                          f"on integer class labels (for other targets, use the Loader in your own loop: "
                          f"{OTHER_TASKS})")


def _check_checkpoint_path(checkpoint) -> None:
    """A checkpoint that cannot be written fails now, not after the first epoch's training."""
    if checkpoint is None:
        return
    path = Path(checkpoint)
    if path.is_dir():
        raise ConfigError(f"fit: checkpoint {path} is a folder; name a file in it")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"fit: checkpoint {path}: {path.parent} is not a folder")


def _first_forward(forward, images: torch.Tensor) -> torch.Tensor:
    """The model on an epoch's first batch; a model built for other inputs (one channel, another
    size) fails here in one line naming the batch (the cause stays chained for a traceback)."""
    try:
        return forward(images)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, AssertionError) as exc:  # models check their input size with assert too (ViT)
        raise ConfigError(f"fit: the model fails on the first batch (images {tuple(images.shape)}, "
                          f"{str(images.dtype).replace('torch.', '')}): {first_line(exc)}") from exc


def _check_logits(logits: torch.Tensor, labels: torch.Tensor, loader=None) -> None:
    """One row of class scores per image, and a score for every label in the batch: else
    cross-entropy fails with "Target 2 is out of bounds" (or, on a GPU, a device-side assert).
    More scores than the store has classes train, but usually mean a model built with its default
    head (torchvision's 1000 classes): a warning."""
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ConfigError(f"fit: the loader's labels are {str(labels.dtype).replace('torch.', '')} "
                          f"{tuple(labels.shape)}; fit trains on integer class labels, one per image. Soft "
                          "labels (MixUp, CutMix) need a loop of your own: docs/guide.md, 'MixUp and CutMix'")
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(f"fit: the model returned a {type(logits).__name__}; fit needs a tensor of class "
                          "scores, [batch, classes] (wrap the model to return its logits)")
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ConfigError(f"fit: the model returned {tuple(logits.shape)} for a batch of {labels.shape[0]} "
                          "images; a classifier returns [batch, classes]")
    top = int(labels.max())
    if top >= logits.shape[1]:
        raise ConfigError(f"fit: the model returns {logits.shape[1]} class scores per image, but the batch "
                          f"holds label {top}: build it with num_classes={top + 1} or more (the store's "
                          "number of classes; fit trains classifiers, other tasks write their own loop)")
    classes = loader_class_count(loader) if logits.shape[1] > top + 1 else None
    if classes is not None and logits.shape[1] > classes:
        warnings.warn(f"fit: the model returns {logits.shape[1]} class scores per image but the store has "
                      f"{classes} classes: the extra outputs are trained to lose (build it with "
                      f"num_classes={classes})", UsageWarning, stacklevel=5)


def _check_per_sample(loss: torch.Tensor, labels: torch.Tensor) -> None:
    """One loss per sample, or the strategy would score a batch mean (and raise far from here)."""
    if loss.ndim != 1 or loss.shape[0] != labels.shape[0]:
        raise ValueError(f"fit: the criterion returned a loss of shape {tuple(loss.shape)} for a batch of "
                         f"{labels.shape[0]}; pruning needs one loss per sample: build it with "
                         "reduction='none', e.g. nn.CrossEntropyLoss(reduction='none')")


def _progress_bar(batches, loader, enabled: bool):
    """``batches`` (an iteration over ``loader``), under a progress bar if ``enabled``."""
    if not enabled:
        return batches
    from tqdm.auto import tqdm
    return tqdm(batches, total=len(loader), leave=False, dynamic_ncols=True, unit="batch")


def _format_record(record: dict[str, Any], epochs: int) -> str:
    return (f"epoch {record['epoch'] + 1}/{epochs}  samples {record['samples']}  "
            f"loss {record['loss']:.4f}  val_acc {_percent(record['val_acc'])}  "
            f"epoch {record['epoch_s']:.1f}s  total {record['cumulative_s']:.1f}s  "
            f"pruning {record['overhead_s']:.3f}s  data wait {record['data_wait_s']:.3f}s")


def _store_identity_of(loader) -> str | None:
    """store_identity of the store a fastprune Loader reads; None for any other loader."""
    from ..store.checksums import store_identity
    from ..store.reader import Store

    owner = getattr(getattr(loader, "_source", None), "owner", None)
    return store_identity(owner) if isinstance(owner, Store) else None


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _check_fit_inputs(train_loader, val_loader, strategy, epochs: int, on_epoch_end, checkpoint,
                      resume) -> bool:
    """fit's checks of its data, strategy, callback and checkpoint, all before any work; returns
    ``resume`` as a bool."""
    _check_loader(train_loader)
    _check_class_labels(train_loader, "train_loader")
    _check_class_labels(val_loader, "val_loader")
    _check_strategy(strategy, epochs)
    _check_strategy_selects(strategy, train_loader)
    _check_val_loader(val_loader)
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise TypeError(f"fit: on_epoch_end must be callable (or None), got {type(on_epoch_end).__name__}")
    _check_checkpoint_path(checkpoint)
    resume = check_bool(resume, "fit: resume")  # "no" is truthy
    if resume and checkpoint is None:
        raise ValueError("fit: resume=True needs checkpoint= (the file to continue from)")
    if checkpoint is not None and not resume and Path(checkpoint).exists():
        # as `fastprune train` refuses it: a restarted job without resume=True replaced a finished
        # or half-finished run's checkpoint after its first epoch
        raise ConfigError(f"fit: checkpoint {checkpoint} exists: resume=True continues that run; give another "
                          "file, or delete it to start afresh")
    if _pruning_strategy(val_loader) is not None:
        # stacklevel 3: fit's caller, through fit
        warnings.warn("fit: val_loader has a pruning sampler: each evaluation would measure another subset; "
                      "evaluate on a Loader without one (shuffle=False)", UsageWarning, stacklevel=3)
    return resume


def _pruning_strategy(loader):
    """The strategy choosing ``loader``'s samples (its sampler, or a PrunedSampler's), or None."""
    sampler = getattr(loader, "sampler", None)
    selecting = getattr(sampler, "strategy", sampler)
    return selecting if hasattr(selecting, "update") else None


def _run_settings(settings, epochs: int, model, train_loader, val_loader, dtype, optimizer,
                  scheduler) -> dict[str, Any]:
    """The caller's ``settings`` plus what fit adds itself: what a resume must find unchanged."""
    # precision: bf16 and fp32 train differently; a resume must not switch between them unnoticed
    settings = {**(settings or {}), "epochs": epochs, "model": type(model).__name__,
                "batch_size": getattr(train_loader, "batch_size", None),
                "precision": {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
                # a resume loads their states: another kind would take a state not its own
                "optimizer": type(optimizer).__name__,
                "schedule": None if scheduler is None else type(scheduler).__name__}
    if getattr(train_loader, "seed", None) is not None:  # order and augmentation follow it
        settings["loader_seed"] = train_loader.seed
    for key, loader in (("train_store", train_loader), ("val_store", val_loader)):
        identity = None if key in settings else _store_identity_of(loader)  # run_recipe passes its own
        if identity is not None:  # a resume on other data is refused; `scores --store` checks it
            settings[key] = identity
    return settings


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    strategy=None,
    epochs: int = 10,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: ScheduleFactory | torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    criterion: nn.Module | None = None,
    amp: str | bool = "auto",
    channels_last: str | bool = "auto",
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    settings: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    eval_every: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | Literal["stdout"] | None = "stdout",
    compile: bool | str | None = False,
) -> list[dict[str, Any]]:
    """Train the classifier ``model`` for ``epochs`` epochs on the samples ``strategy`` selects;
    return the history.

    ``fit`` is for classification: integer labels, a model returning [batch, classes] scores,
    accuracy by argmax and a cross-entropy ``val_loss``. Any other task (regression, multi-label,
    segmentation) prunes with the same strategy in a loop of your own (docs/guide.md, "Other
    tasks").

    Args:
        model: already on its device (batches are moved to the model's device).
        train_loader: yields ``Batch`` tuples; its sampler is ``strategy`` (or a plain permutation).
        val_loader: evaluated after every ``eval_every``-th epoch and after the last (accuracy in
            percent); None skips evaluation.
        strategy: the pruning strategy, whose ``update`` receives every batch's per-sample losses.
            None trains on whatever the loader yields, with no updates. One built with ``epochs=``
            (InfoBatch, final full epochs) must be built for this run's ``epochs``.
        optimizer: defaults to ``make_optimizer(model)``; one holding none of the model's
            trainable parameters (built for another model) is refused.
        schedule: a factory ``(optimizer, total_steps) -> scheduler`` (see ``one_cycle``), stepped
            once per batch and sized by ``planned_steps`` over the whole run (re-planned every
            epoch if it has ``replan``; InfoBatch's sizes follow its scores, so other schedules
            warn); or a built scheduler, also stepped once per batch (size it in steps, e.g.
            ``planned_steps(loader, 0, epochs, strategy)``, not epochs: an epoch-sized
            CosineAnnealingLR or a StepLR that would decay the rate to nothing warns, a OneCycleLR
            shorter than the run is refused), built on ``optimizer``; or None.
            ``ReduceLROnPlateau`` is refused: it steps on a metric.
        criterion: per-sample loss; must use ``reduction="none"``. Default: cross-entropy.
        amp, channels_last: "auto" enables them on CUDA only; see ``device.autocast_dtype``.
        checkpoint: file written (atomically) after every epoch; with ``resume=True`` and the file
            present, training continues from it with the same selections as an uninterrupted run.
            An existing file without ``resume=True`` is refused (as ``fastprune train`` does).
        settings: the run's settings (e.g. the command line's LR), stored in the checkpoint; a
            resume refuses a checkpoint written with other settings, or with another ``epochs``,
            batch size, model class, loader seed, precision, optimizer or scheduler class (all of
            which ``fit`` adds itself).
        on_epoch_end: called with each epoch's record (e.g. to record an accuracy curve); raising
            from it stops training after the checkpoint of that epoch is written. Its random draws
            do not move training's torch RNG (a resumed run continues an uninterrupted one exactly).
        eval_every: evaluate after every N-th epoch (and always after the last): evaluation is not
            training, and on a large validation set or a short epoch it can cost as much. Epochs
            not evaluated record ``val_acc`` and ``val_loss`` as None.
        compile: run the training forward through ``torch.compile`` (opt-in; default off): True or
            "default", "reduce-overhead" (CUDA graphs: for small, launch-bound models on a GPU),
            "max-autotune-no-cudagraphs". The first epoch pays for compiling (it is in its
            ``train_s``). With the Loader's ``even_batches`` the batch sizes differ by one at
            most, so it compiles twice at most (then with a dynamic batch size); plain batches
            add the remainder's size. Evaluation runs the model uncompiled.

    Returns:
        One JSON-ready dict per epoch: ``epoch`` (0-based), ``samples`` used, ``steps``, ``loss``
        (mean per-sample training loss), ``val_acc``, ``val_loss`` (mean cross-entropy, whatever
        ``criterion`` is), ``val_class_acc`` ({class:
        accuracy %}, named by the validation store's class names where it keeps them, else by
        label; None when not evaluated), ``lr`` (used by the epoch's last step),
        ``train_s`` (training incl. data loading and selection), ``eval_s``, ``overhead_s`` (time
        inside strategy.select + strategy.update), ``data_wait_s`` (host seconds blocked waiting
        for the loader's next batch; near 0 means the data path keeps up, the model (or launches)
        bound the epoch. Part of ``train_s``; it includes the first batch, so the loader's epoch
        start and the selection there, which ``overhead_s`` counts too), ``epoch_s`` (train +
        eval), ``cumulative_s`` and ``cumulative_train_s``.

    Raises:
        TrainingDiverged: a loss the strategy cannot score (NaN, infinite, beyond +-1e18) at the
            step it is seen, or an epoch whose mean loss is not finite (a run without a strategy).
            Under the strategy's ``skip_invalid=True``: an epoch of which more than half the losses
            cannot be scored, or whose weights end non-finite.
    """
    eval_every = check_positive_int(eval_every, "fit: eval_every")
    epochs = check_positive_int(epochs, "fit: epochs")
    forward = compiled_forward(model, compile)  # checked before any work
    resume = _check_fit_inputs(train_loader, val_loader, strategy, epochs, on_epoch_end, checkpoint, resume)
    if log == "stdout":  # flushed, so `fastprune train | tee` shows each epoch as it ends
        log = functools.partial(print, flush=True)
    device = model_device(model)
    dtype = autocast_dtype(device, amp)
    memory_format = _trainable_memory_format(model, device, memory_format_for(device, channels_last))
    model.to(memory_format=memory_format)
    optimizer = optimizer or make_optimizer(model)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"fit: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    _check_optimizes(optimizer, model)
    criterion = criterion or nn.CrossEntropyLoss(reduction="none")
    if getattr(criterion, "reduction", "none") != "none":  # caught before any work, not after an epoch
        raise ValueError(f"fit: criterion has reduction={criterion.reduction!r}; pruning needs one loss per "
                         f"sample: use {type(criterion).__name__}(reduction='none')")
    scheduler = build_scheduler(schedule, optimizer, train_loader, epochs, strategy)
    # A gradient scaler only for fp16 (bf16 has float32's range); disabled it is a pass-through.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    settings = _run_settings(settings, epochs, model, train_loader, val_loader, dtype, optimizer, scheduler)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        start_epoch, history = load_checkpoint(checkpoint, model, optimizer, scheduler, strategy,
                                               train_loader, scaler=scaler, settings=settings)
        if log and start_epoch >= epochs:
            log(f"{checkpoint} already holds {start_epoch} of {epochs} epochs: nothing left to train")
        elif log:
            log(f"resumed from {checkpoint} at epoch {start_epoch + 1}/{epochs}")
    _check_strategy_unused(strategy, start_epoch)

    clock = _OverheadClock()
    with clock.watching(strategy):
        for epoch in range(start_epoch, epochs):
            record = _run_epoch(epoch, epochs, model, train_loader, val_loader, strategy, optimizer,
                                scheduler, criterion, scaler, clock, history, dtype=dtype,
                                memory_format=memory_format, amp=amp, channels_last=channels_last,
                                progress=progress, evaluate_now=_evaluates(epoch, epochs, eval_every),
                                forward=forward, graphs=compile == "reduce-overhead")
            history.append(record)
            if log:
                log(_format_record(record, epochs))
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, optimizer, scheduler, strategy, train_loader,
                                history, scaler=scaler, settings=settings)
            if on_epoch_end is not None:
                # the callback's random draws leave training's stream as it was, so a run resumed
                # from this epoch's checkpoint (saved before the callback) continues it exactly
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    on_epoch_end(record)
    return history


def _run_epoch(epoch, epochs, model, train_loader, val_loader, strategy, optimizer, scheduler, criterion,
               scaler, clock, history, *, dtype, memory_format, amp, channels_last, progress, evaluate_now=True,
               forward=None, graphs=False):
    """Train one epoch, evaluate after it if ``evaluate_now``; return its history record."""
    overhead_before = clock.seconds
    start = time.perf_counter()
    train_loader.set_epoch(epoch)
    # Inside the epoch's clocks: the re-plan asks the strategy the size of every epoch left
    # (InfoBatch: a pass over its scores each), which training time and pruning overhead left out
    replan_schedule(scheduler, train_loader, strategy, epoch, epochs)
    stats = _train_one_epoch(model, train_loader, strategy, optimizer, scheduler, criterion, epoch=epoch,
                             dtype=dtype, memory_format=memory_format, scaler=scaler,
                             progress=progress, forward=forward, graphs=graphs)
    # The GPU's queued work first, so that the strategy's flush (timed as pruning overhead) does
    # not include waiting for it; then the epoch's deferred updates, while the loop waits anyway.
    synchronize(model_device(model))
    _flush_updates(strategy, epoch, stats["lr"])
    _check_mean_loss(stats, strategy, epoch, model)
    train_s = time.perf_counter() - start
    data_wait_s = stats.pop("data_wait_s")  # recorded beside the other timings

    val_acc, val_loss, eval_s = None, None, 0.0  # None: not evaluated (no val_loader, or not this epoch)
    val_class_acc = None
    if val_loader is not None and evaluate_now:
        start = time.perf_counter()
        val_acc, val_loss, hits, counts = _evaluate(model, val_loader, amp=amp, channels_last=channels_last)
        eval_s = time.perf_counter() - start
        val_class_acc = class_accuracies(hits, counts, loader_class_names(val_loader))

    previous = history[-1] if history else {"cumulative_s": 0.0, "cumulative_train_s": 0.0}
    return {
        "epoch": epoch,
        **stats,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "val_class_acc": val_class_acc,
        "train_s": train_s,
        "eval_s": eval_s,
        "overhead_s": clock.seconds - overhead_before,
        "data_wait_s": data_wait_s,
        "epoch_s": train_s + eval_s,
        "cumulative_s": previous["cumulative_s"] + train_s + eval_s,
        "cumulative_train_s": previous["cumulative_train_s"] + train_s,
    }


def _evaluates(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether 0-based ``epoch`` is evaluated: every ``eval_every``-th one, and the last."""
    return (epoch + 1) % eval_every == 0 or epoch + 1 == epochs


def save_history(path, history: list[dict[str, Any]], **metadata) -> None:
    """Write the history (plus any metadata, e.g. the command's arguments) as JSON: numbers stay
    numbers, paths and other objects become strings."""
    path = check_path(path, "save_history: path")
    text = json.dumps({**metadata, "history": history}, indent=2, default=str)
    with written_atomically(path) as file:  # a full disk leaves the previous log whole
        file.write(text)


def _flat(row: dict[str, Any], spread: dict[str, Any]) -> dict[str, Any]:
    """``row`` with each dict value spread over ``key.subkey`` columns; a key that holds a dict in
    some row (``spread``) and None in this one (an epoch not evaluated) leaves those cells empty."""
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{sub}": item for sub, item in value.items()})
        elif key not in spread:
            flat[key] = value
    return flat


def save_csv(path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (history records, maybe with leading columns such as the strategy) as CSV,
    one column per key in first-seen order, for any plotting tool; a dict value (val_class_acc)
    becomes one column per entry, in its key's place."""
    spread: dict[str, dict[str, None]] = {}  # key -> its sub-keys in first-seen order
    for row in rows:
        for key, value in row.items():
            if isinstance(value, dict):
                spread.setdefault(key, {}).update(dict.fromkeys(value))
    columns = []
    for key in dict.fromkeys(key for row in rows for key in row):
        columns += [f"{key}.{sub}" for sub in spread[key]] if key in spread else [key]
    rows = [_flat(row, spread) for row in rows]
    with written_atomically(path, newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)
