"""The optimizer and its LR schedule, sized from the run's exact number of steps.

The subset, hence the number of batches, changes per epoch, so the schedule's length is the sum of
every epoch's batch count (``planned_steps``), not ``len(loader) * epochs``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..errors import UsageWarning, user_stacklevel

# A schedule factory: given the optimizer and the run's exact number of optimizer steps, build an
# LR scheduler that ``fit`` steps once per batch. A factory (not a built scheduler) because the
# step count is only known once the loader and strategy are known.
ScheduleFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


def make_optimizer(model: nn.Module, lr: float = 0.2, weight_decay: float = 5e-4,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; no weight decay on biases and batch-norm parameters, which
    only hurts them (they have no scale invariance to regularize)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)


class OneCycle(torch.optim.lr_scheduler.LRScheduler):
    """One-cycle LR (linear warm-up to the optimizer's lr, then linear decay), as a function of the
    run's *progress* ``step / (total_steps - 1)``, stepped once per batch.

    ``total_steps`` is the sum of every epoch's batch count. ``fit`` re-plans it at the start of each
    epoch (``replan``): this epoch's count is exact, and for strategies whose subset size depends
    on the scores (InfoBatch keeps every above-mean sample) later epochs are re-estimated from the
    current table. For all other strategies the plan never changes, so the schedule is exactly the
    classic one over the run's true number of steps, and the last step uses the final LR.
    """

    def __init__(self, optimizer, total_steps: int, pct_start: float = 0.25,
                 div_factor: float = 10.0, final_div_factor: float = 100.0, last_epoch: int = -1):
        self.total_steps = max(int(total_steps), 1)
        self.pct_start, self.div_factor, self.final_div_factor = pct_start, div_factor, final_div_factor
        super().__init__(optimizer, last_epoch)

    def replan(self, total_steps: int) -> None:
        """Set the run's total step count (never below the steps already taken)."""
        self.total_steps = max(int(total_steps), self.last_epoch + 1, 1)

    def multiplier(self, progress: float) -> float:
        start, end = 1.0 / self.div_factor, 1.0 / (self.div_factor * self.final_div_factor)
        if progress < self.pct_start:
            return start + (1.0 - start) * progress / self.pct_start
        return 1.0 + (end - 1.0) * (progress - self.pct_start) / (1.0 - self.pct_start)

    def get_lr(self):
        progress = min(self.last_epoch / max(self.total_steps - 1, 1), 1.0)
        return [base * self.multiplier(progress) for base in self.base_lrs]


def one_cycle(max_lr: float | None = None, pct_start: float = 0.25, div_factor: float = 10.0,
              final_div_factor: float = 100.0) -> ScheduleFactory:
    """A factory for ``fit``: a OneCycle peaking at ``max_lr`` (default: the optimizer's lr)."""
    def build(optimizer, steps):
        if max_lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = max_lr
        return OneCycle(optimizer, steps, pct_start, div_factor, final_div_factor)
    return build


def planned_steps(loader, start: int, stop: int, strategy=None) -> int:
    """Optimizer steps of epochs [start, stop): the sum of each epoch's batch count.

    Pruned epochs have fewer batches than full ones, and how many varies per epoch (warm-up,
    scoring and final full-data epochs), so ``len(loader) * epochs`` would be wrong. Asks the
    loader (``steps_for_epochs``) when it can; otherwise derives each epoch's count from
    ``strategy.num_selected(epoch)``.
    """
    if hasattr(loader, "steps_for_epochs"):
        return int(loader.steps_for_epochs(start, stop))
    if strategy is None or not hasattr(strategy, "num_selected"):
        return len(loader) * (stop - start)
    batch_size, drop_last = loader.batch_size, getattr(loader, "drop_last", False)
    count = 0
    for epoch in range(start, stop):
        selected = int(strategy.num_selected(epoch))
        count += selected // batch_size if drop_last else math.ceil(selected / batch_size)
    return count


def build_scheduler(schedule, optimizer, loader, epochs: int, strategy):
    """``fit``'s scheduler: a factory is sized by the whole run's planned steps; a built one is kept."""
    if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise TypeError("fit: schedule ReduceLROnPlateau steps on a metric, and fit steps its schedule "
                        "once per batch with none; use a step-based schedule (one_cycle, a factory)")
    if schedule is None:
        return None
    if isinstance(schedule, torch.optim.lr_scheduler.LRScheduler):
        _check_built(schedule, optimizer, loader, epochs, strategy)
        scheduler = schedule
    elif callable(schedule):
        scheduler = schedule(optimizer, planned_steps(loader, 0, epochs, strategy))
        if not hasattr(scheduler, "step"):
            raise TypeError(f"fit: the schedule factory returned {type(scheduler).__name__}, not a scheduler")
    else:
        raise TypeError(f"fit: schedule must be a factory (optimizer, total_steps) -> scheduler, a built "
                        f"scheduler or None, got {type(schedule).__name__} {schedule!r:.40}")
    if not hasattr(scheduler, "replan") and getattr(strategy, "sizes_follow_scores", False):
        warnings.warn(f"fit: {type(strategy).__name__}'s epoch sizes follow its scores, so a schedule "
                      f"sized at the start ({type(scheduler).__name__}) will not end on the run's last step; "
                      "fastprune.train.one_cycle re-plans itself every epoch", UsageWarning,
                      stacklevel=user_stacklevel())
    return scheduler


def _check_built(scheduler, optimizer, loader, epochs: int, strategy) -> None:
    """A scheduler the user built, checked before any work against the run fit will step it through
    (once per batch): it must drive fit's optimizer, a OneCycleLR must last the run, and an
    epoch-sized cosine or step decay, stepped per batch, warns."""
    if scheduler.optimizer is not optimizer:  # its LR moved an optimizer nobody stepped
        raise ValueError(f"fit: schedule {type(scheduler).__name__} drives another optimizer than the one fit "
                         "trains with; pass the optimizer it was built on as optimizer= too")
    lr_scheduler = torch.optim.lr_scheduler
    # InfoBatch's plan is an upper bound: a OneCycleLR shorter than it may fit its run
    one_cycle_to_check = isinstance(scheduler, lr_scheduler.OneCycleLR) and \
        not getattr(strategy, "sizes_follow_scores", False)
    if not (one_cycle_to_check or isinstance(scheduler, (lr_scheduler.CosineAnnealingLR, lr_scheduler.StepLR))):
        return
    try:  # a loader of one's own may not know its length: then there is nothing to compare
        planned = planned_steps(loader, 0, epochs, strategy)
    except TypeError:
        return
    sized = f"total_steps=fastprune.train.planned_steps(loader, 0, {epochs}, strategy)"
    if one_cycle_to_check:
        if scheduler.total_steps < planned:  # it raises at step total_steps + 1, epochs of work later
            raise ValueError(f"fit: schedule OneCycleLR has total_steps={scheduler.total_steps}, but the run takes "
                             f"{planned} steps (fit steps it once per batch; pruned epochs differ in size): build "
                             f"it with {sized}")
        return
    if isinstance(scheduler, lr_scheduler.CosineAnnealingLR):
        # a cosine of T_max steps cycles planned / T_max times: never meant when T_max is the epochs
        suspect, setting = scheduler.T_max <= epochs < planned, f"T_max={scheduler.T_max}"
    else:  # StepLR: per-batch decays of an epoch-sized step_size leave no learning rate
        suspect = scheduler.step_size <= epochs < planned and \
            scheduler.gamma ** (planned // scheduler.step_size) < 1e-6
        setting = f"step_size={scheduler.step_size}"
    if suspect:
        warnings.warn(f"fit: schedule {type(scheduler).__name__}'s {setting} looks counted in epochs, but fit "
                      f"steps it once per batch ({planned} steps in this run): size it in steps, e.g. from {sized}",
                      UsageWarning, stacklevel=user_stacklevel())


def replan_schedule(scheduler, loader, strategy, epoch: int, epochs: int) -> None:
    """Re-size a re-plannable schedule at an epoch start: steps taken + steps still to come."""
    if hasattr(scheduler, "replan"):
        scheduler.replan(scheduler.last_epoch + planned_steps(loader, epoch, epochs, strategy))
