"""The reference training loop: learning, honest history, step-exact schedules, exact resume.

The loop is tested against small in-memory stand-ins for the Loader and a pruning strategy that
follow the same contracts (see the docstring of fastprune.train), so these tests pin down what fit()
requires of them and run in seconds.
"""

from __future__ import annotations

import gzip
import math
from typing import NamedTuple

import numpy as np
import pytest
import torch

from fastprune.models import SmallResNet, build_model, resnet18_small
from fastprune.train import fit, make_optimizer, one_cycle, total_steps


# ------------------------------------------------------------------------------------------
# Stand-ins with the Loader / strategy contracts
# ------------------------------------------------------------------------------------------

class Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor


class Selection(NamedTuple):
    indices: np.ndarray
    weights: np.ndarray | None


class TensorLoader:
    """Batches from in-memory tensors, in the order of ``sampler.select(epoch)`` shuffled by
    (seed, epoch): the same contract as fastprune.Loader."""

    def __init__(self, images, labels, batch_size, *, sampler=None, shuffle=True, seed=0,
                 drop_last=False):
        self.images, self.labels = images, labels
        self.batch_size, self.sampler, self.shuffle = batch_size, sampler, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _selected(self):
        return len(self.labels) if self.sampler is None else self.sampler.num_selected(self.epoch)

    def __len__(self):
        n = self._selected()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.sampler is None:
            indices, weights = np.arange(n), np.ones(n, np.float32)
        else:
            selection = self.sampler.select(self.epoch)
            indices = np.asarray(selection.indices)
            weights = (np.ones(len(indices), np.float32) if selection.weights is None
                       else np.asarray(selection.weights, np.float32))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(indices))
            indices, weights = indices[order], weights[order]
        for batch in range(len(self)):
            part = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            ids = torch.from_numpy(indices[part].astype(np.int64))
            yield Batch(self.images[ids], self.labels[ids], ids, torch.from_numpy(weights[part]))


class TopLossStrategy:
    """Keeps the highest-EMA-loss fraction ``keep``; full data in epoch 0 (warm-up) and in the last
    epoch, so subset sizes change during a run. Logs every selection it makes."""

    def __init__(self, n, keep, epochs, seed=0):
        self.n, self.keep, self.epochs, self.seed = n, keep, epochs, seed
        self.scores = np.full(n, np.inf)
        self.selections: dict[int, np.ndarray] = {}

    def _is_full(self, epoch):
        return epoch == 0 or epoch == self.epochs - 1

    def num_selected(self, epoch):
        return self.n if self._is_full(epoch) else int(round(self.keep * self.n))

    def select(self, epoch):
        if self._is_full(epoch):
            chosen = np.arange(self.n)
        else:
            # random tie-break, seeded by (seed, epoch) so a resumed run chooses the same
            noise = np.random.default_rng([self.seed, epoch]).random(self.n) * 1e-9
            chosen = np.sort(np.argpartition(-(self.scores + noise), self.num_selected(epoch))
                             [: self.num_selected(epoch)])
        self.selections[epoch] = chosen
        return Selection(chosen, None)

    def update(self, indices, losses, correct=None):
        indices, losses = np.asarray(indices), np.asarray(losses, np.float64)
        old = self.scores[indices]
        self.scores[indices] = np.where(np.isinf(old), losses, 0.7 * old + 0.3 * losses)

    def state_dict(self):
        return {"scores": self.scores.copy()}

    def load_state_dict(self, state):
        self.scores = state["scores"].copy()


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------

def _read_idx(path, header):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


@pytest.fixture(scope="module")
def tiny_fashion(fashion_mnist_dir):
    """2,000 training and 1,000 test images of real Fashion-MNIST, normalized float tensors."""
    def images(name, count):
        raw = _read_idx(fashion_mnist_dir / name, 16).reshape(-1, 1, 28, 28)[:count]
        return (torch.from_numpy(raw.copy()).float() / 255 - 0.286) / 0.353

    def labels(name, count):
        return torch.from_numpy(_read_idx(fashion_mnist_dir / name, 8)[:count].astype(np.int64))

    return (images("train-images-idx3-ubyte.gz", 2000), labels("train-labels-idx1-ubyte.gz", 2000),
            images("t10k-images-idx3-ubyte.gz", 1000), labels("t10k-labels-idx1-ubyte.gz", 1000))


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return SmallResNet(widths=(8, 16, 32), stem_stride=2)


BATCH, LR = 64, 0.2


def _run(data, *, epochs=4, keep=0.5, seed=0, **fit_options):
    """A small pruned run; returns (model, strategy, history, scheduler-steps-planned)."""
    x, y, xv, yv = data
    torch.set_num_threads(1)  # deterministic and not fighting other processes for cores
    model = _tiny_model(seed)
    strategy = TopLossStrategy(len(y), keep, epochs, seed)
    loader = TensorLoader(x, y, BATCH, sampler=strategy, seed=seed)
    val_loader = TensorLoader(xv, yv, 500, shuffle=False)
    optimizer = make_optimizer(model, lr=LR)
    history = fit(model, loader, val_loader, strategy, epochs, optimizer, one_cycle(LR),
                  progress=False, log=None, **fit_options)
    return model, strategy, history, total_steps(loader, epochs, strategy)


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------

def test_models_accept_28_and_32_pixel_inputs():
    for model in (SmallResNet(1), build_model("small_resnet", widths=(8, 16), blocks=2),
                  resnet18_small(1)):
        model.eval()
        for size in (28, 32):
            assert model(torch.zeros(2, 1, size, size)).shape == (2, 10)


def test_fit_learns_and_beats_chance(tiny_fashion):
    _, _, history, _ = _run(tiny_fashion, epochs=4)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_acc"] > 50.0  # chance is 10%; ~70% after 4 short epochs


def test_history_is_consistent_with_the_strategy(tiny_fashion):
    epochs = 4
    _, strategy, history, _ = _run(tiny_fashion, epochs=epochs)
    assert [r["epoch"] for r in history] == list(range(epochs))
    for record in history:
        assert record["samples"] == strategy.num_selected(record["epoch"])
        assert record["steps"] == math.ceil(record["samples"] / BATCH)
        assert record["epoch_s"] == pytest.approx(record["train_s"] + record["eval_s"])
        assert 0 < record["overhead_s"] < record["train_s"]
        assert 0 <= record["val_acc"] <= 100
    assert history[-1]["cumulative_s"] == pytest.approx(sum(r["epoch_s"] for r in history))
    # the selection timer is removed again after the run
    assert "select" not in vars(strategy) and "update" not in vars(strategy)


def test_schedule_spans_the_exact_steps_of_a_changing_subset(tiny_fashion):
    epochs = 4
    _, strategy, history, planned = _run(tiny_fashion, epochs=epochs, keep=0.3)
    steps = [r["steps"] for r in history]
    assert len(set(steps)) > 1, "subset size should change between epochs"
    assert planned == sum(steps)
    assert planned != steps[0] * epochs
    # OneCycleLR ends at max_lr / (div_factor * final_div_factor) exactly on its last step
    assert history[-1]["lr"] == pytest.approx(LR / 10 / 100)


def test_resume_continues_with_the_same_selections_and_weights(tiny_fashion, tmp_path):
    epochs = 4
    full_model, full_strategy, full_history, _ = _run(tiny_fashion, epochs=epochs)

    class Interrupt(Exception):
        pass

    def stop_after_second_epoch(record):
        if record["epoch"] == 1:
            raise Interrupt

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        _run(tiny_fashion, epochs=epochs, checkpoint=checkpoint, on_epoch_end=stop_after_second_epoch)
    resumed_model, resumed_strategy, resumed_history, _ = _run(
        tiny_fashion, epochs=epochs, checkpoint=checkpoint, resume=True)

    assert sorted(resumed_strategy.selections) == [2, 3]  # epochs 0-1 came from the checkpoint
    for epoch in (2, 3):
        np.testing.assert_array_equal(resumed_strategy.selections[epoch],
                                      full_strategy.selections[epoch])
    assert [r["samples"] for r in resumed_history] == [r["samples"] for r in full_history]
    assert [r["loss"] for r in resumed_history] == pytest.approx([r["loss"] for r in full_history])
    for name, tensor in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], tensor, rtol=0, atol=0,
                                   msg=name)
