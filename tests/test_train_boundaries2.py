"""What fit trains with and reports, where no other test pinned it down (mutation audit, round 3,
of train/loop.py, schedule.py, device.py, tensorboard.py and bench/): the sample weights' place in
the gradient, the LR a record reports, the compile mode and the compiled forward on every step,
the one-cycle schedule's end points and the optimizer's parameter groups."""
from __future__ import annotations

import pytest
import torch

from fastprune.train import fit, make_optimizer
from fastprune.train import loop as train_loop

from test_fit_data_wait import BATCH, BATCHES
from test_train_boundaries import MemLoader, WeightedLoader, Zero


def _one_epoch(loader, lr):
    torch.manual_seed(0)
    model = Zero()
    fit(model, loader, None, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        progress=False, log=None, amp=False, channels_last=False)
    return model.state_dict()


def test_sample_weights_scale_the_gradient_as_a_mean_of_weighted_losses():
    """InfoBatch's 1/keep up-weighting must reach the gradient: weights 2 at lr 0.05 train exactly as
    weights 1 at lr 0.1 (plain SGD); ignoring the weights, or dividing by their sum, trains as lr 0.05."""
    weighted, doubled = _one_epoch(WeightedLoader(), 0.05), _one_epoch(MemLoader(), 0.1)
    plain = _one_epoch(MemLoader(), 0.05)
    for name, tensor in doubled.items():
        torch.testing.assert_close(weighted[name], tensor, msg=name)
    assert not torch.allclose(plain["linear.weight"], doubled["linear.weight"])


def test_the_recorded_lr_is_the_one_the_epochs_last_step_used():
    """A built scheduler halving the LR every step: the last of BATCHES steps trains at lr / 2**(BATCHES-1);
    the LR after the schedule moved on (lr / 2**BATCHES) was never used."""
    model = Zero()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    history = fit(model, MemLoader(), None, epochs=2, optimizer=optimizer, schedule=schedule,
                  progress=False, log=None)
    assert [record["lr"] for record in history] == [0.5 ** (BATCHES - 1), 0.5 ** (2 * BATCHES - 1)]


class _Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, images):
        self.calls += 1
        return self.model(images)


@pytest.mark.parametrize("compile, mode", [(True, None), ("default", None), ("reduce-overhead", "reduce-overhead"),
                                           ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")])
def test_each_compile_option_reaches_torch_compile_with_its_mode(monkeypatch, compile, mode):
    asked = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: asked.append(mode) or _Counting(model))
    train_loop.compiled_forward(Zero(), compile)
    assert asked == [mode]


def test_the_compiled_forward_runs_every_training_step(monkeypatch):
    """fit(compile=...) trains through the compiled module on every step, not only the first; with
    "reduce-overhead" (CUDA graphs) each step is marked as a new one."""
    wrappers, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: wrappers.append(_Counting(model)) or wrappers[-1])
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    fit(Zero(), MemLoader(), None, epochs=2, progress=False, log=None, compile="reduce-overhead")
    assert wrappers[0].calls == 2 * BATCHES
    assert len(marks) == 2 * BATCHES


@pytest.mark.parametrize("capability, dtype", [((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16),
                                               ((7, 5), torch.float16)])
def test_auto_precision_is_bf16_from_compute_capability_8_0(monkeypatch, capability, dtype):
    """The docstring's rule: native bf16 from Ampere (8.0: A100, RTX 30xx) on; the suite checked 9.0
    and 7.5 only, so an A100 trained in fp16 (with a gradient scaler) under a `> 8` passed it."""
    from fastprune.train.device import autocast_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert autocast_dtype(torch.device("cuda:0"), "auto") is dtype


def test_tensorboard_skips_values_not_evaluated_and_nan_ones(tmp_path):
    """An empty validation set gives val_acc/val_loss NaN (nothing to evaluate), an epoch not
    evaluated None: neither becomes a point (a NaN point breaks TensorBoard's y-axis)."""
    pytest.importorskip("tensorboard")
    from fastprune.train import TensorBoardLogger

    from test_seeing_pruning import _scalars

    with TensorBoardLogger(tmp_path / "tb") as logger:
        logger({"epoch": 0, "loss": 1.5, "val_loss": float("nan"), "val_acc": float("nan"), "lr": 0.1,
                "samples": 8, "val_class_acc": None})
        logger({"epoch": 1, "loss": 1.2, "val_loss": None, "val_acc": None, "lr": 0.1, "samples": 8,
                "val_class_acc": None})
    scalars = _scalars(tmp_path / "tb")
    assert "loss/val" not in scalars and "accuracy/val" not in scalars
    assert scalars["loss/train"] == [(1, 1.5), (2, pytest.approx(1.2))]


def test_a_tensorboard_write_that_fails_is_one_line_naming_the_folder(tmp_path, monkeypatch, capfd):
    """On a full disk TensorBoard's writer thread printed a 15-line traceback, then the next write
    raised errno's bare 'No space left on device', naming no folder (a failure-injection audit)."""
    import errno
    import time

    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer import record_writer

    from fastprune.errors import OutputError
    from fastprune.train import TensorBoardLogger

    record = {"epoch": 0, "loss": 1.5, "lr": 0.1, "samples": 8}
    logger = TensorBoardLogger(tmp_path / "tb")
    logger(record)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    with pytest.raises(OutputError, match=f"^cannot write TensorBoard events in {tmp_path / 'tb'}: No space left"):
        for epoch in range(1, 50):  # the writer thread fails on its own time; a later write says so
            logger({**record, "epoch": epoch})
            time.sleep(0.02)
    logger.close()  # said once, by the write that failed
    assert "Traceback" not in capfd.readouterr().err
    # a failure first seen at close (a network file system reports a lost write there) is said
    fresh = TensorBoardLogger(tmp_path / "tb2")
    monkeypatch.undo()
    fresh(record)

    def lost(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fresh.writer, "close", lost)
    with pytest.raises(OutputError, match="cannot write TensorBoard events in .*tb2: Input/output error"):
        fresh.close()


class _Recording:
    """Selects every sample (no subset) and keeps what fit feeds its update."""

    def __init__(self):
        self.current_epoch, self.seen = 0, []

    def select(self, epoch):
        return None

    def update(self, indices, losses, correct=None):
        self.seen.append((torch.as_tensor(indices).clone(), losses.clone(), correct.clone()))


def test_the_strategy_gets_each_samples_own_loss_and_whether_it_was_right():
    """Zero logits: every loss is ln(CLASSES) whatever the sample's weight (2 here), and argmax is
    class 0, so a sample is right exactly when its label is 0 (forgetting counts the flips)."""
    import math

    from test_fit_data_wait import CLASSES

    strategy, loader = _Recording(), WeightedLoader()
    loader.sampler = strategy
    model = Zero()
    fit(model, loader, None, strategy, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        progress=False, log=None)
    assert len(strategy.seen) == BATCHES
    for indices, losses, correct in strategy.seen:
        torch.testing.assert_close(losses, torch.full((BATCH,), math.log(CLASSES)))
        assert torch.equal(correct, loader.labels[indices] == 0)


class _OneBadImage(MemLoader):
    """Sample ``BAD`` (the 6th image of the 2nd batch) is NaN: only its loss is."""

    BAD = BATCH + 5

    def __init__(self):
        super().__init__()
        self.images[self.BAD] = float("nan")


def test_a_diverged_run_names_the_sample_by_its_index_in_the_store_not_in_the_batch():
    from fastprune import UCB
    from fastprune.errors import TrainingDiverged

    strategy, loader = UCB(BATCH * BATCHES, keep=1.0, seed=0), _OneBadImage()
    loader.sampler = strategy
    with pytest.raises(TrainingDiverged, match=rf"in epoch 1, step 2: the loss of sample {_OneBadImage.BAD} is nan"):
        fit(Zero(), loader, None, strategy, epochs=1, progress=False, log=None)


def _lrs(scheduler, steps):
    optimizer, lrs = scheduler.optimizer, []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_one_cycle_starts_at_a_tenth_peaks_at_pct_start_and_ends_on_its_last_step_at_a_thousandth():
    from fastprune.train import one_cycle

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.123)
    lrs = _lrs(one_cycle(1.0)(optimizer, 9), 9)  # progress 0, 1/8, ..., 1: the peak at step 2 (0.25)
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 2
    assert lrs[-1] == pytest.approx(1e-3)  # div_factor 10 x final_div_factor 100


class _Planned:
    """A loader whose epochs' step counts are known (and may be re-estimated between epochs)."""

    batch_size, drop_last = 4, True

    def __init__(self, sizes):
        self.sizes = sizes

    def steps_for_epochs(self, start, stop):
        return sum(self.sizes[start:stop])


def test_a_replanned_one_cycle_spans_the_steps_taken_plus_those_still_planned():
    """Epoch 0 was planned at 4 steps but took 5 (InfoBatch keeps every above-mean sample), and the
    next two are re-estimated at 2: the schedule now ends after 5 + 4 steps, not the 8 of the plan."""
    from fastprune.train import one_cycle
    from fastprune.train.schedule import replan_schedule

    loader = _Planned([4, 4, 4])
    scheduler = one_cycle(1.0)(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 12)
    _lrs(scheduler, 5)
    loader.sizes = [4, 2, 2]
    replan_schedule(scheduler, loader, None, 1, 3)
    assert scheduler.total_steps == 9
    assert _lrs(scheduler, 4)[-1] == pytest.approx(1e-3)


class _Keeps:
    def num_selected(self, epoch):
        return (10, 10, 7)[epoch]


def test_planned_steps_count_whole_batches_with_drop_last_and_only_the_epochs_asked():
    from fastprune.train.schedule import planned_steps

    class Plain:  # no steps_for_epochs: the strategy's counts decide
        batch_size = 4

        def __init__(self, drop_last):
            self.drop_last = drop_last

        def __len__(self):
            return 3

    assert planned_steps(Plain(True), 0, 3, _Keeps()) == 2 + 2 + 1
    assert planned_steps(Plain(False), 0, 3, _Keeps()) == 3 + 3 + 2
    assert planned_steps(Plain(False), 1, 3) == 3 * 2  # epochs 1 and 2, len(loader) each


def test_make_optimizer_decays_weights_only_with_nesterov_momentum():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    decay, no_decay = make_optimizer(model).param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])] and decay["weight_decay"] == 5e-4
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # bias, BN weight and bias
    assert decay["nesterov"] and decay["momentum"] == 0.9


def test_fp16_training_keeps_a_gradient_scaler_and_its_state_reaches_the_checkpoint(tmp_path):
    """fp16 (not bf16) has too little range for small gradients: fit scales the loss (GradScaler)
    and a resume restores the scale; trained without one, the checkpoint held no scale at all."""
    from fastprune.train.checkpoints import load_checkpoint

    model = Zero()
    fit(model, MemLoader(), None, epochs=1, amp="fp16", checkpoint=tmp_path / "c.pt", progress=False, log=None)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    load_checkpoint(tmp_path / "c.pt", model, make_optimizer(model), scaler=scaler)
    assert scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()  # the default 2**16, no inf seen


@pytest.mark.parametrize("built_for", [3, 7])
def test_a_strategy_built_for_another_run_length_is_refused_either_way(built_for):
    """InfoBatch's final full-data epochs follow its own epochs=: built for fewer epochs than fit
    trains, they come too early; for more, never."""
    from fastprune import InfoBatch
    from fastprune.errors import ConfigError

    strategy, loader = InfoBatch(BATCH * BATCHES, epochs=built_for), MemLoader()
    loader.sampler = strategy
    with pytest.raises(ConfigError, match=f"built for epochs={built_for}, fit trains 5"):
        fit(Zero(), loader, None, strategy, epochs=5, progress=False, log=None)
