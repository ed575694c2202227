"""What fit reports and restores, where no other test pinned it down: a mutation audit (one change
at a time to train/*.py, _outputs.py, _args.py; 51 mutants, 26 survived the files it ran, 22 of
them real gaps) found each of these changes passing. The loss's value (per sample, unweighted),
the time columns (data wait, cumulative, per-epoch overhead, the strategy's flush), resume with
Adam, a GradScaler, the random streams and a loader's state, batch size and lr settings, CSV
columns first seen late, channel statistics, validation crops and labels, seeding numpy.

The time tests sleep for known durations and check lower bounds (a sleep lasts at least that
long) or ratios far from the mutants' values, so a busy machine cannot fail them."""
from __future__ import annotations

import csv
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from fastprune.loader import Batch
from fastprune.train import fit

from test_fit_data_wait import BATCH, BATCHES, CLASSES, SIDE
from test_fit_data_wait import SleepyLoader as MemLoader  # in-memory batches, optionally late


class Zero(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * SIDE * SIDE, CLASSES)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_training_loss_is_the_mean_per_sample_loss():
    # all-zero logits and LR 0: every sample's cross-entropy is ln(CLASSES), so is their mean
    model = Zero()
    history = fit(model, MemLoader(), None, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                  progress=False, log=None)
    assert history[0]["loss"] == pytest.approx(math.log(CLASSES))
    assert history[0]["samples"] == BATCH * BATCHES and history[0]["steps"] == BATCHES


class EndSleepLoader(MemLoader):
    """Sleeps after the last batch, before the epoch ends (the wait of the final next())."""

    def __iter__(self):
        yield from super().__iter__()
        time.sleep(0.3)


def test_data_wait_includes_the_final_next_that_ends_the_epoch():
    model = Zero()
    history = fit(model, EndSleepLoader(), None, epochs=1, progress=False, log=None)
    assert history[0]["data_wait_s"] >= 0.25


def test_cumulative_train_s_accumulates_train_s():
    model = Zero()
    history = fit(model, MemLoader(delay=0.01), None, epochs=3, progress=False, log=None)
    assert history[-1]["cumulative_train_s"] == pytest.approx(sum(r["train_s"] for r in history))
    assert history[-1]["cumulative_train_s"] > history[-1]["train_s"]


class SlowStrategy:
    """A minimal strategy selecting all samples; update and flush take known time."""

    def __init__(self, n, update_s=0.0, flush_s=0.0):
        self.n, self.update_s, self.flush_s, self.current_epoch = n, update_s, flush_s, 0

    def select(self, epoch):
        return None

    def update(self, indices, losses, correct=None):
        time.sleep(self.update_s)

    def flush(self):
        time.sleep(self.flush_s)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _loader_with(strategy, **kw):
    loader = MemLoader(**kw)
    loader.sampler = strategy
    return loader


def test_overhead_s_is_per_epoch_not_cumulative():
    strategy = SlowStrategy(BATCH * BATCHES, update_s=0.02)
    history = fit(Zero(), _loader_with(strategy), None, strategy, epochs=3, progress=False, log=None)
    per_epoch = BATCHES * 0.02
    overheads = [record["overhead_s"] for record in history]
    assert min(overheads) >= per_epoch, overheads
    # a running total grows by at least one epoch's sleeps every epoch; per-epoch figures grow
    # so twice in a row only if the machine slowed by a whole epoch's overhead twice
    grows = [later - earlier >= per_epoch for earlier, later in zip(overheads, overheads[1:])]
    assert not all(grows), overheads


def test_train_s_includes_the_strategys_flush():
    strategy = SlowStrategy(BATCH * BATCHES, flush_s=0.3)
    history = fit(Zero(), _loader_with(strategy), None, strategy, epochs=1, progress=False, log=None)
    assert history[0]["overhead_s"] >= 0.29
    assert history[0]["train_s"] >= history[0]["overhead_s"]  # overhead is part of training time
    assert history[0]["epoch_s"] >= 0.29


def test_the_schedule_s_replan_is_training_time_and_pruning_overhead():
    """A re-planning schedule asks the strategy the size of every epoch left, before each epoch
    (InfoBatch: a pass over its scores each): that ran before the epoch's clocks started, so
    neither train_s nor overhead_s held it (a fit audit)."""
    from fastprune.train import one_cycle

    class Sized(SlowStrategy):
        def num_selected(self, epoch):
            time.sleep(0.02)
            return self.n

    strategy = Sized(BATCH * BATCHES)
    history = fit(Zero(), _loader_with(strategy), None, strategy, epochs=3, schedule=one_cycle(0.1),
                  progress=False, log=None)
    for epoch, record in enumerate(history):  # epoch e re-plans the 3 - e epochs left
        assert record["overhead_s"] >= (3 - epoch) * 0.02, history
        assert record["train_s"] >= record["overhead_s"]


def test_evaluate_leaves_an_eval_model_in_eval_mode():
    from fastprune.train.loop import evaluate

    model = Zero().eval()
    evaluate(model, [(torch.randn(4, 3, SIDE, SIDE), torch.zeros(4, dtype=torch.long))])
    assert not model.training


class WeightedLoader(MemLoader):
    def __iter__(self):
        for batch in super().__iter__():
            yield batch._replace(weights=torch.full((BATCH,), 2.0))


def test_reported_loss_is_unweighted_per_sample_loss():
    # InfoBatch up-weights kept samples; the reported loss is still the plain per-sample mean
    model = Zero()
    history = fit(model, WeightedLoader(), None, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                  progress=False, log=None)
    assert history[0]["loss"] == pytest.approx(math.log(CLASSES))


def test_resume_with_adam_is_accepted(tmp_path):
    # Adam keeps a 0-d "step" buffer per parameter: the shape check must not refuse it
    checkpoint = tmp_path / "run.pt"

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    model = Zero()
    with pytest.raises(Stop):  # interrupted after epoch 1 of 2, its checkpoint written
        fit(model, MemLoader(), None, epochs=2, optimizer=torch.optim.Adam(model.parameters()), checkpoint=checkpoint,
            progress=False, log=None, on_epoch_end=stop)
    model = Zero()
    history = fit(model, MemLoader(), None, epochs=2, optimizer=torch.optim.Adam(model.parameters()),
                  checkpoint=checkpoint, resume=True, progress=False, log=None)
    assert [r["epoch"] for r in history] == [0, 1]


def test_checkpoint_restores_numpy_and_python_random_streams(tmp_path):
    import random

    import numpy as np

    from fastprune.train.checkpoints import load_checkpoint, save_checkpoint

    model = Zero()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    np.random.seed(1)
    random.seed(1)
    save_checkpoint(tmp_path / "c.pt", model, optimizer, None, None, None, [])
    expected = (np.random.rand(), random.random())
    np.random.seed(2)
    random.seed(2)
    load_checkpoint(tmp_path / "c.pt", model, optimizer)
    assert (np.random.rand(), random.random()) == expected


def test_checkpoint_restores_the_gradient_scaler(tmp_path):
    from fastprune.train.checkpoints import load_checkpoint, save_checkpoint

    model = Zero()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    save_checkpoint(tmp_path / "c.pt", model, optimizer, None, None, None, [], scaler=scaler)
    fresh = torch.amp.GradScaler("cpu")
    load_checkpoint(tmp_path / "c.pt", model, optimizer, scaler=fresh)
    assert fresh.get_scale() == 1024.0


class StatefulLoader(MemLoader):
    def __init__(self):
        super().__init__()
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_checkpoint_restores_a_loaders_state(tmp_path):
    from fastprune.train.checkpoints import load_checkpoint, save_checkpoint

    model = Zero()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = StatefulLoader()
    loader.position = 7
    save_checkpoint(tmp_path / "c.pt", model, optimizer, None, None, loader, [])
    fresh = StatefulLoader()
    load_checkpoint(tmp_path / "c.pt", model, optimizer, loader=fresh)
    assert fresh.position == 7


def test_csv_columns_include_keys_first_seen_after_the_first_row(tmp_path):
    # eval_every=2: epoch 0 has val_class_acc None, later epochs spread per-class columns
    from fastprune.train import save_csv

    save_csv(tmp_path / "h.csv", [{"epoch": 0, "val_class_acc": None}, {"epoch": 1, "val_class_acc": {"cat": 50.0}}])
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["val_class_acc.cat"] == "50.0"


def test_seed_everything_repeats_numpys_global_stream():
    from fastprune.train.recipe import seed_everything

    seed_everything(3)
    first = np.random.rand()
    seed_everything(3)
    assert np.random.rand() == first


def test_fit_channels_last_true_on_cpu_converts_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * (SIDE - 2) ** 2, CLASSES))
    fit(model, MemLoader(batches=1), None, epochs=1, channels_last=True, amp="off", progress=False, log=None)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()


def test_resume_with_another_batch_size_is_refused(tmp_path):
    from fastprune.errors import CheckpointError
    from fastprune.loader import Batch
    from fastprune.train import fit

    class Loader:
        def __init__(self, batch_size):
            self.batch_size = batch_size

        def set_epoch(self, epoch):
            pass

        def __len__(self):
            return 1

        def __iter__(self):
            b = self.batch_size
            yield Batch(torch.randn(b, 3, 2, 2), torch.zeros(b, dtype=torch.long), torch.arange(b), torch.ones(b))

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 2))

    with pytest.raises(Stop):
        fit(model(), Loader(4), None, epochs=2, checkpoint=tmp_path / "c.pt", on_epoch_end=stop, progress=False, log=None)
    with pytest.raises(CheckpointError, match="batch_size=4 in the checkpoint, 8 now"):
        fit(model(), Loader(8), None, epochs=2, checkpoint=tmp_path / "c.pt", resume=True, progress=False, log=None)


def test_channel_statistics_give_a_constant_channel_unit_std(tmp_path):
    from fastprune.convert import from_arrays
    from fastprune.loader._source import open_source
    from fastprune.train.data import channel_statistics

    images = np.zeros((16, 4, 4, 3), np.uint8)
    images[..., 0] = np.arange(16)[:, None, None] * 10  # channel 0 varies, 1 and 2 are constant 0
    store = from_arrays(images, np.arange(16) % 2, tmp_path / "s.beton", progress=False, workers=1)
    mean, std = channel_statistics(open_source(store, None, None, threads=1))
    assert std[1] == std[2] == 1.0 and std[0] > 0.01


def test_statistics_of_camera_size_images_are_exact_in_bounded_memory(tmp_path):
    """256 images at once, copied to float64: a store of 3000 x 2000 photos asked for 26.8 GiB and
    `fastprune train` died in a MemoryError (a performance audit). Gathers now hold a bounded
    number of pixels, counted into histograms; the figures stay exact (a resumed run compares
    them with its checkpoint's)."""
    import tracemalloc

    from fastprune.loader._source import open_source
    from fastprune.store.fields import IntField, RGBImageField
    from fastprune.store.writer import write_dataset
    from fastprune.train.data import channel_statistics

    rng = np.random.default_rng(0)
    sizes = [(1800, 1200)] * 6 + [(1200, 1800), (300, 200)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // (1 + i % 3) for i, (h, w) in enumerate(sizes)]
    store = write_dataset(tmp_path / "big.beton", [(image, 0) for image in images],
                          {"image": RGBImageField(write_mode="raw"), "label": IntField()}, workers=1, progress=False)
    with open_source(store, None, None, threads=1) as source:
        channel_statistics(source)  # numba compiled outside the measurement
        tracemalloc.start()
        mean, std = channel_statistics(source)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # one gather of the six: 39 MB, and 8 bytes a value twice over in float64 (620 MB) before
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB"
    pixels = np.concatenate([image.reshape(-1, 3) for image in images]).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-9)


def _mixed_size_store(path, mode: str, count: int = 40):
    from fastprune.store.fields import IntField, RGBImageField
    from fastprune.store.writer import write_dataset

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (int(rng.integers(8, 40)), int(rng.integers(8, 40)), 3), dtype=np.uint8)
              // (1 + i % 3) for i in range(count)]
    write_dataset(path, [(image, 0) for image in images],
                  {"image": RGBImageField(write_mode=mode), "label": IntField()}, workers=1, progress=False)
    return path, images


def test_statistics_of_a_mixed_size_store_are_the_same_on_every_thread_count(tmp_path):
    """One gather per shape held one image of a mixed-size store (photos), so the statistics of
    4,096 photos were decoded one at a time; threads of their own now share the shapes' gathers.
    The figures stay exact (numpy's over the pixels) and the same on any number of threads."""
    from fastprune.loader._source import open_source
    from fastprune.train.data import channel_statistics

    raw, images = _mixed_size_store(tmp_path / "raw.beton", "raw")
    jpeg, _ = _mixed_size_store(tmp_path / "jpeg.beton", "jpg")
    pixels = np.concatenate([image.reshape(-1, 3) for image in images]).astype(np.float64) / 255
    for threads in (1, 3):
        with open_source(raw, None, None, threads=threads) as source:
            mean, std = channel_statistics(source)
        np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-9)
    figures = set()
    for threads in (1, 3, 8):
        with open_source(jpeg, None, None, threads=threads) as source:
            figures.add(channel_statistics(source))
    assert len(figures) == 1


def test_a_damaged_image_stops_the_statistics_naming_it_and_leaves_no_thread(tmp_path):
    import threading

    from fastprune.loader._source import open_source
    from fastprune.train.data import channel_statistics

    from fastprune import Store

    path, _ = _mixed_size_store(tmp_path / "jpeg.beton", "jpg")
    with Store(path) as store:
        offsets, _ = store.field_ranges("image")
    with open(tmp_path / "jpeg.beton", "r+b") as f:  # sample 17's SOI marker: not a JPEG any more
        f.seek(int(offsets[17]))
        f.write(b"\x00\x00")
    before = threading.active_count()
    with open_source(tmp_path / "jpeg.beton", None, None, threads=3) as source:
        with pytest.raises(ValueError, match="JPEG decode of sample 17 failed"):
            channel_statistics(source)
    assert threading.active_count() == before


def test_a_validation_label_one_past_the_training_classes_is_refused(tmp_path):
    from fastprune.convert import from_arrays
    from fastprune.errors import ConfigError
    from fastprune.train.data import describe_stores

    images = np.zeros((8, 4, 4, 3), np.uint8)
    train = from_arrays(images, np.arange(8) % 2, tmp_path / "t.beton", progress=False, workers=1)  # classes 0, 1
    val = from_arrays(images, np.array([0, 1, 2, 0, 1, 2, 0, 1]), tmp_path / "v.beton", progress=False, workers=1)
    with pytest.raises(ConfigError, match="label 2, but the training store"):
        describe_stores(train, val, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_make_loaders_crop_center_crops_validation(tmp_path):
    from fastprune.convert import from_arrays
    from fastprune.train.recipe import make_loaders

    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    train = from_arrays(images, np.arange(8) % 2, tmp_path / "t.beton", progress=False, workers=1)
    _, val_loader = make_loaders(train, train, 4, crop=4, threads=1, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert tuple(next(iter(val_loader))[0].shape[-2:]) == (4, 4)
