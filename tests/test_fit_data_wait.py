"""fit's ``data_wait_s`` (host seconds blocked on the loader's next batch) and ``_evaluate``'s
device-side sums.

Timing tests use sleeps of known length on either side of the wait (in the loader, in the model)
and generous margins, so they tell "measures the wait" from "measures the step" or "measures
nothing" without depending on how busy the machine is.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from fastprune.loader import Batch
from fastprune.train import fit
from fastprune.train.loop import _evaluate, evaluate

CLASSES, SIDE = 4, 8
BATCHES, BATCH = 5, 8
DELAY_S = 0.02  # per batch, in the loader or in the model's forward


class SleepyLoader:
    """An in-memory loader of ``BATCHES`` random batches, each handed out ``delay`` seconds late."""

    def __init__(self, delay: float = 0.0, seed: int = 0, batches: int = BATCHES):
        generator = torch.Generator().manual_seed(seed)
        count = batches * BATCH
        self.images = torch.randn(count, 3, SIDE, SIDE, generator=generator)
        self.labels = torch.randint(0, CLASSES, (count,), generator=generator)
        self.delay, self.batch_size, self.batches = delay, BATCH, batches

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for start in range(0, len(self.labels), BATCH):
            time.sleep(self.delay)
            ids = torch.arange(start, start + BATCH)
            yield Batch(self.images[ids], self.labels[ids], ids, torch.ones(BATCH))


class SleepyModel(nn.Module):
    """A linear classifier whose forward takes ``delay`` seconds more: the step's own host time."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay
        self.linear = nn.Linear(3 * SIDE * SIDE, CLASSES)

    def forward(self, images):
        time.sleep(self.delay)
        return self.linear(images.flatten(1))


def _fit(model_delay=0.0, loader_delay=0.0, epochs=2, **options):
    torch.manual_seed(0)
    options = {"progress": False, "log": None, **options}
    return fit(SleepyModel(model_delay), SleepyLoader(loader_delay), None, epochs=epochs,
               amp=False, channels_last=False, **options)


@pytest.mark.parametrize("progress", [False, True])
def test_data_wait_holds_the_loaders_delay_and_not_the_steps(progress):
    history = _fit(model_delay=DELAY_S, loader_delay=DELAY_S, progress=progress)
    slept = BATCHES * DELAY_S  # per epoch, on each side
    for record in history:
        assert record["data_wait_s"] >= 0.8 * slept
        assert record["data_wait_s"] < slept + 0.5 * slept  # the forward's sleeps are not waits
        assert record["train_s"] >= record["data_wait_s"] + 0.8 * slept


def test_data_wait_is_a_small_share_when_the_loader_keeps_up():
    history = _fit(model_delay=DELAY_S)
    for record in history:
        assert 0 <= record["data_wait_s"] < 0.25 * record["train_s"]


def test_every_record_has_data_wait_and_the_log_shows_it():
    lines = []
    history = fit(SleepyModel(), SleepyLoader(), SleepyLoader(seed=1), epochs=3, eval_every=2,
                  amp=False, channels_last=False, progress=False, log=lines.append)
    assert [r["val_acc"] is None for r in history] == [True, False, False]  # both kinds of epoch
    assert all(isinstance(r["data_wait_s"], float) and r["data_wait_s"] >= 0 for r in history)
    keys = list(history[0])
    assert keys.index("data_wait_s") == keys.index("overhead_s") + 1  # beside the other timings
    assert all("data wait" in line for line in lines)


# -- _evaluate --------------------------------------------------------------------------------

def _reference(model, batches):
    """The straightforward evaluation: per-batch host reads, summed in Python."""
    correct, loss_sum, seen = 0, 0.0, 0
    hits, counts = torch.zeros(CLASSES, dtype=torch.int64), torch.zeros(CLASSES, dtype=torch.int64)
    with torch.no_grad():
        for images, labels in batches:
            logits = model(images)
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            right = logits.argmax(1) == labels
            correct += int(right.sum())
            seen += len(labels)
            for label, ok in zip(labels.tolist(), right.tolist()):
                counts[label] += 1
                hits[label] += ok
    return 100.0 * correct / seen, loss_sum / seen, hits, counts


def _batches(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, SIDE, SIDE, generator=generator),
             torch.randint(0, CLASSES, (n,), generator=generator)) for n in sizes]


def test_evaluate_equals_the_straightforward_reference():
    torch.manual_seed(0)
    model = SleepyModel().train()
    batches = _batches([7, 16, 1, 9])
    accuracy, loss, hits, counts = _evaluate(model, batches, amp=False, channels_last=False)
    ref_accuracy, ref_loss, ref_hits, ref_counts = _reference(model, batches)
    assert 0 < ref_accuracy < 100  # a test that a constant answer could not pass
    assert accuracy == ref_accuracy
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert torch.equal(hits, ref_hits) and torch.equal(counts, ref_counts)
    assert evaluate(model, batches, amp=False, channels_last=False) == (accuracy, loss)
    assert model.training  # the mode it came in with


def test_evaluate_of_nothing_is_nan():
    accuracy, loss, hits, counts = _evaluate(SleepyModel(), [], amp=False, channels_last=False)
    assert math.isnan(accuracy) and math.isnan(loss) and len(hits) == len(counts) == 0


# -- where the records flow -------------------------------------------------------------------

def test_bench_summary_reports_the_data_wait_share_when_runs_have_it():
    from fastprune.bench.report import summarize

    def run(seed, wait=None):
        row = {"strategy": "full", "keep": 1.0, "seed": seed, "final_acc": 90.0, "wall_s": 10.0,
               "curve": [[10.0, 90.0]], "scoring_s": 0.0, "pruning_overhead_s": 0.1}
        return row if wait is None else {**row, "data_wait_s": wait}

    assert summarize([run(0, 1.0), run(1, 3.0)])[0]["data_wait_share_pct"] == pytest.approx(20.0)
    assert summarize([run(0, 1.0), run(1)])[0]["data_wait_share_pct"] is None  # older results


def test_gpu_benchmark_table_has_the_data_wait_column(benchmark_script):
    gpu = benchmark_script("gpu")
    row = {"workload": "photos", "step_img_per_s": 8109, "fit_img_per_s": 6697, "fit_epoch_s": 1.9,
           "fit_fraction_of_step": 0.83, "gpu_busy_pct_fit": 71.0, "data_wait_s_fit": 0.412,
           "data_wait_fraction_fit": 0.217}
    result = {"date": "today", "command": "gpu.py", "device": "cuda", "machine": {"cpu": "x", "cores": 16},
              "feed": [], "step_vs_fit": [row], "end_to_end": []}
    table = gpu.markdown(result)
    assert "data wait s (of epoch)" in table and "| 0.412 (22%) |" in table
