"""Dynamic data pruning: the score table and the strategies that choose each epoch's samples.

Integration into a training loop (three changed lines)::

    criterion = torch.nn.CrossEntropyLoss(reduction="none")      # 1: per-sample loss
    ...
    loss = criterion(model(batch.images), batch.labels)
    strategy.update(batch.indices, loss)                          # 2: feed the scores back
    (loss * batch.weights).mean().backward()                      # 3: weighted mean

Lines 2 and 3 in one call: ``strategy.weighted_loss(batch.indices, loss, batch.weights).backward()``
(with torch's DataLoader and ``PrunedSampler``, leave out the weights: they are looked up).
"""

from .base import Selection, Strategy
from .report import export_scores, kept_grid
from .sampler import PrunedSampler, WithIndices
from .static import EL2N, Forgetting
from .strategies import UCB, EpsilonGreedy, Full, InfoBatch, UniformRandom
from .table import ScoreTable

__all__ = ["EL2N", "UCB", "EpsilonGreedy", "Forgetting", "Full", "InfoBatch", "PrunedSampler", "ScoreTable",
           "Selection", "Strategy", "UniformRandom", "WithIndices", "export_scores", "kept_grid"]
