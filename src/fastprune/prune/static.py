"""Static baselines from prior work: score during a few full-data epochs, then train on a fixed
subset. Their scoring epochs are ordinary full epochs of the same run (warm-up), so they count
in every time measurement, as they should.
"""

from __future__ import annotations

import numpy as np

from .base import Fixed, StaticOptions, Unpack
from .strategies import _TopScores


class _Static(_TopScores):
    score_epochs: Fixed[int] = Fixed()

    def __init__(self, num_samples: int, keep: float = 0.5, *, score_epochs: int, **options: Unpack[StaticOptions]):
        for name in ("warmup_epochs", "reselect_every"):
            if name in options:
                raise ValueError(f"{type(self).__name__} fixes {name}; pass score_epochs instead")
        score_epochs = self._positive(score_epochs, "score_epochs")
        super().__init__(num_samples, keep, warmup_epochs=score_epochs, **options)
        self.score_epochs = score_epochs

    def config(self):
        return {**super().config(), "score_epochs": self.score_epochs}

    def _anchor(self, epoch):
        return self.warmup_epochs  # one subset, chosen right after scoring, for the rest of training


class EL2N(_Static):
    """EL2N (Paul et al., NeurIPS 2021): keep the ``keep·N`` samples with the largest error norm,
    measured over the first ``score_epochs`` (default 2) full-data epochs, then a fixed subset.

    Approximation: the true score is ``||softmax(f(x)) - onehot(y)||_2``, averaged over several
    independently trained models. The training loop gives us only per-sample losses, so the
    score here is the running mean of the loss over the scoring epochs of this one run. For
    cross-entropy, ``loss = -log p_y`` is monotone in ``1 - p_y``, which is the dominant term of
    the error norm (and a lower bound of it up to a constant), so the rankings largely agree; they
    differ in how the wrong-class mass is spread, and averaging losses over epochs is not
    averaging norms (on synthetic 10-class softmax outputs the two top-30% sets shared 75-95% of
    their samples, the least where logits were most spread). To use the exact norm, pass it as
    ``losses`` to ``update()`` during the scoring epochs.
    """

    default_decay = None  # running mean over the scoring epochs

    def __init__(self, num_samples: int, keep: float = 0.5, *, score_epochs: int = 2,
                 **options: Unpack[StaticOptions]):
        super().__init__(num_samples, keep, score_epochs=score_epochs, **options)

    def _bandit_score(self):
        return 0.0, True  # the running mean of the loss (+inf while unseen)


class Forgetting(_Static):
    """Forgetting scores (Toneva et al., ICLR 2019): count correct -> wrong transitions of each
    sample over the first ``score_epochs`` full-data epochs; keep the ``keep·N`` most forgotten
    samples, with samples never classified correctly ranked first (the paper counts them as
    forgotten infinitely often). The default 3 epochs tell three levels apart: never learned,
    forgotten once (a forgetting needs a correct observation before a wrong one), never
    forgotten; ``n`` epochs count up to ``n // 2`` forgettings. Many samples tie at zero; ties are
    broken uniformly at random by (seed, epoch). Needs ``correct`` in every ``update()``. Under
    ``skip_invalid``, a sample whose every loss was skipped ranks last, as in every strategy.
    """

    def __init__(self, num_samples: int, keep: float = 0.5, *, score_epochs: int = 3,
                 **options: Unpack[StaticOptions]):
        super().__init__(num_samples, keep, score_epochs=score_epochs, **options)

    def update(self, indices, losses, correct=None, *, defer: bool | None = None) -> int | None:
        if correct is None:
            raise ValueError("Forgetting.update() needs `correct` (per-sample 0/1 or bool, "
                             "e.g. out.argmax(1) == y)")
        return super().update(indices, losses, correct, defer=defer)

    def _scores(self):
        return forgetting_scores(self.table)


def forgetting_scores(table) -> np.ndarray:
    """Forgetting's ranking from a score table: the forgetting count, +inf for a sample never
    classified correctly, -inf for one whose every loss was skipped (``table.seen == -1``: never
    observed at all, it would otherwise count as never classified correctly and be kept first)
    (float32, one per row)."""
    forgets = table.forgets.astype(np.float32)
    scores = np.where(table.ever_correct.astype(bool), forgets, np.float32(np.inf))
    return np.where(np.asarray(table.seen) < 0, np.float32(-np.inf), scores).astype(np.float32)
