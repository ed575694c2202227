"""The reference training loop shared by ``fastprune train``, the end-to-end benchmark and the studies.

The loop is an ordinary PyTorch loop plus the three lines data pruning needs::

    loss = criterion(model(images), labels)           # reduction="none": one loss per sample
    strategy.update(batch.indices, loss.detach(), correct)
    (loss * batch.weights).mean().backward()          # weights keep pruned gradients unbiased

Everything else is bookkeeping a benchmark needs to be honest, one module each:

* ``loop``: ``fit`` and ``evaluate``; timing that separates training, evaluation and pruning overhead;
* ``schedule``: the optimizer and an LR schedule sized from the exact number of steps of the whole
  run (the subset, hence the number of batches, changes per epoch);
* ``checkpoints``: files from which a run resumes with exactly the same selections;
* ``device``: autocast dtype, memory format, GPU synchronization;
* ``data``: what a run takes from its stores (classes, normalization statistics, crop check);
* ``recipe``: the reference recipe (:data:`RECIPE`), stated once, and the run built from it;
* ``cli``: ``fastprune train``.

Contracts the loop relies on (duck-typed, so stand-ins work in tests):

* a *loader*: iterable of ``Batch(images, labels, indices, weights)``; ``len(loader)`` is the number
  of batches of the next epoch; ``loader.set_epoch(e)``; optionally ``loader.steps_for_epochs(start, stop)``
  and ``state_dict()/load_state_dict()``.
* a *strategy*: ``select(epoch)``, ``num_selected(epoch)``, ``update(indices, losses, correct)``,
  ``state_dict()/load_state_dict()``. The loader calls ``select`` (the strategy is its sampler);
  ``fit`` calls ``update``.
"""

from __future__ import annotations

# Also importable from here, as before the split: the checkpoint format and checks, RUN_SETTINGS,
# the Fashion-MNIST statistics and ScheduleFactory (not in __all__).
from .checkpoints import CHECKPOINT_FORMAT, check_settings, load_checkpoint, read_checkpoint, save_checkpoint
from .cli import RUN_SETTINGS, add_recipe_arguments, add_train_command, recipe_from_args, train_main
from .data import DataSpec, describe_stores, image_statistics
from .loop import evaluate, fit, save_csv, save_history
from .recipe import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, RECIPE, STRATEGIES, ModelSpec, Recipe, make_loaders,
                     make_strategy, run_recipe, seed_everything)
from .schedule import OneCycle, ScheduleFactory, make_optimizer, one_cycle, planned_steps
from .tensorboard import TensorBoardLogger

__all__ = [
    "fit",
    "evaluate",
    "seed_everything",
    "make_optimizer",
    "OneCycle",
    "one_cycle",
    "planned_steps",
    "save_checkpoint",
    "load_checkpoint",
    "save_history",
    "save_csv",
    "describe_stores",
    "image_statistics",
    "DataSpec",
    "make_strategy",
    "make_loaders",
    "STRATEGIES",
    "add_train_command",
    "train_main",
    "Recipe",
    "ModelSpec",
    "RECIPE",
    "run_recipe",
    "TensorBoardLogger",
]
