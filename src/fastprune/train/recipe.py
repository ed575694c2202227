"""The reference recipe, stated once: ``fastprune train``'s defaults, ``fastprune bench`` and the
studies all train with :data:`RECIPE` (or a copy with a few fields replaced), through
:func:`run_recipe`.

How the values were chosen (the whole benchmark fitting in about 2 hours on a 2-core CPU; the
peak LR picked on a held-out split; some earlier choices, such as the model's size, were probed on
the test set, as docs/benchmarks.md says where it tells them, with the measurements).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .._args import check_bool
from .._text import counted
from ..errors import ConfigError
from ..models import build_model, build_user_model
from ..loader import Loader
from ..store.reader import store_name
from .data import DataSpec, channel_statistics, describe_stores
from .device import GpuBusySampler, process_state_kept, resolve_device, run_amp
from .loop import fit
from .schedule import make_optimizer, one_cycle

# Fashion-MNIST pixel statistics (the store holds gray replicated to RGB); runs compute their own
# from the training store (train/data.py) unless given, these stay for code written against them.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.286,) * 3, (0.353,) * 3

VAL_BATCH = 1000  # evaluation's batch size (no gradients: larger than training's)

STRATEGIES = ("full", "uniform_random", "epsilon_greedy", "ucb", "infobatch", "el2n", "forgetting")


@dataclass(frozen=True)
class ModelSpec:
    """A model by name and options (see ``fastprune.models.build_model``): "small_resnet",
    "resnet18" or your own "MODULE:CALLABLE". The default is the cheapest SmallResNet measured
    that still reaches the recipe's accuracy target on a CPU (docs/benchmarks.md)."""

    name: str = "small_resnet"
    widths: tuple[int, ...] = (32, 64, 128)  # small_resnet only, like the two below
    blocks: int = 1
    stem_stride: int = 2
    # A model function given as an object (Python API): called with num_classes=; ``name`` is then
    # its "MODULE:CALLABLE", for the records. Not compared, not recorded.
    factory: Callable[..., nn.Module] | None = dataclasses.field(default=None, compare=False, repr=False)

    def build(self, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        if self.factory is not None:
            return build_user_model(self.factory, num_classes, self.name)
        options = {} if self.name != "small_resnet" else \
            {"widths": self.widths, "blocks": self.blocks, "stem_stride": self.stem_stride}
        return build_model(self.name, in_channels=in_channels, num_classes=num_classes, **options)


@dataclass(frozen=True)
class Recipe:
    """What a reference run learns with: schedule length, batch, one-cycle SGD, regularization,
    augmentation and model. How it runs (device, threads, precision) is not part of it."""

    epochs: int = 10
    batch_size: int = 512
    lr: float = 1.2  # the one-cycle peak: the best for full data on the held-out split
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    pad: int = 0  # random-crop padding; 0 = flip only (short schedules underfit)
    # Part of the recipe (not a run setting) so that `bench --continue` refuses result files
    # measured with plain batches, whose remainder can be a handful of samples.
    even_batches: bool = True
    # For stores of mixed image sizes: RandomResizedCrop(crop) + flip for training, CenterCrop(crop)
    # for validation. None: images are used at their (one) stored size.
    crop: int | None = None
    # Normalization (per channel, fractions of 255); None: computed from the training store.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # The stores' integer field of class labels; None: 'label', or the only integer field but 'index'
    label_field: str | None = None
    model: ModelSpec = ModelSpec()

    def replace(self, **changes) -> Recipe:
        """A copy with ``changes``; names of :class:`ModelSpec` fields (``widths``...) change the model."""
        model_fields = {field.name for field in dataclasses.fields(ModelSpec)}
        model_changes = {key: changes.pop(key) for key in list(changes) if key in model_fields}
        return dataclasses.replace(self, **changes, model=dataclasses.replace(self.model, **model_changes))

    def training_json(self) -> dict[str, Any]:
        """The training fields (all but the model), as a result file's "recipe" records them.
        crop, mean, std and label_field are left out while unset, so a recipe without them records as it did
        before they existed (and ``bench --continue`` accepts those files)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != "model" and not (field.name in _UNSET_OMITTED and getattr(self, field.name) is None)}

    def model_json(self) -> dict[str, Any]:
        """The model, as a result file's "model" records it: its name, and SmallResNet's options
        for "small_resnet" only (another model takes none of them)."""
        if self.model.name != "small_resnet":
            return {"name": self.model.name}
        return {field.name: getattr(self.model, field.name) for field in dataclasses.fields(ModelSpec)
                if field.name != "factory"}


RECIPE = Recipe()
_UNSET_OMITTED = ("crop", "mean", "std", "label_field")

# The main job's quick preset (`fastprune bench --quick`): the recipe with a half-width model,
# about 3x cheaper per sample on a CPU, so that full data and the two bandits at keep 0.5 over all
# the training images fit in about 5 minutes on 2 cores. Picked on a held-out split against smaller
# subsets trained for more epochs (docs/benchmarks.md, "The main job").
QUICK_RECIPE = RECIPE.replace(widths=(16, 32, 64))


# Fewer optimizer steps than this per pruned epoch barely trains (240 images at keep 0.5 in batches
# of 512: one step per epoch, 33-57% accuracy); train and bench warn.
MIN_STEPS_PER_EPOCH = 10


def describe_recipe(recipe: Recipe) -> str:
    """One line: what a run trains with, as ``fastprune train`` and ``bench`` print it first."""
    model = recipe.model.name + (str(recipe.model.widths) if recipe.model.name == "small_resnet" else "")
    augment = (f"random crop (pad {recipe.pad}) + " if recipe.pad else "") + "flip" + \
        (f", RandomResizedCrop {recipe.crop}" if recipe.crop else "")
    return (f"recipe: {counted(recipe.epochs, 'epoch')}, batch {recipe.batch_size} (--batch-size), one-cycle SGD "
            f"to peak lr {recipe.lr:g} (--lr), weight decay {recipe.weight_decay:g}, label smoothing "
            f"{recipe.label_smoothing:g}, {augment}, model {model} (--model); defaults: --help")


def few_steps_warning(recipe: Recipe, num_samples: int, keep: float) -> str | None:
    """One line when an epoch at ``keep`` would take fewer than MIN_STEPS_PER_EPOCH optimizer steps
    (the recipe's batch suits 60k images, not a few hundred); None when it takes enough."""
    kept = int(round(keep * num_samples))  # as a strategy rounds (recipe_warnings refused 0 first)
    steps = math.ceil(kept / recipe.batch_size)
    if steps >= MIN_STEPS_PER_EPOCH:
        return None
    smaller = kept // MIN_STEPS_PER_EPOCH
    most = f"{smaller} or less" if smaller > 1 else "1"  # "--batch-size 1 or less" named an impossible size
    advice = (f"pass --batch-size {most} for at least {MIN_STEPS_PER_EPOCH} steps per epoch (and a --lr "
              "that suits it)" if smaller >= 1 else
              f"even --batch-size 1 would take only {counted(kept, 'step')}: the store is small for this recipe")
    return (f"warning: at keep {keep:g} an epoch trains {kept} of {num_samples} samples in "
            f"{counted(steps, 'optimizer step')} of batch {recipe.batch_size}; {advice}")


def upscale_warning(crop: int | None, heights: np.ndarray, widths: np.ndarray) -> str | None:
    """One line when ``crop`` is larger than every image's shorter side: each is upscaled, and
    the run trains on interpolated pixels at the cost of a larger model input."""
    if crop is None or not len(heights):
        return None
    largest = int(np.minimum(heights, widths).max())
    if crop <= largest:
        return None
    return (f"warning: --crop {crop} is larger than every training image (the largest is {largest} px on its "
            f"shorter side): each is upscaled; --crop {largest} or less keeps to the stored detail (or "
            "convert with a larger --max-side)")


# Stored images this many times the crop (median shorter side), and at least OVERSIZE_PIXELS, are
# read far larger than the model's input: 3000 x 2000 photos under --crop 224 or 64 loaded 38-54x
# slower than the same photos kept at 256 px, and the store was 23x the size (a performance
# audit; raw images of 480 px at --crop 32 loaded 10.8x slower than at 64 px, a review). Small
# images several times a tiny crop (40 px at --crop 8) cost little: not said.
OVERSIZE_FACTOR, OVERSIZE_PIXELS = 4, 128


def oversize_warning(crop: int | None, heights: np.ndarray, widths: np.ndarray) -> str | None:
    """One line when the training images are much larger than ``crop``: each is read whole (a
    JPEG decoded at most 8x shrunk) to be cut down to the crop."""
    if crop is None or not len(heights):
        return None
    median = int(np.median(np.minimum(heights, widths)))
    if median < max(OVERSIZE_FACTOR * crop, OVERSIZE_PIXELS):
        return None
    return (f"warning: the training images are {median / crop:.0f}x --crop {crop} (median shorter side {median} "
            f"px): each is read far larger than the model's input, which makes loading several times slower than "
            f"needed; store them at about {2 * crop} px (convert --max-side {2 * crop} for image folders and Hugging "
            "Face datasets)")


def recipe_warnings(recipe: Recipe, train_store, keep: float, keep_option: str = "--keep",
                    val_store=None) -> list[str]:
    """The recipe's warnings for a run on ``train_store`` at ``keep`` (``fastprune train`` and
    ``bench`` print them with the recipe): too few steps per epoch, a crop that upscales or images
    far larger than it, a validation store that is the training store. A ``keep`` that keeps no sample is refused
    (ConfigError naming ``keep_option``), before any work."""
    from ..loader._source import open_source

    with open_source(train_store, None, False, threads=1) as source:  # no labels read
        if int(round(keep * source.num_samples)) < 1:  # as the strategy would refuse it, after the warm-up
            raise ConfigError(f"{keep_option} {keep:g} keeps no sample of the {source.num_samples} in "
                              f"{store_name(train_store)}: give a larger {keep_option}")
        found = (few_steps_warning(recipe, source.num_samples, keep),
                 upscale_warning(recipe.crop, source.heights, source.widths),
                 oversize_warning(recipe.crop, source.heights, source.widths),
                same_store_warning(train_store, val_store))
    return [warning for warning in found if warning]


def same_store_warning(train_store, val_store) -> str | None:
    """One line when the validation store is the training store's file (by any path): its
    accuracy then measures how well the model fits its training images, not how it generalizes."""
    if val_store is None:
        return None
    try:
        same = os.path.samefile(store_name(train_store), store_name(val_store))
    except OSError:
        return None
    if not same:
        return None
    return (f"warning: --val {store_name(val_store)} is the training store: its accuracy is on images the model "
            "trains on, not on held-out ones")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) so model init and any stray randomness repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def make_strategy(name: str, num_samples: int, keep: float, *, epochs: int, seed: int = 0,
                  **options):
    """Build a pruning strategy by its benchmark name (see ``STRATEGIES``), library defaults.
    ``epochs`` (the run's length) reaches every strategy, so options that place epochs from the
    end, such as ``final_full_epochs``, work for all of them."""
    from .. import prune

    if name == "full":
        return prune.Full(num_samples, seed=seed, **options)
    if name == "infobatch":  # its final full-data epochs are placed from the run's length
        return prune.InfoBatch(num_samples, keep, epochs=epochs, seed=seed, **options)
    classes = {"uniform_random": prune.UniformRandom, "epsilon_greedy": prune.EpsilonGreedy,
               "ucb": prune.UCB, "el2n": prune.EL2N, "forgetting": prune.Forgetting}
    if name not in classes:
        raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}")
    return classes[name](num_samples, keep, epochs=epochs, seed=seed, **options)


def make_loaders(train, val, batch_size: int, *, sampler=None, seed: int = 0, augment: bool = True,
                 pad: int = 0, crop: int | None = None, threads: int | None = None, channels_last: bool = False,
                 mean=None, std=None, device: str | torch.device = "cpu", even_batches: bool = True,
                 thread_nice="auto", label_field: str | None = None) -> tuple[Loader, Loader]:
    """(train loader, val loader) over two stores: horizontal flip (and, with ``pad`` > 0, a random
    crop of the padded image) for training, no augmentation for validation. With ``crop``, a
    RandomResizedCrop(crop) first for training and a CenterCrop(crop) for validation: both fused
    into the native decode, they batch stores whose images differ in size.

    ``mean``/``std`` (per channel, fractions of 255): None computes them from ``train``.
    ``label_field``: the Loaders' (None: 'label', or the only integer field other than 'index').

    ``channels_last`` makes the loader's Normalize write NHWC-strided tensors directly, so the
    model's channels_last layout needs no conversion per batch.

    Training batches are even by default (``Loader(even_batches=True)``): a pruned epoch's
    remainder depends on the keep ratio, and a last step on a handful of samples sets the model
    back (studies/even_batches.py measures it; docs/benchmarks.md).
    """
    from ..loader import CenterCrop, Normalize, RandomCrop, RandomHorizontalFlip, RandomResizedCrop
    from ..loader._source import open_source

    if (mean is None) != (std is None):  # one alone was replaced by the store's, silently
        raise ConfigError(f"make_loaders: give mean and std together (or neither: both are computed from "
                          f"train), got {'mean' if std is None else 'std'} alone")
    augment = check_bool(augment, "make_loaders: augment")
    if mean is None:
        with open_source(train, None, False, threads=None) as source:  # pixels only, on the default threads
            mean, std = channel_statistics(source)
    normalize = Normalize(mean, std, channels_last=channels_last)
    augmentations = []
    if augment:
        augmentations = [RandomResizedCrop(crop)] if crop else []
        augmentations += [RandomCrop(padding=pad)] if pad else []
        augmentations.append(RandomHorizontalFlip())
    elif crop:
        augmentations = [CenterCrop(crop)]
    val_crop = [CenterCrop(crop)] if crop else []
    train_loader = Loader(train, batch_size, sampler=sampler, transforms=[*augmentations, normalize],
                          seed=seed, threads=threads, device=device, even_batches=even_batches,
                          thread_nice=thread_nice, label_field=label_field)
    val_loader = Loader(val, VAL_BATCH, transforms=[*val_crop, normalize], shuffle=False, threads=threads,
                        device=device, thread_nice=thread_nice, label_field=label_field)
    return train_loader, val_loader


def describe_recipe_data(recipe: Recipe, stores) -> DataSpec:
    """The classes, statistics and checks of ``stores`` (train, val) for ``recipe``
    (:func:`~fastprune.train.data.describe_stores` with the recipe's crop, mean, std and label field)."""
    return describe_stores(*stores, mean=recipe.mean, std=recipe.std, crop=recipe.crop, label_field=recipe.label_field)


@process_state_kept()  # seeded for the run; the caller's random streams (a notebook's, a sweep's) as they were
def run_recipe(recipe: Recipe, strategy_name: str, keep: float, seed: int, stores, *,
               strategy_options: dict[str, Any] | None = None, device="auto", threads: int | None = None,
               amp: str | bool = "auto", channels_last: bool = False, data: DataSpec | None = None,
               thread_nice="auto", **fit_options):
    """Train ``recipe``'s model on ``stores`` (train, val paths) with a strategy by name; return
    (strategy, history). The number of classes and, unless the recipe gives them, the
    normalization statistics come from the stores (``data``, when a caller running many runs on
    the same stores has them already). ``strategy_options`` override the strategy's library
    defaults; ``fit_options`` (progress, log, checkpoint, resume, settings, on_epoch_end) go to
    :func:`fit`. Python's, numpy's and torch's random streams are seeded with ``seed`` for the run
    and left as they were before it.

    ``device``: "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N"
    (:func:`~fastprune.train.device.resolve_device`). ``amp``: "auto" is the precision rule every
    recipe run shares (:func:`~fastprune.train.device.run_amp`: bf16 on a GPU of compute capability
    8.0+, fp16 on older ones, and bf16 on CPUs where it is fast). Every history record gets
    ``gpu_busy_pct``, the mean GPU busy percentage sampled (nvml) during that epoch's training and
    evaluation: None on the CPU or where nvml is missing;
    :func:`gpu_busy_of` averages them over a run. ``threads`` and ``thread_nice`` go to the
    :class:`~fastprune.loader.Loader` s."""
    from ..store.checksums import store_identity
    from ..store.reader import Store

    device = resolve_device(device)
    amp = run_amp(device, amp)
    seed_everything(seed)
    # closed when the run ends: a file left to the garbage collector is closed by a finalizer that
    # swallows exceptions (a Ctrl-C that landed there was lost)
    with Store(stores[0]) as train_store, Store(stores[1]) as val_store:
        data = data or describe_recipe_data(recipe, (train_store, val_store))
        if fit_options.get("settings") is not None:  # a resume must normalize, classify and read alike
            fit_options["settings"] = {**fit_options["settings"], "num_classes": data.num_classes,
                                       "mean": list(data.mean), "std": list(data.std),
                                       "train_store": store_identity(train_store),
                                       "val_store": store_identity(val_store)}
        strategy = make_strategy(strategy_name, len(train_store), keep, epochs=recipe.epochs, seed=seed,
                                 **(strategy_options or {}))
        train_loader, val_loader = make_loaders(
            train_store, val_store, recipe.batch_size, sampler=strategy, seed=seed, pad=recipe.pad,
            crop=recipe.crop, threads=threads, channels_last=channels_last, mean=data.mean, std=data.std,
            device=device, even_batches=recipe.even_batches, thread_nice=thread_nice, label_field=recipe.label_field)
        model = recipe.model.build(data.num_classes, data.channels).to(device)
        optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay)
        criterion = nn.CrossEntropyLoss(reduction="none", label_smoothing=recipe.label_smoothing)
        on_epoch_end = fit_options.pop("on_epoch_end", None)

        def record_busy(record):  # before the caller's callback, which may log the record (train's logs)
            record["gpu_busy_pct"] = busy.mark()
            if on_epoch_end is not None:
                on_epoch_end(record)

        with GpuBusySampler(device) as busy:
            history = fit(model, train_loader, val_loader, strategy, recipe.epochs, optimizer, one_cycle(recipe.lr),
                          criterion=criterion, amp=amp, channels_last=channels_last, on_epoch_end=record_busy,
                          **fit_options)
        # an epoch trained before a resume: its checkpoint's figure if a later epoch's checkpoint was
        # saved (the last one before the stop is saved before its figure is set: None)
        for record in history:
            record.setdefault("gpu_busy_pct", None)
        return strategy, history


def gpu_busy_of(history: list[dict[str, Any]]) -> float | None:
    """A run's mean GPU busy percentage: its epochs' ``gpu_busy_pct`` weighted by their seconds
    (None where no epoch has a figure: on the CPU, or without nvml)."""
    measured = [(r["gpu_busy_pct"], r["epoch_s"]) for r in history if r.get("gpu_busy_pct") is not None]
    seconds = sum(s for _, s in measured)
    if not measured or seconds <= 0:
        return None
    return round(sum(value * s for value, s in measured) / seconds, 1)
