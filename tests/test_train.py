"""The reference training loop: learning, honest history, step-exact schedules, exact resume.

Small runs (2,000 real Fashion-MNIST images, a tiny ResNet, one thread) through the real store,
Loader and strategies, so they exercise the whole loop yet finish in seconds.
"""

from __future__ import annotations

import gzip
import math
import warnings

import numpy as np
import pytest
import torch

from fastprune import Loader
from fastprune.convert import from_arrays
from fastprune.loader import Normalize
from fastprune.models import SmallResNet, build_model, resnet18_small
from fastprune.prune import UCB, InfoBatch
from fastprune.train import fit, make_optimizer, one_cycle

MEAN, STD = (0.286,) * 3, (0.353,) * 3  # Fashion-MNIST pixel statistics
BATCH, LR = 64, 0.2
TRAIN_SIZE = 2000


def _read_idx(path, header):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


@pytest.fixture(scope="module")
def stores(fashion_mnist_dir, tmp_path_factory):
    """(train store: 2,000 images, val store: 1,000 images) of real Fashion-MNIST."""
    folder = tmp_path_factory.mktemp("fashion")

    def store(split, count):
        images = _read_idx(fashion_mnist_dir / f"{split}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        labels = _read_idx(fashion_mnist_dir / f"{split}-labels-idx1-ubyte.gz", 8)
        return from_arrays(images[:count], labels[:count], folder / f"{split}.beton", workers=1,
                           progress=False)

    return store("train", TRAIN_SIZE), store("t10k", 1000)


class Recorder:
    """Wraps a strategy to record the selection it hands the loader each epoch."""

    def __init__(self, strategy):
        self.strategy, self.selections = strategy, {}

    def select(self, epoch):
        selection = self.strategy.select(epoch)
        self.selections[epoch] = selection.indices.copy()
        return selection

    def __getattr__(self, name):  # num_selected, update, state_dict, ...
        return getattr(self.strategy, name)


class DeferringRecorder(Recorder):
    """A Recorder whose updates take the deferred path, as a GPU's losses would."""

    def update(self, indices, losses, correct=None):
        return self.strategy.update(indices, losses, correct, defer=True)


def _run(stores, *, strategy="ucb", epochs=4, keep=0.5, seed=0, defer=False, **fit_options):
    """A small pruned run; returns (model, recorded strategy, history, scheduler)."""
    train_store, val_store = stores
    torch.set_num_threads(1)  # deterministic, and not fighting other processes for cores
    torch.manual_seed(seed)
    model = SmallResNet(3, widths=(8, 16, 32), stem_stride=2)
    if strategy == "ucb":  # a full first epoch, then pruned: the subset size changes
        pruner = UCB(TRAIN_SIZE, keep, seed=seed, warmup_epochs=1)
    else:  # InfoBatch: the sizes of pruned epochs depend on the scores
        pruner = InfoBatch(TRAIN_SIZE, keep, epochs=epochs, seed=seed)
    recorder = (DeferringRecorder if defer else Recorder)(pruner)
    normalize = [Normalize(MEAN, STD)]
    loader = Loader(train_store, BATCH, sampler=recorder, transforms=normalize, seed=seed, threads=1)
    val_loader = Loader(val_store, 500, transforms=normalize, shuffle=False, threads=1)
    built = {}

    def schedule(optimizer, steps):
        built["scheduler"] = one_cycle(LR)(optimizer, steps)
        return built["scheduler"]

    history = fit(model, loader, val_loader, recorder, epochs, make_optimizer(model), schedule,
                  progress=False, log=None, **fit_options)
    return model, recorder, history, built["scheduler"]


def test_models_accept_28_and_32_pixel_inputs():
    # Defaults take 3 channels: every store fastprune writes is RGB, gray datasets included.
    for channels, model in ((1, SmallResNet(1)), (3, build_model("small_resnet", widths=(8, 16), blocks=2)),
                            (1, resnet18_small(1)), (3, build_model("resnet18"))):
        model.eval()
        for size in (28, 32):
            assert model(torch.zeros(2, channels, size, size)).shape == (2, 10)


def test_fit_learns_and_keeps_a_consistent_history(stores):
    epochs = 4
    _, strategy, history, _ = _run(stores, epochs=epochs)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_acc"] > 50.0  # chance is 10%; ~70% after 4 short epochs
    assert [r["epoch"] for r in history] == list(range(epochs))
    for record in history:
        assert record["samples"] == len(strategy.selections[record["epoch"]])
        assert record["samples"] == (TRAIN_SIZE if record["epoch"] == 0 else TRAIN_SIZE // 2)
        assert record["steps"] == math.ceil(record["samples"] / BATCH)
        assert record["epoch_s"] == pytest.approx(record["train_s"] + record["eval_s"])
        assert 0 < record["overhead_s"] < record["train_s"]
        assert 0 <= record["val_acc"] <= 100
    assert history[-1]["cumulative_s"] == pytest.approx(sum(r["epoch_s"] for r in history))
    # the overhead clock is removed from the strategy after the run
    assert not {"select", "num_selected", "update"} & set(vars(strategy.strategy))


def test_eval_every_skips_evaluations_without_changing_training(stores):
    _, _, every, _ = _run(stores, epochs=3)
    _, _, sparse, _ = _run(stores, epochs=3, eval_every=2)
    # evaluated after the 2nd epoch (every 2nd) and the 3rd (the last); the others record None
    assert [r["val_acc"] is not None for r in sparse] == [False, True, True]
    assert sparse[0]["val_loss"] is None and sparse[0]["eval_s"] == 0.0
    # evaluating changes nothing the model learns: same losses, same final accuracy
    assert [r["loss"] for r in sparse] == [r["loss"] for r in every]
    assert sparse[-1]["val_acc"] == every[-1]["val_acc"]
    with pytest.raises(ValueError, match="eval_every must be an integer >= 1, got 0"):
        _run(stores, epochs=1, eval_every=0)


@pytest.mark.parametrize("strategy", ["ucb", "infobatch"])
def test_schedule_spans_the_exact_steps_of_a_changing_subset(stores, strategy):
    epochs = 4
    _, _, history, scheduler = _run(stores, strategy=strategy, epochs=epochs, keep=0.3)
    steps = [r["steps"] for r in history]
    assert len(set(steps)) > 1, "the subset size should change between epochs"
    assert scheduler.total_steps == scheduler.last_epoch == sum(steps)
    # the one-cycle schedule ends on max_lr / (div_factor * final_div_factor) on the last step
    assert history[-1]["lr"] == pytest.approx(LR / 10 / 100)


@pytest.mark.parametrize("strategy", ["ucb", "infobatch"])
def test_deferred_updates_train_exactly_as_immediate_ones(stores, strategy, monkeypatch):
    """fit hands the strategy its loss tensors as they are (on a GPU: no host sync per step); the
    deferred path they take there gives the same selections, hence the same run, bit for bit."""
    from fastprune.prune import ScoreTable

    _, immediate, expected, _ = _run(stores, strategy=strategy, epochs=3)
    monkeypatch.setattr(ScoreTable, "max_pending", 700)  # also flushed mid-epoch: 64-sample steps
    flushes = []
    flush = ScoreTable.flush
    monkeypatch.setattr(ScoreTable, "flush", lambda table: flushes.append(table.pending) or flush(table))
    _, deferred, history, _ = _run(stores, strategy=strategy, epochs=3, defer=True)
    assert max(flushes) > 0  # updates were staged, then applied
    for epoch in range(3):
        np.testing.assert_array_equal(deferred.selections[epoch], immediate.selections[epoch])
    assert [r["loss"] for r in history] == [r["loss"] for r in expected]
    assert [r["val_acc"] for r in history] == [r["val_acc"] for r in expected]
    assert deferred.strategy.table.pending == 0  # fit applies each epoch's updates at its end
    for field, value in immediate.strategy.state_dict()["table"].items():
        assert torch.equal(value, deferred.strategy.state_dict()["table"][field]), field


def _cpp_compiler_or_skip():
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except Exception as error:  # noqa: BLE001 - whatever stops inductor from finding one
        pytest.skip(f"torch.compile has no working C++ compiler here ({type(error).__name__}: {error})")


def test_fit_compiled_trains_like_fit_uncompiled(stores):
    """fit(compile=True) runs the training forward through torch.compile: a tiny model (compiling
    a ResNet takes a minute on 2 cores), even batches (near-static shapes: at most two
    compilations), and the same loss trajectory within tolerance (inductor's kernels may round
    differently)."""
    _cpp_compiler_or_skip()
    train_store, val_store = stores
    torch.set_num_threads(1)
    normalize = [Normalize(MEAN, STD)]

    def run(compile):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * 13 * 13, 10))
        strategy = UCB(TRAIN_SIZE, 0.5, seed=0, warmup_epochs=1)
        loader = Loader(train_store, BATCH, sampler=strategy, transforms=normalize, seed=0, threads=1,
                        even_batches=True)
        val_loader = Loader(val_store, 500, transforms=normalize, shuffle=False, threads=1)
        history = fit(model, loader, val_loader, strategy, 3, make_optimizer(model, lr=0.05), progress=False,
                      log=None, compile=compile)
        return model, history

    from torch._dynamo.utils import counters

    torch.compiler.reset()
    counters.clear()
    plain_model, plain = run(False)
    assert not counters["stats"]["unique_graphs"]
    compiled_model, compiled = run(True)
    # even batches differ by one sample at most: a graph for the first size, one with a dynamic
    # batch size at the second, and no recompiles after
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    assert not hasattr(compiled_model, "_orig_mod")  # fit compiles a wrapper; the model is the user's
    assert compiled[-1]["loss"] < compiled[0]["loss"] and compiled[-1]["val_acc"] > 50.0
    assert [r["samples"] for r in compiled] == [r["samples"] for r in plain]
    np.testing.assert_allclose([r["loss"] for r in compiled], [r["loss"] for r in plain], rtol=1e-3)
    for name, tensor in plain_model.state_dict().items():
        torch.testing.assert_close(compiled_model.state_dict()[name], tensor, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("value", ["fast", 1, "max-autotune-cudagraphs"])
def test_fit_refuses_an_unknown_compile_mode_before_any_work(stores, value):
    with pytest.raises(ValueError, match=r"^fit: compile must be False, None, 'off', True or one of 'default', "
                                         r"'reduce-overhead', 'max-autotune-no-cudagraphs', got "):
        fit(torch.nn.Linear(2, 2), None, None, epochs=1, compile=value, log=None)


def test_compile_device_and_channels_last_take_the_same_spellings_everywhere(tmp_path):
    """fit refused compile='off' (the command line's word) while compare refused compile=False
    (fit's); Loader(device='auto') died inside torch.device and Loader(device='cuda') without CUDA
    raised a RuntimeError where every other entry point says ConfigError; fit refused
    channels_last=None, compare's default."""
    from fastprune.bench.run import Settings
    from fastprune.errors import ConfigError
    from fastprune.train.device import memory_format_for
    from fastprune.train.loop import compiled_forward

    model = torch.nn.Linear(2, 2)
    assert compiled_forward(model, "off") is model and compiled_forward(model, None) is model
    assert Settings(compile=False).compile == "off" and Settings(compile=True).compile == "default"
    assert Settings(compile=None).resolved().compile == "off"
    assert memory_format_for(torch.device("cpu"), None) == memory_format_for(torch.device("cpu"), "auto")
    store = from_arrays(np.zeros((4, 4, 4, 3), np.uint8), np.arange(4) % 2, tmp_path / "d.beton", progress=False)
    assert Loader(store, 2, device="auto").device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available on this machine"):
            Loader(store, 2, device="cuda")


def test_resume_continues_with_the_same_selections_and_weights(stores, tmp_path):
    epochs = 4
    full_model, full_strategy, full_history, _ = _run(stores, epochs=epochs)

    class Interrupt(Exception):
        pass

    def stop_after_second_epoch(record):
        if record["epoch"] == 1:
            raise Interrupt

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        _run(stores, epochs=epochs, checkpoint=checkpoint, on_epoch_end=stop_after_second_epoch)
    resumed_model, resumed_strategy, resumed_history, _ = _run(
        stores, epochs=epochs, checkpoint=checkpoint, resume=True)

    assert sorted(resumed_strategy.selections) == [2, 3]  # epochs 0-1 came from the checkpoint
    for epoch in (2, 3):
        np.testing.assert_array_equal(resumed_strategy.selections[epoch],
                                      full_strategy.selections[epoch])
    assert [r["samples"] for r in resumed_history] == [r["samples"] for r in full_history]
    assert [r["loss"] for r in resumed_history] == pytest.approx([r["loss"] for r in full_history])
    for name, tensor in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], tensor, rtol=0, atol=0,
                                   msg=name)


def test_train_command_logs_json_and_resumes(stores, tmp_path, capsys, monkeypatch):
    import argparse
    import json

    from fastprune.train import loop as train_module  # fit looks save_checkpoint up there
    from fastprune.train import add_train_command

    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers(dest="command"))
    train, val = stores
    log, checkpoint = tmp_path / "log.json", tmp_path / "ckpt.pt"
    common = ["train", "--train", str(train), "--val", str(val), "--strategy", "el2n", "--keep", "0.5",
              "--seed", "1", "--width", "8", "--threads", "1", "--no-progress",
              "--log-json", str(log), "--checkpoint", str(checkpoint), "--epochs", "3"]

    class Killed(Exception):
        pass

    save = train_module.save_checkpoint

    def save_then_die(path, *args, **kwargs):  # the process dies right after epoch 1's checkpoint
        save(path, *args, **kwargs)
        raise Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    args = parser.parse_args(common)
    with pytest.raises(Killed):
        args.run(args)
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    args = parser.parse_args([*common, "--resume"])
    assert args.run(args) == 0
    history = json.loads(log.read_text())["history"]
    assert [r["samples"] for r in history] == [TRAIN_SIZE, TRAIN_SIZE, TRAIN_SIZE // 2]  # 2 scoring epochs
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch 2/3" in out and "epoch 3/3" in out
    args = parser.parse_args([*common, "--resume"])  # the run is complete
    assert args.run(args) == 0
    assert "already holds 3 of 3 epochs: nothing left to train" in capsys.readouterr().out
    assert len(json.loads(log.read_text())["history"]) == 3


@pytest.mark.parametrize("name", ["uniform_random", "epsilon_greedy", "ucb", "el2n", "forgetting"])
def test_make_strategy_places_final_full_epochs_from_the_run_length(name):
    from fastprune.train import make_strategy

    strategy = make_strategy(name, 1000, 0.5, epochs=6, seed=0, final_full_epochs=2)
    assert [strategy.num_selected(e) for e in (3, 4, 5)] == [500, 1000, 1000]
    assert len(strategy.select(5)) == 1000 and len(strategy.select(3)) == 500


def test_fit_refuses_misuse_before_training(tmp_path):
    """A strategy other than the loader's sampler would get every loss and choose nothing; a loader
    that yields no batch would 'train' with a NaN loss; a resume with another loader seed would
    diverge from the uninterrupted run."""
    import numpy as np
    import pytest
    import torch

    import fastprune
    from fastprune.convert import from_arrays
    from fastprune.errors import CheckpointError
    from fastprune.train import fit

    store = from_arrays(np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), np.uint8), np.arange(32) % 2,
                        tmp_path / "s.beton", progress=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 2))
    selecting, other = fastprune.UCB(32, seed=0), fastprune.UCB(32, seed=1)
    loader = fastprune.Loader(store, 8, sampler=selecting, seed=0, transforms=[fastprune.loader.Normalize()])
    with pytest.raises(ValueError, match="is not the one that selects"):
        fit(model, loader, None, other, epochs=1, progress=False, log=None)
    with pytest.raises((TypeError, ValueError), match="epochs"):
        fit(model, loader, None, selecting, epochs=1.5, progress=False, log=None)
    empty = fastprune.Loader(store, 32, sampler=fastprune.UCB(32, seed=0), drop_last=True,  # 16 kept < 32
                             transforms=[fastprune.loader.Normalize()])
    with pytest.raises(ValueError, match="yielded no batch"):
        fit(model, empty, None, empty.sampler, epochs=1, progress=False, log=None)

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Stop):  # killed after epoch 1, its checkpoint written
        fit(model, loader, None, selecting, epochs=2, progress=False, log=None, checkpoint=checkpoint,
            on_epoch_end=stop)
    reseeded = fastprune.Loader(store, 8, sampler=selecting, seed=1, transforms=[fastprune.loader.Normalize()])
    with pytest.raises(CheckpointError, match="loader_seed=0 in the checkpoint, 1 now"):
        fit(model, reseeded, None, selecting, epochs=2, progress=False, log=None, checkpoint=checkpoint, resume=True)
    assert len(fit(model, loader, None, selecting, epochs=2, progress=False, log=None, checkpoint=checkpoint,
                   resume=True)) == 2


def test_a_diverged_run_stops_with_one_error_naming_the_epoch_step_and_sample(tmp_path):
    """A learning rate far too high made the strategy's update raise "losses[0] = nan ... pass
    skip_invalid=True" (a traceback from `fastprune train`), and a run without a strategy went on
    training a NaN model. Both now stop with TrainingDiverged. skip_invalid=True trains on past a
    loss it keeps out of the scores, but not on weights that loss made non-finite (it finished on
    NaN weights without a word; a fit audit)."""
    import fastprune
    from fastprune.errors import TrainingDiverged

    store = from_arrays(np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), np.uint8), np.arange(64) % 4,
                        tmp_path / "s.beton", progress=False)

    def run(strategy, lr=1e36, criterion=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4))
        loader = fastprune.Loader(store, 16, sampler=strategy, seed=0, transforms=[Normalize()])
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        history = fit(model, loader, None, strategy, epochs=3, optimizer=optimizer, progress=False, log=None,
                      criterion=criterion)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        return history

    with pytest.raises(TrainingDiverged, match=r"^fit: training diverged in epoch 1, step \d: the loss of sample \d+ "
                                               r"is (nan|inf|[0-9.]+e\+\d+); lower the learning rate \(the last "
                                               r"step's was 1e\+36\)"):
        run(UCB(64, keep=0.5, seed=0))
    with pytest.raises(TrainingDiverged, match=r"^fit: training diverged in epoch 1: the mean training loss is (nan|inf); lower"):
        run(None)
    with pytest.raises(TrainingDiverged, match=r"^fit: training diverged in epoch \d: (\d+ of its 32 losses were "
                                               r"non-finite or beyond \+-1e\+18|the model's weights are no longer "
                                               r"finite) \(skip_invalid keeps a few such losses out of the scores, "
                                               r"not out of the gradient\)"):
        run(UCB(64, keep=0.5, seed=0, skip_invalid=True))

    def one_infinite(logits, labels):  # an infinite loss whose gradient is finite: training goes on
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return loss + torch.where(labels == 3, torch.inf, 0.0)

    history = run(UCB(64, keep=0.5, seed=0, skip_invalid=True), lr=0.01, criterion=one_infinite)
    assert len(history) == 3 and not math.isfinite(history[0]["loss"])

    def nan_gradient(logits, labels):  # finite losses whose gradient is NaN (sqrt at 0)
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return loss + ((logits - logits.detach()) ** 2).sum(1).sqrt()

    with pytest.raises(TrainingDiverged, match=r"epoch 1: the model's weights are no longer finite"):
        run(UCB(64, keep=0.5, seed=0, skip_invalid=True), lr=0.01, criterion=nan_gradient)


def test_a_diverged_run_with_deferred_updates_is_training_diverged_too(tmp_path, monkeypatch):
    """On a GPU every update is deferred (staged on the device, applied at flush): the invalid
    loss surfaced from strategy.flush() after the epoch, as the strategy's raw ValueError. Run
    here on the CPU with defer=True forced, as a CUDA loss chooses it."""
    import fastprune
    from fastprune.errors import TrainingDiverged

    store = from_arrays(np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), np.uint8), np.arange(64) % 4,
                        tmp_path / "s.beton", progress=False)
    update = UCB.update
    monkeypatch.setattr(UCB, "update", lambda self, i, losses, correct=None, *, defer=None:
                        update(self, i, losses, correct, defer=True))

    class OneHugeLoss(torch.nn.CrossEntropyLoss):  # finite, but past what the score table holds
        def forward(self, logits, labels):
            loss = super().forward(logits, labels)
            return loss + 1e19 * (torch.arange(len(loss)) == 3)

    def run(lr, criterion=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4))
        strategy = UCB(64, keep=0.5, seed=0)
        loader = fastprune.Loader(store, 16, sampler=strategy, seed=0, transforms=[Normalize()])
        fit(model, loader, None, strategy, epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
            criterion=criterion, progress=False, log=None)

    with pytest.raises(TrainingDiverged, match=r"^fit: training diverged in epoch 1: update\(\) call 1 of epoch 0 "
                                               r"\(deferred, applied now\): score update: losses\[3\] = 1e\+19 "
                                               r"\(sample \d+\) is beyond \+-1e18, where its variance would "
                                               r"overflow float32; lower the learning rate"):
        run(0.01, OneHugeLoss(reduction="none"))
    with pytest.raises(TrainingDiverged, match=r"^fit: training diverged in epoch 1: update\(\) call \d of epoch 0 "
                                               r"\(deferred, applied now\): score update: losses\[\d+\] = "):
        run(1e36)


def test_a_checkpoint_resumes_whatever_device_the_model_is_on(tmp_path, monkeypatch):
    """load_checkpoint read the file onto the model's device: on a GPU the RNG states became CUDA
    tensors, which do not restore, so every GPU resume failed ("its RNG states do not restore").
    The meta device stands in for CUDA here: anything but the CPU failed alike."""
    import fastprune
    import fastprune.train.checkpoints as checkpoints

    store = from_arrays(np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), np.uint8), np.arange(32) % 2,
                        tmp_path / "s.beton", progress=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 2))
    strategy = UCB(32, keep=0.5, seed=0)
    loader = fastprune.Loader(store, 8, sampler=strategy, seed=0, transforms=[Normalize()])
    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    with pytest.raises(Stop):  # killed after epoch 1, its checkpoint written
        fit(model, loader, None, strategy, epochs=2, progress=False, log=None, checkpoint=tmp_path / "run.pt",
            on_epoch_end=stop)
    monkeypatch.setattr(checkpoints, "model_device", lambda model: torch.device("meta"))
    history = fit(model, loader, None, strategy, epochs=2, progress=False, log=None,
                  checkpoint=tmp_path / "run.pt", resume=True)
    assert [record["epoch"] for record in history] == [0, 1]


def test_a_resume_in_another_precision_is_refused(tmp_path):
    """--resume --amp bf16 on an fp32 checkpoint trained on in bf16 (and the log said bf16 for the
    whole run): precision is now one of the settings a resume must keep."""
    import fastprune
    from fastprune.errors import CheckpointError

    store = from_arrays(np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), np.uint8), np.arange(32) % 2,
                        tmp_path / "s.beton", progress=False)

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    def run(amp, **options):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 2))
        strategy = UCB(32, keep=0.5, seed=0)
        loader = fastprune.Loader(store, 8, sampler=strategy, seed=0, transforms=[Normalize()])
        return fit(model, loader, None, strategy, epochs=2, progress=False, log=None, amp=amp,
                   checkpoint=tmp_path / "run.pt", resume=True, **options)

    with pytest.raises(Stop):  # killed after epoch 1, its checkpoint written
        run("off", on_epoch_end=stop)
    with pytest.raises(CheckpointError, match="precision='off' in the checkpoint, 'bf16' now"):
        run("bf16")
    assert len(run("off")) == 2


def test_a_model_that_cannot_classify_the_batches_fails_in_one_line_at_the_first_step(tmp_path):
    """A model with too few outputs ended in "IndexError: Target 2 is out of bounds" (on a GPU a
    device-side assert), one built for gray images in a raw RuntimeError traceback."""
    import fastprune
    from fastprune.errors import ConfigError

    store = from_arrays(np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), np.uint8), np.arange(32) % 4,
                        tmp_path / "s.beton", progress=False)

    def run(model):
        strategy = UCB(32, keep=0.5, seed=0)
        loader = fastprune.Loader(store, 8, sampler=strategy, seed=0, transforms=[Normalize()])
        fit(model, loader, None, strategy, epochs=1, progress=False, log=None)

    with pytest.raises(ConfigError, match=r"^fit: the model returns 2 class scores per image, but the batch holds "
                                          r"label 3: build it with num_classes=4 or more"):
        run(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 2)))
    with pytest.raises(ConfigError, match=r"^fit: the model fails on the first batch \(images \(8, 3, 8, 8\), "
                                          r"float32\): .*expected input\[8, 3, 8, 8\] to have 1 channels"):
        run(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 4)))
    with pytest.raises(ConfigError, match=r"^fit: the model returned \(8, 4, 1\) for a batch of 8 images"):
        run(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4), torch.nn.Unflatten(1, (4, 1))))


def test_soft_labels_stop_fit_in_one_line_that_points_at_a_loop_of_ones_own(tmp_path):
    """A loader wrapped to yield MixUp's soft labels (float [batch, classes]) got through to
    "The size of tensor a (8) must match the size of tensor b (4)" at the accuracy count; fit trains
    on integer labels, and the guide's own-loop section is where mixing belongs."""
    import fastprune
    from fastprune.errors import ConfigError
    from fastprune.loader.loader import Batch

    store = from_arrays(np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), np.uint8), np.arange(32) % 4,
                        tmp_path / "s.beton", progress=False)
    strategy = UCB(32, keep=0.5, seed=0)
    inner = fastprune.Loader(store, 8, sampler=strategy, seed=0, transforms=[Normalize()])

    class Mixed:  # a user's wrapper: the Loader's batches with one-hot (soft) labels
        def __getattr__(self, name):
            return getattr(inner, name)

        def __len__(self):
            return len(inner)

        def __iter__(self):
            for batch in inner:
                yield Batch(batch.images, torch.nn.functional.one_hot(batch.labels, 4).float(), batch.indices,
                            batch.weights)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4))
    with pytest.raises(ConfigError, match=r"^fit: the loader's labels are float32 \(8, 4\); fit trains on integer "
                                          r"class labels, one per image. Soft labels \(MixUp, CutMix\) need a loop"):
        fit(model, Mixed(), None, strategy, epochs=1, progress=False, log=None,
            criterion=torch.nn.CrossEntropyLoss(reduction="none"))


def test_a_model_with_more_outputs_than_the_store_has_classes_trains_with_one_warning(tmp_path):
    """A model built with its default head (torchvision's 1000 classes) on a 4-class store trained
    silently; the store's class count comes from its class names, else from its largest label."""
    import warnings

    import fastprune
    from fastprune.errors import UsageWarning

    images = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), np.uint8)
    labels = np.arange(32) % 4
    plain = from_arrays(images, labels, tmp_path / "plain.beton", progress=False)
    named = from_arrays(images, labels, tmp_path / "named.beton", progress=False, class_names=list("abcdefgh"))

    def caught(store, outputs):
        loader = fastprune.Loader(store, 8, seed=0, transforms=[Normalize()])
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, outputs))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fit(model, loader, None, None, epochs=2, progress=False, log=None)
        return [w for w in seen if issubclass(w.category, UsageWarning)]

    (warning,) = caught(plain, 10)[:1]
    assert str(warning.message) == ("fit: the model returns 10 class scores per image but the store has 4 classes: "
                                    "the extra outputs are trained to lose (build it with num_classes=4)")
    assert warning.filename == __file__  # the caller's fit() line, not fastprune's
    assert caught(plain, 4) == []
    assert caught(named, 8) == []  # the names count 8 classes, though only 4 labels occur
    assert "but the store has 8 classes" in str(caught(named, 9)[0].message)


def _tiny(stores, strategy=None, **loader_options):
    """A linear model over a UCB-pruned loader of the training store (fast: one step ~1 ms)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(3 * 28 * 28, 10))
    loader = Loader(stores[0], 200, sampler=strategy, transforms=[Normalize(MEAN, STD)], seed=0, threads=1,
                    **loader_options)
    return model, loader


@pytest.mark.parametrize("where", ["progress bar", "data clock"])
def test_an_interrupt_inside_the_progress_bar_closes_the_pass_at_once(stores, monkeypatch, where):
    """A Ctrl-C landing in the progress bar's own code (a notebook's "interrupt kernel") left the
    loader's pass, its threads and finished batches, to whatever kept the traceback: IPython keeps
    the last one, so each interrupted run kept a pass alive (a notebook audit: 107 MB). So did one
    landing in the clock that times the loader (between its next() and its yield)."""
    import sys
    import time

    from fastprune.loader import loader as loader_module
    from fastprune.train import loop

    def interrupted_bar(batches, loader, enabled):
        def bar():  # holds ``batches`` in its frame, as tqdm's __iter__ does
            for k, batch in enumerate(batches):
                if k == 2:
                    raise KeyboardInterrupt
                yield batch
        return bar()

    class InterruptingClock:  # loop's time: raises at _WaitClock.timed's 4th reading (after a next())
        readings = 0

        def perf_counter(self):
            if sys._getframe(1).f_code.co_name == "timed":
                self.readings += 1
                if self.readings == 4:
                    raise KeyboardInterrupt
            return time.perf_counter()

    if where == "progress bar":
        monkeypatch.setattr(loop, "_progress_bar", interrupted_bar)
    else:
        monkeypatch.setattr(loop, "time", InterruptingClock())
    strategy = UCB(TRAIN_SIZE, 0.5, seed=0)
    model, loader = _tiny(stores, strategy, prefetch=4)
    kept = []
    try:
        fit(model, loader, None, strategy, 2, torch.optim.SGD(model.parameters(), 0.01), None, log=None)
    except KeyboardInterrupt as exc:
        kept.append(exc)  # the traceback, and every frame in it, stays referenced
    assert kept and kept[0].__traceback__ is not None
    runs = list(loader_module._LIVE_RUNS)
    assert runs == [] or all(run._closed for run in runs), "the pass is still open"


def test_a_callback_drawing_random_numbers_does_not_break_resume(stores, tmp_path):
    """The checkpoint (with the RNG state) is saved before on_epoch_end: a callback that drew from
    torch's RNG made the uninterrupted run's dropout masks differ from a resumed run's."""
    def run(stop_after=None, resume=False):
        strategy = UCB(TRAIN_SIZE, 0.5, seed=0)
        model, loader = _tiny(stores, strategy)

        def callback(record):
            torch.rand(3)
            if record["epoch"] == stop_after:
                raise KeyboardInterrupt
        try:
            fit(model, loader, None, strategy, 3, torch.optim.SGD(model.parameters(), 0.01), None,
                checkpoint=tmp_path / "c.pt", resume=resume, on_epoch_end=callback, progress=False, log=None)
        except KeyboardInterrupt:
            pass
        return model

    whole = run()
    (tmp_path / "c.pt").unlink()
    run(stop_after=0)
    resumed = run(resume=True)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_fit_refuses_or_warns_about_mismatched_pieces_up_front(stores, tmp_path):
    from fastprune.errors import ConfigError

    strategy = UCB(TRAIN_SIZE, 0.5, seed=0)
    model, loader = _tiny(stores, strategy)
    sgd = torch.optim.SGD(model.parameters(), 0.01)
    refusals = [
        (dict(schedule=torch.optim.lr_scheduler.ReduceLROnPlateau(sgd)), TypeError, "ReduceLROnPlateau steps on a metric"),
        (dict(schedule=0.1), TypeError, "schedule must be a factory"),
        (dict(schedule=lambda optimizer, steps: None), TypeError, "the schedule factory returned NoneType"),
        (dict(optimizer=torch.optim.lr_scheduler.StepLR(sgd, 2)), TypeError, "optimizer must be a torch.optim.Optimizer"),
        (dict(checkpoint=tmp_path), ConfigError, "is a folder; name a file in it"),
        (dict(channels_last="off"), ValueError, "channels_last must be 'auto', True or False, got 'off'"),
    ]
    for options, error, message in refusals:
        with pytest.raises(error, match=message):
            fit(model, loader, None, strategy, **{"epochs": 1, "optimizer": sgd, "progress": False, "log": None, **options})
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        fit(model, loader, None, strategy, 1, sgd, resume=True, log=None)
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written
    with pytest.raises(TypeError, match="train_loader must be a fastprune.Loader .* got DataLoader"):
        fit(model, torch.utils.data.DataLoader([1, 2]), None, epochs=1, log=None)
    with pytest.raises(ConfigError, match="model Sequential has no parameters"):
        fit(torch.nn.Sequential(torch.nn.Flatten()), loader, None, strategy, 1, log=None)

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x), x

    with pytest.raises(ConfigError, match="the model returned a tuple; fit needs a tensor of class scores"):
        fit(Pair(), loader, None, strategy, 1, sgd, progress=False, log=None)
    # pieces that do not meet: the loader prunes by scores fit never feeds, or the other way round
    with pytest.warns(RuntimeWarning, match="sampler UCB prunes by scores, but fit got no strategy"):
        fit(model, loader, None, None, 1, sgd, progress=False, log=None)
    import warnings

    from fastprune.prune import UniformRandom

    _, uniform = _tiny(stores, UniformRandom(TRAIN_SIZE, 0.5))
    with warnings.catch_warnings():  # random pruning reads no scores: nothing is lost without updates
        warnings.simplefilter("error", RuntimeWarning)
        fit(model, uniform, None, None, 1, sgd, progress=False, log=None)
    _, unpruned = _tiny(stores)
    with pytest.warns(RuntimeWarning, match="does not choose train_loader's samples"):
        fit(model, unpruned, None, UCB(TRAIN_SIZE, 0.5), 1, sgd, progress=False, log=None)
    _, pruned_val = _tiny(stores, UCB(TRAIN_SIZE, 0.5))
    with pytest.warns(RuntimeWarning, match="val_loader has a pruning sampler") as caught:
        fit(model, loader, pruned_val, strategy, 1, sgd, progress=False, log=None)
    assert {w.filename for w in caught} == {__file__}  # each points at the caller's fit() line
    # evaluate() on the training loader (training accuracy) started the strategy's next epoch each
    # time: the loop trained every other epoch's subset, and the final full epochs came early
    from fastprune.train import evaluate

    epoch = pruned_val.sampler.current_epoch
    with pytest.raises(ValueError, match="evaluate: this loader prunes \\(its sampler is UCB\\)"):
        evaluate(model, pruned_val)
    assert pruned_val.sampler.current_epoch == epoch
    from torch.utils.data import DataLoader, TensorDataset

    from fastprune import PrunedSampler

    sampler = PrunedSampler(UCB(16, 0.5))  # torch's DataLoader, as the guide's PrunedSampler loop
    data = DataLoader(TensorDataset(torch.zeros(16, 3, 4, 4), torch.zeros(16, dtype=torch.long)), 4, sampler=sampler)
    with pytest.raises(ValueError, match="evaluate: this loader prunes \\(its sampler is PrunedSampler\\)"):
        evaluate(model, data)
    assert sampler.epoch == 0


def test_history_without_validation_is_json_and_user_patches_survive(stores):
    """val_loader=None recorded NaN (json.dumps(allow_nan=False) failed; None means not
    evaluated); a user's own instance attribute on the strategy was deleted after fit."""
    import json

    strategy = UCB(TRAIN_SIZE, 0.5, seed=0)
    calls = []

    def update(*args, **kwargs):
        calls.append(1)
        return type(strategy).update(strategy, *args, **kwargs)

    strategy.update = update
    model, loader = _tiny(stores, strategy)
    history = fit(model, loader, None, strategy, 1, torch.optim.SGD(model.parameters(), 0.01),
                  progress=False, log=None)
    assert history[0]["val_acc"] is None and history[0]["val_loss"] is None
    json.dumps(history, allow_nan=False)
    assert vars(strategy)["update"] is update and calls


def test_resume_with_another_optimizer_or_scheduler_kind_is_refused(stores, tmp_path):
    from fastprune.errors import CheckpointError

    def run(optimizer_kind, schedule):
        strategy = UCB(TRAIN_SIZE, 0.5, seed=0)
        model, loader = _tiny(stores, strategy)
        return fit(model, loader, None, strategy, 2, optimizer_kind(model.parameters(), lr=0.01), schedule,
                   checkpoint=tmp_path / "c.pt", resume=True, progress=False, log=None,
                   on_epoch_end=lambda record: (_ for _ in ()).throw(KeyboardInterrupt))

    with pytest.raises(KeyboardInterrupt):
        run(torch.optim.SGD, one_cycle(0.1))
    with pytest.raises(CheckpointError, match=r"optimizer='SGD' in the checkpoint, 'Adam' now"):
        run(torch.optim.Adam, one_cycle(0.1))
    with pytest.raises(CheckpointError, match=r"schedule='OneCycle' in the checkpoint, None now"):
        run(torch.optim.SGD, None)


def test_a_schedule_that_cannot_replan_warns_under_infobatch(stores):
    """InfoBatch's epoch sizes follow its scores: torch's OneCycleLR, sized at the start, ended at
    52% of its peak after 81 of its 128 planned steps."""
    strategy = InfoBatch(TRAIN_SIZE, 0.5, epochs=2, seed=0)
    model, loader = _tiny(stores, strategy)
    sgd = torch.optim.SGD(model.parameters(), 0.01)
    with pytest.warns(RuntimeWarning, match="InfoBatch's epoch sizes follow its scores, so a schedule sized at "
                                            "the start \\(OneCycleLR\\)"):
        fit(model, loader, None, strategy, 2, sgd,
            lambda optimizer, steps: torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=steps),
            progress=False, log=None)


def test_a_model_torchs_cpu_channels_last_backward_corrupts_trains_contiguous_with_a_warning(tmp_path):
    """SmallResNet(widths=(8, 16, 32)) under channels_last on the CPU died in torch's backward of its
    1x1 stride-2 shortcut (8 input channels): "free(): invalid size" or a segfault, from `fastprune
    bench --width 8` (bench trains channels-last) and fit(channels_last=True). oneDNN's AVX2 kernel
    (ONEDNN_MAX_CPU_ISA=AVX2) also hangs, or computes weight gradients 4-33% off, for 2-7 channels."""
    from fastprune.errors import UsageWarning
    from fastprune.train.device import cpu_channels_last_hazard

    narrow = SmallResNet(num_classes=2, widths=(8, 16, 32), stem_stride=2)
    assert cpu_channels_last_hazard(narrow) == "stages.1.shortcut.0 (Conv2d(8, 16, kernel_size=1, stride=2))"
    for failing in (torch.nn.Conv2d(3, 8, 1, stride=(2, 1)), torch.nn.Conv2d(15, 4, 1, stride=3, bias=False),
                    torch.nn.Conv2d(2, 64, 1, stride=2, dilation=2)):  # each failed in the audit's sweep
        assert cpu_channels_last_hazard(failing) is not None
    for safe in (SmallResNet(num_classes=2, widths=(16, 32, 64)), torch.nn.Conv2d(8, 16, 3, stride=2),
                 torch.nn.Conv2d(8, 16, 1), torch.nn.Conv2d(1, 16, 1, stride=2)):
        assert cpu_channels_last_hazard(safe) is None
    store = from_arrays(np.random.default_rng(0).integers(0, 256, (75, 16, 16, 3), dtype=np.uint8),
                        np.arange(75) % 2, tmp_path / "d.beton", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loader = Loader(store, 25, transforms=[Normalize(MEAN, STD, channels_last=True)], seed=0, threads=1)
        with pytest.warns(UsageWarning, match=r"^fit: channels_last is off for this model on the CPU: torch's CPU "
                                              r"backward of stages.1.shortcut.0 \(Conv2d\(8, 16, kernel_size=1, "
                                              r"stride=2\)\) in channels_last corrupts memory"):
            fit(narrow, loader, None, None, 2, progress=False, log=None, channels_last=True)
        assert all(p.is_contiguous() for p in narrow.parameters())
        wide = SmallResNet(num_classes=2, widths=(16, 32, 64))
        with warnings.catch_warnings():
            warnings.simplefilter("error", UsageWarning)  # kept channels-last, unwarned
            fit(wide, loader, None, None, 1, progress=False, log=None, channels_last=True)
        assert wide.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    finally:
        torch.set_num_threads(threads)


def test_fits_evaluation_builds_no_gradient_graph(tmp_path):
    """A helper inserted between @torch.no_grad() and _evaluate took its decorator: every
    validation batch's activations were kept for a backward that never came."""
    store = from_arrays(np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8),
                        np.arange(24) % 2, tmp_path / "d.beton", progress=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    grad_in_eval = []
    model.register_forward_hook(lambda module, args, out: None if module.training else
                                grad_in_eval.append(out.requires_grad or torch.is_grad_enabled()))
    loader = Loader(store, 8, transforms=[Normalize(MEAN, STD)], seed=0, threads=1)
    val_loader = Loader(store, 8, transforms=[Normalize(MEAN, STD)], shuffle=False, threads=1)
    fit(model, loader, val_loader, None, 1, progress=False, log=None)
    assert grad_in_eval == [False, False, False]  # 3 validation batches, none tracked


def test_fit_checks_a_checkpoint_and_a_built_schedule_against_the_run_before_training(stores, tmp_path):
    """A fit audit: an existing checkpoint without resume=True was replaced after the first epoch;
    a scheduler built on another optimizer drove nobody's LR (fit trained at its default 0.2); a
    OneCycleLR of len(loader) * epochs steps raised in the last epoch of a run with a final full
    epoch; an epoch-sized CosineAnnealingLR cycled once per epoch; a built schedule under
    InfoBatch never ended, where a factory warned."""
    from fastprune.errors import ConfigError, UsageWarning

    def pieces(strategy=None):
        model, loader = _tiny(stores, strategy)
        return model, loader, torch.optim.SGD(model.parameters(), 0.05)

    model, loader, sgd = pieces(UCB(TRAIN_SIZE, 0.5, seed=0))
    (tmp_path / "run.pt").write_bytes(b"a finished run's checkpoint")
    with pytest.raises(ConfigError, match="fit: checkpoint .*run.pt exists: resume=True continues that run"):
        fit(model, loader, None, loader.sampler, 1, sgd, checkpoint=tmp_path / "run.pt", progress=False, log=None)
    assert (tmp_path / "run.pt").read_bytes() == b"a finished run's checkpoint"

    other = torch.optim.SGD(model.parameters(), 0.05)
    with pytest.raises(ValueError, match="schedule StepLR drives another optimizer than the one fit trains with"):
        fit(model, loader, None, loader.sampler, 1, schedule=torch.optim.lr_scheduler.StepLR(other, 100), log=None)

    strategy = UCB(TRAIN_SIZE, 0.5, seed=0, epochs=3, final_full_epochs=1)
    model, loader, sgd = pieces(strategy)
    before = [p.clone() for p in model.parameters()]
    short = torch.optim.lr_scheduler.OneCycleLR(sgd, 0.05, total_steps=len(loader) * 3)
    with pytest.raises(ValueError, match=f"OneCycleLR has total_steps={len(loader) * 3}, but the run takes "
                                         f"{loader.steps_for_epochs(0, 3)} steps"):
        fit(model, loader, None, strategy, 3, sgd, schedule=short, progress=False, log=None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any step

    model, loader, sgd = pieces(UCB(TRAIN_SIZE, 0.5, seed=0))
    with pytest.warns(UsageWarning, match="CosineAnnealingLR's T_max=2 looks counted in epochs, but fit steps it "
                                          "once per batch") as caught:
        fit(model, loader, None, loader.sampler, 2, sgd, schedule=torch.optim.lr_scheduler.CosineAnnealingLR(sgd, 2),
            progress=False, log=None)
    assert {w.filename for w in caught} == {__file__}
    model, loader, sgd = pieces(UCB(TRAIN_SIZE, 0.5, seed=0))
    with pytest.warns(UsageWarning, match="StepLR's step_size=1 looks counted in epochs"):  # 0.1 ** steps: no rate left
        fit(model, loader, None, loader.sampler, 2, sgd, schedule=torch.optim.lr_scheduler.StepLR(sgd, 1, 0.1),
            progress=False, log=None)
    model, loader, sgd = pieces(UCB(TRAIN_SIZE, 0.5, seed=0))
    with warnings.catch_warnings():  # a decay per step, sized in steps: no warning
        warnings.simplefilter("error", UsageWarning)
        fit(model, loader, None, loader.sampler, 2, sgd, schedule=torch.optim.lr_scheduler.StepLR(sgd, 1, 0.999),
            progress=False, log=None)

    strategy = InfoBatch(TRAIN_SIZE, 0.5, epochs=2)
    model, loader, sgd = pieces(strategy)
    steps = loader.steps_for_epochs(0, 2)
    with pytest.warns(UsageWarning, match="InfoBatch's epoch sizes follow its scores, so a schedule sized at the "
                                          "start \\(OneCycleLR\\)"):
        fit(model, loader, None, strategy, 2, sgd, schedule=torch.optim.lr_scheduler.OneCycleLR(sgd, 0.05, steps),
            progress=False, log=None)


class _Tagged(UCB):
    __slots__ = ("tag",)


def test_a_strategy_copied_or_pickled_during_fit_is_a_strategy_of_its_own(stores):
    """fit times the strategy by wrapping its methods on the instance: pickling it in an
    on_epoch_end failed on the wrappers, and a deepcopy snapshot kept calling the original's
    methods, feeding the original with its updates (a fit audit)."""
    import copy
    import pickle

    strategy = UCB(TRAIN_SIZE, 0.5, seed=0)
    model, loader = _tiny(stores, strategy)
    snapshots = []
    fit(model, loader, None, strategy, 1, progress=False, log=None,
        on_epoch_end=lambda record: snapshots.append((copy.deepcopy(strategy), pickle.dumps(strategy))))
    tagged = _Tagged(10, 0.5)  # a subclass's __slots__ are copied and pickled beside the __dict__
    tagged.tag = "run-7"
    assert copy.deepcopy(tagged).tag == pickle.loads(pickle.dumps(tagged)).tag == "run-7"
    snapshot, pickled = snapshots[0]
    seen = strategy.table.seen.copy()
    snapshot.update(np.arange(10), torch.ones(10))
    assert np.array_equal(strategy.table.seen, seen)  # the original untouched
    assert snapshot.table.seen[:10].tolist() == (seen[:10] + 1).tolist()
    assert np.array_equal(pickle.loads(pickled).table.seen, seen)
    assert "update" not in vars(snapshot) and "select" not in vars(pickle.loads(pickled))
