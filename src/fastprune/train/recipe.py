"""The reference recipe, stated once: ``fastprune train``'s defaults, ``fastprune bench`` and the
studies all train with :data:`RECIPE` (or a copy with a few fields replaced), through
:func:`run_recipe`.

How the values were chosen (a full-data run reaching >= 92% Fashion-MNIST test accuracy, the
whole benchmark fitting in about 2 hours on a 2-core CPU, the peak LR picked on a held-out split)
is told, with the measurements, in docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import build_model
from .loop import fit
from .schedule import make_optimizer, one_cycle

# Fashion-MNIST pixel statistics (the store holds gray replicated to RGB).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.286,) * 3, (0.353,) * 3

STRATEGIES = ("full", "uniform_random", "epsilon_greedy", "ucb", "infobatch", "el2n", "forgetting")


@dataclass(frozen=True)
class ModelSpec:
    """A model by name and options (see ``fastprune.models.build_model``). The default is the
    cheapest SmallResNet measured that still reaches the recipe's accuracy target on a CPU
    (docs/benchmarks.md)."""

    name: str = "small_resnet"
    widths: tuple[int, ...] = (32, 64, 128)  # small_resnet only, like the two below
    blocks: int = 1
    stem_stride: int = 2

    def build(self, in_channels: int = 3) -> nn.Module:
        options = {} if self.name != "small_resnet" else \
            {"widths": self.widths, "blocks": self.blocks, "stem_stride": self.stem_stride}
        return build_model(self.name, in_channels=in_channels, **options)


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
    model: ModelSpec = ModelSpec()

    def replace(self, **changes) -> Recipe:
        """A copy with ``changes``; names of :class:`ModelSpec` fields (``widths``...) change the model."""
        model_fields = {field.name for field in dataclasses.fields(ModelSpec)}
        model_changes = {key: changes.pop(key) for key in list(changes) if key in model_fields}
        return dataclasses.replace(self, **changes, model=dataclasses.replace(self.model, **model_changes))

    def training_json(self) -> dict[str, Any]:
        """The training fields (all but the model), as a result file's "recipe" records them."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != "model"}

    def model_json(self) -> dict[str, Any]:
        """The model, as a result file's "model" records it."""
        return dataclasses.asdict(self.model)


RECIPE = Recipe()

# The main job's smoke-size preset (`fastprune bench --quick`, with a 12k-image subset): the same
# recipe with a half-width model, so that enough epochs for the full-data run to saturate (what
# makes pruning nearly free in the full benchmark) fit in about 5 minutes on 2 cores. The values
# were picked on a held-out split (docs/benchmarks.md, "The main job").
QUICK_RECIPE = RECIPE.replace(epochs=30, widths=(16, 32, 64))


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
                 pad: int = 0, threads: int | None = None, channels_last: bool = False,
                 mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, device="cpu", even_batches: bool = True):
    """(train loader, val loader) over two stores: horizontal flip (and, with ``pad`` > 0, a random
    crop of the padded image) for training, no augmentation for validation.

    ``channels_last`` makes the loader's Normalize write NHWC-strided tensors directly, so the
    model's channels_last layout needs no conversion per batch.

    Training batches are even by default (``Loader(even_batches=True)``): a pruned epoch's
    remainder depends on the keep ratio, and a last step on a handful of samples sets the model
    back (studies/even_batches.py measures it; docs/benchmarks.md).
    """
    from ..loader import Loader, Normalize, RandomCrop, RandomHorizontalFlip

    normalize = Normalize(mean, std, channels_last=channels_last)
    augmentations = []
    if augment:
        augmentations = [RandomCrop(padding=pad)] if pad else []
        augmentations.append(RandomHorizontalFlip())
    train_loader = Loader(train, batch_size, sampler=sampler, transforms=[*augmentations, normalize],
                          seed=seed, threads=threads, device=device, even_batches=even_batches)
    val_loader = Loader(val, 1000, transforms=[normalize], shuffle=False, threads=threads,
                        device=device)
    return train_loader, val_loader


def run_recipe(recipe: Recipe, strategy_name: str, keep: float, seed: int, stores, *,
               strategy_options: dict[str, Any] | None = None, device="cpu", threads: int | None = None,
               amp: str | bool = "auto", channels_last: bool = False, **fit_options):
    """Train ``recipe``'s model on ``stores`` (train, val paths) with a strategy by name; return
    (strategy, history). ``strategy_options`` override the strategy's library defaults;
    ``fit_options`` (progress, log, checkpoint, resume, settings) go to :func:`fit`."""
    from ..store.reader import Store

    seed_everything(seed)
    train_store, val_store = (Store(path) for path in stores)
    strategy = make_strategy(strategy_name, len(train_store), keep, epochs=recipe.epochs, seed=seed,
                             **(strategy_options or {}))
    train_loader, val_loader = make_loaders(
        train_store, val_store, recipe.batch_size, sampler=strategy, seed=seed, pad=recipe.pad,
        threads=threads, channels_last=channels_last, device=device, even_batches=recipe.even_batches)
    model = recipe.model.build().to(device)
    optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay)
    criterion = nn.CrossEntropyLoss(reduction="none", label_smoothing=recipe.label_smoothing)
    history = fit(model, train_loader, val_loader, strategy, recipe.epochs, optimizer, one_cycle(recipe.lr),
                  criterion=criterion, amp=amp, channels_last=channels_last, **fit_options)
    return strategy, history
